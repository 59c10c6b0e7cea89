"""Interop with LwM2M/CoAP peers we did not write: Debian's libcoap ``coap-client-notls``
and npm's ``lwm2m-node-lib`` client. ``.ci/run`` installs both; elsewhere the tests
skip with the reason."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from test_server import config_for_tests

P = LwM2MPath.parse
INTEROP = Path(__file__).parent / "interop"
COAP_CLIENT = shutil.which("coap-client-notls")
NODE = shutil.which("node")
NODE_LIB = INTEROP / "node_modules" / "lwm2m-node-lib"

needs_libcoap = pytest.mark.skipif(
    COAP_CLIENT is None, reason="coap-client-notls not installed (apt-get install libcoap3-bin)"
)
needs_node_lib = pytest.mark.skipif(
    NODE is None or not NODE_LIB.is_dir(),
    reason="node or lwm2m-node-lib missing (npm ci --prefix tests/interop)",
)


@pytest.fixture
async def server(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    server = LwM2MServer(config_for_tests(), ObjectRegistry.default(), store)
    await server.start()
    yield server
    await server.stop()
    await store.close()


async def coap_client(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        COAP_CLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def location_of(verbose_output: str) -> str:
    parts = re.findall(r"Location-Path:([^,\] ]+)", verbose_output)
    assert parts, verbose_output
    return "/" + "/".join(parts)


@needs_libcoap
async def test_libcoap_register_update_deregister(server):
    base = f"coap://127.0.0.1:{server.port}"
    _, out, _ = await coap_client(
        "-v", "7", "-m", "post", "-t", "40", "-e", '</>;rt="oma.lwm2m";ct=11542,</1/0>,</3/0>',
        f"{base}/rd?ep=libcoap-1&lt=60&lwm2m=1.1&b=U",
    )
    location = location_of(out)
    registration = server.registration("libcoap-1")
    assert registration.lifetime == 60 and registration.object_list.content_formats == (11542,)
    assert location == registration.location

    await coap_client("-m", "post", "-t", "40", "-e", "</1/0>,</3/0>,</3303/0>", f"{base}{location}?lt=120")
    updated = server.registration("libcoap-1")
    assert updated.lifetime == 120 and updated.supports(3303)

    await coap_client("-m", "delete", f"{base}{location}")
    assert server.registration("libcoap-1") is None


@needs_libcoap
async def test_libcoap_register_in_16_byte_blocks(server):
    links = ",".join(f"</3303/{i}>" for i in range(40))  # ~440 bytes: 28 Block1 pieces
    await coap_client(
        "-m", "post", "-b", "16", "-t", "40", "-e", links,
        f"coap://127.0.0.1:{server.port}/rd?ep=libcoap-blocks",
    )
    registration = server.registration("libcoap-blocks")
    assert registration is not None and registration.instances(3303) == list(range(40))


@needs_libcoap
@pytest.mark.parametrize(
    "query, payload, diagnostic",
    [
        ("ep=bad&lt=abc", "</3/0>", "4.00 lt='abc' is not a positive integer"),
        ("ep=bad&lwm2m=3.0", "</3/0>", "4.00 lwm2m='3.0' is not a supported version"),
        ("lt=60", "</3/0>", "4.00 missing endpoint client name (ep)"),
        ("ep=bad", "</3/0", "4.00 payload is not a valid object list"),
    ],
)
async def test_libcoap_malformed_registrations(server, query, payload, diagnostic):
    base = f"coap://127.0.0.1:{server.port}"
    _, _, err = await coap_client("-m", "post", "-t", "40", "-e", payload, f"{base}/rd?{query}")
    assert diagnostic in err
    assert server.registration("bad") is None
    await coap_client("-m", "post", "-e", "</3/0>", f"{base}/rd?ep=after-bad")
    assert server.registration("after-bad") is not None  # still serving


class NodeClient:
    """The lwm2m-node-lib client process, speaking JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def event(self, timeout: float = 20) -> dict:
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            assert line, "lwm2m-node-lib client exited"
            if line.startswith(b"EVENT "):  # the library logs JSON on stdout too
                event = json.loads(line[6:])
                assert event["event"] != "error", event
                return event

    async def command(self, text: str) -> dict:
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.event()


@pytest.fixture
async def node_client(server):
    process = await asyncio.create_subprocess_exec(
        NODE, str(INTEROP / "lwm2m_node_client.js"), "127.0.0.1", str(server.port), "node-1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=INTEROP,
    )
    client = NodeClient(process)
    try:
        yield client
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@needs_node_lib
async def test_node_lib_registers_and_updates_from_a_new_port(server, node_client):
    registered = await node_client.event()
    registration = server.registration("node-1")
    assert "/" + registered["location"] == registration.location
    assert registration.lwm2m_version == "1.0" and registration.supports(3303)
    await node_client.command("update")
    moved = server.registration("node-1")
    assert moved.id == registration.id and moved.address != registration.address  # new source port
    result = await server.perform("node-1", lambda reg: operations.read(reg, P("/3/0/0"), registry=server.registry))
    assert result.ok and result.node.value == "Telefonica"  # reachable at the newest address
    assert (await node_client.command("deregister"))["event"] == "deregistered"
    assert server.registration("node-1") is None


@needs_node_lib
async def test_node_lib_read_write_execute_observe(server, node_client):
    await node_client.event()
    registry = server.registry

    result = await server.perform("node-1", lambda reg: operations.read(reg, P("/3/0/0"), registry=registry))
    assert result.ok and result.node.value == "Telefonica"

    result = await server.perform(
        "node-1", lambda reg: operations.write(reg, P("/3/0/14"), "+02:00", registry=registry)
    )
    assert result.ok and result.code == "2.04"
    assert await node_client.event() == {"event": "write", "path": "/3/0/14", "value": "+02:00"}

    result = await server.perform("node-1", lambda reg: operations.execute(reg, P("/3/0/4"), registry=registry))
    assert result.ok and (await node_client.event())["path"] == "/3/0/4"

    with server.events.subscribe() as events:
        first = await server.observe("node-1", [P("/3303/0/5700")])
        assert first.ok and first.node.value == 21.5
        await node_client.command("set /3303/0 5700 23.25")
        while True:
            event = await asyncio.wait_for(events.get(), 10)
            if event.kind == "notification" and event.data["result"].node.value == 23.25:
                break
    assert await server.cancel_observation("node-1", [P("/3303/0/5700")])
