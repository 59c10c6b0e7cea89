"""The ``onnxruntime`` plugin: ONNX models for Linux-class devices running ONNX Runtime.

Input: an ONNX model (format ``onnx``), validated with ``onnx.checker`` (full
check, shape inference included). Output: an ORT format model (format
``ort``), the flatbuffer ONNX Runtime loads without protobuf and that its
minimal builds require, made by ONNX Runtime itself on the server the way its
``convert_onnx_models_to_ort`` tool does: an ``InferenceSession`` with
``optimized_model_filepath`` and ``session.save_model_format = ORT``.

Optimised for the target:

* graph optimisation level ``extended`` (constant folding, redundant-node
  elimination, fusions into ORT's contrib operators such as
  ``com.microsoft:FusedGemm``) for a device that runs every operator; for a
  device that lists its operators, the first of ``extended``, ``basic`` (fusions
  into standard ONNX operators only) and ``disabled`` whose result uses listed
  operators only. Never ``all``: its layout transformations (NCHWc blocks, NHWC)
  are chosen from the *compiling* host's vector units, not the device's, and
  would make the payload depend on the server's CPU; the conversion tool leaves
  NCHWc out for ARM targets for the same reason.
* ``session.qdqisint8allowed`` from the target's architecture, as the tool's
  ``--target_platform`` sets it: 1 for ARM (int8 QDQ kernels), 0 otherwise.

Operators (26241/2): a device names the ONNX operators its build registered,
as op types for the default domain and ``domain:OpType`` for others
(``com.microsoft:FusedConv``); the entry ``*`` (:data:`ALL_OPERATORS`) says it
runs every operator its onnxruntime version implements — a full build, as on a
Linux gateway. The module's ``required_ops`` are the 26241/2 entries it relies
on (:func:`~.base.fit_reasons` compares them with the device's list): the
payload's operators for a listing device, ``*`` for a wildcard one; the
operators themselves are in ``cpu_ops`` and the report either way.

Memory (estimates, not measurements; ONNX Runtime plans and reuses its memory at
run time): arena = bytes of the graph inputs and every node output of the
optimised graph added up, as if nothing were reused (symbolic dimensions
count as 1); RAM outside the arena = payload (ONNX Runtime copies the model
bytes) + initializers (copied into tensors) + input/output copies; storage =
the payload.

The payload is the same bytes for every device of a class: ONNX Runtime writes
one table of the ORT format in hash-map order, which :func:`~.ort_format.canonical`
lays out in a fixed order before the payload leaves the plugin.
"""

from __future__ import annotations

import functools
import math
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Mapping

from ..suit.device_class import version_key
from ..suit.model_info import ITEMSIZE, TensorSpec
from .base import (ENTRY_POINT_GROUP, CompiledModule, CompileFailed, CompilerPlugin, ConformanceSample,
                   Incompatible, ModelError, ModelInput, TargetSpec)
from .ort_format import OrtGraph, canonical, operator_name, read_graph

PLUGIN_VERSION = "1.0.0"
"""Version of this plugin's own logic; :attr:`OnnxRuntimePlugin.version` adds the backends'."""
ALL_OPERATORS = "*"
"""26241/2 entry of a device that runs every operator its onnxruntime version implements."""
LEVELS = ("extended", "basic", "disabled")
"""Graph optimisation levels tried for a device that lists its operators, best first."""
SAMPLE = "samples/onnx_sample.onnx"
"""Conformance sample, package data of :mod:`lwm2m_server.compilers`."""
_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
           10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
"""ONNX ``TensorProto.DataType`` → tensor element type an inference module can describe."""
_FORMAT_NAMES = {"tflite": "TFLite", "ort": "ORT", "onnx": "ONNX"}
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE_LOCATION = re.compile(r"^/\S+:\d+ ")
_CACHE_SIZE = 64


def _ort() -> Any:
    import onnxruntime
    return onnxruntime


