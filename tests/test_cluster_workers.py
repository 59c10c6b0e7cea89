"""``coap.workers: 2``: two processes share the CoAP port (SO_REUSEPORT) and the store,
joined by NATS. The kernel spreads the simulated fleet's devices over both; the API
of the leader lists every device, reads any of them, and a rollout reaches devices
of both workers, pushed and pulled. Needs the NATS server on 127.0.0.1:4222 (skips
without it unless ``TINYMLAAS_REQUIRE_NATS=1``, which ``.ci/run`` sets)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path

import pytest
import yaml

from lwm2m_server.cluster.bus import NatsBus
from lwm2m_server.cluster.worker import worker_subject
from test_cli_e2e import MODEL, ROOT, running_stack

NATS = ("127.0.0.1", 4222)
DEVICES = 12


def nats_running() -> bool:
    try:
        with socket.create_connection(NATS, timeout=1):
            return True
    except OSError:
        return False


if not nats_running():
    if os.environ.get("TINYMLAAS_REQUIRE_NATS") == "1":
        raise RuntimeError("NATS is required (TINYMLAAS_REQUIRE_NATS=1) but nothing answers on 127.0.0.1:4222")
    pytest.skip("no NATS server on 127.0.0.1:4222 (apt-get install nats-server)", allow_module_level=True)


def fleet_yaml(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "config" / "fleet.yaml").read_text())
    for profile in data["profiles"].values():
        profile["sensor_interval"] = 1
    data.update(fleet=[{"profile": "cortex-m4f", "count": DEVICES, "endpoint_prefix": "w"}], trust_anchors=[])
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def directory(cluster: str, worker: str) -> set[str]:
    async def ask() -> set[str]:
        bus = await NatsBus.connect("nats://127.0.0.1:4222")
        try:
            reply = await bus.request(worker_subject(cluster, worker), {"op": "directory"}, 5)
        finally:
            await bus.close()
        return {device["registration"]["endpoint"] for device in reply["devices"]}
    return asyncio.run(ask())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("workers")
    name = f"t{uuid.uuid4().hex[:12]}"  # a cluster of its own on the shared NATS server
    config = (f"cluster: {{bus: 'nats://127.0.0.1:4222', name: {name}, node: n1}}\n"
              "deployment: {poll_interval_s: 0.2, phase_timeout_s: 60}\n")
    endpoints = {f"w-{i:04d}" for i in range(1, DEVICES + 1)}
    with running_stack(folder, config, fleet_yaml(folder), endpoints, workers=2) as stack:
        yield stack, name, endpoints


def test_the_devices_are_spread_over_both_workers_and_the_api_sees_all(cluster):
    stack, name, endpoints = cluster
    on_leader, on_worker = directory(name, "n1-0"), directory(name, "n1-1")
    assert on_leader | on_worker == endpoints and not on_leader & on_worker
    assert on_leader and on_worker, "the kernel put every device on one worker"
    assert {d["endpoint"] for d in stack.api("GET", "/devices")} == endpoints
    for endpoint in sorted(on_worker)[:3] + sorted(on_leader)[:3]:
        read = stack.api("POST", f"/devices/{endpoint}/read", {"path": "/3/0/0"})
        assert read["ok"], read
        assert stack.api("GET", f"/devices/{endpoint}")["profile"]["tinyml"]


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_rollout_reaches_the_devices_of_both_workers(cluster, mode, capsys):
    stack, name, endpoints = cluster
    code, out, err = stack.cli(capsys, "models", "add", str(MODEL), "--name", f"workers-{mode}", "--version", "1")
    assert code == 0, out + err
    code, out, err = stack.cli(capsys, "deploy", f"workers-{mode}@1", "--endpoint", "w-*", "--canary", "0",
                               "--mode", mode, "--id", f"r-{mode}", "--watch")
    assert code == 0, out + err
    rollout = stack.api("GET", f"/rollouts/r-{mode}")
    assert rollout["state"] == "complete", rollout
    assert {d["endpoint"]: d["status"] for d in rollout["devices"]} == dict.fromkeys(endpoints, "done"), rollout
    for endpoint in endpoints:  # each device runs the model it was given, whichever worker delivered it
        tinyml = stack.api("GET", f"/devices/{endpoint}")["profile"]["tinyml"]
        assert tinyml["active_model_id"] == f"workers-{mode}", (endpoint, tinyml)
