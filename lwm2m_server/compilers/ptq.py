"""The ``ptq-int8`` plugin: int8 post-training quantization of float TFLite models.

Widens what can be deployed: a float32 model whose activations do not fit a
small MCU's arena (or whose weights do not fit its storage) needs about a
quarter of both once quantized to int8, and int8 is what CMSIS-NN and NPUs
accelerate. No TensorFlow: the float model is calibrated by running it in the
real LiteRT interpreter with every intermediate tensor preserved, then the
flatbuffer is rewritten with the TFLite int8 scheme:

* activations: asymmetric int8 per tensor from the calibrated min/max (0 kept
  representable); RESHAPE and pooling outputs take their input's parameters;
  SOFTMAX and LOGISTIC outputs 1/256 and -128, TANH 1/128 and 0, as the
  kernels require;
* weights: symmetric int8 (zero point 0, ±127), per tensor for
  FULLY_CONNECTED, per output channel for CONV_2D and DEPTHWISE_CONV_2D;
  bias int32 at input scale × weight scale;
* interface: by default the model keeps float inputs and outputs (a QUANTIZE
  op in front, a DEQUANTIZE op behind), so the device application is
  unchanged; option ``io="int8"`` makes the interface int8 instead.

The quantized model is checked against the float one on the calibration data
(the figures go to the module's log) and then handed to the plugin for the
target's runtime (``tflm`` or ``litert``), which checks operators, measures
the arena and builds the module. Ranked after lossless plugins: it is chosen
only when the float model does not fit as it is.

Options: ``calibration`` — samples, each an array (single-input models) or a
list of arrays, one per input; without it, ``calibration_samples`` (default
128) seeded standard-normal inputs are used, which only suits models trained
on standardised features. ``io`` — ``"float"`` (default) or ``"int8"``.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from .base import (CompiledModule, CompileFailed, CompilerError, CompilerPlugin, ConformanceSample,
                   Incompatible, ModelInput, TargetSpec, options_digest)
from .litert import LiteRtPlugin, litert_interpreter
from .tflite_model import ModelInfo, builtin_code, model_object, parse_model, schema, serialize
from .samples import sample_model
from .tflm import TflmPlugin

PLUGIN_VERSION = "1.0.0"
"""Version of the quantizer; :attr:`Int8QuantizePlugin.version` adds the backends'."""
SUPPORTED = frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "RELU", "RELU6",
                       "LOGISTIC", "TANH", "SOFTMAX", "RESHAPE", "MAX_POOL_2D",
                       "AVERAGE_POOL_2D", "ADD"})
