"""Runs rollouts: picks devices (:mod:`.rollouts`), builds their modules
(:mod:`.deployment`), and drives each delivery (:mod:`.delivery`) through the
server. Every step is persisted, so a restarted daemon resumes each rollout
and each device's delivery where it stood.

Each tick enrols matching devices in every active rollout (those whose registration or
profile came since the last tick; every registered device at a rollout's first tick and
every :data:`FULL_SWEEP_S` after, as a safety net), then settles
overlaps (a newer rollout for the same /9 instance or /5 supersedes an older
one's delivery to that device: its task is stopped and its queued requests
withdrawn before the newer one starts), then completes, pauses or starts
devices. A device that does not answer gives its slot back at once and is
tried again after a backoff (:func:`.rollouts.after_unreachable`); for a
sleeping device, a request already waiting in the server's queue is waited
for, never queued twice.

Nodes sharing a store run it on one (:mod:`.leadership`), which sets :attr:`Orchestrator.lease`:
rollout and device documents are then written only while it is held (fenced); a refused
write raises :class:`NotLeader`, ending the delivery before its next device request.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import replace
from typing import Any, Callable, Protocol

import structlog

from ipso_objects import LwM2MPath, ObjectRegistry

from ..core import operations
from ..compilers import CompilerError, Incompatible
from .delivery import DeliveryJob, Expected, Mode, Phase, Step, StepKind, Target
from .deployment import Deployment, DeploymentError, ModelRecord
from .downloads import ModuleDownloads
from ..core.operations import DeviceRequest, Operation
from ..core.responses import UNREACHABLE, Result, result_from_dict
from .rollouts import (
    ACTIVE, Claim, DeviceRollout, DeviceStatus, Rollout, RolloutError, RolloutState, Selector, Strategy, Summary,
    DeviceTable, after_failure, after_unreachable, assign_canaries, is_complete, next_devices, should_pause, superseded,
)
from ..core.capabilities import DeviceProfile
from ..core.events import EventHub
from ..core.queue_mode import Queued
from ..core.registration import Registration
from ..store.base import Lease, QueueEntry, QueueFullError, Store

ROLLOUT, DEVICE = "rollout", "rollout-device"
_NOT_ACTIVATED = "package installed but not activated"
_NO_ANSWER = (UNREACHABLE, "timeout")
"""Result codes of a request the device never answered (the server's ``UNREACHABLE``,
and a queued request that was not delivered in time)."""
ENROLMENT_EVENTS = ("registered", "profile")
"""After these a device may match a rollout it did not (its registration or profile is new)."""
OWNS_NOTHING = (DeviceStatus.INCOMPATIBLE, DeviceStatus.SUPERSEDED)
"""A device record in these states does not decide which rollout owns the device (:func:`superseded`)."""
FULL_SWEEP_S = 60.0
"""How often enrolment looks at every registration, not only the devices of the events
above: for devices learnt without an event (another node's worker answering the
directory) or whose event a full queue dropped. Listing 100,000 registrations of every
worker at each tick took 15 % of a cluster leader's CPU."""


class NotLeader(Exception):
    """This node does not lead rollouts (any more): nothing was changed; ``str()`` says why."""

    def __init__(self, reason: str, leader: str | None = None) -> None:
        super().__init__(reason)
        self.leader = leader
        """The node that holds the rollout lease, when known."""


