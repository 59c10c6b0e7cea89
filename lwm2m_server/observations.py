"""The server's observations: started, followed, cancelled, and restored after a restart.

An observation is stored under its CoAP token (:class:`~.store.base.ObservationRecord`).
Stopping one the operator or a rollout asked for tells the device (the adapter sends
the Cancel Observation); one whose registration ended is only forgotten, and the
adapter resets the device's next notification. A restart keeps them: at the next
start an observation over plain CoAP is adopted by its token before the first
datagram is read, so the device's notifications go on; over DTLS or OSCORE the
security state of the old request is gone, and the device is observed anew (its
old notifications are reset).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Callable, Coroutine, Iterable, Sequence

import structlog

from ipso_objects import LwM2MPath, ObjectRegistry

from .core import operations
from .core.events import EventHub
from .core.operations import DeviceRequest, OperationError
from .core.registration import Registration
from .core.responses import UNREACHABLE, Result, decode_response
from .store.base import ObservationRecord, Store, StoreError
from .transport.coap import CoapAdapter
from .transport.messages import DeviceUnreachable
from .transport.observe import WireObservation


@dataclass(slots=True)
class LiveObservation:
    """An observation the server follows."""

    record: ObservationRecord
    """What is stored: token, endpoint, registration, paths."""
    request: DeviceRequest
    """The Observe or Observe-Composite request (a Cancel repeats it)."""
    wire: WireObservation
    """The adapter's side: notifications in, cancel out."""
    task: asyncio.Task | None = None
    """Follows the notifications."""
    last: Result | None = None
    """The newest notification (or the first response), decoded."""


def observe_request(registration: Registration, paths: Sequence[LwM2MPath], registry: ObjectRegistry) -> DeviceRequest:
    """Observe for one path, Observe-Composite for several."""
    if len(paths) == 1:
        return operations.observe(registration, paths[0], registry=registry)
    return operations.observe_composite(registration, list(paths), registry=registry)


