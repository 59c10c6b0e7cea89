"""The Bootstrap-Server (``POST /bs``): who may bootstrap, and running the plan.

:mod:`lwm2m_server.core.bootstrap` decides what to send; this adapter checks who is
asking, answers the Bootstrap-Request with 2.04 and then sends the plan to the
device from a task of its own, through the ``send`` callable it was given (the
server passes ``CoapAdapter.request``).

Who may bootstrap (the endpoint's credentials come from a
:class:`CredentialsProvider`, normally :class:`StoreCredentials` over the
security store):

- over CoAPS, the PSK identity the device proved must be the identity of the
  endpoint's **bootstrap** credential, else 4.03 (a server credential does not
  admit a device to ``/bs``);
- over plain CoAP, an endpoint that has a bootstrap credential is refused (4.03:
  a device with credentials must use them), and an endpoint without one is
  admitted only when ``security.mode`` is ``mixed``.

What account is written: after a CoAPS bootstrap of an endpoint that has an
OSCORE credential in the store, an OSCORE account (``coap://`` URI at the plain
port, Security Mode 3, resource 17 linking the ``/21`` instance that carries the
context, Sender and Recipient ID as the device sees them). Its Master Secret is
renewed (fresh random 16 bytes, ids, salt, ID Context and algorithms kept) and
stored at every such bootstrap: the device starts its fresh context at sequence
number 0, which under the old secret would reuse nonces the server has already
seen (and its replay window would refuse them). After another CoAPS bootstrap,
a PSK account (Security Mode 0, ``coaps://`` URI) with the endpoint's server
credential, created with a fresh random 16-byte key when it has none. After a
plain CoAP bootstrap, a NoSec account (Security Mode 3, ``coap://``): a key sent
in clear over an unauthenticated exchange protects nothing, and storing one
would lock the endpoint out of plain bootstrap afterwards. An OSCORE context is
never sent over plain CoAP either: an endpoint that has one gets only the NoSec
account, with which it cannot register (as an endpoint with a server PSK).
Without CoAPS (``coap.secure_port`` None) it is always NoSec. ``bootstrap.server_uri`` overrides the URI; a
``coaps://`` one is refused to a plain-CoAP bootstrap, and makes a CoAPS
bootstrap write a PSK account even for an endpoint with an OSCORE credential.

Where it listens: ``POST /bs`` on the LwM2M server's own ports, unless
``bootstrap.port`` / ``bootstrap.secure_port`` give it ports of its own
(:class:`BootstrapListener`); ``/bs`` is then refused (4.04) on the server's port
of that kind. The Server URI written keeps the LwM2M server's port either way, so
with its own ports the Bootstrap-Server URI and the Server URI differ and the
device opens a new DTLS session, with its server PSK, to register.

The Server instance's binding (/1/x/7) is ``bootstrap.binding`` for every
endpoint: ``UQ`` keeps queue-mode devices in queue mode (they register with
``b=UQ``); it is written as given, never reduced to ``U``.

Content formats and a write the device refuses: see :mod:`.core.bootstrap` (TLV
first, the next format after 4.15). A failed bootstrap is logged
(``bootstrap_failed``) and published (event ``bootstrap``, state ``failed``) with
the step, the path, the content format and every format tried; the session
(:meth:`BootstrapService.session`) keeps it. Nothing is regenerated because a write
failed: a later Bootstrap-Request hands out the same server PSK again.

One bootstrap at a time per endpoint: a new Bootstrap-Request while one runs
**restarts** it (the old one is cancelled). A client sends Bootstrap-Request
again only when it gave the previous exchange up (it timed out or rebooted), so
finishing the old plan would configure a device that is no longer listening for
it; this is also what Leshan's bootstrap server does. Keys are never logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, Sequence
from urllib.parse import urlsplit

import structlog

from ipso_objects import ObjectRegistry

from .core.bootstrap import (
    BOOTSTRAP_PATH, BootstrapError, BootstrapSession, Outcome, Psk, ServerAccount, device_context,
    parse_bootstrap_request,
)
from .core.operations import format_name
from .transport.coap import CoapAdapter
from .transport.messages import CoapResponse, DeviceUnreachable, IncomingRequest, OutgoingResponse
from .transport.ratelimit import rate_limiter
from .config import BootstrapConfig, CoapConfig, ServerConfig
from .security.oscore import OscoreCredential

Send = Callable[..., Awaitable[CoapResponse]]
"""``send(address, device_request, timeout=seconds) -> CoapResponse``; raises DeviceUnreachable."""


class CredentialsProvider(Protocol):
    """The endpoint credentials the Bootstrap-Server needs."""

    def bootstrap_credential(self, endpoint: str) -> tuple[str, bytes] | None:
        """``(identity, key)`` of the endpoint's bootstrap credential, or None."""

    def server_credential(self, endpoint: str, now: float) -> tuple[str, bytes]:
        """``(identity, key)`` of the endpoint's server credential, created (fresh random
        16-byte key) and stored when it has none."""

    # Optional (a provider without it hands out no OSCORE accounts):
    # def renew_oscore(self, endpoint: str, now: float) -> OscoreCredential | None:
    #     """The endpoint's OSCORE credential with a fresh Master Secret, stored in
    #     place of the old one; None when the endpoint has none."""


