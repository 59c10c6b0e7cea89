"""Ending observations on the wire (RFC 7641 §3.6, LwM2M Transport 1.1 Cancel Observation).

The device is mostly tests/peers/fw_client.py, which imports nothing of ours and
counts the notifications it really puts on the wire (``notifications_sent[token]``)
and how each observation ended (``observation_ends[token]``: "GET" or "RST"):

- the server cancels by repeating the request with Observe=1 on the same token,
  and the device notifies no more;
- a notification whose token the server does not know gets a Reset, NON as well as
  CON, also one left over from before a restart;
- an observation the server restores after a restart is adopted by its token and
  goes on, unreset;
- ``tinymlaas observe --timeout S`` ends by its deadline even when the device
  acknowledges an Observe-Composite and never answers, and the device's next
  request is not held up.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from dataclasses import replace

import pytest
from aiocoap import Code

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.api.http import ManagementApi
from lwm2m_server.cli.main import main as cli_main
from lwm2m_server.core import operations as ops
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from peers.fw_client import FirmwarePeer
from simulators.client import SimulatedDevice
from test_server import config_for_tests

P = LwM2MPath.parse
TEMPERATURE = P("/3303/0/5700")
PMAX = 0.3
TOKEN = "t" * 32


class Setup:
    """A server on a port that survives its restarts, and its store."""

    def __init__(self, tmp_path, request_timeout_s: float = 5) -> None:
        self.path = tmp_path / "state.sqlite3"
        self.registry = ObjectRegistry.default()
        self.request_timeout_s = request_timeout_s
        self.port = 0
        self.server: LwM2MServer | None = None
        self.store: SqliteStore | None = None
        self.peers: list = []

    async def start(self) -> LwM2MServer:
        self.store = await SqliteStore.open(self.path)
        config = config_for_tests(awake_window_s=60)
        config = replace(config, coap=replace(config.coap, port=self.port, request_timeout_s=self.request_timeout_s))
        self.server = LwM2MServer(config, self.registry, self.store)
        await self.server.start()
        self.port = self.server.port
        return self.server

    async def stop(self) -> None:
        """Stop without cancelling anything, as a daemon restart does."""
        await self.server.stop()
        await self.store.close()

    async def peer(self, endpoint: str, peer_class=FirmwarePeer, **options) -> FirmwarePeer:
        peer = peer_class("127.0.0.1", self.server.port, endpoint, pmax=PMAX, **options)
        await peer.start()
        self.peers.append(peer)
        await wait_until(lambda: self.server.profile(endpoint) is not None)  # discovery done
        return peer


async def wait_until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def setup(tmp_path):
    setup = Setup(tmp_path)
    await setup.start()
    yield setup
    for peer in setup.peers:
        await peer.stop()
    await setup.stop()


async def notifications(server: LwM2MServer, endpoint: str, count: int) -> None:
    """Wait for ``count`` notifications of ``endpoint`` to reach the server's events."""
    with server.events.subscribe() as events:
        async with asyncio.timeout(10):
            seen = 0
            while seen < count:
                event = await events.get()
                seen += event.kind == "notification" and event.endpoint == endpoint and event.data["result"].ok


def observed_token(server: LwM2MServer, endpoint: str) -> bytes:
    [record] = server.observations(endpoint)
    return record.token


def drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


# -- (a) cancel on the wire ------------------------------------------------------------------


@pytest.mark.parametrize("confirmable", [False, True], ids=["NON", "CON"])
async def test_cancel_sends_get_with_observe_1_and_the_device_stops(setup, confirmable):
    peer = await setup.peer("cancel-1", confirmable_notifications=confirmable)
    server = setup.server
    assert (await server.observe("cancel-1", [TEMPERATURE])).ok
    await notifications(server, "cancel-1", 2)
    token = observed_token(server, "cancel-1")
    assert peer.notifications_sent[token] >= 2  # the stored token is the one on the wire

    assert await server.cancel_observation("cancel-1", [TEMPERATURE])
    await peer.wait_for(lambda: token in peer.observation_ends, timeout=2)
    assert peer.observation_ends[token] == "GET"
    sent = peer.notifications_sent[token]
    with server.events.subscribe() as events:
        await asyncio.sleep(3 * PMAX)
        assert peer.notifications_sent[token] == sent
        assert all(event.kind != "notification" for event in drain(events))
    assert server.observations("cancel-1") == []
    assert await server.store.load_observations() == []
    read = await server.perform("cancel-1", lambda r: ops.read(r, TEMPERATURE, registry=setup.registry))
    assert read.ok  # the device's next request is answered as usual


