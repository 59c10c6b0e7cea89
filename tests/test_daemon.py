"""The daemon as operators run it: ``tinymlaas serve`` in a subprocess, the CLI against
its API, a SIGKILL and a restart that keeps every registration, and config errors."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Code, Message, resource

ROOT = Path(__file__).parent.parent


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lwm2m_server.cli", *args, "--config", "server.yaml"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )


class Daemon:
    def __init__(self, folder: Path, extra: str = "", workers: int = 1, host: str = "127.0.0.1") -> None:
        self.folder = folder
        self.coap_port = free_port(socket.SOCK_DGRAM)
        self.coaps_port = free_port(socket.SOCK_DGRAM)
        self.api_port = free_port(socket.SOCK_STREAM)
        (folder / "server.yaml").write_text(
            f'coap: {{host: "{host}", port: {self.coap_port}, secure_port: {self.coaps_port}, workers: {workers}}}\n'
            f"api: {{port: {self.api_port}}}\nlogging: {{format: json}}\n{extra}"
        )
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
            cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 30
        for line in self.process.stdout:
            self.lines.append(line)
            if '"event": "ready"' in line:
                # keep reading, or a chatty daemon blocks once the pipe is full
                threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()
                return
            assert time.monotonic() < deadline, "daemon did not become ready"
        raise AssertionError(f"daemon exited with {self.process.wait()}")

    def _drain(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)

    def events(self, name: str) -> list[dict]:
        """The daemon's JSON log records of event ``name``."""
        found = []
        for line in self.lines:
            if f'"event": "{name}"' in line:
                found.append(json.loads(line))
        return found

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path)
    yield daemon
    if daemon.process and daemon.process.poll() is None:
        daemon.kill()


async def register_many(port: int, count: int) -> None:
    context = await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", 0), transports=["udp6"])
    try:
        requests = [
            context.request(Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/rd?ep=dev-{i:03d}&lt=600",
                                    payload=b"</1/0>,</3/0>,</3303/0>")).response
            for i in range(count)
        ]
        responses = await asyncio.gather(*requests)
        assert all(r.code == Code.CREATED for r in responses)
    finally:
        await context.shutdown()


def test_sigkill_and_restart_keep_every_registration(daemon):
    daemon.start()
    asyncio.run(register_many(daemon.coap_port, 50))
    listed = cli("devices", "--json", cwd=daemon.folder)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 50

    assert daemon.kill(signal.SIGKILL) == -signal.SIGKILL
    daemon.start()
    table = cli("devices", cwd=daemon.folder)
    assert table.returncode == 0 and "50 device(s)" in table.stdout
    assert "dev-049" in table.stdout
    assert daemon.kill(signal.SIGTERM) == 0  # a clean stop on SIGTERM


def test_cli_without_daemon_explains(tmp_path):
    (tmp_path / "server.yaml").write_text(f"api: {{port: {free_port(socket.SOCK_STREAM)}, token: {'x' * 20}}}\n")
    result = cli("devices", cwd=tmp_path)
    assert result.returncode == 1 and "cannot reach the daemon" in result.stderr


