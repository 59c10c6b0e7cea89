"""schemathesis against a live daemon (``tinymlaas serve`` on ephemeral ports, with a
simulated device registered so device operations reach a device): bounded to a few
hundred requests, it must find no 5xx, no undocumented status code or content
type, and no answer that violates the OpenAPI document it reads from the daemon's
``/api/v1/openapi.json``.

Left out: ``GET /events`` and ``GET /events/sse`` (streams that last until the
client leaves; schemathesis would wait for their end).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_daemon import Daemon

SEED = 13
MAX_EXAMPLES = 10
"""Per operation: with the examples phase about 280 requests, a few seconds (the coverage phase,
``--phases examples,coverage,fuzzing``, adds ~700 more and passes too)."""
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,negative_data_rejection")
ENDPOINT = "sensor-1"
"""The simulated device; the document's example for ``{ep}``, so the examples phase reaches it."""


def _registered(daemon: Daemon, token: str) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.api_port}/api/v1/devices/{ENDPOINT}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def live(tmp_path: Path):
    if shutil.which("st", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    daemon = Daemon(tmp_path)
    daemon.start()
    token = (tmp_path / "data" / "api-token").read_text().strip()
    device = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "device", "--profile", "cortex-m4f", "--endpoint", ENDPOINT,
         "--server", f"coap://127.0.0.1:{daemon.coap_port}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _registered(daemon, token):
            assert time.monotonic() < deadline, "the simulated device did not register"
            assert device.poll() is None, "the simulated device exited"
            time.sleep(0.2)
        yield daemon, token
    finally:
        device.terminate()
        device.wait(timeout=10)
        daemon.kill()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(live, tmp_path):
    daemon, token = live
    base = f"http://127.0.0.1:{daemon.api_port}"
    # One worker: with two threads, hypothesis's concurrent ast.parse trips CPython 3.11's
    # process-wide AST recursion counter ("AST constructor recursion depth mismatch").
    command = [
        str(Path(sys.executable).parent / "st"), "run", f"{base}/api/v1/openapi.json", "--url", base,
        "-H", f"Authorization: Bearer {token}", "--checks", CHECKS,
        "--phases", "examples,fuzzing", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--workers", "1", "--request-timeout", "20", "--no-shrink", "--continue-on-failure",
        "--exclude-path", "/api/v1/events", "--exclude-path", "/api/v1/events/sse",
        "--suppress-health-check", "all", "--warnings", "off",
    ]
    started = time.monotonic()
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    took = time.monotonic() - started
    tracebacks = [line for line in daemon.lines if "api_request_failed" in line]  # the API's own 500 log
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
    assert not tracebacks, tracebacks[:3]
    assert took < 120, f"the bounded run took {took:.0f} s"
