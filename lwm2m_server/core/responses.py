"""What devices answer, decoded (sans-I/O): :func:`decode_response` turns the answer
to a :class:`~.operations.DeviceRequest` into a :class:`Result`, and
:func:`parse_send` reads a Send (``/dp``).

Responses are decoded by the Content-Format they carry; an absent one means
text/plain (Core 1.1 §7.4.1 / RFC 7252 §5.10.3 default).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ipso_objects import IpsoError, LwM2MPath, ObjectRegistry, PathError, Value
from ipso_objects import codecs
from ipso_objects.codecs import ContentFormat as CF
from ipso_objects.codecs import TimestampedValues, link_format
from ipso_objects.codecs.link_format import Link
from ipso_objects.nodes import Node

from .operations import (
    COMPOSITE_READ_KINDS, READ_KINDS, SEND_FORMATS, DeviceRequest, Operation, OperationError, format_name,
)

# --- responses ------------------------------------------------------------------------------

REASONS = {
    "2.01": "Created", "2.02": "Deleted", "2.03": "Valid", "2.04": "Changed", "2.05": "Content",
    "2.31": "Continue", "4.00": "Bad Request", "4.01": "Unauthorized", "4.02": "Bad Option",
    "4.03": "Forbidden", "4.04": "Not Found", "4.05": "Method Not Allowed",
    "4.06": "Not Acceptable", "4.08": "Request Entity Incomplete", "4.09": "Conflict",
    "4.12": "Precondition Failed", "4.13": "Request Entity Too Large",
    "4.15": "Unsupported Content-Format", "4.22": "Unprocessable Entity",
    "4.29": "Too Many Requests", "5.00": "Internal Server Error",
    "5.01": "Not Implemented", "5.02": "Bad Gateway", "5.03": "Service Unavailable",
    "5.04": "Gateway Timeout", "5.05": "Proxying Not Supported",
}
"""Reason phrases of RFC 7252 §12.1.2 (and RFC 7959, RFC 8132, RFC 8516 additions)."""
UNREACHABLE = "unreachable"
"""Result code when no CoAP response came at all."""
_CODE = re.compile(r"[2-5]\.[0-9]{2}")


@dataclass(frozen=True, slots=True)
class Result:
    """What a device answered, decoded."""

    ok: bool
    """True for a 2.xx whose payload (if any was expected) decoded."""
    code: str
    """CoAP response code, e.g. ``"2.05"``."""
    content_format: int | None = None
    """Content-Format of the response; None when absent."""
    node: Node | None = None
    """Read/Observe: the decoded node at the request path."""
    values: Mapping[LwM2MPath, Value] = field(default_factory=dict)
    """Composite reads: leaf values by path."""
    links: tuple[Link, ...] = ()
    """Discover: the links."""
    diagnostic: str = ""
    """Why ``ok`` is False: the error payload's text (or the code's reason phrase),
    or what could not be decoded."""
    location: LwM2MPath | None = None
    """Create: the new instance, from Location-Path, when the device gave one."""
    payload: bytes = b""
    """The raw response payload, kept so a stored result can be decoded again."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary for the queue store; :func:`result_from_dict` re-decodes it."""
        return {"ok": self.ok, "code": self.code, "content_format": self.content_format,
                "diagnostic": self.diagnostic,
                "location": str(self.location) if self.location is not None else None,
                "payload": base64.b64encode(self.payload).decode("ascii")}


def result_from_dict(request: DeviceRequest, data: Mapping[str, Any], registry: ObjectRegistry) -> Result:
    """Decode a stored :meth:`Result.to_dict` again (node, values, links included)."""
    try:
        payload = base64.b64decode(str(data.get("payload", "")).encode("ascii"), validate=True)
        location = data.get("location")
        parts = tuple(location.strip("/").split("/")) if location else ()
        return decode_response(request, str(data["code"]), data.get("content_format"), payload,
                               registry, location_path=parts)
    except KeyError as missing:
        raise OperationError(f"result dict lacks {missing.args[0]!r}") from None
    except (ValueError, binascii.Error) as error:
        raise OperationError(f"malformed result dict: {error}") from None