"""Operators the quantizer knows the int8 rules of."""
_SAME_AS_INPUT = frozenset({"RESHAPE", "MAX_POOL_2D", "AVERAGE_POOL_2D"})
_FIXED_OUTPUT = {"SOFTMAX": (1.0 / 256.0, -128), "LOGISTIC": (1.0 / 256.0, -128), "TANH": (1.0 / 128.0, 0)}
_WEIGHT_AXIS = {"FULLY_CONNECTED": None, "CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}
_INT8_VERSION = {"FULLY_CONNECTED": 4, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "SOFTMAX": 2,
                 "LOGISTIC": 2, "TANH": 2, "RELU": 2, "RELU6": 2, "RESHAPE": 1, "MAX_POOL_2D": 2,
                 "AVERAGE_POOL_2D": 2, "ADD": 2, "QUANTIZE": 2, "DEQUANTIZE": 2}
"""Operator versions the TFLite converter writes for int8 kernels."""


@dataclass(frozen=True, slots=True)
class Quantized:
    """Result of :func:`quantize`."""

    data: bytes
    """The int8 TFLite flatbuffer."""
    max_abs_error: float
    """Largest |float - int8| difference of output 0 over the checked samples."""
    top1_agreement: float | None
    """Share of output-0 rows whose arg-max agrees with the float model (None for 1-value outputs)."""
    samples: int
    """Calibration samples used."""
    log: tuple[str, ...]
    """What was done, one line each."""


def quantize_reasons(info: ModelInfo) -> list[str]:
    """Why :func:`quantize` cannot handle the model; empty when it can."""
    reasons = []
    if len(info.subgraphs) != 1:
        reasons.append(f"int8 quantization handles single-subgraph models, this one has {len(info.subgraphs)}")
    if not info.is_float:
        reasons.append("model is already integer-quantized (no float32 activations)")
    unsupported = sorted(info.operators - SUPPORTED)
    if unsupported:
        reasons.append(f"int8 quantization does not support operators: {', '.join(unsupported)}")
    return reasons


def _samples(info: ModelInfo, options: Mapping[str, Any]) -> list[list[Any]]:
    import numpy as np

    inputs = info.inputs
    given = options.get("calibration")
    if given is None:
        rng = np.random.default_rng(0)
        count = int(options.get("calibration_samples", 128))
        return [[rng.normal(0.0, 1.0, t.shape).astype(t.dtype) for t in inputs] for _ in range(count)]
    samples = []
    for n, sample in enumerate(given):
        arrays = [sample] if len(inputs) == 1 and not isinstance(sample, (list, tuple)) else list(sample)
        if len(arrays) != len(inputs):
            raise CompileFailed(f"calibration sample {n} has {len(arrays)} arrays, the model {len(inputs)} inputs")
        try:
            samples.append([np.asarray(a, dtype=t.dtype).reshape(t.shape) for a, t in zip(arrays, inputs)])
        except ValueError as exc:
            raise CompileFailed(f"calibration sample {n} does not fit the model's inputs: {exc}") from None
    if not samples:
        raise CompileFailed("calibration data is empty")
    return samples


def _ranges(data: bytes, info: ModelInfo, samples: list[list[Any]]) -> dict[int, tuple[float, float]]:
    """Min/max of every float32 activation over the samples, from the real LiteRT interpreter."""
    interpreter_class, backend = litert_interpreter()
    if interpreter_class is None:
        raise CompileFailed(f"int8 calibration needs LiteRT: {backend}")
    # Builtin kernels without the XNNPACK delegate, which would not keep intermediate tensors.
    resolver = getattr(sys.modules[interpreter_class.__module__], "OpResolverType", None)
    extra = {} if resolver is None else {
        "experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interpreter = interpreter_class(model_content=data, num_threads=1,
                                    experimental_preserve_all_tensors=True, **extra)
    interpreter.allocate_tensors()
    floats = [t.index for t in info.main.tensors if t.dtype == "float32" and not t.is_constant]
    ranges: dict[int, tuple[float, float]] = {}
    for sample in samples:
        for position, array in zip(info.main.inputs, sample):
            interpreter.set_tensor(position, array)
        interpreter.invoke()
        for index in floats:
            values = interpreter.get_tensor(index)
            lo, hi = float(values.min()), float(values.max())
            old = ranges.get(index, (lo, hi))
            ranges[index] = (min(lo, old[0]), max(hi, old[1]))
    return ranges


def _activation_params(lo: float, hi: float) -> tuple[float, int]:
    import numpy as np

    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / 255.0)) or 1.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def _quant(scales: Sequence[float], zero_points: Sequence[int], axis: int = 0) -> Any:
    q = schema().QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [float(s) for s in scales], [int(z) for z in zero_points], axis
    return q


