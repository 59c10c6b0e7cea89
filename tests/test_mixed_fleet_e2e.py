"""A mixed fleet end to end over CoAP (issue 14's "done when"): the daemon (a subprocess)
and one simulated device of each class — Cortex-M0+, Cortex-M4F, Cortex-M55 with an
Ethos-U55, a LiteRT gateway, an ONNX Runtime gateway and a classic-ML Cortex-M0+
(``tinymlaas-sim fleet``, a subprocess) — operated through the CLI as a user types it:

- ``models show`` ranks every plugin per device class (vela over tflm on the M55);
- ``compile --class`` / ``--device`` answer for a class without deploying, ``--out``
  writes the payload, and the cache hit is reported;
- one rollout per model family: int8 TFLite (M0+/M4F get tflm, the M55 vela, the
  gateway litert; the ONNX gateway and the emlearn device are incompatible with every
  plugin's reasons), ONNX (only the ONNX gateway) and a classic model (only the
  emlearn device);
- ``deploy --plugin tflm`` pins tflm on the M55 (it fits there on the CPU), and the
  LiteRT gateway it does not fit is incompatible instead of getting litert.

These cover README's ``models show``, ``compile`` and ``deploy --plugin`` rows.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_cli_e2e import Stack, running_stack

ROOT = Path(__file__).parent.parent
MODELS = Path(__file__).parent / "fixtures" / "models"
CLASSES = {"m0p-0001": "cortex-m0plus", "m4f-0001": "cortex-m4f", "m55-0001": "cortex-m55-ethos-u55",
           "gw-0001": "linux-gateway", "gwx-0001": "linux-gateway-onnx", "eml-0001": "cortex-m0plus-emlearn"}
TFLITE_PLUGIN = {"m0p-0001": "tflm", "m4f-0001": "tflm", "m55-0001": "vela", "gw-0001": "litert"}
"""Which plugin ranks first for the int8 TFLite model, per device; the other two classes have none."""


def fleet_config(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "config" / "fleet.yaml").read_text())
    for profile in data["profiles"].values():
        profile["sensor_interval"] = 60  # sensor traffic is not what this test is about
    # queue mode is covered by test_cli_e2e; here it would only make every step wait for a wake-up
    data["profiles"]["cortex-m0plus"]["queue_mode"] = False
    data.update(trust_anchors=[], fleet=[{"profile": profile, "count": 1, "endpoint_prefix": endpoint[:-5]}
                                        for endpoint, profile in CLASSES.items()])
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed-fleet")
    config = "deployment: {poll_interval_s: 0.2, phase_timeout_s: 60}\n"
    with running_stack(folder, config, fleet_config(folder), set(CLASSES)) as stack:
        yield stack


@pytest.fixture(scope="module")
def models(stack):
    """One model per family, registered with ``models add`` (format from the extension)."""
    for file, name in (("dense_int8.tflite", "dense"), ("dense_float.onnx", "dense-onnx"),
                       ("classic_tree.json", "tree")):
        assert cli(stack, "models", "add", str(MODELS / file), "--name", name, "--version", "1.0")[0] == 0
    return {"tflite": "dense@1.0", "onnx": "dense-onnx@1.0", "classic": "tree@1.0"}


def cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """``tinymlaas ARGS`` in a subprocess, as typed: exit status, stdout, stderr."""
    run = subprocess.run([sys.executable, "-m", "lwm2m_server.cli", *args, "--api", stack.url, "--token", stack.token],
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    return run.returncode, run.stdout, run.stderr


def device_class(stack: Stack, endpoint: str) -> str:
    return stack.api("GET", f"/devices/{endpoint}")["device_class"]


def class_blocks(output: str) -> dict[str, str]:
    """``models show`` output split per class, keyed by the endpoint whose figures it used."""
    blocks = {}
    for block in output.split("\nclass ")[1:]:
        endpoint = re.search(r"figures of ([\w-]+)\)", block.splitlines()[0]).group(1)
        blocks[endpoint] = block
    return blocks


def rows(block: str) -> dict[str, list[str]]:
    """A class block's table rows by plugin name: RANK, PLUGIN, PAYLOAD, ..., VERDICT (words)."""
    table = {}
    for line in block.splitlines()[2:]:
        words = line.split()
        if len(words) > 1 and not line.strip().startswith("estimate of"):
            table[words[1]] = words
    return table


