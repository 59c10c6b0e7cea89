"""A worker's side of the cluster: it tells the others about its devices and carries
out operations the leader asks for on them.

Subjects (``<prefix>`` is ``cluster.name``):

* ``<prefix>.events.<kind>``: every worker's device events (:data:`.wire.FORWARDED_EVENTS`);
  a worker that hears another took over an endpoint (the device registered again from
  an address the kernel hands to that worker) lets its own registration of it go;
* ``<prefix>.grants``: pull deliveries the leader granted, with the signed module, so
  the worker a device's GETs reach serves them;
* ``<prefix>.worker.<n>``: requests to worker ``n``: ``perform`` (a request to one of
  its devices), ``rediscover``, ``observe``, ``cancel_observation``, ``directory``
  (its registrations and profiles).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

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
from .wire import (
    FORWARDED_EVENTS, artifact_from_wire, event_to_wire, paths_from_wire, profile_to_wire, registration_to_wire,
    request_from_wire, result_to_wire,
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


def events_subject(prefix: str, kind: str = ">") -> str:
    """Events of one kind (``>``: all): a worker listens to ``registered`` only."""
    return f"{prefix}.events.{kind}"


def grants_subject(prefix: str) -> str:
    return f"{prefix}.grants"


class WorkerLink:
    """Joins one worker's :class:`LwM2MServer` (and the modules it serves) to the bus."""

    def __init__(self, server: LwM2MServer, bus: NatsBus, *, prefix: str, worker: str, node: str,
                 deployment: Deployment | None = None, advertise: NodeAddress | None = None) -> None:
        self.server = server
        self.node = node
        self.advertise = advertise
        """Where devices reach this node (host, CoAP port, CoAPS port), for bootstrap on any node."""
        self.bus = bus
        self.prefix = prefix
        self.worker = worker
        self.deployment = deployment
        self._forwarding: asyncio.Task | None = None
        self._presence: asyncio.Task | None = None
        self._log = structlog.get_logger("lwm2m_server.cluster").bind(worker=worker)

    async def start(self) -> None:
        await self.bus.serve(worker_subject(self.prefix, self.worker), self._answer)
        await self.bus.subscribe(events_subject(self.prefix, "registered"), self._heard)
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
                event = await queue.get()
                if "worker" in event.data:  # another worker's, republished here by the leader's gateway
                    continue
                try:
                    await self.bus.publish(events_subject(self.prefix, event.kind),
                                           event_to_wire(event.kind, event.endpoint, event.data, self.worker,
                                                         self.server.registry))
                except BusError as error:  # the bus is down: the leader asks for the directory again
                    self._log.warning("event_not_forwarded", kind=event.kind, ep=event.endpoint, error=str(error))

    async def _heard(self, message: dict[str, Any]) -> None:
        if message.get("kind") != "registered" or message.get("worker") == self.worker:
            return
        endpoint = str(message.get("endpoint"))
        if self.server.release(endpoint):
            self._log.info("registration_moved", ep=endpoint, to_worker=message.get("worker"))

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