def quantize(data: bytes, options: Mapping[str, Any] | None = None) -> Quantized:
    """Quantize a float TFLite model to int8; :class:`CompileFailed` when it cannot."""
    import numpy as np

    options = options or {}
    io = options.get("io", "float")
    if io not in ("float", "int8"):
        raise CompileFailed(f"option io must be 'float' or 'int8', got {io!r}")
    info = parse_model(data)
    reasons = quantize_reasons(info)
    if reasons:
        raise CompileFailed("; ".join(reasons))
    samples = _samples(info, options)
    ranges = _ranges(data, info, samples)
    fb = schema()
    model = model_object(data)
    sg = model.subgraphs[0]
    names = [op.name for op in info.main.operators]

    params = {i: _activation_params(*r) for i, r in ranges.items()}
    for op, name in zip(sg.operators, names):
        if name in _SAME_AS_INPUT and op.inputs[0] in params:
            params[op.outputs[0]] = params[op.inputs[0]]
        elif name in _FIXED_OUTPUT:
            params[op.outputs[0]] = _FIXED_OUTPUT[name]

    def constant(index: int) -> Any:
        tensor = sg.tensors[index]
        raw = model.buffers[tensor.buffer].data
        if raw is None or len(raw) == 0:
            raise CompileFailed(f"tensor {tensor.name!r} must be constant for int8 quantization")
        return np.frombuffer(bytes(raw), dtype=np.float32).reshape(tensor.shape).astype(np.float64)

    new_data: dict[int, tuple[bytes, Any, int]] = {}  # tensor index → (data, quantization, type)
    for op, name in zip(sg.operators, names):
        if name not in _WEIGHT_AXIS:
            continue
        w_index, b_index = op.inputs[1], (op.inputs[2] if len(op.inputs) > 2 else -1)
        if sg.tensors[w_index].type != fb.TensorType.FLOAT32:
            continue
        w, axis = constant(w_index), _WEIGHT_AXIS[name]
        if axis is None:
            w_scales = np.array([np.abs(w).max() / 127.0 or 1.0])
            q = np.round(w / w_scales[0])
        else:
            moved = np.moveaxis(w, axis, 0)
            w_scales = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1) / 127.0
            w_scales[w_scales == 0] = 1.0
            q = np.moveaxis(np.round(moved / w_scales.reshape((-1,) + (1,) * (w.ndim - 1))), 0, axis)
        w_scales = w_scales.astype(np.float32)
        new_data[w_index] = (np.clip(q, -127, 127).astype(np.int8).tobytes(),
                             _quant(w_scales, [0] * len(w_scales), axis or 0), fb.TensorType.INT8)
        if b_index >= 0 and sg.tensors[b_index].type == fb.TensorType.FLOAT32:
            if op.inputs[0] not in params:
                raise CompileFailed(f"{name} input {sg.tensors[op.inputs[0]].name!r} is not a float activation")
            in_scale = params[op.inputs[0]][0]
            b_scales = (np.float32(in_scale) * w_scales).astype(np.float32)
            b = constant(b_index)
            q_b = np.round(b / (b_scales if len(b_scales) > 1 else b_scales[0]))
            new_data[b_index] = (np.clip(q_b, -2**31, 2**31 - 1).astype(np.int32).tobytes(),
                                 _quant(b_scales, [0] * len(b_scales), 0), fb.TensorType.INT32)

    for index, tensor in enumerate(sg.tensors):
        if tensor.type != fb.TensorType.FLOAT32:
            continue
        if index in new_data:
            _, tensor.quantization, tensor.type = new_data[index]
        elif index in params:
            tensor.type, tensor.quantization = fb.TensorType.INT8, _quant([params[index][0]], [params[index][1]])
        else:  # another constant float operand (e.g. of ADD): its own asymmetric range
            values = constant(index)
            scale, zp = _activation_params(float(values.min()), float(values.max()))
            new_data[index] = (np.clip(np.round(values / scale) + zp, -128, 127).astype(np.int8).tobytes(),
                               _quant([scale], [zp]), fb.TensorType.INT8)
            tensor.type, tensor.quantization = fb.TensorType.INT8, new_data[index][1]

    def opcode(name: str) -> int:
        code = builtin_code(name)
        for i, oc in enumerate(model.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                return i
        oc = fb.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), _INT8_VERSION[name]
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    for oc in model.operatorCodes:
        for name, version in _INT8_VERSION.items():
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == builtin_code(name):
                oc.version = max(oc.version, version)

    if io == "float":
        _float_interface(fb, sg, opcode)
    _rebuild_buffers(fb, model, new_data)
    quantized = serialize(model)
    error, agreement = _compare(data, quantized, samples[:32])
    return Quantized(quantized, error, agreement, len(samples), (
        f"int8 post-training quantization of a {len(data)} B float model → {len(quantized)} B "
        f"({len(samples)} calibration samples{'' if options.get('calibration') is not None else ', synthetic N(0,1)'}, "
        f"{'float' if io == 'float' else 'int8'} interface)",
        f"output 0 vs float on {min(len(samples), 32)} samples: max |error| {error:.4g}"
        + (f", top-1 agreement {agreement:.0%}" if agreement is not None else ""),
    ))