def rollout(stack: Stack, model: str, *extra: str) -> dict:
    """``deploy MODEL --watch``: it must end complete; the rollout with its devices."""
    code, out, err = cli(stack, "deploy", model, "--canary", "0", "--watch", *extra)
    assert code == 0, out + err
    rollout_id = re.search(r"rollout (r-[0-9a-f]+)", out).group(1)
    code, out, _ = cli(stack, "rollouts", rollout_id, "--json")
    return json.loads(out)


# -- the ranking, visible ----------------------------------------------------------------------------


def test_models_show_ranks_every_plugin_per_device_class(stack, models):
    code, out, err = cli(stack, "models", "show", models["tflite"])
    assert code == 0, err
    assert out.startswith("dense@1.0  tflite") and "ranking: accelerator the device has first" in out
    blocks = class_blocks(out)
    assert set(blocks) == set(CLASSES)
    for endpoint, block in blocks.items():
        assert block.startswith(f"{device_class(stack, endpoint)}: {TFLITE_PLUGIN.get(endpoint, 'incompatible')}")
    m55 = rows(blocks["m55-0001"])
    assert m55["vela"][0] == "1" and "ethos-u55-128" in m55["vela"] and "µs" in " ".join(m55["vela"])
    assert m55["tflm"][0] == "2" and " ".join(m55["tflm"]).endswith("fits: CPU only; lossless; no latency "
                                                                      "estimate; 2080 B of storage")
    assert m55["litert"][0] == "-" and "litert does not compile for runtime 'tflite-micro'" in " ".join(m55["litert"])
    assert re.search(r"estimate of vela: vela 5\.2\.0 performance estimate .*\(an estimate, not a measurement\)",
                     blocks["m55-0001"])
    assert "onnxruntime does not accept 'tflite' models" in blocks["gwx-0001"]
    assert "emlearn does not accept 'tflite' models" in blocks["eml-0001"]

    for family, endpoint, plugin in (("onnx", "gwx-0001", "onnxruntime"), ("classic", "eml-0001", "emlearn")):
        code, out, _ = cli(stack, "models", "show", models[family])
        fitting = {ep: block.split(":")[1].split()[0] for ep, block in class_blocks(out).items()}
        assert fitting == {ep: plugin if ep == endpoint else "incompatible" for ep in CLASSES}, out


def test_compile_answers_for_a_class_without_deploying(stack, models, tmp_path):
    m55 = device_class(stack, "m55-0001")
    out_file = tmp_path / "m55.tflite"
    code, out, err = cli(stack, "compile", models["tflite"], "--class", m55, "--out", str(out_file))
    assert code == 0, err
    assert f"dense@1.0 for class {m55} (figures of m55-0001)" in out
    assert re.search(r"^plugin +vela \(ranked first; compile cache (hit|miss)\)$", out, re.M), out
    assert re.search(r"^estimate .* cycles — vela 5\.2\.0 performance estimate", out, re.M)
    assert re.search(r"^operators +on ethos-u55-128: ", out, re.M) and "\nlog\n  vela 5.2.0 for ethos-u55-128" in out
    code, again, _ = cli(stack, "compile", models["tflite"], "--class", m55, "--json")
    answer = json.loads(again)
    assert answer["cache_hit"] is True and answer["plugin"] == "vela"
    assert hashlib.sha256(out_file.read_bytes()).hexdigest() == answer["module"]["payload"]["sha256"]
    assert f"wrote {out_file.stat().st_size} B to {out_file}" in out

    code, out, _ = cli(stack, "compile", models["classic"], "--device", "eml-0001")
    assert code == 0 and re.search(r"^plugin +emlearn \(ranked first", out, re.M), out
    code, out, _ = cli(stack, "compile", models["tflite"], "--device", "gwx-0001")
    assert code == 1 and "incompatible: no compiler plugin fits: " in out and "onnxruntime does not accept" in out
    code, _, err = cli(stack, "compile", models["tflite"], "--class", "tflite-micro-0-nope")
    assert code == 1 and "no registered device is of class tflite-micro-0-nope (known classes: " in err


