"""The whole flow over DTLS PSK after bootstrapping, in one process as the daemon wires it.

A device made in the factory knows only its Bootstrap-Server account (a coaps://
URI and a bootstrap PSK). It bootstraps over CoAPS, receives its LwM2M server
account (a fresh server PSK) and the key modules are signed with, registers over
CoAPS with that PSK, is discovered, and takes an inference module pulled and one
pushed over its DTLS session; the model then runs. Nothing goes over plain CoAP:
the server runs in secure-only mode.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations as ops
from lwm2m_server.config import DeploymentConfig, ServerConfig
from lwm2m_server.security.credentials import CredentialStore, PskCredential
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.ota.orchestrator import Orchestrator
from lwm2m_server.ota.rollouts import Selector, Strategy
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from simulators.client import SimulatedDevice

pytest.importorskip("DTLSSocket.dtls", reason="CoAPS needs DTLSSocket (tinydtls)")

MODEL = Path(__file__).parent / "fixtures" / "models" / "dense_int8.tflite"
BOOTSTRAP_KEY = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")


class SecureStack:
    async def start(self, tmp_path: Path) -> SecureStack:
        self.store = await SqliteStore.open(tmp_path / "state.sqlite3")
        self.credentials = CredentialStore(tmp_path / "credentials.sqlite3")
        base = ServerConfig()
        deployment = DeploymentConfig(data_dir=tmp_path / "data", signing_key=tmp_path / "keys" / "k.pem",
                                      poll_interval_s=0.1, phase_timeout_s=20)
        config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, secure_port=0, request_timeout_s=5),
                         security=replace(base.security, mode="secure-only"), deployment=deployment)
        self.deployment = Deployment(deployment, self.store, clock=time.time)
        await self.deployment.start()
        self.server = LwM2MServer(config, ObjectRegistry.default(), self.store,
                                  downloads=self.deployment.download, credentials=self.credentials)
        await self.server.start()
        self.orchestrator = Orchestrator(self.server, self.deployment, clock=time.time, interval=0.1)
        await self.orchestrator.start()
        self.devices: list[SimulatedDevice] = []
        return self

    def factory_device(self, endpoint: str, key: bytes = BOOTSTRAP_KEY) -> SimulatedDevice:
        """A device that knows only its bootstrap account (no trust anchor either)."""
        device = SimulatedDevice(endpoint, "cortex-m4f", bootstrap_uri=f"coaps://127.0.0.1:{self.server.secure_port}",
                                 bootstrap_psk=(f"{endpoint}-bs", key), seed=1, sensor_interval=3600,
                                 request_timeout=5, bootstrap_timeout=20)
        self.devices.append(device)
        return device

    async def stop(self) -> None:
        for device in self.devices:
            await device.stop(deregister=False)
        await self.orchestrator.stop()
        await self.server.stop()
        await self.store.close()
        self.credentials.close()


@pytest.fixture
async def stack(tmp_path):
    stack = await SecureStack().start(tmp_path)
    yield stack
    await stack.stop()


async def wait_for(condition, timeout: float = 30.0):
    async with asyncio.timeout(timeout):
        while not (value := condition()):
            await asyncio.sleep(0.05)
    return value


async def deploy(stack: SecureStack, endpoint: str, mode: str, version: str) -> None:
    """Roll model ``dense@version`` out to ``endpoint`` by ``mode`` and wait until it is done."""
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", version)
    rollout = await stack.orchestrator.create(model.key, Selector(endpoints=(endpoint,)),
                                              Strategy(canary_fraction=0, mode=mode), rollout_id=f"{endpoint}-{mode}")
    devices = await wait_for(lambda: [d for d in stack.orchestrator.rollout(rollout.id)[1]
                                      if d.status.value in ("done", "failed", "rolled_back")])
    assert devices[0].status.value == "done", devices[0].reason
    assert devices[0].job["mode"] == mode
    assert endpoint not in stack.server.downloads.granted()  # delivered: the module is no longer served to it


async def test_bootstrap_register_deploy_and_infer_over_dtls_psk(stack):
    stack.credentials.add(PskCredential("m4f-1", "m4f-1-bs", BOOTSTRAP_KEY, "bootstrap"), now=1.0)
    device = stack.factory_device("m4f-1")
    assert device.objects.updates.trust.anchors == ()  # it could verify no module yet
    await device.start()
    assert len(device.objects.updates.trust.anchors) == 1  # the server's signing key, from bootstrap

    # bootstrap gave it a server account over CoAPS with a fresh PSK the server stored
    server_credential = stack.credentials.for_endpoint("m4f-1", "server")
    assert server_credential is not None and server_credential.key != BOOTSTRAP_KEY
    assert device.server_uri == f"coaps://127.0.0.1:{stack.server.secure_port}"
    assert device.psk == (server_credential.identity.encode(), server_credential.key)
    registration = stack.server.registration("m4f-1")
    assert registration.identity == server_credential.identity
    assert registration.address.startswith("coaps://")
    await wait_for(lambda: stack.server.profile("m4f-1"))  # capability discovery over DTLS

    for mode, version in (("pull", "1.0"), ("push", "1.1")):
        await deploy(stack, "m4f-1", mode, version)
        assert device.objects.get("/26241/0/11") == version  # verified with the anchor bootstrap wrote

    run = await stack.server.perform(
        "m4f-1", lambda reg: ops.execute(reg, LwM2MPath.parse("/26241/0/18"), registry=stack.server.registry))
    assert run.code == "2.04"
    await wait_for(lambda: device.objects.get("/26241/0/16"))  # an inference ran
    assert device.objects.get("/26241/0/14")  # and its result is there for the server to read


async def test_an_oscore_device_takes_a_pulled_and_a_pushed_module(stack, tmp_path):
    """Pull blocks are GETs the device protects with its OSCORE context, on coap://."""
    from lwm2m_server.security.credentials import oscore_credential
    from simulators import oscore as device_oscore

    secret, server_id, device_id = bytes(range(16)), b"\x01", b"\x0b"
    stack.credentials.add_oscore(oscore_credential("m4f-os", sender_id=server_id, recipient_id=device_id,
                                                   master_secret=secret), now=1.0)
    folder = device_oscore.provision(tmp_path / "device-oscore", master_secret=secret, sender_id=device_id,
                                     recipient_id=server_id)
    device = SimulatedDevice("m4f-os", "cortex-m4f", f"coap://127.0.0.1:{stack.server.port}", oscore=folder,
                             trust_anchors=[tmp_path / "keys" / "k.pub.pem"], seed=1, sensor_interval=3600,
                             request_timeout=5)
    stack.devices.append(device)
    await device.start()
    assert stack.server.registration("m4f-os").identity == "oscore:0b"
    await wait_for(lambda: stack.server.profile("m4f-os"))
    for mode, version in (("pull", "2.0"), ("push", "2.1")):
        await deploy(stack, "m4f-os", mode, version)
        assert device.objects.get("/26241/0/11") == version
