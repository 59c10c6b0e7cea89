"""Server and simulated devices over loopback: every operation, every content format,
queue mode, observe, Send, and restart persistence."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ipso_objects import LwM2MPath, ObjectInstance, ObjectRegistry, Resource
from ipso_objects.codecs import ContentFormat as CF
from ipso_objects.codecs.link_format import NotificationAttributes
from lwm2m_server.core import operations as ops
from lwm2m_server.core.responses import result_from_dict
from lwm2m_server.server import LwM2MServer, Queued
from lwm2m_server.store.sqlite import SqliteStore
from simulators.client import SimulatedDevice
from test_server import config_for_tests

P = LwM2MPath.parse
PROFILES = {"1.0": "cortex-m0plus", "1.1": "cortex-m4f", "1.2": "linux-gateway"}


async def wait_until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


class Setup:
    def __init__(self, tmp_path) -> None:
        self.path = tmp_path / "state.sqlite3"
        self.registry = ObjectRegistry.default()
        self.devices: list[SimulatedDevice] = []
        self.store = self.server = None
        self.port = 0

    async def start_server(self, **queue) -> LwM2MServer:
        self.store = await SqliteStore.open(self.path)
        config = config_for_tests(**queue)
        # a restart keeps the port the devices know
        config = replace(config, coap=replace(config.coap, port=self.port))
        self.server = LwM2MServer(config, self.registry, self.store)
        await self.server.start()
        self.port = self.server.port
        return self.server

    async def stop_server(self) -> None:
        await self.server.stop()
        await self.store.close()

    async def device(self, endpoint: str, profile: str) -> SimulatedDevice:
        device = SimulatedDevice(endpoint, profile, f"coap://127.0.0.1:{self.server.port}",
                                 self.registry, seed=7, sensor_interval=3600)
        await device.start()
        self.devices.append(device)
        await wait_until(lambda: self.server.profile(endpoint) is not None)  # discovery done
        return device

    async def perform(self, endpoint: str, build):
        outcome = await self.server.perform(endpoint, build)
        assert not isinstance(outcome, Queued), outcome
        return outcome


@pytest.fixture
async def setup(tmp_path):
    setup = Setup(tmp_path)
    await setup.start_server(awake_window_s=60)
    yield setup
    for device in setup.devices:
        await device.stop(deregister=False)
    await setup.stop_server()


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_every_operation(setup, version):
    device = await setup.device(f"dev-{version}", PROFILES[version])
    registry, ep = setup.registry, device.endpoint

    result = await setup.perform(ep, lambda r: ops.read(r, P("/3/0"), registry=registry))
    assert result.ok and result.node.resources[0].value == device.objects.get("/3/0/0")
    result = await setup.perform(ep, lambda r: ops.read(r, P("/3303/0/5700"), registry=registry))
    assert result.node.value == device.objects.get("/3303/0/5700")
    result = await setup.perform(ep, lambda r: ops.read(r, P("/3/0/6"), registry=registry))
    assert result.ok and set(result.node.instances) == {p.ids[3] for p in device.objects.leaves("/3/0/6")}

    result = await setup.perform(ep, lambda r: ops.write(r, P("/3/0/14"), "+05:30", registry=registry))
    assert result.ok and device.objects.get("/3/0/14") == "+05:30"
    update = ObjectInstance(0, {15: Resource(15, "Asia/Kolkata")})
    result = await setup.perform(ep, lambda r: ops.write(r, P("/3/0"), update, replace=False, registry=registry))
    assert result.ok and device.objects.get("/3/0/15") == "Asia/Kolkata"

    result = await setup.perform(ep, lambda r: ops.execute(r, P("/3/0/4"), registry=registry))
    assert result.ok and device.objects.execute_counts[P("/3/0/4")] == 1

    result = await setup.perform(ep, lambda r: ops.discover(r, P("/3303/0"), registry=registry))
    assert result.ok and any(link.target == "/3303/0/5700" for link in result.links)

    attrs = NotificationAttributes.from_query(["pmin=1", "pmax=30"])
    result = await setup.perform(ep, lambda r: ops.write_attributes(r, P("/3303/0/5700"), attrs, registry=registry))
    assert result.ok

    new = ObjectInstance(7, {5701: Resource(5701, "K")})
    result = await setup.perform(ep, lambda r: ops.create(r, P("/3303"), new, registry=registry))
    assert result.ok and device.objects.get("/3303/7/5701") == "K"
    result = await setup.perform(ep, lambda r: ops.delete(r, P("/3303/7"), registry=registry))
    assert result.ok and device.objects.get("/3303/7/5701") is None

    if version != "1.0":
        paths = [P("/3/0/0"), P("/3303/0/5700")]
        result = await setup.perform(ep, lambda r: ops.read_composite(r, paths, registry=registry))
        assert result.ok and result.values[P("/3/0/0")] == device.objects.get("/3/0/0")
        values = {P("/3/0/14"): "-03:00", P("/3/0/15"): "America/Sao_Paulo"}
        result = await setup.perform(ep, lambda r: ops.write_composite(r, values, registry=registry))
        assert result.ok and device.objects.get("/3/0/15") == "America/Sao_Paulo"


FORMATS = [
    ("1.0", CF.TLV), ("1.0", CF.TEXT), ("1.0", CF.OMA_JSON),
    ("1.1", CF.SENML_JSON), ("1.1", CF.SENML_CBOR), ("1.1", CF.TLV), ("1.1", CF.TEXT),
    ("1.2", CF.LWM2M_CBOR), ("1.2", CF.SENML_CBOR),
]


@pytest.mark.parametrize("version, fmt", FORMATS)
async def test_every_content_format(setup, version, fmt):
    device = await setup.device(f"fmt-{version}", PROFILES[version])
    registry, ep = setup.registry, device.endpoint
    path = P("/3/0/0") if fmt == CF.TEXT else P("/3/0")
    result = await setup.perform(ep, lambda r: ops.read(r, path, registry=registry, accept=fmt))
    assert result.ok and result.content_format == fmt
    expected = device.objects.get("/3/0/0")
    value = result.node.value if fmt == CF.TEXT else result.node.resources[0].value
    assert value == expected
    node = Resource(14, "+09:00") if fmt == CF.TEXT else ObjectInstance(0, {14: Resource(14, "+09:00")})
    target = P("/3/0/14") if fmt == CF.TEXT else P("/3/0")
    result = await setup.perform(ep, lambda r: ops.write(r, target, node, replace=fmt == CF.TEXT,
                                                        registry=registry, content_format=fmt))
    assert result.ok, result.diagnostic
    assert device.objects.get("/3/0/14") == "+09:00"


async def test_opaque_resource_in_opaque_format(setup):
    device = await setup.device("opaque-1", PROFILES["1.1"])
    image = bytes(range(256)) * 8  # Block1 on the way out
    result = await setup.perform(device.endpoint, lambda r: ops.write(r, P("/5/0/0"), image, registry=setup.registry))
    assert result.ok, result.diagnostic


async def test_observe_notifications_and_composite(setup):
    device = await setup.device("obs-1", PROFILES["1.1"])
    server = setup.server
    with server.events.subscribe() as events:
        first = await server.observe(device.endpoint, [P("/3303/0/5700")])
        assert first.ok
        composite = await server.observe(device.endpoint, [P("/3/0/9"), P("/3303/0/5700")])
        assert composite.ok and P("/3303/0/5700") in composite.values
        device.step()  # the sensor random-walks to a new value
        expected = device.objects.get("/3303/0/5700")
        seen = set()
        async with asyncio.timeout(10):
            while len(seen) < 2:
                event = await events.get()
                if event.kind != "notification":
                    continue
                result = event.data["result"]
                value = result.node.value if result.node is not None else result.values.get(P("/3303/0/5700"))
                if value == expected:
                    seen.add(len(event.data["paths"]))
    assert seen == {1, 2}
    assert await server.cancel_observation(device.endpoint, [P("/3303/0/5700")])
    assert len(server.observations(device.endpoint)) == 1


async def test_queue_mode_delivers_on_wake(tmp_path):
    setup = Setup(tmp_path)
    await setup.start_server(awake_window_s=0.3)
    try:
        device = await setup.device("sleepy-1", PROFILES["1.0"])
        await device.sleep()
        await asyncio.sleep(0.4)
        outcome = await setup.server.perform(device.endpoint, lambda r: ops.read(r, P("/3/0/0"), registry=setup.registry))
        assert isinstance(outcome, Queued)
        await device.wake()  # sends an Update, then answers
        entry = await setup.server.wait_for_entry(outcome.entry_id, timeout=10)
        assert entry.state == "delivered" and entry.result["code"] == "2.05"
        request = ops.DeviceRequest.from_dict(entry.request)
        decoded = result_from_dict(request, entry.result, setup.registry)
        assert decoded.node.value == device.objects.get("/3/0/0")
    finally:
        for device in setup.devices:
            await device.stop(deregister=False)
        await setup.stop_server()


async def test_restart_keeps_registrations_and_observations(tmp_path):
    setup = Setup(tmp_path)
    await setup.start_server(awake_window_s=60)
    try:
        devices = [await setup.device(f"keep-{i}", PROFILES["1.1"]) for i in range(3)]
        await setup.server.observe("keep-0", [P("/3303/0/5700")])
        await setup.stop_server()
        await setup.start_server(awake_window_s=60)
        server = setup.server
        assert sorted(r.endpoint for r in server.registrations()) == ["keep-0", "keep-1", "keep-2"]
        await wait_until(lambda: len(server.observations("keep-0")) == 1)
        with server.events.subscribe() as events:
            devices[0].step()
            expected = devices[0].objects.get("/3303/0/5700")
            async with asyncio.timeout(10):
                while True:
                    event = await events.get()
                    if event.kind == "notification" and event.data["result"].node.value == expected:
                        break
        result = await setup.perform("keep-2", lambda r: ops.read(r, P("/3/0/0"), registry=setup.registry))
        assert result.ok
    finally:
        for device in setup.devices:
            await device.stop(deregister=False)
        await setup.stop_server()
