"""Firmware rollouts to a standard LwM2M client: a device with /5 and no TinyML
object gets the raw image (no SUIT envelope), by push or by pull, and the rollout
ends when the device reports the new package version in /5/0/7.

The device is tests/peers/fw_client.py, which imports nothing of ours and keeps
its stack version in /3/0/3, as Wakaama and Anjay clients do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lwm2m_server.core.capabilities import FIRMWARE_RESULTS
from lwm2m_server.ota.rollouts import Selector, Strategy
from peers.fw_client import FirmwarePeer, make_image
from test_orchestrator import Stack

IMAGE = make_image("acme-fw", "2.2.0", bytes(range(256)) * 80)  # 20 KiB and a header the device reads


@pytest.fixture
async def stack(tmp_path):
    stack = await Stack().start(tmp_path)
    yield stack
    await stack.stop()


async def peer(stack: Stack, endpoint: str, **options) -> FirmwarePeer:
    device = FirmwarePeer("127.0.0.1", stack.server.port, endpoint, update_delay=0.1, **options)
    await device.start()
    async with asyncio.timeout(10):
        while stack.server.profile(endpoint) is None:
            await asyncio.sleep(0.02)
    return device


async def roll_out(stack: Stack, image: bytes, version: str, endpoint: str, **strategy):
    model = await stack.deployment.add_model(image, "acme-fw", version, "firmware")
    rollout = await stack.orchestrator.create(
        model.key, Selector(endpoints=(endpoint,), labels={"manufacturer": "TinyMLaaS test peer"}),
        Strategy(max_in_flight=1, canary_fraction=0, **strategy))
    _, devices = await stack.wait(rollout.id, lambda r, ds: ds and all(d.status.value in ("done", "failed", "incompatible")
                                                                      for d in ds), timeout=30)
    return devices[0]


@pytest.mark.parametrize("mode", ["push", "pull"])
async def test_a_standard_client_takes_the_raw_image_and_the_rollout_ends_done(stack, mode):
    device = await peer(stack, f"std-{mode}")
    try:
        profile = stack.server.profile(device.endpoint)
        assert profile.tinyml is None and profile.firmware_object and profile.package_version == ""
        assert profile.device_class == "fw-tinymlaas-test-peer-fw-peer-hw-1"
        result = await roll_out(stack, IMAGE, "2.2.0", device.endpoint, mode=mode)
        assert (result.status.value, result.reason) == ("done", "")
        assert result.package == "raw image: the device declares no SUIT support"
        assert device.installed_image == IMAGE  # byte for byte: no envelope around it
        assert device.values[(5, 0)][7] == "2.2.0" and device.values[(5, 0)][5] == 1
        assert device.values[(3, 0)][3] == "peer-1.0"  # the stack version never changes
        written = {e["path"] for e in device.events if e["event"] == "write"}
        assert written == ({"/5/0/0"} if mode == "push" else {"/5/0/1"})
    finally:
        await device.stop()


async def test_a_package_version_other_than_the_rollouts_fails_it_in_words(stack):
    device = await peer(stack, "std-mismatch")
    try:
        result = await roll_out(stack, make_image("acme-fw", "2.1.9", b"x" * 2000), "2.2.0", device.endpoint,
                                mode="push", max_attempts=1)
        assert result.status.value == "failed"
        assert "device reports package version '2.1.9', expected '2.2.0'" in result.reason
    finally:
        await device.stop()


async def test_an_update_result_is_reported_in_words(stack):
    device = await peer(stack, "std-picky", image_check=lambda image: 5)  # its own image check fails
    try:
        result = await roll_out(stack, IMAGE, "2.2.0", device.endpoint, mode="push", max_attempts=1)
        assert result.status.value == "failed"
        assert result.reason.endswith("device reports update result 5: integrity check failure")
        assert FIRMWARE_RESULTS[5] == "integrity check failure"
    finally:
        await device.stop()


async def test_the_version_check_can_be_the_firmware_version_or_none(stack):
    device = await peer(stack, "std-checks")
    try:
        # the device keeps its stack version in /3/0/3: checking it can never succeed
        result = await roll_out(stack, IMAGE, "2.2.0", device.endpoint, mode="push", max_attempts=1,
                                version_check="firmware")
        assert result.status.value == "failed" and "firmware version 'peer-1.0', expected '2.2.0'" in result.reason
        unnamed = b"raw image without a header the device reads" * 50
        result = await roll_out(stack, unnamed, "2.3.0", device.endpoint, mode="push", version_check="none")
        assert result.status.value == "done" and device.installed_image == unnamed
    finally:
        await device.stop()


async def test_free_storage_decides_whether_an_image_fits(stack):
    full = await peer(stack, "std-full")
    full.values[(3, 0)][10] = 4  # Memory Free: 4 KB
    await stack.server.rediscover(full.endpoint)
    try:
        result = await roll_out(stack, IMAGE, "2.2.0", full.endpoint)
        assert result.status.value == "incompatible"
        assert result.reason == f"incompatible: firmware image is {len(IMAGE)} B, device has 4096 B of storage free"
        assert full.installed_image is None
    finally:
        await full.stop()


def test_the_cli_rolls_firmware_out_to_a_standard_client_of_the_daemon(tmp_path):
    """README "Real devices": models add --format firmware, deploy --where, rollouts, device."""
    import subprocess
    import sys
    import time

    from test_daemon import Daemon, cli

    daemon = Daemon(tmp_path)
    daemon.start()
    image = tmp_path / "acme-fw-2.2.0.bin"
    image.write_bytes(IMAGE)
    device = subprocess.Popen(
        [sys.executable, "-m", "peers.fw_client", "--server", f"coap://127.0.0.1:{daemon.coap_port}",
         "--endpoint", "acme-0001", "--update-delay", "0.1"],
        cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while "acme-0001" not in cli("devices", cwd=tmp_path).stdout or \
                "fw-tinymlaas-test-peer" not in cli("device", "acme-0001", cwd=tmp_path).stdout:
            assert time.monotonic() < deadline, "the device did not register and get discovered"
            time.sleep(0.2)
        added = cli("models", "add", str(image), "--name", "acme-fw", "--version", "2.2.0", "--format", "firmware",
                    cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        bad = cli("deploy", "acme-fw@2.2.0", "--where", "colour=red", cwd=tmp_path)
        assert bad.returncode != 0 and "--where 'colour=red': give KEY=VALUE with KEY one of manufacturer" in bad.stderr
        deployed = cli("deploy", "acme-fw@2.2.0", "--where", "manufacturer=TinyMLaaS test peer,model=fw-peer",
                       "--mode", "push", "--canary", "0", "--watch", cwd=tmp_path)
        assert deployed.returncode == 0, deployed.stderr
        rollouts = cli("rollouts", cwd=tmp_path).stdout
        rollout_id = rollouts.split()[0]
        shown = cli("rollouts", rollout_id, cwd=tmp_path).stdout
        assert "acme-0001" in shown and "done" in shown
        assert "gets a raw image: the device declares no SUIT support" in shown
        view = cli("device", "acme-0001", cwd=tmp_path).stdout
        assert "package       acme-fw 2.2.0  (/5/0/6, /5/0/7)" in view
        assert "update result 1: firmware updated successfully" in view
        assert "firmware version (/3/0/3) peer-1.0" in view
    finally:
        device.terminate()
        device.wait(timeout=10)
        daemon.kill()
