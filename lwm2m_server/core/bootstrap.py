"""Client-initiated bootstrap (LwM2M Core 1.1, Bootstrap Interface), sans-I/O.

A device sends **Bootstrap-Request** ``POST /bs?ep=NAME[&pct=FORMAT]``; the
Bootstrap-Server answers 2.04 and then configures the device with a sequence of
requests of its own. :func:`parse_bootstrap_request` checks the request,
:class:`BootstrapSession` yields that sequence one request at a time and judges
each answer; :func:`plan` lists it whole. The adapter
(:mod:`lwm2m_server.bootstrap_server`) only moves the requests.

The sequence, and why::

    Bootstrap-Delete   /0           every Security instance except the Bootstrap-Server
                                    account, which Bootstrap-Delete never removes
    Bootstrap-Delete   /1           every Server account
    Bootstrap-Delete   /21          every OSCORE context (not the one of the Bootstrap-
                                    Server account, if it has one)
    Bootstrap-Discover /            which Security instances are left (the bootstrap
                                    account) and whether /26241/0 exists
    Bootstrap-Write    /21/x        the OSCORE context, for an OSCORE account only
    Bootstrap-Write    /0/s         the LwM2M Server account (s: the lowest free id)
    Bootstrap-Write    /1/v         its Server object instance
    Bootstrap-Write    /26241/0/21  Module Trust Anchors (when there are any)
    Bootstrap-Finish   POST /bs

``/0`` and ``/1`` rather than ``/``: a Bootstrap-Delete of ``/`` wipes every object
instance but the Device object and the bootstrap account, so the device would
lose its TinyML state, software packages and sensors (object 9, 26241, 33xx).
Deleting ``/0`` keeps the bootstrap account by definition of the operation, so
the device can still bootstrap again. Bootstrap-Discover exists since LwM2M 1.1;
a 1.0 client refuses it and the plan then writes Security instance 1 (the
bootstrap account is instance 0 on Zephyr, Wakaama and Anjay alike).

Three kinds of account (:class:`ServerAccount`): DTLS PSK (Security Mode 0,
``coaps://``), NoSec (Security Mode 3, ``coap://``), and OSCORE (LwM2M 1.1, RFC
8613): Security Mode 3 at the DTLS level, a ``coap://`` URI, and resource 17
(OSCORE Security Mode) linking to the ``/21/x`` instance that holds the context
(Master Secret, Sender ID, Recipient ID, AEAD, HKDF, Master Salt, ID Context) as
the *device* sees it: its Sender ID is the server's Recipient ID and the other
way round (:func:`device_context`). /21 is deleted in every plan, so no context
of an earlier bootstrap outlives it; an OSCORE object's instance ids, like the
Security ones, come from the discovery (1 without one).

Content format of the writes: **TLV (11542) first**, whatever ``pct`` says. Every
1.0 client must support TLV, nearly every 1.1 client does, and TLV carries Opaque
values (the PSK, the OSCORE secrets) as raw bytes: no text encoding to disagree
on. ``pct`` is the client's *preferred* format, not a statement that it lacks TLV;
a client lacking it answers **4.15** Unsupported Content-Format. The same write
then goes again in the next of :attr:`BootstrapRequest.write_formats`: the binary
ones first (``pct`` if SenML CBOR or LwM2M CBOR, then SenML CBOR: a CBOR byte
string), then the JSON ones (``pct`` if SenML JSON or OMA JSON, then SenML JSON).
A JSON write answered **4.00** goes on too (how clients answer base64 they read
differently); a 4.00 to TLV or CBOR refuses the values and ends the bootstrap.
Each format is tried at most once per bootstrap, the one taken is kept for the
writes after it, and when none is taken the failure
(:attr:`BootstrapSession.failure`) names the step, the path and the format; every
attempt is in :attr:`BootstrapSession.results`. Nothing is regenerated: the same
values are re-encoded. The client's next Bootstrap-Request runs the same bounded
sequence from TLV again (no memory of refused formats: firmware changes, and TLV
suits nearly every client), so no retry loops on one failing encoding.

Opaque values in the JSON formats follow each format's specification (the codecs
in :mod:`ipso_objects.codecs`): SenML JSON ``vd`` is base64url **without padding**
(RFC 8428 §4.3: "Data Value is a base64-encoded string with the URL-safe alphabet
as defined in Section 5 of [RFC4648], with padding omitted"); OMA JSON (LwM2M 1.0:
"the string value holds the Base64 encoded representation") and text/plain (Core
1.1 Table C.2: "Represented as a Base64 encoding of the binary data [RFC4648]")
use the classic alphabet with padding (RFC 4648 §4). Core 1.1 §7.4.4 says only
"base64" for SenML JSON, and widely used clients decode ``vd`` as classic base64:
a key whose base64url holds ``-`` or ``_`` reaches them broken. Hence SenML JSON
comes last.

Answers (:meth:`BootstrapStep.judge`): a Delete answering 4.04 (nothing there),
a Discover answering anything but 2.05 (1.0 clients), a trust-anchor Write
answering 4.04 (a device without the TinyML object or without resource 21) are
tolerated, and so is any 4.xx to the Delete of /21 (a device without the OSCORE
object, LwM2M 1.0 clients among them); a Write answering 4.15 (or 4.00 to a JSON
format) goes again in the next format (above) while there is one; any other error aborts the
bootstrap, and Bootstrap-Finish answering 4.06 means the device found the
configuration unusable.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Sequence

from ipso_objects import (
    DecodeError, IpsoError, LwM2MPath, MultiResource, ObjectInstance, ObjectRegistry, ObjLnk, Resource,
    TINYML_OBJECT_ID, codecs,
)
from ipso_objects.codecs import ContentFormat as CF
from ipso_objects.codecs import link_format

from .operations import DeviceRequest, Operation, format_name
from ..security.oscore import OscoreContext, OscoreCredential

BOOTSTRAP_PATH = ("bs",)
"""Uri-Path of Bootstrap-Request (device → server) and Bootstrap-Finish (server → device)."""
SECURITY, SERVER, OSCORE = 0, 1, 21
OSCORE_LINK = 17
"""/0/x/17 OSCORE Security Mode: Objlnk to the /21 instance the account uses."""
TRUST_ANCHORS = LwM2MPath.of(TINYML_OBJECT_ID, 0, 21)
OSCORE_OBJECT = LwM2MPath.of(OSCORE)
"""Module Trust Anchors: DER SubjectPublicKeyInfo of each key modules may be signed by."""
WRITE_FORMATS = (CF.TLV, CF.SENML_CBOR, CF.SENML_JSON, CF.LWM2M_CBOR, CF.OMA_JSON)
"""Formats that carry an object instance, so Bootstrap-Write can use them."""
DEFAULT_FORMAT = CF.TLV
BINARY_FORMATS = (CF.SENML_CBOR, CF.LWM2M_CBOR)
JSON_FORMATS = (CF.SENML_JSON, CF.OMA_JSON)
"""Formats that carry Opaque values as base64 text (the encoding clients disagree on)."""
MAX_ENDPOINT_LENGTH = 255
_PCT = re.compile(r"[0-9]{1,5}")


class SecurityMode(enum.IntEnum):
    """/0/x/2 Security Mode."""

    PSK = 0
    RPK = 1
    CERTIFICATE = 2
    NO_SEC = 3
    CERTIFICATE_EST = 4


class BootstrapError(Exception):
    """A Bootstrap-Request that must be refused, or a plan that cannot be built;
    ``code`` is the CoAP response for the device."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        """Dotted CoAP response code, e.g. ``"4.00"``."""
        self.reason = reason
        """Diagnostic text (never a key)."""


@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    """A parsed Bootstrap-Request."""

    endpoint: str
    """Endpoint client name (``ep``)."""
    preferred_format: int | None = None
    """Preferred Content Format (``pct``), None when absent."""

    @property
    def write_formats(self) -> tuple[int, ...]:
        """The Content-Formats a Bootstrap-Write tries, in order: TLV; ``pct`` if it is a
        CBOR format, SenML CBOR; ``pct`` if it is a JSON format, SenML JSON (see the
        module docstring)."""
        pct = self.preferred_format
        order = [DEFAULT_FORMAT, *([pct] if pct in BINARY_FORMATS else []), CF.SENML_CBOR,
                 *([pct] if pct in JSON_FORMATS else []), CF.SENML_JSON]
        return tuple(dict.fromkeys(int(f) for f in order))  # type: ignore[arg-type]

    @property
    def write_format(self) -> int:
        """The Content-Format the Bootstrap-Writes start with: TLV."""
        return self.write_formats[0]


def parse_bootstrap_request(query: Sequence[str]) -> BootstrapRequest:
    """``("ep=dev-1", "pct=112")`` → BootstrapRequest. A missing, empty, repeated or
    unprintable ``ep``, or a ``pct`` that is not a number, raises BootstrapError 4.00.
    Other parameters are ignored (later enabler versions may add some)."""
    params: dict[str, str | None] = {}
    for item in query:
        name, sep, value = item.partition("=")
        if name in params:
            raise BootstrapError("4.00", f"query parameter {name!r} given twice")
        params[name] = value if sep else None
    endpoint = params.get("ep")
    if not endpoint:
        raise BootstrapError("4.00", "missing endpoint client name (ep)")
    if len(endpoint) > MAX_ENDPOINT_LENGTH or not endpoint.isprintable():
        raise BootstrapError("4.00", f"ep must be 1..{MAX_ENDPOINT_LENGTH} printable characters")
    pct_text = params.get("pct")
    pct = None
    if "pct" in params:
        if pct_text is None or not _PCT.fullmatch(pct_text) or int(pct_text) > 65535:
            raise BootstrapError("4.00", f"pct must be a Content-Format number, got {pct_text!r}")
        pct = int(pct_text)
    return BootstrapRequest(endpoint, pct)


@dataclass(frozen=True, slots=True)
class Psk:
    """A DTLS pre-shared key credential."""

    identity: str
    """PSK identity (written as UTF-8 bytes to /0/x/3)."""
    key: bytes = field(repr=False)
    """The key (/0/x/5); never in repr or logs."""


def device_context(credential: OscoreCredential) -> OscoreContext:
    """The context the device must hold for the server's ``credential``: the same
    secret, salt, ID Context and algorithms, Sender and Recipient ID swapped."""
    return credential.reversed()


@dataclass(frozen=True, slots=True)
class ServerAccount:
    """The LwM2M Server account the plan writes (Security + Server instance)."""

    uri: str
    """LwM2M Server URI: ``coaps://`` with a PSK, ``coap://`` without."""
    short_server_id: int = 1
    """Short Server ID, 1..65534 (/0/x/10 and /1/y/0)."""
    lifetime: int = 86400
    """Registration lifetime in seconds (/1/y/1)."""
    binding: str = "U"
    """Binding (/1/y/7)."""
    psk: Psk | None = None
    """Security Mode 0 (PSK) with this credential; None: Security Mode 3 (NoSec)."""
    notification_storing: bool = True
    """/1/y/6: keep notifications while the server is unreachable."""
    oscore: OscoreContext | None = None
    """OSCORE with this context (Security Mode 3, coap://, /0/x/17 linking /21/y); None: no OSCORE."""

    def __post_init__(self) -> None:
        scheme = self.uri.partition("://")[0].lower() if "://" in self.uri else ""
        if scheme not in ("coap", "coaps") or len(self.uri) > 255:
            raise BootstrapError("5.00", f"server URI {self.uri!r} is not a coap:// or coaps:// URI")
        if (scheme == "coaps") != (self.psk is not None):
            raise BootstrapError(
                "5.00", "a coaps:// server URI needs a PSK and a coap:// one none "
                        f"(uri {self.uri!r}, {'PSK' if self.psk else 'NoSec'})")
        if self.oscore is not None and scheme != "coap":
            raise BootstrapError("5.00", f"an OSCORE account needs a coap:// server URI, got {self.uri!r}")
        if not 1 <= self.short_server_id <= 65534:
            raise BootstrapError("5.00", f"short server id must be 1..65534, got {self.short_server_id}")
        if self.lifetime < 1:
            raise BootstrapError("5.00", f"lifetime must be > 0, got {self.lifetime}")

    @property
    def security_mode(self) -> SecurityMode:
        return SecurityMode.PSK if self.psk is not None else SecurityMode.NO_SEC

    @property
    def security(self) -> str:
        """``psk``, ``oscore`` or ``nosec`` (for logs)."""
        return "psk" if self.psk is not None else "oscore" if self.oscore is not None else "nosec"


