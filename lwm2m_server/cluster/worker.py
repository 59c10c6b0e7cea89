"""A worker's side of the cluster: it tells the others about its devices and carries
out operations the leader asks for on them.

Subjects (``<prefix>`` is ``cluster.name``):

* ``<prefix>.events``: every worker's device events (:data:`.wire.FORWARDED_EVENTS`) for
  the leaders' gateways, in batches: what a worker's server published within
  :data:`BATCH_WINDOW_S` of the first event, in order, in one message (split only past
  :data:`.wire.MAX_MESSAGE_BYTES`); one subject, so a device's events keep their order.
  A worker sends them once a gateway of another process asked for its directory (the
  leader of a node alone has no one to tell); the directory answer covers what came before;
* ``<prefix>.claims``: the endpoints each batch registered, for the workers: one that
  hears another took over an endpoint (the device registered again from an address the
  kernel hands to that worker) lets its own registration of it go. Endpoints only, so
  a worker does not decode the others' registrations;
* ``<prefix>.grants``: pull deliveries the leader granted, with the signed module, so
  the worker a device's GETs reach serves them;
* ``<prefix>.worker.<n>``: requests to worker ``n``: ``perform`` (a request to one of
  its devices), ``rediscover``, ``observe``, ``cancel_observation``, ``directory``
  (its registrations and profiles; ``from``: the asking gateway's worker).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from ipso_objects import IpsoError
from lwm2m_server.core.events import Event
from lwm2m_server.core.queue_mode import Queued
from lwm2m_server.core.requests import OperationError
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.server import DeviceNotRegistered, LwM2MServer
from lwm2m_server.store.base import QueueFullError, StoreError

from .bus import BusError, NatsBus

NodeAddress = tuple[str, int, int | None]
"""Host, CoAP port, CoAPS port (None: no CoAPS)."""

PRESENCE_INTERVAL_S = 2.0
PRESENCE_TIMEOUT_S = 7.0
BATCH_WINDOW_S = 0.005
"""How long a worker gathers events after the first before it sends them: one message
for a burst instead of one each, whose cost (encoding aside) made two workers slower
than one."""
from .wire import (
    FORWARDED_EVENTS, MalformedBatch, artifact_from_wire, batch_items, encode_batches, event_to_wire, paths_from_wire,
    profile_to_wire, registration_to_wire, request_from_wire, result_to_wire,
)


def worker_subject(prefix: str, worker: str) -> str:
    return f"{prefix}.worker.{worker}"


def worker_id(node: str, index: int) -> str:
    """A worker's name in the cluster: its node's name and its index there (0: the leader)."""
    return f"{node}-{index}"


def directory_subject(prefix: str) -> str:
    return f"{prefix}.directory"


def presence_subject(prefix: str) -> str:
    return f"{prefix}.presence"


def events_subject(prefix: str) -> str:
    """Batches of every worker's events, for the leaders' gateways."""
    return f"{prefix}.events"


def claims_subject(prefix: str) -> str:
    """Batches of the endpoints a worker registered, for the other workers."""
    return f"{prefix}.claims"


def grants_subject(prefix: str) -> str:
    return f"{prefix}.grants"


class WorkerLink:
    """Joins one worker's :class:`LwM2MServer` (and the modules it serves) to the bus."""

    def __init__(self, server: LwM2MServer, bus: NatsBus, *, prefix: str, worker: str, node: str,
                 deployment: Deployment | None = None, advertise: NodeAddress | None = None,
                 batch_window_s: float = BATCH_WINDOW_S) -> None:
        self.server = server
        self.node = node
        self.advertise = advertise
        """Where devices reach this node (host, CoAP port, CoAPS port), for bootstrap on any node."""
        self.bus = bus
        self.prefix = prefix
        self.worker = worker
        self.deployment = deployment
        self.batch_window_s = batch_window_s
        self._forwarding: asyncio.Task | None = None
        self.followed = False
        """A gateway of another process asked for this worker's directory: it follows the events."""
        self._presence: asyncio.Task | None = None
        self._log = structlog.get_logger("lwm2m_server.cluster").bind(worker=worker)

    async def start(self) -> None:
        await self.bus.serve(worker_subject(self.prefix, self.worker), self._answer)
        await self.bus.subscribe(claims_subject(self.prefix), self._claimed)
        await self.bus.subscribe(grants_subject(self.prefix), self._granted)
        await self.bus.serve(directory_subject(self.prefix), self._answer)
        loop = asyncio.get_running_loop()
        self._forwarding = loop.create_task(self._forward())
        self._presence = loop.create_task(self._announce())

    async def stop(self) -> None:
        for task in (self._forwarding, self._presence):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(BusError):  # the others forget its devices now, not after the silence
            await self.bus.publish(presence_subject(self.prefix), {"worker": self.worker, "gone": True})

    async def _announce(self) -> None:
        """Say every PRESENCE_INTERVAL_S that this worker is alive: one silent for
        PRESENCE_TIMEOUT_S is taken for dead and its devices for unreachable."""
        while True:
            with contextlib.suppress(BusError):
                await self.bus.publish(presence_subject(self.prefix), {
                    "worker": self.worker, "node": self.node,
                    "address": list(self.advertise) if self.advertise is not None else None})
            await asyncio.sleep(PRESENCE_INTERVAL_S)

    async def _forward(self) -> None:
        with self.server.events.subscribe(None, FORWARDED_EVENTS) as queue:
            while True:
                events = [await queue.get()]
                await asyncio.sleep(self.batch_window_s)
                while not queue.empty():
                    events.append(queue.get_nowait())
                await self._send(events)

    async def _send(self, events: list[Event]) -> None:
        """One batch of this worker's events to the gateways (once one follows), and the
        endpoints it registered to the workers."""
        messages, claimed = [], []
        for event in events:
            if "worker" in event.data:  # another worker's, republished here by the leader's gateway
                continue
            if event.kind == "registered":
                claimed.append(event.endpoint)
            if not self.followed:
                continue
            try:
                messages.append(event_to_wire(event.kind, event.endpoint, event.data, self.worker,
                                              self.server.registry))
            except (IpsoError, ValueError, TypeError) as error:
                self._log.warning("event_not_forwarded", kind=event.kind, ep=event.endpoint, error=str(error))
        batches = [(events_subject(self.prefix), payload)
                   for payload in (encode_batches("events", self.worker, messages) if messages else ())]
        batches += [(claims_subject(self.prefix), payload)
                    for payload in (encode_batches("endpoints", self.worker, claimed) if claimed else ())]
        for subject, payload in batches:
            try:
                await self.bus.publish_encoded(subject, payload)
            except BusError as error:  # too big, or the bus is down: once this worker is heard again
                # after its silence, the gateways read its directory again
                self._log.warning("events_not_forwarded", subject=subject, bytes=len(payload), error=str(error))

    async def _claimed(self, message: dict[str, Any]) -> None:
        try:
            worker, endpoints = batch_items(message, "endpoints")
        except MalformedBatch as error:
            self._log.warning("malformed_claims", error=str(error))
            return
        if worker == self.worker:
            return
        for endpoint in endpoints:
            if self.server.release(str(endpoint)):
                self._log.info("registration_moved", ep=endpoint, to_worker=worker)

    async def _granted(self, message: dict[str, Any]) -> None:
        try:
            artifacts = [artifact_from_wire(data) for data in message.get("artifacts", [])]
            endpoint, tokens = str(message["endpoint"]), [str(token) for token in message["tokens"]]
        except (KeyError, TypeError, ValueError) as error:
            self._log.warning("malformed_grant", error=str(error))
            return
        if self.deployment is not None:
            for artifact in artifacts:
                self.deployment.remember(artifact)
        self.server.downloads.apply(endpoint, tokens)

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        operation, endpoint = request.get("op"), str(request.get("endpoint", ""))
        server = self.server
        try:
            if operation == "perform":
                device_request = request_from_wire(request["request"])
                outcome = await server.perform(endpoint, lambda _: device_request, queue=bool(request.get("queue", True)))
                if isinstance(outcome, Queued):
                    return {"queued": {"entry_id": outcome.entry_id, "endpoint": outcome.endpoint,
                                       "expires_at": outcome.expires_at}}
                return {"result": result_to_wire(outcome)}
            if operation == "observe":
                return {"result": result_to_wire(await server.observe(endpoint, list(paths_from_wire(request["paths"]))))}
            if operation == "cancel_observation":
                return {"cancelled": await server.cancel_observation(endpoint, list(paths_from_wire(request["paths"])))}
            if operation == "rediscover":
                return {"profile": profile_to_wire(await server.rediscover(endpoint))}
            if operation == "directory":
                if request.get("from") != self.worker:  # before the answer: what follows it is sent
                    self.followed = True
                return {"worker": self.worker, "devices": [
                    {"registration": registration_to_wire(registration),
                     "profile": profile_to_wire(profile) if (profile := server.profile(registration.endpoint)) else None}
                    for registration in server.registrations()
                ]}
        except DeviceNotRegistered:
            return {"error": "not_registered"}
        except QueueFullError as error:
            return {"error": "queue_full", "max_pending": error.max_pending}
        except (OperationError, StoreError) as error:
            return {"error": "failed", "reason": str(error), "code": getattr(error, "code", None)}
        return {"error": "failed", "reason": f"unknown operation {operation!r}"}
