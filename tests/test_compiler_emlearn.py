"""Classic ML models: the ``emlearn-json`` format, the ``emlearn`` plugin (C via emlearn),
the simulated device that builds that C with ``cc`` and runs it, and a rollout over CoAP
whose devices report the real predictions. No scikit-learn here: its predictions were
stored by tests/fixtures/models/make_classic_models.py."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.compilers import Incompatible, ModelError, ModelInput, TargetSpec, discover_plugins, select_plugin
from lwm2m_server.compilers.classic_model import FORMAT_NAME, MAX_DOCUMENT_BYTES, parse
from lwm2m_server.compilers.conformance import check_plugin
from lwm2m_server.compilers.emlearn_plugin import EmlearnPlugin, emlearn_threshold
from lwm2m_server.core import operations as ops
from lwm2m_server.ota.rollouts import Selector, Strategy
from lwm2m_server.suit import TensorSpec
from simulators.client import SimulatedDevice
from simulators.inference import synthetic_inputs
from simulators.profiles import load_config
from simulators.runtime import ModelLoadError, installable, load_model
from test_orchestrator import Stack

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "fixtures" / "models"
EXPECTED = json.loads((MODELS / "classic_expected.json").read_text())
INPUTS = np.array(EXPECTED["inputs"], dtype=np.float32)
REGISTRY = ObjectRegistry.default()
PROFILE = load_config(ROOT / "config" / "fleet.yaml").profiles["cortex-m0plus-emlearn"]
M0PLUS = TargetSpec("emlearn", "0.23.2", "cortex-m0plus", ram_bytes=1024, flash_bytes=32768, arena_budget_bytes=256,
                    ops=frozenset({"decision_tree", "random_forest"}), formats=frozenset({"c-source"}))


def model_input(file_name: str) -> ModelInput:
    return ModelInput((MODELS / file_name).read_bytes(), FORMAT_NAME, file_name.split(".")[0], "1.0.0")


def document(file_name: str = "classic_tree.json") -> dict:
    return json.loads((MODELS / file_name).read_text())


def reference_class(doc: dict, features) -> int:
    """The hard-vote class of ``doc`` for ``features``, walked here from the JSON alone:
    float32 features, left when ``x <= threshold``, each tree votes its leaf's heaviest class."""
    x = np.asarray(features, dtype=np.float32).reshape(-1)
    votes = [0] * doc["n_classes"]
    for tree in doc["trees"]:
        node = 0
        while tree["left"][node] != -1:
            go_left = float(x[tree["feature"][node]]) <= tree["threshold"][node]
            node = tree["left"][node] if go_left else tree["right"][node]
        weights = tree["value"][node]
        votes[weights.index(max(weights))] += 1
    return votes.index(max(votes))


def compiled(file_name: str, target: TargetSpec = M0PLUS):
    return EmlearnPlugin().compile(model_input(file_name), target)


# -- the format --------------------------------------------------------------------------------


def test_fixtures_parse_with_their_shape():
    tree, forest, soft = (parse((MODELS / f).read_bytes()) for f in
                          ("classic_tree.json", "classic_forest.json", "classic_forest_soft.json"))
    assert (tree.model_type, len(tree.trees), tree.n_features, tree.n_classes) == ("decision_tree", 1, 5, 3)
    assert tree.feature_names[0] == "temperature" and tree.classes == ("calm", "moving", "warm")
    assert (forest.model_type, len(forest.trees), forest.pure_leaves) == ("random_forest", 6, True)
    assert (len(soft.trees), soft.pure_leaves, soft.max_depth) == (4, False, 3)


