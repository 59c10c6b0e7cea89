"""The leader's view of every worker's devices (:class:`ClusterGateway`).

It stands in for the leader's own :class:`LwM2MServer` wherever the API and the
orchestrator use one: the leader's devices are served as before; another worker's
device is known from that worker's events on the bus (its registration and profile),
and an operation on it is sent to that worker, which answers with the device's result.
Events of other workers are published on the leader's hub as if they happened here,
so the event stream and the orchestrator's waits see every device.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from ipso_objects import IpsoError, LwM2MPath
from lwm2m_server.core.capabilities import DeviceProfile
from lwm2m_server.core.queue_mode import Queued
from lwm2m_server.core.registration import Registration
from lwm2m_server.core.requests import DeviceRequest, OperationError
from lwm2m_server.core.responses import UNREACHABLE, Result
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.server import DeviceNotRegistered, LwM2MServer
from lwm2m_server.store.base import QueueFullError

from .bus import BusError, NatsBus
from .wire import (
    MalformedBatch, artifact_to_wire, batch_items, entries_from_wire, entry_from_wire, observed_request, paths_from_wire,
    profile_from_wire, registration_from_wire, request_to_wire, result_from_wire,
)
from .worker import (
    PRESENCE_INTERVAL_S, PRESENCE_TIMEOUT_S, NodeAddress, directory_subject, events_subject, grants_subject, presence_subject,
    worker_subject,
)

GONE = ("deregistered", "expired", "registration_ended")
"""Events after which a worker no longer holds the device."""


@dataclass(slots=True)
class RemoteDevice:
    worker: str
    registration: Registration
    profile: DeviceProfile | None = None


class ClusterGateway:
    """The leader's server, with every other worker's devices added."""

    def __init__(self, server: LwM2MServer, bus: NatsBus, *, prefix: str, deployment: Deployment,
                 worker: str, node: str, advertise: NodeAddress | None = None, rpc_margin_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.node = node
        self._nodes: dict[str, tuple[NodeAddress | None, float]] = {}  # other nodes: address, last heard
        self._advertise = advertise
        self.bus = bus
        self.prefix = prefix
        self.worker = worker
        self.deployment = deployment
        self._remote: dict[str, RemoteDevice] = {}
        self._heard_at: dict[str, float] = {}  # worker -> when it last said anything
        self._lost: dict[str, asyncio.Event] = {}  # worker -> set when it is taken for dead
        self._clock = clock
        self._sweeping: asyncio.Task | None = None
        self._catching_up: dict[str, asyncio.Task] = {}  # worker -> its directory being read
        self._rpc_timeout = server.config.coap.request_timeout_s + rpc_margin_s
        self._log = structlog.get_logger("lwm2m_server.cluster")

    def __getattr__(self, name: str) -> Any:  # registry, store, events, downloads, metrics, ports, ...
        return getattr(self.server, name)

    async def start(self, directory_window_s: float = 1.0) -> None:
        """Follow the other workers (of every node) and learn the devices they hold now."""
        await self.bus.subscribe(events_subject(self.prefix), self._heard)
        await self.bus.subscribe(presence_subject(self.prefix), self._presence)
        self.server.downloads.on_grant.append(self._tell_grant)
        self.server.assign_bootstrapped(self.assign)
        for answer in await self.bus.gather(directory_subject(self.prefix), self._directory_request(),
                                            directory_window_s):
            self._learn(answer)
        self._sweeping = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        for task in (self._sweeping, *self._catching_up.values()):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def add_worker(self, worker: str, timeout: float = 10.0) -> int:
        """Learn what ``worker`` holds (after it started); returns how many devices it has.
        The worker sends its events from then on."""
        return self._learn(await self.bus.request(worker_subject(self.prefix, worker), self._directory_request(),
                                                  timeout))

    def _directory_request(self) -> dict[str, Any]:
        return {"op": "directory", "from": self.worker}

    def _first_heard(self, worker: str) -> None:
        """``worker`` started after this gateway, or speaks again after it was taken for dead:
        read its directory (which also has it send its events from then on)."""
        if worker in self._heard_at or worker in self._catching_up:
            return
        self._catching_up[worker] = asyncio.get_running_loop().create_task(self._catch_up(worker))

    async def _catch_up(self, worker: str) -> None:
        try:
            await self.add_worker(worker, timeout=self._rpc_timeout)
        except BusError as error:
            self._log.warning("directory_not_read", worker=worker, error=str(error))
        finally:
            self._catching_up.pop(worker, None)

    def _learn(self, answer: dict[str, Any]) -> int:
        worker, devices = answer.get("worker"), answer.get("devices", [])
        if not isinstance(worker, str) or worker == self.worker:
            return 0
        self._heard_at[worker] = self._clock()
        for device in devices:
            try:
                registration = registration_from_wire(device["registration"])
                profile = profile_from_wire(device["profile"]) if device.get("profile") else None
            except (KeyError, ValueError, TypeError) as error:
                self._log.warning("malformed_directory_entry", worker=worker, error=str(error))
                continue
            if self.server.registration(registration.endpoint) is None:
                self._remote[registration.endpoint] = RemoteDevice(worker, registration, profile)
        return len(devices)

    def forget_worker(self, worker: str) -> int:
        """``worker`` is gone: its devices are unknown until they register again; how many."""
        self._heard_at.pop(worker, None)
        if (lost := self._lost.pop(worker, None)) is not None:
            lost.set()  # its requests in flight are answered "unreachable" now
        gone = [endpoint for endpoint, device in self._remote.items() if device.worker == worker]
        for endpoint in gone:
            del self._remote[endpoint]
        if gone:
            self._log.warning("worker_lost", worker=worker, devices=len(gone))
        return len(gone)

    async def _presence(self, message: dict[str, Any]) -> None:
        worker, node = message.get("worker"), message.get("node")
        if not isinstance(worker, str) or worker == self.worker:
            return
        if message.get("gone"):
            self.forget_worker(worker)
            return
        self._first_heard(worker)
        now = self._heard_at[worker] = self._clock()
        if isinstance(node, str) and node != self.node:
            address = message.get("address")
            valid = isinstance(address, list) and len(address) == 3 and isinstance(address[0], str) \
                and isinstance(address[1], int) and (address[2] is None or isinstance(address[2], int))
            self._nodes[node] = (tuple(address) if valid else None, now)  # type: ignore[arg-type]

    def nodes(self) -> dict[str, NodeAddress | None]:
        """The nodes alive now (this one included) and where devices reach them."""
        now = self._clock()
        live = {node: address for node, (address, heard) in self._nodes.items() if now - heard <= PRESENCE_TIMEOUT_S}
        return {self.node: self._advertise, **live}

    def assign(self, endpoint: str) -> NodeAddress | None:
        """The node a bootstrapping device is sent to: rendezvous hashing over the live
        nodes that advertise an address, so a node leaving moves only its own devices."""
        candidates = {node: address for node, address in self.nodes().items() if address is not None}
        if not candidates:
            return None
        chosen = max(candidates, key=lambda node: hashlib.sha256(f"{node}\0{endpoint}".encode()).digest())
        return candidates[chosen]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_INTERVAL_S)
            now = self._clock()
            for worker, heard in list(self._heard_at.items()):
                if now - heard > PRESENCE_TIMEOUT_S:
                    self.forget_worker(worker)

    def worker_of(self, endpoint: str) -> str | None:
        if self.server.registration(endpoint) is not None:
            return self.worker
        device = self._remote.get(endpoint)
        return device.worker if device is not None else None

    # -- what the API and the orchestrator read ------------------------------------------

    def registrations(self) -> list[Registration]:
        local = self.server.registrations()
        here = {registration.endpoint for registration in local}
        return local + [device.registration for endpoint, device in self._remote.items() if endpoint not in here]

    def registration(self, endpoint: str) -> Registration | None:
        registration = self.server.registration(endpoint)
        if registration is None and (device := self._remote.get(endpoint)) is not None:
            return device.registration
        return registration

    def profile(self, endpoint: str) -> DeviceProfile | None:
        if self.server.registration(endpoint) is None and (device := self._remote.get(endpoint)) is not None:
            return device.profile
        return self.server.profile(endpoint)

    def download_uri(self, endpoint: str, token: str) -> str:
        device = self._remote_device(endpoint)
        if device is None:
            return self.server.download_uri(endpoint, token)
        return self.server.download_uri_for(device.registration, token)

    # -- operations ------------------------------------------------------------------------

    async def perform(self, endpoint: str, build: Callable[[Registration], DeviceRequest], *,
                      queue: bool = True) -> Result | Queued:
        device = self._remote_device(endpoint)
        if device is None:
            return await self.server.perform(endpoint, build, queue=queue)
        request = build(device.registration)
        reply = await self._ask(device, {"op": "perform", "endpoint": endpoint, "request": request_to_wire(request),
                                         "queue": queue})
        if isinstance(reply, Result):
            return reply
        if "queued" in reply:
            queued = reply["queued"]
            return Queued(str(queued["entry_id"]), str(queued["endpoint"]), float(queued["expires_at"]))
        return result_from_wire(request, reply["result"], self.server.registry)

    async def observe(self, endpoint: str, paths: list[LwM2MPath], *, timeout: float | None = None) -> Result:
        device = self._remote_device(endpoint)
        if device is None:
            return await self.server.observe(endpoint, paths, timeout=timeout)
        reply = await self._ask(device, {"op": "observe", "endpoint": endpoint, "paths": [str(p) for p in paths]})
        if isinstance(reply, Result):
            return reply
        return result_from_wire(observed_request(tuple(paths)), reply["result"], self.server.registry)

    async def cancel_observation(self, endpoint: str, paths: list[LwM2MPath]) -> bool:
        device = self._remote_device(endpoint)
        if device is None:
            return await self.server.cancel_observation(endpoint, paths)
        reply = await self._ask(device, {"op": "cancel_observation", "endpoint": endpoint,
                                         "paths": [str(p) for p in paths]})
        return not isinstance(reply, Result) and bool(reply.get("cancelled"))

    async def rediscover(self, endpoint: str) -> DeviceProfile:
        device = self._remote_device(endpoint)
        if device is None:
            return await self.server.rediscover(endpoint)
        reply = await self._ask(device, {"op": "rediscover", "endpoint": endpoint})
        if isinstance(reply, Result):
            raise DeviceNotRegistered(endpoint)
        device.profile = profile_from_wire(reply["profile"])
        return device.profile

    def _remote_device(self, endpoint: str) -> RemoteDevice | None:
        """The device's entry when another worker holds it; None when this one does."""
        if self.server.registration(endpoint) is not None:
            return None
        device = self._remote.get(endpoint)
        if device is None:
            raise DeviceNotRegistered(endpoint)
        return device

    async def _ask(self, device: RemoteDevice, message: dict[str, Any]) -> dict[str, Any] | Result:
        """The worker's reply, or the Result an unreachable device gives."""
        endpoint = message["endpoint"]
        lost = self._lost.setdefault(device.worker, asyncio.Event())
        asking = asyncio.ensure_future(
            self.bus.request(worker_subject(self.prefix, device.worker), message, self._rpc_timeout))
        waiting = asyncio.ensure_future(lost.wait())
        try:  # a worker that dies mid-request never answers: stop waiting when it is taken for dead
            await asyncio.wait((asking, waiting), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            answered = asking.done()
            if not answered:
                asking.cancel()
        if not answered:
            return Result(ok=False, code=UNREACHABLE, diagnostic=f"worker {device.worker} left the cluster")
        try:
            reply = asking.result()
        except BusError as error:
            self._log.warning("worker_unreachable", worker=device.worker, ep=endpoint, error=str(error))
            return Result(ok=False, code=UNREACHABLE, diagnostic=f"worker {device.worker} unreachable: {error}")
        error = reply.get("error")
        if error == "not_registered":
            if self._remote.get(endpoint) is device:
                del self._remote[endpoint]
            raise DeviceNotRegistered(endpoint)
        if error == "queue_full":
            raise QueueFullError(endpoint, int(reply.get("max_pending", 0)))
        if error is not None:
            raise OperationError(str(reply.get("reason", error)), str(reply.get("code") or "4.00"))
        return reply

    async def _tell_grant(self, endpoint: str, tokens: frozenset[str]) -> None:
        """Every worker serves the grant: the device's GETs may reach any of them."""
        artifacts = [artifact_to_wire(await self.deployment.artifact_by_token(token)) for token in sorted(tokens)]
        try:
            await self.bus.publish(grants_subject(self.prefix),
                                   {"endpoint": endpoint, "tokens": sorted(tokens), "artifacts": artifacts})
        except BusError as error:
            self._log.warning("grant_not_shared", ep=endpoint, error=str(error))

    # -- events of other workers --------------------------------------------------------------

    async def _heard(self, message: dict[str, Any]) -> None:
        """A batch of another worker's events, applied in the order it happened."""
        try:
            worker, events = batch_items(message, "events")
        except MalformedBatch as error:
            self._log.warning("malformed_cluster_events", error=str(error))
            return
        if worker == self.worker:
            return
        self._first_heard(worker)
        self._heard_at[worker] = self._clock()
        for event in events:
            if isinstance(event, dict):
                self._apply(worker, event)

    def _apply(self, worker: str, message: dict[str, Any]) -> None:
        kind, endpoint = message.get("kind"), str(message.get("endpoint", ""))
        if not isinstance(kind, str):
            return
        try:
            data = self._event_data(message)
        except (KeyError, ValueError, TypeError, OperationError, IpsoError) as error:
            self._log.warning("malformed_cluster_event", worker=worker, kind=kind, error=str(error))
            return
        if kind == "registered":
            self.server.release(endpoint)  # it registered again through another worker
            self._remote[endpoint] = RemoteDevice(worker, data["registration"])
        elif kind == "updated" and (device := self._remote.get(endpoint)) is not None:
            device.registration = data["registration"]
        elif kind == "profile" and (device := self._remote.get(endpoint)) is not None:
            device.profile = data["profile"]
        elif kind in GONE and (device := self._remote.get(endpoint)) is not None and device.worker == worker:
            del self._remote[endpoint]
        self.server.events.publish(kind, endpoint=endpoint, worker=worker, **data)  # not forwarded again

    def _event_data(self, message: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if "registration" in message:
            data["registration"] = registration_from_wire(message["registration"])
        if message.get("profile") is not None:
            data["profile"] = profile_from_wire(message["profile"])
        if "reason" in message:
            data["reason"] = message["reason"]
        if "entry" in message:
            data["entry"] = entry_from_wire(message["entry"])
        if "entries" in message:
            data["entries"] = entries_from_wire(message["entries"], self.server.registry)
        if "result" in message:
            paths = paths_from_wire(message.get("paths", []))
            data["paths"] = paths
            data["result"] = result_from_wire(observed_request(paths), message["result"], self.server.registry)
        return data
