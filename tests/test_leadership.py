"""One rollout leader among nodes that share a store (issue 15): the store lease, the
leadership that runs the orchestrator on its holder only, fenced writes, and a standby
that takes a rollout over when the leader dies, with no device getting the module twice.

Everything real: two nodes' stores on one SQLite file or one PostgreSQL schema, their
servers, deployments and orchestrators, simulated devices. Leases are short (1.5 s) so
that a takeover takes a couple of seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import jsonschema_rs
import pytest

from ipso_objects import ObjectRegistry
from lwm2m_server.config import ConfigError, DeploymentConfig, ServerConfig, parse_config
from lwm2m_server.daemon import Daemon
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.ota.leadership import RolloutLeadership, remember_modules
from lwm2m_server.ota.orchestrator import DEVICE, ROLLOUT, NotLeader, Orchestrator
from lwm2m_server.ota.rollouts import RolloutState, Selector, Strategy
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store import SqliteStore, Store
from simulators.client import SimulatedDevice
from test_store_contract import POSTGRESQL_URL, require_postgresql

MODEL = Path(__file__).parent / "fixtures" / "models" / "dense_int8.tflite"
TTL, RENEW, MARGIN = 1.5, 0.3, 0.3
"""Test leases: 1.5 s, renewed every 0.3 s; a leader not renewed stops 0.3 s before expiry."""
TOKEN = "leadership-test-token-0123"

OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgresql"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """Opens one more store on the data the nodes of a test share."""
    if request.param == "sqlite":
        path = tmp_path / "shared" / "tinymlaas.sqlite3"
        return lambda: SqliteStore.open(path)
    from lwm2m_server.store.postgresql import PostgresqlStore

    schema = request.getfixturevalue("pg_schema")
    return lambda: PostgresqlStore.open(require_postgresql(), schema=schema)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``condition()``; the time it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.time()


# -- the leadership alone (what runs on it only records when it runs) ------------------------


class Recorder:
    """Stands in for the orchestrator where only the leadership is under test."""

    def __init__(self) -> None:
        self.lease = None
        self.lease_margin_s = 0.0
        self.running = False
        self.started: list[tuple[float, int]] = []
        """(time, lease epoch) of each start."""
        self.stopped: list[float] = []
        self.loads = 0

    async def start(self) -> None:
        self.running = True
        self.started.append((time.time(), self.lease.epoch))

    async def stop(self) -> None:
        if self.running:
            self.running = False
            self.stopped.append(time.time())

    async def load(self) -> None:
        self.loads += 1


def leadership(store: Store, holder: str, **changes) -> tuple[RolloutLeadership, Recorder]:
    recorder = Recorder()
    settings = {"ttl_s": TTL, "renew_every_s": RENEW, "margin_s": MARGIN, **changes}
    return RolloutLeadership(store, recorder, holder=holder, **settings), recorder  # type: ignore[arg-type]


async def test_one_node_leads_and_a_standby_takes_over_only_after_the_dead_leaders_lease_ran_out(shared):
    store_a, store_b = await shared(), await shared()
    a, ran_a = leadership(store_a, "node-a")
    b, ran_b = leadership(store_b, "node-b")
    try:
        await a.start()
        assert a.is_leader and ran_a.running and ran_a.started[0][1] == 1  # at once: a single node leads
        await b.start()
        assert not b.is_leader and not ran_b.started
        assert await b.leader() == "node-a" and await a.leader() == "node-a"
        assert ran_b.lease.epoch == 0  # the standby's writes are fenced by a lease that never holds
        await asyncio.sleep(TTL * 1.5)  # several renewals: same tenure
        assert a.is_leader and a.lease.epoch == 1 and not ran_b.started
        await a.stop(release=False)  # the node dies: its lease runs out on its own
        assert not ran_a.running and not a.is_leader
        last = await store_b.get_lease("rollouts")
        assert last.holder == "node-a"
        took = await wait_for(lambda: b.is_leader, TTL + 2, "the standby leads")
        assert ran_b.started[0][0] >= last.expires_at, "taken over before the dead leader's lease ran out"
        assert took - last.expires_at < RENEW + 0.5  # within one retry after expiry
        assert b.lease.epoch == 2 and ran_b.started[0][1] == 2 and ran_b.lease == b.lease
        assert await a.leader() == "node-b"
    finally:
        for node in (a, b):
            await node.stop()
        for store in (store_a, store_b):
            await store.close()


async def test_a_clean_stop_hands_over_at_once_and_a_restarted_node_takes_its_lease_back(shared):
    store_a, store_b = await shared(), await shared()
    a, _ = leadership(store_a, "node-a", ttl_s=30.0, renew_every_s=0.2, margin_s=1.0)
    b, _ = leadership(store_b, "node-b", ttl_s=30.0, renew_every_s=0.2, margin_s=1.0)
    try:
        await a.start()
        await b.start()
        stopped = time.time()
        await a.stop()  # released: no 30 s wait
        assert await wait_for(lambda: b.is_leader, 2, "the standby leads") - stopped < 1.0
        assert b.lease.epoch == 2
        await b.stop(release=False)  # b dies, and restarts at once under the same node name
        again, ran = leadership(store_b, "node-b", ttl_s=30.0, renew_every_s=0.2, margin_s=1.0)
        await again.start()
        assert again.is_leader and ran.running and again.lease.epoch == 2  # its own lease: no wait
        await again.stop()
    finally:
        for node in (a, b):
            await node.stop()
        for store in (store_a, store_b):
            await store.close()


async def test_a_leader_cut_off_from_the_store_stops_before_its_lease_can_pass_on(shared):
    store_a, store_b = await shared(), await shared()
    a, ran_a = leadership(store_a, "node-a")
    b, ran_b = leadership(store_b, "node-b")
    try:
        await a.start()
        await b.start()
        await store_a.close()  # node a loses the database; node b does not
        await wait_for(lambda: not ran_a.running, TTL + 1, "the cut-off leader stops")
        assert not a.is_leader
        last = await store_b.get_lease("rollouts")  # a's last renewal
        assert last.holder == "node-a"
        assert ran_a.stopped[0] <= last.expires_at - MARGIN + 0.1  # by its deadline, margin kept
        await wait_for(lambda: b.is_leader, TTL + 2, "the standby leads")
        assert ran_a.stopped[0] < last.expires_at <= ran_b.started[0][0]  # never two at once
    finally:
        for node in (a, b):
            await node.stop()
        for store in (store_a, store_b):
            await store.close()


# -- nodes with everything: servers, deployments, orchestrators, devices ----------------------


def sota_counts(device: SimulatedDevice) -> tuple[int, int]:
    """(package writes, installs) the device handled for /9/0: from its update history."""
    history = [(state, result) for path, state, result in device.objects.updates.transitions if path == "/9/0"]
    writes = sum(state == 1 for state, _ in history)  # DOWNLOAD STARTED: a package was written
    installs = sum(after[0] == 4 and before[0] == 3 for before, after in zip(history, history[1:]))
    return writes, installs


class Node:
    """One daemon's parts, wired as the daemon wires them, on the shared store and folder."""

    def __init__(self, name: str, folder: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.folder = folder
        self.clock = clock

    async def start(self, open_store: OpenStore) -> Node:
        self.store = await open_store()
        deployment_config = DeploymentConfig(data_dir=self.folder / "data", signing_key=self.folder / "keys" / "k.pem",
                                             poll_interval_s=0.1, phase_timeout_s=20)
        base = ServerConfig()
        self.config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=5),
                              deployment=deployment_config)
        self.deployment = Deployment(deployment_config, self.store, clock=time.time)
        await self.deployment.start()
        self.server = LwM2MServer(self.config, ObjectRegistry.default(), self.store,
                                  downloads=self.deployment.download)
        await self.server.start()
        self.orchestrator = Orchestrator(self.server, self.deployment, clock=time.time, interval=0.1)
        self.leadership = RolloutLeadership(
            self.store, self.orchestrator, holder=self.name, ttl_s=TTL, renew_every_s=RENEW, margin_s=MARGIN,
            clock=self.clock, before_start=lambda: remember_modules(self.deployment))
        return self

    crashed = False

    def crash(self) -> None:
        """Die this instant: each task of the node ends at its next await (no answer on its
        way is read, nothing more is saved). :meth:`kill` then frees what is left."""
        self.crashed = True
        for task in (self.leadership._task, self.orchestrator._loop, *self.orchestrator._tasks.values()):
            if task is not None:
                task.cancel()

    async def kill(self) -> None:
        """The node dies: nothing runs on, nothing is released."""
        await self.leadership.stop(release=False)
        await self.server.stop()
        await self.store.close()
        self.killed = True

    async def stop(self) -> None:
        if not getattr(self, "killed", False):
            await self.leadership.stop()
            await self.server.stop()
            await self.store.close()


