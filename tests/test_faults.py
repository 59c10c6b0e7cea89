"""Faults: a lossy network, reboots mid-transfer, a daemon SIGKILL mid-rollout, and a
store that cannot be written.

The lossy network is :class:`netem.LossyRelay` between simulated devices and the
server. Devices use the relay's port as their server URI; the server answers, and
sends its own requests to, the relay's per-device upstream address it saw.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Code, Message
from aiocoap.numbers.constants import TransportTuning
from structlog.testing import capture_logs

import simulators.client
from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations as ops
from lwm2m_server.config import DeploymentConfig, ServerConfig
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.ota.orchestrator import Orchestrator
from lwm2m_server.ota.rollouts import Selector, Strategy
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.base import StoreError
from lwm2m_server.store.sqlite import SqliteStore
from netem import Faults, LossyRelay, raise_receive_buffer
from simulators.client import SimulatedDevice
from simulators.fetch import fetch
from simulators.profiles import get_profile
from simulators.transport import is_request
from test_daemon import Daemon
from test_e2e_deploy import Api, wait_for
from test_integration import wait_until
from test_orchestrator import MODEL, Stack


# -- the relay itself -------------------------------------------------------------------------


class _Sink(asyncio.DatagramProtocol):
    """Counts datagrams by source; echoes them back when ``echo``."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received: list[tuple[bytes, tuple[str, int], float]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append((data, addr[:2], time.monotonic()))
        if self.echo:
            self.transport.sendto(data, addr)


async def _endpoint(echo: bool = False) -> tuple[asyncio.DatagramTransport, _Sink]:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(lambda: _Sink(echo), local_addr=("127.0.0.1", 0))
    # a burst of 400 datagrams is ~400 KB of kernel buffer (truesize): more than the
    # default SO_RCVBUF when the loaded test process reads late
    raise_receive_buffer(transport)
    return transport, sink