# -- one rollout per model family ------------------------------------------------------------------------


def test_each_class_gets_the_plugin_that_fits_one_rollout_per_family(stack, models):
    devices = {d["endpoint"]: d for d in rollout(stack, models["tflite"])["devices"]}
    assert set(devices) == set(CLASSES)
    for endpoint, plugin in TFLITE_PLUGIN.items():
        assert devices[endpoint]["status"] == "done", devices[endpoint]
        assert f"compiled by {plugin} for {device_class(stack, endpoint)} (ranked first of" in \
            devices[endpoint]["package"]
    assert "ranked first of 2 that fit: on ethos-u55-128" in devices["m55-0001"]["package"]
    for endpoint, words in (("gwx-0001", "onnxruntime does not accept 'tflite' models"),
                            ("eml-0001", "emlearn does not accept 'tflite' models")):
        assert devices[endpoint]["status"] == "incompatible"
        assert devices[endpoint]["reason"].startswith("incompatible: no compiler plugin fits: ")
        assert words in devices[endpoint]["reason"] and "tflm: " in devices[endpoint]["reason"]

    for family, endpoint, plugin in (("onnx", "gwx-0001", "onnxruntime"), ("classic", "eml-0001", "emlearn")):
        devices = {d["endpoint"]: d for d in rollout(stack, models[family])["devices"]}
        assert {ep for ep, d in devices.items() if d["status"] == "done"} == {endpoint}, devices
        assert f"compiled by {plugin}" in devices[endpoint]["package"]
        assert all(d["reason"].startswith("incompatible: no compiler plugin fits: ")
                   for ep, d in devices.items() if ep != endpoint)
        read = stack.api("POST", f"/devices/{endpoint}/read", {"path": "/26241/0/10"})
        assert read["values"][0]["value"] == models[family].split("@")[0]  # Active Model ID


def test_a_pinned_plugin_serves_the_m55_on_its_cpu_and_never_falls_back(stack, models):
    code, _, err = cli(stack, "deploy", models["tflite"], "--plugin", "nope")
    assert code == 1 and "plugin nope is not installed (installed: " in err
    pinned = rollout(stack, models["tflite"], "--plugin", "tflm", "--endpoint", "m55-*", "--endpoint", "gw-*")
    assert pinned["strategy"]["plugin"] == "tflm"
    devices = {d["endpoint"]: d for d in pinned["devices"]}
    assert devices["m55-0001"]["status"] == "done"
    assert devices["m55-0001"]["package"].endswith(f"compiled by tflm for {device_class(stack, 'm55-0001')} "
                                                   "(pinned by the rollout)")
    assert devices["gw-0001"]["status"] == "incompatible"
    assert devices["gw-0001"]["reason"].startswith("incompatible: pinned plugin tflm does not fit: tflm does not "
                                                   "compile for runtime 'litert'")
    digest = stack.api("POST", "/devices/m55-0001/read", {"path": "/26241/0/12"})["values"][0]["value"]
    assert digest == hashlib.sha256((MODELS / "dense_int8.tflite").read_bytes()).hexdigest()  # tflm's: as is
    code, out, _ = cli(stack, "rollouts", pinned["id"])
    assert "plugin pinned: tflm" in out
