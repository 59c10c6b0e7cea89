"""The management API's error: an HTTP status and a message that names the problem."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


DEVICE_CODE_STATUS = {
    "4.00": 400, "4.01": 403, "4.02": 400, "4.03": 403, "4.04": 404, "4.05": 400, "4.06": 406,
    "4.08": 400, "4.09": 409, "4.12": 412, "4.13": 413, "4.15": 415, "4.22": 422, "4.29": 429,
    "5.00": 500, "5.01": 501, "5.02": 502, "5.03": 503, "5.04": 504, "5.05": 502,
}
"""A device's CoAP error code → the HTTP status of its answer, as an HTTP-CoAP proxy maps it
(RFC 8075 section 7). 4.01 is 403: 401 is this API's own "wrong token". 4.05 is 400, which
RFC 8075 allows: a 405 would say this API's route refuses the HTTP method."""


def device_error_status(code: str) -> int:
    """The HTTP status for a device's error ``code``; unlisted codes by class (400, 500)."""
    return DEVICE_CODE_STATUS.get(code, 500 if code.startswith("5.") else 400)
