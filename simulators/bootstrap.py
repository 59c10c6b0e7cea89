"""The Bootstrap interface of a simulated device (LwM2M Core 1.1), sans-I/O.

A device made with a bootstrap URI starts with only its Bootstrap-Server account
(Security instance 0, Bootstrap-Server true) and no LwM2M Server account. Its
adapter (:mod:`simulators.client`) sends Bootstrap-Request and, until the
bootstrap ends, hands every incoming request to :meth:`BootstrapInterface.handle`::

    PUT    /o[/i[/r]] + body   Bootstrap-Write: creates or overwrites, whatever the
                               resource's operations (Security, OSCORE /21,
                               /26241/0/21 included)
    DELETE / | /o | /o/i       Bootstrap-Delete: never the Bootstrap-Server account
                               (nor an OSCORE instance it links to) nor the Device
                               object instance
    GET    / | /o + Accept 40  Bootstrap-Discover (LwM2M 1.1+): </>;lwm2m=1.1, then
                               instances, Security ones with ssid and uri
    GET    /1 | /2             Bootstrap-Read
    POST   /bs                 Bootstrap-Finish: 2.04 when there is a usable account
                               (a non-bootstrap Security instance whose Short Server
                               ID has a Server instance, a coap:// URI with NoSec or
                               a coaps:// one with a PSK, or a coap:// URI with NoSec
                               whose resource 17 links a complete /21 instance:
                               OSCORE), else 4.06 Not Acceptable

After Bootstrap-Finish the device registers with the account's URI and
credentials (an OSCORE account: :mod:`simulators.client` provisions a context
folder from it with :func:`simulators.oscore.provision` and protects its requests
with it), and trusts the keys written to Module Trust Anchors (/26241/0/21)
besides its factory trust anchors. A management server still gets 4.04 for
/0 and /21 and cannot read, write or discover /26241/0/21 (the resource has no
operations): the OSCORE instances are kept here (:attr:`BootstrapInterface.oscore`),
not in the object tree, so they are in no Register payload either (LwM2M Core
1.1: objects 0 and 21 are never listed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlsplit

import structlog
from cryptography.hazmat.primitives import serialization

from ipso_objects import (
    IpsoError, LwM2MPath, ModelError, MultiResource, Object, ObjectInstance, ObjLnk, PathError, Resource,
    TINYML_OBJECT_ID, codecs,
)
from ipso_objects.codecs import ContentFormat, link_format
from ipso_objects.codecs.link_format import Link, LinkParam
from ipso_objects.values import coerce
from lwm2m_server.security.oscore import OscoreContext
from lwm2m_server.suit import PublicKey, UnsupportedError
from lwm2m_server.suit.cose import algorithm_of

from .management import Response, _version_tuple
from .oscore import AEAD_NAMES, HKDF_NAMES

if TYPE_CHECKING:
    from .objects import DeviceObjects

log = structlog.get_logger(__name__)

SECURITY, SERVER, DEVICE, OSCORE = 0, 1, 3, 21
OSCORE_LINK = 17
"""/0/x/17 OSCORE Security Mode: Objlnk to the /21 instance the account uses."""
TRUST_ANCHORS = LwM2MPath.of(TINYML_OBJECT_ID, 0, 21)
PSK, NO_SEC = 0, 3
IDLE, BOOTSTRAPPING, FINISHED = "idle", "bootstrapping", "finished"


class _Refuse(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OscoreAccount(OscoreContext):
    """The OSCORE context (/21/x) an account links to, as the device holds it (its
    Sender ID is the kid of its requests)."""

    instance: int = 0
    """The /21 instance id."""


@dataclass(frozen=True, slots=True)
class ServerAccount:
    """The LwM2M Server account bootstrap left on the device."""

    uri: str
    """LwM2M Server URI (/0/s/0)."""
    short_server_id: int
    """Short Server ID (/0/s/10 = /1/v/0)."""
    security_mode: int
    """0 PSK or 3 NoSec (the simulator supports no other mode)."""
    identity: bytes = b""
    """PSK identity (/0/s/3)."""
    key: bytes = field(default=b"", repr=False)
    """PSK (/0/s/5); never in repr."""
    security_instance: int = 0
    server_instance: int = 0
    oscore: OscoreAccount | None = None
    """The OSCORE context the account protects its messages with (Security Mode 3), or None."""


def parse_psk(text: str) -> tuple[bytes, bytes]:
    """``IDENTITY:HEXKEY`` (the CLI's ``--bootstrap-psk``) → (identity, key); ValueError
    names what is wrong without showing the key."""
    identity, sep, hexkey = text.rpartition(":")
    if not sep or not identity:
        raise ValueError("expected IDENTITY:HEXKEY")
    try:
        key = bytes.fromhex(hexkey)
    except ValueError:
        raise ValueError("the key after the last ':' is not hexadecimal") from None
    if not key:
        raise ValueError("the key is empty")
    return identity.encode("utf-8"), key


def anchor_key(der: bytes) -> PublicKey:
    """A trust anchor written to /26241/0/21 (DER SubjectPublicKeyInfo) as a key;
    ValueError unless it is a P-256 or Ed25519 public key."""
    try:
        key = serialization.load_der_public_key(bytes(der))
        algorithm_of(key)  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedError) as error:
        raise ValueError(f"not a DER P-256 or Ed25519 public key ({error})") from None
    return key  # type: ignore[return-value]


class BootstrapInterface:
    """The Bootstrap-Server's view of one device's objects."""

    def __init__(self, objects: DeviceObjects, uri: str,
                 psk: tuple[str | bytes, bytes] | None = None) -> None:
        self.objects = objects
        self.uri = uri.rstrip("/")
        """The Bootstrap-Server URI."""
        identity, key = psk if psk is not None else (b"", b"")
        self.psk = (identity.encode("utf-8") if isinstance(identity, str) else bytes(identity), bytes(key)) \
            if psk is not None else None
        """(identity, key) for a coaps:// Bootstrap-Server, else None."""
        self.state = IDLE
        """``idle``, ``bootstrapping`` (between Bootstrap-Request and -Finish) or ``finished``."""
        self.factory_anchors: tuple[PublicKey, ...] = tuple(objects.updates.trust.anchors)
        """Trust anchors the device had before any bootstrap."""
        self.finishes = 0
        """Bootstrap-Finish accepted so far."""
        self.refusal: str | None = None
        """Why the last Bootstrap-Finish was refused (4.06), if it was."""
        tree = objects._tree
        tree[SECURITY] = {0: {0: self.uri, 1: True, 2: PSK if self.psk else NO_SEC,
                              3: self.psk[0] if self.psk else b"", 4: b"", 5: self.psk[1] if self.psk else b""}}
        tree[SERVER] = {}
        self.oscore: dict[int, dict[int, Any]] = {}
        """OSCORE object (/21) instances by id: Bootstrap interface only, outside the
        object tree a management server sees."""

    # -- the device's side ------------------------------------------------------------------

    def begin(self) -> None:
        """The device sent Bootstrap-Request: serve the Bootstrap-Server until Finish."""
        self.state = BOOTSTRAPPING

    def abort(self) -> None:
        """The bootstrap did not happen (error answer or timeout)."""
        if self.state == BOOTSTRAPPING:
            self.state = IDLE

    @property
    def active(self) -> bool:
        return self.state == BOOTSTRAPPING

    def request_query(self, endpoint: str) -> list[str]:
        """Uri-Query of Bootstrap-Request: ``ep``, and for 1.1+ ``pct``: 112 (SenML CBOR),
        or 11542 (TLV) for a device that does not read SenML CBOR."""
        query = [f"ep={endpoint}"]
        if _version_tuple(self.objects.lwm2m_version) >= (1, 1):
            formats = self.objects.content_formats
            preferred = next((f for f in (ContentFormat.SENML_CBOR, ContentFormat.TLV) if f in formats), None)
            if preferred is not None:
                query.append(f"pct={int(preferred)}")
        return query

    def account(self) -> ServerAccount | None:
        """The usable LwM2M Server account, or None."""
        accounts, _ = self._accounts()
        return accounts[0] if accounts else None

    def written_anchors(self) -> list[bytes]:
        """DER keys in /26241/0/21, by instance id."""
        value = self.objects.get(TRUST_ANCHORS)
        return [value[i] for i in sorted(value)] if isinstance(value, dict) else []

    # -- requests from the Bootstrap-Server ----------------------------------------------------

    def handle(self, method: str, uri_path: Sequence[str], query: Sequence[str] = (),
               content_format: int | None = None, accept: int | None = None, payload: bytes = b"") -> Response:
        """Answer one Bootstrap interface request."""
        method = method.upper()
        segments = [segment for segment in uri_path if segment]
        try:
            if segments == ["bs"]:
                if method != "POST":
                    raise _Refuse("4.05", "only POST /bs (Bootstrap-Finish)")
                return self._finish()
            try:
                path = LwM2MPath.parse("/" + "/".join(segments))
            except PathError as error:
                raise _Refuse("4.04", error.reason) from None
            if method == "PUT":
                return self._write(path, content_format, bytes(payload or b""))
            if method == "DELETE":
                return self._delete(path)
            if method == "GET" and accept == ContentFormat.LINK:
                return self._discover(path)
            if method == "GET":
                if len(path) < 1 or path.ids[0] not in (1, 2):
                    raise _Refuse("4.05", "Bootstrap-Read applies to /1 and /2 only")
                return self.objects.handle("GET", uri_path, query, content_format, accept, payload)
            raise _Refuse("4.05", f"{method} is not a Bootstrap interface operation")
        except _Refuse as refused:
            return Response(refused.code, None, refused.reason.encode())

    def _tree(self) -> dict[int, dict[int, dict[int, Any]]]:
        """The object tree with, for an LwM2M 1.1+ device, the OSCORE instances (the
        same dicts, so changes stick)."""
        if _version_tuple(self.objects.lwm2m_version) < (1, 1):
            return self.objects._tree  # LwM2M 1.0 has no OSCORE object
        return {**self.objects._tree, OSCORE: self.oscore}

    def _is_bootstrap_account(self, object_id: int, instance_id: int) -> bool:
        security = self.objects._tree[SECURITY]
        if object_id == OSCORE:  # the Bootstrap-Server's own OSCORE context goes with its account
            return any(values.get(1) is True and values.get(OSCORE_LINK) == ObjLnk(OSCORE, instance_id)
                       for values in security.values())
        return object_id == SECURITY and security.get(instance_id, {}).get(1) is True

    # -- Bootstrap-Write ----------------------------------------------------------------------

    def _write(self, path: LwM2MPath, content_format: int | None, payload: bytes) -> Response:
        if not 1 <= len(path) <= 3:
            raise _Refuse("4.00", f"Bootstrap-Write targets /o, /o/i or /o/i/r, not {path}")
        object_id = path.ids[0]
        definition = self.objects.registry.get(object_id)
        if definition is None or (object_id not in self._tree() and object_id not in (SECURITY, SERVER)):
            raise _Refuse("4.04", f"object {object_id} is not implemented")
        if content_format is None:
            raise _Refuse("4.00", "a Bootstrap-Write needs a Content-Format")
        if content_format not in self.objects.content_formats:
            raise _Refuse("4.15", f"content format {content_format} is not supported")
        try:
            node = codecs.decode(content_format, payload, path, self.objects.registry)
        except (IpsoError, ImportError) as error:
            raise _Refuse("4.00", getattr(error, "reason", str(error))) from None
        if isinstance(node, Object):
            instances = list(node.instances.values())
        elif isinstance(node, ObjectInstance):
            instances = [node]
        elif isinstance(node, (Resource, MultiResource)) and len(path) == 3:
            instances = [ObjectInstance(path.ids[1], {node.id: node})]
        else:
            raise _Refuse("4.00", f"a {type(node).__name__} cannot be written to {path}")
        existing = self.oscore if object_id == OSCORE else self.objects._tree.setdefault(object_id, {})
        planned: dict[int, dict[int, Any]] = {}
        for instance in instances:
            if not definition.multiple and instance.id not in existing and (existing or planned):
                raise _Refuse("4.00", f"object {object_id} is single-instance")
            planned[instance.id] = {item.id: self._value(LwM2MPath.of(object_id, instance.id, item.id), item)
                                    for item in instance.resources.values()}
        for instance_id, values in planned.items():
            if instance_id not in existing:
                defaults = self.objects._with_defaults(object_id, {}) if object_id not in (SECURITY, OSCORE) else {}
                existing[instance_id] = {**defaults, **values}
                changed = [LwM2MPath.of(object_id, instance_id)]
            else:
                existing[instance_id].update(values)
                changed = []
            changed += [LwM2MPath.of(object_id, instance_id, rid) for rid in values]
            if object_id != OSCORE:  # nothing a management server may observe
                self.objects._changed.update(changed)
        log.debug("bootstrap_write", ep=self.objects.endpoint, path=str(path))
        return Response("2.04")

    def _value(self, target: LwM2MPath, item: Resource | MultiResource) -> Any:
        rdef = self.objects.registry.resource_def(target)
        if rdef is None:
            raise _Refuse("4.04", f"{target} is not defined")
        if rdef.operations.executable:
            raise _Refuse("4.00", f"{target} is executable and takes no value")
        if isinstance(item, MultiResource) != rdef.multiple:
            raise _Refuse("4.00", f"{target} is a {'multiple' if rdef.multiple else 'single'}-instance resource")
        try:
            if isinstance(item, MultiResource):
                return {ri: coerce(value, rdef.type) for ri, value in item.instances.items()}
            return coerce(item.value, rdef.type)
        except ModelError as error:
            raise _Refuse("4.00", f"{target}: {error.reason}") from None

    # -- Bootstrap-Delete ---------------------------------------------------------------------

    def _delete(self, path: LwM2MPath) -> Response:
        tree = self._tree()
        if len(path) > 2:
            raise _Refuse("4.00", f"Bootstrap-Delete targets /, /o or /o/i, not {path}")
        if len(path) == 2:
            object_id, instance_id = path.ids
            if instance_id not in tree.get(object_id, {}):
                raise _Refuse("4.04", f"{path} does not exist")
            if self._is_bootstrap_account(object_id, instance_id) or object_id == DEVICE:
                raise _Refuse("4.00", f"{path} cannot be deleted")
            targets = [path]
        else:
            objects = sorted(tree) if path.is_root else [path.ids[0]]
            if not path.is_root and path.ids[0] not in tree:
                raise _Refuse("4.04", f"object {path.ids[0]} is not implemented")
            if not path.is_root and path.ids[0] == DEVICE:
                raise _Refuse("4.00", "the Device object instance cannot be deleted")
            targets = [LwM2MPath.of(o, i) for o in objects if o != DEVICE for i in sorted(tree[o])
                       if not self._is_bootstrap_account(o, i)]
        for target in targets:
            del tree[target.ids[0]][target.ids[1]]
            if target.ids[0] != OSCORE:
                self.objects._forget_instance(target)
                self.objects._changed.add(target)
        log.debug("bootstrap_delete", ep=self.objects.endpoint, path=str(path), deleted=len(targets))
        return Response("2.02")

    # -- Bootstrap-Discover -------------------------------------------------------------------

    def _discover(self, path: LwM2MPath) -> Response:
        if _version_tuple(self.objects.lwm2m_version) < (1, 1):
            raise _Refuse("4.05", "Bootstrap-Discover needs LwM2M 1.1")
        if len(path) > 1:
            raise _Refuse("4.00", f"Bootstrap-Discover targets / or /o, not {path}")
        tree = self._tree()
        if not path.is_root and path.ids[0] not in tree:
            raise _Refuse("4.04", f"object {path.ids[0]} is not implemented")
        links = [Link("/", (LinkParam("lwm2m", self.objects.lwm2m_version),))]
        for object_id in (sorted(tree) if path.is_root else [path.ids[0]]):
            definition = self.objects.registry.get(object_id)
            version = definition.version if definition is not None else "1.0"
            instances = sorted(tree[object_id])
            if version != "1.0" or not instances:
                links.append(Link(f"/{object_id}", (LinkParam("ver", version),) if version != "1.0" else ()))
            for instance_id in instances:
                values = tree[object_id][instance_id]
                params: list[LinkParam] = []
                if object_id == SECURITY and values.get(1) is not True:
                    if values.get(10) is not None:
                        params.append(LinkParam("ssid", str(values[10])))
                    params.append(LinkParam("uri", str(values.get(0, ""))))
                elif object_id == SERVER and values.get(0) is not None:
                    params.append(LinkParam("ssid", str(values[0])))
                links.append(Link(f"/{object_id}/{instance_id}", tuple(params)))
        return Response("2.05", int(ContentFormat.LINK), link_format.encode(links))

    # -- Bootstrap-Finish ---------------------------------------------------------------------

    def _accounts(self) -> tuple[list[ServerAccount], list[str]]:
        """Usable server accounts, and why each unusable one is not."""
        tree = self._tree()
        servers = {values.get(0): instance_id for instance_id, values in tree.get(SERVER, {}).items()}
        accounts, problems = [], []
        for instance_id, values in sorted(tree.get(SECURITY, {}).items()):
            if values.get(1) is not False:
                continue
            where = f"/0/{instance_id}"
            ssid, uri, mode = values.get(10), str(values.get(0) or ""), values.get(2)
            scheme = urlsplit(uri).scheme.lower()
            if ssid not in servers:
                problems.append(f"{where}: no Server instance has Short Server ID {ssid}")
            elif scheme not in ("coap", "coaps") or not urlsplit(uri).hostname:
                problems.append(f"{where}: {uri!r} is not a coap:// or coaps:// URI")
            elif mode not in (PSK, NO_SEC):
                problems.append(f"{where}: Security Mode {mode} is not supported (PSK 0 or NoSec 3)")
            elif (mode == PSK) != (scheme == "coaps"):
                problems.append(f"{where}: Security Mode {mode} does not fit a {scheme}:// URI")
            elif mode == PSK and not (values.get(3) and values.get(5)):
                problems.append(f"{where}: PSK mode without identity or key")
            else:
                try:
                    oscore = self._oscore_of(values, scheme, mode)
                except ValueError as error:
                    problems.append(f"{where}: {error}")
                    continue
                accounts.append(ServerAccount(uri, ssid, mode, bytes(values.get(3) or b""),
                                              bytes(values.get(5) or b""), instance_id, servers[ssid], oscore))
        return accounts, problems

    def _oscore_of(self, security: dict[int, Any], scheme: str, mode: int) -> OscoreAccount | None:
        """The OSCORE context a Security instance links to (resource 17), None without
        a link (or with the null link 65535:65535); ValueError when it is unusable."""
        link = security.get(OSCORE_LINK)
        if link is None or link == ObjLnk(65535, 65535):
            return None
        if not isinstance(link, ObjLnk) or link.object_id != OSCORE:
            raise ValueError(f"resource {OSCORE_LINK} links {link}, not an OSCORE (21) instance")
        if (scheme, mode) != ("coap", NO_SEC):
            raise ValueError("OSCORE needs a coap:// URI and Security Mode 3 (this device has no OSCORE over DTLS)")
        values = self.oscore.get(link.instance_id) if OSCORE in self._tree() else None
        if values is None:
            raise ValueError(f"resource {OSCORE_LINK} links /21/{link.instance_id}, which does not exist")
        secret, sender, recipient = (values.get(rid) for rid in (0, 1, 2))
        if not secret or sender is None or recipient is None:
            raise ValueError(f"/21/{link.instance_id} lacks its Master Secret, Sender ID or Recipient ID")
        if sender == recipient:
            raise ValueError(f"/21/{link.instance_id}: Sender ID and Recipient ID are the same")
        aead = 10 if values.get(3) is None else values[3]  # the RFC 8613 defaults when absent
        hkdf = -10 if values.get(4) is None else values[4]
        if aead not in AEAD_NAMES or hkdf not in HKDF_NAMES:
            raise ValueError(f"/21/{link.instance_id}: AEAD {aead} or HKDF {hkdf} is not supported")
        return OscoreAccount(bytes(sender), bytes(recipient), bytes(secret), bytes(values.get(5) or b""),
                             None if values.get(6) is None else bytes(values[6]), aead, hkdf, link.instance_id)

    def _finish(self) -> Response:
        if self.state != BOOTSTRAPPING:
            raise _Refuse("4.05", "no bootstrap in progress")
        accounts, problems = self._accounts()
        try:
            if not accounts:
                raise ValueError("; ".join(problems)
                                 or "no LwM2M Server account (non-bootstrap Security instance) was written")
            try:
                written = [anchor_key(der) for der in self.written_anchors()]
            except ValueError as error:
                raise ValueError(f"{TRUST_ANCHORS}: {error}") from None
        except ValueError as error:
            self.refusal = str(error)
            log.info("bootstrap_finish_refused", ep=self.objects.endpoint, reason=self.refusal)
            raise _Refuse("4.06", self.refusal) from None
        self.refusal = None
        self.objects.updates.trust.anchors = self.factory_anchors + tuple(written)
        self.state = FINISHED
        self.finishes += 1
        account = accounts[0]
        log.info("bootstrap_finished", ep=self.objects.endpoint, uri=account.uri,
                 security_mode=account.security_mode, oscore=account.oscore is not None, trust_anchors=len(written))
        return Response("2.04")
