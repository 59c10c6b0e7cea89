"""The ``tinymlaas`` command line end to end: the daemon (``tinymlaas serve``, a
subprocess) and a simulated fleet (``tinymlaas-sim fleet``, a subprocess), operated
through the CLI's ``main(argv)`` as a user types it, for each command of README's
CLI table: read, write, exec, observe, queue, models, deploy (``--watch``: progress,
exit status, a selector that matches nothing), rollouts (list, show,
pause/resume/cancel, ``--watch`` on a terminal), keys, objects, devices, device,
discover, attributes, create, delete, credentials (import, add, list, remove on the
running daemon's store), and ``tinymlaas-sim`` profiles, credentials and device
(``--bootstrap`` and ``--psk`` over CoAPS); and the API's ``/events``. Also the help
texts, and one state vocabulary.

One daemon and one fleet serve the whole module (a few seconds to start); the tests
that change a rollout's state use rollouts of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from lwm2m_server.cli import progress
from lwm2m_server.cli.main import build_parser, main as cli_main
from lwm2m_server.ota.rollouts import DeviceStatus, RolloutState
from test_daemon import Daemon

ROOT = Path(__file__).parent.parent
MODEL = Path(__file__).parent / "fixtures" / "models" / "wide_int8.tflite"
ENDPOINTS = {"m0p-0001", "m4f-0001", "m4f-0002", "gw-0001", "bad-0001"}
FLEET = [  # one queue-mode m0p (too small for the model), two m4f, a gateway, and an m4f whose activations fail
    {"profile": "cortex-m0plus", "count": 1, "endpoint_prefix": "m0p"},
    {"profile": "cortex-m4f", "count": 2, "endpoint_prefix": "m4f"},
    {"profile": "linux-gateway", "count": 1, "endpoint_prefix": "gw"},
    {"profile": "faulty-m4f", "count": 1, "endpoint_prefix": "bad"},
]
COMPATIBLE = ["--endpoint", "m0p-*", "--endpoint", "m4f-*", "--endpoint", "gw-*"]


class Stack:
    def __init__(self, daemon: Daemon, fleet: subprocess.Popen) -> None:
        self.daemon, self.fleet = daemon, fleet
        self.url = f"http://127.0.0.1:{daemon.api_port}"
        self.token = (daemon.folder / "data" / "api-token").read_text().strip()

    def api(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def cli(self, capsys, *args: str) -> tuple[int, str, str]:
        """``tinymlaas ARGS --api URL --token T``: exit status, stdout, stderr."""
        capsys.readouterr()
        code = cli_main([*args, "--api", self.url, f"--token={self.token}"])
        out, err = capsys.readouterr()
        return code, out, err


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def fleet_config(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "config" / "fleet.yaml").read_text())
    profiles = data["profiles"]
    for profile in profiles.values():
        profile["sensor_interval"] = 0.5
        profile["tinyml"]["inference_period"] = 1
    profiles["cortex-m0plus"]["lifetime"] = 5  # a queue-mode device that wakes with an Update every ~4 s
    faulty = copy.deepcopy(profiles["cortex-m4f"])
    faulty["tinyml"]["fail_activation"] = True
    profiles["faulty-m4f"] = faulty
    data.update(fleet=FLEET, trust_anchors=[])
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def running_stack(folder: Path, daemon_config: str, fleet_yaml: Path, endpoints: set[str], workers: int = 1):
    """A daemon and a ``tinymlaas-sim fleet`` against it, once ``endpoints`` are all
    registered and discovered; both stopped at the end."""
    daemon = Daemon(folder, daemon_config, workers=workers)
    daemon.start()
    log = open(folder / "fleet.log", "w")
    fleet = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "fleet", "--config", str(fleet_yaml),
         "--server", f"coap://127.0.0.1:{daemon.coap_port}",
         "--trust-anchor", str(folder / "data" / "keys" / "signing-es256.pub.pem")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    stack = Stack(daemon, fleet)
    try:
        def discovered():
            assert fleet.poll() is None, (folder / "fleet.log").read_text()
            if {d["endpoint"] for d in stack.api("GET", "/devices")} != endpoints:
                return False
            return all((stack.api("GET", f"/devices/{ep}").get("profile") or {}).get("tinyml") for ep in endpoints)

        wait_for(discovered, 30, "the fleet to register and be discovered")
        yield stack
    finally:
        stop_fleet(fleet)
        log.close()
        if daemon.process.poll() is None:
            daemon.kill()


def stop_fleet(fleet: subprocess.Popen) -> None:
    """SIGTERM (the devices de-register), SIGKILL if it takes over 10 s."""
    fleet.send_signal(signal.SIGTERM)
    try:
        fleet.wait(timeout=10)
    except subprocess.TimeoutExpired:
        fleet.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-e2e")
    config = "deployment: {poll_interval_s: 0.2, phase_timeout_s: 60}\nqueue: {awake_window_s: 1}\n"
    with running_stack(folder, config, fleet_config(folder), ENDPOINTS) as stack:
        yield stack


@pytest.fixture(scope="module")
def model(stack):
    """``models add``: the model every rollout here deploys."""
    code = cli_main(["models", "add", str(MODEL), "--name", "wide", "--version", "1.0",
                     "--api", stack.url, "--token", stack.token])
    assert code == 0
    return "wide@1.0"


# -- help, vocabulary, the progress line -------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, name: str = "tinymlaas"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._CountAction, argparse._HelpAction,
         argparse._VersionAction, argparse._SubParsersAction)
API_COMMANDS = {"devices", "device", "read", "write", "exec", "create", "delete", "discover", "attributes",
                "observe", "queue", "models add", "models list", "models show", "compile", "deploy", "rollouts"}


def test_every_option_has_help_with_its_default_and_api_options_only_where_used():
    for name, parser in _parsers(build_parser()):
        options = {o for action in parser._actions for o in action.option_strings}
        used = name.removeprefix("tinymlaas ") in API_COMMANDS
        assert ("--api" in options) == used and ("--token" in options) == used, name
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, name
        for action in parser._actions:
            if isinstance(action, FLAGS):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            shown = parser._get_formatter()._get_help_string(action)
            optional = action.option_strings and not action.required or action.nargs in ("?", "*")
            assert not optional or "default" in shown or "required" in shown, \
                f"{name} {action.option_strings or action.dest}: no default in {shown!r}"


def test_help_of_both_commands_as_run(stack):
    top = subprocess.run([sys.executable, "-m", "lwm2m_server.cli", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert top.returncode == 0 and "``" not in top.stdout and "tinymlaas: run the LwM2M server" in top.stdout
    deploy = subprocess.run([sys.executable, "-m", "lwm2m_server.cli", "deploy", "--help"],
                            capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"})
    for option, default in (("--max-in-flight", "10"), ("--failure-threshold", "0.2"), ("--mode", "auto"),
                            ("--canary", "0.1")):
        block = deploy.stdout.split(f"\n  {option}", 1)[1].split("\n  -", 1)[0]
        assert f"(default: {default})" in " ".join(block.split()), block
    sim = subprocess.run([sys.executable, "-m", "simulators.cli", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"})
    assert sim.returncode == 0 and "``" not in sim.stdout
    named = set(re.findall(r"[\w.-]*(?:/[\w.-]+)+\.pem\b", sim.stdout))
    assert named == {"data/keys/signing-es256.pub.pem"}
    assert (stack.daemon.folder / "data" / "keys" / "signing-es256.pub.pem").is_file()  # what the daemon made


def test_one_state_vocabulary():
    assert set(progress.ROLLOUT_STATES) == {state.value for state in RolloutState}
    assert set(progress.DEVICE_STATUSES) == {status.value for status in DeviceStatus}
    readme = (ROOT / "README.md").read_text()
    for word in (*progress.ROLLOUT_STATES, *progress.DEVICE_STATUSES):
        assert f"`{word}`" in readme, word


def rollout_body(state="running", follow=False, **counts):
    return {"id": "r-0123abcd", "state": state, "paused_reason": "", "strategy": {"follow": follow},
            "summary": {"total": sum(counts.values()), "counts": counts,
                        "finished": sum(v for k, v in counts.items() if k not in ("pending", "in_flight", "retry_wait"))}}


def test_progress_line_counts_apart_and_fits_the_width():
    body = rollout_body(done=0, incompatible=51)
    line = progress.progress_line(body)
    assert "0/0 done" in line and "51 incompatible" in line and "#" not in line  # incompatible is no progress
    body = rollout_body(done=30, failed=2, rolled_back=1, in_flight=10, pending=7, retry_wait=3, incompatible=20,
                        superseded=1)
    line = progress.progress_line(body)
    assert line == ("r-0123abcd running [##################............] 30/53 done, 2 failed, 1 rolled_back, "
                    "10 in_flight, 7 pending, 3 retry_wait, 20 incompatible, 1 superseded")
    for width in (100, 79, 59, 40, 25):
        assert len(progress.progress_line(body, width)) <= width
    assert progress.outcome(rollout_body("complete", done=3, incompatible=1))[0] == 0
    assert progress.outcome(rollout_body("complete", done=3, rolled_back=1))[0] == 1
    assert progress.outcome(rollout_body("paused", done=1, failed=1))[0] == 1
    assert progress.outcome(rollout_body("cancelled", pending=1))[0] == 1
    assert progress.outcome(rollout_body("running", done=1, in_flight=1)) is None
    assert progress.outcome(rollout_body("running", done=2)) is None  # until the API says complete
    assert progress.outcome(rollout_body("running", follow=True, done=2))[0] == 0


class Screen:
    """A stream that is a terminal."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_watch_redraws_one_line_on_a_terminal_and_prints_changes_otherwise(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "50")
    states = [rollout_body(pending=4), rollout_body(in_flight=2, pending=2), rollout_body(in_flight=2, pending=2),
              rollout_body(done=4), rollout_body("complete", done=4)]
    screen = Screen()
    assert progress.watch(iter(states).__next__, out=screen, sleep=lambda s: None) == 0
    drawn = screen.text.split("\n")[0].split("\r")[1:]
    assert len(drawn) == 5 and all(d.endswith("\x1b[K") and len(d) - 3 <= 49 for d in drawn)
    assert progress.watch(iter(states).__next__, sleep=lambda s: None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "\r" not in "".join(lines)  # four different lines, then the verdict


# -- device operations ---------------------------------------------------------------------------


def test_read_write_exec(stack, capsys):
    code, out, _ = stack.cli(capsys, "read", "m4f-0001", "/3/0")
    assert code == 0 and '/3/0/0 Manufacturer = "STMicroelectronics"' in out
    assert "/3/0/9 Battery Level" not in out or re.search(r"Battery Level = \d+ %", out)

    code, out, _ = stack.cli(capsys, "write", "m4f-0001", "/3/0/14", "+02:00")
    assert code == 0 and "2.04" in out
    code, out, _ = stack.cli(capsys, "read", "m4f-0001", "/3/0/14")
    assert code == 0 and out.strip() == '/3/0/14 UTC Offset = "+02:00"'

    code, out, _ = stack.cli(capsys, "exec", "m4f-0001", "/3303/0/5605")
    assert code == 0 and "2.04" in out

    code, out, err = stack.cli(capsys, "read", "m4f-0001", "/3/0/77")  # a device-side failure
    assert code == 1 and "4.04" in out + err
    code, out, err = stack.cli(capsys, "read", "nobody-0001", "/3/0")
    assert code == 1 and "nobody-0001" in err


def test_observe_prints_notifications_and_ends_by_count(stack, capsys):
    started = time.monotonic()
    code, out, _ = stack.cli(capsys, "observe", "gw-0001", "/3303/0/5700", "--count", "2", "--timeout", "15")
    assert code == 0 and time.monotonic() - started < 15
    lines = [line for line in out.splitlines() if "/3303/0/5700 Sensor Value = " in line]
    assert len(lines) >= 3  # the first answer and two notifications
    assert stack.api("GET", "/devices/gw-0001")["observations"] == []  # told to stop


def test_a_request_to_a_sleeping_device_is_queued_and_shown_by_queue(stack, capsys):
    events: list[str] = []

    def listen():
        request = urllib.request.Request(
            f"{stack.url}/api/v1/events?endpoint=m0p-0001&kinds=updated,queue&timeout=8")
        request.add_header("Authorization", f"Bearer {stack.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            for line in response:
                line = line.decode().strip().removeprefix("data:").strip()
                if line.startswith("{"):
                    events.append(json.loads(line)["kind"])

    listener = threading.Thread(target=listen)
    listener.start()
    started = time.monotonic()
    for _ in range(10):  # the device is awake for 1 s after each message; catch it asleep
        code, out, _ = stack.cli(capsys, "read", "m0p-0001", "/3/0/1")
        assert code == 0
        if "queued as" in out:
            break
        time.sleep(1.3)  # longer than the awake window: a read's answer keeps the device awake a while
    queue_id = re.search(r"queued as (\S+?):", out).group(1)
    code, out, _ = stack.cli(capsys, "queue", queue_id)
    assert code == 0 and json.loads(out)["id"] == queue_id

    def delivered():
        code, out, _ = stack.cli(capsys, "queue", queue_id)
        entry = json.loads(out)
        return entry if entry["state"] not in ("pending", "sending") else None

    entry = wait_for(delivered, 10, "the device to wake and take the queued read")
    assert entry["state"] == "delivered", entry
    assert entry["result"]["code"] == "2.05", entry
    listener.join(timeout=20)
    assert not listener.is_alive(), "/events did not end at its timeout"
    assert time.monotonic() - started < 20
    assert "updated" in events and "queue" in events, events  # the wake-up and the queued request's progress


# -- models, deploy, rollouts -------------------------------------------------------------------


def test_models_add_and_list(stack, model, capsys):
    code, out, _ = stack.cli(capsys, "models", "list")
    assert code == 0 and re.search(r"wide@1\.0\s+tflite\s+4160 bytes \(4\.06 KB\)", out), out
    code, out, _ = stack.cli(capsys, "models", "list", "--json")
    assert [m["size"] for m in json.loads(out) if m["name"] == "wide"] == [4160]
    code, _, err = stack.cli(capsys, "models", "add", str(ROOT / "README.md"), "--name", "x", "--version", "1")
    assert code == 1 and err.startswith("tinymlaas: ")


def test_deploy_watch_ends_complete_and_counts_incompatible_apart(stack, model, capsys):
    code, out, err = stack.cli(capsys, "deploy", model, *COMPATIBLE, "--canary", "0", "--id", "r-main", "--watch")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"rollout r-main: {model} to 4 matching device(s) so far"
    progress_lines = [line for line in lines if line.startswith("r-main ") and "/3 done" in line]
    assert len(progress_lines) == len(set(progress_lines))  # a line per change, never one twice in a row
    assert all("/3 done" in line and "1 incompatible" in line for line in progress_lines)
    assert progress_lines[-1] == "r-main complete [" + "#" * 30 + "] 3/3 done, 0 failed, 0 in_flight, 1 incompatible"
    assert lines[-1] == "rollout r-main complete: 3 device(s) done, 1 incompatible"
    assert stack.api("GET", "/rollouts/r-main")["state"] == "complete"  # the CLI's word is the API's

    code, out, _ = stack.cli(capsys, "rollouts")
    assert code == 0 and any(line.startswith("r-main complete [") for line in out.splitlines())
    code, out, _ = stack.cli(capsys, "rollouts", "r-main")
    assert code == 0 and re.search(r"m0p-0001\s+incompatible\s+\S", out) and re.search(r"m4f-0001\s+done", out)
    code, out, _ = stack.cli(capsys, "rollouts", "r-main", "--json")
    assert json.loads(out)["state"] == "complete"

    def latency():  # figures with units: the model runs and reports its latency in us, shown in ms too
        _, out, _ = stack.cli(capsys, "read", "m4f-0001", "/26241/0/15")
        return re.search(r"Last Inference Latency = [\d.]+ us \([\d.e+-]+ ms\)", out)

    wait_for(latency, 10, "a first inference")


def test_rollouts_watch_on_a_terminal_fits_its_width(stack, model, capsys):
    if stack.api("GET", "/rollouts/r-main")["state"] != "complete":
        pytest.skip("needs the rollout of test_deploy_watch_ends_complete_and_counts_incompatible_apart")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "lwm2m_server.cli", "rollouts", "r-main", "--watch", "--api", stack.url,
         "--token", stack.token], stdin=terminal, stdout=terminal, stderr=terminal,
        env={**os.environ, "COLUMNS": "60", "LINES": "24"})
    os.close(terminal)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 20)
            assert ready, "no output"
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
    assert process.wait(timeout=10) == 0
    text = output.decode()
    assert text.startswith("\rr-main complete ") and "\x1b[K" in text
    drawn = text.split("\r\n")[0].lstrip("\r").removesuffix("\x1b[K")
    assert len(drawn) <= 59 and "3/3 done" in drawn and "1 incompatible" in drawn, repr(drawn)