def security_instance(account: ServerAccount, instance_id: int, oscore_instance: int | None = None) -> ObjectInstance:
    """The Security (0) instance of ``account``: URI, not a Bootstrap-Server, Security
    Mode, identity, server public key (empty: PSK has none), secret key, SSID, and for
    an OSCORE account resource 17 linking ``/21/oscore_instance``."""
    identity = account.psk.identity.encode("utf-8") if account.psk else b""
    key = account.psk.key if account.psk else b""
    values: dict[int, object] = {0: account.uri, 1: False, 2: int(account.security_mode), 3: identity, 4: b"",
                                 5: key, 10: account.short_server_id}
    if account.oscore is not None:
        if oscore_instance is None:
            raise BootstrapError("5.00", "an OSCORE account needs the /21 instance it links to")
        values[OSCORE_LINK] = ObjLnk(OSCORE, oscore_instance)
    return ObjectInstance(instance_id, {rid: Resource(rid, value) for rid, value in values.items()})


def oscore_instance(context: OscoreContext, instance_id: int) -> ObjectInstance:
    """The OSCORE (21) instance of ``context``: Master Secret, Sender ID, Recipient ID,
    AEAD, HKDF, Master Salt, and the ID Context when there is one."""
    values: dict[int, object] = {0: context.master_secret, 1: context.sender_id, 2: context.recipient_id,
                                 3: context.aead, 4: context.hkdf, 5: context.master_salt}
    if context.id_context is not None:
        values[6] = context.id_context
    return ObjectInstance(instance_id, {rid: Resource(rid, value) for rid, value in values.items()})


