"""A resumable CoAP Block2 download, as bookkeeping without I/O (RFC 7959 §2.4).

:class:`BlockDownload` says which block to ask for next
(:meth:`BlockDownload.next_block`) and takes each answer
(:meth:`BlockDownload.on_block`); the adapter (:mod:`simulators.fetch`) sends
the GETs. The bytes received so far are kept, so after a reboot the download
continues at the next block instead of starting over. The server's ETag names
the content: a block with another ETag than the first one means the file
changed, and the download starts again from block 0.

Errors are :class:`DownloadError` with a ``kind`` the update state machines map
to their result codes: ``uri`` (malformed, unknown scheme host or path, a 4.xx
answer), ``protocol`` (a scheme the device cannot fetch), ``connection`` (no
answer, 5.xx), ``storage`` (larger than the space for it), ``server`` (answers
that break the block-wise rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_URI_LENGTH = 255
"""Package URI resources are at most 255 bytes."""
SCHEMES = ("coap", "coaps")
"""coaps: over the DTLS session to that server (the credentials of its URI)."""
"""Schemes the simulated device fetches from (no DTLS, no HTTP)."""


class DownloadError(Exception):
    """A download that cannot go on; ``kind`` classifies it (see the module docstring)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def check_uri(uri: str) -> None:
    """Raise :class:`DownloadError` (``uri`` or ``protocol``) unless the device can fetch ``uri``."""
    if len(uri.encode("utf-8")) > MAX_URI_LENGTH:
        raise DownloadError("uri", f"the URI is longer than {MAX_URI_LENGTH} bytes")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as error:
        raise DownloadError("uri", f"malformed URI {uri!r}: {error}") from None
    if not parts.scheme or not parts.netloc:
        raise DownloadError("uri", f"{uri!r} is not an absolute URI")
    if parts.scheme.lower() not in SCHEMES:
        raise DownloadError("protocol", f"scheme {parts.scheme!r} is not supported (only {', '.join(SCHEMES)})")
    if not parts.hostname:
        raise DownloadError("uri", f"{uri!r} names no host")
    if port == 0:
        raise DownloadError("uri", f"{uri!r} names port 0")
    if parts.fragment:
        raise DownloadError("uri", f"{uri!r} has a fragment")


@dataclass(slots=True)
class BlockDownload:
    """One file being fetched block by block; survives a reboot (it lives in "flash")."""

    uri: str
    """Where from."""
    block_exp: int = 6
    """SZX asked for: blocks of ``2 ** (block_exp + 4)`` bytes (6: 1024)."""
    limit: int | None = None
    """Largest size accepted (the storage for it); None for no limit."""
    etag: bytes | None = None
    """ETag of the content being assembled (None before the first block)."""
    size: int | None = None
    """Total size from Size2, when the server gave it."""
    data: bytearray = field(default_factory=bytearray)
    """The bytes received so far."""
    complete: bool = False
    """True once the last block arrived."""
    requested: list[int] = field(default_factory=list)
    """Block numbers asked for, in order (for logs and tests)."""
    restarts: int = 0
    """Times the download began again from block 0 because the ETag changed."""

    def __post_init__(self) -> None:
        if not 0 <= self.block_exp <= 6:
            raise ValueError(f"block_exp must be 0..6, got {self.block_exp}")

    @property
    def block_size(self) -> int:
        """Bytes per block at the current SZX."""
        return 1 << (self.block_exp + 4)

    def next_block(self) -> tuple[int, int]:
        """``(block number, SZX)`` of the next GET."""
        number = len(self.data) // self.block_size
        self.requested.append(number)
        return number, self.block_exp

    def restart(self) -> None:
        """Forget what was received (the content changed)."""
        self.data.clear()
        self.etag = None
        self.size = None
        self.complete = False
        self.restarts += 1

    def on_block(self, *, payload: bytes, number: int | None, more: bool, exp: int | None,
                 etag: bytes | None, size2: int | None) -> bool:
        """Take one 2.05 answer (``number``/``more``/``exp`` from its Block2 option, None
        when it had none). Returns False when the ETag changed and the download
        restarted (ask :meth:`next_block` again); raises :class:`DownloadError`."""
        if self.complete:
            raise DownloadError("server", "a block arrived after the last one")
        if self.etag is not None and etag != self.etag:
            self.restart()
            if number not in (0, None):
                return False  # ask again for block 0 of the new content
        if number is None:  # no Block2: the whole body at once
            if self.data:
                raise DownloadError("server", "the server answered a block request without Block2")
            number, more, exp = 0, False, self.block_exp
        assert exp is not None
        if exp > self.block_exp:
            raise DownloadError("server", f"the server sent {1 << (exp + 4)} B blocks, {self.block_size} B were asked for")
        offset = number << (exp + 4)
        if offset > len(self.data):
            raise DownloadError("server", f"block {number} starts at {offset}, only {len(self.data)} B are here")
        del self.data[offset:]
        self.data += payload
        self.block_exp = exp  # a server may ask for smaller blocks (RFC 7959 §2.4)
        if self.etag is None:
            self.etag = etag
        if size2 is not None:
            self.size = size2
        limit = self.limit
        for size in (self.size, len(self.data)):
            if limit is not None and size is not None and size > limit:
                raise DownloadError("storage", f"the file is {size} B, there is room for {limit} B")
        if more and len(payload) != 1 << (exp + 4):
            raise DownloadError("server", f"block {number} holds {len(payload)} B, not {1 << (exp + 4)}")
        if not more:
            if self.size is not None and len(self.data) != self.size:
                raise DownloadError("server", f"got {len(self.data)} B, Size2 said {self.size}")
            self.complete = True
        return True