def decode_response(request: DeviceRequest, code: str, content_format: int | None, payload: bytes,
                    registry: ObjectRegistry, *, location_path: Sequence[str] = ()) -> Result:
    """Decode a device's response to ``request``; never raises a codec error.

    Any 2.xx counts as success. Error codes give ``ok=False`` with the payload
    text as ``diagnostic``; a payload that does not decode gives ``ok=False``
    with a diagnostic naming the format, the path and the problem.
    ``location_path`` is the Location-Path of a Create response.
    """
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise OperationError(f"{code!r} is not a CoAP response code such as '2.05'")
    payload = bytes(payload)
    base = dict(code=code, content_format=content_format, payload=payload)
    if not code.startswith("2."):
        text = payload.decode("utf-8", "replace").strip()
        return Result(False, diagnostic=text or REASONS.get(code, "error"), **base)
    try:
        return _decode_success(request, content_format, payload, registry, location_path, base)
    except (IpsoError, ImportError) as error:
        what = ", ".join(str(path) for path in request.paths) or "/"
        reason = error.reason if isinstance(error, IpsoError) else "codec not available"
        return Result(False, diagnostic=f"{format_name(content_format)} payload for {what} "
                                        f"could not be decoded: {reason}", **base)


def _decode_success(request: DeviceRequest, content_format: int | None, payload: bytes,
                    registry: ObjectRegistry, location_path: Sequence[str], base: dict) -> Result:
    kind = request.kind
    if kind in READ_KINDS:
        fmt = CF.TEXT if content_format is None else content_format
        return Result(True, node=codecs.decode(fmt, payload, request.paths[0], registry), **base)
    if kind is Operation.DISCOVER:
        if content_format not in (None, CF.LINK):
            raise IpsoError("a Discover response must be link format (40)")
        return Result(True, links=tuple(link_format.decode(payload)), **base)
    if kind in COMPOSITE_READ_KINDS:
        fmt = CF.TEXT if content_format is None else content_format
        return Result(True, values=codecs.decode_composite(fmt, payload, registry), **base)
    location = None
    if kind is Operation.CREATE and location_path:
        ids = [part for part in location_path if part.isascii() and part.isdigit()]
        try:
            location = LwM2MPath(tuple(int(part) for part in ids[-2:])) if len(ids) >= 2 else None
        except PathError:
            location = None
    return Result(True, location=location, **base)


# --- Send (/dp) -----------------------------------------------------------------------------


def parse_send(payload: bytes, content_format: int | None,
               registry: ObjectRegistry) -> list[TimestampedValues]:
    """The values of a Send (POST /dp): SenML JSON/CBOR (timestamped) or LwM2M CBOR.

    Raises :class:`OperationError` with ``code`` 4.15 for another format, 4.00 for
    a payload that does not decode or carries no value.
    """
    if content_format not in SEND_FORMATS:
        raise OperationError(f"Send carries {format_name(content_format)}; expected SenML JSON "
                             "(110), SenML CBOR (112) or LwM2M CBOR (11544)", code="4.15")
    try:
        if content_format == CF.LWM2M_CBOR:  # no timestamps in LwM2M CBOR: all values are "now"
            entries = [TimestampedValues(None, codecs.decode_composite(content_format, payload, registry))]
        else:
            entries = codecs.decode_timestamped(content_format, payload, LwM2MPath(), registry)
    except IpsoError as error:
        raise OperationError(f"Send payload ({format_name(content_format)}): {error.reason}") from None
    except ImportError:
        raise OperationError(f"{format_name(content_format)} is not available", code="4.15") from None
    if not any(entry.values for entry in entries):
        raise OperationError("Send payload carries no value")
    return entries