def server_instance(account: ServerAccount, instance_id: int) -> ObjectInstance:
    """The Server (1) instance of ``account``: SSID, lifetime, notification storing, binding."""
    values = {0: account.short_server_id, 1: account.lifetime, 6: account.notification_storing,
              7: account.binding}
    return ObjectInstance(instance_id, {rid: Resource(rid, value) for rid, value in values.items()})


# -- Bootstrap-Discover ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a Bootstrap-Discover of ``/`` said."""

    lwm2m_version: str | None = None
    """The client's enabler version (``</>;lwm2m=1.1``)."""
    instances: frozenset[LwM2MPath] = frozenset()
    """Object instances listed (``/o/i``)."""
    objects: frozenset[int] = frozenset()
    """Objects listed, with or without instances."""

    def instance_ids(self, object_id: int) -> set[int]:
        return {path.ids[1] for path in self.instances if path.ids[0] == object_id}


def parse_discovery(payload: bytes) -> Discovery:
    """A Bootstrap-Discover response (link format); BootstrapError 4.00 if it does not decode."""
    try:
        links = link_format.decode(payload)
        version = next((link.lwm2m for link in links if link.target == "/" and link.lwm2m), None)
    except DecodeError as error:
        raise BootstrapError("4.00", f"Bootstrap-Discover answer: {error.reason}") from None
    instances, objects = set(), set()
    for link in links:
        path = link.path
        if path is None or path.is_root:
            continue
        objects.add(path.ids[0])
        if len(path) >= 2:
            instances.add(LwM2MPath(path.ids[:2]))
    return Discovery(version, frozenset(instances), frozenset(objects))