class Fleet:
    """Two nodes on one store and folder, and simulated devices registered at node b."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.nodes: list[Node] = []
        self.devices: list[SimulatedDevice] = []

    async def device(self, node: Node, endpoint: str) -> SimulatedDevice:
        device = SimulatedDevice(endpoint, "cortex-m4f", f"coap://127.0.0.1:{node.server.port}", seed=1,
                                 sensor_interval=3600, trust_anchors=[self.folder / "keys" / "k.pub.pem"])
        await device.start()
        self.devices.append(device)
        await wait_for(lambda: node.server.profile(endpoint) is not None, 10, f"{endpoint} discovered")
        return device

    async def close(self) -> None:
        for device in self.devices:
            await device.stop(deregister=False)
        for node in self.nodes:
            await node.stop()


@pytest.fixture
async def fleet(tmp_path: Path):
    fleet = Fleet(tmp_path)
    yield fleet
    await fleet.close()


async def two_nodes(fleet: Fleet, shared: OpenStore, devices: int, b_clock=time.time,
                    b_leads_later: bool = False) -> tuple[Node, Node]:
    """Node b with the devices registered to it, then node a (it reads them from the store);
    a leads, b stands by (unless ``b_leads_later``: its leadership is not started)."""
    b = await Node("node-b", fleet.folder, clock=b_clock).start(shared)
    fleet.nodes.append(b)
    for i in range(devices):
        await fleet.device(b, f"m4f-{i}")
    a = await Node("node-a", fleet.folder).start(shared)
    fleet.nodes.append(a)
    assert sorted(r.endpoint for r in a.server.registrations()) == [f"m4f-{i}" for i in range(devices)]
    await a.leadership.start()
    if not b_leads_later:
        await b.leadership.start()
        assert not b.leadership.is_leader
    assert a.leadership.is_leader
    return a, b


async def stored_devices(store: Store, rollout_id: str) -> dict[str, dict]:
    return {key.split("/", 1)[1]: data for key, data in (await store.list_documents(DEVICE, f"{rollout_id}/")).items()}


async def test_the_standby_finishes_a_dead_leaders_rollout_and_no_device_gets_the_module_twice(fleet, shared):
    """The leader dies the instant the second device has run Install, before it reads the
    answer: the standby takes over once the lease has run out, resumes that delivery from
    its stored job (the device has installed: no second Install) and does the rest."""
    a, b = await two_nodes(fleet, shared, devices=3)
    installs_seen: list[str] = []
    for device in fleet.devices:
        install = device.objects._execute_hooks[(9, 4)]  # the simulated device's own Install

        def crash_after_second(objects, path, arguments, install=install, endpoint=device.endpoint):
            install(objects, path, arguments)
            installs_seen.append(endpoint)
            if len(installs_seen) == 2:
                a.crash()  # its answer is on the way; node a never reads it

        device.objects.set_execute_hook(9, 4, crash_after_second)
    model = await a.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    rollout = await a.orchestrator.create(model.key, Selector(endpoints=("m4f-*",)),
                                          Strategy(max_in_flight=1, canary_fraction=0, mode="push"))
    assert not b.orchestrator.rollouts()  # the standby runs nothing
    await wait_for(lambda: a.crashed, 15, "the leader dies mid-rollout")
    await a.kill()
    killed_at = time.time()
    last = await b.store.get_lease("rollouts")
    stored = await stored_devices(b.store, rollout.id)
    interrupted = installs_seen[1]
    assert stored[interrupted]["status"] == "in_flight" and stored[interrupted]["job"]["phase"] == "install"
    assert [e for e, d in stored.items() if d["status"] == "done"] == [installs_seen[0]]

    took = await wait_for(lambda: b.leadership.is_leader, TTL + 3, "the standby takes over")
    assert took >= last.expires_at and took - killed_at < TTL + RENEW + 1.0
    async with asyncio.timeout(15):  # complete, as the store has it
        while (await b.store.get_document(ROLLOUT, rollout.id))["state"] != "complete":
            await asyncio.sleep(0.05)
    rolled, devices = b.orchestrator.rollout(rollout.id)
    assert rolled.state is RolloutState.COMPLETE
    assert [(d.endpoint, d.status.value) for d in devices] == [(f"m4f-{i}", "done") for i in range(3)]
    assert {d.endpoint: d.job["resumed"] for d in devices}[interrupted] is True  # resumed, not started over
    for device in fleet.devices:
        assert device.objects.get("/26241/0/10") == "dense"
        assert sota_counts(device) == (1, 1), f"{device.endpoint}: (package writes, installs)"


async def test_a_package_the_device_took_before_the_leader_died_is_not_written_again(fleet, shared):
    """The leader dies the instant the second device has taken the whole package write,
    before it reads the answer or saves the job: the stored job still says `send`. The
    standby reads the device's update state (DELIVERED) and goes on with Install."""
    a, b = await two_nodes(fleet, shared, devices=3)
    writes_seen: list[str] = []
    for device in fleet.devices:
        take_package = device.objects._write_hooks[(9, 2)]  # the simulated device's own package handling

        def crash_after_second(objects, path, value, take_package=take_package, endpoint=device.endpoint):
            take_package(objects, path, value)
            writes_seen.append(endpoint)
            if len(writes_seen) == 2:
                a.crash()  # the device's 2.04 is on the way; node a never reads it

        device.objects.set_write_hook(9, 2, crash_after_second)
    model = await a.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    rollout = await a.orchestrator.create(model.key, Selector(endpoints=("m4f-*",)),
                                          Strategy(max_in_flight=1, canary_fraction=0, mode="push"))
    await wait_for(lambda: a.crashed, 15, "the leader dies mid-rollout")
    await a.kill()
    interrupted = writes_seen[1]
    stored = await stored_devices(b.store, rollout.id)
    assert stored[interrupted]["status"] == "in_flight" and stored[interrupted]["job"]["phase"] == "send"
    assert next(d for d in fleet.devices if d.endpoint == interrupted).objects.get("/9/0/7") == 3  # DELIVERED

    await wait_for(lambda: b.leadership.is_leader, TTL + 3, "the standby takes over")
    async with asyncio.timeout(15):
        while (await b.store.get_document(ROLLOUT, rollout.id))["state"] != "complete":
            await asyncio.sleep(0.05)
    _, devices = b.orchestrator.rollout(rollout.id)
    assert [(d.endpoint, d.status.value) for d in devices] == [(f"m4f-{i}", "done") for i in range(3)]
    for device in fleet.devices:
        assert device.objects.get("/26241/0/10") == "dense"
        assert sota_counts(device) == (1, 1), f"{device.endpoint}: (package writes, installs)"
    job = {d.endpoint: d.job for d in devices}[interrupted]
    assert job["resumed"] is True and any(line.endswith("check_send -> install") for line in job["log"])


