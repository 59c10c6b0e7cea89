"""The Registration interface (``/rd``), sans-I/O: parse, validate, keep the book.

Register, Update and De-register follow OMA LwM2M Core 1.0/1.1/1.2 §6.2
(Client Registration Interface). Time is passed in as ``now`` (Unix seconds).
A device is identified by its registration id and endpoint name, never by its
source address: every accepted message records the newest address.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

from ipso_objects import DecodeError, LwM2MPath
from ipso_objects.codecs import ContentFormat
from ipso_objects.codecs import link_format

from ..security.random_bytes import random_bytes

SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")
DEFAULT_LIFETIME = 86400
"""Seconds; the Core spec's default when Register carries no ``lt``."""
MAX_LIFETIME = 2**32 - 1
MAX_ENDPOINT_LENGTH = 255
_VERSION = re.compile(r"[0-9]+\.[0-9]+")
_BINDING = re.compile(r"[UTSNQ]+")
_SMS = re.compile(r"\+?[0-9]{1,20}")


class RegistrationError(Exception):
    """A Register/Update/De-register that must be refused; ``code`` is the CoAP response."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        """CoAP response code in dotted form, e.g. ``"4.00"``."""
        self.reason = reason
        """Diagnostic text for the response payload."""


def bad_request(reason: str) -> RegistrationError:
    return RegistrationError("4.00", reason)


@dataclass(frozen=True, slots=True)
class ObjectLink:
    """An object or object instance the client advertised (``</3/0>;ver=1.1``)."""

    path: LwM2MPath
    """``/o`` or ``/o/i``."""
    version: str | None = None
    """Object version from ``ver=``; None means the object's default (1.0)."""


@dataclass(frozen=True, slots=True)
class ObjectList:
    """What a Register (or Update) payload says: root path, formats, objects."""

    root_path: str = "/"
    """Alternate path (``</lwm2m>;rt="oma.lwm2m"``) or ``/``."""
    content_formats: tuple[int, ...] = ()
    """Content formats from the root link's ``ct=``, in the client's order."""
    objects: tuple[ObjectLink, ...] = ()
    """Objects and instances in payload order."""
    object_ids: frozenset[int] = field(init=False, repr=False, compare=False)
    """The objects named (asked several times per discovery)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "object_ids", frozenset(link.path.ids[0] for link in self.objects))


@dataclass(frozen=True, slots=True)
class RegisterParams:
    """A parsed, validated Register request."""

    endpoint: str
    """Endpoint client name (``ep``)."""
    lifetime: int = DEFAULT_LIFETIME
    """Seconds (``lt``)."""
    lwm2m_version: str = "1.0"
    """Enabler version (``lwm2m``)."""
    binding: str = "U"
    """Transport bindings without the queue flag (``b``)."""
    queue_mode: bool = False
    """``Q`` flag (1.1+) or a ``Q`` in ``b`` (1.0)."""
    sms: str | None = None
    """MSISDN (``sms``)."""
    object_list: ObjectList = field(default_factory=ObjectList)
    """The link-format payload."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Query parameters the spec does not define, kept for the operator."""