def _free_id(taken: set[int], default: int) -> int:
    if not taken:
        return default
    return next(i for i in range(65535) if i not in taken)


# -- the plan -------------------------------------------------------------------------------


class StepKind(enum.Enum):
    DELETE = "delete"
    DISCOVER = "discover"
    WRITE = "write"
    FINISH = "finish"


class Outcome(enum.Enum):
    """What an answer means for the bootstrap."""

    DONE = "done"
    TOLERATED = "tolerated"
    """An error that does not stop the bootstrap (see the module docstring)."""
    RETRIED = "retried"
    """A Write the device could not take in this format: it goes again in the next one."""
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BootstrapStep:
    """One request of the plan."""

    name: str
    """``delete /0``, ``discover /``, ``write /0/1``, ``write /26241/0/21``, ``finish``."""
    kind: StepKind
    request: DeviceRequest
    """The request to send (Bootstrap-Finish is carried as an EXECUTE-kind POST /bs)."""

    @property
    def path(self) -> LwM2MPath | None:
        """The path the request targets (None for Bootstrap-Finish)."""
        return self.request.paths[0] if self.request.paths else None

    @property
    def content_format(self) -> int | None:
        """The Content-Format of the request's payload (a Write's), else None."""
        return self.request.content_format

    def judge(self, code: str) -> Outcome:
        """Whether the device's answer ``code`` lets the bootstrap go on."""
        if code.startswith("2."):
            return Outcome.DONE
        if self.kind is StepKind.DELETE and code == "4.04":
            return Outcome.TOLERATED
        if self.kind is StepKind.DELETE and self.request.paths == (OSCORE_OBJECT,) and code.startswith("4."):
            return Outcome.TOLERATED  # a device without the OSCORE object
        if self.kind is StepKind.DISCOVER:
            return Outcome.TOLERATED
        if self.kind is StepKind.WRITE and self.request.paths == (TRUST_ANCHORS,) and code == "4.04":
            return Outcome.TOLERATED
        return Outcome.FAILED