def ort_message(error: BaseException) -> str:
    """ONNX Runtime's error without its status prefix, source location and C++ signature."""
    text = str(error).strip() or type(error).__name__
    text = _ORT_PREFIX.sub("", text)
    if _SOURCE_LOCATION.match(text):
        text = _SOURCE_LOCATION.sub("", text, count=1)
        depth = 0
        for index, char in enumerate(text):  # skip "ns::Func(args...) " up to its closing parenthesis
            depth += char == "("
            if char == ")":
                depth -= 1
                if depth == 0:
                    text = text[index + 1:].strip()
                    break
    return text.splitlines()[0] if text else type(error).__name__


def target_platform(target: TargetSpec) -> str:
    """``arm``, ``amd64`` or ``other``, as ORT's conversion tool names platforms."""
    arch = target.architecture
    if arch.startswith(("arm", "aarch64")):
        return "arm"
    return "amd64" if arch == "x86_64" else "other"


# ---- the ONNX model -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OnnxInfo:
    """What the plugin reads from an uploaded ONNX model."""

    operators: frozenset[str]
    """Operators of every node, subgraphs and model-local function bodies included."""
    opsets: tuple[tuple[str, int], ...]
    """Imported operator sets: (domain, version), the default domain as ``ai.onnx``."""
    ir_version: int
    """ONNX IR version of the file."""
    inputs: tuple[TensorSpec, ...]
    """Graph inputs that are not initializers, in order."""
    outputs: tuple[TensorSpec, ...]
    """Graph outputs in order."""
    io_problems: tuple[str, ...]
    """Inputs/outputs an inference module cannot describe (not a tensor, or its element type)."""
    notes: tuple[str, ...]
    """What was assumed (symbolic dimensions taken as 1)."""


def _tensor_spec(value: Any, notes: list[str], problems: list[str]) -> TensorSpec:
    from onnx import TensorProto

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        problems.append(f"{value.name!r} is a {kind or 'value of unknown type'}, not a tensor")
        return TensorSpec(value.name, "float32", ())
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if dtype is None:
        name = TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type in TensorProto.DataType.values() \
            else str(tensor.elem_type)
        problems.append(f"{value.name!r} has element type {name}")
        dtype = "float32"
    shape = []
    for index, dim in enumerate(tensor.shape.dim if tensor.HasField("shape") else ()):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        else:
            shape.append(1)
            notes.append(f"dimension {index} ({dim.dim_param or 'unknown'}) of {value.name!r} taken as 1")
    if not tensor.HasField("shape"):
        notes.append(f"{value.name!r} has no shape; taken as a scalar")
    return TensorSpec(value.name, dtype, tuple(shape))


def _operators(model: Any) -> frozenset[str]:
    local = {(f.domain, f.name) for f in model.functions}
    found: set[str] = set()
    pending = [list(model.graph.node)] + [list(f.node) for f in model.functions]
    while pending:
        for node in pending.pop():
            if (node.domain, node.op_type) not in local:  # a call of a model-local function: its body counts
                found.add(operator_name(node.domain, node.op_type))
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    pending.append(list(attribute.g.node))
                pending.extend(list(g.node) for g in attribute.graphs)
    return frozenset(found)


def parse_onnx(data: bytes) -> OnnxInfo:
    """Load and fully check an ONNX model; :class:`ModelError` naming the problem otherwise."""
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise ModelError("the file is empty, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ModelError("not an ONNX model: the bytes do not parse as an ONNX ModelProto") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelError("not an ONNX model: the bytes hold no IR version or no graph")
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelError(f"initializers stored in external files ({', '.join(external[:3])}): "
                         "upload a self-contained model (onnx.save without save_as_external_data)")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # ValidationError, InferenceError, or a C++ exception surfaced as another type
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"ONNX checker: {first}") from None
    notes: list[str] = []
    problems: list[str] = []
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_tensor_spec(v, notes, problems) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor_spec(v, notes, problems) for v in model.graph.output)
    if not inputs or not outputs:
        raise ModelError("the graph has no " + ("inputs" if not inputs else "outputs"))
    opsets = tuple(sorted((o.domain or "ai.onnx", o.version) for o in model.opset_import))
    return OnnxInfo(_operators(model), opsets, model.ir_version, inputs, outputs, tuple(problems), tuple(notes))


# ---- what the installed onnxruntime supports ------------------------------------------------------