async def _settle(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def _send_paced(transport, count: int, target, *, batch: int = 50, tag: bytes = b"") -> None:
    """Send ``count`` numbered datagrams, yielding between batches so no socket buffer overflows."""
    for start in range(0, count, batch):
        for i in range(start, min(count, start + batch)):
            transport.sendto(tag + i.to_bytes(4, "big"), target)
        await asyncio.sleep(0.005)


async def test_relay_loss_and_duplicate_rates_within_tolerance():
    server, sink = await _endpoint()
    client, _ = await _endpoint()
    relay = await LossyRelay(server.get_extra_info("sockname"), loss=0.1, duplicate=0.05, seed=11).start()
    try:
        n = 5000
        await _send_paced(client, n, relay.address)
        up = relay.stats.up
        await _settle(lambda: up.received == n and len(sink.received) == up.sent)
        # 3 sigma of a binomial(5000, 0.1) is 0.0127; of (4500, 0.05) 0.0097
        assert abs(up.loss_rate - 0.1) < 0.013, up
        assert abs(up.duplicated / (n - up.dropped) - 0.05) < 0.01, up
        assert up.sent == n - up.dropped + up.duplicated == len(sink.received)
        assert relay.stats.down.received == 0
    finally:
        relay.close()
        client.close()
        server.close()


async def test_relay_gives_each_client_its_own_upstream_and_routes_answers_back():
    server, echo = await _endpoint(echo=True)
    relay = await LossyRelay(server.get_extra_info("sockname"), seed=1).start()
    clients = [await _endpoint() for _ in range(3)]
    try:
        for index, (transport, _) in enumerate(clients):
            for i in range(20):
                transport.sendto(bytes([index, i]), relay.address)
        await _settle(lambda: all(len(sink.received) == 20 for _, sink in clients))
        # the server saw one distinct peer per client: the relay's upstream sockets
        peers = {addr for _, addr, _ in echo.received}
        assert len(peers) == 3 and relay.port not in {port for _, port in peers}
        mapping = relay.clients
        assert sorted(mapping.values()) == sorted(peers)
        for index, (transport, sink) in enumerate(clients):
            # every echo came back to the client that sent it, from the relay's port
            assert {data[0] for data, _, _ in sink.received} == {index}
            assert {addr for _, addr, _ in sink.received} == {relay.address}
            assert mapping[transport.get_extra_info("sockname")[:2]] in peers
    finally:
        relay.close()
        for transport, _ in clients:
            transport.close()
        server.close()


async def test_relay_faults_both_directions():
    """Loss on the way back too: an echo survives both legs with (1 - loss)²."""
    server, echo = await _endpoint(echo=True)
    client, sink = await _endpoint()
    relay = await LossyRelay(server.get_extra_info("sockname"), loss=0.2, seed=5).start()
    try:
        n = 3000
        await _send_paced(client, n, relay.address)
        stats = relay.stats
        await _settle(lambda: stats.up.received == n and stats.down.received == stats.up.sent
                      and len(sink.received) == stats.down.sent)
        assert len(echo.received) == stats.up.sent
        assert abs(stats.up.loss_rate - 0.2) < 0.025 and abs(stats.down.loss_rate - 0.2) < 0.03
        assert abs(len(sink.received) / n - 0.64) < 0.04
        assert abs(stats.loss_rate - 0.2) < 0.02
    finally:
        relay.close()
        client.close()
        server.close()


async def test_relay_delays_and_reorders():
    server, sink = await _endpoint()
    client, _ = await _endpoint()
    relay = await LossyRelay(server.get_extra_info("sockname"), delay=(0.01, 0.03), reorder=0.2,
                             seed=3).start()
    try:
        n = 400
        sent_at = {}
        for i in range(n):
            sent_at[i] = time.monotonic()
            client.sendto(i.to_bytes(4, "big"), relay.address)
            if i % 50 == 49:
                await asyncio.sleep(0.002)
        await _settle(lambda: len(sink.received) == n)  # no loss: everything arrives
        order = [int.from_bytes(data, "big") for data, _, _ in sink.received]
        assert sorted(order) == list(range(n))
        inversions = sum(1 for a, b in zip(order, order[1:]) if a > b)
        assert inversions > 0.1 * n, inversions  # explicit holds plus overlapping random delays
        assert 0.1 * n < relay.stats.up.reordered < 0.3 * n
        waits = [at - sent_at[int.from_bytes(data, "big")] for data, _, at in sink.received]
        assert min(waits) >= 0.009 and relay.stats.up.delayed == n
    finally:
        relay.close()
        client.close()
        server.close()


async def test_relay_rates_change_while_running_and_drop_predicate():
    server, sink = await _endpoint()
    client, _ = await _endpoint()
    relay = await LossyRelay(server.get_extra_info("sockname"), seed=2).start()
    try:
        client.sendto(b"a", relay.address)
        await _settle(lambda: len(sink.received) == 1)
        relay.up = Faults(loss=1.0)
        client.sendto(b"b", relay.address)
        await _settle(lambda: relay.stats.up.received == 2)
        relay.up = Faults()
        relay.drop = lambda direction, who, data: data == b"c"
        client.sendto(b"c", relay.address)
        client.sendto(b"d", relay.address)
        await _settle(lambda: relay.stats.up.received == 4 and len(sink.received) == 2)
        assert [data for data, _, _ in sink.received] == [b"a", b"d"]
        assert relay.stats.up.dropped == 2
        with pytest.raises(ValueError):
            Faults(loss=1.5)
    finally:
        relay.close()
        client.close()
        server.close()


# -- helpers for the server tests ----------------------------------------------------------------


class CoapTap:
    """Relay tap: counts confirmable messages seen again with the same Message ID
    (CoAP retransmissions, RFC 7252 §4.2) per direction."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, tuple[str, int], int]] = set()
        self.retransmissions = {"up": 0, "down": 0}
        self.confirmable = {"up": 0, "down": 0}

    def __call__(self, direction, client, data: bytes) -> None:
        if len(data) < 4 or data[0] >> 6 != 1 or (data[0] >> 4) & 3 != 0:  # version 1, CON
            return
        key = (direction, client, int.from_bytes(data[2:4], "big"))
        if key in self.seen:
            self.retransmissions[direction] += 1
        else:
            self.seen.add(key)
            self.confirmable[direction] += 1


def report(name: str, **figures) -> None:
    """One line of measured figures, shown with ``pytest -s`` (and on failure)."""
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in figures.items()))


# -- a fleet over a lossy network -------------------------------------------------------------------

LOSS = 0.1
ACK_TIMEOUT = 0.5


@pytest.fixture
def quick_retransmission(monkeypatch):
    """aiocoap's ACK_TIMEOUT at 0.5 s instead of 2 s (for the in-process server and
    devices): the same retransmission logic, exponential backoff and MAX_RETRANSMIT 4,
    four times faster, so a lost datagram costs 0.5–0.75 s instead of 2–3 s. Loopback
    round trips through the relay stay below 0.15 s."""
    monkeypatch.setattr(TransportTuning, "ACK_TIMEOUT", ACK_TIMEOUT)


RETRY = (3, 1)
"""Communication Retry Count and Timer of devices behind a lossy relay: as a real client,
a Register or Update whose exchange ran out of CoAP retransmissions (p ≈ 0.19^5 at 10 %
loss each way) is sent again, here after 1 s."""

PROFILES = ("cortex-m0plus", "cortex-m4f", "linux-gateway")
PREFIX = {"cortex-m0plus": "m0p", "cortex-m4f": "m4f", "linux-gateway": "gw"}


def lossy_relay(port: int, seed: int, **overrides) -> tuple[LossyRelay, CoapTap]:
    tap = CoapTap()
    settings = dict(loss=LOSS, duplicate=0.02, delay=(0.0, 0.05), reorder=0.05, seed=seed, tap=tap)
    settings.update(overrides)
    return LossyRelay(("127.0.0.1", port), **settings), tap


async def test_twenty_devices_register_and_update_through_ten_percent_loss(tmp_path, quick_retransmission):
    registry = ObjectRegistry.default()
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    base = ServerConfig()
    config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=60))
    server = LwM2MServer(config, registry, store)
    await server.start()
    relay, tap = lossy_relay(server.port, seed=20)
    await relay.start()
    devices = [
        SimulatedDevice(f"{PREFIX[profile]}-{i:02d}", profile, f"coap://127.0.0.1:{relay.port}", registry,
                        seed=i, sensor_interval=3600, request_timeout=90, communication_retry=RETRY)
        for i in range(20) for profile in [PROFILES[i % 3]]
    ]
    try:
        started = time.monotonic()
        await asyncio.gather(*(device.start() for device in devices))
        registered_in = time.monotonic() - started
        assert sorted(r.endpoint for r in server.registrations()) == sorted(d.endpoint for d in devices)
        for device in devices:  # the server knows each device by the relay's upstream socket for it
            host, port = relay.upstream_address(device.address)
            assert server.registration(device.endpoint).address == f"{host}:{port}"

        before = {d.endpoint: server.registration(d.endpoint).updated_at for d in devices}
        started = time.monotonic()
        await asyncio.gather(*(device.update() for device in devices))
        updated_in = time.monotonic() - started
        assert all(d.stats.updates == 1 for d in devices)
        assert all(server.registration(ep).updated_at > at for ep, at in before.items())

        await wait_until(lambda: all(server.profile(d.endpoint) is not None for d in devices), 120)
        discovered_in = time.monotonic() - started
        problems = sum(len(server.profile(d.endpoint).problems) for d in devices)
        stats = relay.stats
        report("fleet-20", registered_s=f"{registered_in:.1f}", update_round_s=f"{updated_in:.1f}",
               discovered_s=f"{discovered_in:.1f}", loss_up=f"{stats.up.loss_rate:.3f}",
               loss_down=f"{stats.down.loss_rate:.3f}", datagrams=stats.received,
               retransmissions=tap.retransmissions, confirmable=tap.confirmable,
               duplicated=stats.up.duplicated + stats.down.duplicated,
               reordered=stats.up.reordered + stats.down.reordered, profile_problems=problems)
        assert stats.up.dropped > 0 and stats.down.dropped > 0
        assert tap.retransmissions["up"] > 0 and tap.retransmissions["down"] > 0
    finally:
        await asyncio.gather(*(device.stop(deregister=False) for device in devices))
        relay.close()
        await server.stop()
        await store.close()


# -- rollouts over a lossy network, and devices rebooting mid-transfer -------------------------------


class FaultStack(Stack):
    """The orchestrator test's stack, with the devices behind a relay (when given one)."""

    async def start(self, tmp_path: Path, *, request_timeout_s: float = 30, relay: LossyRelay | None = None,
                    poll_interval_s: float = 0.2) -> FaultStack:
        self.store = await SqliteStore.open(tmp_path / "state.sqlite3")
        base = ServerConfig()
        # pull URIs name the relay, as a port forward in front of the server would be configured
        public = {"public_host": "127.0.0.1", "public_port": (await relay.start()).port} if relay is not None else {}
        deployment_config = DeploymentConfig(data_dir=tmp_path / "data", signing_key=tmp_path / "keys" / "k.pem",
                                             poll_interval_s=poll_interval_s, phase_timeout_s=60, **public)
        config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=request_timeout_s),
                         deployment=deployment_config)
        self.deployment = Deployment(deployment_config, self.store, clock=time.time)
        await self.deployment.start()
        self.server = LwM2MServer(config, ObjectRegistry.default(), self.store, downloads=self.deployment.download)
        await self.server.start()
        self.orchestrator = Orchestrator(self.server, self.deployment, clock=time.time, interval=0.1)
        await self.orchestrator.start()
        self.anchor = tmp_path / "keys" / "k.pub.pem"
        self.devices = []
        self.relay = relay
        self.failures: list[tuple[str, str]] = []
        """(endpoint, reason) of every delivery attempt that failed."""
        failed = self.orchestrator._failed

        async def count_failure(rollout_id, endpoint, reason, job=None):
            self.failures.append((endpoint, reason))
            await failed(rollout_id, endpoint, reason, job)

        self.orchestrator._failed = count_failure
        if relay is not None:
            relay.target = ("127.0.0.1", self.server.port)
        return self

    async def device(self, endpoint: str, profile, **options) -> SimulatedDevice:
        port = self.relay.port if self.relay is not None else self.server.port
        if self.relay is not None:
            options.setdefault("communication_retry", RETRY)
        device = SimulatedDevice(endpoint, profile, f"coap://127.0.0.1:{port}", seed=1, sensor_interval=3600,
                                 trust_anchors=[self.anchor], **options)
        await device.start()
        self.devices.append(device)
        await wait_until(lambda: self.server.profile(endpoint) is not None, 60)
        return device

    async def rollout(self, devices, mode: str = "auto", timeout: float = 60):
        model = await self.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
        strategy = Strategy(max_in_flight=len(devices), canary_fraction=0, retry_backoff_s=0.5, max_attempts=5,
                            mode=mode, failure_threshold=1.0)
        started = time.monotonic()
        rollout = await self.orchestrator.create(model.key, Selector(), strategy)
        _, records = await self.wait(rollout.id, lambda r, ds: len(ds) == len(devices) and all(
            d.status.value in ("done", "failed", "incompatible", "rolled_back") for d in ds), timeout)
        return {d.endpoint: d for d in records}, time.monotonic() - started

    async def stop(self) -> None:
        await super().stop()
        if self.relay is not None:
            self.relay.close()