def test_deploy_watch_ends_paused_with_status_1(stack, model, capsys):
    code, out, err = stack.cli(capsys, "deploy", model, "--endpoint", "bad-*", "--id", "r-faulty", "--watch")
    assert code == 1, out + err
    assert "0/1 done" in out and ("1 rolled_back" in out or "1 failed" in out)
    assert "tinymlaas: rollout r-faulty paused: 1 of 1 finished devices failed" in err
    assert stack.api("GET", "/rollouts/r-faulty")["state"] == "paused"


def test_a_selector_that_matches_nothing_ends_the_watch_and_pause_resume_cancel(stack, model, capsys):
    started = time.monotonic()
    code, out, err = stack.cli(capsys, "deploy", model, "--endpoint", "nomatch-*", "--id", "r-empty", "--watch")
    assert code == 1 and time.monotonic() - started < 5
    assert "0/0 done" in out and "no device matches yet" in out
    assert "no device matches the selector of rollout r-empty" in err

    for action, state in (("pause", "paused"), ("resume", "running"), ("pause", "paused")):
        code, out, _ = stack.cli(capsys, "rollouts", "r-empty", action)
        assert code == 0 and out.splitlines()[0].startswith(f"r-empty {state} "), out
        assert stack.api("GET", "/rollouts/r-empty")["state"] == state
    code, _, err = stack.cli(capsys, "rollouts", "r-empty", "--watch")
    assert code == 1 and "rollout r-empty paused: by an operator" in err
    code, out, _ = stack.cli(capsys, "rollouts", "r-empty", "cancel")
    assert code == 0 and out.splitlines()[0].startswith("r-empty cancelled ")
    assert stack.api("GET", "/rollouts/r-empty")["state"] == "cancelled"
    code, _, err = stack.cli(capsys, "rollouts", "r-empty", "--watch")
    assert code == 1 and "rollout r-empty cancelled" in err
    code, _, err = stack.cli(capsys, "rollouts", "r-empty", "resume")  # a cancelled rollout stays so
    assert code == 1 and "cancelled" in err