async def test_observe_composite_is_cancelled_by_fetch_on_the_same_token(setup):
    """The firmware peer has no Observe-Composite; the simulated 1.1 device does. Its
    sensor never changes here, so without a Cancel on the wire its observation would
    stay until a notification got a Reset."""
    device = SimulatedDevice("composite-1", "cortex-m4f", f"coap://127.0.0.1:{setup.server.port}",
                             setup.registry, seed=3, sensor_interval=3600)
    await device.start()
    try:
        await wait_until(lambda: setup.server.profile("composite-1") is not None)
        paths = [P("/3/0/9"), TEMPERATURE]
        assert (await setup.server.observe("composite-1", paths)).ok
        assert device.observation_count == 1
        assert await setup.server.cancel_observation("composite-1", paths)
        await wait_until(lambda: device.observation_count == 0, timeout=2)
        assert device.stats.notifications == 0  # ended by the Cancel, not by a Reset
    finally:
        await device.stop(deregister=False)


@pytest.mark.parametrize("channel", ["dtls", "oscore"])
async def test_cancel_goes_over_the_devices_secure_channel(tmp_path, channel):
    """Over DTLS the Cancel goes over the observation's session; over OSCORE it is
    protected with the device's context and carries the outer token. The simulated
    device answers only such requests; its sensor never changes here."""
    pytest.importorskip("DTLSSocket.dtls", reason="CoAPS needs DTLSSocket (tinydtls)")
    from test_dtls import KEY, Secure
    from test_oscore import Oscore

    async with (Secure if channel == "dtls" else Oscore)(tmp_path) as secure:
        secure.add("sec-1")
        if channel == "dtls":
            device = await secure.device("sec-1", psk=("sec-1", KEY))
        else:
            device = await secure.device("sec-1", oscore=secure.folder("sec-1"))
        assert (await secure.server.observe("sec-1", [TEMPERATURE])).ok
        assert device.observation_count == 1
        assert await secure.server.cancel_observation("sec-1", [TEMPERATURE])
        await wait_until(lambda: device.observation_count == 0, timeout=2)
        assert device.stats.notifications == 0  # ended by the Cancel, not by a Reset
        read = await secure.server.perform("sec-1", lambda r: ops.read(r, TEMPERATURE, registry=secure.server.registry))
        assert read.ok  # the channel still carries the next request


# -- (b) Reset to notifications of unknown tokens --------------------------------------------


@pytest.mark.parametrize("confirmable", [False, True], ids=["NON", "CON"])
async def test_an_orphan_left_by_a_restart_is_reset_and_the_device_stops(setup, confirmable):
    peer = await setup.peer("orphan-1", confirmable_notifications=confirmable)
    assert (await setup.server.observe("orphan-1", [TEMPERATURE])).ok
    token = observed_token(setup.server, "orphan-1")
    await setup.stop()  # a restart that lost the observation (e.g. a crash before it was saved)
    store = await SqliteStore.open(setup.path)
    assert await store.delete_observation(token)
    await store.close()
    await setup.start()

    await peer.wait_for(lambda: token in peer.observation_ends, timeout=5 * PMAX + 2)
    assert peer.observation_ends[token] == "RST"
    sent = peer.notifications_sent[token]
    await asyncio.sleep(3 * PMAX)
    assert peer.notifications_sent[token] == sent
    assert setup.server.observations("orphan-1") == []


@pytest.mark.parametrize("message_type", [0x40, 0x50], ids=["CON", "NON"])
async def test_a_notification_with_a_token_never_issued_gets_a_reset_with_its_mid(setup, message_type):
    token, mid = secrets.token_bytes(8), 0x1234
    # 2.05 Content, Observe=7, Content-Format text/plain, payload "21.5"
    notification = bytes([message_type | len(token), 0x45]) + mid.to_bytes(2, "big") + token \
        + bytes([0x61, 7, 0x60, 0xFF]) + b"21.5"
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_sendto(sock, notification, ("127.0.0.1", setup.server.port))
        async with asyncio.timeout(2):
            answer, _ = await loop.sock_recvfrom(sock, 64)
    assert answer == bytes([0x70, 0x00]) + mid.to_bytes(2, "big")  # empty RST, the notification's MID


