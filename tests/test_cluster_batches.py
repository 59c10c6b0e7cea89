"""A worker's events cross the bus in batches: a burst travels as one message (one for
the leaders' gateways, one with the endpoints it registered for the other workers), and
the leader applies and republishes them in the order they happened. A worker sends its
events once a gateway of another process asked for its directory. The bus here is a
loopback in this process (NATS itself is exercised by test_cluster_workers.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import cbor2

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.cluster.bus import BusError
from lwm2m_server.cluster.gateway import ClusterGateway
from lwm2m_server.cluster.worker import WorkerLink, claims_subject, events_subject, worker_subject
from lwm2m_server.core.capabilities import DeviceProfile
from lwm2m_server.core.events import EventHub
from lwm2m_server.core.registration import ObjectLink, ObjectList, Registration

REGISTRY = ObjectRegistry.default()
PREFIX = "batches"
WINDOW_S = 0.02


class LoopbackBus:
    """Publish/subscribe within the process, delivering each message in publish order."""

    def __init__(self) -> None:
        self.handlers: dict[str, list] = {}
        self.responders: dict[str, list] = {}
        self.published: list[tuple[str, bytes]] = []

    async def subscribe(self, subject: str, handler) -> None:
        self.handlers.setdefault(subject, []).append(handler)

    async def serve(self, subject: str, responder) -> None:
        self.responders.setdefault(subject, []).append(responder)

    async def request(self, subject: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not self.responders.get(subject):
            raise BusError(f"no responders on {subject}")
        return await self.responders[subject][0](cbor2.loads(cbor2.dumps(message)))

    async def gather(self, subject: str, message: dict[str, Any], window: float) -> list[dict[str, Any]]:
        return [await responder(cbor2.loads(cbor2.dumps(message))) for responder in self.responders.get(subject, [])]

    async def publish(self, subject: str, message: dict[str, Any]) -> None:
        await self.publish_encoded(subject, cbor2.dumps(message))

    async def publish_encoded(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, payload))
        for handler in self.handlers.get(subject, []):
            await handler(cbor2.loads(payload))

    def on(self, subject: str) -> list[dict[str, Any]]:
        return [cbor2.loads(payload) for s, payload in self.published if s == subject]


class HeldDevices:
    """The parts of an LwM2MServer a WorkerLink and a ClusterGateway use, holding no device."""

    def __init__(self) -> None:
        self.events = EventHub()
        self.registry = REGISTRY
        self.released: list[str] = []
        self.config = SimpleNamespace(coap=SimpleNamespace(request_timeout_s=1.0))
        self.downloads = SimpleNamespace(on_grant=[])

    def release(self, endpoint: str) -> bool:
        self.released.append(endpoint)
        return True

    def registration(self, endpoint: str) -> None:
        return None

    def registrations(self) -> list[Registration]:
        return []

    def profile(self, endpoint: str) -> None:
        return None

    def assign_bootstrapped(self, assign) -> None:
        pass


def registration(endpoint: str, registration_id: str) -> Registration:
    return Registration(id=registration_id, endpoint=endpoint, address="127.0.0.1:5683", lifetime=300,
                        lwm2m_version="1.1", binding="U", queue_mode=False, sms=None,
                        object_list=ObjectList("/", (), (ObjectLink(LwM2MPath.parse("/3/0"), None),)),
                        registered_at=1.0, updated_at=1.0, extra={}, identity=None)


async def until(condition, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_burst_travels_as_one_message_and_the_leader_applies_it_in_order():
    bus = LoopbackBus()
    worker, leader = HeldDevices(), HeldDevices()
    link = WorkerLink(worker, bus, prefix=PREFIX, worker="n1-1", node="n1", batch_window_s=WINDOW_S)
    leader_link = WorkerLink(leader, bus, prefix=PREFIX, worker="n1-0", node="n1", batch_window_s=WINDOW_S)
    gateway = ClusterGateway(leader, bus, prefix=PREFIX, deployment=None, worker="n1-0", node="n1")
    await link.start()
    await leader_link.start()
    await gateway.start(directory_window_s=0)  # asks both links' directories: n1-1 is followed from then on
    try:
        await asyncio.sleep(0)  # the links' forwarding tasks subscribe to their hubs
        assert link.followed and not leader_link.followed  # the leader's own gateway needs no events from it
        first, again = registration("dev-1", "r1"), registration("dev-1", "r3")
        profile = DeviceProfile("dev-2", read_at=2.0, manufacturer="Acme", memory_free_kb=64)
        with leader.events.subscribe() as republished:
            burst = [("registered", "dev-1", {"registration": first}),
                     ("registered", "dev-2", {"registration": registration("dev-2", "r2")}),
                     ("profile", "dev-2", {"profile": profile}),
                     ("deregistered", "dev-1", {"registration": first}),
                     ("registered", "dev-1", {"registration": again})]
            for kind, endpoint, data in burst:
                worker.events.publish(kind, endpoint=endpoint, **data)
            await until(lambda: republished.qsize() == len(burst))
            seen = [republished.get_nowait() for _ in burst]

        assert len(bus.on(events_subject(PREFIX))) == 1 and len(bus.on(claims_subject(PREFIX))) == 1
        assert [(event.kind, event.endpoint, event.data["worker"]) for event in seen] == \
            [(kind, endpoint, "n1-1") for kind, endpoint, _ in burst]
        # applied in order: dev-1 registered again after its de-registration, so it is held by n1-1
        assert gateway.registration("dev-1") == again and gateway.worker_of("dev-1") == "n1-1"
        assert gateway.profile("dev-2") == profile
        # the leader let go of what n1-1 registered; n1-1 ignores its own claims and the leader
        # does not send n1-1's events back
        assert set(leader.released) == {"dev-1", "dev-2"} and worker.released == []
        assert {message["worker"] for message in bus.on(events_subject(PREFIX))} == {"n1-1"}
    finally:
        await gateway.stop()
        await leader_link.stop()
        await link.stop()


async def test_a_leader_alone_sends_claims_only_until_another_nodes_gateway_asks_for_its_directory():
    bus = LoopbackBus()
    leader = HeldDevices()
    link = WorkerLink(leader, bus, prefix=PREFIX, worker="n1-0", node="n1", batch_window_s=WINDOW_S)
    await link.start()
    try:
        await asyncio.sleep(0)
        leader.events.publish("registered", endpoint="dev-0", registration=registration("dev-0", "r0"))
        await until(lambda: len(bus.on(claims_subject(PREFIX))) == 1)
        await asyncio.sleep(2 * WINDOW_S)
        assert bus.on(events_subject(PREFIX)) == []  # nobody follows its events: none encoded, none sent
        answer = await bus.request(worker_subject(PREFIX, "n1-0"), {"op": "directory", "from": "n2-0"}, 1.0)
        assert answer["worker"] == "n1-0" and link.followed

        leader.events.publish("registered", endpoint="dev-1", registration=registration("dev-1", "r1"))
        await until(lambda: len(bus.on(events_subject(PREFIX))) == 1)
        leader.events.publish("registered", endpoint="dev-2", registration=registration("dev-2", "r2"))
        await until(lambda: len(bus.on(events_subject(PREFIX))) == 2)
        assert [[event["endpoint"] for event in message["events"]] for message in bus.on(events_subject(PREFIX))] \
            == [["dev-1"], ["dev-2"]]
        # bursts further apart than the window travel separately
        assert [message["endpoints"] for message in bus.on(claims_subject(PREFIX))] == [["dev-0"], ["dev-1"], ["dev-2"]]
    finally:
        await link.stop()


async def test_a_gateway_reads_the_directory_of_a_worker_that_started_after_it_and_then_hears_its_events():
    bus = LoopbackBus()
    leader, late = HeldDevices(), HeldDevices()
    gateway = ClusterGateway(leader, bus, prefix=PREFIX, deployment=None, worker="n1-0", node="n1")
    await gateway.start(directory_window_s=0)
    late.registrations = lambda: [registration("dev-early", "r0")]  # registered before anyone asked
    link = WorkerLink(late, bus, prefix=PREFIX, worker="n2-0", node="n2", batch_window_s=WINDOW_S)
    await link.start()  # its first presence message reaches the gateway, which asks for its directory
    try:
        await until(lambda: link.followed and gateway.worker_of("dev-early") == "n2-0")
        late.events.publish("registered", endpoint="dev-late", registration=registration("dev-late", "r1"))
        await until(lambda: gateway.worker_of("dev-late") == "n2-0")
        assert {r.endpoint for r in gateway.registrations()} == {"dev-early", "dev-late"}
    finally:
        await link.stop()
        await gateway.stop()
