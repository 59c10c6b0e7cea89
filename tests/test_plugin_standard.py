"""The compiler plugin standard (docs/compiler-plugins.md): the JSON forms and their
schemas, the conformance kit on the shipped plugins, on the out-of-tree example
package and on deliberately broken plugins, and the commands a user runs —
``tinymlaas plugins``, ``tinymlaas plugins check NAME`` and ``tinymlaas models add``
taking the format from the file extension — through the real ``tinymlaas`` executable.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import replace
from pathlib import Path

import jsonschema_rs
import pytest
from tinymlaas_plugin_example import RUNTIME, ExamplePlugin

from lwm2m_server.api import openapi
from lwm2m_server.compilers import ModelInput, TargetSpec, discover_plugins
from lwm2m_server.compilers.conformance import check_plugin
from lwm2m_server.compilers.describe import model_to_json, module_to_json, schema, schema_errors, target_to_json
from lwm2m_server.compilers.samples import sample_bytes
from lwm2m_server.suit.model_info import DTYPES
from test_daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
TINYMLAAS = str(Path(sys.executable).parent / "tinymlaas")
M0PLUS = TargetSpec("tflite-micro", "2025-01-15", "cortex-m0plus", 8192, 131072, 16384,
                    frozenset({"FULLY_CONNECTED", "SOFTMAX"}), cpu_clock_hz=48_000_000)


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TINYMLAAS, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


# ---- JSON forms and schemas ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["target", "model", "result"])
def test_each_schema_is_a_valid_draft_2020_12_schema(name):
    document = schema(name)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema_rs.meta.validate(document)


def test_target_and_model_documents_follow_their_schemas_and_bad_ones_are_named():
    target = target_to_json(M0PLUS)
    assert schema_errors("target", target) == []
    assert target["architecture"] == "armv6-m" and target["device_class"] == M0PLUS.device_class
    assert target["ops"] == ["FULLY_CONNECTED", "SOFTMAX"] and target["formats"] == ["tflite"]
    assert schema_errors("target", {**target, "runtime": "TFLite-Micro"})[0].startswith("/runtime: ")
    assert schema_errors("target", {**target, "arena_budget_bytes": -1})[0].startswith("/arena_budget_bytes: ")
    npu = replace(M0PLUS, cpu_core="cortex-m55", accelerators=frozenset({"Ethos-U55-128"}),
                  accelerator_system_config="Ethos_U55_High_End_Embedded", accelerator_memory_mode="Shared_Sram",
                  accelerator_sram_bytes=393216)
    npu_document = target_to_json(npu)
    assert schema_errors("target", npu_document) == []
    assert npu_document["accelerators"] == ["ethos-u55-128"] and npu_document["accelerator_sram_bytes"] == 393216
    assert npu_document["device_class"] != target_to_json(replace(npu, accelerator_sram_bytes=None))["device_class"]
    model = ModelInput(sample_bytes("dense_int8.tflite"), "tflite", "dense", "1.0")
    document = model_to_json(model)
    assert document == {"format": "tflite", "digest": model.digest, "size": 2080, "name": "dense",
                        "version": "1.0"}
    assert schema_errors("model", document) == []
    assert schema_errors("model", {**document, "digest": "abc"})[0].startswith("/digest: ")
    assert any("data" in e for e in schema_errors("model", {**document, "data": "AAAA"}))


def test_a_result_document_carries_no_bytes_and_the_schema_knows_every_dtype():
    module = ExamplePlugin().compile(ModelInput(sample_bytes("dense_int8.tflite")), replace(M0PLUS, runtime=RUNTIME))
    document = module_to_json(module)
    assert schema_errors("result", document) == []
    assert document["payload"] == {"sha256": module.payload_digest, "size": 2080}
    assert document["storage_bytes"] == 2080 and document["estimated_cycles"] == 16 * 32 + 32 * 4
    json.dumps(document, allow_nan=False)  # JSON values only
    assert set(schema("result")["$defs"]["tensor"]["properties"]["dtype"]["enum"]) == DTYPES
    without_source = {**document, "estimate_source": ""}
    assert any(e.startswith("/estimate_source: ") for e in schema_errors("result", without_source))
    stray_ops = {**document, "accelerator": "", "accelerator_ops": ["CONV_2D"]}
    assert any(e.startswith("/accelerator_ops: ") for e in schema_errors("result", stray_ops))


def test_schemas_and_samples_ship_as_package_data_and_samples_are_the_fixtures():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lwm2m_server"]
    package = ROOT / "lwm2m_server"
    shipped = [p.relative_to(package).as_posix() for folder in ("schemas", "samples")
               for p in (package / "compilers" / folder).iterdir() if p.is_file() and p.suffix != ".py"]
    assert {"compilers/schemas/target.schema.json", "compilers/schemas/model.schema.json",
            "compilers/schemas/result.schema.json", "compilers/samples/dense_int8.tflite",
            "compilers/samples/dense_float.tflite"} <= set(shipped)
    for path in shipped:
        assert any(fnmatch.fnmatch(path, glob) for glob in globs), f"{path} is not package data"
    for name in ("dense_int8.tflite", "dense_float.tflite"):
        assert sample_bytes(name) == (MODELS / name).read_bytes(), f"samples/{name} is no longer the fixture"


def test_the_api_document_takes_any_model_format_string():
    model_format = openapi.DOCUMENT["components"]["schemas"]["Model"]["properties"]["format"]
    assert model_format["type"] == "string" and "enum" not in model_format
    assert "firmware" in model_format["description"] and "plugin" in model_format["description"]


# ---- the kit on conforming plugins -----------------------------------------------------------

@pytest.fixture(scope="module")
def installed():
    return {plugin.name: plugin for plugin in discover_plugins()}


@pytest.mark.parametrize("name", ["tflm", "litert", "ptq-int8", "example"])
def test_the_kit_passes_the_shipped_plugins_and_the_example(installed, name):
    findings = check_plugin(installed[name])
    assert [f"{f.check}: {f.message}" for f in findings if not f.passed] == []
    checks = {f.check for f in findings}
    for required in ("attribute accepts", "samples", "sample 1: validate", "sample 1: check", "sample 1: compile",
                     "sample 1: result schema", "sample 1: payload format", "sample 1: runtime",
                     "sample 1: source digest", "sample 1: fits its target", "sample 1: same class, more memory",
                     "sample 1: refuses runtime 'conformance-kit-no-such-runtime'",
                     "sample 1: refuses formats without 'tflite'", "malformed tflite: validate",
                     "malformed tflite: check", "malformed tflite: compile", "only CompilerError raised"):
        assert required in checks, required


# ---- the kit on broken plugins ---------------------------------------------------------------

class CheckRaisesKeyError(ExamplePlugin):
    name = "broken-check"

    def check(self, model, target):
        raise KeyError("FULLY_CONNECTED")


class PayloadFollowsMemory(ExamplePlugin):
    name = "broken-memory"

    def compile(self, model, target, options=None):
        module = super().compile(model, target, options)
        return replace(module, payload=module.payload + target.arena_budget_bytes.to_bytes(4, "little"))


class NoSamples(ExamplePlugin):
    name = "broken-samples"

    def conformance_samples(self):
        return []


class AcceptsGarbage(ExamplePlugin):
    name = "broken-validate"

    def validate(self, model):
        return None


class IgnoresRuntime(ExamplePlugin):
    name = "broken-runtime"

    def compile(self, model, target, options=None):
        module = super().compile(model, replace(target, runtime=RUNTIME), options)
        return replace(module, runtime=target.runtime)


class EstimateWithoutSource(ExamplePlugin):
    name = "broken-estimate"

    def compile(self, model, target, options=None):
        return replace(super().compile(model, target, options), estimate_source="")


class ReportNotJson(ExamplePlugin):
    name = "broken-report"

    def compile(self, model, target, options=None):
        return replace(super().compile(model, target, options), report={"raw": b"\x00"})


class WrongDigest(ExamplePlugin):
    name = "broken-digest"

    def compile(self, model, target, options=None):
        return replace(super().compile(model, target, options), source_digest="0" * 64)


class BadAttributes(ExamplePlugin):
    name = ""
    lossy = "no"  # type: ignore[assignment]


OTHER_RUNTIME = "sample 1: refuses runtime 'conformance-kit-no-such-runtime'"


@pytest.mark.parametrize("plugin, failed, words", [
    (CheckRaisesKeyError(), {"sample 1: check", OTHER_RUNTIME, "sample 1: refuses formats without 'tflite'",
                             "malformed tflite: check", "only CompilerError raised"}, "KeyError: 'FULLY_CONNECTED'"),
    (PayloadFollowsMemory(), {"sample 1: same class, more memory"}, "payload_digest"),
    (NoSamples(), {"samples"}, "supply conformance_samples()"),
    (AcceptsGarbage(), {"malformed tflite: validate"}, "must raise ModelError"),
    (IgnoresRuntime(), {OTHER_RUNTIME}, "compile must raise Incompatible"),
    (EstimateWithoutSource(), {"sample 1: result schema"}, "/estimate_source"),
    (ReportNotJson(), {"sample 1: result schema"}, "no JSON form"),
    (WrongDigest(), {"sample 1: source digest"}, "the model's SHA-256 is"),
    (BadAttributes(), {"attribute name", "attribute lossy", "sample 1: result schema"}, "must be a bool"),
], ids=["check-raises", "payload-follows-memory", "no-samples", "accepts-garbage", "ignores-runtime",
        "estimate-without-source", "report-not-json", "wrong-digest", "bad-attributes"])
def test_the_kit_names_what_a_broken_plugin_does_wrong(plugin, failed, words):
    findings = check_plugin(plugin)
    assert {f.check for f in findings if not f.passed} == failed
    assert any(words in f.message for f in findings if not f.passed), [f for f in findings if not f.passed]


# ---- commands, through the real executable ---------------------------------------------------

def test_plugins_lists_the_installed_plugins_the_example_through_its_entry_point():
    listing = run("plugins")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "ACCEPTS", "TARGETS", "OUTPUT", "LOSSY"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert {"tflm", "litert", "ptq-int8", "example"} <= set(rows)
    assert rows["example"] == ["example", "0.1.0", "tflite", "example-rt", "tflite", "no"]
    assert rows["ptq-int8"][-1] == "yes"
    assert lines[-1] == f"{len(rows)} plugin(s)"
    as_json = json.loads(run("plugins", "--json").stdout)
    assert {"name": "example", "version": "0.1.0", "accepts": ["tflite"], "targets": ["example-rt"],
            "output_format": "tflite", "lossy": False, "priority": 0} in as_json


def test_plugins_check_passes_the_example_and_refuses_an_unknown_name():
    checked = run("plugins", "check", "example")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0] == "checking example 0.1.0"
    assert all(line.startswith("PASS  ") for line in lines[1:-1]) and len(lines) > 20
    count = len(lines) - 2
    assert lines[-1] == f"example: {count} of {count} checks passed"
    unknown = run("plugins", "check", "no-such-plugin")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert "no compiler plugin named 'no-such-plugin' is installed" in unknown.stderr
    assert "example" in unknown.stderr.split("installed: ", 1)[1]


def test_plugins_check_exits_1_for_a_broken_plugin_found_through_its_entry_point(tmp_path):
    # an installed distribution as importlib.metadata sees it: a module and a .dist-info with the entry point
    (tmp_path / "broken_check_plugin.py").write_text(textwrap.dedent("""
        from tinymlaas_plugin_example import ExamplePlugin

        class BrokenCheck(ExamplePlugin):
            name = "broken-check"

            def check(self, model, target):
                raise KeyError("FULLY_CONNECTED")
    """))
    info = tmp_path / "broken_check_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-check-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tinymlaas.compilers]\nbroken-check = broken_check_plugin:BrokenCheck\n")
    checked = run("plugins", "check", "broken-check", env={"PYTHONPATH": str(tmp_path)})
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "FAIL  sample 1: check: check raised KeyError: 'FULLY_CONNECTED' (at broken_check_plugin.py:" in checked.stdout
    assert "FAIL  only CompilerError raised: " in checked.stdout
    assert checked.stdout.splitlines()[-1].endswith(", 5 failed")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin-standard")
    daemon = Daemon(folder)
    daemon.start()
    daemon.api = ["--api", f"http://127.0.0.1:{daemon.api_port}",
                  "--token", (folder / "data" / "api-token").read_text().strip()]
    yield daemon
    daemon.kill()


def test_models_add_takes_the_format_from_the_extension_and_the_server_judges_it(daemon, tmp_path):
    files = {"dense.tflite": sample_bytes("dense_int8.tflite"), "image.bin": b"\x7fELF firmware",
             "tree.json": b'{"not": "a model"}', "net.onnx": b"\x00garbage", "notes.md": b"# not a model"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def add(file: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run("models", "add", str(tmp_path / file), "--name", Path(file).stem, "--version", "1",
                   *extra, *daemon.api)

    added = add("dense.tflite")
    assert added.returncode == 0 and added.stdout.startswith("added dense@1 (2080 bytes"), added.stderr
    unknown = add("image.bin")
    assert unknown.returncode == 1 and "give --format" in unknown.stderr and "firmware" in unknown.stderr
    firmware = add("image.bin", "--format", "firmware")
    assert firmware.returncode == 0, firmware.stderr
    # .json and .onnx: the CLI sends emlearn-json and onnx; the daemon refuses these bytes either way
    for file, fmt in (("tree.json", "emlearn-json"), ("net.onnx", "onnx")):
        refused = add(file)
        assert refused.returncode == 1, refused.stderr
        assert f"{fmt!r} is not supported" in refused.stderr or f"is not a valid {fmt} model" in refused.stderr
    not_tflite = add("notes.md", "--format", "TFLite")
    assert not_tflite.returncode == 1
    assert "notes@1 is not a valid tflite model: not a TFLite flatbuffer" in not_tflite.stderr
    nope = add("dense.tflite", "--format", "nope")
    assert nope.returncode == 1 and "format 'nope' is not supported (" in nope.stderr
    assert "tflite" in nope.stderr and "firmware" in nope.stderr
    listed = json.loads(run("models", "list", "--json", *daemon.api).stdout)
    assert sorted((m["name"], m["format"]) for m in listed) == [("dense", "tflite"), ("image", "firmware")]