def _set(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _bad_cases():
    tree = document()
    t = tree["trees"][0]
    internal = next(i for i, left in enumerate(t["left"]) if left != -1 and i > 0)
    leaf = t["left"].index(-1)
    return [
        ("bad child index", _set(tree, ("trees", 0, "left", 0), len(t["left"])), "trees[0].left[0]: must be in -1..22"),
        ("cycle", _set(tree, ("trees", 0, "right", internal), 0), f"trees[0].right[{internal}]: node 0 is reached twice"),
        ("shared subtree", _set(tree, ("trees", 0, "right", 0), t["left"][0]),
         "trees[0].right[0]: node 1 is reached twice"),
        ("NaN threshold", json.dumps(_set(tree, ("trees", 0, "threshold", 0), 12345.5)).replace("12345.5", "NaN"),
         "trees[0].threshold[0]: must be a finite number, got nan"),
        ("infinite threshold", _set(tree, ("trees", 0, "threshold", 0), 1e39), "trees[0].threshold[0]: must be within"),
        ("wrong lengths", _set(tree, ("trees", 0, "right"), t["right"][:-1]), "trees[0].right: must have 23 entries, got 22"),
        ("one child", _set(tree, ("trees", 0, "left", 0), -1), "trees[0].left[0]: a node has two children or none"),
        ("feature out of range", _set(tree, ("trees", 0, "feature", 0), 5), "trees[0].feature[0]: must be in 0..4, got 5"),
        ("split on a leaf", _set(tree, ("trees", 0, "feature", leaf), 2), f"trees[0].feature[{leaf}]: must be -1 at a leaf"),
        ("leaf without weights", _set(tree, ("trees", 0, "value", leaf), [0, 0, 0]),
         f"trees[0].value[{leaf}]: a leaf's class weights must not all be 0"),
        ("weights per class", _set(tree, ("trees", 0, "value", leaf), [1, 2]), f"trees[0].value[{leaf}]: must have 3 entries"),
        ("huge n_features", _set(tree, ("n_features",), 100_000), "n_features: must be in 1..1024, got 100000"),
        ("too many trees", _set(document("classic_forest.json"), ("trees",), document("classic_forest.json")["trees"] * 50),
         "trees: must have 1..256 entries, got 300"),
        ("two trees in a decision_tree", _set(tree, ("trees",), [t, t]), "trees: must have 1..1 entries, got 2"),
        ("wrong format", _set(tree, ("format",), "pickle"), "format: must be 'emlearn-json', got \"pickle\""),
        ("wrong version", _set(tree, ("version",), 2), "version: must be in 1..1, got 2"),
        ("unknown field", _set(tree, ("code",), "__import__('os')"), "code: unknown field"),
        ("missing field", {k: v for k, v in tree.items() if k != "n_classes"}, "n_classes: is missing"),
        ("boolean as a number", _set(tree, ("n_classes",), True), "n_classes: must be an integer, got true"),
        ("not JSON", b"\x80\x04\x95 a pickle", "document: is not UTF-8 text"),
        ("not an object", b"[1, 2]", "document: must be a JSON object"),
        ("garbage", b"\x00garbage", "document: is not JSON"),
        ("too big", b" " * (MAX_DOCUMENT_BYTES + 1), f"document: is {MAX_DOCUMENT_BYTES + 1} B, more than"),
    ]


@pytest.mark.parametrize("case, data, message", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_parse_refuses_malformed_documents_naming_the_field(case, data, message):
    raw = data if isinstance(data, bytes) else (data if isinstance(data, str) else json.dumps(data)).encode()
    with pytest.raises(ModelError) as refused:
        parse(raw)
    assert refused.value.reason.startswith(message), refused.value.reason


def test_a_tree_deeper_than_the_limit_is_refused():
    n = 70  # a chain: node i splits, its left child is a leaf, its right child the next split
    left, right, feature, threshold, value = [], [], [], [], []
    for i in range(n):
        split = 2 * i
        left += [split + 1, -1]
        right += [split + 2 if i < n - 1 else split + 1, -1]
        feature += [0, -1]
        threshold += [0.0, 0.0]
        value += [None, [1, 0]]
    left[-2], right[-2] = 2 * n - 1, 2 * n
    left += [-1]; right += [-1]; feature += [-1]; threshold += [0.0]; value += [[0, 1]]
    doc = {"format": FORMAT_NAME, "version": 1, "model_type": "decision_tree", "n_features": 1, "n_classes": 2,
           "trees": [{"feature": feature, "threshold": threshold, "left": left, "right": right, "value": value}]}
    with pytest.raises(ModelError, match=r"^trees\[0\]: is deeper than 64 levels"):
        parse(json.dumps(doc).encode())


def test_thresholds_become_strict_float32_bounds():
    for threshold in (0.38160598278045654, -0.30582261085510254, 0.0, 1.0, 1e-30):
        bound = emlearn_threshold(threshold)
        below = np.float32(threshold) if float(np.float32(threshold)) <= threshold else \
            np.nextafter(np.float32(threshold), np.float32(-np.inf))
        for x in (below, np.nextafter(below, np.float32(np.inf)), np.nextafter(below, np.float32(-np.inf))):
            assert (float(x) < bound) == (float(x) <= threshold), (threshold, x)


def test_the_reference_walk_agrees_with_scikit_learn():
    for name in ("classic_tree.json", "classic_forest.json"):
        doc = document(name)
        assert [reference_class(doc, x) for x in INPUTS] == EXPECTED["models"][name]["predictions"]


# -- the plugin --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["classic_tree.json", "classic_forest.json"])
def test_the_built_c_predicts_what_scikit_learn_predicted(name):
    module = compiled(name)
    assert module.report["exact"] is True and module.report["voting"] == "hard"
    model = load_model("emlearn", module.payload, arena_size=0)
    assert [t.shape for t in model.inputs] == [t.shape for t in module.inputs] == [(1, 5)]
    predictions, scores = [], []
    for x in INPUTS:
        (predicted, score), latency = model.invoke([x.reshape(1, 5)])
        predictions.append(int(predicted[0]))
        scores.append(score[0])
        assert latency > 0
    assert predictions == EXPECTED["models"][name]["predictions"]  # threshold-edge inputs included
    if name == "classic_forest.json":  # pure leaves: the vote shares are scikit-learn's probabilities
        assert np.allclose(scores, EXPECTED["models"][name]["proba"], atol=1e-6)


def test_the_soft_vote_forest_keeps_probabilities_within_8_bits():
    module = compiled("classic_forest_soft.json")
    assert module.report["voting"] == "soft" and module.report["exact"] is False
    assert module.report["leaf_table_bytes"] > 0
    model = load_model("emlearn", module.payload, arena_size=0)
    expected = np.array(EXPECTED["models"]["classic_forest_soft.json"]["proba"])
    got = np.array([model.invoke([x.reshape(1, 5)])[0][1][0] for x in INPUTS])
    assert np.abs(got - expected).max() <= 0.006  # round to 1/254, truncate to 1/255
    ranked = np.sort(expected, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 0.012
    assert clear.sum() > 48
    assert list(got.argmax(axis=1)[clear]) == list(expected.argmax(axis=1)[clear])


def test_compile_is_deterministic_and_the_same_for_a_whole_class():
    first, again = compiled("classic_forest.json"), EmlearnPlugin().compile(model_input("classic_forest.json"), M0PLUS)
    bigger = TargetSpec("emlearn", "0.23.2", "cortex-m0plus", ram_bytes=4096, flash_bytes=65536, arena_budget_bytes=256,
                        ops=M0PLUS.ops, formats=M0PLUS.formats)
    assert bigger.device_class == M0PLUS.device_class
    third = compiled("classic_forest.json", bigger)
    assert first.payload == again.payload == third.payload
    assert first.required_flash_bytes == third.required_flash_bytes and first.required_ram_bytes == third.required_ram_bytes
    assert first.payload.startswith(b"/* tinymlaas c-source v1") and installable(first.payload, ["c-source"])
    assert (first.required_ops, first.required_arena_bytes) == (frozenset({"random_forest"}), 0)
    assert [(t.dtype, t.shape) for t in first.outputs] == [("int32", (1,)), ("float32", (1, 3))]
    assert first.estimated_cycles and "estimate" in first.estimate_source


def test_fit_check_refuses_too_little_storage_with_both_numbers():
    plugin, model = EmlearnPlugin(), model_input("classic_forest.json")
    module = plugin.compile(model, M0PLUS)
    needed = len(module.payload) + module.required_flash_bytes
    small = TargetSpec("emlearn", "0.23.2", "cortex-m0plus", ram_bytes=1024, flash_bytes=needed - 1,
                       arena_budget_bytes=256, ops=M0PLUS.ops, formats=M0PLUS.formats)
    reason = (f"C source {len(module.payload)} B + compiled code about {module.required_flash_bytes} B (estimate) "
              f"= {needed} B, device model storage is {needed - 1} B")
    assert plugin.check(model, small) == [reason]
    with pytest.raises(Incompatible, match=r"C source \d+ B"):
        plugin.compile(model, small)
    roomy = TargetSpec("emlearn", "0.23.2", "cortex-m0plus", ram_bytes=1024, flash_bytes=needed,
                       arena_budget_bytes=256, ops=M0PLUS.ops, formats=M0PLUS.formats)
    assert plugin.check(model, roomy) == []


def test_check_names_a_missing_model_kind_and_too_little_ram():
    trees_only = TargetSpec("emlearn", "0.23.2", "cortex-m4f", ram_bytes=100, flash_bytes=65536, arena_budget_bytes=0,
                            ops=frozenset({"decision_tree"}), formats=frozenset({"c-source"}))
    reasons = EmlearnPlugin().check(model_input("classic_forest.json"), trees_only)
    assert reasons[0] == "model kind 'random_forest' is not one the device runs (its model kinds: decision_tree)"
    assert reasons[1].startswith("needs about ") and reasons[1].endswith("B of RAM (estimate), device has 100 B")
    assert EmlearnPlugin().check(model_input("classic_tree.json"), trees_only) == [reasons[1]]


def test_the_plugin_is_discovered_conforms_and_ships_its_sample():
    plugins = discover_plugins()
    assert "emlearn" in {p.name for p in plugins}
    plugin, _ = select_plugin(plugins, model_input("classic_tree.json"), M0PLUS)
    assert plugin.name == "emlearn"
    failed = [f for f in check_plugin(EmlearnPlugin()) if not f.passed]
    assert not failed, failed
    sample = ROOT / "lwm2m_server" / "compilers" / "samples" / "emlearn_sample.json"
    assert sample.read_bytes() == (MODELS / "classic_tree.json").read_bytes()


# -- the simulated device's runtime ---------------------------------------------------------------


def _payload(body: str) -> bytes:
    return f"/* tinymlaas c-source v1: test {time.time_ns()} */\n#include <stdint.h>\n{body}\n".encode()


@pytest.mark.parametrize("body, message", [
    ("int32_t tinymlaas_predict(const float *f, int32_t n) { return n +; }", "error: expected expression"),
    ("int system(const char *);\nint32_t tinymlaas_predict(const float *f, int32_t n) { return system(\"id\"); }",
     "undefined reference to `system'"),
    ("int32_t tinymlaas_predict(const float *f, int32_t n) { return fopen(\"/etc/passwd\", \"r\") != 0; }",
     "implicit declaration of function 'fopen'"),
])
def test_the_device_refuses_c_that_does_not_build_or_calls_out(body, message):
    with pytest.raises(ModelLoadError) as refused:
        load_model("emlearn", _payload(body), arena_size=0)
    assert refused.value.reason.startswith("the C model does not build (cc exit 1): ")
    assert message in refused.value.reason


def test_the_device_refuses_other_payloads_and_missing_entry_points(monkeypatch, tmp_path):
    with pytest.raises(ModelLoadError, match="not a TinyMLaaS c-source module"):
        load_model("emlearn", (MODELS / "dense_int8.tflite").read_bytes(), arena_size=0)
    with pytest.raises(ModelLoadError, match="lacks the tinymlaas entry points"):
        load_model("emlearn", _payload("int32_t other(void) { return 1; }"), arena_size=0)
    assert not installable((MODELS / "dense_int8.tflite").read_bytes(), ["c-source"])
    monkeypatch.setenv("PATH", str(tmp_path))  # a host without a C compiler
    assert shutil.which("cc") is None
    with pytest.raises(ModelLoadError, match=r"no C compiler \(cc\)"):
        load_model("emlearn", _payload("int32_t x(void) { return 1; }"), arena_size=0)


# -- a rollout over CoAP -----------------------------------------------------------------------------


async def read_resource(stack: Stack, endpoint: str, path: str):
    result = await stack.server.perform(endpoint, lambda reg: ops.read(reg, LwM2MPath.parse(path), registry=REGISTRY))
    assert result.ok, result.diagnostic
    return result.node.value


async def test_a_rollout_installs_the_forest_and_devices_report_its_real_predictions(tmp_path):
    stack = await Stack().start(tmp_path)
    try:
        endpoints = ["eml-1", "eml-2"]
        for seed, endpoint in zip((19, 9), endpoints):  # seeds whose first inputs fall in different classes
            device = SimulatedDevice(endpoint, PROFILE, f"coap://127.0.0.1:{stack.server.port}", seed=seed,
                                     sensor_interval=3600, trust_anchors=[stack.anchor])
            await device.start()
            stack.devices.append(device)
        await stack.device("m4f-1", "cortex-m4f")  # a TFLite MCU: nothing compiles this model for it
        async with asyncio.timeout(10):
            while any(stack.server.profile(ep) is None for ep in endpoints):
                await asyncio.sleep(0.02)
        data = (MODELS / "classic_forest.json").read_bytes()
        model = await stack.deployment.add_model(data, "activity", "1.0.0", FORMAT_NAME)
        rollout = await stack.orchestrator.create(model.key, Selector(), Strategy(canary_fraction=0, max_in_flight=3))
        _, devices = await stack.wait(rollout.id, lambda r, ds: len(ds) == 3 and all(
            d.status.value in ("done", "failed", "incompatible", "rolled_back") for d in ds), 60)
        status = {d.endpoint: d for d in devices}
        assert status["m4f-1"].status.value == "incompatible"
        assert "emlearn does not compile for runtime 'tflite-micro'" in status["m4f-1"].reason
        payload = compiled("classic_forest.json").payload
        doc = json.loads(data)
        spec = TensorSpec("features", "float32", (1, 5))
        reported: set[int] = set()
        for device in stack.devices[:2]:
            endpoint = device.endpoint
            assert status[endpoint].status.value == "done", status[endpoint]
            assert await read_resource(stack, endpoint, "/26241/0/10") == "activity"
            assert await read_resource(stack, endpoint, "/26241/0/12") == hashlib.sha256(payload).digest()
            for _ in range(2):  # Run Inference, then read what the device reports
                run = await stack.server.perform(endpoint, lambda reg: ops.execute(reg, LwM2MPath.parse("/26241/0/18")))
                assert run.ok, run.diagnostic
                count = await read_resource(stack, endpoint, "/26241/0/16")
                result = await read_resource(stack, endpoint, "/26241/0/14")
                features = synthetic_inputs([spec], device.objects.sensor_features(), device.objects.seed, count - 1)
                expected = reference_class(doc, features[0])
                assert count >= 2 and json.loads(result) == [expected], (endpoint, count, result)
                reported.add(expected)
        assert len(reported) > 1  # the devices' inputs reach different classes: not a constant answer
    finally:
        await stack.stop()


def test_importing_emlearn_leaves_numpys_error_handling_alone():
    """emlearn.bayes calls numpy.seterr(all='raise') at import; the plugin must not let that
    turn underflows elsewhere in the server into exceptions."""
    import numpy as np

    from lwm2m_server.compilers.emlearn_plugin import _import_emlearn

    before = np.geterr()
    _import_emlearn("emlearn.trees")
    assert np.geterr() == before
