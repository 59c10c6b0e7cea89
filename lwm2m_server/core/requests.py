"""What a request to a device is, as a value: the LwM2M operation, the CoAP method,
path, options and payload (:class:`DeviceRequest`), and the error raised when one
cannot be built. :mod:`.operations` builds them, :mod:`.responses` decodes the
answers, and the queue persists them (:meth:`DeviceRequest.to_dict`)."""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Any, Mapping

from ipso_objects import LwM2MPath, PathError


class OperationError(Exception):
    """An operation that cannot be built, or a Send payload that must be refused.

    ``code`` is the CoAP response to give a peer when the error concerns its
    request (``4.00`` malformed, ``4.15`` unsupported Content-Format).
    """

    def __init__(self, reason: str, code: str = "4.00") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Operation(enum.Enum):
    """The LwM2M operations the server sends to a device."""

    READ = "READ"
    WRITE_REPLACE = "WRITE_REPLACE"
    WRITE_UPDATE = "WRITE_UPDATE"
    EXECUTE = "EXECUTE"
    CREATE = "CREATE"
    DELETE = "DELETE"
    DISCOVER = "DISCOVER"
    WRITE_ATTRIBUTES = "WRITE_ATTRIBUTES"
    OBSERVE = "OBSERVE"
    CANCEL_OBSERVE = "CANCEL_OBSERVE"
    READ_COMPOSITE = "READ_COMPOSITE"
    OBSERVE_COMPOSITE = "OBSERVE_COMPOSITE"
    CANCEL_OBSERVE_COMPOSITE = "CANCEL_OBSERVE_COMPOSITE"
    WRITE_COMPOSITE = "WRITE_COMPOSITE"


METHODS = ("GET", "PUT", "POST", "DELETE", "FETCH", "iPATCH")
READ_KINDS = (Operation.READ, Operation.OBSERVE, Operation.CANCEL_OBSERVE)
COMPOSITE_READ_KINDS = (
    Operation.READ_COMPOSITE, Operation.OBSERVE_COMPOSITE, Operation.CANCEL_OBSERVE_COMPOSITE,
)


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One CoAP request to a device, ready for the adapter to send."""

    kind: Operation
    """The LwM2M operation."""
    method: str
    """CoAP method: GET, PUT, POST, DELETE, FETCH or iPATCH."""
    uri_path: tuple[str, ...]
    """Uri-Path segments, the registration's root path first (``("lwm2m", "3", "0")``)."""
    query: tuple[str, ...] = ()
    """Uri-Query items (Write-Attributes)."""
    content_format: int | None = None
    """Content-Format of the payload; None when there is none."""
    accept: int | None = None
    """Accept option; None to send none."""
    payload: bytes = b""
    """Request body."""
    observe: int | None = None
    """Observe option: 0 register, 1 deregister, None absent."""
    paths: tuple[LwM2MPath, ...] = ()
    """The LwM2M paths concerned (one, or several for composite operations)."""

    def __post_init__(self) -> None:
        for name in ("content_format", "accept"):  # plain ints, not ContentFormat members
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
        if self.method not in METHODS:
            raise OperationError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.observe not in (None, 0, 1):
            raise OperationError(f"observe must be 0, 1 or None, got {self.observe!r}")

    @property
    def uri(self) -> str:
        """``/lwm2m/3/0?pmin=10``, for logs and the CLI."""
        text = "/" + "/".join(self.uri_path)
        return text + ("?" + "&".join(self.query) if self.query else "")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (payload in base64) for persisting queued requests."""
        return {"kind": self.kind.value, "method": self.method, "uri_path": list(self.uri_path),
                "query": list(self.query), "content_format": self.content_format,
                "accept": self.accept, "payload": base64.b64encode(self.payload).decode("ascii"),
                "observe": self.observe, "paths": [str(path) for path in self.paths]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceRequest:
        """The inverse of :meth:`to_dict`; OperationError names a malformed field."""
        try:
            kind = Operation(data["kind"])
            payload = base64.b64decode(str(data.get("payload", "")).encode("ascii"), validate=True)
            paths = tuple(LwM2MPath.parse(text) for text in data.get("paths", ()))
            strings = {name: tuple(data.get(name, ())) for name in ("uri_path", "query")}
            for name, items in strings.items():
                if not all(isinstance(item, str) for item in items):
                    raise OperationError(f"request {name} must be a list of strings")
            options = {name: data.get(name) for name in ("content_format", "accept", "observe")}
            for name, value in options.items():
                if value is not None and type(value) is not int:
                    raise OperationError(f"request {name} must be an integer or null, got {value!r}")
            return cls(kind, str(data["method"]), strings["uri_path"], strings["query"],
                       options["content_format"], options["accept"], payload,
                       options["observe"], paths)
        except KeyError as missing:
            raise OperationError(f"request dict lacks {missing.args[0]!r}") from None
        except ValueError as error:  # unknown kind, bad base64 (binascii.Error)
            raise OperationError(f"malformed request dict: {error}") from None
        except PathError as error:
            raise OperationError(f"malformed request path: {error.reason}") from None
