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
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.coap_port = free_port(socket.SOCK_DGRAM)
        self.api_port = free_port(socket.SOCK_STREAM)
        (folder / "server.yaml").write_text(
            f'coap: {{host: "127.0.0.1", port: {self.coap_port}}}\n'
            f"api: {{port: {self.api_port}}}\nlogging: {{format: json}}\n"
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
