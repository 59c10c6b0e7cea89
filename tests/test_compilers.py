"""Compiler plugins: model parsing, the tflm / litert / ptq-int8 plugins with their real
interpreters, plugin selection per device profile, discovery and the compile cache."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwm2m_server.compilers import (
    ENTRY_POINT_GROUP, CompileCache, CompiledModule, CompileKey, CompilerPlugin, Incompatible,
    InvalidTarget, ModelError, ModelInput, TargetSpec, discover_plugins, fit_reasons, select_plugin,
    version_key,
)

HAVE_TFLM = find_spec("tflite_micro") is not None
HAVE_LITERT = find_spec("ai_edge_litert") is not None or find_spec("tflite_runtime") is not None
needs_tflm = pytest.mark.skipif(not HAVE_TFLM, reason="tflite-micro is not installed")
needs_litert = pytest.mark.skipif(not HAVE_LITERT, reason="ai-edge-litert is not installed")
needs_both = pytest.mark.skipif(not (HAVE_TFLM and HAVE_LITERT),
                                reason="tflite-micro and ai-edge-litert are needed")
if not HAVE_TFLM:  # the TFLite schema module comes with tflite-micro: nothing here runs without it
    pytest.skip("tflite-micro is not installed (it provides the TFLite schema)", allow_module_level=True)

np = pytest.importorskip("numpy")

from lwm2m_server.compilers.tflite_model import model_object, parse_model, serialize  # noqa: E402

MODELS = Path(__file__).parent / "fixtures" / "models"

# The three hardware classes of simulators/profiles.py (TinyML Capability resources 0–9).
M0PLUS = TargetSpec(
    runtime="tflite-micro", runtime_version="2025-01-15", cpu_core="cortex-m0plus",
    ram_bytes=8192, flash_bytes=131072, arena_budget_bytes=16384, cpu_clock_hz=48_000_000,
    ops=frozenset({"FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "QUANTIZE", "DEQUANTIZE", "LOGISTIC"}))
M4F = TargetSpec(
    runtime="tflite-micro", runtime_version="2025-01-15", cpu_core="cortex-m4f",
    ram_bytes=32768, flash_bytes=524288, arena_budget_bytes=131072, cpu_clock_hz=168_000_000,
    accelerators=frozenset({"cmsis-nn"}),
    ops=frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D",
                   "MAX_POOL_2D", "SOFTMAX", "RESHAPE", "QUANTIZE", "DEQUANTIZE", "LOGISTIC",
                   "ADD", "MUL", "MEAN", "PAD", "TANH", "RELU", "CONCATENATION", "STRIDED_SLICE"}))
GATEWAY = TargetSpec(
    runtime="litert", runtime_version="1.2.0", cpu_core="aarch64", ram_bytes=536870912,
    flash_bytes=4294967296, arena_budget_bytes=268435456, cpu_clock_hz=1_500_000_000,
    accelerators=frozenset({"xnnpack"}),
    ops=M4F.ops | {"SUB", "DIV", "RELU6", "TRANSPOSE", "GATHER", "BATCH_MATMUL", "SQUEEZE",
                   "EXPAND_DIMS", "LEAKY_RELU", "UNIDIRECTIONAL_SEQUENCE_LSTM"})


def model(name: str) -> ModelInput:
    return ModelInput((MODELS / f"{name}.tflite").read_bytes(), "tflite", name, "1.0.0")


@pytest.fixture(scope="module")
def plugins() -> dict[str, CompilerPlugin]:
    from lwm2m_server.compilers.litert import LiteRtPlugin
    from lwm2m_server.compilers.ptq import Int8QuantizePlugin
    from lwm2m_server.compilers.tflm import TflmPlugin

    tflm, litert = TflmPlugin(), LiteRtPlugin()
    ptq = Int8QuantizePlugin({"tflite-micro": tflm, "litert": litert})
    return {"tflm": tflm, "litert": litert, "ptq-int8": ptq}


# ---- model inspection ---------------------------------------------------------------------

def test_parse_reports_operators_tensors_and_quantization() -> None:
    dense = parse_model(model("dense_int8").data)
    assert dense.operators == {"FULLY_CONNECTED", "SOFTMAX"}
    (x,), (y,) = dense.inputs, dense.outputs
    assert (x.dtype, x.shape, y.dtype, y.shape) == ("int8", (1, 16), "int8", (1, 4))
    assert y.scales == (1 / 256,) and y.zero_points == (-128,)
    assert x.spec.quantized and x.spec.scale == pytest.approx(x.scales[0])
    assert dense.aligned() and dense.size == len(model("dense_int8").data)

    conv = parse_model(model("conv_int8").data)
    assert conv.operators == {"CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    weights = next(t for t in conv.main.tensors if t.name == "conv/weights")
    assert len(weights.scales) == 4 and weights.is_constant  # per-channel

    custom = parse_model(model("custom_op").data)
    assert custom.custom_ops == {"TinyMLaaSNoSuchOp"}
    assert "TinyMLaaSNoSuchOp" in custom.operators


@pytest.mark.parametrize("data, words", [
    (b"", "too short"),
    (b"\x1c\x00\x00\x00TFL", "too short"),
    (b"\x00" * 64, "file identifier"),
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 32, "root table offset"),
])
def test_malformed_bytes_raise_model_error_with_the_problem(data: bytes, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        parse_model(data)


def test_truncated_model_raises_model_error() -> None:
    data = model("conv_int8").data
    with pytest.raises(ModelError):
        parse_model(data[: len(data) // 2])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["dense_int8", "conv_int8", "custom_op", "wide_float"]),
       edits=st.lists(st.tuples(st.integers(0, 20000), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(0, 12000))
def test_fuzzed_models_parse_or_raise_model_error(name: str, edits: list[tuple[int, int]],
                                                  cut: int | None) -> None:
    data = bytearray(model(name).data)
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[:cut]
    try:
        info = parse_model(bytes(data))
    except ModelError as exc:
        assert exc.reason
    else:
        assert info.main.outputs


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        parse_model(b"\x10\x00\x00\x00TFL3" + data)
    except ModelError:
        pass


def test_model_input_is_rejected_by_plugins_as_model_error(plugins: dict[str, CompilerPlugin]) -> None:
    broken = ModelInput(b"\x18\x00\x00\x00TFL3" + b"\x07" * 40, "tflite", "broken")
    with pytest.raises(ModelError):
        select_plugin(plugins.values(), broken, M4F)


@needs_litert
def test_serialize_aligns_buffers_and_keeps_the_model() -> None:
    import tflite_micro
    from ai_edge_litert.interpreter import Interpreter

    sine = (Path(tflite_micro.__file__).parent / "python/tflite_micro/sine_float.tflite").read_bytes()
    assert not parse_model(sine).aligned()
    aligned = serialize(model_object(sine))
    assert parse_model(aligned).aligned() and parse_model(aligned).operators == {"FULLY_CONNECTED"}
    outputs = []
    for data in (sine, aligned):
        interpreter = Interpreter(model_content=data)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.array([[1.0]], np.float32))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert np.array_equal(*outputs)


# ---- targets ------------------------------------------------------------------------------

def test_device_class_ignores_memory_and_follows_capabilities() -> None:
    bigger = TargetSpec("tflite-micro", "2025-01-15", "cortex-m0plus", 65536, 262144, 32768, M0PLUS.ops)
    assert bigger.device_class == M0PLUS.device_class
    assert M0PLUS.device_class != M4F.device_class
    assert TargetSpec("tflite-micro", "2025-01-15", "cortex-m0plus", 8192, 1, 1,
                      M0PLUS.ops | {"CONV_2D"}).device_class != M0PLUS.device_class
    assert M0PLUS.device_class.startswith("tflite-micro-2025-01-15-cortex-m0plus-")
    patch = TargetSpec("litert", "1.2.7", "aarch64", 1, 1, 1, GATEWAY.ops, GATEWAY.accelerators)
    assert patch.device_class == GATEWAY.device_class  # same major.minor
    assert version_key("2.14.0") == "2.14" and version_key("2025-01-15") == "2025-01-15"
    assert M0PLUS.architecture == "armv6-m" and M4F.architecture == "armv7e-m"


def test_target_from_capability_resources() -> None:
    resources = {0: "tflite-micro", 1: "2025-01-15", 2: {0: "FULLY_CONNECTED", 1: "SOFTMAX"},
                 3: 8192, 4: 131072, 5: 16384, 6: "Cortex-M0plus", 7: 48_000_000, 9: ["tflite"]}
    target = TargetSpec.from_resources(resources, memory_free_kb=100)
    assert target.ops == {"FULLY_CONNECTED", "SOFTMAX"} and target.cpu_core == "cortex-m0plus"
    assert target.flash_bytes == 100 * 1024 and target.arena_budget_bytes == 16384
    with pytest.raises(InvalidTarget, match=r"/26241/0/5 \(Tensor Arena Budget\)"):
        TargetSpec.from_resources({k: v for k, v in resources.items() if k != 5})


# ---- tflm ---------------------------------------------------------------------------------

@needs_tflm
def test_tflm_measures_the_smallest_arena_that_works(plugins: dict[str, CompilerPlugin]) -> None:
    from lwm2m_server.compilers.tflm import ArenaProbe

    module = plugins["tflm"].compile(model("dense_int8"), M0PLUS)
    arena = module.required_arena_bytes
    assert arena % 16 == 0 and 0 < arena <= M0PLUS.arena_budget_bytes
    with ArenaProbe(module.payload) as probe:
        assert probe.run(arena) == (True, "")
        works, message = probe.run(arena - 16)
    assert not works and "allocate" in message
    assert module.required_ops == {"FULLY_CONNECTED", "SOFTMAX"}
    assert module.inputs[0].dtype == "int8" and module.outputs[0].scale == 1 / 256
    assert module.payload == model("dense_int8").data and module.runtime == "tflite-micro"
    assert any("tensor arena" in line for line in module.log)


@needs_tflm
def test_tflm_rejects_a_missing_operator_by_name(plugins: dict[str, CompilerPlugin]) -> None:
    reasons = plugins["tflm"].check(model("conv_int8"), M0PLUS)
    assert reasons == ["operators not supported by the device's TFLM build: CONV_2D"]
    with pytest.raises(Incompatible, match="CONV_2D"):
        plugins["tflm"].compile(model("conv_int8"), M0PLUS)


@needs_tflm
def test_tflm_rejects_a_model_too_big_with_the_byte_counts(plugins: dict[str, CompilerPlugin]) -> None:
    wide = model("wide_int8")
    arena = plugins["tflm"].measure(wide).arena_bytes  # type: ignore[attr-defined]
    assert 16384 < arena < 131072
    reasons = plugins["tflm"].check(wide, M0PLUS)
    assert f"needs {arena} B of tensor arena, device arena budget is 16384 B" in reasons
    assert "input/output copies need 10240 B of RAM outside the arena, device has 8192 B" in reasons
    tiny_flash = TargetSpec("tflite-micro", "2025-01-15", "cortex-m4f", 32768, 4000, 131072, M4F.ops)
    assert plugins["tflm"].check(wide, tiny_flash) == [f"model is {len(wide.data)} B, device model storage is 4000 B"]
    assert plugins["tflm"].check(wide, M4F) == []


@needs_tflm
def test_tflm_realigns_an_unaligned_flatbuffer(plugins: dict[str, CompilerPlugin]) -> None:
    import tflite_micro

    sine = (Path(tflite_micro.__file__).parent / "python/tflite_micro/sine_float.tflite").read_bytes()
    module = plugins["tflm"].compile(ModelInput(sine, "tflite", "sine"), M0PLUS)
    assert module.payload != sine and parse_model(module.payload).aligned()
    assert module.log[0].startswith("re-serialized with 16-byte aligned buffers")


# ---- litert and cross-interpreter agreement --------------------------------------------------

@needs_litert
def test_litert_loads_and_describes_the_model(plugins: dict[str, CompilerPlugin]) -> None:
    module = plugins["litert"].compile(model("conv_int8"), GATEWAY)
    assert module.payload == model("conv_int8").data and module.compiler == "litert"
    assert module.inputs[0].shape == (1, 8, 8, 1) and module.required_ops >= {"CONV_2D"}
    small = TargetSpec("litert", "1.2.0", "aarch64", 1000, 10**9, 10**9, GATEWAY.ops)
    reasons = plugins["litert"].check(model("conv_int8"), small)
    size = len(model("conv_int8").data)
    assert reasons == [f"model and input/output copies need {size + 68} B of RAM outside the arena, "
                       "device has 1000 B"]
    assert plugins["litert"].check(model("dense_int8"), M0PLUS)[0].startswith(
        "litert does not compile for runtime 'tflite-micro'")


@needs_both
@pytest.mark.parametrize("name, max_lsb", [("dense_int8", 0), ("conv_int8", 0), ("wide_int8", 1)])
def test_int8_outputs_agree_in_tflm_and_litert(name: str, max_lsb: int) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tflite_micro.python.tflite_micro import runtime

    data = model(name).data
    # Measured: LiteRT's builtin kernels match TFLM bit for bit on batch-1 models; on
    # wide_int8's 256-row FULLY_CONNECTED its optimized kernel rounds ~0.05 % of values
    # 1 LSB apart. (XNNPACK and the reference kernels differ by up to 3-4 LSB.)
    lite = Interpreter(model_content=data,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    lite.allocate_tensors()
    detail = lite.get_input_details()[0]
    micro = runtime.Interpreter.from_bytes(data, arena_size=64 * 1024)
    differing = total = 0
    for seed in range(3):
        x = np.random.default_rng(seed).integers(-128, 128, detail["shape"]).astype(np.int8)
        lite.set_tensor(detail["index"], x)
        lite.invoke()
        micro.set_input(x, 0)
        micro.invoke()
        diff = lite.get_tensor(lite.get_output_details()[0]["index"]).astype(int) - micro.get_output(0)
        assert np.abs(diff).max() <= max_lsb
        differing, total = differing + np.count_nonzero(diff), total + diff.size
    assert differing <= total // 100


@needs_both
def test_int8_fixture_tracks_its_float_twin() -> None:
    from ai_edge_litert.interpreter import Interpreter

    x = np.random.default_rng(11).normal(0, 1, (1, 16)).astype(np.float32)
    outs = {}
    for name in ("dense_float", "dense_int8"):
        interpreter = Interpreter(model_content=model(name).data)
        interpreter.allocate_tensors()
        d_in, d_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        value = x
        if d_in["dtype"] == np.int8:
            scale, zp = d_in["quantization"]
            value = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
        interpreter.set_tensor(d_in["index"], value)
        interpreter.invoke()
        out = interpreter.get_tensor(d_out["index"]).astype(np.float64)
        if d_out["dtype"] == np.int8:
            scale, zp = d_out["quantization"]
            out = (out - zp) * scale
        outs[name] = out
    assert np.abs(outs["dense_float"] - outs["dense_int8"]).max() < 0.05


# ---- selection ----------------------------------------------------------------------------

@needs_both
@pytest.mark.parametrize("name, target, expected", [
    ("dense_int8", M0PLUS, "tflm"), ("dense_int8", M4F, "tflm"), ("dense_int8", GATEWAY, "litert"),
    ("conv_int8", M4F, "tflm"), ("conv_int8", GATEWAY, "litert"),
    ("wide_int8", M4F, "tflm"), ("wide_int8", GATEWAY, "litert"),
    ("dense_float", M0PLUS, "tflm"),          # fits as float: lossless wins over ptq-int8
    ("wide_float", M4F, "tflm"),
    ("wide_float", M0PLUS, "ptq-int8"),       # float arena too big: quantizing makes it fit
], ids=lambda v: v.cpu_core if isinstance(v, TargetSpec) else str(v))
def test_selection_picks_the_plugin_per_profile(plugins: dict[str, CompilerPlugin], name: str,
                                                target: TargetSpec, expected: str) -> None:
    chosen, reasons = select_plugin(plugins.values(), model(name), target)
    assert chosen.name == expected
    assert reasons[expected] == [] and set(reasons) == set(plugins)


@needs_both
@pytest.mark.parametrize("name, target, words", [
    ("conv_int8", M0PLUS, {"tflm": "CONV_2D", "litert": "'tflite-micro'", "ptq-int8": "already integer"}),
    ("wide_int8", M0PLUS, {"tflm": "16384 B", "litert": "'tflite-micro'", "ptq-int8": "already integer"}),
    ("custom_op", M4F, {"tflm": "TinyMLaaSNoSuchOp", "litert": "'tflite-micro'",
                        "ptq-int8": "does not support operators: TinyMLaaSNoSuchOp"}),
    ("custom_op", GATEWAY, {"tflm": "'litert'", "litert": "TinyMLaaSNoSuchOp",
                            "ptq-int8": "TinyMLaaSNoSuchOp"}),
])
def test_no_plugin_fits_reports_every_plugins_reason(plugins: dict[str, CompilerPlugin], name: str,
                                                     target: TargetSpec, words: dict[str, str]) -> None:
    with pytest.raises(Incompatible) as caught:
        select_plugin(plugins.values(), model(name), target)
    error = caught.value
    assert error.reason.startswith("no compiler plugin fits: ")
    for plugin, word in words.items():
        assert any(word in r for r in error.reasons_by_plugin[plugin]), (plugin, error.reasons_by_plugin)
        assert f"{plugin}: " in error.reason
    assert set(error.reasons_by_plugin) == set(plugins)


@needs_both
def test_ptq_module_fits_the_m0plus_and_tracks_the_float_model(plugins: dict[str, CompilerPlugin]) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from tflite_micro.python.tflite_micro import runtime

    wide = model("wide_float")
    module = plugins["ptq-int8"].compile(wide, M0PLUS)
    float_arena = plugins["tflm"].measure(wide).arena_bytes  # type: ignore[attr-defined]
    assert float_arena > M0PLUS.arena_budget_bytes >= module.required_arena_bytes
    assert module.required_arena_bytes < float_arena / 2
    assert module.compiler == "ptq-int8" and module.source_digest == wide.digest
    assert module.required_ops == {"QUANTIZE", "FULLY_CONNECTED", "SOFTMAX", "DEQUANTIZE"}
    assert module.inputs[0].dtype == "float32"  # the interface stays float by default
    assert fit_reasons(module, M0PLUS) == []
    assert len(module.payload) < len(wide.data) / 2
    assert any("max |error|" in line for line in module.log)

    x = np.random.default_rng(5).normal(0, 1, (48, 32)).astype(np.float32)
    reference = Interpreter(model_content=wide.data)
    reference.allocate_tensors()
    reference.set_tensor(reference.get_input_details()[0]["index"], x)
    reference.invoke()
    expected = reference.get_tensor(reference.get_output_details()[0]["index"])
    micro = runtime.Interpreter.from_bytes(module.payload, arena_size=module.required_arena_bytes)
    micro.set_input(x, 0)
    micro.invoke()
    assert np.abs(micro.get_output(0) - expected).max() < 0.05

    int8_io = plugins["ptq-int8"].compile(wide, M0PLUS, {"io": "int8"})
    assert int8_io.inputs[0].dtype == "int8" and int8_io.required_ops == {"FULLY_CONNECTED", "SOFTMAX"}
    assert int8_io.required_arena_bytes < module.required_arena_bytes


@needs_both
@pytest.mark.parametrize("target", [M4F, GATEWAY], ids=["tflm", "litert"])
def test_ptq_quantizes_conv_and_depthwise_per_channel(plugins: dict[str, CompilerPlugin],
                                                      target: TargetSpec) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from tflite_micro.python.tflite_micro import runtime

    conv = model("conv_float")
    calibration = [np.random.default_rng(s).normal(0, 1, (1, 8, 8, 2)).astype(np.float32) for s in range(64)]
    module = plugins["ptq-int8"].compile(conv, target, {"calibration": calibration, "io": "int8"})
    assert module.compiler == "ptq-int8" and module.compiler_version == plugins["ptq-int8"].version
    info = parse_model(module.payload)
    for name, axis in (("conv/weights", 0), ("depthwise/weights", 3)):
        weights = next(t for t in info.main.tensors if t.name == name)
        assert weights.dtype == "int8" and len(weights.scales) == 4 and weights.quantized_dimension == axis
    bias = next(t for t in info.main.tensors if t.name == "depthwise/bias")
    assert bias.dtype == "int32" and bias.quantized_dimension == 0

    x = np.random.default_rng(99).normal(0, 1, (1, 8, 8, 2)).astype(np.float32)
    reference = Interpreter(model_content=conv.data)
    reference.allocate_tensors()
    reference.set_tensor(reference.get_input_details()[0]["index"], x)
    reference.invoke()
    expected = reference.get_tensor(reference.get_output_details()[0]["index"])
    spec_in, spec_out = module.inputs[0], module.outputs[0]
    q = np.clip(np.round(x / spec_in.scale) + spec_in.zero_point, -128, 127).astype(np.int8)
    micro = runtime.Interpreter.from_bytes(module.payload, arena_size=64 * 1024)
    micro.set_input(q, 0)
    micro.invoke()
    got = (micro.get_output(0).astype(np.float64) - spec_out.zero_point) * spec_out.scale
    assert np.abs(got - expected).max() < 0.06


# ---- plugin discovery and ranking ---------------------------------------------------------

class FakePlugin(CompilerPlugin):
    """A plugin whose verdict and ranking the test sets."""

    accepts = frozenset({"tflite"})
    targets = frozenset({"tflite-micro"})

    def __init__(self, name: str, reasons: list[str] | None = None, *, lossy: bool = False,
                 priority: int = 0, version: str = "1") -> None:
        self.name, self.reasons, self.lossy, self.priority, self.version = (
            name, reasons or [], lossy, priority, version)
        self.compiled = 0

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        if self.reasons == ["boom"]:
            raise RuntimeError("boom")
        return list(self.reasons)

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        self.compiled += 1
        return CompiledModule(b"payload:" + model.data[:8], "tflite", target.runtime, 1000, 100,
                              frozenset({"FULLY_CONNECTED"}), (), (), self.name, self.version,
                              model.digest, ("fake",))


def test_ranking_prefers_lossless_then_priority_then_name() -> None:
    m = model("dense_int8")
    plugins = [FakePlugin("zeta"), FakePlugin("lossy", lossy=True, priority=9),
               FakePlugin("alpha"), FakePlugin("boosted", priority=1), FakePlugin("no", ["nope"])]
    chosen, reasons = select_plugin(plugins, m, M0PLUS)
    assert chosen.name == "boosted" and reasons["no"] == ["nope"]
    chosen, _ = select_plugin(plugins[:3], m, M0PLUS)
    assert chosen.name == "alpha"
    chosen, _ = select_plugin([plugins[1], plugins[4]], m, M0PLUS)
    assert chosen.name == "lossy"


def test_a_crashing_check_is_a_reason_not_a_crash() -> None:
    with pytest.raises(Incompatible, match=r"crash: check failed: RuntimeError\('boom'\)"):
        select_plugin([FakePlugin("crash", ["boom"])], model("dense_int8"), M0PLUS)
    with pytest.raises(Incompatible, match="no compiler plugin is installed"):
        select_plugin([], model("dense_int8"), M0PLUS)


def test_discover_plugins_from_entry_points() -> None:
    points = [
        EntryPoint("tflm", "lwm2m_server.compilers.tflm:TflmPlugin", ENTRY_POINT_GROUP),
        EntryPoint("litert", "lwm2m_server.compilers.litert:LiteRtPlugin", ENTRY_POINT_GROUP),
        EntryPoint("ptq-int8", "lwm2m_server.compilers.ptq:Int8QuantizePlugin", ENTRY_POINT_GROUP),
        EntryPoint("broken", "no_such_module_anywhere:Plugin", ENTRY_POINT_GROUP),
        EntryPoint("not-a-plugin", "json:dumps", ENTRY_POINT_GROUP),
    ]
    found = discover_plugins(entry_points=points)
    assert [p.name for p in found] == ["litert", "ptq-int8", "tflm"]
    mine = FakePlugin("tflm", version="test")
    found = discover_plugins([mine], entry_points=points)
    assert next(p for p in found if p.name == "tflm") is mine
    assert isinstance(discover_plugins(), list)  # the installed entry points load too


# ---- cache --------------------------------------------------------------------------------

def test_cache_hits_for_a_second_device_of_the_same_class(tmp_path: Path) -> None:
    cache, plugin, m = CompileCache(tmp_path), FakePlugin("fake"), model("dense_int8")
    first, hit = cache.get_or_compile(plugin, m, M0PLUS)
    assert not hit and cache.stats() == {"hits": 0, "misses": 1, "corrupted": 0}
    sibling = TargetSpec("tflite-micro", "2025-01-15", "cortex-m0plus", 4096, 65536, 12000, M0PLUS.ops)
    second, hit = cache.get_or_compile(plugin, m, sibling)
    assert hit and second == first and plugin.compiled == 1
    assert fit_reasons(second, sibling) == []
    cramped = TargetSpec("tflite-micro", "2025-01-15", "cortex-m0plus", 50, 10, 500, M0PLUS.ops)
    assert cramped.device_class == M0PLUS.device_class
    assert fit_reasons(second, cramped) == [
        "needs 1000 B of tensor arena, device arena budget is 500 B",
        f"payload is {len(second.payload)} B, device model storage is 10 B",
        "needs 100 B of RAM outside the arena, device has 50 B"]
    assert CompileKey.of(plugin, m, M0PLUS, {"io": "int8"}) != CompileKey.of(plugin, m, M0PLUS)
    assert CompileCache(tmp_path).get(CompileKey.of(plugin, m, M0PLUS)) == first  # survives a restart

    plugin.version = "2"
    _, hit = cache.get_or_compile(plugin, m, M0PLUS)
    assert not hit and plugin.compiled == 2 and cache.hits == 1 and cache.misses == 2
    _, hit = cache.get_or_compile(plugin, m, M4F)  # another class
    assert not hit


def test_cache_ignores_corrupted_entries(tmp_path: Path) -> None:
    cache, plugin, m = CompileCache(tmp_path), FakePlugin("fake"), model("dense_int8")
    key = CompileKey.of(plugin, m, M0PLUS)
    module = plugin.compile(m, M0PLUS)
    entry = tmp_path / key.id[:2] / key.id
    for damage in ("payload", "json", "key"):
        cache.put(key, module)
        if damage == "payload":
            entry.with_suffix(".payload").write_bytes(b"payload:tampered")
        elif damage == "json":
            entry.with_suffix(".json").write_text("{not json")
        else:
            meta = json.loads(entry.with_suffix(".json").read_text())
            meta["key"]["plugin"] = "other"
            entry.with_suffix(".json").write_text(json.dumps(meta))
        assert cache.get(key) is None
        assert not entry.with_suffix(".json").exists()
    assert cache.corrupted == 3 and cache.misses == 3 and cache.hits == 0
    cache.put(key, module)
    assert cache.get(key) == module and cache.hits == 1
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


@needs_tflm
def test_cache_with_the_real_tflm_plugin(tmp_path: Path, plugins: dict[str, CompilerPlugin]) -> None:
    cache = CompileCache(tmp_path)
    module, hit = cache.get_or_compile(plugins["tflm"], model("dense_int8"), M0PLUS)
    again, hit_again = cache.get_or_compile(plugins["tflm"], model("dense_int8"), M0PLUS)
    assert (hit, hit_again) == (False, True) and again == module
    assert again.payload_digest == module.payload_digest