async def test_a_leader_that_lost_its_lease_unawares_cannot_write(fleet, shared):
    """Node b's clock runs a whole lease ahead (beyond what the margin covers): it takes the
    lease while node a still believes it leads. The fence refuses a's writes; a stops at its
    next renewal; b completes the rollout."""
    a, b = await two_nodes(fleet, shared, devices=2, b_clock=lambda: time.time() + 2 * TTL, b_leads_later=True)
    model = await a.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    rollout = await a.orchestrator.create(model.key, Selector(endpoints=("m4f-*",)),
                                          Strategy(max_in_flight=1, canary_fraction=0, mode="push"))
    await b.leadership.start()  # as b's clock has it, a's lease has run out: b takes it at once
    assert b.leadership.is_leader and a.leadership.is_leader  # two believe they lead: the fence decides
    with pytest.raises(NotLeader, match="no longer holds the rollouts lease"):
        await a.orchestrator.set_state(rollout.id, RolloutState.PAUSED)
    with pytest.raises(NotLeader):
        await a.orchestrator.create(model.key, Selector(), Strategy(), rollout_id="r-stale")
    assert await b.store.get_document(ROLLOUT, "r-stale") is None
    await wait_for(lambda: not a.leadership.is_leader, RENEW + 1, "the old leader notices")
    async with asyncio.timeout(15):
        while (await b.store.get_document(ROLLOUT, rollout.id))["state"] != "complete":
            await asyncio.sleep(0.05)
    states = await stored_devices(b.store, rollout.id)
    assert {endpoint: d["status"] for endpoint, d in states.items()} == {"m4f-0": "done", "m4f-1": "done"}