def _uri(path: LwM2MPath) -> tuple[str, ...]:
    return tuple(str(i) for i in path.ids)


def delete_step(path: LwM2MPath) -> BootstrapStep:
    """Bootstrap-Delete ``path`` (DELETE)."""
    return BootstrapStep(f"delete {path}", StepKind.DELETE,
                         DeviceRequest(Operation.DELETE, "DELETE", _uri(path), paths=(path,)))


def discover_step(path: LwM2MPath = LwM2MPath()) -> BootstrapStep:
    """Bootstrap-Discover ``path`` (GET, Accept: link format)."""
    return BootstrapStep(f"discover {path}", StepKind.DISCOVER,
                         DeviceRequest(Operation.DISCOVER, "GET", _uri(path), accept=CF.LINK, paths=(path,)))


def write_step(path: LwM2MPath, node, content_format: int, registry: ObjectRegistry) -> BootstrapStep:
    """Bootstrap-Write ``node`` to ``path`` (PUT) in ``content_format``."""
    try:
        payload = codecs.encode(content_format, node, path, registry)
    except (IpsoError, ImportError) as error:
        reason = error.reason if isinstance(error, IpsoError) else "codec not available"
        raise BootstrapError("5.00", f"cannot encode {path} as {format_name(content_format)}: {reason}") from None
    return BootstrapStep(f"write {path}", StepKind.WRITE,
                         DeviceRequest(Operation.WRITE_REPLACE, "PUT", _uri(path), content_format=content_format,
                                       payload=payload, paths=(path,)))


def finish_step() -> BootstrapStep:
    """Bootstrap-Finish (POST /bs)."""
    return BootstrapStep("finish", StepKind.FINISH, DeviceRequest(Operation.EXECUTE, "POST", BOOTSTRAP_PATH))


def prelude() -> tuple[BootstrapStep, ...]:
    """Bootstrap-Delete /0, /1 and /21, then Bootstrap-Discover /."""
    return (delete_step(LwM2MPath.of(SECURITY)), delete_step(LwM2MPath.of(SERVER)), delete_step(OSCORE_OBJECT),
            discover_step())