def _float_interface(fb: Any, sg: Any, opcode: Any) -> None:
    """Keep float inputs/outputs: QUANTIZE in front of each input, DEQUANTIZE behind each output."""
    front, back = [], []
    for index in sg.inputs:
        new = _int8_twin(fb, sg, index)
        for op in sg.operators:
            op.inputs = [new if i == index else i for i in op.inputs]
        front.append(_op(fb, opcode("QUANTIZE"), [index], [new]))
    for index in sg.outputs:
        new = _int8_twin(fb, sg, index)
        for op in sg.operators:
            op.outputs = [new if i == index else i for i in op.outputs]
        back.append(_op(fb, opcode("DEQUANTIZE"), [new], [index]))
    sg.operators = front + list(sg.operators) + back


def _int8_twin(fb: Any, sg: Any, index: int) -> int:
    """Add an int8 copy of tensor ``index`` (for the operators) and make the original a
    float tensor (the interface); the copy's index."""
    tensor = sg.tensors[index]
    twin = fb.TensorT()
    twin.name, twin.shape, twin.type, twin.buffer = f"{tensor.name}_int8", tensor.shape, tensor.type, 0
    twin.quantization, twin.shapeSignature = tensor.quantization, tensor.shapeSignature
    tensor.type, tensor.quantization = fb.TensorType.FLOAT32, None
    sg.tensors.append(twin)
    return len(sg.tensors) - 1


def _op(fb: Any, opcode_index: int, inputs: list[int], outputs: list[int]) -> Any:
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode_index, inputs, outputs
    return op


def _rebuild_buffers(fb: Any, model: Any, new_data: dict[int, tuple[bytes, Any, int]]) -> None:
    """One buffer per constant tensor (quantized data where replaced); unused float buffers dropped."""
    old = model.buffers or [fb.BufferT()]
    buffers = [fb.BufferT()]
    remap: dict[int, int] = {}

    def keep(raw: Any) -> int:
        buffer = fb.BufferT()
        buffer.data = raw
        buffers.append(buffer)
        return len(buffers) - 1

    for sg in model.subgraphs:
        for index, tensor in enumerate(sg.tensors):
            if index in new_data:
                tensor.buffer = keep(new_data[index][0])
            elif tensor.buffer and old[tensor.buffer].data is not None and len(old[tensor.buffer].data):
                if tensor.buffer not in remap:
                    remap[tensor.buffer] = keep(old[tensor.buffer].data)
                tensor.buffer = remap[tensor.buffer]
            else:
                tensor.buffer = 0
    for metadata in model.metadata or []:
        if metadata.buffer not in remap:
            remap[metadata.buffer] = keep(old[metadata.buffer].data if metadata.buffer < len(old) else None)
        metadata.buffer = remap[metadata.buffer]
    model.buffers = buffers


def _compare(float_model: bytes, int8_model: bytes, samples: list[list[Any]]) -> tuple[float, float | None]:
    """Max |difference| and arg-max agreement of output 0, float vs int8 (dequantized), in LiteRT."""
    import numpy as np


    interpreter_class, _ = litert_interpreter()

    def outputs(data: bytes) -> list[Any]:
        interpreter = interpreter_class(model_content=data, num_threads=1)  # type: ignore[misc]
        interpreter.allocate_tensors()
        ins, out = interpreter.get_input_details(), interpreter.get_output_details()[0]
        results = []
        for sample in samples:
            for detail, array in zip(ins, sample):
                scale, zp = detail["quantization"]
                if detail["dtype"] == np.int8:
                    array = np.clip(np.round(array / scale) + zp, -128, 127)
                interpreter.set_tensor(detail["index"], np.asarray(array, dtype=detail["dtype"]))
            interpreter.invoke()
            value = interpreter.get_tensor(out["index"]).astype(np.float64)
            if out["dtype"] == np.int8:
                scale, zp = out["quantization"]
                value = (value - zp) * scale
            results.append(value)
        return results

    reference, approximate = outputs(float_model), outputs(int8_model)
    error = max(float(np.abs(a - b).max()) for a, b in zip(reference, approximate))
    if reference[0].shape[-1] < 2:
        return error, None
    agree = np.concatenate([(a.argmax(axis=-1) == b.argmax(axis=-1)).ravel()
                            for a, b in zip(reference, approximate)])
    return error, float(agree.mean())


