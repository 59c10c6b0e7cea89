"""Model metadata carried, signed, inside the SUIT manifest of an inference module.

Where it lives: manifest member **-26241** (``tinymlaas-model``), a private-use
key of the SUIT Manifest Elements, whose value is a bstr-wrapped CBOR map::

    $$SUIT_Manifest_Extensions //= (tinymlaas-model => bstr .cbor TinyMLaaS_Model)
    tinymlaas-model = -26241

    TinyMLaaS_Model = {
        1 => tstr,              ; model name
        2 => tstr,              ; model version
        3 => uint,              ; tensor arena the model needs, bytes
        4 => [+ Tensor_Spec],   ; inputs
        5 => [+ Tensor_Spec],   ; outputs
        6 => tstr,              ; runtime name (as LwM2M /26241/0/0, e.g. "tflite-micro")
        7 => tstr,              ; runtime version (/26241/0/1)
        8 => tstr,              ; compiler (plugin) name
        9 => tstr,              ; compiler version
        ? 10 => Estimate,       ; the compiler's performance estimate
        ? 11 => tstr,           ; accelerator the payload needs (as /26241/0/8, e.g. "ethos-u55-128")
    }
    Estimate = {                ; an estimate, never a measurement; 1 or 2 or both
        ? 1 => uint,            ; cycles per inference
        ? 2 => float,           ; seconds per inference
        3 => tstr,              ; what made it, e.g. "vela 5.2.0 performance estimate (...)"
    }
    Tensor_Spec = {
        1 => tstr,              ; name
        2 => tstr,              ; dtype: "int8", "uint8", "int16", "int32", "float32", ...
        3 => [* uint],          ; shape
        ? 4 => float,           ; quantization scale   (both or neither)
        ? 5 => int,             ; quantization zero point
    }

Why there, by the text of draft-ietf-suit-manifest (the version whose CDDL is in
``../shared/suit-examples``):

* **Not suit-text.** Text "is explicitly for human consumption", "SHOULD be a
  severable element", and "end-nodes do not require text": a management system
  may sever it before delivery. Its values are text only. The device needs the
  arena size and tensor layout to run the model, so they must survive severing.
* **Not suit-parameter-custom.** Custom parameters are "an extension point for
  any proprietary, application specific conditions and directives": inputs of
  commands, scoped to a component, limited to int/bool/tstr/bstr, forbidden in
  the shared sequence, and "MUST be treated as a hint". Placed in the install
  sequence they could be severed; descriptive metadata is not a command input.
* **A private-use manifest member.** The manifest CDDL has the socket
  ``* $$SUIT_Manifest_Extensions``; the IANA section makes labels "-256 and
  lower ... Private Use", "intended for testing purposes and closed
  environments" — a fleet managed by one TinyMLaaS server is one. A manifest
  member is covered by the manifest digest and so by the signature, and is not
  severable (only members with a matching envelope element are). The update
  management draft takes the same route for software metadata (CoSWID as a
  manifest member). A device reads it before running any command sequence, so it
  can refuse a model whose arena exceeds its budget before fetching the payload.
  The value is bstr-wrapped like ``suit-common``: "structured types ... are also
  wrapped in a bstr ... so that parser extents can be set". The label mirrors the
  TinyML Capability LwM2M object (26241) the same fields are reported in.

Keys 10 and 11 are optional and written only when a compiler gives them, so a
module without an accelerator or estimate encodes as before. The estimate
travels signed with the module so that a device can show it (26241/25–27) as
what it is: the compiler's estimate, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cbor2

from .cose import expect, is_int, is_uint, loads, type_name
from .errors import BuildError, FormatError

MODEL_INFO_KEY = -26241
"""Manifest member label of the model metadata (private use, see the module docstring)."""

DTYPES = frozenset({
    "bool", "int4", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "bfloat16", "float32", "float64",
})  # fmt: skip
"""Tensor element types, named as numpy / TFLite ``TensorType`` in lower case."""
ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
            "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1,
            "int4": 1, "bfloat16": 2, "complex64": 8, "complex128": 16}
"""Bytes per element (int4 is stored a byte each)."""

MAX_ARENA = 2**32 - 1
MAX_DIM = 2**31 - 1
INT32 = range(-(2**31), 2**31)

_NAME, _VERSION, _ARENA, _INPUTS, _OUTPUTS = 1, 2, 3, 4, 5
_RUNTIME_NAME, _RUNTIME_VERSION, _COMPILER_NAME, _COMPILER_VERSION = 6, 7, 8, 9
_ESTIMATE, _ACCELERATOR = 10, 11
_E_CYCLES, _E_LATENCY, _E_SOURCE = 1, 2, 3
_T_NAME, _T_DTYPE, _T_SHAPE, _T_SCALE, _T_ZERO = 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class Quantization:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    """Scale, finite and > 0."""
    zero_point: int
    """Zero point, a 32-bit signed integer."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output tensor of a model: what the compilers report, the
    manifest carries and a device's interpreter shows."""

    name: str
    """Tensor name as in the model file."""
    dtype: str
    """Element type, one of :data:`DTYPES`."""
    shape: tuple[int, ...]
    """Dimensions (a list given here is stored as a tuple)."""
    quantization: Quantization | None = None
    """Quantization parameters, None for float tensors."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def quantized(self) -> bool:
        """True when real values are ``scale * (q - zero_point)``."""
        return self.quantization is not None

    @property
    def scale(self) -> float:
        """Quantization scale; 0.0 when not quantized (the TFLite convention)."""
        return 0.0 if self.quantization is None else self.quantization.scale

    @property
    def zero_point(self) -> int:
        """Quantization zero point; 0 when not quantized."""
        return 0 if self.quantization is None else self.quantization.zero_point

    @property
    def size(self) -> int:
        """Elements of one buffer of this tensor (a dynamic dimension counts as 1)."""
        count = 1
        for dim in self.shape:
            count *= max(dim, 1)
        return count

    @property
    def byte_size(self) -> int:
        """Bytes of one buffer of this tensor (a dynamic dimension counts as 1)."""
        return self.size * ITEMSIZE.get(self.dtype, 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        quant = self.quantization
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "quantization": (
                None if quant is None else {"scale": quant.scale, "zero_point": quant.zero_point}
            ),
        }


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What a device needs to know about the model in an inference module."""

    name: str
    """Model name (LwM2M Active Model ID once installed)."""
    version: str
    """Model version (LwM2M Active Model Version)."""
    arena_bytes: int
    """Tensor arena the model needs, bytes."""
    inputs: tuple[TensorSpec, ...]
    """Input tensors, in model order."""
    outputs: tuple[TensorSpec, ...]
    """Output tensors, in model order."""
    runtime_name: str
    """Inference runtime the module was built for, e.g. ``tflite-micro``."""
    runtime_version: str
    """Runtime version the module was built for."""
    compiler_name: str
    """Compiler plugin that produced the module."""
    compiler_version: str
    """Version of that compiler plugin."""
    accelerator: str = ""
    """Accelerator the payload needs (26241/8 name, e.g. ``ethos-u55-128``); "" for none."""
    estimated_cycles: int | None = None
    """The compiler's estimate of cycles per inference; None when it gives none. Never a measurement."""
    estimated_latency_s: float | None = None
    """The compiler's estimate of seconds per inference; None when it gives none."""
    estimate_source: str = ""
    """What made the estimate, e.g. ``vela 5.2.0 performance estimate (...)``; "" without one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "name": self.name,
            "version": self.version,
            "arena_bytes": self.arena_bytes,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
            "runtime": {"name": self.runtime_name, "version": self.runtime_version},
            "compiler": {"name": self.compiler_name, "version": self.compiler_version},
            "accelerator": self.accelerator,
            "estimate": None if self.estimated_cycles is None and self.estimated_latency_s is None else {
                "cycles": self.estimated_cycles, "latency_s": self.estimated_latency_s,
                "source": self.estimate_source},
        }


# --- encoding ------------------------------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BuildError(f"{what}: must be a non-empty string, got {value!r}")
    return value


def _tensor_to_cbor(tensor: TensorSpec, what: str) -> dict[int, Any]:
    if not isinstance(tensor, TensorSpec):
        raise BuildError(f"{what}: expected a TensorSpec, got {type(tensor).__name__}")
    if tensor.dtype not in DTYPES:
        raise BuildError(f"{what}.dtype: {tensor.dtype!r} is not one of {sorted(DTYPES)}")
    if not all(is_int(d) and 0 <= d <= MAX_DIM for d in tensor.shape):
        raise BuildError(f"{what}.shape: dimensions must be integers in 0..{MAX_DIM}, got {tensor.shape!r}")
    encoded: dict[int, Any] = {
        _T_NAME: _text(tensor.name, f"{what}.name"),
        _T_DTYPE: tensor.dtype,
        _T_SHAPE: list(tensor.shape),
    }
    quant = tensor.quantization
    if quant is not None:
        scale = quant.scale
        number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
        if not number or not (math.isfinite(scale) and scale > 0):
            raise BuildError(f"{what}.quantization.scale: must be a finite number > 0, got {scale!r}")
        if not is_int(quant.zero_point) or quant.zero_point not in INT32:
            raise BuildError(
                f"{what}.quantization.zero_point: must be a 32-bit integer, got {quant.zero_point!r}"
            )
        encoded[_T_SCALE] = float(scale)
        encoded[_T_ZERO] = quant.zero_point
    return encoded


def encode_model_info(meta: ModelMetadata) -> bytes:
    """The CBOR map of ``meta`` (to be bstr-wrapped under :data:`MODEL_INFO_KEY`)."""
    if not isinstance(meta, ModelMetadata):
        raise BuildError(f"metadata: expected ModelMetadata, got {type(meta).__name__}")
    if not is_int(meta.arena_bytes) or not 0 <= meta.arena_bytes <= MAX_ARENA:
        raise BuildError(
            f"metadata.arena_bytes: must be an integer in 0..{MAX_ARENA}, got {meta.arena_bytes!r}"
        )
    for label, tensors in (("inputs", meta.inputs), ("outputs", meta.outputs)):
        if not tensors:
            raise BuildError(f"metadata.{label}: a model has at least one tensor")
    encoded = {
        _NAME: _text(meta.name, "metadata.name"),
        _VERSION: _text(meta.version, "metadata.version"),
        _ARENA: meta.arena_bytes,
        _INPUTS: [_tensor_to_cbor(t, f"metadata.inputs[{i}]") for i, t in enumerate(meta.inputs)],
        _OUTPUTS: [_tensor_to_cbor(t, f"metadata.outputs[{i}]") for i, t in enumerate(meta.outputs)],
        _RUNTIME_NAME: _text(meta.runtime_name, "metadata.runtime_name"),
        _RUNTIME_VERSION: _text(meta.runtime_version, "metadata.runtime_version"),
        _COMPILER_NAME: _text(meta.compiler_name, "metadata.compiler_name"),
        _COMPILER_VERSION: _text(meta.compiler_version, "metadata.compiler_version"),
    }
    if meta.accelerator:
        encoded[_ACCELERATOR] = _text(meta.accelerator, "metadata.accelerator")
    estimate: dict[int, Any] = {}
    if meta.estimated_cycles is not None:
        if not is_int(meta.estimated_cycles) or meta.estimated_cycles < 0:
            raise BuildError(f"metadata.estimated_cycles: must be an integer >= 0, got {meta.estimated_cycles!r}")
        estimate[_E_CYCLES] = meta.estimated_cycles
    if meta.estimated_latency_s is not None:
        latency = meta.estimated_latency_s
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not (
                math.isfinite(latency) and latency >= 0):
            raise BuildError(f"metadata.estimated_latency_s: must be a finite number >= 0, got {latency!r}")
        estimate[_E_LATENCY] = float(latency)
    if estimate:
        estimate[_E_SOURCE] = _text(meta.estimate_source, "metadata.estimate_source (an estimate names its source)")
        encoded[_ESTIMATE] = estimate
    return cbor2.dumps(encoded, canonical=True)


# --- decoding ------------------------------------------------------------------------------


def _map(value: Any, required: set[int], optional: set[int], what: str) -> dict[int, Any]:
    fields = expect(value, dict, what)
    unknown = [k for k in fields if not is_int(k) or k not in required | optional]
    if unknown:
        raise FormatError(f"{what}: unknown key {unknown[0]!r}")
    missing = sorted(required - set(fields))
    if missing:
        raise FormatError(f"{what}: missing key {missing[0]}")
    return fields


def _read_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(f"{what}: expected a non-empty tstr, got {type_name(value)}")
    return value


def _read_tensor(value: Any, what: str) -> TensorSpec:
    fields = _map(value, {_T_NAME, _T_DTYPE, _T_SHAPE}, {_T_SCALE, _T_ZERO}, what)
    dtype = _read_text(fields[_T_DTYPE], f"{what} dtype")
    if dtype not in DTYPES:
        raise FormatError(f"{what}: unknown dtype {dtype!r}")
    shape = expect(fields[_T_SHAPE], list, f"{what} shape")
    if not all(is_uint(d) and d <= MAX_DIM for d in shape):
        raise FormatError(f"{what}: shape dimensions must be unsigned integers up to {MAX_DIM}")
    quant = None
    if (_T_SCALE in fields) != (_T_ZERO in fields):
        raise FormatError(f"{what}: quantization needs both scale and zero point")
    if _T_SCALE in fields:
        scale, zero = fields[_T_SCALE], fields[_T_ZERO]
        if not isinstance(scale, float) or not (math.isfinite(scale) and scale > 0):
            raise FormatError(f"{what}: quantization scale must be a finite float > 0")
        if not is_int(zero) or zero not in INT32:
            raise FormatError(f"{what}: quantization zero point must be a 32-bit integer")
        quant = Quantization(scale, zero)
    return TensorSpec(_read_text(fields[_T_NAME], f"{what} name"), dtype, tuple(shape), quant)


def _read_tensors(value: Any, what: str) -> tuple[TensorSpec, ...]:
    tensors = expect(value, list, what)
    if not tensors:
        raise FormatError(f"{what}: at least one tensor is required")
    return tuple(_read_tensor(t, f"{what}[{i}]") for i, t in enumerate(tensors))


def decode_model_info(data: bytes) -> ModelMetadata:
    """Parse the bstr content of manifest member :data:`MODEL_INFO_KEY`; FormatError if malformed."""
    what = "model metadata"
    fields = _map(loads(data, what), set(range(1, 10)), {_ESTIMATE, _ACCELERATOR}, what)
    arena = fields[_ARENA]
    if not is_uint(arena) or arena > MAX_ARENA:
        raise FormatError(f"{what}: arena bytes must be an unsigned integer up to {MAX_ARENA}")
    cycles, latency, source = _read_estimate(fields.get(_ESTIMATE), f"{what} estimate")
    return ModelMetadata(
        name=_read_text(fields[_NAME], f"{what} name"),
        version=_read_text(fields[_VERSION], f"{what} version"),
        arena_bytes=arena,
        inputs=_read_tensors(fields[_INPUTS], f"{what} inputs"),
        outputs=_read_tensors(fields[_OUTPUTS], f"{what} outputs"),
        runtime_name=_read_text(fields[_RUNTIME_NAME], f"{what} runtime name"),
        runtime_version=_read_text(fields[_RUNTIME_VERSION], f"{what} runtime version"),
        compiler_name=_read_text(fields[_COMPILER_NAME], f"{what} compiler name"),
        compiler_version=_read_text(fields[_COMPILER_VERSION], f"{what} compiler version"),
        accelerator=_read_text(fields[_ACCELERATOR], f"{what} accelerator") if _ACCELERATOR in fields else "",
        estimated_cycles=cycles,
        estimated_latency_s=latency,
        estimate_source=source,
    )


def _read_estimate(value: Any, what: str) -> tuple[int | None, float | None, str]:
    """(cycles, seconds, source) of an Estimate map; (None, None, "") when there is none."""
    if value is None:
        return None, None, ""
    fields = _map(value, {_E_SOURCE}, {_E_CYCLES, _E_LATENCY}, what)
    cycles, latency = fields.get(_E_CYCLES), fields.get(_E_LATENCY)
    if cycles is None and latency is None:
        raise FormatError(f"{what}: gives neither cycles nor seconds")
    if cycles is not None and not is_uint(cycles):
        raise FormatError(f"{what}: cycles must be an unsigned integer")
    if latency is not None and not (isinstance(latency, float) and math.isfinite(latency) and latency >= 0):
        raise FormatError(f"{what}: seconds must be a finite float >= 0")
    return cycles, latency, _read_text(fields[_E_SOURCE], f"{what} source")
