"""Three nodes, one fleet: daemons on 127.0.0.2, .3 and .4 (distinct addresses of
this machine) share a PostgreSQL schema, a data folder and a NATS bus. Devices
bootstrap with node 1, whose Bootstrap-Server sends each to a node by endpoint hash;
every node's API sees every device. A node killed mid-rollout: its devices' Updates
fail, they bootstrap again (LwM2M "Bootstrap on Registration Failure") and are sent
to the nodes alive; the rollout completes on every device. Needs PostgreSQL and NATS
(skips, or fails with TINYMLAAS_REQUIRE_POSTGRESQL / TINYMLAAS_REQUIRE_NATS=1).

In one process (NATS only): a worker taken for dead while a package write to its device
is in flight leaves no delivery in flight for good, and the write is not repeated."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ipso_objects import ObjectRegistry
from lwm2m_server.cluster.bus import NatsBus
from lwm2m_server.cluster.gateway import ClusterGateway
from lwm2m_server.cluster.worker import WorkerLink
from lwm2m_server.config import DeploymentConfig, ServerConfig
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.ota.orchestrator import Orchestrator
from lwm2m_server.ota.rollouts import DeviceStatus, Selector, Strategy
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store import SqliteStore
from simulators.client import SimulatedDevice
from test_cli_e2e import MODEL, ROOT, Stack, stop_fleet, wait_for
from test_cluster_workers import directory, nats_running
from test_daemon import Daemon
from test_leadership import sota_counts
from test_store_contract import POSTGRESQL_URL, drop_schema, require_postgresql

DEVICES = 12
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def nodes(tmp_path):
    require_postgresql()
    if not nats_running():
        pytest.skip("no NATS server on 127.0.0.1:4222")
    schema, cluster = f"test_{uuid.uuid4().hex[:16]}", f"t{uuid.uuid4().hex[:12]}"
    shared = tmp_path / "shared"
    daemons = []
    try:
        for index, host in enumerate(HOSTS, 1):
            folder = tmp_path / f"n{index}"
            folder.mkdir()
            config = (
                f"store: {{kind: postgresql, url: '{POSTGRESQL_URL}?options=-csearch_path%3D{schema}'}}\n"
                f"cluster: {{bus: 'nats://127.0.0.1:4222', name: {cluster}, node: n{index}}}\n"
                f"deployment: {{data_dir: '{shared}/data', signing_key: '{shared}/keys/signing-es256.pem', "
                "poll_interval_s: 0.2, phase_timeout_s: 60}\n"
                f"security: {{credentials_path: '{shared}/credentials.sqlite3'}}\n"
                "bootstrap: {lifetime_s: 8}\n"  # an Update every few seconds: a dead node is noticed soon
            )
            daemon = Daemon(folder, config, host=host)
            daemon.start()
            daemons.append(daemon)
        yield daemons, cluster, shared
    finally:
        for daemon in daemons:
            if daemon.process.poll() is None:
                daemon.kill(signal.SIGTERM)
        drop_schema(schema)


def start_fleet(folder: Path, bootstrap: str, anchor: Path) -> subprocess.Popen:
    data = yaml.safe_load((ROOT / "config" / "fleet.yaml").read_text())
    for profile in data["profiles"].values():
        profile["sensor_interval"] = 1
    data.update(fleet=[{"profile": "cortex-m4f", "count": DEVICES, "endpoint_prefix": "c"}], trust_anchors=[])
    (folder / "fleet.yaml").write_text(yaml.safe_dump(data))
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "fleet", "--config", str(folder / "fleet.yaml"),
         "--bootstrap", bootstrap, "--timeout", "3", "--trust-anchor", str(anchor)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(folder / "fleet.log", "w"))


def test_a_node_dies_mid_rollout_and_its_devices_finish_on_the_others(nodes, tmp_path, capsys):
    daemons, cluster, shared = nodes
    first = daemons[0]
    endpoints = {f"c-{i:04d}" for i in range(1, DEVICES + 1)}
    fleet = start_fleet(tmp_path, f"coap://{HOSTS[0]}:{first.coap_port}", shared / "keys" / "signing-es256.pub.pem")
    try:
        stacks = [Stack(daemon, fleet) for daemon in daemons]
        for stack in stacks:  # every node's API sees every device, discovered
            wait_for(lambda: {d["endpoint"] for d in stack.api("GET", "/devices")} == endpoints
                     and all(d.get("profile") for d in (stack.api("GET", f"/devices/{e}") for e in endpoints)),
                     60, f"{stack.url} to see the fleet")
        held = [directory(cluster, f"n{index}-0") for index in (1, 2, 3)]
        assert set().union(*held) == endpoints and all(held), f"bootstrap sent every device to one node: {held}"
        victim = daemons[2]
        stack = stacks[0]
        code, out, err = stack.cli(capsys, "models", "add", str(MODEL), "--name", "nodes", "--version", "1")
        assert code == 0, out + err
        code, out, err = stack.cli(capsys, "deploy", "nodes@1", "--endpoint", "c-*", "--canary", "0",
                                   "--mode", "push", "--id", "r-nodes")
        assert code == 0, out + err
        victim.kill(signal.SIGKILL)  # mid-rollout: n3's devices lose their server
        moved = held[2]

        def finished():
            body = stack.api("GET", "/rollouts/r-nodes")
            return body if body["state"] in ("complete", "paused", "cancelled") else None
        try:
            body = wait_for(finished, 90, "the rollout to finish")
        except AssertionError:
            body = stack.api("GET", "/rollouts/r-nodes")
            raise AssertionError(
                f"{[(d['endpoint'], d['status'], d.get('reason'), d.get('phase')) for d in body['devices']]}\n"
                + (tmp_path / "fleet.log").read_text()[-3000:]
                + "".join(line for line in first.lines if "rollout" in line or "worker_lost" in line)[-4000:])
        assert body["state"] == "complete", body
        assert {d["endpoint"]: d["status"] for d in body["devices"]} == dict.fromkeys(endpoints, "done"), body
        now_held = directory(cluster, "n1-0") | directory(cluster, "n2-0")
        assert moved <= now_held, f"devices of the dead node not back: {moved - now_held}"
        for endpoint in endpoints:
            assert stack.api("GET", f"/devices/{endpoint}")["profile"]["tinyml"]["active_model_id"] == "nodes"
    finally:
        stop_fleet(fleet)


# -- in one process: the leader's gateway and another node's worker on NATS -----------------------


async def test_a_worker_lost_mid_write_leaves_no_delivery_in_flight_and_writes_no_package_twice(tmp_path):
    """The worker that holds a device is taken for dead (as the leader's sweep does after
    its silence) while the leader's package write to the device is in flight there: the
    device took the write, its answer never reaches the leader. The delivery waits as for
    a device that did not answer (it stayed `in_flight` for good when cancelling its
    observation raised, the device being unknown by then), and resumes once the device
    registers again: with Install, not a second package write."""
    prefix, store_path = f"t{uuid.uuid4().hex[:12]}", tmp_path / "shared.sqlite3"
    deploying = DeploymentConfig(data_dir=tmp_path / "data", signing_key=tmp_path / "keys" / "k.pem",
                                 poll_interval_s=0.1, phase_timeout_s=20)
    base = ServerConfig()
    config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=5),
                     deployment=deploying)
    leader_store, worker_store = await SqliteStore.open(store_path), await SqliteStore.open(store_path)
    deployment = Deployment(deploying, leader_store, clock=time.time)
    await deployment.start()
    leader = LwM2MServer(config, ObjectRegistry.default(), leader_store, downloads=deployment.download)
    worker = LwM2MServer(config, ObjectRegistry.default(), worker_store, restore=False)
    leader_bus, worker_bus = [await NatsBus.connect("nats://127.0.0.1:4222") for _ in range(2)]
    link = WorkerLink(worker, worker_bus, prefix=prefix, worker="n2-0", node="n2")
    gateway = ClusterGateway(leader, leader_bus, prefix=prefix, deployment=deployment, worker="n1-0", node="n1")
    orchestrator = Orchestrator(gateway, deployment, clock=time.time, interval=0.1)
    device = None
    try:
        await leader.start()
        await worker.start()
        await link.start()
        await gateway.start(directory_window_s=0.2)
        await orchestrator.start()
        device = SimulatedDevice("m4f-moved", "cortex-m4f", f"coap://127.0.0.1:{worker.port}", seed=1,
                                 sensor_interval=3600, trust_anchors=[tmp_path / "keys" / "k.pub.pem"])
        await device.start()
        async with asyncio.timeout(10):
            while gateway.profile(device.endpoint) is None:  # registered and discovered at n2-0
                await asyncio.sleep(0.02)
        take_package = device.objects._write_hooks[(9, 2)]  # the simulated device's own package handling

        def worker_lost_meanwhile(objects, path, value):
            take_package(objects, path, value)
            gateway.forget_worker("n2-0")  # its answer is on the way; the leader stops waiting for it

        device.objects.set_write_hook(9, 2, worker_lost_meanwhile)
        model = await deployment.add_model(MODEL.read_bytes(), "nodes", "1")
        rollout = await orchestrator.create(model.key, Selector(), Strategy(canary_fraction=0, mode="push"))

        def record():
            return orchestrator.rollout(rollout.id)[1][0]
        async with asyncio.timeout(10):
            while record().status is not DeviceStatus.RETRY_WAIT:
                await asyncio.sleep(0.02)
        waiting = record()
        assert waiting.reason == "unreachable: worker n2-0 left the cluster" and waiting.job["phase"] == "send"
        assert device.objects.get("/9/0/7") == 3  # DELIVERED: the write got through

        device.objects.set_write_hook(9, 2, take_package)
        await device.register()  # back (here at the same worker): the delivery goes on at once
        async with asyncio.timeout(15):
            while record().status is not DeviceStatus.DONE:
                await asyncio.sleep(0.02)
        assert device.objects.get("/26241/0/10") == "nodes"
        assert sota_counts(device) == (1, 1), "(package writes, installs)"
        assert any(line.endswith("check_send -> install") for line in record().job["log"])
    finally:
        await orchestrator.stop()
        if device is not None:
            await device.stop(deregister=False)
        await gateway.stop()
        await link.stop()
        for server in (leader, worker):
            await server.stop()
        for bus in (leader_bus, worker_bus):
            await bus.close()
        for store in (leader_store, worker_store):
            await store.close()