def small_block_gateway():
    """A gateway fetching 128-byte blocks: a short download still takes a dozen blocks."""
    return replace(get_profile("linux-gateway"), download_block_size=128)


def assert_running_dense(devices, records) -> None:
    for device in devices:
        record = records[device.endpoint]
        assert record.status.value == "done", (device.endpoint, record.status, record.reason)
        assert device.objects.get("/26241/0/10") == "dense" and device.objects.get("/26241/0/11") == "1.0"


async def test_rollout_push_and_pull_completes_through_ten_percent_loss(tmp_path, quick_retransmission):
    relay, tap = lossy_relay(0, seed=7)
    stack = await FaultStack().start(tmp_path, relay=relay)
    try:
        devices = [await stack.device(ep, profile) for ep, profile in (
            ("m4f-0", "cortex-m4f"), ("m4f-1", "cortex-m4f"), ("gw-0", small_block_gateway()),
            ("gw-1", small_block_gateway()), ("m0p-0", "cortex-m0plus"))]
        records, took = await stack.rollout(devices)
        assert_running_dense(devices, records)
        modes = {ep: r.job["mode"] for ep, r in records.items()}
        assert {"push", "pull"} <= set(modes.values())
        pulled = [d for d in devices if modes[d.endpoint] == "pull"]
        assert all(d.stats.blocks_fetched for d in pulled)  # through the relay: the URI names its port
        assert relay.stats.up.received > sum(d.stats.blocks_fetched for d in pulled)
        report("rollout-loss", rollout_s=f"{took:.1f}", modes=modes,
               failed_attempts=stack.failures,
               loss_up=f"{relay.stats.up.loss_rate:.3f}", loss_down=f"{relay.stats.down.loss_rate:.3f}",
               datagrams=relay.stats.received, retransmissions=tap.retransmissions,
               blocks_pulled=sum(d.stats.blocks_fetched for d in pulled))
        assert relay.stats.up.dropped and relay.stats.down.dropped
    finally:
        await stack.stop()