# -- the daemon: API of the node that does not lead ------------------------------------------


def test_the_lease_length_is_configured_and_checked():
    assert ServerConfig().deployment.leader_lease_s == 15
    assert parse_config({"deployment": {"leader_lease_s": 4.5}}).deployment.leader_lease_s == 4.5
    with pytest.raises(ConfigError, match=r"deployment\.leader_lease_s: must be > 0, got 0"):
        parse_config({"deployment": {"leader_lease_s": 0}})
    with pytest.raises(ValueError, match="renew_every_s"):  # renewals must come before the stop deadline
        RolloutLeadership(None, Recorder(), holder="n", ttl_s=1.0, renew_every_s=0.9)  # type: ignore[arg-type]


def daemon_config(folder: Path, node: str, schema: str):
    url = f"{POSTGRESQL_URL}{'&' if '?' in POSTGRESQL_URL else '?'}options=-csearch_path%3D{schema}"
    return parse_config({
        "coap": {"host": "127.0.0.1", "port": 0, "secure_port": None},
        "api": {"port": 0, "token": TOKEN},
        "store": {"kind": "postgresql", "url": url},
        "security": {"credentials_path": str(folder / "creds.sqlite3")},
        "deployment": {"data_dir": str(folder / "data"), "signing_key": str(folder / "keys" / "k.pem"),
                       "leader_lease_s": 2},
        "cluster": {"node": node},
    })