@dataclass(frozen=True, slots=True)
class UpdateParams:
    """A parsed Update request; None means "unchanged"."""

    lifetime: int | None = None
    binding: str | None = None
    queue_mode: bool | None = None
    sms: str | None = None
    object_list: ObjectList | None = None
    lwm2m_version: str | None = None
    """Not an Update parameter in the spec, but lwm2m-node-lib sends it: tolerated
    when it repeats the registered version."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A live registration."""

    id: str
    """Registration id; the location is ``/rd/<id>``."""
    endpoint: str
    """Endpoint client name."""
    address: str
    """Newest source address, ``host:port`` (``[v6]:port`` for IPv6)."""
    lifetime: int
    """Seconds the registration lives after ``updated_at``."""
    lwm2m_version: str
    """Enabler version the client registered with."""
    binding: str
    """Bindings (without the queue flag)."""
    queue_mode: bool
    """True when the client sleeps between Updates."""
    sms: str | None
    """MSISDN, if given."""
    object_list: ObjectList
    """Objects, instances, root path and formats the client advertised."""
    registered_at: float
    """Unix time of the Register."""
    updated_at: float
    """Unix time of the Register or last Update."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Unknown query parameters of the Register."""
    identity: str | None = None
    """PSK identity the device registered with over CoAPS; None for plain CoAP (NoSec).
    Every later request of the registration must come from the same identity."""

    @property
    def location(self) -> str:
        return f"/rd/{self.id}"

    @property
    def expires_at(self) -> float:
        return self.updated_at + self.lifetime

    def is_expired(self, now: float) -> bool:
        return now > self.expires_at

    def object_version(self, object_id: int) -> str | None:
        """The version the client advertised for ``object_id`` (None if not given)."""
        for link in self.object_list.objects:
            if link.path.ids[0] == object_id and link.version is not None:
                return link.version
        return None

    def supports(self, object_id: int) -> bool:
        return object_id in self.object_list.object_ids

    def instances(self, object_id: int) -> list[int]:
        """Instance ids advertised for ``object_id``."""
        return [
            link.path.ids[1]
            for link in self.object_list.objects
            if len(link.path) == 2 and link.path.ids[0] == object_id
        ]


def _query_pairs(query: Sequence[str]) -> dict[str, str | None]:
    """``("ep=x", "Q")`` → ``{"ep": "x", "Q": None}``; a repeated name is refused."""
    params: dict[str, str | None] = {}
    for item in query:
        name, sep, value = item.partition("=")
        if not name:
            raise bad_request(f"query parameter {item!r} has no name")
        if name in params:
            raise bad_request(f"query parameter {name!r} given twice")
        params[name] = value if sep else None
    return params


def _value(params: Mapping[str, str | None], name: str) -> str | None:
    if name not in params:
        return None
    value = params[name]
    if value is None or value == "":
        raise bad_request(f"{name} needs a value")
    return value