@functools.cache
def supported_opsets() -> dict[str, int]:
    """Highest operator set per domain the installed onnxruntime loads (``ai.onnx``: the newest
    released opset it accepts, found by loading a one-node model; others: its schema registry)."""
    from onnx import TensorProto, helper

    ort = _ort()
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as capi
        schemas = capi.get_all_operator_schema()
    except (ImportError, AttributeError):  # a build without the schema registry: ORT's load errors must do
        return {}
    highest: dict[str, int] = {}
    for schema in schemas:
        domain = schema.domain or "ai.onnx"
        highest[domain] = max(highest.get(domain, 0), schema.since_version)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for version in range(highest.get("ai.onnx", 1), 0, -1):
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        probe.ir_version = 8
        try:
            ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # "Opset N is under development": not released for this onnxruntime
            continue
        highest["ai.onnx"] = version
        break
    return highest


@functools.cache
def installed_converters(source: str, runtime: str) -> tuple[str, ...]:
    """Entry-point plugins (other than this one) that accept ``source`` models and compile for
    ``runtime``, judged by their class attributes without instantiating them."""
    found = []
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = point.load()
        except Exception:  # a broken third-party plugin: discover_plugins reports it
            continue
        accepts, targets = getattr(plugin, "accepts", None), getattr(plugin, "targets", None)
        if getattr(plugin, "name", "") != OnnxRuntimePlugin.name and isinstance(accepts, (set, frozenset)) \
                and isinstance(targets, (set, frozenset)) and source in accepts and runtime in targets:
            found.append(point.name)
    return tuple(sorted(found))


# ---- conversion -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Conversion:
    """An ORT format payload made from an ONNX model for one optimisation level and platform."""

    payload: bytes
    """The canonical ORT format model."""
    level: str
    """Graph optimisation level (one of :data:`LEVELS`)."""
    platform: str
    """:func:`target_platform` it was made for."""
    graph: OrtGraph
    """Operators and memory figures of the payload."""


