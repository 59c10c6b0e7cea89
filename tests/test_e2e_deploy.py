"""End to end: the daemon (a subprocess) and 30 simulated devices in three classes.
One rollout of a real .tflite model: every compatible device ends up running it
and reporting inferences, the too-small class is marked incompatible without any
push, push and pull are both used, and the rollout survives a SIGKILL of the daemon."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

import pytest

from simulators.client import SimulatedDevice
from test_daemon import Daemon

MODEL = Path(__file__).parent / "fixtures" / "models" / "wide_int8.tflite"
CLASSES = {"cortex-m0plus": "m0p", "cortex-m4f": "m4f", "linux-gateway": "gw"}
PER_CLASS = 10


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.base = f"http://127.0.0.1:{daemon.api_port}/api/v1"
        self.token = (daemon.folder / "data" / "api-token").read_text().strip()

    def _call(self, method: str, path: str, body=None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    async def call(self, method: str, path: str, body=None, raw: bytes | None = None):
        return await asyncio.to_thread(self._call, method, path, body, raw)


async def wait_for(check, timeout: float, what: str):
    async with asyncio.timeout(timeout):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.3)


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path)
    config = daemon.folder / "server.yaml"
    config.write_text(config.read_text() + "deployment: {poll_interval_s: 0.2, phase_timeout_s: 60}\n")
    yield daemon
    if daemon.process and daemon.process.poll() is None:
        daemon.kill()


async def test_rollout_to_a_mixed_fleet_survives_a_daemon_sigkill(daemon):
    await asyncio.to_thread(daemon.start)
    api = Api(daemon)
    anchor = daemon.folder / "data" / "keys" / "signing-es256.pub.pem"
    devices: dict[str, SimulatedDevice] = {}
    try:
        for profile, prefix in CLASSES.items():
            for i in range(PER_CLASS):
                endpoint = f"{prefix}-{i:02d}"
                device = SimulatedDevice(endpoint, profile, f"coap://127.0.0.1:{daemon.coap_port}",
                                         seed=i, sensor_interval=3600, trust_anchors=[anchor])
                await device.start()
                devices[endpoint] = device

        async def all_discovered():
            listed = [await api.call("GET", f"/devices/{ep}") for ep in devices]
            return all(d["profile"] and d["profile"]["tinyml"] for d in listed)

        await wait_for(all_discovered, 60, "discovery")
        model = await api.call("POST", "/models?name=wide&version=1.0.0", raw=MODEL.read_bytes())
        assert model["digest"]
        rollout = await api.call("POST", "/rollouts", {
            "model": "wide@1.0.0", "strategy": {"max_in_flight": 4, "canary_fraction": 0.1, "mode": "auto"}})
        rollout_id = rollout["id"]

        async def some_done():
            state = await api.call("GET", f"/rollouts/{rollout_id}")
            return state["summary"]["counts"].get("done", 0) >= 3 and state

        before_kill = await wait_for(some_done, 120, "first deliveries")
        assert before_kill["summary"]["finished"] < before_kill["summary"]["total"]
        assert daemon.kill(signal.SIGKILL) == -signal.SIGKILL
        await asyncio.to_thread(daemon.start)

        async def finished():
            state = await api.call("GET", f"/rollouts/{rollout_id}")
            summary = state["summary"]
            return summary["total"] == 3 * PER_CLASS and summary["finished"] == summary["total"] and state

        final = await wait_for(finished, 240, "rollout end")
        (restarted,) = daemon.events("orchestrator_started")[-1:]
        assert restarted["rollouts"] == 1  # the restarted daemon picked the rollout up
        counts = final["summary"]["counts"]
        assert counts == {"done": 2 * PER_CLASS, "incompatible": PER_CLASS}, final["devices"]
        by_endpoint = {d["endpoint"]: d for d in final["devices"]}
        for endpoint, device in devices.items():
            record = by_endpoint[endpoint]
            if endpoint.startswith("m0p"):
                assert record["status"] == "incompatible" and "arena" in record["reason"]
                assert device.objects.get("/9/0/7") == 0 and not device.objects.updates.transitions
                continue
            assert record["status"] == "done"
            assert record["mode"] == ("push" if endpoint.startswith("m4f") else "pull")
            assert device.objects.get("/26241/0/10") == "wide"
            assert device.objects.get("/26241/0/11") == "1.0.0"
        assert any(d.stats.blocks_fetched for ep, d in devices.items() if ep.startswith("gw"))

        for endpoint in ("m4f-00", "gw-00"):  # inference on demand, results reported
            result = await api.call("POST", f"/devices/{endpoint}/execute", {"path": "/26241/0/18"})
            assert result["ok"], result
            read = await api.call("POST", f"/devices/{endpoint}/read", {"path": "/26241/0"})
            values = {row["path"]: row["value"] for row in read["values"]}
            assert json.loads(values["/26241/0/14"]) and values["/26241/0/16"] >= 1
            assert values["/26241/0/15"] > 0
    finally:
        for device in devices.values():
            await device.stop(deregister=False)
