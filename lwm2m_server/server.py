"""The LwM2M server: wires the registration book, the store, queue mode,
observations and the CoAP adapter together.

Everything protocol-specific is decided in the sans-I/O modules
(:mod:`.core.registration`, :mod:`.core.operations`, :mod:`.core.queue_mode`); this module
sequences them, persists what they return and publishes events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import structlog

from ipso_objects import LwM2MPath, ObjectRegistry, Value

from .core import operations
from .core.capabilities import (
    DeviceProfile, build_profile, discovery_paths, needs_discovery, profile_from_composite,
)
from .bootstrap_server import BootstrapListener, BootstrapService, StoreCredentials, signing_key_anchors
from .transport.coap import CoapAdapter
from .transport.messages import AdapterStats, DeviceUnreachable, Download, IncomingRequest, OutgoingResponse
from .transport.oscore import OscoreContexts
from .config import ServerConfig
from .security.credentials import CredentialStore
from .core.events import EventHub
from .core.operations import DeviceRequest, OperationError
from .core.responses import UNREACHABLE, Result, decode_response, parse_send
from .core.queue_mode import Queued, QueueModePolicy
from .transport.ratelimit import rate_limiter
from .security.oscore import is_oscore_identity
from .core.identity import (
    CredentialLookup, RegistrationEnded, check_identity, check_registration, check_same_peer,
)
from .core.registration import (
    Registration, RegistrationBook, RegistrationError, parse_register, parse_update,
)
from .metrics import Metrics
from .observations import Observations
from .ota.downloads import ModuleDownloads
from .registration_writes import RegistrationWrites
from .request_queue import RequestQueue
from .store.base import (
    ObservationRecord, QueueEntry, Store, StoreError,
)


class DeviceNotRegistered(Exception):
    """No live registration for the endpoint."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(f"endpoint {endpoint!r} is not registered")
        self.endpoint = endpoint


@dataclass(slots=True)
class _Device:
    """In-memory facts about a registered device that need no persistence."""

    last_seen: float = 0.0
    delivering: asyncio.Task | None = None
    composite_refused: bool = False
    """The device answered a Read-Composite with an error: discover it path by path."""


