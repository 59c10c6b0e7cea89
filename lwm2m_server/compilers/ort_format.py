"""ORT format models (the flatbuffer ONNX Runtime saves): read the graph, make the bytes canonical.

Reading uses the flatbuffer bindings ONNX Runtime ships for its own tools
(``onnxruntime.tools.ort_format_model``; importing that package puts its
``ort_flatbuffers_py`` folder on ``sys.path``, which the generated code needs).

Why :func:`canonical` exists: ONNX Runtime 1.31 writes the *kernel type string
resolver* (which type constraint of each operator maps to which input/output,
needed by minimal builds) from a hash map whose iteration order changes from
session to session. The entries end up in the same logical order (the vectors
are sorted by key) but at other places in the buffer, so two conversions of one
model differ in a few dozen bytes. Everything else is written before the
resolver, at the end of the buffer, and is the same every time. :func:`canonical`
keeps that part byte for byte and writes the resolver and the root table again
in their logical order, so the payload of a device class is the same bytes
whoever compiles it and however often.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import flatbuffers

from .base import CompileFailed

IDENTIFIER = b"ORTM"
"""File identifier of an ORT format model (bytes 4–8)."""
ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8,
                 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}
"""Bytes per element by ONNX ``TensorProto.DataType`` (ORT's ``TensorDataType`` uses the same numbers);
strings (8) count 0, 4-bit types a byte each."""
_ROOT_FIELDS = 4  # InferenceSession: ort_version, model, session_state (deprecated), kernel_type_str_resolver


def _bindings() -> SimpleNamespace:
    importlib.import_module("onnxruntime.tools.ort_format_model")  # adds ort_flatbuffers_py to sys.path
    from ort_flatbuffers_py.fbs import (ArgTypeAndIndex, InferenceSession, KernelTypeStrArgsEntry,
                                        KernelTypeStrResolver, OpIdKernelTypeStrArgsEntry, TensorTypeAndShape)
    return SimpleNamespace(ArgTypeAndIndex=ArgTypeAndIndex, InferenceSession=InferenceSession,
                           KernelTypeStrArgsEntry=KernelTypeStrArgsEntry,
                           KernelTypeStrResolver=KernelTypeStrResolver,
                           OpIdKernelTypeStrArgsEntry=OpIdKernelTypeStrArgsEntry,
                           TensorTypeAndShape=TensorTypeAndShape)


def operator_name(domain: str, op_type: str) -> str:
    """How operators are named in 26241/2: the op type for the default ONNX domain,
    ``domain:OpType`` for any other (``com.microsoft:FusedGemm``)."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}:{op_type}"


@dataclass(frozen=True, slots=True)
class OrtGraph:
    """Figures of an ORT format model's main graph."""

    operators: frozenset[str]
    """Operators of every node, subgraphs included (:func:`operator_name`)."""
    activation_bytes: int
    """Bytes of the graph inputs and of every node output, added up (no memory reuse)."""
    initializer_bytes: int
    """Bytes of the constant tensors (weights)."""
    unsized_tensors: int
    """Node outputs without a known element type or rank, left out of ``activation_bytes``."""
    format_version: str
    """ORT format version written in the file."""


def _session(payload: bytes) -> Any:
    fbs = _bindings()
    if len(payload) < 8 or payload[4:8] != IDENTIFIER:
        raise CompileFailed("not an ORT format model (file identifier ORTM missing)")
    return fbs.InferenceSession.InferenceSession.GetRootAs(payload, 0)


def _tensor_bytes(type_info: Any) -> int | None:
    """Bytes of a tensor-typed value (symbolic or unknown dimensions count as 1); None when unknown."""
    fbs = _bindings()
    if type_info is None or type_info.ValueType() != 1:  # TypeInfoValue.tensor_type
        return None
    tensor = fbs.TensorTypeAndShape.TensorTypeAndShape()
    table = type_info.Value()
    tensor.Init(table.Bytes, table.Pos)
    shape = tensor.Shape()
    if shape is None or tensor.ElemType() not in ELEMENT_BYTES:
        return None
    dims = []
    for index in range(shape.DimLength()):
        value = shape.Dim(index).Value()
        known = value is not None and value.DimType() == 1 and value.DimValue() >= 0
        dims.append(value.DimValue() if known else 1)
    return math.prod(dims) * ELEMENT_BYTES[tensor.ElemType()]


def read_graph(payload: bytes) -> OrtGraph:
    """The operators and memory figures of an ORT format model; :class:`CompileFailed` if unreadable."""
    try:
        session = _session(payload)
        graph = session.Model().Graph()
        args = {}
        for index in range(graph.NodeArgsLength()):
            arg = graph.NodeArgs(index)
            args[arg.Name().decode()] = arg
        operators: set[str] = set()
        produced: set[str] = {graph.Inputs(i).decode() for i in range(graph.InputsLength())}
        pending = [graph]
        while pending:  # subgraphs (If, Loop, Scan bodies) add operators; their tensors are not counted
            current = pending.pop()
            for index in range(current.NodesLength()):
                node = current.Nodes(index)
                operators.add(operator_name((node.Domain() or b"").decode(), node.OpType().decode()))
                if current is graph:
                    produced.update(node.Outputs(j).decode() for j in range(node.OutputsLength()))
                for a in range(node.AttributesLength()):
                    attribute = node.Attributes(a)
                    if attribute.G() is not None:
                        pending.append(attribute.G())
                    pending.extend(attribute.Graphs(g) for g in range(attribute.GraphsLength()))
        initializers = set()
        weights = 0
        for index in range(graph.InitializersLength()):
            tensor = graph.Initializers(index)
            initializers.add(tensor.Name().decode())
            count = math.prod(tensor.Dims(d) for d in range(tensor.DimsLength()))
            weights += tensor.RawDataLength() or count * ELEMENT_BYTES.get(tensor.DataType(), 0)
        activations = unsized = 0
        for name in produced - initializers - {""}:  # "" marks an omitted optional output
            arg = args.get(name)
            size = _tensor_bytes(arg.Type()) if arg is not None else None
            if size is None:
                unsized += 1
            else:
                activations += size
        return OrtGraph(frozenset(operators), activations, weights, unsized,
                        (session.OrtVersion() or b"").decode())
    except CompileFailed:
        raise
    except Exception as error:  # a truncated or foreign flatbuffer fails anywhere in the bindings
        raise CompileFailed(f"cannot read the ORT format model: {error!r}") from None


def _resolver_entries(session: Any) -> list[tuple[bytes, list[tuple[bytes, list[tuple[int, int]]]]]]:
    resolver = session.KernelTypeStrResolver()
    entries = []
    for i in range(resolver.OpKernelTypeStrArgsLength() if resolver is not None else 0):
        entry = resolver.OpKernelTypeStrArgs(i)
        type_strs = []
        for j in range(entry.KernelTypeStrArgsLength()):
            type_str = entry.KernelTypeStrArgs(j)
            args = [(type_str.Args(k).ArgType(), type_str.Args(k).Index()) for k in range(type_str.ArgsLength())]
            type_strs.append((type_str.KernelTypeStr(), args))
        entries.append((entry.OpId(), type_strs))
    return entries


def _region_start(buffer: bytes, table: int) -> int:
    """Where the objects written up to ``table`` begin: the table, or its vtable right below it."""
    vtable = table - int.from_bytes(buffer[table:table + 4], "little", signed=True)
    size = int.from_bytes(buffer[vtable:vtable + 2], "little") if 0 <= vtable < len(buffer) else 0
    return vtable if vtable < table and vtable + size == table else table


def canonical(raw: bytes) -> bytes:
    """``raw`` with the kernel type string resolver and root table written in a fixed layout
    (see the module docstring); :class:`CompileFailed` when the file is not laid out as
    ONNX Runtime writes it (the resolver after the model)."""
    fbs = _bindings()
    session = _session(raw)
    model = session.Model()
    if model is None or session._tab.Offset(8):  # deprecated session_state: a foreign writer
        raise CompileFailed("unexpected ORT format layout (no model, or a session state)")
    start = _region_start(raw, model._tab.Pos)
    resolver = session.KernelTypeStrResolver()
    version_field = session._tab.Offset(4)
    version_at = session._tab.Indirect(session._tab.Pos + version_field) if version_field else None
    if (resolver is not None and resolver._tab.Pos >= start) or session._tab.Pos >= start \
            or (version_at is not None and version_at < start):
        raise CompileFailed("unexpected ORT format layout (resolver or root inside the model region)")
    tail = raw[start:]
    alignment = 1
    while alignment < 64 and len(raw) % (alignment * 2) == 0:
        alignment *= 2  # the writer padded the file to its largest alignment; keep the tail's
    builder = flatbuffers.Builder(len(tail) + 4096)
    builder.Bytes[builder.head - len(tail):builder.head] = tail
    builder.head -= len(tail)
    builder.minalign = max(builder.minalign, alignment)
    model_offset = len(raw) - model._tab.Pos
    version_offset = len(raw) - version_at if version_at is not None else None

    entry_offsets = []
    for op_id, type_strs in _resolver_entries(session):
        type_str_offsets = []
        for type_str, args in type_strs:
            arg_offsets = []
            for arg_type, index in args:
                fbs.ArgTypeAndIndex.Start(builder)
                fbs.ArgTypeAndIndex.AddArgType(builder, arg_type)
                fbs.ArgTypeAndIndex.AddIndex(builder, index)
                arg_offsets.append(fbs.ArgTypeAndIndex.End(builder))
            args_vector = _vector(builder, arg_offsets)
            name = builder.CreateString(type_str)
            fbs.KernelTypeStrArgsEntry.Start(builder)
            fbs.KernelTypeStrArgsEntry.AddKernelTypeStr(builder, name)
            fbs.KernelTypeStrArgsEntry.AddArgs(builder, args_vector)
            type_str_offsets.append(fbs.KernelTypeStrArgsEntry.End(builder))
        type_strs_vector = _vector(builder, type_str_offsets)
        op_name = builder.CreateString(op_id)
        fbs.OpIdKernelTypeStrArgsEntry.Start(builder)
        fbs.OpIdKernelTypeStrArgsEntry.AddOpId(builder, op_name)
        fbs.OpIdKernelTypeStrArgsEntry.AddKernelTypeStrArgs(builder, type_strs_vector)
        entry_offsets.append(fbs.OpIdKernelTypeStrArgsEntry.End(builder))
    resolver_offset = None
    if resolver is not None:
        entries_vector = _vector(builder, entry_offsets)
        fbs.KernelTypeStrResolver.Start(builder)
        fbs.KernelTypeStrResolver.AddOpKernelTypeStrArgs(builder, entries_vector)
        resolver_offset = fbs.KernelTypeStrResolver.End(builder)
    builder.StartObject(_ROOT_FIELDS)
    if version_offset is not None:
        fbs.InferenceSession.AddOrtVersion(builder, version_offset)
    fbs.InferenceSession.AddModel(builder, model_offset)
    if resolver_offset is not None:
        fbs.InferenceSession.AddKernelTypeStrResolver(builder, resolver_offset)
    builder.Finish(builder.EndObject(), file_identifier=IDENTIFIER)
    result = bytes(builder.Output())
    if not result.endswith(tail) or _resolver_entries(_session(result)) != _resolver_entries(session):
        raise CompileFailed("normalising the ORT format model changed its content")
    return result


def _vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()
