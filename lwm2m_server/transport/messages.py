"""What the CoAP adapter takes and gives: requests to and from devices, their
answers, and files offered for download. Plain values, free of aiocoap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class CoapRequest(Protocol):
    """What the adapter needs of an outgoing request."""

    method: str
    uri_path: tuple[str, ...]
    query: tuple[str, ...]
    content_format: int | None
    accept: int | None
    payload: bytes
    observe: int | None


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A request a device sent us (Register, Update, De-register, Send)."""

    method: str
    """``GET``, ``POST``, ``PUT``, ``DELETE``, ``FETCH``..."""
    uri_path: tuple[str, ...]
    """Path segments, e.g. ``("rd", "abc")``."""
    query: tuple[str, ...]
    """Uri-Query options in order."""
    content_format: int | None
    """Content-Format option, None when absent."""
    payload: bytes
    """The reassembled (Block1) payload."""
    address: str
    """Source ``host:port`` (``[v6]:port``); ``coaps://host:port`` for a DTLS session;
    ``oscore://<recipient id hex>@host:port`` for an OSCORE-protected request."""
    identity: str | None = None
    """PSK identity the peer proved in its DTLS handshake, or ``oscore:<recipient id
    hex>`` for a request that verified under that OSCORE context; None over
    unprotected CoAP."""


@dataclass(frozen=True, slots=True)
class OutgoingResponse:
    """What the handler answers."""

    code: str
    """Dotted response code, e.g. ``"2.01"``."""
    payload: bytes = b""
    """Diagnostic text for errors, content otherwise."""
    location_path: tuple[str, ...] = ()
    """Location-Path options (``("rd", id)`` for Register)."""
    content_format: int | None = None


@dataclass(frozen=True, slots=True)
class CoapResponse:
    """A device's answer to one of our requests, or a notification."""

    code: str
    """Dotted response code, e.g. ``"2.05"``."""
    content_format: int | None
    """Content-Format option, None when absent."""
    payload: bytes
    """The whole (Block2-reassembled) payload."""
    location_path: tuple[str, ...] = ()
    """Location-Path of a Create response."""
    observe: int | None = None
    """Observe sequence number of a notification or of an accepted observation."""

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")


class DeviceUnreachable(Exception):
    """No response came (timeout, ICMP error, RST); ``reason`` says which."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Download:
    """A file the server offers for pull delivery (Block2, streamed from disk)."""

    path: Path
    """The file; it is read one block at a time, never whole."""
    size: int
    """Its size in bytes (Size2)."""
    etag: bytes
    """1..8 bytes that change when the content changes."""
    content_format: int = 42
    """application/octet-stream by default."""


@dataclass(frozen=True, slots=True)
class AdapterStats:
    """What an adapter has moved and refused since it was made (the metrics read it)."""

    blocks_served: int
    """Block2 blocks of module downloads answered (pull delivery)."""
    bytes_served: int
    """Their payload bytes."""
    blocks_received: int
    """Block1 blocks of request bodies received from devices (refused ones included)."""
    bytes_received: int
    """Their payload bytes."""
    blocks_sent: int
    """Block1 blocks of request bodies sent to devices (push delivery), counted when answered."""
    bytes_sent: int
    """Their payload bytes."""
    rate_limited: int
    """Requests refused by the rate limit (4.29, or dropped for a NON request)."""
    dtls_sessions: int
    """DTLS sessions open now."""