class LwM2MServer:
    """The running server. ``await start()``, use, ``await stop()``."""

    def __init__(
        self,
        config: ServerConfig,
        registry: ObjectRegistry,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        downloads: Callable[[tuple[str, ...]], Download | None] = lambda path: None,
        credentials: CredentialLookup | None = None,
        trust_anchors: Sequence[bytes] | None = None,
        restore: bool = True,
    ) -> None:
        self.config = config
        self._restore = restore
        """Load stored registrations, profiles and observations at start: not in a cluster
        worker other than the leader, which would hold devices the kernel sends elsewhere."""
        self.credentials = credentials
        """The security store; without it there is no CoAPS or OSCORE and every device is NoSec."""
        self._oscore = OscoreContexts(credentials) if isinstance(credentials, CredentialStore) else None
        self.registry = registry
        self.store = store
        self.events = EventHub()
        self.metrics = Metrics(self)
        """Its Prometheus metrics (``GET /metrics`` of the API)."""
        self._clock = clock
        self._book = RegistrationBook()
        self.downloads = ModuleDownloads(downloads, store, self._book.by_endpoint)
        """Who may fetch which module (pull delivery): the rollouts grant, the adapter asks."""
        self._devices: dict[str, _Device] = {}
        self._queue_policy = QueueModePolicy(config.queue.awake_window_s)
        self._queue = RequestQueue(store, self.events, config.queue, clock=clock,
                                   registration_of=self._book.by_endpoint, exchange=self._exchange)
        self._log = structlog.get_logger("lwm2m_server")
        self._writes = RegistrationWrites(store, self._log)  # Updates and De-registers outlive a full disk
        self._adapter = CoapAdapter(
            self._handle,
            host=config.coap.host,
            port=config.coap.port,
            receive_buffer_bytes=config.coap.receive_buffer_bytes,
            max_in_flight=config.coap.max_in_flight,
            block_size=config.coap.block_size,
            downloads=self.downloads.resolve,
            rate_limiter=rate_limiter(config.coap.rate_limit_per_peer, config.coap.rate_limit_burst),
            secure_port=config.coap.secure_port if credentials is not None else None,
            psk_lookup=self._psk_for,
            max_sessions=config.security.max_sessions,
            session_idle_timeout=config.security.session_idle_timeout_s,
            plain_allowed=config.security.mode != "secure-only",
            max_request_body=config.coap.max_request_body_bytes,
            block1_limits=config.coap.block1_limits(),
            oscore=self._oscore,
            dtls_session_file=config.security.dtls_session_file,
            reuse_port=config.coap.workers > 1,
        )
        self._bootstrap = BootstrapService(  # POST /bs; trust anchors: the signing key's, read at start
            config.bootstrap, config.coap, self._adapter.request,
            credentials=StoreCredentials(credentials) if credentials is not None else None,
            trust_anchors=trust_anchors or (), security_mode=config.security.mode,
            local_base=self._adapter.local_base, bound_ports=lambda: (self.port, self.secure_port),
            events=self.events, clock=clock, registry=registry,
        )
        self._bootstrap_anchors_given = trust_anchors is not None
        self._bootstrap_listener = (  # bootstrap.port / secure_port: /bs on ports of its own
            BootstrapListener(self._bootstrap, config, psk_lookup=self._psk_for if credentials is not None else None)
            if BootstrapListener.wanted(config, secure=credentials is not None) else None)
        self._tasks: set[asyncio.Task] = set()
        self._observations = Observations(
            self._adapter, store, registry, self.events, clock=clock,
            request_timeout=config.coap.request_timeout_s, spawn=self._spawn, seen=self._heard_from,
        )
        self._profiles: dict[str, DeviceProfile] = {}
        self._expiry_task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        now = self._clock()
        if not self._bootstrap_anchors_given:
            self._bootstrap.trust_anchors = tuple(signing_key_anchors(self.config.deployment.signing_key))
        restored: list[ObservationRecord] = []
        if self._restore:
            for registration in await self.store.load_registrations():
                self._book.restore(registration)
                self._device(registration.endpoint).last_seen = registration.updated_at
            for endpoint, data in (await self.store.list_documents("profile")).items():
                self._profiles[endpoint] = DeviceProfile.from_dict(data)
            restored = await self.store.load_observations()
        # adopted before the first datagram is read: their notifications must not be reset
        to_observe_anew = self._observations.adopt(restored, self._book.by_endpoint)
        await self.downloads.load()  # likewise: a pull that resumes must not meet a 4.04
        try:
            await self._adapter.start()
        except BaseException:
            await self._cancel_tasks()
            raise
        if self._bootstrap_listener is not None:
            await self._bootstrap_listener.start()
        self._expiry_task = asyncio.create_task(self._expire_loop())
        for record in to_observe_anew:
            self._spawn(self._restore_observation(record))
        self._log.info(
            "server_started", port=self.port, secure_port=self.secure_port,
            bootstrap_port=self.bootstrap_port, bootstrap_secure_port=self.bootstrap_secure_port,
            mode=self.config.security.mode, registrations=len(self._book),
            observations=len(restored), at=now,
        )

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if await self._writes.flush():  # still no space: the store keeps the versions last written
            self._log.error("registration_writes_unsaved", waiting=self._writes.pending)
        self._writes.close()
        self._observations.close()  # they stay stored, and on the devices, for the next start
        await self._cancel_tasks()
        await self._bootstrap.close()
        if self._bootstrap_listener is not None:
            await self._bootstrap_listener.stop()
        await self._adapter.stop()
        if self._oscore is not None:
            self._oscore.close()  # the replay windows, so devices need no Echo round after a restart
        self._log.info("server_stopped")

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        return self._adapter.port

    @property
    def secure_port(self) -> int | None:
        """The CoAPS port; None when CoAPS is off."""
        return self._adapter.secure_port

    @property
    def transport_stats(self) -> AdapterStats:
        """The CoAP adapter's counters (blocks, bytes, rate-limited requests, DTLS sessions)."""
        return self._adapter.stats

    @property
    def bootstrap_port(self) -> int | None:
        """The Bootstrap-Server's plain CoAP port: its own, or :attr:`port` when shared."""
        if self._bootstrap_listener is not None and self._bootstrap_listener.port is not None:
            return self._bootstrap_listener.port
        return self.port

    @property
    def bootstrap_secure_port(self) -> int | None:
        """The Bootstrap-Server's CoAPS port: its own, or :attr:`secure_port` when shared."""
        if self._bootstrap_listener is not None and self._bootstrap_listener.secure_port is not None:
            return self._bootstrap_listener.secure_port
        return self.secure_port

    def _psk_for(self, identity: bytes) -> bytes | None:
        """The key of a PSK identity (called by DTLS mid-handshake)."""
        if identity.startswith(b"oscore:"):  # names an OSCORE context, which has no PSK
            return None
        try:
            credential = self.credentials.by_identity(identity.decode("utf-8"))
        except UnicodeDecodeError:
            return None
        return credential.key if credential is not None else None

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _device(self, endpoint: str) -> _Device:
        device = self._devices.get(endpoint)
        if device is None:
            device = self._devices[endpoint] = _Device()
        return device

    def _heard_from(self, endpoint: str) -> None:
        self._device(endpoint).last_seen = self._clock()

    # -- registrations (read side) ------------------------------------------------

    def registrations(self) -> list[Registration]:
        return list(self._book)

    def registration(self, endpoint: str) -> Registration | None:
        return self._book.by_endpoint(endpoint)

    def assign_bootstrapped(self, assign) -> None:
        """Let ``assign(endpoint)`` name the node (host, port, secure port) a bootstrapped
        device registers with (:class:`.bootstrap_server.BootstrapService.assign`)."""
        self._bootstrap.assign = assign

    def release(self, endpoint: str) -> bool:
        """Let go of ``endpoint``'s registration without touching the store: another worker
        of the cluster holds (and stored) a newer one. False when there was none here."""
        registration = self._book.by_endpoint(endpoint)
        if registration is None:
            return False
        self._book.deregister(registration.id)
        self._writes.forget(endpoint)
        self._drop_observations(endpoint)
        self._adapter.forget(registration.address)
        self._profiles.pop(endpoint, None)
        return True

    def _require(self, endpoint: str) -> Registration:
        registration = self._book.by_endpoint(endpoint)
        if registration is None:
            raise DeviceNotRegistered(endpoint)
        return registration

    # -- incoming requests -----------------------------------------------------------

    async def _handle(self, request: IncomingRequest) -> OutgoingResponse:
        response = await self._answer(request)
        self.metrics.request_from_device(request.method, request.uri_path, response.code)
        return response

    async def _answer(self, request: IncomingRequest) -> OutgoingResponse:
        try:
            return await self._route(request)
        except RegistrationError as error:
            self._log.info("request_refused", path="/".join(request.uri_path), code=error.code,
                           reason=error.reason, address=request.address)
            return OutgoingResponse(error.code, error.reason.encode())
        except StoreError as error:  # Service Unavailable: the device retries later
            self._log.error("store_failed", error=str(error))
            return OutgoingResponse("5.03", b"server storage unavailable")
        except Exception:  # one bad request must not take the server down
            self._log.exception("request_failed", path="/".join(request.uri_path))
            return OutgoingResponse("5.00", b"internal server error")

    async def _route(self, request: IncomingRequest) -> OutgoingResponse:
        path, method = request.uri_path, request.method
        if path == ("rd",) and method == "POST":
            return await self._register(request)
        if len(path) == 2 and path[0] == "rd":
            if method == "POST":
                return await self._update(path[1], request)
            if method == "DELETE":
                return await self._deregister(path[1], request)
        if path == ("bs",) and method == "POST":
            secure = request.address.startswith("coaps://")
            if self._bootstrap_listener is not None and not BootstrapListener.shares(self.config, secure):
                port = self.bootstrap_secure_port if secure else self.bootstrap_port
                return OutgoingResponse("4.04", f"the Bootstrap-Server listens on port {port}".encode())
            return await self._bootstrap.handle(request)
        if path == ("dp",) and method in ("POST", "iPATCH"):
            return await self._send_operation(request)
        if path and path[0] in ("rd", "dp"):
            return OutgoingResponse("4.05", f"{method} not allowed on /{'/'.join(path)}".encode())
        return OutgoingResponse("4.04", b"no such resource")

    async def _register(self, request: IncomingRequest) -> OutgoingResponse:
        params = parse_register(request.query, request.payload, request.content_format)
        self._check_lifetime(params.lifetime)
        check_identity(params.endpoint, request.identity, self.credentials)
        now = self._clock()
        registration, previous = self._book.register(params, request.address, now, identity=request.identity)
        try:
            # stored before it is answered, else 5.03 and the device retries: an Update or
            # De-register may wait for disk space, a Register not (see .registration_writes)
            await self._writes.save_now(registration)
        except StoreError:  # unsaved means unregistered: the book goes back to what is stored
            self._book.deregister(registration.id)
            if previous is not None:
                self._book.restore(previous)
            raise
        if previous is not None:
            self._drop_observations(previous.endpoint)
        self._device(registration.endpoint).last_seen = now
        self._log.info(
            "registered", ep=registration.endpoint, id=registration.id, lt=registration.lifetime,
            lwm2m=registration.lwm2m_version, b=registration.binding, queue=registration.queue_mode,
            address=registration.address, identity=registration.identity, replaced=previous is not None,
        )
        self.events.publish("registered", endpoint=registration.endpoint, registration=registration)
        self._after_contact(registration)
        self._spawn(self._discover(registration))
        return OutgoingResponse("2.01", location_path=("rd", registration.id))

    async def _update(self, registration_id: str, request: IncomingRequest) -> OutgoingResponse:
        params = parse_update(request.query, request.payload, request.content_format)
        if params.lifetime is not None:
            self._check_lifetime(params.lifetime)
        now = self._clock()
        previous = self._book.get(registration_id)
        if previous is not None:
            await self._check_peer(previous, request)
        registration = self._book.update(registration_id, params, request.address, now)
        self._writes.save(registration)  # written shortly, with others; on a full disk once space returns
        self._device(registration.endpoint).last_seen = now
        if previous is not None and previous.address != registration.address:
            self._adapter.forget(previous.address)
        self._log.debug("updated", ep=registration.endpoint, lt=registration.lifetime,
                       address=registration.address)
        self.events.publish("updated", endpoint=registration.endpoint, registration=registration)
        self._after_contact(registration)
        if needs_discovery(previous, registration) or registration.endpoint not in self._profiles:
            self._spawn(self._discover(registration))
        return OutgoingResponse("2.04")

    def _check_lifetime(self, lifetime: int) -> None:
        low, high = self.config.registration.min_lifetime_s, self.config.registration.max_lifetime_s
        if not low <= lifetime <= high:
            raise RegistrationError("4.00", f"lt={lifetime} outside this server's range {low}..{high}")

    async def _deregister(self, registration_id: str, request: IncomingRequest) -> OutgoingResponse:
        current = self._book.get(registration_id)
        if current is not None:
            await self._check_peer(current, request)
        registration = self._book.deregister(registration_id)
        self._forget_registration(registration)
        self._log.info("deregistered", ep=registration.endpoint)
        self.events.publish("deregistered", endpoint=registration.endpoint, registration=registration)
        return OutgoingResponse("2.02")

    async def _check_peer(self, registration: Registration, request: IncomingRequest) -> None:
        """4.03 unless the request may act for ``registration``; one its endpoint's
        credentials no longer admit is ended first (:mod:`.core.identity`)."""
        try:
            check_same_peer(registration, request.identity, self.credentials)
        except RegistrationEnded as error:
            await self._end(registration, error.reason)
            raise

    async def _end(self, registration: Registration, reason: str) -> None:
        """Remove a registration that is no longer allowed, and say why."""
        if self._book.get(registration.id) is None:
            return
        self._book.deregister(registration.id)
        self._forget_registration(registration)
        await self._writes.flush()  # ended for a security reason: gone from the store before it is said
        self._log.warning("registration_ended", ep=registration.endpoint, id=registration.id,
                          address=registration.address, reason=reason)
        self.events.publish("registration_ended", endpoint=registration.endpoint, registration=registration,
                            reason=reason)

    def _forget_registration(self, registration: Registration) -> None:
        """After the book dropped it: its row (and observations) and its peer state."""
        self._writes.delete(registration)  # deleted shortly, with others; on a full disk once space returns
        self._drop_observations(registration.endpoint)
        self._adapter.forget(registration.address)

    async def _send_operation(self, request: IncomingRequest) -> OutgoingResponse:
        registration = self._book.by_address(request.address)
        if registration is None:
            return OutgoingResponse("4.03", b"Send from an address without registration")
        await self._check_peer(registration, request)
        try:
            entries = parse_send(request.payload, request.content_format, self.registry)
        except OperationError as error:
            return OutgoingResponse(error.code, error.reason.encode())
        self._device(registration.endpoint).last_seen = self._clock()
        self.events.publish("send", endpoint=registration.endpoint, entries=entries)
        self._log.debug("send_received", ep=registration.endpoint, records=sum(len(e.values) for e in entries))
        return OutgoingResponse("2.04")

    def _after_contact(self, registration: Registration) -> None:
        """A device spoke: deliver what waits for it and restore lost observations."""
        device = self._device(registration.endpoint)
        if registration.queue_mode and (device.delivering is None or device.delivering.done()):
            device.delivering = self._spawn(self._queue.deliver(registration.endpoint))
        for record in self._observations.deferred(registration.endpoint):
            self._spawn(self._restore_observation(record))

    # -- capability discovery ------------------------------------------------------

    async def _discover(self, registration: Registration) -> DeviceProfile:
        """Read what the device can run and store its profile."""
        paths = discovery_paths(registration)
        values, composite_unanswered = await self._read_in_one(registration, paths)
        reads: dict[LwM2MPath, object] = {}
        if values is not None:
            profile = profile_from_composite(registration.endpoint, paths, values, self._clock())
        else:
            for path in paths:
                request = operations.read(registration, path, registry=self.registry)
                result = await self._exchange(registration, request)
                ok = result.ok and result.node is not None
                reads[path] = result.node if ok else f"{result.code} {result.diagnostic}".strip()
                if ok and composite_unanswered:  # it answers Reads, not Read-Composite
                    self._device(registration.endpoint).composite_refused = True
            profile = build_profile(registration.endpoint, reads, self._clock())
        if self._book.by_endpoint(registration.endpoint) is None:
            return profile  # de-registered meanwhile
        if any(isinstance(outcome, str) and outcome.startswith(UNREACHABLE) for outcome in reads.values()):
            # a sleeping or lossy device: keep what was known and read again at its next Update
            self._log.info("discovery_incomplete", ep=registration.endpoint, problems=list(profile.problems))
            self.events.publish("discovery_incomplete", endpoint=registration.endpoint, profile=profile)
            return profile
        try:
            await self.store.put_document("profile", registration.endpoint, profile.to_dict(), self._clock())
        except StoreError as error:  # a full disk: used from memory, stored at a later discovery
            self._log.error("store_failed", error=str(error))
        self._profiles[registration.endpoint] = profile
        if self._log.is_enabled_for(logging.INFO):  # naming the class hashes the whole profile
            self._log.info("discovered", ep=registration.endpoint, device_class=profile.device_class,
                           problems=len(profile.problems))
        self.events.publish("profile", endpoint=registration.endpoint, profile=profile)
        return profile

    async def _read_in_one(self, registration: Registration,
                           paths: list[LwM2MPath]) -> tuple[Mapping[LwM2MPath, Value] | None, bool]:
        """The discovery reads as one Read-Composite (LwM2M 1.1+): one round trip instead
        of one per object; its leaf values. None where the device cannot: read path by path
        (also after no answer, which may be a device that leaves Read-Composite
        unanswered); and whether it went unanswered."""
        device = self._device(registration.endpoint)
        if len(paths) < 2 or device.composite_refused:
            return None, False
        try:
            request = operations.read_composite(registration, paths, registry=self.registry)
        except OperationError:  # LwM2M 1.0, or no SenML format in common
            return None, False
        result = await self._exchange(registration, request)
        if result.code == UNREACHABLE:
            return None, True
        if not result.ok:
            device.composite_refused = True
            self._log.debug("read_composite_refused", ep=registration.endpoint, code=result.code,
                            reason=result.diagnostic)
            return None, False
        return result.values, False

    def profile(self, endpoint: str) -> DeviceProfile | None:
        return self._profiles.get(endpoint)

    async def rediscover(self, endpoint: str) -> DeviceProfile:
        """Read the device's capabilities again (e.g. after a new model went active)."""
        return await self._discover(self._require(endpoint))

    def download_uri(self, endpoint: str, token: str) -> str:
        """A URI the device can fetch ``/fw/<token>`` from (pull delivery): ``coaps://``
        for a device registered over CoAPS, so the module comes over its session;
        ``coap://`` for an OSCORE device, which protects its GETs with its context."""
        return self.download_uri_for(self._require(endpoint), token)

    def download_uri_for(self, registration: Registration, token: str) -> str:
        """:meth:`download_uri` for a registration held here or by another worker (they share ports)."""
        deployment = self.config.deployment
        host = deployment.public_host
        if not host:
            base = self._adapter.local_base(registration.address)
        else:
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 literal
            if registration.identity is not None and not is_oscore_identity(registration.identity):
                base = f"coaps://{host}:{deployment.public_secure_port or self.secure_port}"
            else:
                base = f"coap://{host}:{deployment.public_port or self.port}"
        return f"{base}/fw/{token}"

    # -- expiry --------------------------------------------------------------------

    async def _expire_loop(self) -> None:
        interval = self.config.registration.expiry_check_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self._writes.flush()  # what a full disk held back
                await self.expire_now()
            except StoreError as error:
                self._log.error("store_failed", error=str(error))

    async def expire_now(self) -> list[Registration]:
        """Drop registrations whose lifetime ran out and queue entries that expired."""
        now = self._clock()
        expired = self._book.expire(now - self.config.registration.grace_s)
        for registration in expired:
            self._forget_registration(registration)
            self._log.info("registration_expired", ep=registration.endpoint)
            self.events.publish("expired", endpoint=registration.endpoint, registration=registration)
        for entry in await self.store.expire_entries(now):
            self.events.publish("queue", endpoint=entry.endpoint, entry=entry)
        return expired

    # -- device operations -------------------------------------------------------------

    async def perform(
        self, endpoint: str, build: Callable[[Registration], DeviceRequest], *, queue: bool = True
    ) -> Result | Queued:
        """Build a request for ``endpoint``'s registration and send it, or queue it
        when the device sleeps. Raises :class:`DeviceNotRegistered`,
        :class:`OperationError`, :class:`QueueFullError`."""
        registration = self._require(endpoint)
        try:  # e.g. a plain registration of an endpoint that has been given credentials since
            check_registration(registration, self.credentials)
        except RegistrationEnded as error:
            await self._end(registration, error.reason)
            raise DeviceNotRegistered(endpoint) from None
        request = build(registration)
        if registration.queue_mode and queue and not self._awake(registration):
            return await self._queue.add(registration.endpoint, request)
        return await self._exchange(registration, request)

    def _awake(self, registration: Registration) -> bool:
        last_seen = self._device(registration.endpoint).last_seen
        return self._queue_policy.is_awake(registration, last_seen, self._clock())

    async def _exchange(self, registration: Registration, request: DeviceRequest) -> Result:
        started = time.monotonic()
        try:
            response = await self._adapter.request(  # only over a session of the identity it registered with
                registration.address, request, timeout=self.config.coap.request_timeout_s,
                identity=registration.identity,
            )
        except DeviceUnreachable as error:
            self.metrics.request_to_device(request.kind, UNREACHABLE, time.monotonic() - started)
            self._log.info("device_unreachable", ep=registration.endpoint, reason=error.reason)
            return Result(ok=False, code=UNREACHABLE, diagnostic=f"device unreachable: {error.reason}")
        self.metrics.request_to_device(request.kind, response.code, time.monotonic() - started)
        self._device(registration.endpoint).last_seen = self._clock()
        return decode_response(
            request, response.code, response.content_format, response.payload, self.registry,
            location_path=response.location_path,
        )

    async def queue_entry(self, entry_id: str) -> QueueEntry | None:
        return await self.store.get_entry(entry_id)

    async def pending_requests(self, endpoint: str) -> list[QueueEntry]:
        """Requests queued for ``endpoint`` and not sent yet, oldest first."""
        return await self.store.pending(endpoint)

    async def cancel_entry(self, entry_id: str) -> QueueEntry | None:
        """Withdraw a queued request that was not sent yet; None if unknown or finished."""
        return await self._queue.cancel(entry_id)

    async def wait_for_entry(self, entry_id: str, timeout: float) -> QueueEntry | None:
        """Wait until a queued request has finished (or ``timeout`` passed)."""
        return await self._queue.wait_for(entry_id, timeout)

    # -- observations (lwm2m_server.observations) ------------------------------------------

    async def observe(self, endpoint: str, paths: list[LwM2MPath], *, timeout: float | None = None) -> Result:
        """Start observing ``paths`` (Observe for one path, Observe-Composite for several);
        ``timeout`` bounds the wait for the device's answer (default: the request timeout)."""
        return await self._observations.observe(self._require(endpoint), paths, timeout=timeout)

    async def cancel_observation(self, endpoint: str, paths: list[LwM2MPath]) -> bool:
        """Stop observing ``paths`` and tell the device (Cancel Observation)."""
        return await self._observations.cancel(endpoint, paths)

    def observations(self, endpoint: str | None = None) -> list[ObservationRecord]:
        return self._observations.records(endpoint)

    def _drop_observations(self, endpoint: str) -> None:
        self._observations.drop(endpoint)

    async def _restore_observation(self, record: ObservationRecord) -> None:
        def current() -> tuple[Registration | None, bool]:
            registration = self._book.by_endpoint(record.endpoint)
            return registration, registration is not None and self._awake(registration)

        await self._observations.restore(record, current)

