"""The ``onnxruntime`` runtime of the simulated device: ORT format models in real ONNX Runtime.

An ``onnxruntime`` device (a Linux gateway, profile ``linux-gateway-onnx``)
receives an ORT format model (made by the server's ``onnxruntime`` plugin) and
runs it with ``onnxruntime.InferenceSession`` from the bytes in memory, on one
thread and the CPU execution provider, as a small gateway would. The outputs in
Last Inference Result are what ONNX Runtime computed.

ONNX Runtime has no fixed tensor arena: it plans and reuses memory at run time.
Arena used (26241/13) is therefore the bytes of the graph inputs and every node
output of the loaded graph, added up as if nothing were reused (symbolic
dimensions count as 1) — the estimate the server's plugin compares with the
arena budget, read here from the same ORT format graph.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Any, Sequence

import numpy as np

from lwm2m_server.suit import TensorSpec

from .runtime_base import LoadedModel, ModelLoadError

ORT_IDENTIFIER = b"ORTM"
"""File identifier of an ORT format model (bytes 4–8 of the flatbuffer)."""
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
"""Bytes per element by ONNX ``TensorProto.DataType`` (numeric types ORT's CPU kernels use)."""
_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
           "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
           "tensor(int16)": "int16", "tensor(uint16)": "uint16", "tensor(int32)": "int32",
           "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
           "tensor(bool)": "bool"}
"""ONNX Runtime's type names → tensor element types of an inference module."""


def is_ort_format(payload: bytes) -> bool:
    """True when ``payload`` carries the ORT format file identifier."""
    return len(payload) >= 8 and payload[4:8] == ORT_IDENTIFIER


def tensor_bytes(payload: bytes) -> int:
    """Bytes of the graph inputs and every node output of an ORT format model's main graph,
    added up (see the module docstring); :class:`ModelLoadError` when it cannot be read."""
    try:
        importlib.import_module("onnxruntime.tools.ort_format_model")  # puts ort_flatbuffers_py on sys.path
        from ort_flatbuffers_py.fbs import InferenceSession, TensorTypeAndShape

        graph = InferenceSession.InferenceSession.GetRootAs(payload, 0).Model().Graph()
        args = {graph.NodeArgs(i).Name().decode(): graph.NodeArgs(i) for i in range(graph.NodeArgsLength())}
        names = {graph.Inputs(i).decode() for i in range(graph.InputsLength())}
        for index in range(graph.NodesLength()):
            node = graph.Nodes(index)
            names.update(node.Outputs(j).decode() for j in range(node.OutputsLength()))
        names -= {graph.Initializers(i).Name().decode() for i in range(graph.InitializersLength())} | {""}
        total = 0
        for name in names:
            type_info = args[name].Type() if name in args else None
            if type_info is None or type_info.ValueType() != 1:  # not a tensor: not counted
                continue
            tensor = TensorTypeAndShape.TensorTypeAndShape()
            tensor.Init(type_info.Value().Bytes, type_info.Value().Pos)
            shape = tensor.Shape()
            if shape is None or tensor.ElemType() not in _ELEMENT_BYTES:
                continue
            dims = []
            for d in range(shape.DimLength()):
                value = shape.Dim(d).Value()
                dims.append(value.DimValue() if value is not None and value.DimType() == 1
                            and value.DimValue() >= 0 else 1)
            total += math.prod(dims) * _ELEMENT_BYTES[tensor.ElemType()]
        return total
    except Exception as error:  # a truncated flatbuffer fails anywhere in the generated readers
        raise ModelLoadError(f"cannot read the ORT format graph: {error!r}") from None


def _spec(value: Any) -> TensorSpec:
    dtype = _DTYPES.get(value.type)
    if dtype is None:
        raise ModelLoadError(f"input/output {value.name!r} has type {value.type}, not a numeric tensor")
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in (value.shape or ()))
    return TensorSpec(value.name, dtype, shape)


class OnnxRuntimeModel(LoadedModel):
    """ONNX Runtime (``onnxruntime.InferenceSession``) on an ORT format payload, one thread."""

    def __init__(self, payload: bytes, *, arena_size: int = 0, counts: tuple[int, int] | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:  # pragma: no cover - a dependency
            raise ModelLoadError("the onnxruntime package is not installed") from None
        if not is_ort_format(payload):
            raise ModelLoadError("the payload is not an ORT format model (file identifier ORTM missing)")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.load_model_format", "ORT")
        try:
            self._session = onnxruntime.InferenceSession(bytes(payload), options,
                                                         providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... with the reason
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {str(error).strip()}") from None
        self.inputs = tuple(_spec(v) for v in self._session.get_inputs())
        self.outputs = tuple(_spec(v) for v in self._session.get_outputs())
        if counts is not None and counts != (len(self.inputs), len(self.outputs)):
            raise ModelLoadError(f"the model has {len(self.inputs)} inputs and {len(self.outputs)} outputs, "
                                 f"the manifest says {counts[0]} and {counts[1]}")
        self._names = [t.name for t in self.inputs]
        self.arena_used = tensor_bytes(payload)
        if arena_size and self.arena_used > arena_size:
            raise ModelLoadError(f"the model's tensors take {self.arena_used} B, "
                                 f"more than the {arena_size} B arena budget")

    def invoke(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        feed = {name: np.asarray(array, dtype=spec.dtype).reshape(spec.shape)
                for name, spec, array in zip(self._names, self.inputs, arrays)}
        try:
            started = time.perf_counter_ns()
            outputs = self._session.run(None, feed)
            elapsed = time.perf_counter_ns() - started
        except Exception as error:
            raise ModelLoadError(f"ONNX Runtime inference failed: {str(error).strip()}") from None
        return [np.asarray(o) for o in outputs], elapsed / 1000.0
