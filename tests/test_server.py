"""The server over loopback with raw aiocoap peers: registration interface, operations,
queue mode, expiry and restart persistence (SQLite)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiocoap
import pytest
from aiocoap import Code, Message, resource
from structlog.testing import capture_logs

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations
from lwm2m_server.config import ServerConfig
from lwm2m_server.server import LwM2MServer, Queued
from lwm2m_server.store.sqlite import SqliteStore
from peers.fw_client import FirmwarePeer
from simulators.client import SimulatedDevice

P = LwM2MPath.parse


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config_for_tests(**queue) -> ServerConfig:
    base = ServerConfig()
    return replace(
        base,
        coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=5),
        queue=replace(base.queue, **queue),
    )


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    yield store
    await store.close()


@pytest.fixture
async def server(store):
    server = LwM2MServer(config_for_tests(awake_window_s=0.5), ObjectRegistry.default(), store, clock=Clock())
    await server.start()
    yield server
    await server.stop()


class Manufacturer(resource.Resource):
    async def render_get(self, request):
        return Message(payload=b"Acme", content_format=0)


async def peer(site=None):
    return await aiocoap.Context.create_server_context(site or resource.Site(), bind=("127.0.0.1", 0), transports=["udp6"])


async def discovered(server, endpoint: str) -> None:
    """Wait until capability discovery after a Register has finished for ``endpoint``."""
    for _ in range(200):
        if server.profile(endpoint) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no profile for {endpoint}")


async def send(context, server, method, path, payload=b"", content_format=None):
    message = Message(code=method, uri=f"coap://127.0.0.1:{server.port}{path}", payload=payload)
    if content_format is not None:
        message.opt.content_format = content_format
    return await context.request(message).response


async def test_register_update_deregister(server):
    device = await peer()
    try:
        response = await send(device, server, Code.POST, "/rd?ep=dev1&lt=300&lwm2m=1.1&b=U",
                              b'</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>', 40)
        assert response.code == Code.CREATED and response.opt.location_path[0] == "rd"
        registration = server.registration("dev1")
        assert registration.lifetime == 300 and registration.object_list.content_formats == (110,)
        location = "/" + "/".join(response.opt.location_path)
        other_port = await peer()  # lwm2m-node-lib sends each Update from a new port
        try:
            response = await send(other_port, server, Code.POST, location + "?lt=600")
            assert response.code == Code.CHANGED
            moved = server.registration("dev1")
            assert moved.lifetime == 600 and moved.address != registration.address
        finally:
            await other_port.shutdown()
        response = await send(device, server, Code.DELETE, location)
        assert response.code == Code.DELETED and server.registration("dev1") is None
        response = await send(device, server, Code.DELETE, location)
        assert response.code == Code.NOT_FOUND
    finally:
        await device.shutdown()


@pytest.mark.parametrize(
    "query, payload, diagnostic",
    [
        ("/rd?ep=bad&lt=abc", b"</3/0>", b"lt='abc'"),
        ("/rd?ep=bad&lwm2m=7.0", b"</3/0>", b"lwm2m='7.0'"),
        ("/rd?lt=60", b"</3/0>", b"missing endpoint"),
        ("/rd?ep=bad", b"</3/0", b"not a valid object list"),
    ],
)
async def test_bad_registration_gets_400_and_server_keeps_serving(server, query, payload, diagnostic):
    device = await peer()
    try:
        response = await send(device, server, Code.POST, query, payload)
        assert response.code == Code.BAD_REQUEST and diagnostic in response.payload
        response = await send(device, server, Code.POST, "/rd?ep=good", b"</3/0>")
        assert response.code == Code.CREATED and server.registration("good") is not None
    finally:
        await device.shutdown()


async def test_read_goes_to_the_newest_address(server):
    site = resource.Site()
    site.add_resource(("3", "0", "0"), Manufacturer())
    device = await peer(site)
    try:
        await send(device, server, Code.POST, "/rd?ep=dev2", b"</3/0>")
        result = await server.perform("dev2", lambda reg: operations.read(reg, P("/3/0/0"), registry=server.registry))
        assert result.ok and result.node.value == "Acme"
    finally:
        await device.shutdown()


async def test_queue_mode_holds_requests_until_the_next_update(server):
    site = resource.Site()
    site.add_resource(("3", "0", "0"), Manufacturer())
    device = await peer(site)
    clock = server._clock
    try:
        response = await send(device, server, Code.POST, "/rd?ep=sleepy&b=UQ", b"</3/0>")
        location = "/" + "/".join(response.opt.location_path)
        await discovered(server, "sleepy")
        clock.now += 10  # past the awake window: the device sleeps
        outcome = await server.perform("sleepy", lambda reg: operations.read(reg, P("/3/0/0"), registry=server.registry))
        assert isinstance(outcome, Queued)
        assert (await server.queue_entry(outcome.entry_id)).state == "pending"
        await send(device, server, Code.POST, location)  # wakes: Update
        entry = await server.wait_for_entry(outcome.entry_id, timeout=5)
        assert entry.state == "delivered" and entry.result["code"] == "2.05"
    finally:
        await device.shutdown()


async def test_full_queue_is_refused(store):
    server = LwM2MServer(config_for_tests(awake_window_s=0.5, max_pending_per_device=2),
                         ObjectRegistry.default(), store, clock=Clock())
    await server.start()
    device = await peer()
    try:
        await send(device, server, Code.POST, "/rd?ep=sleepy&b=UQ", b"</3/0>")
        await discovered(server, "sleepy")
        server._clock.now += 1
        build = lambda reg: operations.read(reg, P("/3/0/0"), registry=server.registry)  # noqa: E731
        await server.perform("sleepy", build)
        await server.perform("sleepy", build)
        from lwm2m_server.store.base import QueueFullError
        with pytest.raises(QueueFullError, match="sleepy"):
            await server.perform("sleepy", build)
    finally:
        await device.shutdown()
        await server.stop()


async def test_lifetime_expiry(server):
    device = await peer()
    try:
        await send(device, server, Code.POST, "/rd?ep=short&lt=30", b"</3/0>")
        server._clock.now += 30
        assert await server.expire_now() == []
        server._clock.now += 1
        expired = await server.expire_now()
        assert [r.endpoint for r in expired] == ["short"] and server.registration("short") is None
    finally:
        await device.shutdown()


async def test_registrations_survive_a_restart(store, tmp_path):
    clock = Clock()
    first = LwM2MServer(config_for_tests(), ObjectRegistry.default(), store, clock=clock)
    await first.start()
    device = await peer()
    try:
        for i in range(5):
            await send(device, first, Code.POST, f"/rd?ep=keep{i}&lt=600", b"</3/0>")
    finally:
        await device.shutdown()
        await first.stop()
    second = LwM2MServer(config_for_tests(), ObjectRegistry.default(), store, clock=clock)
    await second.start()
    try:
        assert sorted(r.endpoint for r in second.registrations()) == [f"keep{i}" for i in range(5)]
    finally:
        await second.stop()


async def test_send_from_a_registered_device_is_published(server):
    device = await peer()
    try:
        await send(device, server, Code.POST, "/rd?ep=sender&lwm2m=1.1", b"</3303/0>")
        with server.events.subscribe() as events:
            payload = b'[{"bn":"/3303/0/","n":"5700","v":21.5,"t":1700000000}]'
            response = await send(device, server, Code.POST, "/dp", payload, 110)
            assert response.code == Code.CHANGED
            event = await events.get()
            while event.kind != "send":
                event = await events.get()
        (entry,) = event.data["entries"]
        assert event.endpoint == "sender" and entry.time == 1700000000
        assert entry.values == {P("/3303/0/5700"): 21.5}
        response = await send(device, server, Code.POST, "/dp", b"[", 110)
        assert response.code == Code.BAD_REQUEST and b"Send payload" in response.payload
        stranger = await peer()
        try:
            response = await send(stranger, server, Code.POST, "/dp", payload, 110)
            assert response.code == Code.FORBIDDEN
        finally:
            await stranger.shutdown()
    finally:
        await device.shutdown()


async def test_a_1_1_device_is_discovered_in_one_round_trip(server):
    device = SimulatedDevice("gw-one", "linux-gateway", f"coap://127.0.0.1:{server.port}", seed=1,
                             sensor_interval=3600)
    await device.start()
    try:
        await discovered(server, "gw-one")
        assert device.stats.requests == 1  # one Read-Composite of /3/0, /5/0, /9 and /26241/0
        profile = server.profile("gw-one")
        assert profile.manufacturer and profile.firmware_delivery is not None and profile.tinyml is not None
        assert not profile.problems
    finally:
        await device.stop()


async def test_a_device_that_refuses_read_composite_is_discovered_object_by_object(server):
    device = FirmwarePeer("127.0.0.1", server.port, "fw-peer-1")  # answers FETCH with 4.05
    await device.start()
    try:
        await discovered(server, "fw-peer-1")
        profile = server.profile("fw-peer-1")
        assert profile.manufacturer == "TinyMLaaS test peer" and profile.firmware_delivery == 2
        with capture_logs() as logs:
            await server.rediscover("fw-peer-1")
        events = [entry["event"] for entry in logs]
        assert "discovered" in events and "read_composite_refused" not in events  # remembered: path by path
    finally:
        await device.stop()
