"""Module downloads go only to the device being delivered to: ``/fw/<token>`` is
served to the device with a pull delivery of it in progress (matched by the
identity it registered with, or by its host for a NoSec device), refused 4.03 to
any other peer and 4.04 once nobody is being delivered it; the grant outlives a
restart of the server mid-pull."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import aiocoap
import pytest
from aiocoap import Code, Message, resource
from aiocoap.optiontypes import BlockOption
from structlog.testing import capture_logs

from ipso_objects import ObjectRegistry
from lwm2m_server.core.downloads import DownloadGrants, host_of, may_fetch
from lwm2m_server.core.registration import ObjectList, Registration
from lwm2m_server.ota.orchestrator import Orchestrator
from lwm2m_server.ota.rollouts import RolloutState, Selector, Strategy
from lwm2m_server.server import LwM2MServer
from lwm2m_server.transport.coap import CoapAdapter
from lwm2m_server.transport.messages import OutgoingResponse
from simulators.client import SimulatedDevice
from simulators.profiles import get_profile
from test_orchestrator import MODEL, Stack

SLOW_MODEL = MODEL.with_name("wide_float.tflite")  # 11 KB: ~700 blocks of 16 B, so a loaded machine cannot finish
# the pull before the test has asked as another peer


def registration(endpoint: str, address: str, identity: str | None = None) -> Registration:
    return Registration("1", endpoint, address, 300, "1.1", "U", False, None, ObjectList(), 0.0, 0.0,
                        identity=identity)


async def client_at(host: str) -> aiocoap.Context:
    """A plain CoAP client sending from ``host`` (aiocoap takes port 0 for 5683: a free port is picked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return await aiocoap.Context.create_server_context(resource.Site(), bind=(host, port))


# -- the rules, without sockets ---------------------------------------------------------------


def test_host_of_reads_every_address_form_the_adapter_writes():
    assert host_of("192.0.2.7:5683") == "192.0.2.7"
    assert host_of("[2001:DB8::1]:5683") == "2001:db8::1"
    assert host_of("coaps://192.0.2.7:5684") == "192.0.2.7"
    assert host_of("oscore://0b@[::1]:40000") == "::1"
    assert host_of("device.example") == "device.example"


def test_a_nosec_device_fetches_from_its_host_on_any_port_and_nobody_else_does():
    device = registration("dev", "192.0.2.7:5683")
    assert may_fetch(device, "192.0.2.7:40001", None)  # a download socket of its own
    assert not may_fetch(device, "192.0.2.8:5683", None)  # another host, even on the same port
    assert not may_fetch(device, "coaps://192.0.2.7:5684", "someone")  # an authenticated other peer


def test_a_device_with_an_identity_must_prove_it_wherever_it_fetches_from():
    psk = registration("dev", "coaps://192.0.2.7:5684", "dev-psk")
    assert may_fetch(psk, "coaps://198.51.100.1:6000", "dev-psk")
    assert not may_fetch(psk, "192.0.2.7:5684", None)  # same host, unprotected
    assert not may_fetch(psk, "coaps://192.0.2.7:5684", "other-psk")
    oscore = registration("dev", "oscore://0b@192.0.2.7:5683", "oscore:0b")
    assert may_fetch(oscore, "oscore://0b@192.0.2.7:6000", "oscore:0b")
    assert not may_fetch(oscore, "oscore://0c@192.0.2.7:5683", "oscore:0c")
    assert not may_fetch(oscore, "192.0.2.7:5683", None)


def test_grants_refuse_4_03_to_others_4_04_when_nobody_is_delivered_and_report_refusals_sparingly():
    book = {"dev": registration("dev", "192.0.2.7:5683")}
    grants = DownloadGrants(report_interval_s=10.0)
    assert grants.check("t1", "192.0.2.7:5683", None, book.get, 0.0).code == "4.04"
    grants.set("dev", {"t1"})
    assert grants.check("t1", "192.0.2.7:7000", None, book.get, 0.0).endpoint == "dev"
    first = grants.check("t1", "203.0.113.9:5683", None, book.get, 1.0)
    assert (first.code, first.report, first.refused) == ("4.03", True, 1) and "not being delivered" in first.reason
    assert not grants.check("t1", "203.0.113.9:5683", None, book.get, 2.0).report  # within the interval
    third = grants.check("t1", "203.0.113.9:5683", None, book.get, 11.5)
    assert (third.report, third.refused) == (True, 2)
    assert grants.check("t2", "192.0.2.7:5683", None, book.get, 12.0).code == "4.04"  # another module
    book["dev"] = registration("dev", "198.51.100.4:5683")  # it moved (an Update from a new address)
    assert grants.check("t1", "192.0.2.7:7000", None, book.get, 13.0).code == "4.03"  # the old host is no one
    assert grants.check("t1", "198.51.100.4:9", None, book.get, 13.0).endpoint == "dev"
    del book["dev"]  # not registered: it fetches nothing
    assert grants.check("t1", "198.51.100.4:9", None, book.get, 14.0).code == "4.03"
    grants.set("dev", ())
    assert grants.check("t1", "198.51.100.4:9", None, book.get, 15.0).code == "4.04"
    assert grants.by_endpoint() == {}


async def test_the_adapter_tells_the_resolver_who_asks_and_answers_its_refusal():
    asked = []

    def resolver(request):
        asked.append(request)
        return OutgoingResponse("4.03", b"not for you") if request.uri_path == ("fw", "t") else None

    async def handler(request):
        return OutgoingResponse("4.04", b"no such resource")

    server = CoapAdapter(handler, host="127.0.0.1", port=0, downloads=resolver)
    await server.start()
    client = await client_at("127.0.0.2")
    try:
        refused = await client.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{server.port}/fw/t")).response
        other = await client.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{server.port}/x")).response
    finally:
        await client.shutdown()
        await server.stop()
    assert (refused.code, refused.payload) == (Code.FORBIDDEN, b"not for you")
    assert (other.code, other.payload) == (Code.NOT_FOUND, b"no such resource")  # not a download: the handler's
    assert asked[0].address.startswith("127.0.0.2:") and asked[0].identity is None


# -- with a server, rollouts and a simulated device --------------------------------------------


@pytest.fixture
async def stack(tmp_path):
    stack = await Stack().start(tmp_path)
    yield stack
    await stack.stop()


def slow_gateway():
    """A gateway fetching 16-byte blocks: its pull takes a few hundred GETs."""
    return replace(get_profile("linux-gateway"), download_block_size=16)


async def get(uri: str, host: str, block: int = 0) -> Message:
    """One GET of ``uri`` from a plain CoAP client at ``host`` (another peer than the device)."""
    client = await client_at(host)
    try:
        request = Message(code=Code.GET, uri=uri)
        request.opt.block2 = BlockOption.BlockwiseTuple(block, False, 0)
        return await client.request(request, handle_blockwise=False).response
    finally:
        await client.shutdown()


async def pulling(stack: Stack, endpoint: str, version: str = "1.0"):
    """Start a pull rollout of ``dense@version`` to ``endpoint``; (rollout, token) once
    the device may fetch the module and has fetched a few blocks."""
    device = next(d for d in stack.devices if d.endpoint == endpoint)
    before, fetched = stack.server.downloads.granted().get(endpoint, frozenset()), device.stats.blocks_fetched
    model = await stack.deployment.add_model(SLOW_MODEL.read_bytes(), "dense", version)
    rollout = await stack.orchestrator.create(model.key, Selector(endpoints=(endpoint,)),
                                              Strategy(canary_fraction=0, mode="pull", retry_backoff_s=0.5),
                                              rollout_id=f"r-{version}")
    async with asyncio.timeout(30):
        while not (stack.server.downloads.granted().get(endpoint, frozenset()) - before) \
                or device.stats.blocks_fetched < fetched + 5:
            await asyncio.sleep(0.01)
    (token,) = stack.server.downloads.granted()[endpoint]
    return rollout, token


async def test_only_the_device_being_delivered_to_fetches_its_module(stack):
    device = await stack.device("gw-1", slow_gateway())
    rollout, token = await pulling(stack, "gw-1")
    uri = f"coap://127.0.0.1:{stack.server.port}/fw/{token}"
    with capture_logs() as logs:
        refused = [await get(uri, "127.0.0.2") for _ in range(3)]  # another host that knows the name
    assert {(r.code, r.payload) for r in refused} == {
        (Code.FORBIDDEN, b"this module is not being delivered to you: fetch it as the device registered "
                         b"(same identity or host)")}
    (line,) = [entry for entry in logs if entry["event"] == "download_refused"]  # once per interval
    assert line["token"] == token and line["address"].startswith("127.0.0.2:") and line["refused"] == 1
    own_host = await get(uri, "127.0.0.1", block=3)  # the device's host, from a new port (as some clients do)
    assert own_host.code == Code.CONTENT and own_host.opt.block2.block_number == 3

    _, devices = await stack.wait(rollout.id, lambda r, ds: ds[0].status.value in ("done", "failed"), 60)
    assert devices[0].status.value == "done", devices[0].reason
    assert device.objects.get("/26241/0/10") == "dense"
    assert stack.server.downloads.granted() == {}
    assert (await get(uri, "127.0.0.1")).code == Code.NOT_FOUND  # delivered: nobody fetches it any more
    assert (await get(uri, "127.0.0.2")).code == Code.NOT_FOUND


async def restarted_while_pulling(stack) -> tuple[SimulatedDevice, object, str]:
    """A pull in progress, the server restarted on its port (the rollouts not loaded yet)."""
    device = await stack.device("gw-1", slow_gateway())
    rollout, token = await pulling(stack, "gw-1")
    port = stack.server.port
    await stack.orchestrator.stop()
    await stack.server.stop()
    stack.config = replace(stack.config, coap=replace(stack.config.coap, port=port))
    stack.server = LwM2MServer(stack.config, ObjectRegistry.default(), stack.store, downloads=stack.deployment.download)
    await stack.server.start()
    return device, rollout, token


async def test_a_restarted_server_serves_a_resumed_pull_before_the_rollouts_are_loaded(stack):
    _, _, token = await restarted_while_pulling(stack)
    assert stack.server.downloads.granted() == {"gw-1": frozenset({token})}  # saved, not waiting for the rollouts
    uri = f"coap://127.0.0.1:{stack.server.port}/fw/{token}"
    assert (await get(uri, "127.0.0.2")).code == Code.FORBIDDEN
    assert (await get(uri, "127.0.0.1", block=2)).code == Code.CONTENT  # the device's host is served at once


async def test_a_pull_resumed_after_a_restart_goes_on_where_it_stood(stack):
    device, rollout, token = await restarted_while_pulling(stack)
    stack.orchestrator = Orchestrator(stack.server, stack.deployment, clock=time.time, interval=0.1)
    await stack.orchestrator.start()

    _, devices = await stack.wait(rollout.id, lambda r, ds: ds[0].status.value in ("done", "failed"), 60)
    assert devices[0].status.value == "done", devices[0].reason
    # the device went on where it stood, never started over (while the server was down its
    # GETs may have failed, and the resumed delivery wrote the same URI again)
    blocks = -(-(await stack.deployment.artifact_by_token(token)).size // 16)
    assert blocks <= device.stats.blocks_fetched <= blocks + 3
    assert stack.server.downloads.granted() == {}


async def test_a_superseded_or_cancelled_delivery_takes_its_module_back(stack):
    await stack.device("gw-1", slow_gateway())
    first, old = await pulling(stack, "gw-1", "1.0")
    second, new = await pulling(stack, "gw-1", "2.0")  # the newer rollout for /9 supersedes the first
    assert new != old and stack.server.downloads.granted() == {"gw-1": frozenset({new})}
    _, devices = await stack.wait(first.id, lambda r, ds: ds[0].status.value == "superseded")
    assert (await get(f"coap://127.0.0.1:{stack.server.port}/fw/{old}", "127.0.0.1")).code == Code.NOT_FOUND

    await stack.orchestrator.set_state(second.id, RolloutState.CANCELLED)
    assert stack.server.downloads.granted() == {}
    assert (await get(f"coap://127.0.0.1:{stack.server.port}/fw/{new}", "127.0.0.1")).code == Code.NOT_FOUND
    assert await stack.store.list_documents("download-grant") == {}
