"""Read a TFLite flatbuffer without TensorFlow: operators, tensors, inputs and outputs.

:func:`parse_model` walks the flatbuffer with the generated TFLite schema
module shipped by the ``tflite-micro`` package and checks every offset, vector
length and index it follows, so malformed bytes raise :class:`ModelError`
naming the problem instead of crashing or looping (the Python flatbuffers
runtime has no verifier). :func:`model_object` and :func:`serialize` give the
schema's mutable object tree and write it back with 16-byte aligned buffers
(TFLM on a Cortex-M reads weights in place from flash and needs the alignment).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

from ..suit.model_info import Quantization, TensorSpec
from .base import CompilerError, ModelError

FILE_IDENTIFIER = b"TFL3"
"""Bytes 4–8 of every TFLite flatbuffer."""
ALIGNMENT = 16
"""Alignment :func:`serialize` gives constant buffers (TFLM's ``alignas(16)`` arena/model)."""


@lru_cache(maxsize=1)
def schema() -> ModuleType:
    """The generated TFLite schema module (``schema_py_generated``) from tflite-micro."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError as exc:
        raise CompilerError("reading .tflite models needs the tflite-micro package "
                            f"(for its TFLite schema module): {exc}") from exc
    return schema_py_generated


@lru_cache(maxsize=1)
def _enum_names() -> tuple[dict[int, str], dict[int, str]]:
    fb = schema()

    def names(enum: type) -> dict[int, str]:
        return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}
    return names(fb.BuiltinOperator), {code: name.lower() for code, name in names(fb.TensorType).items()}


def builtin_code(name: str) -> int:
    """The BuiltinOperator number of ``name`` (``FULLY_CONNECTED`` → 9)."""
    return getattr(schema().BuiltinOperator, name)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a subgraph."""

    index: int
    """Position in the subgraph's tensor list."""
    name: str
    """Tensor name."""
    dtype: str
    """Element type, numpy spelling (``float32``, ``int8``, …)."""
    shape: tuple[int, ...]
    """Dimensions."""
    shape_signature: tuple[int, ...]
    """Dimensions with -1 for dynamic ones (empty when the model has none)."""
    buffer: int
    """Index into the model's buffers; 0 is the empty sentinel."""
    data_bytes: int
    """Bytes of constant data; 0 for activations, inputs and outputs."""
    scales: tuple[float, ...]
    """Quantization scales (one per tensor, or one per channel)."""
    zero_points: tuple[int, ...]
    """Quantization zero points."""
    quantized_dimension: int
    """Channel axis of per-channel quantization."""
    is_variable: bool
    """True for a variable (state) tensor."""

    @property
    def is_constant(self) -> bool:
        """True when the tensor's values are stored in the model (weights, biases, shapes)."""
        return self.data_bytes > 0

    @property
    def spec(self) -> TensorSpec:
        """The standard description used in :class:`~.base.CompiledModule`."""
        quantized = bool(self.scales) and self.scales[0] != 0.0  # TFLite writes scale 0 for "not quantized"
        return TensorSpec(self.name, self.dtype, self.shape,
                          Quantization(self.scales[0], self.zero_points[0] if self.zero_points else 0)
                          if quantized else None)

    @property
    def byte_size(self) -> int:
        """Bytes one value of this tensor occupies (dynamic dimensions count as 1)."""
        return self.spec.byte_size


@dataclass(frozen=True, slots=True)
class OperatorInfo:
    """One operator (node) of a subgraph."""

    name: str
    """Builtin name (``FULLY_CONNECTED``) or, for a custom operator, its custom code."""
    custom: bool
    """True for a custom operator."""
    version: int
    """Operator version from the operator code."""
    inputs: tuple[int, ...]
    """Tensor indices; -1 marks an omitted optional input."""
    outputs: tuple[int, ...]
    """Tensor indices."""


@dataclass(frozen=True, slots=True)
class SubgraphInfo:
    """One subgraph; subgraph 0 is the model's entry point."""

    name: str
    """Subgraph name (often empty or ``main``)."""
    tensors: tuple[TensorInfo, ...]
    """All tensors."""
    operators: tuple[OperatorInfo, ...]
    """Operators in execution order."""
    inputs: tuple[int, ...]
    """Tensor indices of the inputs."""
    outputs: tuple[int, ...]
    """Tensor indices of the outputs."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What :func:`parse_model` found in a TFLite flatbuffer."""

    size: int
    """Bytes of the whole file."""
    schema_version: int
    """``Model.version`` (3 for current files)."""
    description: str
    """``Model.description``."""
    subgraphs: tuple[SubgraphInfo, ...]
    """All subgraphs, entry point first."""
    buffer_offsets: tuple[int, ...]
    """File offset of each non-empty buffer's data (checks alignment)."""
    operators: frozenset[str]
    """Every operator used: builtin names and custom codes."""
    custom_ops: frozenset[str]
    """The custom codes among :attr:`operators`."""

    @property
    def main(self) -> SubgraphInfo:
        """Subgraph 0, the one an interpreter runs."""
        return self.subgraphs[0]

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        """Input tensors of the main subgraph."""
        return tuple(self.main.tensors[i] for i in self.main.inputs)

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        """Output tensors of the main subgraph."""
        return tuple(self.main.tensors[i] for i in self.main.outputs)

    @property
    def constant_bytes(self) -> int:
        """Bytes of weights and other constants over all subgraphs."""
        return sum(t.data_bytes for sg in self.subgraphs for t in sg.tensors)

    @property
    def activation_bytes(self) -> int:
        """Bytes of every non-constant tensor added up: an arena upper bound without reuse."""
        return sum(t.byte_size for sg in self.subgraphs for t in sg.tensors if not t.is_constant)

    @property
    def io_bytes(self) -> int:
        """Bytes of the main subgraph's inputs and outputs (the application's copies)."""
        return sum(t.byte_size for t in self.inputs + self.outputs)

    @property
    def is_float(self) -> bool:
        """True when some non-constant tensor is float32 (a candidate for int8 quantization)."""
        return any(t.dtype == "float32" and not t.is_constant for sg in self.subgraphs for t in sg.tensors)

    def aligned(self, alignment: int = ALIGNMENT) -> bool:
        """True when every constant buffer starts at a multiple of ``alignment``."""
        return all(offset % alignment == 0 for offset in self.buffer_offsets)


# File space one table of each kind takes at the least as converters write it (its offset
# in the vector, the soffset to its vtable, the fields: a tensor's name, shape, type and
# buffer, an operator's opcode, inputs and outputs); a walk charges at least this per table.
# Real models spend under a fifth of the budget.
_BUFFER_BYTES = 8
_CODE_BYTES = 8
_SUBGRAPH_BYTES = 16
_TENSOR_BYTES = 24
_OPERATOR_BYTES = 24


class _Reader:
    """Bounds checks for one flatbuffer walk.

    Tables and vectors are reached through offsets, so a crafted file can point many
    entries at one subgraph, tensor or shape: a few KB that expand to millions of
    entries walked (quadratic time and memory). Every vector walked is charged
    against a budget of twice the file size: each element at its own size, or at the
    least a table of its kind occupies (``table_bytes``) when it is a table. A file
    whose parts are all distinct spends at most its size once.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.where = "model"
        """Part being read, named in errors (``subgraph 0 tensor 3``)."""
        self.budget = 2 * len(data) + 4096
        """Bytes of vectors that may still be walked."""

    def count(self, n: int, what: str, item_size: int = 4, *, table_bytes: int = 0, walked: bool = True) -> int:
        """A vector length, refused when it could not fit in the file (or, for a vector
        that is walked, in what is left of the budget)."""
        if n < 0 or n * item_size > len(self.data):
            raise ModelError(f"{what}: vector length {n} exceeds the file ({len(self.data)} B)")
        if walked:
            self.budget -= n * max(item_size, table_bytes)
            if self.budget < 0:
                raise ModelError(f"{what}: the model's tables are reached over and over through "
                                 f"shared offsets, more than a {len(self.data)} B file can hold")
        return n

    def ints(self, table: Any, field: str, what: str) -> tuple[int, ...]:
        n = self.count(getattr(table, f"{field}Length")(), what)
        if n == 0:
            return ()
        return tuple(int(v) for v in getattr(table, f"{field}AsNumpy")())

    def text(self, raw: bytes | None, what: str) -> str:
        if not raw:
            return ""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{what} is not valid UTF-8") from None


def parse_model(data: bytes) -> ModelInfo:
    """Parse a TFLite flatbuffer; raise :class:`ModelError` naming what is malformed."""
    data = bytes(data)
    if len(data) < 8:
        raise ModelError(f"too short for a TFLite flatbuffer ({len(data)} B)")
    if data[4:8] != FILE_IDENTIFIER:
        raise ModelError(f"not a TFLite flatbuffer: file identifier is {data[4:8]!r}, expected {FILE_IDENTIFIER!r}")
    root = int.from_bytes(data[:4], "little")
    if root < 8 or root + 4 > len(data):
        raise ModelError(f"root table offset {root} is outside the file ({len(data)} B)")
    reader = _Reader(data)
    try:
        return _parse(reader)
    except CompilerError:
        raise
    except Exception as exc:  # struct.error, IndexError, ValueError … from garbage offsets
        raise ModelError(f"malformed TFLite flatbuffer: {reader.where} points outside the file or "
                         f"holds an impossible value ({type(exc).__name__}: {exc})") from None


def _parse(r: _Reader) -> ModelInfo:
    fb = schema()
    op_names, type_names = _enum_names()
    data = r.data
    model = fb.Model.GetRootAs(data, 0)

    n_buffers = r.count(model.BuffersLength(), "buffers", table_bytes=_BUFFER_BYTES)
    buffer_sizes, offsets = [], []
    for b in range(n_buffers):
        r.where = f"buffer {b}"
        buf = model.Buffers(b)
        size = r.count(buf.DataLength(), f"buffer {b}", 1, walked=False)
        external_offset, external_size = buf.Offset(), buf.Size()
        if size:
            start = buf._tab.Vector(buf._tab.Offset(4))
            if start < 0 or start + size > len(data):
                raise ModelError(f"buffer {b}: data [{start}, {start + size}) is outside the file")
            offsets.append(start)
        elif external_offset > 1:
            if external_offset + external_size > len(data):
                raise ModelError(f"buffer {b}: external data [{external_offset}, "
                                 f"{external_offset + external_size}) is outside the file")
            size = external_size
            offsets.append(external_offset)
        buffer_sizes.append(size)

    codes = []
    for c in range(r.count(model.OperatorCodesLength(), "operator codes", table_bytes=_CODE_BYTES)):
        r.where = f"operator code {c}"
        code = model.OperatorCodes(c)
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if number == fb.BuiltinOperator.CUSTOM:
            custom = r.text(code.CustomCode(), f"operator code {c} custom name")
            if not custom:
                raise ModelError(f"operator code {c} is CUSTOM without a custom name")
            codes.append((custom, True, code.Version()))
        else:
            codes.append((op_names.get(number, f"UNKNOWN_BUILTIN_{number}"), False, code.Version()))

    n_subgraphs = r.count(model.SubgraphsLength(), "subgraphs", table_bytes=_SUBGRAPH_BYTES)
    if n_subgraphs == 0:
        raise ModelError("the model has no subgraph")
    subgraphs = tuple(_subgraph(r, model.Subgraphs(s), s, type_names, buffer_sizes, codes)
                      for s in range(n_subgraphs))
    if not subgraphs[0].outputs:
        raise ModelError("subgraph 0 has no outputs")
    used = [op for sg in subgraphs for op in sg.operators]
    r.where = "model"
    return ModelInfo(
        size=len(data),
        schema_version=model.Version(),
        description=r.text(model.Description(), "model description"),
        subgraphs=subgraphs,
        buffer_offsets=tuple(offsets),
        operators=frozenset(op.name for op in used),
        custom_ops=frozenset(op.name for op in used if op.custom),
    )


def _subgraph(r: _Reader, sg: Any, s: int, type_names: dict[int, str], buffer_sizes: list[int],
              codes: list[tuple[str, bool, int]]) -> SubgraphInfo:
    where = r.where = f"subgraph {s}"
    tensors = []
    for t in range(r.count(sg.TensorsLength(), f"{where} tensors", table_bytes=_TENSOR_BYTES)):
        what = r.where = f"{where} tensor {t}"
        tensor = sg.Tensors(t)
        dtype = type_names.get(tensor.Type())
        if dtype is None:
            raise ModelError(f"{what} has unknown element type {tensor.Type()}")
        shape = r.ints(tensor, "Shape", f"{what} shape")
        signature = r.ints(tensor, "ShapeSignature", f"{what} shape signature")
        if any(d < 0 for d in shape) or any(d < -1 for d in signature):
            raise ModelError(f"{what} has an invalid shape {shape} / signature {signature}")
        buffer = tensor.Buffer()
        if buffer >= len(buffer_sizes):
            raise ModelError(f"{what} refers to buffer {buffer}, the model has {len(buffer_sizes)}")
        scales: tuple[float, ...] = ()
        zero_points: tuple[int, ...] = ()
        axis = 0
        q = tensor.Quantization()
        if q is not None:
            n_scales = r.count(q.ScaleLength(), f"{what} scales")
            n_zero_points = r.count(q.ZeroPointLength(), f"{what} zero points", 8)
            scales = tuple(float(v) for v in q.ScaleAsNumpy()) if n_scales else ()
            zero_points = tuple(int(v) for v in q.ZeroPointAsNumpy()) if n_zero_points else ()
            axis = q.QuantizedDimension()
            if scales and zero_points and len(scales) != len(zero_points):
                raise ModelError(f"{what} has {len(scales)} scales but {len(zero_points)} zero points")
        tensors.append(TensorInfo(
            index=t, name=r.text(tensor.Name(), f"{what} name"), dtype=dtype, shape=shape,
            shape_signature=signature, buffer=buffer, data_bytes=buffer_sizes[buffer],
            scales=scales, zero_points=zero_points, quantized_dimension=axis,
            is_variable=bool(tensor.IsVariable())))

    def indices(values: tuple[int, ...], what: str, optional: bool) -> tuple[int, ...]:
        lowest = -1 if optional else 0
        for i in values:
            if not lowest <= i < len(tensors):
                raise ModelError(f"{what} refers to tensor {i}, {where} has {len(tensors)}")
        return values

    operators = []
    for o in range(r.count(sg.OperatorsLength(), f"{where} operators", table_bytes=_OPERATOR_BYTES)):
        what = r.where = f"{where} operator {o}"
        op = sg.Operators(o)
        index = op.OpcodeIndex()
        if index >= len(codes):
            raise ModelError(f"{what} uses operator code {index}, the model has {len(codes)}")
        name, custom, version = codes[index]
        operators.append(OperatorInfo(
            name=name, custom=custom, version=version,
            inputs=indices(r.ints(op, "Inputs", f"{what} inputs"), f"{what} input", True),
            outputs=indices(r.ints(op, "Outputs", f"{what} outputs"), f"{what} output", False)))
    r.where = where
    return SubgraphInfo(
        name=r.text(sg.Name(), f"{where} name"),
        tensors=tuple(tensors),
        operators=tuple(operators),
        inputs=indices(r.ints(sg, "Inputs", f"{where} inputs"), f"{where} input", False),
        outputs=indices(r.ints(sg, "Outputs", f"{where} outputs"), f"{where} output", False),
    )


def model_object(data: bytes) -> Any:
    """The schema's mutable ``ModelT`` tree of ``data`` (validated by :func:`parse_model` first)."""
    parse_model(data)
    fb = schema()
    try:
        return fb.ModelT.InitFromObj(fb.Model.GetRootAs(bytes(data), 0))
    except Exception as exc:
        raise ModelError(f"malformed TFLite flatbuffer: {type(exc).__name__}: {exc}") from None


def serialize(model: Any, alignment: int = ALIGNMENT) -> bytes:
    """Write a ``ModelT`` tree as a TFLite flatbuffer, every constant buffer ``alignment``-aligned."""
    fb = schema()
    import flatbuffers

    class AlignedBuffer(fb.BufferT):
        def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (schema API)
            data = None
            if self.data is not None and len(self.data):
                raw = self.data.tobytes() if hasattr(self.data, "tobytes") else bytes(self.data)
                builder.StartVector(1, len(raw), alignment)
                builder.head -= len(raw)
                builder.Bytes[builder.head: builder.head + len(raw)] = raw
                data = builder.EndVector()
            fb.BufferStart(builder)
            if data is not None:
                fb.BufferAddData(builder, data)
            return fb.BufferEnd(builder)

    buffers = []
    for b in model.buffers or []:
        if b.offset > 1:
            raise CompilerError("models with external buffer data (> 2 GB) cannot be re-serialized")
        aligned = AlignedBuffer()
        aligned.data = b.data
        buffers.append(aligned)
    original = model.buffers
    model.buffers = buffers
    try:
        builder = flatbuffers.Builder(1024 + sum(len(b.data) for b in buffers if b.data is not None))
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())
    finally:
        model.buffers = original