def _lifetime(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise bad_request(f"lt={text!r} is not a positive integer of seconds")
    lifetime = int(text)
    if not 1 <= lifetime <= MAX_LIFETIME:
        raise bad_request(f"lt={lifetime} out of range 1..{MAX_LIFETIME}")
    return lifetime


def _binding(text: str) -> tuple[str, bool]:
    """Split ``b`` into bindings and the 1.0-style queue flag."""
    if not _BINDING.fullmatch(text) or len(set(text)) != len(text):
        raise bad_request(f"b={text!r} is not a binding (letters U, T, S, N, Q once each)")
    bindings = text.replace("Q", "")
    if not bindings:
        raise bad_request(f"b={text!r} names no transport")
    return bindings, "Q" in text


def _sms(text: str) -> str:
    if not _SMS.fullmatch(text):
        raise bad_request(f"sms={text!r} is not an MSISDN")
    return text


def _check_content_format(content_format: int | None, payload: bytes) -> None:
    # lwm2m-node-lib and others send no Content-Format: link format is implied.
    if content_format is not None and content_format != ContentFormat.LINK and payload:
        raise RegistrationError(
            "4.15", f"Content-Format {content_format} is not link format (40)"
        )


@functools.lru_cache(maxsize=1024)
def parse_object_list(payload: bytes) -> ObjectList:
    """The Register/Update payload: ``</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>;ver=1.1``.

    Cached: the devices of one class send the same list (an error is not cached)."""
    try:
        return _object_list(link_format.decode(payload))
    except DecodeError as error:
        raise bad_request(f"payload is not a valid object list: {error.reason}") from None


def _object_list(links: list[link_format.Link]) -> ObjectList:
    root = link_format.lwm2m_root(links)
    content_formats: tuple[int, ...] = ()
    objects: list[ObjectLink] = []
    seen: set[LwM2MPath] = set()
    for link in links:
        if "oma.lwm2m" in link.rt:
            content_formats = link.ct
            continue
        path = link.path_under(root)
        if path is None:
            continue  # not an LwM2M object link; the spec lets clients list others
        if path.is_root or len(path) > 2:
            raise DecodeError(f"<{link.target}> is not an object or object instance")
        if path in seen:
            raise DecodeError(f"<{link.target}> is listed twice")
        seen.add(path)
        objects.append(ObjectLink(path, link.ver))
    return ObjectList(root, content_formats, tuple(objects))


def parse_register(
    query: Sequence[str], payload: bytes, content_format: int | None = None
) -> RegisterParams:
    """Validate a Register; raises :class:`RegistrationError` (4.00, 4.15)."""
    _check_content_format(content_format, payload)
    params = _query_pairs(query)
    endpoint = _value(params, "ep")
    if endpoint is None:
        raise bad_request("missing endpoint client name (ep)")
    if len(endpoint) > MAX_ENDPOINT_LENGTH or not endpoint.isprintable():
        raise bad_request(f"ep must be 1..{MAX_ENDPOINT_LENGTH} printable characters")
    version = _value(params, "lwm2m") or "1.0"
    if not _VERSION.fullmatch(version) or version not in SUPPORTED_VERSIONS:
        raise bad_request(
            f"lwm2m={version!r} is not a supported version ({', '.join(SUPPORTED_VERSIONS)})"
        )
    lifetime_text = _value(params, "lt")
    binding, queue_in_binding = _binding(_value(params, "b") or "U")
    queue_flag = "Q" in params
    if queue_flag and params["Q"] is not None:
        raise bad_request("Q is a flag and takes no value")
    if queue_flag and version == "1.0":
        raise bad_request("the Q parameter needs LwM2M 1.1 or later (1.0 uses b=UQ)")
    sms = _value(params, "sms")
    known = {"ep", "lt", "lwm2m", "b", "Q", "sms"}
    extra = {k: v or "" for k, v in params.items() if k not in known}
    return RegisterParams(
        endpoint=endpoint,
        lifetime=_lifetime(lifetime_text) if lifetime_text is not None else DEFAULT_LIFETIME,
        lwm2m_version=version,
        binding=binding,
        queue_mode=queue_flag or queue_in_binding,
        sms=_sms(sms) if sms is not None else None,
        object_list=parse_object_list(payload),
        extra=extra,
    )


def parse_update(
    query: Sequence[str], payload: bytes, content_format: int | None = None
) -> UpdateParams:
    """Validate an Update; raises :class:`RegistrationError` (4.00, 4.15)."""
    _check_content_format(content_format, payload)
    params = _query_pairs(query)
    unknown = set(params) - {"lt", "b", "Q", "sms", "lwm2m"}
    if unknown:
        raise bad_request(f"unknown Update parameter(s): {', '.join(sorted(unknown))}")
    lifetime = _value(params, "lt")
    binding_text = _value(params, "b")
    binding, queue_in_binding = _binding(binding_text) if binding_text else (None, False)
    queue: bool | None = None
    if "Q" in params:
        queue = True
    elif binding_text is not None:
        queue = queue_in_binding
    sms = _value(params, "sms")
    return UpdateParams(
        lifetime=_lifetime(lifetime) if lifetime is not None else None,
        binding=binding,
        queue_mode=queue,
        sms=_sms(sms) if sms is not None else None,
        object_list=parse_object_list(payload) if payload else None,
        lwm2m_version=_value(params, "lwm2m"),
    )


def new_registration_id() -> str:
    """A short random id (8 random bytes, URL-safe base64): unguessable, so another client
    cannot update or delete it."""
    return base64.urlsafe_b64encode(random_bytes(8)).rstrip(b"=").decode()


class RegistrationBook:
    """Live registrations by id and endpoint; the only place their rules live.

    Pure state: the adapter persists what each call returns.
    """

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self._by_id: dict[str, Registration] = {}
        self._by_endpoint: dict[str, str] = {}
        self._by_address: dict[str, dict[str, None]] = {}  # ids in the order they came to the address
        self._sorted: list[Registration] | None = None  # by endpoint; made again after a change
        for registration in registrations:
            self._put(registration)

    def restore(self, registration: Registration) -> None:
        """Put back a registration loaded from the store."""
        self._put(registration)

    def _put(self, registration: Registration) -> None:
        previous = self._by_id.get(registration.id)
        if previous is not None:
            self._leave_address(previous)
        self._by_id[registration.id] = registration
        self._by_endpoint[registration.endpoint] = registration.id
        self._by_address.setdefault(registration.address, {})[registration.id] = None
        self._sorted = None

    def _pop(self, registration_id: str) -> Registration | None:
        registration = self._by_id.pop(registration_id, None)
        if registration is not None:
            self._leave_address(registration)
            self._sorted = None
        return registration

    def _leave_address(self, registration: Registration) -> None:
        ids = self._by_address.get(registration.address)
        if ids is not None:
            ids.pop(registration.id, None)
            if not ids:
                del self._by_address[registration.address]

    def register(
        self, params: RegisterParams, address: str, now: float, registration_id: str | None = None,
        identity: str | None = None,
    ) -> tuple[Registration, Registration | None]:
        """Add a registration; a previous one of the same endpoint is replaced and returned."""
        previous_id = self._by_endpoint.get(params.endpoint)
        previous = self._pop(previous_id) if previous_id is not None else None
        registration = Registration(
            id=registration_id or new_registration_id(),
            endpoint=params.endpoint,
            address=address,
            lifetime=params.lifetime,
            lwm2m_version=params.lwm2m_version,
            binding=params.binding,
            queue_mode=params.queue_mode,
            sms=params.sms,
            object_list=params.object_list,
            registered_at=now,
            updated_at=now,
            extra=dict(params.extra),
            identity=identity,
        )
        self._put(registration)
        return registration, previous

    def update(self, registration_id: str, params: UpdateParams, address: str, now: float) -> Registration:
        """Apply an Update; unknown or expired ids are 4.04."""
        current = self._live(registration_id, now)
        if params.lwm2m_version not in (None, current.lwm2m_version):
            raise bad_request(
                f"lwm2m={params.lwm2m_version} differs from the registered {current.lwm2m_version}: "
                "a version change needs a new Register"
            )
        updated = replace(
            current,
            address=address,
            updated_at=now,
            lifetime=params.lifetime if params.lifetime is not None else current.lifetime,
            binding=params.binding if params.binding is not None else current.binding,
            queue_mode=params.queue_mode if params.queue_mode is not None else current.queue_mode,
            sms=params.sms if params.sms is not None else current.sms,
            object_list=params.object_list if params.object_list is not None else current.object_list,
        )
        self._put(updated)
        return updated

    def deregister(self, registration_id: str) -> Registration:
        """Remove a registration; unknown ids are 4.04."""
        registration = self._pop(registration_id)
        if registration is None:
            raise RegistrationError("4.04", f"no registration {registration_id}")
        del self._by_endpoint[registration.endpoint]
        return registration

    def expire(self, now: float) -> list[Registration]:
        """Remove and return every registration whose lifetime has run out."""
        expired = [r for r in self._by_id.values() if r.is_expired(now)]
        for registration in expired:
            self.deregister(registration.id)
        return expired

    def _live(self, registration_id: str, now: float) -> Registration:
        registration = self._by_id.get(registration_id)
        if registration is None or registration.is_expired(now):
            raise RegistrationError("4.04", f"no registration {registration_id}")
        return registration

    def get(self, registration_id: str) -> Registration | None:
        return self._by_id.get(registration_id)

    def by_endpoint(self, endpoint: str) -> Registration | None:
        registration_id = self._by_endpoint.get(endpoint)
        return self._by_id.get(registration_id) if registration_id is not None else None

    def by_address(self, address: str) -> Registration | None:
        """The registration whose newest source address is ``address`` (for Send); of
        several at one address, the one that came to it last."""
        ids = self._by_address.get(address)
        return self._by_id[next(reversed(ids))] if ids else None

    def __iter__(self):
        if self._sorted is None:
            self._sorted = sorted(self._by_id.values(), key=lambda r: r.endpoint)
        return iter(self._sorted)

    def __len__(self) -> int:
        return len(self._by_id)