class Observations:
    """Every observation of one server, by endpoint and token."""

    def __init__(
        self, adapter: CoapAdapter, store: Store, registry: ObjectRegistry, events: EventHub, *,
        clock: Callable[[], float], request_timeout: float,
        spawn: Callable[[Coroutine], asyncio.Task], seen: Callable[[str], None],
    ) -> None:
        self._adapter = adapter
        self._store = store
        self._registry = registry
        self._events = events
        self._clock = clock
        self._request_timeout = request_timeout
        self._spawn = spawn  # the server's tasks: cancelled when it stops
        self._seen = seen  # a device was heard from (queue mode's awake window)
        self._live: dict[str, dict[bytes, LiveObservation]] = {}
        self._unrestored: dict[str, list[ObservationRecord]] = {}
        self._closing = False
        self._log = structlog.get_logger("lwm2m_server")

    # -- starting and following ------------------------------------------------------

    async def observe(self, registration: Registration, paths: Sequence[LwM2MPath], *,
                      timeout: float | None = None) -> Result:
        """Start observing ``paths``. ``timeout`` bounds the wait for the device's first
        answer (never beyond the configured request timeout)."""
        request = observe_request(registration, paths, self._registry)
        wait = self._request_timeout if timeout is None else min(timeout, self._request_timeout)
        try:
            first, wire = await self._adapter.observe(
                registration.address, request, timeout=wait, identity=registration.identity,
            )
        except DeviceUnreachable as error:
            return Result(ok=False, code=UNREACHABLE, diagnostic=f"device unreachable: {error.reason}")
        result = decode_response(request, first.code, first.content_format, first.payload, self._registry)
        if wire is None:
            return result
        record = ObservationRecord(
            token=wire.token, endpoint=registration.endpoint, registration_id=registration.id,
            paths=request.paths, content_format=request.accept, created_at=self._clock(),
        )
        try:
            await self._store.save_observation(record)
        except StoreError:
            self._adapter.cancel_observation(wire)  # one the server cannot keep, the device need not send
            raise
        live = LiveObservation(record, request, wire, last=result)
        self._follow(live)
        self._log.info("observing", ep=registration.endpoint, paths=[str(p) for p in request.paths],
                       token=wire.token.hex())
        self._events.publish("notification", endpoint=registration.endpoint, paths=request.paths, result=result)
        return result

    def _follow(self, live: LiveObservation) -> None:
        self._live.setdefault(live.record.endpoint, {})[live.record.token] = live
        live.task = self._spawn(self._notifications(live))

    async def _notifications(self, live: LiveObservation) -> None:
        endpoint = live.record.endpoint
        async for notification in live.wire:
            result = decode_response(live.request, notification.code, notification.content_format,
                                     notification.payload, self._registry)
            live.last = result
            self._seen(endpoint)
            self._events.publish("notification", endpoint=endpoint, paths=live.request.paths, result=result)
            if not notification.ok:
                break
        if not self._closing:  # the device ended it (or it failed): it is gone for good
            self._forget(live)

    def _forget(self, live: LiveObservation) -> None:
        self._adapter.release_observation(live.wire)
        observations = self._live.get(live.record.endpoint, {})
        if observations.get(live.record.token) is live:
            del observations[live.record.token]
        self._spawn(self._delete(live.record.token))

    async def _delete(self, token: bytes) -> None:
        with contextlib.suppress(StoreError):
            await self._store.delete_observation(token)

    # -- ending ------------------------------------------------------------------------

    async def cancel(self, endpoint: str, paths: Sequence[LwM2MPath]) -> bool:
        """Stop observing ``paths`` and tell the device (GET or FETCH with Observe=1 on
        the observation's token); False when they were not observed."""
        wanted = tuple(paths)
        for live in list(self._live.get(endpoint, {}).values()):
            if live.record.paths == wanted:
                self._adapter.cancel_observation(live.wire)
                if live.task is not None:
                    live.task.cancel()
                self._live[endpoint].pop(live.record.token, None)
                await self._delete(live.record.token)
                self._log.info("observation_cancelled", ep=endpoint, paths=[str(p) for p in wanted],
                               token=live.record.token.hex())
                return True
        return False

    def drop(self, endpoint: str) -> None:
        """Forget ``endpoint``'s observations (it de-registered, expired or registered
        anew; the store drops their records with the registration)."""
        for live in self._live.pop(endpoint, {}).values():
            self._adapter.release_observation(live.wire)
            if live.task is not None:
                live.task.cancel()

    def close(self) -> None:
        """The server stops: observations stay stored and on the devices, for the next start."""
        self._closing = True

    def records(self, endpoint: str | None = None) -> list[ObservationRecord]:
        groups = [self._live.get(endpoint, {})] if endpoint else list(self._live.values())
        return [live.record for group in groups for live in group.values()]

    # -- after a restart ------------------------------------------------------------------

    def adopt(self, records: Iterable[ObservationRecord],
              registration_of: Callable[[str], Registration | None]) -> list[ObservationRecord]:
        """Take over the stored observations that can be adopted by their token (call
        before the adapter starts, so no notification of theirs is reset); returns the
        others, to :meth:`restore` once the adapter runs."""
        others = []
        for record in records:
            registration = registration_of(record.endpoint)
            if registration is None or registration.id != record.registration_id:
                self._spawn(self._delete(record.token))
                continue
            try:
                request = observe_request(registration, record.paths, self._registry)
            except OperationError as error:  # e.g. the paths no longer fit the registration
                self._log.info("observation_dropped", ep=record.endpoint, reason=error.reason)
                self._spawn(self._delete(record.token))
                continue
            wire = self._adapter.adopt_observation(registration.address, record.token, request)
            if wire is None:
                others.append(record)
                continue
            self._follow(LiveObservation(record, request, wire))
            self._log.info("observation_adopted", ep=record.endpoint, token=record.token.hex(),
                           paths=[str(p) for p in record.paths])
        return others

    async def restore(self, record: ObservationRecord,
                      current: Callable[[], tuple[Registration | None, bool]]) -> None:
        """Observe anew what was observed before a restart (the old token is reset when
        the device next notifies on it), now or at the device's next message.
        ``current()`` gives the device's registration now and whether it is awake."""
        await self._delete(record.token)
        while True:
            registration, awake = current()
            if registration is None or registration.id != record.registration_id:
                return
            if registration.queue_mode and not awake:
                await self._defer(record)  # on its next Update
                return
            result = await self.observe(registration, record.paths)
            if result.code != UNREACHABLE:
                self._log.info("observation_restored", ep=record.endpoint, ok=result.ok, code=result.code)
                return
            # e.g. a DTLS device that must handshake again first; if it registered or
            # updated meanwhile (maybe from a new port), its message found nothing deferred
            if current()[0] is registration:
                await self._defer(record)  # on its next message
                self._log.info("observation_restore_deferred", ep=record.endpoint, reason=result.diagnostic)
                return

    async def _defer(self, record: ObservationRecord) -> None:
        self._unrestored.setdefault(record.endpoint, []).append(record)  # before any await: see restore
        await self._store.save_observation(record)

    def deferred(self, endpoint: str) -> list[ObservationRecord]:
        """The observations of ``endpoint`` waiting to be restored (taken: restore them now)."""
        return self._unrestored.pop(endpoint, [])