def test_invalid_config_exits_2_with_one_line(tmp_path):
    (tmp_path / "server.yaml").write_text("coap:\n  port: seventy\n")
    result = subprocess.run(
        [sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "server.yaml: coap.port:" in result.stderr and "'seventy'" in result.stderr


def api_call(daemon: Daemon, method: str, path: str, token: str | None, body: dict | None = None):
    """(status, body text) of one API request."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{daemon.api_port}/api/v1{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_secrets_stay_out_of_logs_and_answers_and_a_device_gets_in_over_coaps(daemon):
    from simulators.client import SimulatedDevice

    daemon.start()
    token = (daemon.folder / "data" / "api-token").read_text().strip()
    wrong = "wrong-token-" + "z" * 20
    key = "8f1c33a09b7e4d2e5a6b7c8d9e0f1a2b"

    assert api_call(daemon, "GET", "/devices", None)[0] == 401
    assert api_call(daemon, "GET", "/devices", wrong)[0] == 401
    status, stored = api_call(daemon, "PUT", "/credentials/sec-1", token, {"identity": "sec-1", "key": key})
    assert status == 201
    answers = [stored, api_call(daemon, "GET", "/credentials", token)[1],
               api_call(daemon, "PUT", "/credentials/sec-2", token, {"identity": "sec-1", "key": key})[1]]
    listed = cli("credentials", "list", cwd=daemon.folder)
    shown = cli("config", "show", cwd=daemon.folder)

    async def register() -> None:
        device = SimulatedDevice("sec-1", "cortex-m4f", f"coaps://127.0.0.1:{daemon.coaps_port}",
                                 psk=("sec-1", bytes.fromhex(key)), request_timeout=10, sensor_interval=3600)
        await device.start()
        await device.stop()

    asyncio.run(register())
    assert daemon.events("registered")[-1]["identity"] == "sec-1"
    assert daemon.events("dtls_session_started")

    private_key = (daemon.folder / "data" / "keys" / "signing-es256.pem").read_text()
    body = "".join(line for line in private_key.splitlines() if not line.startswith("-----"))
    daemon.kill(signal.SIGTERM)
    logs = "".join(daemon.lines)
    for where, text in [("daemon log", logs), ("API answers", "".join(answers)),
                        ("credentials list", listed.stdout + listed.stderr), ("config show", shown.stdout)]:
        for secret in (token, wrong, key, key.upper(), body[:40]):
            assert secret not in text, f"a secret appears in the {where}"


def test_a_device_bootstraps_from_the_daemon_and_trusts_its_signing_key(daemon):
    from cryptography.hazmat.primitives import serialization

    from simulators.client import SimulatedDevice

    daemon.start()
    key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    added = cli("credentials", "add", "boot-1", "--bootstrap", "--identity", "boot-1-bs", "--key", key,
                cwd=daemon.folder)
    assert added.returncode == 0, added.stderr

    async def bootstrap() -> list[bytes]:
        device = SimulatedDevice("boot-1", "cortex-m4f", bootstrap_uri=f"coaps://127.0.0.1:{daemon.coaps_port}",
                                 bootstrap_psk=("boot-1-bs", bytes.fromhex(key)), request_timeout=10,
                                 sensor_interval=3600)
        await device.start()
        try:
            assert device.server_uri == f"coaps://127.0.0.1:{daemon.coaps_port}"
            shown = await asyncio.to_thread(cli, "device", "boot-1", cwd=daemon.folder)
            assert "security      psk  identity boot-1" in shown.stdout, shown.stdout + shown.stderr
            return [anchor.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                    for anchor in device.objects.updates.trust.anchors]
        finally:
            await device.stop()

    anchors = asyncio.run(bootstrap())
    signing = serialization.load_pem_private_key(
        (daemon.folder / "data" / "keys" / "signing-es256.pem").read_bytes(), None).public_key()
    assert anchors == [signing.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)]
    assert daemon.events("bootstrap_finished") and daemon.events("registered")[-1]["identity"] == "boot-1"
    listed = cli("credentials", "list", "--json", cwd=daemon.folder)
    assert {(c["endpoint"], c["scope"]) for c in json.loads(listed.stdout)} == {("boot-1", "bootstrap"),
                                                                                ("boot-1", "server")}


def test_a_second_daemon_on_the_same_data_folder_exits_2_naming_the_holder(daemon, tmp_path):
    daemon.start()
    second = tmp_path / "second"
    second.mkdir()
    # its own ports, the first one's data folder
    (second / "server.yaml").write_text(
        f'coap: {{host: "127.0.0.1", port: 0, secure_port: null}}\napi: {{port: 0}}\n'
        f'deployment: {{data_dir: "{tmp_path / "data"}"}}\n')
    result = subprocess.run([sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
                            cwd=second, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"tinymlaas: {(tmp_path / 'data').resolve()} is in use by another tinymlaas daemon "
                             f"(pid {daemon.process.pid}): one daemon per data folder\n")
    assert daemon.process.poll() is None  # the first one runs on
    daemon.kill(signal.SIGKILL)
    restarted = Daemon(tmp_path)  # a SIGKILL leaves no stale lock behind
    restarted.start()
    restarted.kill()


def test_the_bootstrap_server_on_a_coaps_port_of_its_own_sends_devices_to_the_servers_port(tmp_path):
    """bootstrap.secure_port: the device bootstraps there and registers, on a new DTLS session
    with its server PSK, at coap.secure_port (the URI the Bootstrap-Server wrote)."""
    from simulators.client import SimulatedDevice

    bootstrap_port = free_port(socket.SOCK_DGRAM)
    daemon = Daemon(tmp_path, f"bootstrap: {{secure_port: {bootstrap_port}}}\n")
    try:
        daemon.start()
        ready = daemon.events("ready")[-1]
        assert (ready["coaps_port"], ready["bootstrap_secure_port"]) == (daemon.coaps_port, bootstrap_port)
        key = "00112233445566778899aabbccddeeff"
        added = cli("credentials", "add", "own-1", "--bootstrap", "--identity", "own-1-bs", "--key", key,
                    cwd=daemon.folder)
        assert added.returncode == 0, added.stderr

        async def bootstrap() -> str:
            device = SimulatedDevice("own-1", "cortex-m0plus", bootstrap_uri=f"coaps://127.0.0.1:{bootstrap_port}",
                                     bootstrap_psk=("own-1-bs", bytes.fromhex(key)), request_timeout=10,
                                     sensor_interval=3600)
            await device.start()
            try:
                return device.server_uri
            finally:
                await device.stop()

        assert asyncio.run(bootstrap()) == f"coaps://127.0.0.1:{daemon.coaps_port}"
        assert daemon.events("bootstrap_finished")[-1]["content_format"] == "TLV (11542)"
        assert daemon.events("registered")[-1]["identity"] == "own-1"  # the server PSK, not own-1-bs
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.kill()


@pytest.mark.parametrize("key", ["coap.port", "coap.secure_port", "bootstrap.port", "bootstrap.secure_port",
                                 "api.port"])
def test_a_port_in_use_is_named_by_its_key_protocol_and_address(tmp_path, key):
    """Another process holds one of the daemon's ports: it exits 1 with one line naming
    the key, the protocol and the address, not a bare ``[Errno 98] Address already in use``."""
    kind = socket.SOCK_STREAM if key == "api.port" else socket.SOCK_DGRAM
    bootstrap_port, bootstrap_secure_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    daemon = Daemon(tmp_path, f"bootstrap: {{port: {bootstrap_port}, secure_port: {bootstrap_secure_port}}}\n")
    port = {"coap.port": daemon.coap_port, "coap.secure_port": daemon.coaps_port, "api.port": daemon.api_port,
            "bootstrap.port": bootstrap_port, "bootstrap.secure_port": bootstrap_secure_port}[key]
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        result = subprocess.run([sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
    protocol = "TCP" if kind == socket.SOCK_STREAM else "UDP"
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"tinymlaas: {key}: {protocol} 127.0.0.1:{port} is in use by another process")
    assert "Traceback" not in result.stderr + result.stdout