# -- (c) an observation restored after a restart goes on ----------------------------------------


async def test_a_restored_observation_is_adopted_by_its_token_and_not_reset(setup):
    peer = await setup.peer("keep-1")
    assert (await setup.server.observe("keep-1", [TEMPERATURE])).ok
    token = observed_token(setup.server, "keep-1")
    await setup.stop()
    await setup.start()
    server = setup.server
    assert observed_token(server, "keep-1") == token  # known before the first datagram is read

    before = peer.notifications_sent[token]
    peer.set_value((3303, 0, 5700), 30.25)
    with server.events.subscribe() as events:
        async with asyncio.timeout(5):
            while True:
                event = await events.get()
                if event.kind == "notification" and event.data["result"].node.value == 30.25:
                    break
    await notifications(server, "keep-1", 2)  # and on, every pmax
    assert peer.notifications_sent[token] >= before + 3
    assert token not in peer.observation_ends  # never reset
    assert [event["event"] for event in peer.events].count("observe") == 1  # never observed anew

    assert await server.cancel_observation("keep-1", [TEMPERATURE])  # an adopted one is cancelled too
    await peer.wait_for(lambda: token in peer.observation_ends, timeout=2)
    assert peer.observation_ends[token] == "GET"


# -- (d) observe --timeout is a deadline ------------------------------------------------------------


class AcksCompositeNeverAnswers(FirmwarePeer):
    """Takes an Observe-Composite (aiocoap acknowledges it after a moment) and never answers it."""

    async def _handle(self, pipe) -> None:
        if pipe.request.code == Code.FETCH and pipe.request.opt.observe is not None:
            await asyncio.Event().wait()
        await super()._handle(pipe)


@pytest.fixture
async def api_setup(tmp_path):
    setup = Setup(tmp_path, request_timeout_s=30)  # the device's silence would cost 30 s
    await setup.start()
    api = ManagementApi(setup.server, TOKEN, host="127.0.0.1", port=0)
    await api.start()
    setup.api_url = f"http://127.0.0.1:{api.port}"
    yield setup
    await api.stop()
    for peer in setup.peers:
        await peer.stop()
    await setup.stop()


def run_cli(setup, *args: str) -> int:
    return cli_main([*args, "--api", setup.api_url, "--token", TOKEN])


async def test_observe_timeout_ends_the_command_by_its_deadline(api_setup, capsys):
    await api_setup.peer("silent-1", AcksCompositeNeverAnswers)
    started = time.monotonic()
    code = await asyncio.to_thread(run_cli, api_setup, "observe", "silent-1", "/3/0/0", "/3303/0/5700",
                                   "--timeout", "1.5")
    elapsed = time.monotonic() - started
    assert code == 1 and "no response within 1.5 s" in capsys.readouterr().err
    assert elapsed < 3.5, f"observe --timeout 1.5 took {elapsed:.1f} s"  # was: the 30 s request timeout, then 1.5 s more

    started = time.monotonic()
    read = await api_setup.server.perform("silent-1", lambda r: ops.read(r, P("/3/0/0"), registry=api_setup.registry))
    assert read.ok and time.monotonic() - started < 2.0  # nothing holds the device's turn


async def test_observe_count_ends_with_a_cancel_on_the_wire(api_setup, capsys):
    peer = await api_setup.peer("count-1")
    started = time.monotonic()
    code = await asyncio.to_thread(run_cli, api_setup, "observe", "count-1", "/3303/0/5700",
                                   "--count", "2", "--timeout", "5")
    assert code == 0 and time.monotonic() - started < 5
    assert capsys.readouterr().out.count("21.5") >= 3  # the first answer and two notifications
    await peer.wait_for(lambda: peer.observation_ends, timeout=2)
    [token] = peer.observation_ends
    assert peer.observation_ends[token] == "GET"
    assert api_setup.server.observations("count-1") == []
