"""Create end to end. Against an independent client: tests/peers/fw_client.py (it imports
nothing of ours) takes a TLV Create on object 3303 and keeps the instance it made. The
server picks TLV because the peer advertises only it (``</>;ct=11542``, LwM2M 1.1); an
empty instance is an empty Object Instance TLV, and without an id the peer picks the
lowest free one. Against the simulated device, every format it takes: an empty instance
once went as the SenML CBOR pack ``80``, which names no instance, and was refused."""

from __future__ import annotations

import asyncio

import pytest

from ipso_objects import LwM2MPath, ObjectInstance, ObjectRegistry, Resource
from ipso_objects.codecs import ContentFormat as CF
from lwm2m_server.core import operations as ops
from lwm2m_server.server import LwM2MServer, Queued
from lwm2m_server.store.sqlite import SqliteStore
from peers.fw_client import FirmwarePeer
from simulators.client import SimulatedDevice
from test_daemon import Daemon, cli
from test_integration import PROFILES
from test_server import config_for_tests

P = LwM2MPath.parse
DEFAULTS = {5700: 0.0, 5701: "Cel"}  # what the peer gives resources a Create leaves out


@pytest.fixture
async def server(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    server = LwM2MServer(config_for_tests(), ObjectRegistry.default(), store)
    await server.start()
    yield server
    await server.stop()
    await store.close()


async def start_peer(port: int, endpoint: str, ready) -> FirmwarePeer:
    peer = FirmwarePeer("127.0.0.1", port, endpoint)
    await peer.start()
    async with asyncio.timeout(15):
        while not ready():
            await asyncio.sleep(0.02)
    return peer


def created(peer: FirmwarePeer) -> list[str]:
    return [event["path"] for event in peer.events if event["event"] == "create"]


async def test_create_names_the_instance_with_and_without_resources(server):
    registry = server.registry
    peer = await start_peer(server.port, "create-peer", lambda: server.profile("create-peer") is not None)
    try:
        async def create(instance):
            request = ops.create(server.registration("create-peer"), P("/3303"), instance, registry=registry)
            assert request.content_format == CF.TLV
            outcome = await server.perform("create-peer", lambda reg: ops.create(
                reg, P("/3303"), instance, registry=registry))
            assert not isinstance(outcome, Queued) and outcome.ok, outcome
            return request.payload, outcome.location

        assert await create(ObjectInstance(7, {})) == (bytes.fromhex("0007"), P("/3303/7"))
        assert peer.values[(3303, 7)] == DEFAULTS and created(peer) == ["/3303/7"]

        # Object Instance TLV 8 (8-bit length: 11) around Resource 5700 = 21.5 and 5701 = "K"
        full = ObjectInstance(8, {5700: Resource(5700, 21.5), 5701: Resource(5701, "K")})
        assert await create(full) == (bytes.fromhex("08 08 0b e4 1644 41ac0000 e1 1645 4b"), P("/3303/8"))
        assert peer.values[(3303, 8)] == {5700: 21.5, 5701: "K"}

        # no id: resource TLVs only; the peer takes the lowest free id and says so
        assert await create({5701: Resource(5701, "F")}) == (bytes.fromhex("e1 1645 46"), P("/3303/1"))
        assert peer.values[(3303, 1)] == {5700: 0.0, 5701: "F"}
        assert await create({}) == (b"", P("/3303/2"))
        assert created(peer) == ["/3303/7", "/3303/8", "/3303/1", "/3303/2"]

        # the Create is not repeated on an existing instance: the peer refuses, we report it
        outcome = await server.perform("create-peer", lambda reg: ops.create(
            reg, P("/3303"), ObjectInstance(7, {}), registry=registry))
        assert not outcome.ok and outcome.code == "4.00"
    finally:
        await peer.stop()


async def test_tinymlaas_create_from_the_command_line(tmp_path):
    """The operator's view: ``tinymlaas create EP /3303 7``, with values, and without an id."""
    daemon = Daemon(tmp_path)
    daemon.start()
    try:
        peer = await start_peer(daemon.coap_port, "cli-peer", lambda: daemon.events("discovered"))
        try:
            async def run(*args: str):
                return await asyncio.to_thread(cli, *args, cwd=tmp_path)

            done = await run("create", "cli-peer", "/3303", "7")
            assert (done.returncode, done.stdout, done.stderr) == (0, "created /3303/7\n", "")
            assert peer.values[(3303, 7)] == DEFAULTS
            done = await run("create", "cli-peer", "/3303", "9", "5700=18.25", "5701=Far")
            assert (done.returncode, done.stdout) == (0, "created /3303/9\n")
            assert peer.values[(3303, 9)] == {5700: 18.25, 5701: "Far"}
            done = await run("create", "cli-peer", "/3303", "5701=K")
            assert (done.returncode, done.stdout) == (0, "created /3303/1\n")
            assert peer.values[(3303, 1)] == {5700: 0.0, 5701: "K"}
            done = await run("create", "cli-peer", "/3303", "x7")
            assert done.returncode != 0 and "instance id 'x7' must be a number" in done.stderr
        finally:
            await peer.stop()
    finally:
        daemon.kill()


@pytest.mark.parametrize("version, fmt", [
    ("1.0", CF.TLV), ("1.0", CF.OMA_JSON), ("1.1", CF.SENML_CBOR), ("1.1", CF.SENML_JSON),
    ("1.1", CF.TLV), ("1.2", CF.LWM2M_CBOR), ("1.2", CF.SENML_CBOR),
])
async def test_an_empty_instance_is_created_in_every_format(server, version, fmt):
    registry, endpoint = server.registry, f"sim-{version}-{fmt}"
    device = SimulatedDevice(endpoint, PROFILES[version], f"coap://127.0.0.1:{server.port}", registry,
                             seed=7, sensor_interval=3600)
    await device.start()
    try:
        async with asyncio.timeout(15):
            while server.profile(endpoint) is None:
                await asyncio.sleep(0.02)
        for instance in (ObjectInstance(7, {}), ObjectInstance(8, {5701: Resource(5701, "K")})):
            outcome = await server.perform(endpoint, lambda reg: ops.create(
                reg, P("/3303"), instance, registry=registry, content_format=fmt))
            assert outcome.ok and outcome.location == P(f"/3303/{instance.id}"), outcome.diagnostic
        assert {7, 8} <= set(device.objects.instances(3303))
        assert device.objects.get("/3303/8/5701") == "K"
    finally:
        await device.stop(deregister=False)
