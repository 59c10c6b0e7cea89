"""LwM2M paths: ``/``, ``/o``, ``/o/i``, ``/o/i/r`` and ``/o/i/r/ri``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

from .errors import PathError

MAX_ID = 65534
"""Largest valid id; 65535 (MAX_ID + 1) is reserved by the Core spec."""


@dataclass(frozen=True, slots=True, order=True)
class LwM2MPath:
    """A validated LwM2M path of 0 to 4 ids.

    The empty path is the root (``/``), used by composite operations and Send.
    """

    ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.ids, tuple):
            raise PathError(f"path ids must be a tuple, got {type(self.ids).__name__}")
        if len(self.ids) > 4:
            raise PathError(f"a path has at most 4 ids, got {len(self.ids)}")
        for position, value in enumerate(self.ids):
            if type(value) is not int:
                raise PathError(f"path id #{position} must be an int, got {value!r}")
            if not 0 <= value <= MAX_ID:
                raise PathError(f"path id {value} out of range 0..{MAX_ID}")

    def __hash__(self) -> int:  # equal paths have equal ids (the generated hash wraps them in a tuple first)
        return hash(self.ids)

    @classmethod
    def of(cls, *ids: int) -> LwM2MPath:
        """``LwM2MPath.of(3, 0, 1)`` is ``/3/0/1``."""
        return cls(tuple(ids))

    @classmethod
    def parse(cls, text: str) -> LwM2MPath:
        """Parse ``/3/0/1`` (a leading slash is required; a trailing one is tolerated)."""
        if cls is LwM2MPath and isinstance(text, str):
            return _parse_cached(text)  # a fleet's payloads name the same paths over and over
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> LwM2MPath:
        if not isinstance(text, str):
            raise PathError(f"a path must be a string, got {type(text).__name__}")
        if not text.startswith("/"):
            raise PathError(f"path {text!r} must start with '/'")
        body = text[1:]
        if body.endswith("/"):
            body = body[:-1]
        if not body:
            return cls(())
        ids = []
        for part in body.split("/"):
            if not part.isascii() or not part.isdigit():
                raise PathError(f"path {text!r}: {part!r} is not a decimal id")
            if len(part) > 1 and part.startswith("0"):
                raise PathError(f"path {text!r}: id {part!r} has a leading zero")
            ids.append(int(part))
        return cls(tuple(ids))

    def __str__(self) -> str:
        return "/" + "/".join(str(i) for i in self.ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def object_id(self) -> int | None:
        return self.ids[0] if len(self.ids) >= 1 else None

    @property
    def instance_id(self) -> int | None:
        return self.ids[1] if len(self.ids) >= 2 else None

    @property
    def resource_id(self) -> int | None:
        return self.ids[2] if len(self.ids) >= 3 else None

    @property
    def resource_instance_id(self) -> int | None:
        return self.ids[3] if len(self.ids) >= 4 else None

    @property
    def is_root(self) -> bool:
        return not self.ids

    @property
    def is_object(self) -> bool:
        return len(self.ids) == 1

    @property
    def is_object_instance(self) -> bool:
        return len(self.ids) == 2

    @property
    def is_resource(self) -> bool:
        return len(self.ids) == 3

    @property
    def is_resource_instance(self) -> bool:
        return len(self.ids) == 4

    def child(self, child_id: int) -> LwM2MPath:
        """This path extended by one id."""
        return LwM2MPath(self.ids + (child_id,))

    @property
    def parent(self) -> LwM2MPath:
        """This path without its last id; the root is its own parent."""
        return LwM2MPath(self.ids[:-1])

    def startswith(self, prefix: LwM2MPath) -> bool:
        """True when ``prefix`` is this path or one of its ancestors."""
        return self.ids[: len(prefix.ids)] == prefix.ids


@functools.lru_cache(maxsize=8192)
def _parse_cached(text: str) -> LwM2MPath:
    return LwM2MPath._parse(text)  # an error is raised each time, never cached