def configuration(
    request: BootstrapRequest,
    account: ServerAccount,
    trust_anchors: Sequence[bytes] = (),
    discovery: Discovery | None = None,
    *,
    registry: ObjectRegistry | None = None,
    content_format: int | None = None,
) -> tuple[BootstrapStep, ...]:
    """The Bootstrap-Writes and Bootstrap-Finish that follow :func:`prelude`, in
    ``content_format`` (default: the request's first, TLV).

    The Security instance takes the lowest id the discovery left free (1 without
    a discovery); the Server instance likewise (0), and the OSCORE instance of an
    OSCORE account (1 without a discovery: 0 may hold the Bootstrap-Server's own
    context), written first so the Security instance's link resolves.
    Trust anchors are written when given, unless the discovery shows the device
    has no /26241/0.
    """
    registry = registry or ObjectRegistry.default()
    anchors = [bytes(anchor) for anchor in trust_anchors]
    if any(not anchor for anchor in anchors):
        raise BootstrapError("5.00", "a trust anchor is empty")
    fmt = request.write_format if content_format is None else content_format
    security_id = _free_id(discovery.instance_ids(SECURITY) if discovery else set(), 1)
    server_id = _free_id(discovery.instance_ids(SERVER) if discovery else set(), 0)
    steps = []
    oscore_id = None
    if account.oscore is not None:
        oscore_id = _free_id(discovery.instance_ids(OSCORE), 0) if discovery else 1
        steps.append(write_step(LwM2MPath.of(OSCORE, oscore_id), oscore_instance(account.oscore, oscore_id), fmt,
                                registry))
    steps += [
        write_step(LwM2MPath.of(SECURITY, security_id), security_instance(account, security_id, oscore_id), fmt,
                   registry),
        write_step(LwM2MPath.of(SERVER, server_id), server_instance(account, server_id), fmt, registry),
    ]
    has_tinyml = discovery is None or LwM2MPath(TRUST_ANCHORS.ids[:2]) in discovery.instances  # /26241/0
    if anchors and has_tinyml:
        node = MultiResource(TRUST_ANCHORS.ids[2], dict(enumerate(anchors)))
        steps.append(write_step(TRUST_ANCHORS, node, fmt, registry))
    steps.append(finish_step())
    return tuple(steps)


def plan(
    request: BootstrapRequest,
    account: ServerAccount,
    trust_anchors: Sequence[bytes] = (),
    *,
    discovery: Discovery | None = None,
    registry: ObjectRegistry | None = None,
) -> tuple[BootstrapStep, ...]:
    """The whole sequence: :func:`prelude` then :func:`configuration`."""
    return prelude() + configuration(request, account, trust_anchors, discovery, registry=registry)


@dataclass(frozen=True, slots=True)
class StepResult:
    """How the device answered one step."""

    step: str
    """The step's name."""
    code: str
    """CoAP response code, or ``unreachable``."""
    outcome: Outcome
    diagnostic: str = ""
    """The device's error text, if any."""
    path: str = ""
    """The path the step targeted (``/0/1``), "" for Bootstrap-Finish."""
    content_format: int | None = None
    """The Content-Format the step's payload was in (a Write's), else None."""

    def describe(self) -> str:
        """``write /0/1 in TLV (11542): 4.00 bad key`` (for logs and operators)."""
        fmt = f" in {format_name(self.content_format)}" if self.content_format is not None else ""
        reason = f" {self.diagnostic}" if self.diagnostic else ""
        return f"{self.step}{fmt}: {self.code}{reason}"