async def test_rollout_changes_on_a_node_that_does_not_lead_are_503_naming_the_leader(tmp_path, pg_schema):
    first = Daemon(daemon_config(tmp_path / "a", "node-a", pg_schema))
    second = Daemon(daemon_config(tmp_path / "b", "node-b", pg_schema))
    await first.start()
    running = [first]
    try:
        await second.start()
        running.append(second)
        assert first.leadership.is_leader and not second.leadership.is_leader
        headers = {"Authorization": f"Bearer {TOKEN}"}
        api_a = f"http://127.0.0.1:{first.api.port}/api/v1"
        api_b = f"http://127.0.0.1:{second.api.port}/api/v1"
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{api_a}/models", params={"name": "dense", "version": "1.0"},
                                 data=MODEL.read_bytes()) as response:
                assert response.status == 201
            body = {"model": "dense@1.0", "selector": {"endpoints": ["nobody-*"]}, "id": "r1"}
            async with http.post(f"{api_b}/rollouts", json=body) as response:
                assert response.status == 503
                refused = await response.json()
            assert refused["leader"] == "node-a"
            assert "node-b" in refused["error"] and "node node-a leads rollouts: retry there" in refused["error"]
            async with http.get(f"{api_b}/openapi.json") as response:  # the answer is the one documented
                document = await response.json()
            documented = document["paths"]["/api/v1/rollouts"]["post"]["responses"]["503"]
            assert {"$ref": "#/components/schemas/NotLeader"} in documented["content"]["application/json"][
                "schema"]["anyOf"]
            jsonschema_rs.validate(document["components"]["schemas"]["NotLeader"], refused)
            async with http.post(f"{api_a}/rollouts", json=body) as response:
                assert response.status == 201
            async with http.get(f"{api_b}/rollouts/r1") as response:  # reads: the store's state
                assert response.status == 200 and (await response.json())["state"] == "running"
            async with http.get(f"{api_b}/rollouts") as response:
                assert [r["id"] for r in await response.json()] == ["r1"]
            async with http.post(f"{api_b}/rollouts/r1/pause") as response:
                assert response.status == 503 and (await response.json())["leader"] == "node-a"
            running.remove(first)
            await first.stop()  # a clean stop releases the lease: node b leads within a renewal
            await wait_for(lambda: second.leadership.is_leader, 3, "node b leads")
            async with http.post(f"{api_b}/rollouts/r1/pause") as response:
                assert response.status == 200 and (await response.json())["state"] == "paused"
    finally:
        for daemon in running:
            await daemon.stop()
