"""Ethos-U modules (compiled by Vela) on the simulated device: checked, loaded, never faked.

A Vela-compiled model is a TFLite flatbuffer whose NPU part is one custom
operator, ``ethos-u``, carrying the NPU command stream; the operators Vela
left to the CPU stay TFLite operators. A real Cortex-M55 + Ethos-U55 runs the
command stream on the NPU through TFLM's Ethos-U kernel. This host has no NPU
and nothing here emulates one, so :class:`EthosUModel`:

* parses the flatbuffer and checks every ``ethos-u`` operator: its command
  stream is a constant tensor in Vela's driver-actions format (``COP1``
  header, a configuration word, one or more non-empty command-stream blocks),
  and the configuration word names this device's NPU (product and MACs per
  cycle, as the Ethos-U driver checks before it runs a stream); a module built
  for another NPU fails to load, so the install reports Update Result 58;
* checks that the tensors the device's TFLM would allocate — the NPU scratch
  area plus the input, output and CPU tensors — fit the arena budget;
* runs, for real in the TFLM interpreter, the CPU-fallback operators that
  need no NPU output (e.g. a QUANTIZE of a float input in front of the NPU
  part), cut out of the model as a model of their own;
* invents nothing: a model output that comes from the NPU part is ``None``
  after :meth:`EthosUModel.invoke`, and the device reports no result and no
  latency for it (:mod:`simulators.inference`), only the compiler's estimate
  from the signed manifest, marked as an estimate (26241/25–27).

:mod:`simulators.objects` registers the class in
:data:`simulators.runtime.ACCELERATED` under ``ethos-u``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lwm2m_server.suit import ModelMetadata, TensorSpec
from lwm2m_server.suit.model_info import ITEMSIZE

from .runtime import LoadedModel, ModelLoadError, TflmModel, _spec

ETHOSU_OP = "ethos-u"
"""Custom operator name of the NPU part (TFLM's Ethos-U kernel registers it under it)."""
COP1 = int.from_bytes(b"COP1", "little")
"""First word of Vela's driver-actions format (what the Ethos-U driver parses)."""
_CONFIG, _COMMAND_STREAM, _READ_APB, _DUMP_SHRAM, _NOP = 1, 2, 3, 4, 5
PRODUCTS = {0: "ethos-u55", 1: "ethos-u65", 2: "ethos-u85"}
"""Product field of the configuration word → NPU family."""


@dataclass(frozen=True, slots=True)
class CommandStream:
    """What the driver-actions header of one ``ethos-u`` operator says."""

    family: str
    """NPU family the stream was compiled for, e.g. ``ethos-u55``."""
    macs_per_cycle: int
    """MACs per cycle it was compiled for (the NPU's configuration)."""
    words: int
    """32-bit words of NPU commands."""

    @property
    def accelerator(self) -> str:
        """The 26241/8 name of the NPU it is for, e.g. ``ethos-u55-128``."""
        return f"{self.family}-{self.macs_per_cycle}"


def read_command_stream(data: bytes) -> CommandStream:
    """Parse Vela's driver actions (``COP1``); :class:`ModelLoadError` naming what is wrong."""
    if len(data) < 16 or len(data) % 4:
        raise ModelLoadError(f"the ethos-u command stream is {len(data)} B: not whole 32-bit words of "
                             "driver actions")
    words = struct.unpack(f"<{len(data) // 4}I", data)
    if words[0] != COP1:
        raise ModelLoadError(f"the ethos-u command stream does not start with the COP1 driver-actions "
                             f"header (found {data[:4]!r})")
    config: int | None = None
    commands = 0
    index = 1
    while index < len(words):
        tag = words[index]
        kind, high, param = tag & 0xFF, (tag >> 8) & 0xFF, tag >> 16
        if kind == _CONFIG:
            if index + 2 >= len(words):
                raise ModelLoadError("the ethos-u command stream ends inside its configuration")
            config = words[index + 1]
            index += 3
        elif kind == _COMMAND_STREAM:
            length = param | (high << 16)
            if length == 0 or index + 1 + length > len(words):
                raise ModelLoadError(f"an ethos-u command-stream block of {length} words does not fit the "
                                     f"{len(data)} B stream")
            commands += length
            index += 1 + length
        elif kind in (_READ_APB, _DUMP_SHRAM, _NOP):
            index += 1
        else:
            raise ModelLoadError(f"unknown ethos-u driver action {kind} at word {index}")
    if config is None:
        raise ModelLoadError("the ethos-u command stream has no configuration word")
    if commands == 0:
        raise ModelLoadError("the ethos-u command stream holds no NPU commands")
    product = config >> 28
    if product not in PRODUCTS:
        raise ModelLoadError(f"the ethos-u command stream is for an unknown NPU product {product}")
    return CommandStream(PRODUCTS[product], 1 << (config & 0xF), commands)


def _schema() -> Any:
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError:  # pragma: no cover - a dependency
        raise ModelLoadError("the tflite-micro package (TFLite schema) is not installed") from None
    return schema_py_generated


def _tensor_spec(tensor: Any, type_names: dict[int, str]) -> TensorSpec:
    q = tensor.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    name = tensor.name.decode("utf-8", "replace") if isinstance(tensor.name, bytes) else str(tensor.name or "")
    return _spec(name, type_names[tensor.type], tuple(int(d) for d in tensor.shape), scale, zero)


class EthosUModel(LoadedModel):
    """A Vela-compiled model: NPU part checked but not run, CPU part that needs no NPU output run in TFLM."""

    def __init__(self, payload: bytes, *, arena_size: int, counts: tuple[int, int] | None = None,
                 metadata: ModelMetadata | None = None, accelerators: Sequence[str] = ()) -> None:
        fb = _schema()
        try:
            model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(bytes(payload), 0))
            graph = model.subgraphs[0]
            codes = [(max(c.builtinCode, c.deprecatedBuiltinCode), (c.customCode or b"").decode())
                     for c in model.operatorCodes]
            builtins = _builtin_names(fb)
            names = [custom or builtins.get(code, str(code)) for code, custom in codes]
            ops = [(names[op.opcodeIndex], op) for op in graph.operators]
            type_names = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
            self.inputs = tuple(_tensor_spec(graph.tensors[i], type_names) for i in graph.inputs)
            self.outputs = tuple(_tensor_spec(graph.tensors[i], type_names) for i in graph.outputs)
            constants = {i for i, t in enumerate(graph.tensors) if 0 < t.buffer < len(model.buffers)
                         and model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)}
            self.arena_used = _arena_bytes(graph, constants, type_names)
        except ModelLoadError:
            raise
        except Exception as error:  # a flatbuffer that is not one: offsets out of range, …
            raise ModelLoadError(f"the Ethos-U module is not a readable TFLite flatbuffer: "
                                 f"{type(error).__name__}: {error}") from None
        npu_ops = [op for name, op in ops if name == ETHOSU_OP]
        if not npu_ops:
            raise ModelLoadError(f"the module has no {ETHOSU_OP!r} operator: it was not compiled for an Ethos-U NPU")
        streams = [read_command_stream(_constant(model, graph, op.inputs[0])) for op in npu_ops]
        npus = sorted(a.strip().lower() for a in accelerators if a.strip().lower().startswith("ethos-u"))
        for stream in streams:
            if stream.accelerator not in npus:
                raise ModelLoadError(f"the command stream is for an {stream.accelerator} "
                                     f"({stream.macs_per_cycle} MACs per cycle); this device's NPU is "
                                     f"{', '.join(npus) or 'absent (26241/8 lists no Ethos-U)'}")
        self.streams = tuple(streams)
        """The checked command stream of each ``ethos-u`` operator."""
        if self.arena_used > arena_size:
            raise ModelLoadError(f"the NPU scratch area and the model's tensors take {self.arena_used} B, "
                                 f"more than the {arena_size} B arena budget")
        self.metadata = metadata
        """The manifest's model metadata (the compiler's estimate is there)."""
        runnable, self.cpu_outputs = _cpu_part(ops, graph, constants)
        self.cpu_ops = tuple(name for name, _ in runnable)
        """Operators run for real: CPU fallbacks that need no NPU output."""
        self.cpu_output_names = tuple(_tensor_spec(graph.tensors[i], type_names).name for i in self.cpu_outputs)
        """Names of the tensors the CPU part computes for the rest of the model (or as its outputs)."""
        self.blocked_ops = tuple(name for name, op in ops
                                 if name != ETHOSU_OP and all(op is not other for _, other in runnable))
        """CPU-fallback operators that wait for an NPU output, so cannot run here."""
        self._output_indices = tuple(int(i) for i in graph.outputs)
        self._cpu: TflmModel | None = None
        self._cpu_inputs: list[int] = []
        if runnable:
            cut, self._cpu_inputs = _cut(model, graph, [op for _, op in runnable], self.cpu_outputs)
            self._cpu = TflmModel(cut, arena_size=arena_size)

    def run_cpu_part(self, arrays: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """Run the CPU operators that need no NPU output on the model inputs ``arrays``, in TFLM:
        the tensors they compute by name (:attr:`cpu_output_names`) and the invoke time, µs.
        Nothing runs (an empty dict, 0.0) when the model has no such operator."""
        if self._cpu is None:
            return {}, 0.0
        results, latency = self._cpu.invoke([arrays[i] for i in self._cpu_inputs])
        return dict(zip(self.cpu_output_names, results)), latency

    def invoke(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """:meth:`run_cpu_part`; the outputs list holds ``None`` for every model output the NPU
        part computes (nothing is invented). Latency: the CPU part's, µs."""
        computed, latency = self.run_cpu_part(arrays)
        by_index = dict(zip(self.cpu_outputs, (computed[name] for name in self.cpu_output_names)))
        return [by_index.get(i) for i in self._output_indices], latency  # type: ignore[misc]

    def no_output_reason(self, cpu_latency_us: float | None = None) -> str:
        """Why an inference gives no result on this device, with the compiler's estimate."""
        ran = (f"ran the CPU part ({', '.join(self.cpu_ops)}) for real"
               + (f" in {cpu_latency_us:.1f} µs" if cpu_latency_us is not None else "") + "; "
               if self.cpu_ops else "")
        meta = self.metadata
        estimate = ""
        if meta is not None and meta.estimated_cycles is not None:
            estimate = (f"; the compiler's estimate, not a measurement: {meta.estimated_cycles} cycles"
                        + (f", {meta.estimated_latency_s * 1e6:.3f} µs" if meta.estimated_latency_s is not None
                           else "") + f" ({meta.estimate_source}), in /26241/0/25-27")
        return (f"{ran}the NPU part ({len(self.streams)} ethos-u command stream(s) for "
                f"{self.streams[0].accelerator}) cannot run on this simulated device, so there is no output"
                f"{estimate}")


def _builtin_names(fb: Any) -> dict[int, str]:
    return {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _constant(model: Any, graph: Any, index: int) -> bytes:
    """Bytes of constant tensor ``index``; :class:`ModelLoadError` when it has none."""
    if not 0 <= index < len(graph.tensors):
        raise ModelLoadError(f"the ethos-u operator refers to tensor {index}, the model has {len(graph.tensors)}")
    buffer = graph.tensors[index].buffer
    data = model.buffers[buffer].data if 0 < buffer < len(model.buffers) else None
    if data is None or not len(data):
        raise ModelLoadError("the ethos-u operator's command stream tensor holds no data")
    return bytes(data.tobytes() if hasattr(data, "tobytes") else bytes(data))


def _arena_bytes(graph: Any, constants: set[int], type_names: dict[int, str]) -> int:
    """Bytes of every non-constant tensor an operator or the graph uses, 16-byte aligned: the
    NPU scratch area plus the input, output and CPU tensors (the figure the plugin reports
    for the Shared_Sram and Sram_Only memory modes)."""
    used = {int(i) for i in list(graph.inputs) + list(graph.outputs)}
    for op in graph.operators:
        used |= {int(i) for i in list(op.inputs) + list(op.outputs) if i >= 0}
    total = 0
    for index in used - constants:
        tensor = graph.tensors[index]
        size = int(np.prod(tensor.shape, dtype=np.int64)) * ITEMSIZE.get(type_names.get(tensor.type, ""), 1)
        total += -(-size // 16) * 16
    return total


def _cpu_part(ops: list[tuple[str, Any]], graph: Any,
              constants: set[int]) -> tuple[list[tuple[str, Any]], tuple[int, ...]]:
    """The CPU operators computable from the model inputs and constants alone (execution
    order), and the tensors of theirs the rest of the model or its outputs read."""
    available = {int(i) for i in graph.inputs} | constants
    runnable = []
    for name, op in ops:
        if name != ETHOSU_OP and all(i < 0 or i in available for i in op.inputs):
            runnable.append((name, op))
            available |= {int(i) for i in op.outputs}
    produced = {int(i) for _, op in runnable for i in op.outputs}
    read_later = {int(i) for _, op in ops if all(op is not other for _, other in runnable) for i in op.inputs}
    wanted = [i for i in sorted(produced) if i in read_later or i in set(graph.outputs)]
    return runnable, tuple(wanted)


def _cut(model: Any, graph: Any, ops: list[Any], outputs: tuple[int, ...]) -> tuple[bytes, list[int]]:
    """A model of its own holding ``ops``: the inputs they read, ``outputs``, and only the
    tensors and buffers they use. Returns it and the positions of its inputs among the model's."""
    import flatbuffers

    inputs = [position for position, i in enumerate(graph.inputs) if any(i in op.inputs for op in ops)]
    used = sorted({int(graph.inputs[p]) for p in inputs} | set(outputs)
                  | {int(i) for op in ops for i in list(op.inputs) + list(op.outputs) if i >= 0})
    tensor_map = {old: new for new, old in enumerate(used)}
    buffer_map = {0: 0}
    buffers = [model.buffers[0]]
    tensors = []
    for old in used:
        tensor = graph.tensors[old]
        if tensor.buffer not in buffer_map:
            buffer_map[tensor.buffer] = len(buffers)
            buffers.append(model.buffers[tensor.buffer])
        tensor.buffer = buffer_map[tensor.buffer]
        tensors.append(tensor)
    for op in ops:
        op.inputs = [tensor_map[int(i)] if i >= 0 else -1 for i in op.inputs]
        op.outputs = [tensor_map[int(i)] for i in op.outputs]
    graph.tensors, graph.operators = tensors, ops
    graph.inputs = [tensor_map[int(graph.inputs[p])] for p in inputs]
    graph.outputs = [tensor_map[i] for i in outputs]
    model.subgraphs = [graph, *model.subgraphs[1:]]  # others stay: control-flow operators name them
    model.buffers = buffers
    model.metadata = None  # Vela's OfflineMemoryAllocation names tensors by their old indices
    model.signatureDefs = None
    builder = flatbuffers.Builder(1024 + sum(len(b.data) for b in buffers if b.data is not None))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), inputs