class BootstrapSession:
    """One bootstrap of one device, as a state machine: ask :meth:`next_step`, send
    it, report the answer with :meth:`answered` (or :meth:`unreachable`), repeat
    until :meth:`next_step` returns None. The discovery refines the writes; a Write
    refused for its format (4.15, or 4.00 to a JSON format) goes again in the next of
    the request's :attr:`~BootstrapRequest.write_formats`, and the writes after it follow."""

    def __init__(self, request: BootstrapRequest, account: ServerAccount, trust_anchors: Sequence[bytes] = (),
                 *, registry: ObjectRegistry | None = None) -> None:
        self.request = request
        self.account = account
        self._anchors = tuple(bytes(anchor) for anchor in trust_anchors)
        self._registry = registry or ObjectRegistry.default()
        self.steps: list[BootstrapStep] = list(plan(request, account, self._anchors, registry=self._registry))
        """The plan; the steps after the discovery are rebuilt once it answered."""
        self.results: list[StepResult] = []
        """Each answered step, in order."""
        self.discovery: Discovery | None = None
        self.write_format = request.write_format
        """The Content-Format the writes are in now (TLV until the device refuses it)."""
        self._formats_left = list(request.write_formats[1:])
        self._position = 0
        self._failed: StepResult | None = None

    @property
    def endpoint(self) -> str:
        return self.request.endpoint

    @property
    def finished(self) -> bool:
        """True once Bootstrap-Finish was accepted."""
        return self._failed is None and self._position >= len(self.steps)

    @property
    def failure(self) -> StepResult | None:
        """The step that stopped the bootstrap, if one did."""
        return self._failed

    def next_step(self) -> BootstrapStep | None:
        """The next request to send; None when finished or failed."""
        if self._failed is not None or self._position >= len(self.steps):
            return None
        return self.steps[self._position]

    def answered(self, code: str, payload: bytes = b"", content_format: int | None = None) -> StepResult:
        """Record the answer to the current step; returns how it was judged."""
        step = self._current()
        outcome = step.judge(code)
        diagnostic = "" if code.startswith("2.") else payload.decode("utf-8", "replace").strip()[:200]
        if step.kind is StepKind.DISCOVER and outcome is Outcome.DONE:
            try:
                if content_format not in (None, CF.LINK):
                    raise BootstrapError("4.00", f"Bootstrap-Discover answered in {format_name(content_format)}")
                self.discovery = parse_discovery(payload)
            except BootstrapError as error:
                outcome, diagnostic = Outcome.TOLERATED, error.reason
            else:
                done = self.steps[: self._position + 1]
                self.steps = done + list(self._configuration())
        if outcome is Outcome.FAILED and step.kind is StepKind.WRITE and (
                code == "4.15" or (code == "4.00" and step.content_format in JSON_FORMATS)):
            outcome = self._next_format(step)
        return self._record(self._result(step, code, outcome, diagnostic))

    def unreachable(self, reason: str) -> StepResult:
        """No answer came to the current step: the bootstrap fails."""
        return self._record(self._result(self._current(), "unreachable", Outcome.FAILED, reason))

    def _configuration(self) -> tuple[BootstrapStep, ...]:
        return configuration(self.request, self.account, self._anchors, self.discovery, registry=self._registry,
                             content_format=self.write_format)

    def _next_format(self, step: BootstrapStep) -> Outcome:
        """Re-encode the current write and the ones after it in the next format that
        can carry them; FAILED when none is left."""
        while self._formats_left:
            self.write_format = self._formats_left.pop(0)
            try:
                fresh = {candidate.name: candidate for candidate in self._configuration()}
            except BootstrapError:  # this format cannot carry the values (or has no codec here)
                continue
            if step.name not in fresh:
                continue
            self.steps[self._position:] = [fresh.get(s.name, s) for s in self.steps[self._position:]]
            return Outcome.RETRIED
        return Outcome.FAILED

    @staticmethod
    def _result(step: BootstrapStep, code: str, outcome: Outcome, diagnostic: str) -> StepResult:
        path = "" if step.path is None else str(step.path)
        return StepResult(step.name, code, outcome, diagnostic, path, step.content_format)

    def _current(self) -> BootstrapStep:
        step = self.next_step()
        if step is None:
            raise BootstrapError("5.00", "the bootstrap has no step waiting for an answer")
        return step

    def _record(self, result: StepResult) -> StepResult:
        self.results.append(result)
        if result.outcome is Outcome.FAILED:
            self._failed = result
        elif result.outcome is not Outcome.RETRIED:
            self._position += 1
        return result