class Int8QuantizePlugin(CompilerPlugin):
    """Float TFLite → int8 TFLite for TFLM or LiteRT devices (lossy, ranked after lossless plugins)."""

    name = "ptq-int8"
    accepts = frozenset({"tflite"})
    targets = frozenset({"tflite-micro", "litert"})
    output_format = "tflite"
    lossy = True

    def __init__(self, backends: Mapping[str, CompilerPlugin] | None = None) -> None:
        self.backends = dict(backends) if backends is not None else {
            "tflite-micro": TflmPlugin(), "litert": LiteRtPlugin()}
        """Plugin that checks and packages the quantized model, by runtime name."""
        self._cache: OrderedDict[tuple[str, str], Quantized | CompilerError] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def version(self) -> str:  # type: ignore[override]
        """Quantizer version + calibration interpreter + backends, e.g. ``1.0.0+ai-edge-litert.2.3.0+tflm-…``."""
        interpreter_class, calibrator = litert_interpreter()
        parts = [PLUGIN_VERSION, calibrator.replace(" ", ".") if interpreter_class else "no-calibrator"]
        parts += [f"{p.name}-{p.version}" for _, p in sorted(self.backends.items())]
        return "+".join(parts)

    def quantized(self, model: ModelInput, options: Mapping[str, Any] | None = None) -> Quantized:
        """:func:`quantize` of ``model``, cached per (model digest, options)."""
        key = (model.digest, options_digest(options))
        with self._lock:
            if key in self._cache:
                hit = self._cache[key]
                if isinstance(hit, CompilerError):
                    raise hit
                return hit
        try:
            result: Quantized | CompilerError = quantize(model.data, options)
        except CompileFailed as exc:
            result = exc
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        if isinstance(result, CompilerError):
            raise result
        return result

    def _verdict(self, model: ModelInput, target: TargetSpec,
                 options: Mapping[str, Any] | None) -> tuple[list[str], Quantized | None]:
        reasons = self.basic_reasons(model, target)
        if model.format not in self.accepts:
            return reasons, None
        info = parse_model(model.data)  # a malformed model is a ModelError whatever the target
        if reasons:
            return reasons, None
        reasons = quantize_reasons(info)
        if reasons:
            return reasons, None
        backend = self.backends.get(target.runtime)
        if backend is None:
            return [f"no backend plugin for runtime {target.runtime!r}"], None
        try:
            result = self.quantized(model, options)
        except CompileFailed as exc:
            return [exc.reason], None
        found = backend.check(ModelInput(result.data, model.format, model.name, model.version), target)
        return [f"after int8 quantization: {r}" for r in found], result

    def validate(self, model: ModelInput) -> None:
        parse_model(model.data)

    def conformance_samples(self) -> list[ConformanceSample]:
        """The shipped float MLP, quantized for a Cortex-M0+ (TFLM) and for an aarch64 gateway (LiteRT)."""
        model, ops = sample_model("dense_float.tflite"), frozenset({"FULLY_CONNECTED", "SOFTMAX", "QUANTIZE",
                                                                     "DEQUANTIZE"})
        mcu = TargetSpec("tflite-micro", "2025-01-15", "cortex-m0plus", ram_bytes=8192, flash_bytes=131072,
                         arena_budget_bytes=16384, ops=ops, cpu_clock_hz=48_000_000)
        gateway = TargetSpec("litert", "2.3.0", "aarch64", ram_bytes=64 * 1024 * 1024,
                             flash_bytes=256 * 1024 * 1024, arena_budget_bytes=16 * 1024 * 1024, ops=ops)
        return [ConformanceSample(model, mcu), ConformanceSample(model, gateway)]

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return self._verdict(model, target, None)[0]

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        reasons, result = self._verdict(model, target, options)
        if reasons:
            raise Incompatible("; ".join(reasons))
        assert result is not None
        quantized = ModelInput(result.data, model.format, model.name, model.version)
        module = self.backends[target.runtime].compile(quantized, target)
        return replace(module, compiler=self.name, compiler_version=self.version,
                       source_digest=model.digest, log=result.log + module.log)

