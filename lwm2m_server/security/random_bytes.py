"""Unguessable bytes for ids and tokens, read from the OS a few KB at a time: one
``os.urandom`` per id or token costs a system call, more than the rest of making it."""

from __future__ import annotations

import os

_POOL_BYTES = 4096


class RandomBytes:
    """Slices of a pool of OS randomness; refilled when used up, and anew in a forked
    child so two processes never hand out the same bytes. For one thread (the event
    loop's): two threads taking at once could be handed the same slice."""

    def __init__(self) -> None:
        self._pool, self._position, self._pid = b"", 0, 0

    def take(self, count: int) -> bytes:
        if self._position + count > len(self._pool) or self._pid != os.getpid():
            self._pool, self._position, self._pid = os.urandom(max(_POOL_BYTES, count)), 0, os.getpid()
        start, self._position = self._position, self._position + count
        return self._pool[start:self._position]


random_bytes = RandomBytes().take
"""``random_bytes(n)``: n unguessable bytes (as ``secrets.token_bytes(n)``)."""
