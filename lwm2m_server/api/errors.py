"""The management API's error: an HTTP status and a message that names the problem."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
