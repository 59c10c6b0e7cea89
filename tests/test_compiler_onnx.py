"""The ``onnxruntime`` compiler plugin: ONNX models in, checked with onnx.checker, optimised and
saved as ORT format for devices running ONNX Runtime; the same bytes for every device of a class;
an MCU class refused in plain words; uploads validated; and a rollout over CoAP to simulated
``linux-gateway-onnx`` devices whose Last Inference Result is ONNX Runtime's real output."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from lwm2m_server.compilers import (Incompatible, ModelError, ModelInput, TargetSpec, discover_plugins,
                                    fit_reasons, select_plugin)
from lwm2m_server.compilers.conformance import check_plugin
from lwm2m_server.compilers.onnxrt import ALL_OPERATORS, OnnxRuntimePlugin
from lwm2m_server.compilers.ort_format import canonical, read_graph
from lwm2m_server.config import DeploymentConfig
from lwm2m_server.ota.deployment import Deployment, DeploymentError
from lwm2m_server.store.sqlite import SqliteStore
from lwm2m_server.suit import ModelMetadata, build_envelope, make_class_id
from simulators.client import SimulatedDevice
from simulators.inference import format_result, synthetic_inputs
from simulators.objects import DeviceObjects
from simulators.profiles import builtin_profiles, load_config
from simulators.runtime_onnx import OnnxRuntimeModel
from test_daemon import Daemon
from test_e2e_deploy import Api, wait_for
from test_sim_updates import KEY, VENDOR_ID, capabilities, deploy

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
DENSE = (MODELS / "dense_float.onnx").read_bytes()
CONV = (MODELS / "conv_float.onnx").read_bytes()
FLEET = load_config(ROOT / "config" / "fleet.yaml")
GATEWAY = FLEET.profiles["linux-gateway-onnx"]
ORT = onnxruntime.__version__


def gateway_target(**changes) -> TargetSpec:
    """The target the server reads from a simulated linux-gateway-onnx device."""
    objects = DeviceObjects(profile=GATEWAY, endpoint="gwo-probe", seed=1, now=1_700_000_000)
    target = TargetSpec.from_resources(capabilities(objects), memory_free_kb=objects.get("/3/0/10"))
    if "cpu_core" in changes:
        changes.setdefault("architecture", "")  # derived again from the new core
    return replace(target, **changes)


def onnx_session(data: bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def model_with(nodes, inputs, outputs, initializers=(), opset: int = 17) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def float_io(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture(scope="module")
def plugin() -> OnnxRuntimePlugin:
    return OnnxRuntimePlugin()


# -- fixtures ------------------------------------------------------------------------------------


def test_the_committed_fixtures_are_what_their_script_makes():
    spec = importlib.util.spec_from_file_location("make_onnx_models", MODELS / "make_onnx_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for path, build in script.MODELS.items():
        model, feed, expected = build()
        assert model.SerializeToString(deterministic=True) == path.read_bytes(), path.name
        (got,) = onnx_session(path.read_bytes()).run(None, feed)
        assert np.allclose(got, expected, atol=1e-6), path.name  # ORT agrees with the float64 reference


# -- validate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    (b"", "the file is empty"),
    (b"\x00garbage", "not an ONNX model: the bytes do not parse as an ONNX ModelProto"),
    (b"TFL3" + bytes(range(200)), "not an ONNX model"),
    (b"\x08\x07", "not an ONNX model: the bytes hold no IR version or no graph"),  # ir_version 7 only
    (DENSE[: len(DENSE) // 2], "not an ONNX model"),
])
def test_validate_refuses_garbage_with_a_reason(plugin, data, expected):
    with pytest.raises(ModelError) as caught:
        plugin.validate(ModelInput(data, "onnx"))
    assert caught.value.reason.startswith(expected)
    assert "\n" not in caught.value.reason and "Traceback" not in caught.value.reason


def test_validate_refuses_a_structurally_broken_graph(plugin):
    dangling = model_with([helper.make_node("Relu", ["nowhere"], ["y"])], [float_io("x", [1, 4])],
                          [float_io("y", [1, 4])])
    with pytest.raises(ModelError) as caught:
        plugin.validate(ModelInput(dangling, "onnx"))
    assert caught.value.reason.startswith("ONNX checker: ") and "nowhere" in caught.value.reason
    mismatched = model_with([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_io("x", [1, 4])],
                            [float_io("y", [1, 3])], [numpy_helper.from_array(np.ones((5, 3), np.float32), "w")])
    with pytest.raises(ModelError) as caught:  # the full check runs shape inference: 4 vs 5 inner dimension
        plugin.validate(ModelInput(mismatched, "onnx"))
    assert caught.value.reason.startswith("ONNX checker: ") and "\n" not in caught.value.reason
    external = onnx.load_model_from_string(DENSE)
    external.graph.initializer[0].data_location = TensorProto.EXTERNAL
    with pytest.raises(ModelError, match="stored in external files .*w1"):
        plugin.validate(ModelInput(external.SerializeToString(), "onnx"))
    plugin.validate(ModelInput(DENSE, "onnx"))  # the fixture is fine


# -- compile ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [DENSE, CONV], ids=["dense", "conv"])
def test_the_ort_payload_computes_what_the_onnx_model_does(plugin, data):
    target = gateway_target()
    module = plugin.compile(ModelInput(data, "onnx", "m", "1"), target)
    assert module.payload[4:8] == b"ORTM" and module.payload_format == "ort" and module.runtime == "onnxruntime"
    assert fit_reasons(module, target) == []
    assert module.required_ops == {ALL_OPERATORS}  # what the wildcard device is asked for
    source = onnx.load_model_from_string(data)
    source_ops = {node.op_type for node in source.graph.node}
    assert module.report["source_operators"] == sorted(source_ops)
    assert set(module.cpu_ops) != source_ops and module.report["optimization_level"] == "extended"  # fused
    assert ORT in module.compiler_version
    [tensor_in], [tensor_out] = module.inputs, module.outputs
    assert (tensor_in.name, tensor_in.dtype) == (source.graph.input[0].name, "float32")
    assert tensor_out.shape == (1, 4) and tensor_out.dtype == "float32"
    compiled, reference = onnx_session(module.payload), onnx_session(data)
    for count in range(8):
        feed = {tensor_in.name: synthetic_inputs(module.inputs, [0.4, -0.2], seed=5, count=count)[0]}
        (got,), (expected,) = compiled.run(None, feed), reference.run(None, feed)
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert abs(float(got.sum()) - 1.0) < 1e-5  # a softmax
    # the estimate: every non-constant tensor of the optimised graph, as the simulated device reports it
    assert module.required_arena_bytes == OnnxRuntimeModel(module.payload).arena_used > 0
    graph = read_graph(module.payload)
    assert module.required_ram_bytes > len(module.payload) + graph.initializer_bytes


def test_a_device_listing_operators_gets_only_those(plugin):
    listed = gateway_target(ops=frozenset({"MatMul", "Add", "Relu", "Softmax"}), cpu_core="x86_64")
    module = plugin.compile(ModelInput(DENSE, "onnx"), listed)
    assert module.required_ops <= listed.ops and fit_reasons(module, listed) == []
    assert module.report["target_platform"] == "amd64"
    with_gemm = replace(listed, ops=listed.ops | {"Gemm"})
    module = plugin.compile(ModelInput(DENSE, "onnx"), with_gemm)
    assert "Gemm" in module.required_ops and module.required_ops <= with_gemm.ops  # basic fusions used
    reasons = plugin.check(ModelInput(CONV, "onnx"), listed)
    assert reasons == ["operators not supported by the device's onnxruntime build: Conv, Flatten, Gemm"]


def test_the_payload_is_the_same_bytes_for_every_device_of_a_class(plugin):
    """ONNX Runtime writes one table in hash order (different bytes from run to run); the plugin
    lays it out canonically, so fresh plugins, other memory figures and another process agree."""
    small = gateway_target(ram_bytes=64 * 1024 * 1024, arena_budget_bytes=1024 * 1024)
    assert small.device_class == gateway_target().device_class
    digests = set()
    for data in (DENSE, CONV):
        found = {OnnxRuntimePlugin().compile(ModelInput(data, "onnx"), t).payload_digest
                 for t in [gateway_target(), small] * 3}
        assert len(found) == 1
        digests |= found
    script = ("import sys; sys.path.insert(0, 'tests')\n"
              "from test_compiler_onnx import gateway_target, CONV, DENSE\n"
              "from lwm2m_server.compilers import ModelInput\n"
              "from lwm2m_server.compilers.onnxrt import OnnxRuntimePlugin\n"
              "for data in (DENSE, CONV):\n"
              "    print(OnnxRuntimePlugin().compile(ModelInput(data, 'onnx'), gateway_target()).payload_digest)\n")
    other = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    assert set(other.stdout.split()) == digests
    payload = plugin.compile(ModelInput(CONV, "onnx"), gateway_target()).payload
    assert canonical(payload) == payload  # already canonical: idempotent


def test_check_names_what_does_not_fit(plugin):
    model = ModelInput(DENSE, "onnx")
    old = gateway_target(runtime_version="1.20.0")
    assert plugin.check(model, old) == [
        f"the payload is an ORT format model written by onnxruntime {ORT}; the device runs onnxruntime 1.20.0, "
        "and ORT format models load only in the same or a newer release"]
    tiny = gateway_target(ram_bytes=4096, flash_bytes=4096, arena_budget_bytes=128)
    reasons = plugin.check(model, tiny)
    assert [r.split(" ")[0:2] for r in reasons] == [["ORT", "format"], ["needs", "up"], ["model,", "weights"]]
    assert "device arena budget is 128 B" in reasons[1] and "estimate" in reasons[1]
    assert plugin.check(model, gateway_target(formats=frozenset({"tflite"}))) == [
        "device does not install 'ort' payloads (supports: tflite)"]
    newer = model_with([helper.make_node("Relu", ["x"], ["y"])], [float_io("x", [1, 4])], [float_io("y", [1, 4])],
                       opset=onnx.defs.onnx_opset_version())
    [reason] = plugin.check(ModelInput(newer, "onnx"), gateway_target())
    assert reason.startswith(f"model imports ai.onnx opset {onnx.defs.onnx_opset_version()}; onnxruntime {ORT} "
                             "supports up to ")
    custom = onnx.load_model_from_string(model_with(
        [helper.make_node("Mystery", ["x"], ["y"], domain="example.custom")], [float_io("x", [1, 4])],
        [float_io("y", [1, 4])]))
    custom.opset_import.append(helper.make_opsetid("example.custom", 1))
    assert plugin.check(ModelInput(custom.SerializeToString(), "onnx"), gateway_target()) == [
        f"operator domain 'example.custom' (example.custom:Mystery) is not implemented by onnxruntime {ORT}"]
    too_new = onnx.load_model_from_string(newer)
    too_new.opset_import[0].version, too_new.ir_version = 17, onnx.IR_VERSION  # the checker knows it, ORT not
    assert plugin.check(ModelInput(too_new.SerializeToString(), "onnx"), gateway_target()) == [
        f"onnxruntime {ORT} cannot load the model: Unsupported model IR version: {onnx.IR_VERSION}, "
        f"max supported IR version: {onnx.IR_VERSION - 1}"]  # ORT's message without its C++ location
    with pytest.raises(Incompatible, match="ORT format model is .* device model storage is 4096 B"):
        plugin.compile(model, tiny)


def test_an_onnx_model_for_an_mcu_class_is_incompatible_in_plain_words():
    profile = builtin_profiles()["cortex-m4f"]
    objects = DeviceObjects(profile=profile, endpoint="m4f-probe", seed=1, now=1_700_000_000)
    mcu = TargetSpec.from_resources(capabilities(objects), memory_free_kb=objects.get("/3/0/10"))
    with pytest.raises(Incompatible) as caught:
        select_plugin(discover_plugins(), ModelInput(DENSE, "onnx", "dense", "1"), mcu)
    by_plugin = caught.value.reasons_by_plugin
    assert by_plugin["onnxruntime"] == [
        "onnxruntime compiles ONNX models for onnxruntime devices only; this device runs 'tflite-micro', "
        "and no ONNX→TFLite converter plugin is installed"]
    for name in ("tflm", "litert", "ptq-int8"):
        assert f"{name} does not accept 'onnx' models (accepts: tflite)" in by_plugin[name]
    assert caught.value.reason.startswith("no compiler plugin fits: ")
    assert "no ONNX→TFLite converter plugin is installed" in caught.value.reason


def test_the_plugin_is_installed_and_passes_the_conformance_kit():
    [plugin] = [p for p in discover_plugins() if p.name == "onnxruntime"]
    failed = [f"{f.check}: {f.message}" for f in check_plugin(plugin) if not f.passed]
    assert failed == []


# -- uploads ----------------------------------------------------------------------------------------


async def test_uploads_of_onnx_models_are_validated_by_the_plugin(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    try:
        config = DeploymentConfig(data_dir=tmp_path / "data", signing_key=tmp_path / "keys" / "signing.pem")
        deployment = Deployment(config, store, clock=lambda: 1_800_000_000.0)
        await deployment.start()
        assert "onnx" in deployment.formats()
        with pytest.raises(DeploymentError) as caught:
            await deployment.add_model(b"\x00garbage", "broken", "1", fmt="onnx")
        assert str(caught.value) == ("broken@1 is not a valid onnx model: not an ONNX model: "
                                     "the bytes do not parse as an ONNX ModelProto")
        record = await deployment.add_model(DENSE, "dense", "1", fmt="onnx")
        assert (record.format, record.size) == ("onnx", len(DENSE))
        target = gateway_target()
        artifact = await deployment.artifact_for(record, target)
        assert artifact.plugin == "onnxruntime" and artifact.device_class == target.device_class
    finally:
        await store.close()


# -- the simulated gateway ---------------------------------------------------------------------------


def test_the_simulated_gateway_runs_the_module_with_onnx_runtime(plugin):
    objects = DeviceObjects(profile=GATEWAY, endpoint="gwo-0001", seed=3, now=1_700_000_000,
                            trust_anchors=[KEY.public_key()])
    target = TargetSpec.from_resources(capabilities(objects), memory_free_kb=objects.get("/3/0/10"))
    module = plugin.compile(ModelInput(CONV, "onnx", "conv", "1.0.0"), target)
    meta = ModelMetadata("conv", "1.0.0", module.required_arena_bytes, module.inputs, module.outputs,
                         target.runtime, target.runtime_version, module.compiler, module.compiler_version)
    deploy(objects, build_envelope(module.payload, sequence_number=1, vendor_id=VENDOR_ID,
                                   class_id=make_class_id(VENDOR_ID, target.device_class), metadata=meta,
                                   signing_key=KEY))
    assert objects.get("/26241/0/10") == "conv" and objects.get("/26241/0/13") == module.required_arena_bytes
    inputs = synthetic_inputs(module.inputs, objects.sensor_features(), objects.seed, 0)
    (expected,) = onnx_session(CONV).run(None, {"image": inputs[0]})
    assert objects.get("/26241/0/14") == format_result(expected.reshape(-1))
    assert objects.get("/26241/0/16") == 1 and objects.get("/26241/0/15") > 0


# -- end to end over CoAP ---------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path, "deployment: {poll_interval_s: 0.2, phase_timeout_s: 60}\n")
    yield daemon
    if daemon.process and daemon.process.poll() is None:
        daemon.kill()


async def test_rollout_of_an_onnx_model_to_simulated_onnx_gateways(daemon):
    await asyncio.to_thread(daemon.start)
    api = Api(daemon)
    anchor = daemon.folder / "data" / "keys" / "signing-es256.pub.pem"
    server = f"coap://127.0.0.1:{daemon.coap_port}"
    devices = {f"gwo-{i:02d}": SimulatedDevice(f"gwo-{i:02d}", GATEWAY, server, seed=i, sensor_interval=3600,
                                               trust_anchors=[anchor]) for i in range(2)}
    devices["m4f-00"] = SimulatedDevice("m4f-00", "cortex-m4f", server, seed=9, sensor_interval=3600,
                                        trust_anchors=[anchor])
    try:
        for device in devices.values():
            await device.start()

        async def discovered():
            listed = [await api.call("GET", f"/devices/{ep}") for ep in devices]
            return all(d["profile"] and d["profile"]["tinyml"] for d in listed)

        await wait_for(discovered, 60, "discovery")
        model = await api.call("POST", "/models?name=dense-onnx&version=1.0.0&format=onnx", raw=DENSE)
        assert (model["format"], model["size"]) == ("onnx", len(DENSE))
        rollout = await api.call("POST", "/rollouts", {
            "model": "dense-onnx@1.0.0", "strategy": {"max_in_flight": 4, "canary_fraction": 0.5, "mode": "auto"}})

        async def finished():
            state = await api.call("GET", f"/rollouts/{rollout['id']}")
            summary = state["summary"]
            return summary["total"] == 3 and summary["finished"] == summary["total"] and state

        final = await wait_for(finished, 180, "rollout end")
        assert final["summary"]["counts"] == {"done": 2, "incompatible": 1}, final["devices"]
        by_endpoint = {d["endpoint"]: d for d in final["devices"]}
        assert "no ONNX→TFLite converter plugin is installed" in by_endpoint["m4f-00"]["reason"]
        reference = onnx_session(DENSE)
        for endpoint in ("gwo-00", "gwo-01"):
            assert by_endpoint[endpoint]["status"] == "done"
            result = await api.call("POST", f"/devices/{endpoint}/execute", {"path": "/26241/0/18"})
            assert result["ok"], result
            objects = devices[endpoint].objects
            # read together, with no await between: the result and the count of the same inference
            shown, count = objects.get("/26241/0/14"), objects.get("/26241/0/16")
            assert objects.get("/26241/0/10") == "dense-onnx" and count >= 2
            loaded = objects.runtime.current()
            assert isinstance(loaded, OnnxRuntimeModel)
            inputs = synthetic_inputs(loaded.inputs, objects.sensor_features(), objects.seed, count - 1)
            (expected,) = reference.run(None, {"input": inputs[0]})
            assert shown == format_result(expected.reshape(-1))
            assert json.loads(shown) and abs(sum(json.loads(shown)) - 1.0) < 1e-5
            read = await api.call("POST", f"/devices/{endpoint}/read", {"path": "/26241/0/14"})
            assert json.loads(read["values"][0]["value"]) == json.loads(objects.get("/26241/0/14"))
    finally:
        for device in devices.values():
            await device.stop(deregister=False)
