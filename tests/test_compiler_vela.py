"""The ``vela`` plugin (Arm Ethos-U) and the simulated Cortex-M55 + Ethos-U55 device.

Every figure comes from a real Vela 5.2 run on the committed int8 fixtures;
the tests check the plugin reads them right (against the output flatbuffer
Vela wrote), that the NPU configuration splits device classes, that the fit
check and the refusals name their figures, and that the simulated device
installs a Vela module, runs its CPU-fallback part for real and reports only
the compiler's estimate — marked as one — instead of an inference output.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ipso_objects import LwM2MPath
from lwm2m_server.compilers import (CompileFailed, Incompatible, ModelError, ModelInput, TargetSpec,
                                    discover_plugins, fit_reasons, select_plugin)
from lwm2m_server.compilers.conformance import check_plugin
from lwm2m_server.compilers.ptq import quantize
from lwm2m_server.compilers.samples import sample_bytes
from lwm2m_server.compilers.tflite_model import parse_model
from lwm2m_server.compilers.tflm import TflmPlugin
from lwm2m_server.compilers.vela import ETHOSU_OP, VelaPlugin, npu_config, run_vela
from lwm2m_server.core import operations as ops
from lwm2m_server.ota.rollouts import Selector, Strategy
from lwm2m_server.suit import VENDOR_ID, ModelMetadata, build_envelope, make_class_id
from simulators.objects import DeviceObjects
from simulators.profiles import load_config
from simulators.runtime import ModelLoadError
from simulators.runtime_ethosu import EthosUModel, read_command_stream
from test_orchestrator import Stack
from test_sim_updates import KEY, capabilities, deploy, execute

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
WIDE = ModelInput((MODELS / "wide_int8.tflite").read_bytes(), "tflite", "wide", "1.0.0")
DENSE = ModelInput((MODELS / "dense_int8.tflite").read_bytes(), "tflite", "dense", "1.0.0")
FLOAT = ModelInput((MODELS / "dense_float.tflite").read_bytes(), "tflite", "dense-float", "1.0.0")
M55 = load_config(ROOT / "config" / "fleet.yaml").profiles["cortex-m55-ethos-u55"]
NPU_OPS = frozenset({ETHOSU_OP, "FULLY_CONNECTED", "SOFTMAX", "QUANTIZE", "DEQUANTIZE"})


def npu_target(accelerator: str = "ethos-u55-128", **changes) -> TargetSpec:
    target = TargetSpec("tflite-micro", "2025-01-15", "cortex-m55", ram_bytes=65536, flash_bytes=1 << 20,
                        arena_budget_bytes=256 * 1024, ops=NPU_OPS, accelerators=frozenset({accelerator}),
                        cpu_clock_hz=160_000_000, accelerator_system_config="Ethos_U55_High_End_Embedded",
                        accelerator_memory_mode="Shared_Sram")
    return replace(target, **changes)


@pytest.fixture(scope="module")
def plugin() -> VelaPlugin:
    return VelaPlugin()


@pytest.fixture(scope="module")
def float_interface_model() -> ModelInput:
    """int8 inside, float input and output: QUANTIZE in front, DEQUANTIZE behind (ptq-int8's default),
    two operators the Ethos-U cannot run."""
    return ModelInput(quantize(FLOAT.data).data, "tflite", "dense-q", "1.0.0")


def tensor(payload: bytes, name: str):
    return next(t for t in parse_model(payload).main.tensors if t.name == name)


# -- compiling -------------------------------------------------------------------------------------


def test_wide_int8_compiles_for_ethos_u55_128_with_vela_figures(plugin):
    module = plugin.compile(WIDE, npu_target())
    report = module.report
    out = parse_model(module.payload)
    assert out.operators == module.required_ops == {ETHOSU_OP}  # the whole model runs on the NPU
    assert module.accelerator == "ethos-u55-128"
    assert module.accelerator_ops == ("FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX") and module.cpu_ops == ()
    assert report["npu_operators"] > 0 and report["cpu_operators"] == 0  # Vela's own per-layer count
    # Vela's SRAM figure is the scratch area it planned; its off-chip flash data rides in the payload
    assert report["sram_bytes"] > 0 and report["sram_bytes"] == tensor(module.payload, "scratch").byte_size
    assert report["off_chip_flash_bytes"] == tensor(module.payload, "read_only").data_bytes > 0
    assert module.required_flash_bytes == 0 and module.storage_bytes == len(module.payload)
    io = sum(t.byte_size for t in out.inputs + out.outputs)
    assert module.required_arena_bytes == report["sram_bytes"] + io  # scratch + input + output tensors
    assert module.estimated_cycles == report["cycles"] > 0 and report["macs"] > 0
    assert module.estimated_latency_s == pytest.approx(report["cycles"] / report["npu_clock_hz"])
    assert module.estimate_source == "vela 5.2.0 performance estimate (Ethos_U55_High_End_Embedded, Shared_Sram)"
    assert module.compiler_version == plugin.version and "vela.5.2.0" in plugin.version
    assert any("estimate, not a measurement" in line for line in module.log)
    stream = read_command_stream(_buffer(module.payload, "ethos_u_command_stream"))
    assert stream.accelerator == "ethos-u55-128" and stream.words > 0


def _buffer(payload: bytes, name: str) -> bytes:
    """The bytes of constant tensor ``name`` of a flatbuffer."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(payload, 0))
    found = next(t for t in model.subgraphs[0].tensors if t.name.decode() == name)
    return bytes(model.buffers[found.buffer].data)


def test_another_npu_configuration_is_another_class_and_payload(plugin):
    u55 = npu_target()
    u65 = npu_target("ethos-u65-256", accelerator_system_config="Ethos_U65_High_End",
                     accelerator_memory_mode="Dedicated_Sram")
    slower = npu_target(accelerator_system_config="Ethos_U55_Deep_Embedded")
    assert len({u55.device_class, u65.device_class, slower.device_class}) == 3
    a, b, c = (plugin.compile(WIDE, t) for t in (u55, u65, slower))
    assert len({a.payload_digest, b.payload_digest, c.payload_digest}) == 3
    assert read_command_stream(_buffer(b.payload, "ethos_u_command_stream")).accelerator == "ethos-u65-256"
    assert b.report["dram_bytes"] > 0 and b.estimate_source.endswith("(Ethos_U65_High_End, Dedicated_Sram)")
    assert c.estimated_cycles != a.estimated_cycles  # a 200 MHz NPU with slower flash: another estimate
    # without 26241/22-24 the class name is what it always was, and Vela gets the family's defaults
    plain = replace(u55, accelerator_system_config="", accelerator_memory_mode="")
    assert plain.device_class != u55.device_class
    assert npu_config(plain)[0] == npu_config(u55)[0]


def test_compiles_are_deterministic(plugin):
    config, _ = npu_config(npu_target())
    info = parse_model(WIDE.data)
    first, second = run_vela(WIDE.data, info, config), run_vela(WIDE.data, info, config)  # two Vela runs
    assert first.payload == second.payload
    assert VelaPlugin().compile(WIDE, npu_target()).payload == first.payload


def test_cpu_fallback_operators_are_named_with_vela_reasons(plugin, float_interface_model):
    module = plugin.compile(float_interface_model, npu_target())
    assert module.cpu_ops == ("QUANTIZE", "DEQUANTIZE")
    assert module.accelerator_ops == ("FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX")
    assert module.required_ops == {ETHOSU_OP, "QUANTIZE", "DEQUANTIZE"}  # what the device's TFLM must register
    reasons = {f["operator"]: f["reason"] for f in module.report["cpu_fallback"]}
    assert set(reasons) == {"QUANTIZE", "DEQUANTIZE"} and "Float32" in reasons["QUANTIZE"]
    assert module.report["cpu_operators"] == 2
    assert module.estimate_source.endswith("; NPU operators only)")  # the estimate leaves the CPU part out
    without = npu_target(ops=NPU_OPS - {"QUANTIZE"})
    assert any("QUANTIZE" in r for r in plugin.check(float_interface_model, without))


def test_fit_check_uses_vela_sram_figure(plugin):
    module = plugin.compile(WIDE, npu_target())
    sram = module.report["sram_bytes"]
    small = npu_target(arena_budget_bytes=sram - 1)
    assert small.device_class == npu_target().device_class  # memory only filters
    (reason,) = plugin.check(WIDE, small)
    assert f"Vela's SRAM figure: {sram} B" in reason and f"device arena budget is {sram - 1} B" in reason
    assert fit_reasons(module, small)  # the cached module for the class is refused for it too
    with pytest.raises(Incompatible, match=str(sram)):
        plugin.compile(WIDE, small)
    tight = npu_target(arena_budget_bytes=module.required_arena_bytes)
    assert plugin.check(WIDE, tight) == [] and fit_reasons(module, tight) == []


@pytest.mark.parametrize("changes, expected", [
    ({"accelerators": frozenset({"cmsis-nn"})}, "lists none in its accelerators"),
    ({"accelerators": frozenset({"ethos-u55"})}, "name the variant and MACs per cycle"),
    ({"accelerator_system_config": "Ethos_U99"}, "is not in Vela's Arm/vela.ini"),
    ({"accelerator_memory_mode": "Dram_Only"}, "Shared_Sram"),
    ({"ops": frozenset({"FULLY_CONNECTED", "SOFTMAX"})}, "the Ethos-U driver registers 'ethos-u'"),
    ({"flash_bytes": 4096}, "device model storage is 4096 B"),
    ({"runtime": "litert"}, "does not compile for runtime 'litert'"),
])
def test_targets_it_cannot_serve_get_a_reason(plugin, changes, expected):
    reasons = plugin.check(WIDE, npu_target(**changes))
    assert any(expected in r for r in reasons), reasons


def test_float_model_is_refused_with_the_way_out(plugin):
    (reason,) = plugin.check(FLOAT, npu_target())
    assert "int8-quantized" in reason and "ptq-int8" in reason
    with pytest.raises(Incompatible, match="int8"):
        plugin.compile(FLOAT, npu_target())


@pytest.mark.parametrize("data", [b"\x00garbage", WIDE.data[:200], b"\x10\x00\x00\x00TFL3" + b"\xff" * 40])
def test_malformed_bytes_are_a_model_error(plugin, data):
    bad = ModelInput(data, "tflite", "bad", "1")
    for call in (lambda: plugin.validate(bad), lambda: plugin.check(bad, npu_target()),
                 lambda: plugin.compile(bad, npu_target())):
        with pytest.raises(ModelError):
            call()


def test_unknown_option_is_refused(plugin):
    with pytest.raises(CompileFailed, match="unknown vela option"):
        plugin.compile(DENSE, npu_target(), {"speed": "max"})
    smaller = plugin.compile(WIDE, npu_target(), {"optimise": "Size"})
    assert smaller.report["optimise"] == "Size"


def test_vela_is_chosen_for_an_npu_device_and_tflm_elsewhere(plugin):
    plugins = [TflmPlugin(), plugin]
    chosen, reasons = select_plugin(plugins, DENSE, npu_target())
    assert chosen.name == "vela" and reasons["tflm"] == []  # both fit: the NPU wins
    plain = npu_target(accelerators=frozenset())
    chosen, reasons = select_plugin(plugins, DENSE, plain)
    assert chosen.name == "tflm" and "accelerators" in reasons["vela"][0]


def test_the_plugin_passes_the_conformance_kit(plugin):
    failed = [f for f in check_plugin(plugin) if not f.passed]
    assert not failed, failed
    assert sample_bytes("vela_sample_int8.tflite") == DENSE.data  # the shipped copy of the fixture


# -- the simulated Cortex-M55 + Ethos-U55 ----------------------------------------------------------


def m55() -> DeviceObjects:
    return DeviceObjects(profile=M55, endpoint="m55-0001", seed=3, now=1_700_000_000,
                         trust_anchors=[KEY.public_key()])


def signed(objects: DeviceObjects, model: ModelInput, plugin: VelaPlugin, sequence: int = 1):
    """The module the server would build: compiled for the device's class, estimate in the manifest."""
    target = TargetSpec.from_resources(capabilities(objects), memory_free_kb=objects.get("/3/0/10"))
    module = plugin.compile(model, target)
    meta = ModelMetadata(model.name, model.version, module.required_arena_bytes, module.inputs, module.outputs,
                         target.runtime, target.runtime_version, module.compiler, module.compiler_version,
                         accelerator=module.accelerator, estimated_cycles=module.estimated_cycles,
                         estimated_latency_s=module.estimated_latency_s, estimate_source=module.estimate_source)
    envelope = build_envelope(module.payload, sequence_number=sequence, vendor_id=VENDOR_ID,
                              class_id=make_class_id(VENDOR_ID, target.device_class), metadata=meta, signing_key=KEY)
    return module, envelope


def test_the_device_reports_its_npu_configuration_and_the_server_class():
    objects = m55()
    values = capabilities(objects)
    assert (values[8], values[22], values[23], values[24]) == (
        {0: "ethos-u55-128"}, "Ethos_U55_High_End_Embedded", "Shared_Sram", 262144)
    target = TargetSpec.from_resources(values)
    assert target.accelerator_sram_bytes == 262144
    assert objects.updates.class_id() == make_class_id(VENDOR_ID, target.device_class)


def test_device_installs_a_vela_module_and_shows_only_the_estimate(plugin):
    objects = m55()
    module, envelope = signed(objects, WIDE, plugin)
    deploy(objects, envelope)
    value = lambda rid: objects.get(f"/26241/0/{rid}")  # noqa: E731
    assert (value(10), value(11), value(12)) == ("wide", "1.0.0", bytes.fromhex(module.payload_digest))
    assert value(13) == module.required_arena_bytes  # the same tensors the plugin counted
    assert value(25) == module.estimated_cycles and value(26) == pytest.approx(module.estimated_latency_s * 1e6)
    assert "estimate" in value(27) and value(27) == module.estimate_source
    assert (value(14), value(15), value(16)) == ("", 0.0, 0)  # no output, no latency, no count: nothing invented
    answer = execute(objects, "/26241/0/18")
    assert answer.code == "5.01"
    text = answer.payload.decode()
    assert "cannot run on this simulated device" in text and f"{module.estimated_cycles} cycles" in text
    assert "not a measurement" in text
    assert (value(14), value(16)) == ("", 0)


def test_the_cpu_part_runs_for_real_on_the_device(plugin, float_interface_model):
    objects = m55()
    module, envelope = signed(objects, float_interface_model, plugin)
    deploy(objects, envelope)
    loaded = objects.runtime.current()
    assert isinstance(loaded, EthosUModel)
    assert loaded.cpu_ops == ("QUANTIZE",) and loaded.blocked_ops == ("DEQUANTIZE",)
    x = np.linspace(-1.5, 1.5, 16, dtype=np.float32).reshape(1, 16)
    computed, latency = loaded.run_cpu_part([x])
    (name,) = loaded.cpu_output_names
    quantized = tensor(module.payload, name)
    expected = np.clip(np.round(x / quantized.scales[0]) + quantized.zero_points[0], -128, 127).astype(np.int8)
    assert np.array_equal(computed[name], expected) and latency > 0  # TFLM's QUANTIZE, checked independently
    outputs, _ = loaded.invoke([x])
    assert outputs == [None]  # the model output comes from the NPU part: not computed, not made up
    answer = execute(objects, "/26241/0/18")
    assert answer.code == "5.01" and "ran the CPU part (QUANTIZE) for real" in answer.payload.decode()


def test_the_device_refuses_a_stream_for_another_npu_or_a_broken_one(plugin):
    module = plugin.compile(WIDE, npu_target("ethos-u55-256"))
    with pytest.raises(ModelLoadError, match="for an ethos-u55-256 .* this device's NPU is ethos-u55-128"):
        EthosUModel(module.payload, arena_size=1 << 20, accelerators=("ethos-u55-128",))
    with pytest.raises(ModelLoadError, match="no Ethos-U"):
        EthosUModel(module.payload, arena_size=1 << 20, accelerators=("cmsis-nn",))
    with pytest.raises(ModelLoadError, match="arena budget"):
        EthosUModel(module.payload, arena_size=4096, accelerators=("ethos-u55-256",))
    with pytest.raises(ModelLoadError, match="no 'ethos-u' operator"):
        EthosUModel(DENSE.data, arena_size=1 << 20, accelerators=("ethos-u55-128",))
    stream = _buffer(module.payload, "ethos_u_command_stream")
    with pytest.raises(ModelLoadError, match="COP1"):
        read_command_stream(b"COP2" + stream[4:])
    with pytest.raises(ModelLoadError, match="does not fit"):
        read_command_stream(stream[: len(stream) // 2])


# -- over CoAP: a rollout to an Ethos-U device -------------------------------------------------------


@pytest.fixture
async def stack(tmp_path):
    stack = await Stack().start(tmp_path)
    # the vela entry point is listed only once the package is (re)installed: give the plugin directly
    stack.deployment.plugins = discover_plugins([VelaPlugin()])
    yield stack
    await stack.stop()


async def test_rollout_to_an_ethos_u_device_reports_the_estimate_not_an_output(stack, float_interface_model):
    m55_device = await stack.device("m55-0001", M55)
    m4f_device = await stack.device("m4f-0001", "cortex-m4f")
    profile = stack.server.profile("m55-0001")
    assert profile.tinyml.accelerator_system_config == "Ethos_U55_High_End_Embedded"  # read over CoAP
    model = await stack.deployment.add_model(float_interface_model.data, "dense-q", "1.0.0")
    rollout = await stack.orchestrator.create(model.key, Selector(endpoints=("m55-*", "m4f-*")),
                                              Strategy(max_in_flight=2, canary_fraction=0, mode="push"))
    _, devices = await stack.wait(rollout.id, lambda r, ds: ds and all(d.status.value == "done" for d in ds), 60)
    assert {d.endpoint for d in devices} == {"m55-0001", "m4f-0001"}
    modules = (await stack.store.list_documents("module")).values()
    by_class = {m["device_class"]: m["plugin"] for m in modules}
    assert by_class[profile.device_class] == "vela"
    assert by_class[stack.server.profile("m4f-0001").device_class] == "tflm"

    expected = VelaPlugin().compile(float_interface_model, profile.target_spec())
    read = await stack.server.perform(
        "m55-0001", lambda reg: ops.read(reg, LwM2MPath.parse("/26241/0"), registry=stack.server.registry))
    assert read.ok, read.diagnostic
    values = {leaf.ids[-1]: value for leaf, value in _leaves(read.node).items()}
    assert values[10] == "dense-q" and values[12] == bytes.fromhex(expected.payload_digest)
    assert values[25] == expected.estimated_cycles and "estimate" in values[27]
    assert values[14] == "" and values[16] == 0
    run = await stack.server.perform(
        "m55-0001", lambda reg: ops.execute(reg, LwM2MPath.parse("/26241/0/18"), registry=stack.server.registry))
    assert run.code == "5.01" and "no output" in run.diagnostic and "not a measurement" in run.diagnostic
    assert m55_device.objects.get("/26241/0/14") == ""

    # the same model on the M4F (tflm, on the CPU) gives a real, measured inference
    run = await stack.server.perform(
        "m4f-0001", lambda reg: ops.execute(reg, LwM2MPath.parse("/26241/0/18"), registry=stack.server.registry))
    assert run.code == "2.04"
    async with asyncio.timeout(10):
        while not m4f_device.objects.get("/26241/0/14"):
            await asyncio.sleep(0.05)
    assert len(json.loads(m4f_device.objects.get("/26241/0/14"))) == 4
    assert m4f_device.objects.get("/26241/0/25") is None  # tflm gives no estimate


def _leaves(node):
    from ipso_objects.nodes import flatten
    return flatten(node, LwM2MPath.parse("/26241/0"))