async def test_reboot_mid_pull_resumes_the_download(tmp_path, monkeypatch):
    starts: list[tuple[str, int]] = []  # (URI, block the fetch started at)

    async def recording_fetch(context, download, **options):
        starts.append((download.uri, len(download.data) // download.block_size))
        return await fetch(context, download, **options)

    monkeypatch.setattr(simulators.client, "fetch", recording_fetch)
    stack = await FaultStack().start(tmp_path)
    try:
        device = await stack.device("gw-crash", small_block_gateway())
        device.crash_after_blocks = 5  # power cut after the fifth block
        records, took = await stack.rollout([device], mode="pull")
        assert_running_dense([device], records)
        assert device.stats.reboots == 1 and device.stats.registrations == 2
        assert [block for _, block in starts] == [0, 5], starts  # resumed at block 5, not from 0
        blocks = device.stats.blocks_fetched
        size = (await stack.deployment.artifact_by_token(records["gw-crash"].job["artifact"])).size
        assert blocks == -(-size // 128)  # every block fetched once
        assert stack.failures == []  # the job waited through the reboot: no delivery attempt failed
        report("reboot-pull", rollout_s=f"{took:.1f}", fetch_starts=[b for _, b in starts], blocks=blocks)
    finally:
        await stack.stop()


async def test_push_interrupted_by_a_reboot_restarts_cleanly(tmp_path):
    state = {"rebooted": None, "device": None}

    def power_cut(direction, client, data) -> bool:
        """Drop the second Block1 block of the package write and reboot the device."""
        if direction != "down" or state["rebooted"] is not None or not is_request(data):
            return False
        message = Message.decode(data)
        if message.opt.uri_path[:1] == ("9",) and message.opt.block1 and message.opt.block1.block_number == 1:
            state["rebooted"] = asyncio.get_running_loop().create_task(state["device"].reboot())
            return True
        return False

    relay = LossyRelay(("127.0.0.1", 0), seed=1, drop=power_cut)
    stack = await FaultStack().start(tmp_path, relay=relay, request_timeout_s=5)
    try:
        device = state["device"] = await stack.device("m4f-cut", "cortex-m4f")
        records, took = await stack.rollout([device], mode="push")
        assert state["rebooted"] is not None and state["rebooted"].done()
        assert device.stats.reboots == 1
        assert_running_dense([device], records)
        # the interrupted push failed (4.08 from the rebooted device), the retry pushed it all again
        assert [ep for ep, _ in stack.failures] == ["m4f-cut"] and "4.08" in stack.failures[0][1]
        assert records["m4f-cut"].job["mode"] == "push"
        report("reboot-push", rollout_s=f"{took:.1f}", failures=stack.failures,
               transitions=device.objects.updates.transitions)
    finally:
        await stack.stop()


# -- the daemon killed during pull downloads -------------------------------------------------------------


def tiny_block_gateway():
    """A gateway fetching 16-byte blocks: a pull takes a few hundred exchanges, long
    enough to kill the daemon while several are under way."""
    return replace(get_profile("linux-gateway"), download_block_size=16)


async def persisted_state(path: Path) -> tuple[dict[str, str], dict[str, dict], dict[str, dict]]:
    """Registrations (endpoint → id), rollout-device records and modules, read from the
    daemon's SQLite file while the daemon is dead."""
    store = await SqliteStore.open(path)
    try:
        registrations = {r.endpoint: r.id for r in await store.load_registrations()}
        records = {d["endpoint"]: d for d in (await store.list_documents("rollout-device")).values()}
        modules = await store.list_documents("module")
    finally:
        await store.close()
    return registrations, records, modules


async def test_daemon_sigkill_during_pull_downloads_loses_no_state(tmp_path):
    daemon = Daemon(tmp_path)
    config = daemon.folder / "server.yaml"
    config.write_text(config.read_text() + "deployment: {poll_interval_s: 0.2, phase_timeout_s: 60}\n")
    devices: dict[str, SimulatedDevice] = {}
    try:
        await asyncio.to_thread(daemon.start)
        api = Api(daemon)
        anchor = daemon.folder / "data" / "keys" / "signing-es256.pub.pem"
        for endpoint in (f"gw-{i}" for i in range(6)):
            device = SimulatedDevice(endpoint, tiny_block_gateway(), f"coap://127.0.0.1:{daemon.coap_port}", seed=1,
                                     sensor_interval=3600, trust_anchors=[anchor])
            await device.start()
            devices[endpoint] = device

        async def all_discovered():
            listed = [await api.call("GET", f"/devices/{ep}") for ep in devices]
            return all(d["profile"] and d["profile"]["tinyml"] for d in listed)

        await wait_for(all_discovered, 30, "discovery")
        await api.call("POST", "/models?name=dense&version=1.0", raw=MODEL.read_bytes())
        rollout = await api.call("POST", "/rollouts", {"model": "dense@1.0", "strategy": {
            "max_in_flight": 6, "canary_fraction": 0, "retry_backoff_s": 0.5, "max_attempts": 5, "mode": "auto"}})
        gateways = list(devices.values())

        def downloading() -> list[str]:
            return [d.endpoint for d in gateways if d.objects.updates.fetches and d.stats.blocks_fetched]

        async with asyncio.timeout(30):  # kill when three downloads are well under way
            while len([ep for ep in downloading() if devices[ep].stats.blocks_fetched >= 10]) < 3:
                await asyncio.sleep(0.002)
        assert daemon.kill(signal.SIGKILL) == -signal.SIGKILL
        killed_during = downloading()
        blocks_at_kill = {d.endpoint: d.stats.blocks_fetched for d in gateways}
        assert len([ep for ep in killed_during if blocks_at_kill[ep] >= 10]) >= 3, blocks_at_kill

        registrations, records, modules = await persisted_state(daemon.folder / "data" / "tinymlaas.sqlite3")
        assert sorted(registrations) == sorted(devices)  # every registration is on disk
        assert sorted(records) == sorted(devices)  # and every rollout-device record
        for endpoint in killed_during:  # with the job of the download under way
            job = records[endpoint]["job"]
            assert job and job["mode"] == "pull" and job["phase"] == "await_download", records[endpoint]

        started = time.monotonic()
        await asyncio.to_thread(daemon.start)
        listed = await api.call("GET", "/devices")
        assert sorted(d["endpoint"] for d in listed) == sorted(devices)
        after = await api.call("GET", f"/rollouts/{rollout['id']}")
        assert sorted(d["endpoint"] for d in after["devices"]) == sorted(devices)

        async def finished():
            state = await api.call("GET", f"/rollouts/{rollout['id']}")
            summary = state["summary"]
            return summary["finished"] == summary["total"] == len(devices) and state

        final = await wait_for(finished, 60, "rollout end")
        finished_in = time.monotonic() - started
        assert final["summary"]["counts"] == {"done": len(devices)}, final["devices"]
        for endpoint, device in devices.items():
            assert device.objects.get("/26241/0/10") == "dense", endpoint
        # the downloads went on where they stood: none started over (a block or two may be
        # fetched again when its answer was lost in the kill)
        (gateway_module,) = [m for m in modules.values() if m["plugin"] == "litert"]
        blocks = -(-gateway_module["size"] // 16)
        for device in gateways:
            assert blocks <= device.stats.blocks_fetched <= blocks + 2, (device.endpoint, device.stats.blocks_fetched)
        # the devices' registrations outlived the kill: their Updates are accepted, nobody re-registers
        await asyncio.gather(*(device.update() for device in devices.values()))
        assert {d.stats.registrations for d in devices.values()} == {1}
        (restarted,) = daemon.events("orchestrator_started")[-1:]
        report("daemon-sigkill", downloading_at_kill=killed_during, resumed_devices=restarted["resumed_devices"],
               persisted_status={ep: r["status"] for ep, r in records.items()}, blocks_at_kill=blocks_at_kill,
               blocks_per_download=blocks, restart_to_done_s=f"{finished_in:.1f}",
               attempts={d["endpoint"]: d["attempts"] for d in final["devices"]})
    finally:
        for device in devices.values():
            await device.stop(deregister=False)
        if daemon.process and daemon.process.poll() is None:
            daemon.kill()


# -- a store that cannot be written ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["parent is a file", "database is a folder", "not a database"])
def test_unwritable_store_path_exits_1_with_one_line_naming_it(tmp_path, case):
    """Read-only places cannot be made as root (permissions do not apply); these paths
    fail the same way, and the daemon must say so, once, without touching the file."""
    garbage = b"not a database, and it must stay that way\n" * 40
    if case == "parent is a file":
        (tmp_path / "blocker").write_text("a file where a folder should be\n")
        path = "blocker/state.sqlite3"
    elif case == "database is a folder":
        (tmp_path / "state.sqlite3").mkdir()
        path = "state.sqlite3"
    else:
        (tmp_path / "state.sqlite3").write_bytes(garbage)
        path = "state.sqlite3"
    (tmp_path / "server.yaml").write_text(
        'coap: {host: "127.0.0.1", port: 0, secure_port: 0}\napi: {port: 0}\nlogging: {format: json}\n'
        f"store: {{path: {path}}}\n")
    result = subprocess.run([sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON lines are logs
    assert len(lines) == 1 and lines[0].startswith("tinymlaas: ") and path in lines[0], result.stderr
    assert {"parent is a file": "cannot create its folder", "database is a folder": "cannot open the file",
            "not a database": "not a SQLite database"}[case] in lines[0]
    assert '"event": "ready"' not in result.stdout + result.stderr
    if case == "not a database":
        assert (tmp_path / "state.sqlite3").read_bytes() == garbage
        assert not (tmp_path / "state.sqlite3-wal").exists()


async def fill_store(store: SqliteStore) -> str:
    """Cap the database at its current size (SQLite's ``max_page_count``: a full disk as
    SQLite sees it) and write until a write fails; returns the error."""
    def cap(connection):
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        return connection.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0]

    await store._run("cap size", cap)
    for i in range(1000):
        try:
            await store.put_document("filler", f"f{i}", {"bytes": "x" * 900}, 0.0)
        except StoreError as error:
            return str(error)
    raise AssertionError("the capped database never filled up")


async def uncap_store(store: SqliteStore) -> None:
    await store._run("uncap size", lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchone())


class _FullDiskConnection:
    """The store's connection on a disk with no space at all: every transaction's
    COMMIT fails with SQLITE_FULL (its WAL frames cannot be written) and is rolled
    back; reads work. :func:`fill_store` caps the database's pages, which fails only
    the writes that need new pages: a De-register or a small Update still fits."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def execute(self, sql: str, *args):
        if sql.strip().upper() == "COMMIT":
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorname = "SQLITE_FULL"
            raise error
        return self.connection.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.connection, name)


def disk_full(store: SqliteStore) -> None:
    store._connection = _FullDiskConnection(store._connection)  # read on the store's thread at each call


def disk_freed(store: SqliteStore) -> None:
    store._connection = store._connection.connection


class StorageSetup:
    async def start(self, tmp_path: Path, **registration) -> StorageSetup:
        self.registry = ObjectRegistry.default()
        self.store = await SqliteStore.open(tmp_path / "state.sqlite3")
        base = ServerConfig()
        config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=5),
                         registration=replace(base.registration, **registration))
        self.config = config
        self.server = LwM2MServer(config, self.registry, self.store)
        await self.server.start()
        self.devices: list[SimulatedDevice] = []
        return self

    async def device(self, endpoint: str, *, start: bool = True) -> SimulatedDevice:
        device = SimulatedDevice(endpoint, "cortex-m4f", f"coap://127.0.0.1:{self.server.port}", self.registry,
                                 seed=1, sensor_interval=3600, request_timeout=10)
        self.devices.append(device)
        if start:
            await device.start()
            await wait_until(lambda: self.server.profile(endpoint) is not None)
        return device

    async def stop(self) -> None:
        for device in self.devices:
            await device.stop(deregister=False)
        await self.server.stop()
        await self.store.close()


async def big_register(peer: aiocoap.Context, port: int, endpoint: str) -> Message:
    """A Register whose row needs new pages: 500 sensor instances, more than a 4 KiB page."""
    links = ",".join(["</1/0>", "</3/0>", *(f"</3303/{i}>" for i in range(500))]).encode()
    request = Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/rd?ep={endpoint}&lt=300", payload=links,
                      content_format=40)
    return await peer.request(request).response


async def test_full_store_answers_5_03_keeps_earlier_data_and_recovers(tmp_path):
    setup = await StorageSetup().start(tmp_path)
    try:
        old = [await setup.device(f"m4f-old-{i}") for i in range(2)]
        error = await fill_store(setup.store)
        assert "full" in error and "SQLITE_FULL" in error and str(setup.store.path) in error

        peer = await aiocoap.Context.create_client_context()
        try:
            refused = await big_register(peer, setup.server.port, "big-new")
            assert (refused.code.dotted, refused.payload) == ("5.03", b"server storage unavailable")
            # what needs no new space keeps working: reads of registered devices, their Updates
            result = await setup.server.perform("m4f-old-0", lambda r: ops.read(r, LwM2MPath.parse("/3/0/0"),
                                                                                 registry=setup.registry))
            assert result.ok and result.node.value == old[0].objects.get("/3/0/0")
            await old[1].update()
            # earlier data is intact on disk
            stored = {r.endpoint for r in await setup.store.load_registrations()}
            assert stored == {"m4f-old-0", "m4f-old-1"}
            check = await setup.store._run("check", lambda c: c.execute("PRAGMA integrity_check").fetchone()[0])
            assert check == "ok"
            assert set(await setup.store.list_documents("profile")) == stored

            await uncap_store(setup.store)  # space again: the next Register works
            accepted = await big_register(peer, setup.server.port, "big-new")
            assert accepted.code.dotted == "2.01"
            assert {r.endpoint for r in await setup.store.load_registrations()} == stored | {"big-new"}
        finally:
            await peer.shutdown()
    finally:
        await setup.stop()


async def test_register_refused_by_a_full_store_is_not_listed(tmp_path):
    setup = await StorageSetup().start(tmp_path)
    try:
        await fill_store(setup.store)
        peer = await aiocoap.Context.create_client_context()
        try:
            response = await big_register(peer, setup.server.port, "refused")
            assert (response.code.dotted, response.payload) == ("5.03", b"server storage unavailable")
        finally:
            await peer.shutdown()
        assert setup.server.registration("refused") is None
    finally:
        await setup.stop()


async def coap(peer: aiocoap.Context, port: int, method: Code, path: str, payload: bytes = b"") -> Message:
    message = Message(code=method, uri=f"coap://127.0.0.1:{port}{path}", payload=payload)
    if payload:
        message.opt.content_format = 40
    return await peer.request(message).response


async def stored_registrations(store: SqliteStore) -> dict:
    return {r.endpoint: r for r in await store.load_registrations()}


@pytest.mark.parametrize("noticed_by", ["periodic flush", "next write"])
async def test_update_and_deregister_work_on_a_full_disk_and_are_stored_once_space_returns(tmp_path, noticed_by):
    """Devices do not fall off a server whose disk is full: their Updates and
    De-registers succeed from memory and reach the store when it takes writes again;
    a new device's Register is refused with 5.03 (it must be stored first)."""
    setup = await StorageSetup().start(tmp_path, expiry_check_interval_s=0.1 if noticed_by == "periodic flush"
                                       else 3600)
    first = await aiocoap.Context.create_client_context()
    second = await aiocoap.Context.create_client_context()  # the keeper's new source address
    try:
        port, locations = setup.server.port, {}
        for endpoint in ("keeper", "leaver", "bystander"):
            response = await coap(first, port, Code.POST, f"/rd?ep={endpoint}&lt=300", b"</3/0>,</3303/0>")
            assert response.code.dotted == "2.01"
            locations[endpoint] = "/" + "/".join(response.opt.location_path)
        before = await stored_registrations(setup.store)
        assert before["keeper"].lifetime == 300

        disk_full(setup.store)
        with capture_logs() as logs:
            updated = await coap(second, port, Code.POST, f"{locations['keeper']}?lt=900")
            left = await coap(first, port, Code.DELETE, locations["leaver"])
            refused = await coap(first, port, Code.POST, "/rd?ep=newcomer&lt=300", b"</3/0>")
            again = await coap(second, port, Code.POST, f"{locations['keeper']}?lt=901")
        assert (updated.code.dotted, left.code.dotted, again.code.dotted) == ("2.04", "2.02", "2.04")
        assert (refused.code.dotted, refused.payload) == ("5.03", b"server storage unavailable")
        keeper = setup.server.registration("keeper")
        assert keeper.lifetime == 901 and keeper.address != before["keeper"].address
        assert setup.server.registration("leaver") is None and setup.server.registration("newcomer") is None
        assert await stored_registrations(setup.store) == before  # nothing written, nothing stored lost
        deferred = [e for e in logs if e["event"] == "registration_writes_deferred"]
        assert len(deferred) == 1 and "SQLITE_FULL" in deferred[0]["error"]  # once per outage

        assert setup.server._writes.pending == 2  # the keeper's newest version, the leaver's delete
        disk_freed(setup.store)
        if noticed_by == "next write":
            assert (await coap(first, port, Code.POST, locations["bystander"])).code.dotted == "2.04"
        async with asyncio.timeout(10):
            while setup.server._writes.pending:
                await asyncio.sleep(0.05)
        stored = await stored_registrations(setup.store)
        assert set(stored) == {"keeper", "bystander"}
        assert (stored["keeper"].lifetime, stored["keeper"].address) == (901, keeper.address)
    finally:
        await first.shutdown()
        await second.shutdown()
        await setup.stop()

    store = await SqliteStore.open(tmp_path / "state.sqlite3")  # a restart on the same file
    server = LwM2MServer(setup.config, setup.registry, store)
    await server.start()
    try:
        assert sorted(r.endpoint for r in server.registrations()) == ["bystander", "keeper"]
        restored = server.registration("keeper")
        assert (restored.id, restored.lifetime, restored.address) == (keeper.id, 901, keeper.address)
    finally:
        await server.stop()
        await store.close()


async def test_post_models_on_a_full_disk_is_503_json(tmp_path, monkeypatch):
    import aiohttp

    from lwm2m_server.api.http import ManagementApi
    from lwm2m_server.ota import deployment as deployment_module

    stack = await Stack().start(tmp_path)
    api = ManagementApi(stack.server, "t0ken", port=0, deployment=stack.deployment, orchestrator=stack.orchestrator)
    await api.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t0ken"}) as session:
            async def post_model(version: str):
                url = f"http://127.0.0.1:{api.port}/api/v1/models?name=dense&version={version}"
                async with session.post(url, data=MODEL.read_bytes()) as response:
                    return response.status, response.content_type, await response.json()

            disk_full(stack.store)  # the model's record cannot be stored
            assert await post_model("1.0") == (503, "application/json", {"error": "server storage unavailable"})

            def no_space(path, data):  # the model file cannot be written
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

            disk_freed(stack.store)
            monkeypatch.setattr(deployment_module, "_write_atomic", no_space)
            assert await post_model("1.1") == (503, "application/json",
                                               {"error": "server storage unavailable: No space left on device"})
            monkeypatch.undo()
            assert (await post_model("1.2"))[0] == 201  # space again
        assert [m.version for m in await stack.deployment.models()] == ["1.2"]
    finally:
        await api.stop()
        await stack.stop()


# -- bugs found by these tests, fixed ------------------------------------------------------------------

async def test_a_delivery_under_way_is_recorded_in_flight_with_its_attempt(tmp_path):
    def stall_downloads(direction, client, data) -> bool:
        return direction == "up" and is_request(data) and Message.decode(data).opt.uri_path[:1] == ("fw",)

    stack = await FaultStack().start(tmp_path, relay=LossyRelay(("127.0.0.1", 0), drop=stall_downloads))
    try:
        await stack.device("gw-stalled", "linux-gateway")
        model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
        rollout = await stack.orchestrator.create(model.key, Selector(), Strategy(canary_fraction=0, mode="pull"))
        _, (record,) = await stack.wait(rollout.id, lambda r, ds: ds and (ds[0].job or {}).get("phase")
                                        == "await_download", 10)
        stored = await stack.store.get_document("rollout-device", f"{rollout.id}/gw-stalled")
        # `tinymlaas rollouts ID` shows it in flight, and a restart resumes it (start() resumes IN_FLIGHT only)
        assert (record.status.value, record.attempts) == ("in_flight", 1)
        assert (stored["status"], stored["attempts"]) == ("in_flight", 1)
    finally:
        await stack.stop()


async def test_a_device_that_refuses_every_package_ends_failed(tmp_path):
    stack = await FaultStack().start(tmp_path)
    try:
        device = SimulatedDevice("m4f-distrust", "cortex-m4f", f"coap://127.0.0.1:{stack.server.port}", seed=1,
                                 sensor_interval=3600)  # no trust anchor: every module fails verification
        await device.start()
        stack.devices.append(device)
        await wait_until(lambda: stack.server.profile("m4f-distrust") is not None)
        model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
        rollout = await stack.orchestrator.create(model.key, Selector(), Strategy(
            canary_fraction=0, mode="push", max_attempts=2, retry_backoff_s=0.1))
        try:
            _, (record,) = await stack.wait(rollout.id, lambda r, ds: ds and ds[0].status.value == "failed", 3)
        finally:
            report("refused-forever", attempts_made=len(stack.failures))
        assert record.attempts == 2 and "53" in record.reason and len(stack.failures) == 2
    finally:
        await stack.stop()


async def test_orchestrator_restarted_after_the_activation_finishes_the_rollout(tmp_path):
    state = {"device": None, "armed": True, "dead": False}

    def server_dies_after_activation(direction, client, data) -> bool:
        """Once the device runs the new model, nothing the server sends arrives any more."""
        device = state["device"]
        if state["armed"] and device is not None and direction == "down" and is_request(data) \
                and device.objects.get("/26241/0/10") == "dense":
            state["dead"] = True
        return state["dead"]

    relay = LossyRelay(("127.0.0.1", 0), drop=server_dies_after_activation)
    stack = await FaultStack().start(tmp_path, relay=relay)
    try:
        device = state["device"] = await stack.device("m4f-kill", "cortex-m4f")
        model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
        rollout = await stack.orchestrator.create(model.key, Selector(), Strategy(
            canary_fraction=0, mode="push", retry_backoff_s=0.1))
        await wait_until(lambda: state["dead"], 20)  # activated; the verify read is lost with the server
        await stack.orchestrator.stop()  # the daemon dies here: nothing more is persisted
        state["armed"] = state["dead"] = False  # the restarted server is heard again
        stack.orchestrator = Orchestrator(stack.server, stack.deployment, clock=time.time, interval=0.1)
        await stack.orchestrator.start()
        try:
            # The old orchestrator's observation cancel was lost with "the server": aiocoap
            # retransmits it after 2-3 s (ACK_TIMEOUT x random factor) and holds the new
            # orchestrator's observe of the same device behind it (NSTART 1) until then.
            await stack.wait(rollout.id, lambda r, ds: ds[0].status.value == "done", 10)
        finally:
            refusals = [t for t in device.objects.updates.transitions if t[2] == 57]
            report("restart-after-activation", refusals_57=len(refusals))
    finally:
        await stack.stop()


async def test_a_lost_discovery_is_read_again_at_the_next_update(tmp_path):
    lost = {"on": True}

    def lose_server_requests(direction, client, data) -> bool:
        return lost["on"] and direction == "down" and is_request(data)

    relay = LossyRelay(("127.0.0.1", 0), drop=lose_server_requests)
    stack = await FaultStack().start(tmp_path, relay=relay, request_timeout_s=0.5)
    try:
        device = SimulatedDevice("gw-silent", "linux-gateway", f"coap://127.0.0.1:{relay.port}", seed=1,
                                 sensor_interval=3600)
        with stack.server.events.subscribe() as events:
            await device.start()
            stack.devices.append(device)
            async with asyncio.timeout(15):  # every discovery read goes unanswered
                while (await events.get()).kind != "discovery_incomplete":
                    pass
        assert stack.server.profile("gw-silent") is None  # nothing half-known is kept
        lost["on"] = False
        # The device is reachable again. aiocoap still retransmits the timed-out reads (this test's
        # 0.5 s request timeout is far below CoAP's own schedule) and sends one request per peer at
        # a time, so the reads after the first Update may time out too: each Update tries again.
        async with asyncio.timeout(30):
            while getattr(stack.server.profile("gw-silent"), "tinyml", None) is None:
                await device.update()
                await asyncio.sleep(3)
    finally:
        await stack.stop()
