"""Rollouts in one process with real simulated devices: activation failure rolls
back and is reported, failures pause a rollout, declared rollouts are created once."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ipso_objects import ObjectRegistry
from lwm2m_server.config import DeclaredRollout, DeploymentConfig, ServerConfig
from lwm2m_server.daemon import _declare
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.ota import orchestrator as orchestrator_module
from lwm2m_server.ota.orchestrator import Orchestrator
from lwm2m_server.ota.rollouts import RolloutState, Selector, Strategy
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from simulators.client import SimulatedDevice
from simulators.profiles import get_profile

MODEL = Path(__file__).parent / "fixtures" / "models" / "dense_int8.tflite"


class Stack:
    """Store, deployment, server and orchestrator as the daemon wires them."""

    async def start(self, tmp_path: Path, *, awake_window_s: float | None = None) -> Stack:
        self.store = await SqliteStore.open(tmp_path / "state.sqlite3")
        base = ServerConfig()
        deployment_config = DeploymentConfig(data_dir=tmp_path / "data", signing_key=tmp_path / "keys" / "k.pem",
                                             poll_interval_s=0.1, phase_timeout_s=20)
        queue = base.queue if awake_window_s is None else replace(base.queue, awake_window_s=awake_window_s)
        self.config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=5),
                              deployment=deployment_config, queue=queue)
        self.deployment = Deployment(deployment_config, self.store, clock=time.time)
        await self.deployment.start()
        await self._start_server()
        self.anchor = tmp_path / "keys" / "k.pub.pem"
        self.devices: list[SimulatedDevice] = []
        return self

    async def _start_server(self) -> None:
        self.server = LwM2MServer(self.config, ObjectRegistry.default(), self.store,
                                  downloads=self.deployment.download)
        await self.server.start()
        self.orchestrator = Orchestrator(self.server, self.deployment, clock=time.time, interval=0.1)
        await self.orchestrator.start()

    async def restart(self) -> None:
        """Stop the server and the orchestrator as a daemon stop does, and start them
        again on the same port and store (the devices keep running)."""
        port = self.server.port
        await self.orchestrator.stop()
        await self.server.stop()
        self.config = replace(self.config, coap=replace(self.config.coap, port=port))
        await self._start_server()

    async def device(self, endpoint: str, profile) -> SimulatedDevice:
        device = SimulatedDevice(endpoint, profile, f"coap://127.0.0.1:{self.server.port}",
                                 seed=1, sensor_interval=3600, trust_anchors=[self.anchor])
        await device.start()
        self.devices.append(device)
        async with asyncio.timeout(10):
            while self.server.profile(endpoint) is None:
                await asyncio.sleep(0.02)
        return device

    async def wait(self, rollout_id: str, condition, timeout: float = 30.0):
        try:
            async with asyncio.timeout(timeout):
                while True:
                    rollout, devices = self.orchestrator.rollout(rollout_id)
                    if condition(rollout, devices):
                        return rollout, devices
                    await asyncio.sleep(0.05)
        except TimeoutError:
            rollout, devices = self.orchestrator.rollout(rollout_id)
            sims = {d.endpoint: (d.objects.get("/9/0/7"), d.objects.get("/9/0/9"), d.stats.blocks_fetched)
                    for d in self.devices if d.objects.get("/9/0/7") is not None}
            raise AssertionError(f"rollout {rollout_id} did not get there in {timeout} s: {rollout.state}, "
                                 f"devices {[(d.endpoint, d.status.value, d.reason, d.job) for d in devices]}, "
                                 f"simulated (state, result, blocks) {sims}") from None

    async def stop(self) -> None:
        for device in self.devices:
            await device.stop(deregister=False)
        await self.orchestrator.stop()
        await self.server.stop()
        await self.store.close()


@pytest.fixture
async def stack(tmp_path):
    stack = await Stack().start(tmp_path)
    yield stack
    await stack.stop()


def faulty_m4f():
    profile = get_profile("cortex-m4f")
    return replace(profile, name="faulty-m4f", tinyml=replace(profile.tinyml, fail_activation=True))


async def test_failed_activation_rolls_back_and_failures_pause_the_rollout(stack):
    good = await stack.device("m4f-good", "cortex-m4f")
    bad = await stack.device("m4f-bad", faulty_m4f())
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    rollout = await stack.orchestrator.create(
        model.key, Selector(endpoints=("m4f-*",)),
        Strategy(max_in_flight=2, canary_fraction=0, failure_threshold=0.5, mode="push"))
    rollout, devices = await stack.wait(rollout.id, lambda r, ds: all(d.status.value in ("done", "rolled_back") for d in ds))
    status = {d.endpoint: d for d in devices}
    assert status["m4f-good"].status.value == "done"
    assert status["m4f-bad"].status.value == "rolled_back"
    assert "previous model" in status["m4f-bad"].reason
    assert good.objects.get("/26241/0/10") == "dense"
    assert bad.objects.get("/26241/0/10") == "" and bad.objects.get("/9/0/12") is False  # kept the old (none)
    rollout, _ = await stack.wait(rollout.id, lambda r, ds: r.state is RolloutState.PAUSED)
    # the bad device may finish first: the rollout pauses at 1 of 1 or at 1 of 2
    assert re.search(r"1 of [12] finished devices failed \(threshold 50%\)", rollout.paused_reason)


async def test_declared_rollouts_are_created_once(stack, tmp_path):
    await stack.device("gw-1", "linux-gateway")
    declared = DeclaredRollout("dense-gw", MODEL, "dense", "2.0", {"endpoints": ["gw-*"]}, {"mode": "pull"})
    await _declare(stack.orchestrator, stack.deployment, declared)
    await _declare(stack.orchestrator, stack.deployment, declared)  # a restart re-reads the config
    assert [r.id for r in stack.orchestrator.rollouts()] == ["dense-gw"]
    assert stack.orchestrator.rollouts()[0].strategy.follow  # declared: it enrols devices that come later
    _, devices = await stack.wait("dense-gw", lambda r, ds: ds and ds[0].status.value == "done")
    assert devices[0].job["mode"] == "pull"
    await stack.device("gw-2", "linux-gateway")
    rollout, devices = await stack.wait("dense-gw", lambda r, ds: len(ds) == 2 and ds[1].status.value == "done")
    assert rollout.state is RolloutState.RUNNING
    once = DeclaredRollout("dense-once", MODEL, "dense", "3.0", {"endpoints": ["gw-1"]}, {"follow": False})
    await _declare(stack.orchestrator, stack.deployment, once)
    await stack.wait("dense-once", lambda r, ds: r.state is RolloutState.COMPLETE)


@pytest.mark.parametrize("mode", ["push", "pull"])
async def test_firmware_rollout_updates_the_device_firmware(stack, mode):
    device = await stack.device("m4f-fw", "cortex-m4f")
    image = bytes(range(256)) * 40  # 10 KiB "firmware"
    firmware = await stack.deployment.add_model(image, "acme-fw", "2.2.0", "firmware")
    rollout = await stack.orchestrator.create(firmware.key, Selector(), Strategy(canary_fraction=0, mode=mode))
    _, devices = await stack.wait(rollout.id, lambda r, ds: ds and ds[0].status.value in ("done", "failed"), 60)
    assert devices[0].status.value == "done", devices[0].reason
    assert devices[0].job["target"] == "fota" and devices[0].job["mode"] == mode
    assert device.objects.get("/3/0/3") == "2.2.0"


async def test_devices_that_come_later_are_enrolled_from_their_events_not_by_listing_every_tick(stack):
    await stack.device("gw-1", "linux-gateway")
    listed = []
    registrations = stack.server.registrations
    stack.server.registrations = lambda: listed.append(1) or registrations()
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "4.0")
    rollout = await stack.orchestrator.create(model.key, Selector(endpoints=("gw-*",)),
                                              Strategy(canary_fraction=0, mode="pull", follow=True))
    await stack.wait(rollout.id, lambda r, ds: ds and ds[0].status.value == "done")
    await stack.device("gw-2", "linux-gateway")
    _, devices = await stack.wait(rollout.id, lambda r, ds: len(ds) == 2 and ds[1].status.value == "done")
    assert [d.endpoint for d in devices] == ["gw-1", "gw-2"]
    assert len(listed) == 1, "only the rollout's first tick lists every registration"


async def test_a_device_whose_event_was_missed_is_enrolled_by_the_periodic_sweep(stack, monkeypatch):
    monkeypatch.setattr(orchestrator_module, "FULL_SWEEP_S", 0.5)
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "5.0")
    rollout = await stack.orchestrator.create(model.key, Selector(endpoints=("gw-*",)),
                                              Strategy(canary_fraction=0, mode="pull", follow=True))
    stack.orchestrator._watching.cancel()  # as if its events were dropped (a full queue)
    await stack.device("gw-3", "linux-gateway")
    _, devices = await stack.wait(rollout.id, lambda r, ds: ds and ds[0].status.value == "done")
    assert [d.endpoint for d in devices] == ["gw-3"]