def convert(data: bytes, level: str, platform: str) -> Conversion:
    """Optimise ``data`` at ``level`` for ``platform`` and save it in ORT format, canonical; check
    that ONNX Runtime loads the result from memory. :class:`CompileFailed` with ORT's message."""
    ort = _ort()
    levels = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="tinymlaas-ort-") as folder:
        path = Path(folder) / "model.ort"
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(path)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.add_session_config_entry("session.qdqisint8allowed", "1" if platform == "arm" else "0")
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            ort.InferenceSession(data, options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=["NchwcTransformer"])
            raw = path.read_bytes()
        except Exception as error:  # Fail, InvalidGraph, NotImplemented… all carry ORT's message
            raise CompileFailed(f"onnxruntime {ort.__version__} cannot load the model: {ort_message(error)}") from None
    payload = canonical(raw)
    check = ort.SessionOptions()
    check.intra_op_num_threads = check.inter_op_num_threads = 1
    check.log_severity_level = 3
    try:
        ort.InferenceSession(payload, check, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise CompileFailed(f"onnxruntime does not load its own ORT format output: {ort_message(error)}") from None
    return Conversion(payload, level, platform, read_graph(payload))


# ---- the plugin -----------------------------------------------------------------------------------

class OnnxRuntimePlugin(CompilerPlugin):
    """ONNX model → ORT format model for devices running ONNX Runtime (gateways, Linux boards)."""

    name = "onnxruntime"
    accepts = frozenset({"onnx"})
    targets = frozenset({"onnxruntime"})
    output_format = "ort"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._infos: OrderedDict[str, OnnxInfo | ModelError] = OrderedDict()
        self._conversions: OrderedDict[tuple[str, str, str], Conversion | CompileFailed] = OrderedDict()

    @property
    def ort_version(self) -> str:
        """Version of the installed onnxruntime."""
        return str(_ort().__version__)

    @property
    def version(self) -> str:  # type: ignore[override]
        """Plugin version + backends, e.g. ``1.0.0+onnxruntime.1.31.1+onnx.1.23.2``."""
        import onnx
        return f"{PLUGIN_VERSION}+onnxruntime.{self.ort_version}+onnx.{onnx.__version__}"

    @staticmethod
    def _remember(cache: OrderedDict, key: Any, value: Any) -> None:
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)

    def info(self, model: ModelInput) -> OnnxInfo:
        """The checked model (cached per digest); :class:`ModelError` when it is not valid ONNX."""
        with self._lock:
            known = self._infos.get(model.digest)
        if known is None:
            try:
                known = parse_onnx(model.data)
            except ModelError as error:
                known = error
            with self._lock:
                self._remember(self._infos, model.digest, known)
        if isinstance(known, ModelError):
            raise ModelError(known.reason)
        return known

    def conversion(self, model: ModelInput, level: str, platform: str) -> Conversion:
        """:func:`convert`, cached per (model digest, level, platform)."""
        key = (model.digest, level, platform)
        with self._lock:
            known = self._conversions.get(key)
        if known is None:
            try:
                known = convert(model.data, level, platform)
            except CompileFailed as error:
                known = error
            with self._lock:
                self._remember(self._conversions, key, known)
        if isinstance(known, CompileFailed):
            raise CompileFailed(known.reason)
        return known

    def validate(self, model: ModelInput) -> None:
        self.info(model)

    # -- verdicts ----------------------------------------------------------------------------------

    def _runtime_reason(self, target: TargetSpec) -> str:
        formats = "/".join(_FORMAT_NAMES.get(f, f) for f in sorted(target.formats)) or "its own"
        converters = installed_converters("onnx", target.runtime)
        tail = (f"an ONNX→{formats} converter plugin would be needed ({', '.join(converters)} is installed)"
                if converters else f"no ONNX→{formats} converter plugin is installed")
        return (f"{self.name} compiles ONNX models for onnxruntime devices only; this device runs "
                f"{target.runtime!r}, and {tail}")

    def _version_reason(self, target: TargetSpec) -> str | None:
        ours = tuple(int(p) for p in version_key(self.ort_version).split("."))
        key = version_key(target.runtime_version)
        if not re.fullmatch(r"\d+\.\d+", key):
            return f"device reports onnxruntime version {target.runtime_version!r}, not a release number"
        if tuple(int(p) for p in key.split(".")) < ours:
            return (f"the payload is an ORT format model written by onnxruntime {self.ort_version}; the device runs "
                    f"onnxruntime {target.runtime_version}, and ORT format models load only in the same or a "
                    f"newer release")
        return None

    def _opset_reasons(self, info: OnnxInfo) -> list[str]:
        supported = supported_opsets()
        if not supported:
            return []
        reasons = []
        for domain, version in info.opsets:
            if domain not in supported:
                ops = sorted(o for o in info.operators if o.startswith(domain + ":"))
                reasons.append(f"operator domain {domain!r} ({', '.join(ops) or 'no operators'}) is not "
                               f"implemented by onnxruntime {self.ort_version}")
            elif version > supported[domain]:
                reasons.append(f"model imports {domain} opset {version}; onnxruntime {self.ort_version} "
                               f"supports up to {supported[domain]}")
        return reasons

    def _choose(self, model: ModelInput, target: TargetSpec) -> Conversion:
        """The conversion for ``target``: ``extended`` for an all-operators device, else the first
        level whose operators the device lists."""
        platform = target_platform(target)
        if ALL_OPERATORS in target.ops:
            return self.conversion(model, LEVELS[0], platform)
        for level in LEVELS:
            made = self.conversion(model, level, platform)
            if made.graph.operators <= target.ops:
                return made
        return made  # "disabled" keeps the model's own operators, which the caller checked

    @staticmethod
    def ram_needed(info: OnnxInfo, made: Conversion) -> int:
        """RAM outside the arena (estimate): payload copy + initializers + input/output copies."""
        io = sum(math.prod(t.shape) * ITEMSIZE.get(t.dtype, 4) for t in info.inputs + info.outputs)
        return len(made.payload) + made.graph.initializer_bytes + io

    def _verdict(self, model: ModelInput, target: TargetSpec
                 ) -> tuple[list[str], OnnxInfo | None, Conversion | None]:
        if model.format not in self.accepts:
            return self.basic_reasons(model, target), None, None
        info = self.info(model)  # a malformed model is a ModelError whatever the target
        if target.runtime not in self.targets:
            return [self._runtime_reason(target)], info, None
        reasons = self.basic_reasons(model, target)
        version = self._version_reason(target)
        if version:
            reasons.append(version)
        reasons += [f"input/output {problem}: an inference module describes numeric tensors only"
                    for problem in info.io_problems]
        reasons += self._opset_reasons(info)
        if ALL_OPERATORS not in target.ops:
            missing = sorted(info.operators - target.ops)
            if missing:
                reasons.append(f"operators not supported by the device's onnxruntime build: {', '.join(missing)}")
        if reasons:
            return reasons, info, None
        try:
            made = self._choose(model, target)
        except CompileFailed as error:
            return [error.reason], info, None
        graph = made.graph
        if len(made.payload) > target.flash_bytes:
            reasons.append(f"ORT format model is {len(made.payload)} B, device model storage is {target.flash_bytes} B")
        if graph.activation_bytes > target.arena_budget_bytes:
            reasons.append(f"needs up to {graph.activation_bytes} B for tensors (estimate, no reuse), "
                           f"device arena budget is {target.arena_budget_bytes} B")
        if self.ram_needed(info, made) > target.ram_bytes:
            reasons.append(f"model, weights and input/output copies need about {self.ram_needed(info, made)} B "
                           f"of RAM outside the arena, device has {target.ram_bytes} B")
        return reasons, info, made

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return self._verdict(model, target)[0]

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        reasons, info, made = self._verdict(model, target)
        if reasons:
            raise Incompatible("; ".join(reasons))
        assert info is not None and made is not None
        graph = made.graph
        operators = tuple(sorted(graph.operators))
        ram = self.ram_needed(info, made)
        log = [f"ONNX model checked (onnx.checker, full check): IR {info.ir_version}, "
               + ", ".join(f"{d} opset {v}" for d, v in info.opsets),
               f"optimised at level {made.level!r} for platform {made.platform!r} and saved as ORT format "
               f"(format {graph.format_version}) with onnxruntime {self.ort_version}",
               f"operators: {', '.join(operators)}",
               f"tensors up to {graph.activation_bytes} B (estimate: inputs and node outputs without reuse"
               + (f", {graph.unsized_tensors} of unknown size left out" if graph.unsized_tensors else "") + "), "
               f"RAM about {ram} B (payload {len(made.payload)} B + weights {graph.initializer_bytes} B "
               f"+ input/output copies)",
               "kernel type table of the ORT format laid out in key order (onnxruntime writes it in hash "
               "order), so every compile gives the same bytes"]
        log += info.notes
        return CompiledModule(
            payload=made.payload,
            payload_format=self.output_format,
            runtime=target.runtime,
            required_arena_bytes=graph.activation_bytes,
            required_ram_bytes=ram,
            required_ops=frozenset({ALL_OPERATORS}) if ALL_OPERATORS in target.ops else graph.operators,
            inputs=info.inputs,
            outputs=info.outputs,
            compiler=self.name,
            compiler_version=self.version,
            source_digest=model.digest,
            log=tuple(log),
            cpu_ops=operators,
            report={
                "optimization_level": made.level, "target_platform": made.platform,
                "operators": list(operators), "source_operators": sorted(info.operators),
                "opsets": {d: v for d, v in info.opsets}, "onnx_bytes": len(model.data),
                "payload_bytes": len(made.payload), "initializer_bytes": graph.initializer_bytes,
                "tensor_bytes_estimate": graph.activation_bytes, "ram_bytes_estimate": ram,
                "ort_format_version": graph.format_version,
            },
        )

    def conformance_samples(self) -> list[ConformanceSample]:
        data = resources.files("lwm2m_server.compilers").joinpath(SAMPLE).read_bytes()
        target = TargetSpec(runtime="onnxruntime", runtime_version=self.ort_version, cpu_core="aarch64",
                            ram_bytes=64 * 1024 * 1024, flash_bytes=64 * 1024 * 1024,
                            arena_budget_bytes=1024 * 1024, ops=frozenset({ALL_OPERATORS}),
                            formats=frozenset({"ort"}))
        return [ConformanceSample(ModelInput(data, "onnx", "onnx-sample", "1"), target)]