class _Unreachable(Exception):
    """The device did not answer a step; the delivery waits, it has not failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceGateway(Protocol):
    """What rollouts need of the LwM2M server (:class:`lwm2m_server.server.LwM2MServer`)."""

    registry: ObjectRegistry
    store: Store
    events: EventHub
    downloads: ModuleDownloads

    def registrations(self) -> list[Registration]: ...

    def registration(self, endpoint: str) -> Registration | None: ...

    def profile(self, endpoint: str) -> DeviceProfile | None: ...

    async def rediscover(self, endpoint: str) -> DeviceProfile: ...

    def download_uri(self, endpoint: str, token: str) -> str: ...

    async def perform(self, endpoint: str, build: Callable[[Registration], DeviceRequest]) -> Result | Queued: ...

    async def wait_for_entry(self, entry_id: str, timeout: float) -> QueueEntry | None: ...

    async def pending_requests(self, endpoint: str) -> list[QueueEntry]: ...

    async def cancel_entry(self, entry_id: str) -> QueueEntry | None: ...

    async def observe(self, endpoint: str, paths: list[LwM2MPath]) -> Result: ...

    async def cancel_observation(self, endpoint: str, paths: list[LwM2MPath]) -> bool: ...


class Orchestrator:
    """``await start()`` after the server; ``tick()`` runs every ``interval`` seconds."""

    def __init__(self, server: DeviceGateway, deployment: Deployment, *,
                 clock: Callable[[], float], interval: float = 0.5) -> None:
        self.server = server
        self.deployment = deployment
        self._clock = clock
        self._interval = interval
        self._rollouts: dict[str, Rollout] = {}
        self._devices: dict[str, DeviceTable] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task] = {}
        self._formats: dict[str, str] = {}
        self._ticking = asyncio.Lock()  # the loop's tick and create()'s never interleave
        self._loop: asyncio.Task | None = None
        self._arrived: set[str] = set()  # endpoints of ENROLMENT_EVENTS since the last tick
        self._swept: dict[str, float] = {}  # rollout id -> when enrolment last looked at every registration
        self._overlaps_changed = True  # a device enrolled or a rollout saved since overlaps were settled
        self._overlaps_settled_at = float("-inf")
        self._started = False
        self._watching: asyncio.Task | None = None  # notes ENROLMENT_EVENTS while a rollout is active
        self._subscription = contextlib.ExitStack()
        self._log = structlog.get_logger("lwm2m_server.rollouts")
        self.lease: Lease | None = None
        """While set, rollout and device documents are written only while this lease is held."""
        self.lease_margin_s = 0.0
        """A fenced write needs the lease to hold this much longer (clock skew between nodes)."""

    # -- lifecycle ---------------------------------------------------------------

    async def load(self) -> None:
        """Read every rollout and device state from the store: the first thing :meth:`start`
        does; a node that does not lead rollouts calls it to show the leader's progress."""
        store = self.server.store
        rollouts: dict[str, Rollout] = {}
        tables: dict[str, DeviceTable] = {}
        for rollout_id, data in (await store.list_documents(ROLLOUT)).items():
            rollouts[rollout_id] = Rollout.from_dict(data)
            devices = await store.list_documents(DEVICE, f"{rollout_id}/")
            tables[rollout_id] = DeviceTable(DeviceRollout.from_dict(d) for d in devices.values())
        self._rollouts, self._devices = rollouts, tables
        self._overlaps_changed = True

    async def start(self) -> None:
        self._started = True
        await self.load()
        await self._settle_overlaps()  # before resuming: two deliveries to one device must not both go on
        enrolled = {endpoint for devices in self._devices.values() for endpoint in devices}
        for endpoint in enrolled | set(self.server.downloads.granted()):
            await self._grant(endpoint)  # the saved grants, checked against the records
        resumed = 0
        for rollout_id, devices in self._devices.items():
            for endpoint, device in devices.items():
                if device.status is DeviceStatus.IN_FLIGHT:
                    self._start_task(self._rollouts[rollout_id], endpoint, resume=True)
                    resumed += 1
        self._loop = asyncio.create_task(self._run())
        self._log.info("orchestrator_started", rollouts=len(self._rollouts), resumed_devices=resumed)

    async def stop(self) -> None:
        """Cancel the loop and the deliveries and wait for them to end; :meth:`start` may follow."""
        self._started = False
        watching = self._watching
        self._unwatch()
        for task in (self._loop, watching):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._loop = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except NotLeader as error:  # the leadership stops this loop next
                self._log.warning("rollout_write_refused", reason=str(error))
            except Exception:  # keep rolling out whatever one bad tick did
                self._log.exception("rollout_tick_failed")
            await asyncio.sleep(self._interval)

    def _watch(self) -> None:
        """Note the devices that register or get a profile from now on; every active rollout
        then looks at every registration once, for those that came before."""
        if self._watching is not None:
            return
        events = self._subscription.enter_context(self.server.events.subscribe(None, ENROLMENT_EVENTS))
        self._watching = asyncio.create_task(self._watch_devices(events))
        self._swept.clear()

    def _unwatch(self) -> None:
        """No rollout is active: no event is worth noting (the next one sweeps first)."""
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None
        self._subscription.close()
        self._arrived.clear()

    async def _watch_devices(self, events: asyncio.Queue) -> None:
        """Note the devices that registered or got a profile, for the next tick's enrolment."""
        while True:
            # the event first: a tick may take the noted set while this waits, and the
            # endpoint belongs in the set that is current when the event comes
            endpoint = (await events.get()).endpoint
            self._arrived.add(endpoint)
            while not events.empty():
                self._arrived.add(events.get_nowait().endpoint)

    # -- operator side -------------------------------------------------------------

    async def create(self, model: str, selector: Selector, strategy: Strategy,
                     rollout_id: str | None = None) -> Rollout:
        record = await self.deployment.model(model)
        if record is None:
            raise RolloutError(f"model {model} is not registered (tinymlaas models add)")
        if strategy.plugin:
            installed = sorted(p.name for p in self.deployment.plugins)
            if record.format == "firmware":
                raise RolloutError(f"{model} is a firmware image: it is not compiled, so no plugin can be pinned")
            if strategy.plugin not in installed:
                raise RolloutError(f"plugin {strategy.plugin} is not installed (installed: {', '.join(installed)})")
        rollout_id = rollout_id or f"r-{secrets.token_hex(4)}"
        if rollout_id in self._rollouts:
            raise RolloutError(f"rollout {rollout_id} exists")
        rollout = Rollout(rollout_id, model, selector, strategy, created_at=self._clock())
        await self._save_rollout(rollout)
        self._devices[rollout_id] = DeviceTable()
        self._log.info("rollout_created", id=rollout_id, model=model)
        await self.tick()
        return rollout

    def rollouts(self) -> list[Rollout]:
        return sorted(self._rollouts.values(), key=lambda r: r.created_at)

    def rollout(self, rollout_id: str) -> tuple[Rollout, list[DeviceRollout]] | None:
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            return None
        return rollout, sorted(self._devices[rollout_id].values(), key=lambda d: d.endpoint)

    def summary(self, rollout_id: str) -> tuple[Rollout, Summary] | None:
        """The rollout and its counts by status, without listing its devices."""
        rollout = self._rollouts.get(rollout_id)
        return None if rollout is None else (rollout, self._devices[rollout_id].summary())

    async def set_state(self, rollout_id: str, state: RolloutState) -> Rollout:
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            raise RolloutError(f"no rollout {rollout_id}")
        if rollout.state in (RolloutState.CANCELLED, RolloutState.COMPLETE):
            raise RolloutError(f"rollout {rollout_id} is {rollout.state.value}")
        rollout = replace(rollout, state=state, paused_reason="" if state is RolloutState.RUNNING else rollout.paused_reason)
        await self._save_rollout(rollout)
        for endpoint in self._devices[rollout_id] if state is RolloutState.CANCELLED else ():
            await self._grant(endpoint)  # its modules are no longer served
        return rollout

    # -- the loop ---------------------------------------------------------------------

    async def tick(self) -> None:
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        active = [rollout for rollout in self.rollouts() if rollout.state in ACTIVE]  # oldest first
        if not active:
            self._unwatch()
        elif self._started:
            self._watch()
        arrived, self._arrived = self._arrived, set()
        for rollout in active:
            await self._enrol(rollout, arrived)
        await self._settle_overlaps()
        for rollout in self.rollouts():
            if rollout.state not in ACTIVE:
                continue
            devices = self._devices[rollout.id]
            if rollout.state is RolloutState.RUNNING:
                reason = should_pause(rollout, devices)
                if reason is not None:
                    rollout = replace(rollout, state=RolloutState.PAUSED, paused_reason=reason)
                    await self._save_rollout(rollout)
                    self._log.warning("rollout_paused", id=rollout.id, reason=reason)
                    continue
                if is_complete(rollout, devices):
                    await self._save_rollout(replace(rollout, state=RolloutState.COMPLETE))
                    self._log.info("rollout_complete", id=rollout.id,
                                   counts=dict(devices.summary().counts))
                    continue
            for endpoint in next_devices(rollout, devices, self._clock(), self._last_contact):
                if self.server.registration(endpoint) is None:
                    continue  # gone for now; stays pending
                self._start_task(rollout, endpoint, resume=False)

    # -- overlapping rollouts ---------------------------------------------------------

    async def _settle_overlaps(self) -> None:
        """Supersede older deliveries to a device that a newer rollout for the same target has.
        Looks at every device of every rollout: done after an enrolment or a rollout's change
        of state, and once per FULL_SWEEP_S (a profile's new software instance may make two
        deliveries meet), not at every tick."""
        now = self._clock()
        if not self._overlaps_changed and now - self._overlaps_settled_at < FULL_SWEEP_S:
            return
        self._overlaps_changed, self._overlaps_settled_at = False, now
        seen: dict[str, int] = {}
        for rollout_id, devices in self._devices.items():
            if self._rollouts[rollout_id].state is not RolloutState.CANCELLED:
                for endpoint in devices:
                    seen[endpoint] = seen.get(endpoint, 0) + 1
        claims = []
        for rollout in self.rollouts():
            if rollout.state is RolloutState.CANCELLED:
                continue
            for endpoint, device in self._devices[rollout.id].items():
                if seen[endpoint] > 1:
                    target = await self._target(rollout, device)
                    if target is not None:
                        claims.append(Claim(rollout, device, target))
        for claim, newer in superseded(claims):
            await self._supersede(claim.rollout.id, claim.device.endpoint, newer.id, claim.target)

    async def _target(self, rollout: Rollout, device: DeviceRollout) -> str | None:
        """What a delivery of ``rollout`` writes to on the device: ``/9/<instance>`` or ``/5/0``."""
        if device.job is not None:
            job = device.job
            return "/5/0" if job["target"] == Target.FIRMWARE.value else f"/9/{job.get('instance', 0)}"
        if rollout.id not in self._formats:
            model = await self.deployment.model(rollout.model)
            if model is None:
                return None
            self._formats[rollout.id] = model.format
        if self._formats[rollout.id] == "firmware":
            return "/5/0"
        profile = self.server.profile(device.endpoint)
        packages = profile.software_packages if profile is not None else ()
        return f"/9/{packages[0].instance if packages else 0}"

    async def _supersede(self, rollout_id: str, endpoint: str, newer_id: str, target: str) -> None:
        """Stop the delivery without touching the device again; withdraw what it queued."""
        task = self._tasks.get((rollout_id, endpoint))
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        withdrawn = 0
        if self._devices[rollout_id][endpoint].job is not None:
            for entry in await self.server.pending_requests(endpoint):
                paths = [str(path) for path in DeviceRequest.from_dict(entry.request).paths]
                if paths and all(p == target or p.startswith(target + "/") for p in paths):
                    withdrawn += await self.server.cancel_entry(entry.id) is not None
        reason = f"superseded by rollout {newer_id}"
        device = replace(self._devices[rollout_id][endpoint], status=DeviceStatus.SUPERSEDED, reason=reason,
                         updated_at=self._clock())
        await self._save_device(rollout_id, device)
        self._log.info("delivery_superseded", rollout=rollout_id, ep=endpoint, by=newer_id, target=target,
                       withdrawn=withdrawn)

    def _last_contact(self, endpoint: str) -> float | None:
        """When the device last registered or updated; None when it is not registered."""
        registration = self.server.registration(endpoint)
        return registration.updated_at if registration is not None else None

    async def _enrol(self, rollout: Rollout, arrived: set[str]) -> None:
        """Add matching devices that have a profile; decide compatibility once. Looks at the
        devices in ``arrived``, or at every registration when the rollout's sweep is due (or
        when no events are watched: ticked without :meth:`start`)."""
        devices = self._devices[rollout.id]
        now = self._clock()
        if self._watching is None or rollout.id not in self._swept or now - self._swept[rollout.id] >= FULL_SWEEP_S:
            self._swept[rollout.id] = now
            candidates = [registration.endpoint for registration in self.server.registrations()]
        else:
            candidates = sorted(endpoint for endpoint in arrived
                                if endpoint not in devices and self.server.registration(endpoint) is not None)
        model = await self.deployment.model(rollout.model) if candidates else None
        new: set[str] = set()
        for endpoint in candidates:
            if endpoint in devices:
                continue
            profile = self.server.profile(endpoint)
            if profile is None or not rollout.selector.matches(endpoint, profile):
                continue
            device = DeviceRollout(endpoint, updated_at=self._clock())
            try:
                device = replace(device, package=await self._package(model, profile, rollout.strategy.plugin))
            except Incompatible as error:
                device = replace(device, status=DeviceStatus.INCOMPATIBLE, reason=f"incompatible: {error.reason}")
            except (CompilerError, DeploymentError, OSError) as error:
                device = replace(device, status=DeviceStatus.INCOMPATIBLE, reason=f"incompatible: {error}")
            devices[endpoint] = device
            new.add(endpoint)
            if device.status is DeviceStatus.INCOMPATIBLE:
                self._log.info("device_incompatible", rollout=rollout.id, ep=endpoint, reason=device.reason)
        if new:
            self._overlaps_changed = True
            for device in assign_canaries(list(devices.values()), rollout.strategy.canary_fraction):
                if device.endpoint in new or device != devices[device.endpoint]:
                    await self._save_device(rollout.id, device)

    async def _package(self, model: ModelRecord | None, profile: DeviceProfile, plugin: str) -> str:
        """Build (or find) what ``profile``'s device gets; say what it is and why.
        Firmware goes to any device with /5, a model to devices with the TinyML object
        (compiled by the pinned ``plugin``, or the one ranked first)."""
        if model is None:
            return ""
        if model.format == "firmware":
            return (await self.deployment.firmware_for(model, profile))[1]
        target = profile.target_spec() if profile.tinyml is not None else None
        if target is None:
            raise Incompatible("device has no TinyML Capability object")
        artifact, ranking = await self.deployment.build(model, target, plugin)
        fitting = sum(c.fits for c in ranking.candidates)
        why = "pinned by the rollout" if ranking.pinned else \
            f"ranked first of {fitting} that fit: {ranking.require().explanation()}"
        return f"SUIT envelope: {model.key} compiled by {artifact.plugin} for {artifact.device_class} ({why})"

    def _start_task(self, rollout: Rollout, endpoint: str, *, resume: bool) -> None:
        key = (rollout.id, endpoint)
        if key in self._tasks and not self._tasks[key].done():
            return
        task = asyncio.create_task(self._deliver_while_leader(rollout.id, endpoint, resume))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _deliver_while_leader(self, rollout_id: str, endpoint: str, resume: bool) -> None:
        try:
            await self._deliver(rollout_id, endpoint, resume)
        except NotLeader as error:  # a write was refused: stop before the next device request
            self._log.warning("delivery_stopped", ep=endpoint, reason=str(error))
        except Exception as error:  # unforeseen: logged, and the device is never left in flight for good
            self._log.exception("delivery_crashed", rollout=rollout_id, ep=endpoint)
            device = self._devices.get(rollout_id, {}).get(endpoint)
            if device is not None and device.status is DeviceStatus.IN_FLIGHT:
                try:  # waits like a device that did not answer, and resumes where its job stood
                    await self._unreachable(rollout_id, endpoint, f"delivery stopped: {error!r}")
                except Exception:  # the store or the lease: a restart (or the next leader) resumes it
                    self._log.exception("delivery_not_released", rollout=rollout_id, ep=endpoint)

    # -- one device ------------------------------------------------------------------------

    async def _deliver(self, rollout_id: str, endpoint: str, resume: bool) -> None:
        rollout = self._rollouts[rollout_id]
        device = self._devices[rollout_id][endpoint]
        try:
            if device.job is not None and (resume or device.unreachable):
                # after a restart, or once a device that did not answer may be back: go on where it stood
                job = DeliveryJob.from_dict(device.job)
                job.resume(self._clock())
                if job.phase is Phase.CHECK_SEND and await self._write_waiting(endpoint, job):
                    job.write_queued(self._clock())
                if device.status is not DeviceStatus.IN_FLIGHT:
                    device = replace(device, status=DeviceStatus.IN_FLIGHT, job=job.to_dict(), reason="",
                                     updated_at=self._clock())
                    await self._save_device(rollout_id, device)
            else:
                job = await self._new_job(rollout, endpoint)
                device = replace(device, status=DeviceStatus.IN_FLIGHT, attempts=device.attempts + 1,
                                 job=job.to_dict(), reason="", updated_at=self._clock())
                await self._save_device(rollout_id, device)
                if device.attempts > 1 and await self._already_running(endpoint, job):
                    # an earlier attempt got through before its answer was lost (or the daemon died)
                    await self._finish(rollout_id, endpoint, status=DeviceStatus.DONE, job=job)
                    return
            await self._drive(rollout_id, endpoint, job)
        except Incompatible as error:
            await self._finish(rollout_id, endpoint, status=DeviceStatus.INCOMPATIBLE, reason=f"incompatible: {error.reason}")
        except (CompilerError, DeploymentError, RolloutError, OSError) as error:
            await self._failed(rollout_id, endpoint, str(error))
        except _Unreachable as error:
            await self._unreachable(rollout_id, endpoint, error.reason)

    async def _new_job(self, rollout: Rollout, endpoint: str) -> DeliveryJob:
        profile = self.server.profile(endpoint)
        model = await self.deployment.model(rollout.model)
        if profile is None or model is None or (model.format != "firmware" and profile.tinyml is None):
            raise RolloutError("device profile or model missing")
        if model.format == "firmware":
            artifact, _ = await self.deployment.firmware_for(model, profile)
        else:
            artifact = await self.deployment.artifact_for(model, profile.target_spec(), rollout.strategy.plugin)
        mode = _mode(rollout.strategy.mode, profile.firmware_delivery)
        uri = self.server.download_uri(endpoint, artifact.token) if mode is Mode.PULL else ""
        config = self.deployment.config
        common = dict(uri=uri, poll_interval_s=config.poll_interval_s, phase_timeout_s=config.phase_timeout_s,
                      artifact=artifact.token)
        if model.format == "firmware":
            return DeliveryJob(Target.FIRMWARE, mode, _firmware_expected(rollout.strategy, profile, model.version),
                               **common)
        instance = profile.software_packages[0].instance if profile.software_packages else 0
        expected = Expected(model.name, model.version, bytes.fromhex(artifact.payload_sha256))
        return DeliveryJob(Target.SOFTWARE, mode, expected, instance=instance, **common)

    async def _drive(self, rollout_id: str, endpoint: str, job: DeliveryJob) -> None:
        """Run the job's steps. The update state is observed where the device allows,
        so a change ends a wait early; polling stays the fallback."""
        state_path = [job.state_path]
        with self.server.events.subscribe(endpoint, kinds=("notification",)) as events:
            registration = self.server.registration(endpoint)
            # a sleeping device would hold the job for a whole request timeout: poll it instead
            observed = False
            if registration is not None and not registration.queue_mode:
                try:
                    first = await self.server.observe(endpoint, state_path)
                except Exception as error:  # as for any request (_send): gone meanwhile, or not observable
                    if self.server.registration(endpoint) is None:
                        raise _Unreachable(f"{endpoint} is not registered") from None
                    first = Result(False, "error", diagnostic=str(error))  # polled instead
                if first.code in _NO_ANSWER:
                    raise _Unreachable(first.diagnostic or first.code)
                observed = first.ok
            try:
                while True:
                    step = job.next_step(self._clock())
                    if step.kind is StepKind.DONE:
                        await self._finish(rollout_id, endpoint, status=DeviceStatus.DONE, job=job)
                        try:
                            await self.server.rediscover(endpoint)  # the profile now names the new model
                        except Exception as error:  # gone meanwhile: its next registration is discovered
                            self._log.info("rediscovery_failed", ep=endpoint, reason=str(error))
                        return
                    if step.kind is StepKind.FAILED:
                        await self._failed(rollout_id, endpoint, step.reason, job)
                        return
                    if step.kind is StepKind.WAIT:
                        if await _notified(events, endpoint, state_path, step.at - self._clock()):
                            job.state_changed(self._clock())
                        continue
                    result = await self._perform(endpoint, job, step)
                    job.on_result(step, result, self._clock())
                    await self._save_job(rollout_id, endpoint, job)
            finally:
                if observed:
                    await self._stop_observing(endpoint, state_path)

    async def _stop_observing(self, endpoint: str, paths: list[LwM2MPath]) -> None:
        """Cancel a delivery's observation. One that went with the device (registered at
        another worker, or its worker gone: the cluster gateway then says it is not
        registered) needs nothing, and must not hide how the delivery ended."""
        try:
            await self.server.cancel_observation(endpoint, paths)
        except Exception as error:
            self._log.info("observation_not_cancelled", ep=endpoint, reason=str(error))

    async def _already_running(self, endpoint: str, job: DeliveryJob) -> bool:
        """Whether the device already runs what ``job`` delivers (its verify reads pass)."""
        probe = DeliveryJob.from_dict(job.to_dict())
        probe.phase = Phase.VERIFY
        step = probe.next_step(self._clock())
        probe.on_result(step, await self._perform(endpoint, probe, step), self._clock())
        return probe.phase is Phase.DONE

    async def _perform(self, endpoint: str, job: DeliveryJob, step: Step) -> Result | dict[LwM2MPath, Result]:
        registry = self.server.registry
        if step.kind is StepKind.READ:
            return {path: await self._send(endpoint, lambda r, p=path: operations.read(r, p, registry=registry))
                    for path in step.paths}
        if step.kind is StepKind.WRITE_PACKAGE:
            artifact = await self.deployment.artifact_by_token(job.artifact)
            data = self.deployment.envelope(artifact)
            return await self._send(endpoint, lambda r: operations.write(r, step.path, data, registry=registry))
        if step.kind is StepKind.WRITE_URI:
            return await self._send(endpoint, lambda r: operations.write(r, step.path, step.uri, registry=registry))
        return await self._send(endpoint, lambda r: operations.execute(r, step.path, registry=registry))

    async def _send(self, endpoint: str, build: Callable) -> Result:
        """One request; for a sleeping device it waits in the queue until delivered.
        Raises :class:`_Unreachable` when the device gives no answer."""
        try:
            entry_id = await self._queued_already(endpoint, build)
            outcome = Queued(entry_id, endpoint, 0.0) if entry_id else await self.server.perform(endpoint, build)
        except QueueFullError as error:  # the device has not woken to take what waits for it
            raise _Unreachable(str(error)) from None
        except Exception as error:  # not registered, cannot build: a failed step
            if self.server.registration(endpoint) is None:
                raise _Unreachable(f"{endpoint} is not registered") from None
            return Result(False, "error", diagnostic=str(error))
        if isinstance(outcome, Queued):
            entry = await self.server.wait_for_entry(outcome.entry_id,
                                                     timeout=self.deployment.config.phase_timeout_s)
            if entry is None or entry.result is None:
                raise _Unreachable("the queued request was not delivered (the device did not wake)")
            outcome = result_from_dict(DeviceRequest.from_dict(entry.request), entry.result, self.server.registry)
        if outcome.code in _NO_ANSWER:
            raise _Unreachable(outcome.diagnostic or outcome.code)
        return outcome

    async def _write_waiting(self, endpoint: str, job: DeliveryJob) -> bool:
        """Whether ``job``'s package (or URI) write waits, unsent, in the sleeping device's queue."""
        registration = self.server.registration(endpoint)
        if registration is None or not registration.queue_mode:
            return False
        for entry in await self.server.pending_requests(endpoint):
            request = DeviceRequest.from_dict(entry.request)
            if request.paths == (job.package_path,) and request.kind is Operation.WRITE_REPLACE:
                return True
        return False

    async def _queued_already(self, endpoint: str, build: Callable) -> str | None:
        """The id of the same request already waiting for this sleeping device (queued
        before a restart or an unreachable backoff), so it is waited for, not queued again."""
        registration = self.server.registration(endpoint)
        if registration is None or not registration.queue_mode:
            return None
        wanted = build(registration).to_dict()
        for entry in await self.server.pending_requests(endpoint):
            if entry.request == wanted:
                self._log.info("queued_request_reused", ep=endpoint, id=entry.id)
                return entry.id
        return None

    # -- bookkeeping ---------------------------------------------------------------------

    async def _failed(self, rollout_id: str, endpoint: str, reason: str, job: DeliveryJob | None = None) -> None:
        rollout = self._rollouts[rollout_id]
        device = self._devices[rollout_id][endpoint]
        if reason == _NOT_ACTIVATED:
            # the device kept its previous module (A/B slots): rolled back, reported
            await self._finish(rollout_id, endpoint, status=DeviceStatus.ROLLED_BACK,
                               reason="activation failed; the device runs its previous model", job=job)
            return
        device = after_failure(device, rollout.strategy, reason, self._clock())
        await self._save_device(rollout_id, device)
        self._log.info("delivery_failed", rollout=rollout_id, ep=endpoint, reason=reason,
                       attempts=device.attempts, status=device.status.value)

    async def _unreachable(self, rollout_id: str, endpoint: str, reason: str) -> None:
        """Give the slot back; the same delivery resumes after the backoff (logged once per backoff)."""
        device = after_unreachable(self._devices[rollout_id][endpoint], self._rollouts[rollout_id].strategy,
                                   reason, self._clock())
        await self._save_device(rollout_id, device)
        self._log.info("delivery_unreachable", rollout=rollout_id, ep=endpoint, reason=reason,
                       tries=device.unreachable, retry_in=round(device.next_attempt_at - self._clock(), 1))

    async def _finish(self, rollout_id: str, endpoint: str, *, status: DeviceStatus, reason: str = "",
                      job: DeliveryJob | None = None) -> None:
        device = replace(self._devices[rollout_id][endpoint], status=status, reason=reason,
                         job=job.to_dict() if job is not None else None, updated_at=self._clock(), unreachable=0)
        await self._save_device(rollout_id, device)
        self._log.info("delivery_finished", rollout=rollout_id, ep=endpoint, status=status.value, reason=reason)

    async def _save_job(self, rollout_id: str, endpoint: str, job: DeliveryJob) -> None:
        """After each answered step (the device is reachable again: its backoff starts over)."""
        device = replace(self._devices[rollout_id][endpoint], job=job.to_dict(), updated_at=self._clock(),
                         unreachable=0)
        await self._save_device(rollout_id, device)

    async def _save_device(self, rollout_id: str, device: DeviceRollout) -> None:
        before = self._devices[rollout_id].get(device.endpoint)
        self._devices[rollout_id][device.endpoint] = device
        if before is None or before.status in OWNS_NOTHING or device.status in OWNS_NOTHING:
            self._overlaps_changed = True
        await self._grant(device.endpoint)  # in memory before anything else sees the new status
        await self._put(DEVICE, f"{rollout_id}/{device.endpoint}", device.to_dict())
        if before is None or before.status is not device.status:  # not at every job step
            summary = self._devices[rollout_id].summary()
            self.server.events.publish("rollout", endpoint=device.endpoint, rollout=rollout_id,
                                       status=device.status.value, counts=dict(summary.counts), total=summary.total)

    async def _grant(self, endpoint: str) -> None:
        """Let ``endpoint`` fetch exactly the modules of its pull deliveries in progress: from
        the save of the job that names the URI until the delivery is done, failed,
        superseded or cancelled (a device that does not answer keeps its job, and its grant)."""
        tokens = {device.job["artifact"] for rollout_id, devices in self._devices.items()
                  if (device := devices.get(endpoint)) is not None and device.job is not None
                  and device.job.get("mode") == Mode.PULL.value and device.job.get("artifact")
                  and device.status in (DeviceStatus.IN_FLIGHT, DeviceStatus.RETRY_WAIT)
                  and self._rollouts[rollout_id].state is not RolloutState.CANCELLED}
        await self.server.downloads.grant(endpoint, tokens, self._clock())

    async def _save_rollout(self, rollout: Rollout) -> None:
        self._rollouts[rollout.id] = rollout
        self._overlaps_changed = True
        await self._put(ROLLOUT, rollout.id, rollout.to_dict())

    async def _put(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Save a document; with :attr:`lease` set only while it is held, else :class:`NotLeader`."""
        now = self._clock()
        if self.lease is None:
            await self.server.store.put_document(kind, key, data, now)
        elif not await self.server.store.put_document_if_lease(kind, key, data, now, self.lease,
                                                               held_until=now + self.lease_margin_s):
            raise NotLeader(f"{kind} {key} was not saved: this node no longer holds the {self.lease.name} lease")


def _firmware_expected(strategy: Strategy, profile: DeviceProfile, version: str) -> Expected:
    """The version check a firmware rollout asked for; ``auto`` checks PkgVersion
    (/5/0/7) where the device has it: many clients report their LwM2M stack's
    version in /3/0/3, never the package's."""
    check = strategy.version_check
    if check == "auto":
        check = "package" if profile.package_version is not None else "firmware"
    return {"package": Expected(package_version=version), "firmware": Expected(firmware_version=version),
            "none": Expected()}[check]


async def _notified(events: asyncio.Queue, endpoint: str, paths: list[LwM2MPath], timeout: float) -> bool:
    """True when a notification for ``paths`` of ``endpoint`` arrives within ``timeout``."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            while True:
                event = await events.get()
                if event.kind == "notification" and event.endpoint == endpoint and list(event.data["paths"]) == paths:
                    return True
    except TimeoutError:
        return False


def _mode(strategy_mode: str, delivery: int | None) -> Mode:
    """``auto``: the device's /5/0/9 preference (0 pull only, 1 push only, 2 both → pull,
    which streams from disk); push when the device does not say."""
    if strategy_mode != "auto":
        return Mode(strategy_mode)
    return Mode.PUSH if delivery in (None, 1) else Mode.PULL

