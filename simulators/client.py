"""One simulated LwM2M client over CoAP/UDP (aiocoap adapter).

Thin: requests from the server go to :meth:`DeviceObjects.handle` through
:mod:`simulators.serving`, which also sends the notifications (their timing comes
from :mod:`simulators.observe`); the Register/Update/De-register exchanges and the
update loop are in :mod:`simulators.registration`; this module owns the socket, the
security set-up and the timers. Each device has its own
aiocoap context bound to its own UDP port (``127.0.0.1:0`` by default) and sends
its registration messages from that same port, so the server can reach it at
the address it registered from.

Queue mode: :meth:`SimulatedDevice.sleep` makes the device drop incoming
requests (responses to its own requests still arrive, as over a radio that
listens only after sending); :meth:`SimulatedDevice.wake` sends an Update from
the same port, then answers again and sends notifications that fell due.

Updates: a Package URI written to /9 or /5 makes the device fetch the package
itself, block by block from its own port (:mod:`simulators.fetch`).
:meth:`SimulatedDevice.reboot` power-cycles the device: timers, observations and
downloads stop, the port closes without a De-register, the runtime loses its
interpreters; then it binds the same port, registers again and resumes an
interrupted download at the next block. A firmware update reboots the same way.

Bootstrap: a device made with ``bootstrap_uri`` has only a Bootstrap-Server
account; :meth:`SimulatedDevice.start` sends Bootstrap-Request, hands the
Bootstrap-Server's requests to :mod:`simulators.bootstrap` until Bootstrap-Finish,
then registers at the URI (and with the PSK) that was written.

OSCORE: a device made with ``oscore`` (a context folder, :mod:`simulators.oscore`)
protects every request to its server with that context, over plain coap://, and
answers only requests protected with it (4.01 to anything else), as a client whose
Security object points to an OSCORE object does. The context, with its sequence
numbers, outlives reboots. A bootstrapped device whose account links an OSCORE
instance (/0/x/17 → /21/y) provisions a fresh context folder from it under
``oscore_storage`` (a temporary folder by default) and does the same.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import aiocoap
import aiocoap.resource
import structlog
from aiocoap import Code, Message
from aiocoap.blockwise import ContinueException
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.transports.oscore import OSCOREAddress, TransportOSCORE

from ipso_objects import LwM2MPath, ObjectRegistry

from .download import BlockDownload, DownloadError
from .fetch import fetch
from .bootstrap import FINISHED, PSK, BootstrapInterface, OscoreAccount
from .objects import DeviceObjects
from lwm2m_server.transport.aiocoap_tuning import ServerContext
from lwm2m_server.transport.dtls import DtlsUnavailable, tinydtls

from .dtls import DtlsClientInterface
from . import oscore as device_oscore
from .profiles import DeviceProfile, get_profile
from .registration import _BINDING, _LIFETIME, RETRY_COUNT, RETRY_TIMER, DeviceRegistration, RegistrationFailed
from .serving import DeviceServing
from .transport import (
    DeviceStats, LiveObservation, is_request, wait_event, without_reuse_port,
)

log = structlog.get_logger(__name__)


class PowerLoss(Exception):
    """Raised inside a download to cut the power (see :attr:`SimulatedDevice.crash_after_blocks`)."""


class _DeviceSite(aiocoap.resource.Resource):
    """The whole URI space of the device: every request goes to the device."""

    def __init__(self, device: SimulatedDevice) -> None:
        super().__init__()
        self._device = device

    async def render(self, request: Message) -> Message:
        return self._device._respond(request)

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        bootstrapping = self._device.bootstrap is not None and self._device.bootstrap.active
        if self._device.oscore_context is not None and not isinstance(request.remote, OSCOREAddress) \
                and not bootstrapping:
            pipe.add_response(Message(code=Code.UNAUTHORIZED, payload=b"OSCORE required"), is_last=True)
            return
        if request.opt.observe == 0 and self._device._observable(request):
            await self._device._serve_observation(pipe)
            return
        if request.opt.observe == 1:
            self._device._cancel_observation(request)
        if request.opt.block1 is None:
            await super().render_to_pipe(pipe)
            return
        # aiocoap's Resource answers each Block1 block but the last by raising Continue
        # through the pipe, which formats and logs the exception: answered here instead
        try:
            request = self._block1.feed_and_take(request)
        except ContinueException as more:
            pipe.add_response(more.to_message(), is_last=True)
            return
        response = await self._block2.extract_or_insert(request, lambda: self.render(request))
        response.opt.block1 = request.opt.block1
        pipe.add_response(response, is_last=True)


class SimulatedDevice(DeviceServing, DeviceRegistration):
    """A simulated LwM2M client: an object tree, a UDP port and a registration."""

    def __init__(
        self,
        endpoint: str,
        profile: DeviceProfile | str = "cortex-m4f",
        server_uri: str = "coap://127.0.0.1:5683",
        registry: ObjectRegistry | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        sensor_interval: float | None = None,
        request_timeout: float = 30.0,
        update_fraction: float = 0.8,
        objects: DeviceObjects | None = None,
        trust_anchors: Sequence[Any] = (),
        vendor_id: Any = None,
        download_timeout: float = 5.0,
        download_attempts: int = 3,
        reboot_on_execute: bool = False,
        psk: tuple[str | bytes, bytes] | None = None,
        bootstrap_uri: str | None = None,
        bootstrap_psk: tuple[str | bytes, bytes] | None = None,
        bootstrap_timeout: float = 60.0,
        oscore: str | os.PathLike[str] | None = None,
        oscore_storage: str | os.PathLike[str] | None = None,
        communication_retry: tuple[int, int] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.oscore_context = device_oscore.load(oscore) if oscore is not None else None
        """The device's OSCORE context (from the folder ``oscore``, or provisioned by
        bootstrap), or None."""
        self.oscore_storage = Path(oscore_storage) if oscore_storage is not None else None
        """Where contexts written by bootstrap are kept, one fresh folder each (None: a
        temporary folder, removed with the device object)."""
        self._oscore_account: OscoreAccount | None = None
        self._oscore_tmp: tempfile.TemporaryDirectory | None = None
        self.psk = (psk[0].encode() if isinstance(psk[0], str) else psk[0], psk[1]) if psk else None
        """DTLS PSK ``(identity, key)`` for a ``coaps://`` server_uri."""
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.server_uri = server_uri.rstrip("/")
        self.registry = registry or ObjectRegistry.default()
        self.objects = objects or DeviceObjects(
            self.registry, self.profile, endpoint=endpoint, server_uri=server_uri, seed=seed,
            trust_anchors=trust_anchors, vendor_id=vendor_id,
        )
        """The device's object tree; tests and hooks may read and change it."""
        if communication_retry is not None:  # Register, Update, De-register retry when unanswered
            self.objects.set(RETRY_COUNT, communication_retry[0])
            self.objects.set(RETRY_TIMER, communication_retry[1])
        self.host = host
        self.sensor_interval = sensor_interval or self.profile.sensor_interval
        self.request_timeout = request_timeout
        self.update_fraction = update_fraction
        self.download_timeout = download_timeout
        """Seconds to wait for one block of a pull download (per attempt)."""
        self.download_attempts = download_attempts
        """Unanswered block requests before the connection counts as lost (result 52 / 4)."""
        self.reboot_on_execute = reboot_on_execute
        """Execute Reboot (/3/0/4) power-cycles the device (off by default: only logged)."""
        self.crash_after_blocks: int | None = None
        """Test hook: cut the power after this many more download blocks, then
        :meth:`reboot` (one-shot; the download resumes after the reboot)."""
        self.location: tuple[str, ...] | None = None
        """Location-Path segments of the registration (``("rd", "5a3f")``); None if not registered."""
        self.asleep = False
        """True between :meth:`sleep` and :meth:`wake`."""
        self.stats = DeviceStats()
        self._dtls: DtlsClientInterface | None = None
        self._port = port
        self._context: aiocoap.Context | None = None
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._observations: dict[tuple[Any, bytes], LiveObservation] = {}
        self._update_requested = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._last_update_at = 0.0
        self._sent: dict[str, Any] = {}
        self._fetches: dict[tuple[str, int], tuple[BlockDownload, asyncio.Task]] = {}
        self._reboot_task: asyncio.Task | None = None
        self._inference_due: float | None = None
        self.bootstrap = BootstrapInterface(self.objects, bootstrap_uri, bootstrap_psk) if bootstrap_uri else None
        """The Bootstrap interface when the device starts from a Bootstrap-Server account
        (``bootstrap_uri``, with ``bootstrap_psk`` for coaps://); None otherwise."""
        self.bootstrap_timeout = bootstrap_timeout
        """Seconds from the Bootstrap-Request's 2.04 to Bootstrap-Finish."""
        self._bootstrap_done = asyncio.Event()
        self.objects.set_execute_hook(1, 8, lambda objects, path, args: self._update_requested.set())
        self.objects.set_execute_hook(3, 4, self._execute_reboot)

    # -- properties ---------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Host and UDP port the device listens and sends on (port 0 before :meth:`start`)."""
        return self.host, self._port

    @property
    def registered(self) -> bool:
        """True between a successful Register and De-register."""
        return self.location is not None

    @property
    def observation_count(self) -> int:
        """Observations currently active."""
        return len(self._observations)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, *, register: bool = True) -> None:
        """Bind the UDP port, Register (unless ``register=False``) and start the timers."""
        self._closing = False
        await self._open()
        try:
            if self.bootstrap is not None:
                if register and self.bootstrap.account() is None:
                    await self.request_bootstrap()
                self._use_account()
            if register:
                await self.register()
        except BaseException:
            await self.stop(deregister=False)
            raise
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name=f"sim-tick-{self.endpoint}"),
            asyncio.create_task(self._update_loop(), name=f"sim-update-{self.endpoint}"),
        ]
        self._sync_fetches()  # a download interrupted by a reboot goes on

    async def _open_dtls(self) -> None:
        """Add the CoAPS client (when tinydtls is installed) and the server's PSK."""
        try:
            tinydtls()
        except DtlsUnavailable:
            if self.server_uri.startswith("coaps://"):
                raise
            return
        await self._context._append_tokenmanaged_messagemanaged_transport(
            lambda mman: DtlsClientInterface.create(mman, log=log, loop=asyncio.get_running_loop()))
        self._dtls = self._context.request_interfaces[-1].token_interface.message_interface
        if self.psk is not None:
            self.use_psk(self.server_uri, *self.psk)

    def use_psk(self, uri: str, identity: bytes, key: bytes) -> None:
        """Talk to the server at ``uri`` (coaps://host:port) with this PSK."""
        base = uri.rstrip("/")
        self._context.client_credentials.load_from_dict(
            {f"{base}/*": {"dtls": {"psk": key, "client-identity": identity}}})

    def _enable_oscore(self) -> None:
        """Protect requests to the server with :attr:`oscore_context`, and answer only
        requests protected with it (also on an open context, after bootstrap)."""
        context = self._context
        assert context is not None and self.oscore_context is not None
        if not isinstance(context.serversite, OscoreSiteWrapper):
            context.serversite = OscoreSiteWrapper(context.serversite, CredentialsMap())
        context.serversite.server_credentials[":server"] = self.oscore_context
        if not any(isinstance(interface, TransportOSCORE) for interface in context.request_interfaces):
            # first, or udp6 would send the requests unprotected
            context.request_interfaces.insert(0, TransportOSCORE(context, context))
        context.client_credentials[f"{self.server_uri}/*"] = self.oscore_context

    async def _open(self) -> None:
        with without_reuse_port():
            self._context = await ServerContext.create_server_context(
                _DeviceSite(self), bind=(self.host, self._port), transports=["udp6"],
                loggername="tinymlaas-sim.coap",
            )
        if self.oscore_context is not None:
            self._enable_oscore()
        interface = None
        for manager in getattr(self._context, "request_interfaces", ()):
            candidate = getattr(getattr(manager, "token_interface", None), "message_interface", None)
            if hasattr(candidate, "datagram_msg_received"):
                interface = candidate
                break
        if interface is None:
            raise RuntimeError("aiocoap did not create a udp6 transport")
        await self._open_dtls()
        self._port = interface.transport.get_extra_info("socket").getsockname()[1]
        receive = interface.datagram_msg_received

        def dropped(data: bytes) -> bool:
            """A request that arrives while the device sleeps (or shuts down) is lost."""
            if (self.asleep or self._closing) and is_request(data):
                self.stats.dropped += 1
                return True
            return False

        def gated(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
            if not dropped(data):
                receive(data, ancdata, flags, address)

        interface.datagram_msg_received = gated  # asleep: the radio hears responses only
        if self._dtls is not None:
            self._dtls.drop_plaintext = dropped

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop the timers and downloads, De-register (unless told not to) and close the port."""
        self._closing = True
        tasks, self._tasks = self._tasks, []
        tasks += [task for _, task in self._fetches.values() if task is not asyncio.current_task()]
        self._fetches.clear()
        reboot = self._reboot_task
        if reboot is not None and reboot is not asyncio.current_task() and not reboot.done():
            tasks.append(reboot)
        while tasks:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
            tasks = [task for task in tasks if not task.done()]
        if deregister and self.location is not None:
            try:
                await self.deregister()
            except RegistrationFailed as error:
                log.warning("deregister_failed", ep=self.endpoint, reason=str(error))
        for live in list(self._observations.values()):
            if live.task is not None:
                live.task.cancel()
        self._observations.clear()
        if self._context is not None:
            context, self._context = self._context, None
            await context.shutdown()

    async def reboot(self, *, downtime: float = 0.0) -> None:
        """Power-cycle: stop timers, observations and downloads, close the port without
        De-register, lose RAM (the interpreters), wait ``downtime`` seconds, then bind the
        same port, Register again and resume any interrupted download."""
        log.info("rebooting", ep=self.endpoint)
        was_registered = self.location is not None
        await self.stop(deregister=False)
        self.location = None
        self.objects.power_cycle(time.time())
        self.stats.reboots += 1
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start(register=False)
        if was_registered:
            try:
                await self.register()
            except RegistrationFailed as error:  # the update loop keeps trying
                log.warning("register_after_reboot_failed", ep=self.endpoint, reason=str(error))

    def _schedule_reboot(self, delay: float = 0.05) -> None:
        """Reboot soon, from a task of its own (after the current response went out)."""
        if self._reboot_task is not None and not self._reboot_task.done():
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            try:
                await self.reboot()
            except (RegistrationFailed, OSError) as error:
                log.warning("reboot_failed", ep=self.endpoint, reason=str(error))

        self._reboot_task = asyncio.create_task(later(), name=f"sim-reboot-{self.endpoint}")

    def _execute_reboot(self, objects: DeviceObjects, path: LwM2MPath, arguments: str) -> None:
        log.info("reboot", ep=self.endpoint, power_cycle=self.reboot_on_execute)
        if self.reboot_on_execute:
            self._schedule_reboot()

    # -- pull downloads -----------------------------------------------------------------------

    def _sync_fetches(self) -> None:
        """Run a task for every download the update state machines want, and stop the
        tasks of downloads they dropped."""
        if self._context is None or self._closing:
            return
        wanted = self.objects.updates.fetches
        for key, (download, task) in list(self._fetches.items()):
            if wanted.get(key) is not download:
                task.cancel()
                del self._fetches[key]
        for key, download in wanted.items():
            if key not in self._fetches:
                task = asyncio.create_task(self._run_fetch(key, download), name=f"sim-fetch-{self.endpoint}")
                self._fetches[key] = (download, task)

    async def _run_fetch(self, key: tuple[str, int], download: BlockDownload) -> None:
        assert self._context is not None
        updates = self.objects.updates
        log.info("fetch", ep=self.endpoint, uri=download.uri, offset=len(download.data))
        try:
            await fetch(self._context, download, timeout=self.download_timeout,
                        attempts=self.download_attempts, on_block=self._on_block)
        except PowerLoss:
            log.warning("power_loss", ep=self.endpoint, uri=download.uri, received=len(download.data))
            self._schedule_reboot()
            return
        except DownloadError as error:
            self.objects.now = time.time()
            updates.fetch_failed(key, download, error)
        else:
            self.objects.now = time.time()
            updates.fetch_done(key, download)
        finally:
            entry = self._fetches.get(key)
            if entry is not None and entry[1] is asyncio.current_task():
                del self._fetches[key]
        self._after_change()

    def _on_block(self, download: BlockDownload) -> None:
        self.stats.blocks_fetched += 1
        if self.crash_after_blocks is not None:
            self.crash_after_blocks -= 1
            if self.crash_after_blocks <= 0:
                self.crash_after_blocks = None
                self._closing = True  # from now on the device is off: it answers nothing
                raise PowerLoss(f"power cut after {len(download.data)} B of {download.uri}")

    # -- bootstrap interface ----------------------------------------------------------------

    async def request_bootstrap(self) -> None:
        """Bootstrap-Request (POST /bs?ep=...), then serve the Bootstrap-Server until
        Bootstrap-Finish; RegistrationFailed when it is refused or does not finish."""
        assert self.bootstrap is not None and self._context is not None
        bootstrap = self.bootstrap
        if bootstrap.psk is not None and bootstrap.uri.startswith("coaps://"):
            self.use_psk(bootstrap.uri, *bootstrap.psk)
        message = Message(code=Code.POST, uri=bootstrap.uri)
        message.opt.uri_path = ("bs",)
        message.opt.uri_query = tuple(bootstrap.request_query(self.endpoint))
        self._bootstrap_done.clear()
        bootstrap.begin()
        log.info("bootstrap_request", ep=self.endpoint, uri=bootstrap.uri)
        try:
            response = await self._request(message)
            if response.code != Code.CHANGED:
                raise RegistrationFailed(f"Bootstrap-Request answered {response.code.dotted} {response.payload[:100]!r}")
            try:
                async with asyncio.timeout(self.bootstrap_timeout):
                    await self._bootstrap_done.wait()
            except TimeoutError:
                raise RegistrationFailed(f"no Bootstrap-Finish within {self.bootstrap_timeout:g} s") from None
            if bootstrap.state != FINISHED:
                raise RegistrationFailed(f"Bootstrap-Finish refused: {bootstrap.refusal}")
        finally:
            bootstrap.abort()
        self.objects.take_changed()  # what bootstrap wrote is configuration, not news for a server

    async def rebootstrap(self) -> bool:
        if self.bootstrap is None:
            return False
        self.location = None
        await self.request_bootstrap()
        self._use_account()
        await self.register()
        return True

    def _use_account(self) -> None:
        """Register where bootstrap said, with the credentials it gave."""
        account = self.bootstrap.account() if self.bootstrap is not None else None
        if account is None:
            return
        self.server_uri = account.uri.rstrip("/")
        if account.security_mode == PSK:
            self.psk = (account.identity, account.key)
            if self._context is not None:
                self.use_psk(self.server_uri, account.identity, account.key)
        if account.oscore is not None and account.oscore != self._oscore_account:
            self._provision_oscore(account.oscore)
        if self.oscore_context is not None and self._context is not None:
            self._enable_oscore()

    def _provision_oscore(self, account: OscoreAccount) -> None:
        """Keep the context bootstrap wrote as a real client does: in a fresh folder of
        its own (sequence numbers from 0, persisted), then use it."""
        if self.oscore_storage is None and self._oscore_tmp is None:
            self._oscore_tmp = tempfile.TemporaryDirectory(prefix="tinymlaas-sim-oscore-")
        storage = self.oscore_storage or Path(self._oscore_tmp.name)  # type: ignore[union-attr]
        storage.mkdir(parents=True, exist_ok=True)
        folder = device_oscore.provision(
            tempfile.mkdtemp(prefix=f"21-{account.instance}-", dir=storage), master_secret=account.master_secret,
            sender_id=account.sender_id, recipient_id=account.recipient_id, master_salt=account.master_salt,
            id_context=account.id_context, aead=account.aead, hkdf=account.hkdf)
        self.oscore_context = device_oscore.load(folder)
        self._oscore_account = account
        log.info("oscore_provisioned", ep=self.endpoint, sender_id=account.sender_id.hex(), folder=str(folder))

    # -- queue mode ---------------------------------------------------------------------------

    async def sleep(self) -> None:
        """Stop answering requests (queue mode); observations wait for :meth:`wake`."""
        self.asleep = True
        log.debug("asleep", ep=self.endpoint)

    async def wake(self) -> None:
        """Send an Update from the same port, then answer requests and send due notifications."""
        try:
            await self.update()
        finally:
            self.asleep = False
        self._after_change()

    # -- sensors and observations -------------------------------------------------------------

    def step(self) -> None:
        """Move the sensors now and send the notifications that fall due."""
        self.objects.step(time.time())
        self._after_change()

    def _after_change(self) -> None:
        changed = self.objects.take_changed()
        if _LIFETIME in changed or _BINDING in changed or any(len(path) == 2 for path in changed):
            self._update_requested.set()  # new lifetime, binding or object instances: tell the server
        self._sync_fetches()
        if self.objects.updates.reboot_requested:
            self.objects.updates.reboot_requested = False
            self._schedule_reboot()
        if self.objects.inference.due_at() != self._inference_due:
            self._wakeup.set()  # the tick loop recomputes its deadline
        self._evaluate()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_step = loop.time() + self.sensor_interval
        while not self._closing:
            deadline = next_step
            observation_deadline = self._next_deadline()
            if observation_deadline is not None and not self.asleep:
                deadline = min(deadline, observation_deadline)
            self._inference_due = self.objects.inference.due_at()
            if self._inference_due is not None:
                deadline = min(deadline, loop.time() + self._inference_due - time.time())
            self._wakeup.clear()
            await wait_event(self._wakeup, deadline - loop.time())
            if loop.time() >= next_step:
                self.objects.step(time.time())
                next_step = loop.time() + self.sensor_interval
            else:
                self.objects.inference.tick(time.time())
            self._after_change()