# -- keys -----------------------------------------------------------------------------------------


def test_keys_generate_and_show(stack, tmp_path, capsys):
    path = tmp_path / "signing-eddsa.pem"
    assert cli_main(["keys", "generate", "--alg", "EdDSA", "--path", str(path)]) == 0
    generated = capsys.readouterr().out
    assert "wrote" in generated and path.is_file() and oct(path.stat().st_mode & 0o777) == "0o600"
    assert cli_main(["keys", "show", "--path", str(path)]) == 0
    shown = capsys.readouterr().out
    assert shown.strip() and shown.strip() in generated  # the same key described
    assert cli_main(["keys", "generate", "--path", str(path)]) == 1  # no silent overwrite
    assert "tinymlaas: " in capsys.readouterr().err
    daemon_key = stack.daemon.folder / "data" / "keys" / "signing-es256.pem"
    assert cli_main(["keys", "show", "--path", str(daemon_key)]) == 0
    assert "ES256" in capsys.readouterr().out


# -- the rest of the table: objects, devices/device, discover, attributes, create/delete, --------
# -- credentials with the daemon running, and the simulator's commands against it ---------------


def test_objects_lists_the_registry_and_one_object(capsys):
    assert cli_main(["objects"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^\s+3\s+\S+\s+Device$", listed, re.M) and re.search(r"^\s*26241\s", listed, re.M), listed
    assert cli_main(["objects", "3303"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("/3303 Temperature ") and re.search(r"5700 R\s+S!\s+Float\s+Sensor Value", shown), shown
    assert cli_main(["objects", "65000"]) == 1
    assert "object 65000 is not defined" in capsys.readouterr().err


def test_devices_and_device(stack, capsys):
    code, out, _ = stack.cli(capsys, "devices")
    assert code == 0 and out.splitlines()[0].startswith("ENDPOINT ") and out.rstrip().endswith("device(s)")
    assert ENDPOINTS <= {line.split()[0] for line in out.splitlines()[1:-1]}
    code, out, _ = stack.cli(capsys, "devices", "--json")
    assert ENDPOINTS <= {d["endpoint"] for d in json.loads(out)}
    code, out, _ = stack.cli(capsys, "device", "m4f-0001")
    assert code == 0 and out.startswith("endpoint      m4f-0001  (registration ")
    assert "security      none (plain CoAP)" in out and re.search(r"^  /3303/0\s+Temperature", out, re.M), out
    assert re.search(r"^device class  \S+", out, re.M), out
    code, out, _ = stack.cli(capsys, "device", "m4f-0001", "--json")
    assert json.loads(out)["endpoint"] == "m4f-0001"
    code, _, err = stack.cli(capsys, "device", "nobody-0001")
    assert code == 1 and "nobody-0001" in err


def test_discover_attributes_create_delete(stack, capsys):
    code, out, _ = stack.cli(capsys, "discover", "gw-0001", "/3303/0")
    assert code == 0 and "5700" in out, out
    code, out, _ = stack.cli(capsys, "attributes", "gw-0001", "/3303/0/5700", "pmin=1", "pmax=30")
    assert code == 0 and "2.04" in out, out
    code, out, _ = stack.cli(capsys, "discover", "gw-0001", "/3303/0/5700")
    assert code == 0 and "pmin=1" in out and "pmax=30" in out, out
    code, out, _ = stack.cli(capsys, "attributes", "gw-0001", "/3303/0/5700", "pmax=")  # unset
    assert code == 0 and "2.04" in out, out
    code, out, _ = stack.cli(capsys, "discover", "gw-0001", "/3303/0/5700")
    assert code == 0 and "pmin=1" in out and "pmax" not in out, out

    code, out, _ = stack.cli(capsys, "create", "gw-0001", "/3303", "42", "5701=K")
    assert (code, out) == (0, "created /3303/42\n")
    code, out, _ = stack.cli(capsys, "read", "gw-0001", "/3303/42/5701")
    assert code == 0 and out.strip() == '/3303/42/5701 Sensor Units = "K"', out
    code, out, _ = stack.cli(capsys, "delete", "gw-0001", "/3303/42")
    assert code == 0 and "2.02" in out, out
    code, out, err = stack.cli(capsys, "read", "gw-0001", "/3303/42")
    assert code == 1 and "4.04" in out + err


def test_credentials_and_simulated_devices_over_coaps_against_the_daemon(stack, tmp_path, capsys, monkeypatch):
    """``tinymlaas-sim profiles`` and ``credentials``, ``tinymlaas credentials import/add/list/remove``
    on the running daemon's store, then ``tinymlaas-sim device --bootstrap`` and ``--psk`` and
    ``tinymlaas-sim fleet --credentials`` over CoAPS."""
    profiles = subprocess.run([sys.executable, "-m", "simulators.cli", "profiles"], cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    assert profiles.returncode == 0 and "cortex-m4f" in profiles.stdout, profiles.stderr

    config = yaml.safe_load((ROOT / "config" / "fleet.yaml").read_text())
    config.update(fleet=[{"profile": "cortex-m4f", "count": 1, "endpoint_prefix": "boot"}], trust_anchors=[])
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(config))
    keys = tmp_path / "keys.csv"
    made = subprocess.run([sys.executable, "-m", "simulators.cli", "credentials", "--config", str(tmp_path / "fleet.yaml"),
                           "--count", "1", "--scope", "bootstrap", "--out", str(keys)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    [row] = [line.split(",") for line in keys.read_text().splitlines() if line and not line.startswith(("#", "endpoint"))]
    endpoint, identity, key = row[0], row[1], row[2]
    assert (endpoint, identity) == ("boot-0001", "boot-0001-bs")

    monkeypatch.chdir(stack.daemon.folder)  # the daemon's server.yaml and data/, as an operator beside it
    def credentials(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main(["credentials", *args, "--config", "server.yaml"])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = credentials("import", str(keys))
    assert (code, out) == (0, f"imported 1 credential(s) from {keys}: 1 added, 0 replaced\n"), err
    code, out, err = credentials("add", "psk-0001", "--generate")
    assert code == 0 and re.search(r"\b[0-9a-f]{32}\b", out), out + err
    server_key = re.search(r"\b([0-9a-f]{32})\b", out).group(1)
    code, out, err = credentials("add", "osc-0001", "--oscore", "--sender-id", "01", "--recipient-id", "0a",
                                 "--generate")
    assert code == 0, out + err
    osc_secret = re.search(r"\b([0-9a-f]{32})\b", out).group(1)
    code, out, _ = credentials("list", "--json")
    listed = {(c["endpoint"], c["scope"]) for c in json.loads(out)}
    assert {("boot-0001", "bootstrap"), ("psk-0001", "server"), ("osc-0001", "server")} <= listed
    assert [c.get("mechanism") for c in json.loads(out) if c["endpoint"] == "osc-0001"] == ["oscore"], out
    assert key not in out and server_key not in out and osc_secret not in out
    code, out, err = credentials("remove", "osc-0001", "--mechanism", "oscore")
    assert (code, out) == (0, "removed 1 credential(s) of osc-0001\n"), err

    def sim_device(endpoint: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "simulators.cli", "device", "--profile", "cortex-m4f", "--endpoint", endpoint,
             *args, "--timeout", "10", "--duration", "60"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    secure = f"coaps://127.0.0.1:{stack.daemon.coaps_port}"
    (tmp_path / "psk.key").write_text(server_key + "\n")
    devices = [sim_device("boot-0001", "--bootstrap", secure, "--bootstrap-psk", f"{identity}:-"),
               sim_device("psk-0001", "--server", secure, "--psk", f"psk-0001:@{tmp_path / 'psk.key'}")]
    try:
        devices[0].stdin.write(key + "\n")
        devices[0].stdin.close()
        for endpoint in ("boot-0001", "psk-0001"):
            def registered():
                code, out, _ = stack.cli(capsys, "device", endpoint)
                return out if code == 0 else None

            shown = wait_for(registered, 30, f"{endpoint} to register over CoAPS")
            assert f"security      psk  identity {endpoint}" in shown, shown
            assert re.search(r"^address\s+coaps://", shown, re.M), shown
    finally:
        for device in devices:
            device.send_signal(signal.SIGTERM)
        for device in devices:
            try:
                device.wait(timeout=30)
            except subprocess.TimeoutExpired:
                device.kill()

    # a fleet given its key file: each device bootstraps over CoAPS with its own row
    config.update(fleet=[{"profile": "cortex-m4f", "count": 2, "endpoint_prefix": "kit"}])
    (tmp_path / "kit.yaml").write_text(yaml.safe_dump(config))
    kit_keys = tmp_path / "kit-keys.csv"
    made = subprocess.run([sys.executable, "-m", "simulators.cli", "credentials", "--config", str(tmp_path / "kit.yaml"),
                           "--out", str(kit_keys)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    code, out, err = credentials("import", str(kit_keys))
    assert (code, out) == (0, f"imported 2 credential(s) from {kit_keys}: 2 added, 0 replaced\n"), err
    fleet = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "fleet", "--config", str(tmp_path / "kit.yaml"), "--bootstrap", secure,
         "--credentials", str(kit_keys), "--duration", "60"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for endpoint in ("kit-0001", "kit-0002"):
            def bootstrapped():
                assert fleet.poll() is None, fleet.stderr.read()
                code, out, _ = stack.cli(capsys, "device", endpoint)
                return out if code == 0 else None

            shown = wait_for(bootstrapped, 30, f"{endpoint} of the fleet to bootstrap and register over CoAPS")
            assert f"security      psk  identity {endpoint}" in shown, shown
    finally:
        fleet.send_signal(signal.SIGTERM)
        try:
            fleet.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fleet.kill()

    code, out, _ = credentials("list", "--json")
    assert ("boot-0001", "server") in {(c["endpoint"], c["scope"]) for c in json.loads(out)}  # bootstrap made it
    for endpoint, scope in (("boot-0001", "bootstrap"), ("boot-0001", "server"), ("psk-0001", "server")):
        code, out, err = credentials("remove", endpoint, "--scope", scope)
        assert (code, out) == (0, f"removed 1 credential(s) of {endpoint}\n"), err
    code, out, _ = credentials("list", "--json")
    assert not {c["endpoint"] for c in json.loads(out)} & {"boot-0001", "psk-0001"}