class StoreCredentials:
    """:class:`CredentialsProvider` over :class:`lwm2m_server.security.credentials.CredentialStore`."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def bootstrap_credential(self, endpoint: str) -> tuple[str, bytes] | None:
        credential = self.store.for_endpoint(endpoint, "bootstrap")
        return None if credential is None else (credential.identity, credential.key)

    def server_credential(self, endpoint: str, now: float) -> tuple[str, bytes]:
        credential = self.store.get_or_create(endpoint, "server", now=now)
        return credential.identity, credential.key

    def renew_oscore(self, endpoint: str, now: float) -> OscoreCredential | None:
        """The endpoint's OSCORE credential with a fresh Master Secret (stored in place
        of the old one), or None when it has none."""
        from .security.credentials import generate_master_secret, oscore_credential

        current = self.store.oscore_for_endpoint(endpoint)
        if current is None:
            return None
        fresh = oscore_credential(endpoint, sender_id=current.sender_id, recipient_id=current.recipient_id,
                                  master_secret=generate_master_secret(), master_salt=current.master_salt,
                                  id_context=current.id_context, aead=current.aead, hkdf=current.hkdf,
                                  created=float(now))
        self.store.add_oscore(fresh, replace=True)
        return fresh


def public_key_der(key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a public key (or of a private key's public half)."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def signing_key_anchors(path: Path | str) -> list[bytes]:
    """The module-signing key at ``path`` (``deployment.signing_key``) as a trust anchor
    (its public half, DER); empty when the file does not exist yet."""
    from .suit import load_public_key

    if not Path(path).exists():
        return []
    return [public_key_der(load_public_key(path))]


def _host(base: str) -> str:
    """The host of ``coap://host:port`` as a URI writes it: brackets for IPv6, IPv4-mapped
    IPv6 addresses as IPv4."""
    host = urlsplit(base).hostname or "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host  # a name
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"[{host}]"
    return host


class BootstrapService:
    """Answers ``POST /bs`` and bootstraps the device that sent it."""

    def __init__(
        self,
        config: BootstrapConfig,
        coap: CoapConfig,
        send: Send,
        *,
        credentials: CredentialsProvider | None = None,
        trust_anchors: Sequence[bytes] = (),
        security_mode: str = "mixed",
        local_base: Callable[[str], str] | None = None,
        bound_ports: Callable[[], tuple[int, int | None]] | None = None,
        events: Any = None,
        clock: Callable[[], float] = time.time,
        registry: ObjectRegistry | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.config = config
        self.coap = coap
        self.trust_anchors: tuple[bytes, ...] = tuple(bytes(anchor) for anchor in trust_anchors)
        """DER SubjectPublicKeyInfo of each key written to /26241/0/21."""
        self.credentials = credentials
        self.security_mode = security_mode
        self._send = send
        self._local_base = local_base or (lambda address: "coap://127.0.0.1")
        self._bound_ports = bound_ports or (lambda: (coap.port, coap.secure_port))
        self._events = events
        self._clock = clock
        self._registry = registry or ObjectRegistry.default()
        self._timeout = request_timeout if request_timeout is not None else coap.request_timeout_s
        self._running: dict[str, asyncio.Task] = {}
        self._sessions: dict[str, BootstrapSession] = {}
        self._log = structlog.get_logger("lwm2m_server.bootstrap")
        self.assign: Callable[[str], tuple[str, int, int | None] | None] | None = None
        """The node a device is to register with (host, CoAP port, CoAPS port), when
        several nodes share the fleet (:mod:`.cluster`); None: this one, at the address
        the device contacted."""

    # -- the request -------------------------------------------------------------------------

    async def handle(self, request: IncomingRequest, *, send: Send | None = None,
                     local_base: Callable[[str], str] | None = None) -> OutgoingResponse:
        """Bootstrap-Request: 2.04 and the plan starts, or 4.xx with the reason. ``send``
        and ``local_base`` are those of the adapter the request came through (default:
        the ones given at construction)."""
        if not self.config.enabled:
            return OutgoingResponse("4.04", b"bootstrap is not enabled on this server")
        if tuple(request.uri_path) != BOOTSTRAP_PATH or request.method != "POST":
            return OutgoingResponse("4.05", b"Bootstrap-Request is POST /bs")
        try:
            parsed = parse_bootstrap_request(request.query)
            identity = _identity(getattr(request, "identity", None))
            self._authorise(parsed.endpoint, identity)
            account = self._account(parsed.endpoint, request.address, identity, local_base or self._local_base)
            session = BootstrapSession(parsed, account, self.trust_anchors, registry=self._registry)
        except BootstrapError as error:
            self._log.info("bootstrap_refused", ep=_endpoint_of(request.query), address=request.address,
                           code=error.code, reason=error.reason)
            return OutgoingResponse(error.code, error.reason.encode())
        endpoint = parsed.endpoint
        previous = self._running.pop(endpoint, None)
        if previous is not None and not previous.done():
            previous.cancel()
            self._log.info("bootstrap_restarted", ep=endpoint, address=request.address)
        self._sessions[endpoint] = session
        task = asyncio.create_task(self._run(session, request.address, send or self._send),
                                   name=f"bootstrap-{endpoint}")
        self._running[endpoint] = task
        task.add_done_callback(lambda done: self._forget(endpoint, done))
        return OutgoingResponse("2.04")

    def _authorise(self, endpoint: str, identity: str | None) -> None:
        credential = None
        if self.credentials is not None:
            credential = _ask(self.credentials.bootstrap_credential, endpoint)
        if identity is not None:
            if credential is None or credential[0] != identity:
                raise BootstrapError(
                    "4.03", f"identity {identity!r} is not the bootstrap credential of endpoint {endpoint!r}")
            return
        if credential is not None:
            raise BootstrapError(
                "4.03", f"endpoint {endpoint!r} has a bootstrap credential: bootstrap over CoAPS with it")
        if self.security_mode != "mixed":
            raise BootstrapError("4.03", f"plain CoAP bootstrap is refused (security.mode {self.security_mode})")

    def _account(self, endpoint: str, address: str, identity: str | None,
                 local_base: Callable[[str], str]) -> ServerAccount:
        """The account to write: OSCORE after a CoAPS bootstrap of an endpoint with an
        OSCORE credential (unless server_uri is coaps://), PSK after another CoAPS
        bootstrap when the server has CoAPS (or a coaps:// server_uri), NoSec otherwise.
        The host is the one the device contacted, the port the LwM2M server's (not the
        Bootstrap-Server's, when it has ports of its own)."""
        plain_port, secure_port = self._bound_ports()
        assigned = self.assign(endpoint) if self.assign is not None and not self.config.server_uri else None
        if assigned is not None:
            host, plain_port, secure_port = assigned
        else:
            host = _host(local_base(address))
        uri = self.config.server_uri
        renew = getattr(self.credentials, "renew_oscore", None)
        if identity is not None and renew is not None and not (uri or "").lower().startswith("coaps://"):
            credential = _ask(renew, endpoint, self._clock())
            if credential is not None:
                uri = uri or f"coap://{host}:{plain_port}"
                return ServerAccount(uri, self.config.short_server_id, self.config.lifetime_s, self.config.binding,
                                     oscore=device_context(credential))
        if uri:
            secure = uri.lower().startswith("coaps://")
            if secure and identity is None:
                raise BootstrapError(
                    "4.03", "bootstrap.server_uri is coaps:// and no PSK is handed out over plain CoAP")
        else:
            secure = identity is not None and secure_port is not None
            uri = f"coaps://{host}:{secure_port}" if secure else f"coap://{host}:{plain_port}"
        psk = None
        if secure:
            if self.credentials is None:
                raise BootstrapError("5.00", "no credential store to take the server PSK from")
            psk = Psk(*_ask(self.credentials.server_credential, endpoint, self._clock()))
        return ServerAccount(uri, self.config.short_server_id, self.config.lifetime_s, self.config.binding, psk)

    # -- the plan ----------------------------------------------------------------------------

    async def _run(self, session: BootstrapSession, address: str, send: Send) -> None:
        endpoint, account = session.endpoint, session.account
        self._log.info("bootstrap_started", ep=endpoint, address=address, uri=account.uri,
                       security_mode=account.security_mode.name, security=account.security,
                       trust_anchors=len(self.trust_anchors))
        self._publish(endpoint, "started", uri=account.uri)
        step = None
        try:
            while (step := session.next_step()) is not None:
                try:
                    response = await send(address, step.request, timeout=self._timeout)
                except DeviceUnreachable as error:
                    session.unreachable(error.reason)
                    break
                result = session.answered(response.code, response.payload, response.content_format)
                self._log.debug("bootstrap_step", ep=endpoint, step=result.step, code=result.code)
                if result.outcome is Outcome.TOLERATED:
                    self._log.info("bootstrap_step_tolerated", ep=endpoint, step=result.step, code=result.code,
                                   reason=result.diagnostic)
                elif result.outcome is Outcome.RETRIED:
                    self._log.warning("bootstrap_write_retried", ep=endpoint, step=result.step, path=result.path,
                                      content_format=format_name(result.content_format), code=result.code,
                                      reason=result.diagnostic, next_format=format_name(session.write_format))
        except asyncio.CancelledError:
            self._log.info("bootstrap_cancelled", ep=endpoint, step=step.name if step else None)
            raise
        except Exception as error:  # a bug or a refused request must not pass silently
            where = {"step": step.name if step else None, "path": str(step.path) if step and step.path else None,
                     "content_format": format_name(step.content_format) if step and step.content_format else None}
            self._log.exception("bootstrap_failed", ep=endpoint, **where, code="exception", reason=str(error))
            self._publish(endpoint, "failed", **where, code="exception")
            return
        if session.finished:
            self._log.info("bootstrap_finished", ep=endpoint, uri=account.uri, ssid=account.short_server_id,
                           security_mode=account.security_mode.name, security=account.security,
                           content_format=format_name(session.write_format), binding=account.binding,
                           lwm2m=session.discovery.lwm2m_version if session.discovery else None)
            self._publish(endpoint, "finished", uri=account.uri)
        else:
            failure = session.failure
            assert failure is not None
            where = {"step": failure.step, "path": failure.path or None,
                     "content_format": format_name(failure.content_format) if failure.content_format else None}
            attempts = [result.describe() for result in session.results
                        if result.outcome is Outcome.RETRIED or result is failure]
            self._log.warning("bootstrap_failed", ep=endpoint, **where, code=failure.code, reason=failure.diagnostic,
                              attempts=attempts)
            self._publish(endpoint, "failed", **where, code=failure.code, reason=failure.diagnostic,
                          attempts=attempts)

    def _publish(self, endpoint: str, state: str, **data: Any) -> None:
        if self._events is not None:
            self._events.publish("bootstrap", endpoint=endpoint, state=state, **data)

    def _forget(self, endpoint: str, task: asyncio.Task) -> None:
        if self._running.get(endpoint) is task:
            del self._running[endpoint]

    # -- inspection and shutdown -------------------------------------------------------------

    def running(self, endpoint: str) -> bool:
        """True while a bootstrap of ``endpoint`` is in progress."""
        task = self._running.get(endpoint)
        return task is not None and not task.done()

    def session(self, endpoint: str) -> BootstrapSession | None:
        """The latest bootstrap of ``endpoint`` (running, finished or failed)."""
        return self._sessions.get(endpoint)

    async def wait(self, endpoint: str) -> BootstrapSession | None:
        """Wait for the running bootstrap of ``endpoint`` (if any) to end; its session."""
        task = self._running.get(endpoint)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        return self._sessions.get(endpoint)

    async def close(self) -> None:
        """Cancel every running bootstrap."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()


class BootstrapListener:
    """The Bootstrap-Server on ports of its own (``bootstrap.port``, ``bootstrap.secure_port``):
    a second :class:`CoapAdapter` that answers ``POST /bs`` (anything else: 4.04) and
    sends the plan back through itself, on the session the device opened to it.

    Why: when the Bootstrap-Server and the LwM2M server share one URI, some clients
    keep their bootstrap DTLS session for the server account, and their Register then
    carries the bootstrap identity (refused: a bootstrap credential admits a device to
    ``/bs`` only). On its own port the Bootstrap-Server URI differs from the server URI
    it writes (which keeps the server's ports), so the client opens a new session with
    its server PSK. A port left 0 stays shared: ``/bs`` is then answered on the server's
    port of that kind as before.
    """

    def __init__(self, service: BootstrapService, config: ServerConfig, *, psk_lookup: Any = None) -> None:
        """``psk_lookup`` (identity → key) enables ``bootstrap.secure_port``; without it
        there is no CoAPS, as for the server without a credential store."""
        self.service = service
        coap, security, bootstrap = config.coap, config.security, config.bootstrap
        self.adapter = CoapAdapter(
            self._handle, host=coap.host, port=bootstrap.port or None,
            secure_port=(bootstrap.secure_port or None) if psk_lookup is not None else None, psk_lookup=psk_lookup,
            receive_buffer_bytes=coap.receive_buffer_bytes, max_in_flight=coap.max_in_flight,
            block_size=coap.block_size, rate_limiter=rate_limiter(coap.rate_limit_per_peer, coap.rate_limit_burst),
            max_sessions=security.max_sessions, session_idle_timeout=security.session_idle_timeout_s,
            plain_allowed=security.mode != "secure-only", max_request_body=coap.max_request_body_bytes,
            block1_limits=coap.block1_limits(),
            log=structlog.get_logger("lwm2m_server.bootstrap.coap"),
        )

    @staticmethod
    def wanted(config: ServerConfig, *, secure: bool = True) -> bool:
        """True when the configuration gives the Bootstrap-Server a port of its own
        (``secure``: CoAPS is possible, i.e. there is a credential store)."""
        bootstrap = config.bootstrap
        return bootstrap.enabled and bool(bootstrap.port or (secure and bootstrap.secure_port))

    @staticmethod
    def shares(config: ServerConfig, secure: bool) -> bool:
        """Whether ``/bs`` is answered on the LwM2M server's own CoAPS (``secure``) or
        plain port: when the Bootstrap-Server has no port of that kind of its own."""
        return not (config.bootstrap.secure_port if secure else config.bootstrap.port)

    async def start(self) -> None:
        await self.adapter.start()

    async def stop(self) -> None:
        await self.adapter.stop()

    @property
    def port(self) -> int | None:
        """The Bootstrap-Server's own plain CoAP port; None when it shares the server's."""
        return self.adapter.port

    @property
    def secure_port(self) -> int | None:
        """The Bootstrap-Server's own CoAPS port; None when it shares the server's."""
        return self.adapter.secure_port

    async def _handle(self, request: IncomingRequest) -> OutgoingResponse:
        if tuple(request.uri_path) != BOOTSTRAP_PATH:
            return OutgoingResponse("4.04", b"this port serves the Bootstrap-Server only (POST /bs)")
        return await self.service.handle(request, send=self.adapter.request, local_base=self.adapter.local_base)


def _ask(method: Callable[..., Any], *args: Any) -> Any:
    """Call the credentials provider; its failures (a broken store file) become 5.00."""
    try:
        return method(*args)
    except Exception as error:  # CredentialError and friends never carry a key
        raise BootstrapError("5.00", f"credential store: {getattr(error, 'reason', error)}") from None


def _identity(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _endpoint_of(query: Sequence[str]) -> str | None:
    """``ep`` for logging a refused request (None when absent)."""
    for item in query:
        name, _, value = item.partition("=")
        if name == "ep":
            return value[:255]
    return None
