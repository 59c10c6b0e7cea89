"""The device's ML runtime: real TFLite interpreters and the A/B model slots.

MCU profiles (``tflite-micro``) load a model into the real TensorFlow Lite Micro
interpreter of the ``tflite-micro`` package with the device's tensor arena
budget (26241/5) as ``arena_size``: a model whose arena does not fit fails to
load, as on the device. The gateway profile (``litert``) uses LiteRT
(``ai_edge_litert``). Both are reached through :class:`LoadedModel`.

:class:`ModelRuntime` keeps the modules in "flash" (:class:`InstalledModule`,
the bytes survive a reboot) and the interpreters in "RAM" (dropped by
:meth:`ModelRuntime.power_cycle`, loaded again on first use). Slots: the
*active* module runs inferences; activating another moves the active one to
*previous*, which stays loadable, so a failed activation leaves the running
model untouched and :meth:`ModelRuntime.deactivate` falls back to it.

Arena used (26241/13): TFLM reports its allocations only as text on stderr
(``print_allocations``); the total is parsed from there. LiteRT has no arena:
the bytes of the model inputs and every operator output are added up (the
figure the server's ``litert`` plugin also uses).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import structlog

from lwm2m_server.suit import ModelMetadata, Quantization, TensorSpec

from .runtime_base import LoadedModel, ModelLoadError
from .runtime_emlearn import EmlearnModel, is_c_source
from .runtime_onnx import OnnxRuntimeModel, is_ort_format

log = structlog.get_logger(__name__)

MIN_TFLM_ARENA = 1024
"""Smaller arenas are refused before TFLM sees them: its Python wrapper crashes the
process (not an exception) on arenas too small for its own bookkeeping."""
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


@dataclass(frozen=True, slots=True)
class InstalledModule:
    """A verified inference module as the device keeps it in flash."""

    name: str
    """Model name from the manifest (Active Model ID once active)."""
    version: str
    """Model version from the manifest."""
    digest: bytes
    """SHA-256 of the payload (Active Model Digest)."""
    payload: bytes = field(repr=False)
    """The model bytes (a TFLite flatbuffer)."""
    sequence_number: int = 0
    """Manifest sequence number (anti-rollback)."""
    metadata: ModelMetadata | None = field(default=None, repr=False)
    """Model metadata from the manifest."""


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 (TFLM and LiteRT log
    there, not through Python); the list holds the text after the block."""
    sink: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded): do not capture
        yield sink
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sink.append(capture.read().decode("utf-8", "replace"))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("INFO:")]
    return "; ".join(lines[-3:])


def _tflm_tensor(details: dict[str, Any], name: str) -> TensorSpec:
    quant = details.get("quantization_parameters") or {}
    scales, zeros = quant.get("scales"), quant.get("zero_points")
    scale = float(scales[0]) if scales is not None and len(scales) else 0.0
    zero = int(zeros[0]) if zeros is not None and len(zeros) else 0
    return _spec(name, np.dtype(details["dtype"]).name, tuple(int(d) for d in details["shape"]), scale, zero)


def _spec(name: str, dtype: str, shape: tuple[int, ...], scale: float, zero_point: int) -> TensorSpec:
    """An interpreter's tensor; its scale 0.0 means not quantized."""
    return TensorSpec(name, dtype, shape, Quantization(scale, zero_point) if scale else None)


class TflmModel(LoadedModel):
    """TensorFlow Lite Micro (``tflite_micro.runtime.Interpreter``)."""

    def __init__(self, payload: bytes, *, arena_size: int, counts: tuple[int, int] | None = None) -> None:
        if arena_size < MIN_TFLM_ARENA:
            raise ModelLoadError(f"tensor arena of {arena_size} B is below TFLM's minimum of {MIN_TFLM_ARENA} B")
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError:  # pragma: no cover - a dependency
            raise ModelLoadError("the tflite-micro package is not installed") from None
        with captured_stderr() as text:
            try:
                self._interpreter = runtime.Interpreter.from_bytes(payload, arena_size=arena_size)
                self.inputs = self._tensors(self._interpreter.get_input_details, "input", counts and counts[0])
                self.outputs = self._tensors(self._interpreter.get_output_details, "output", counts and counts[1])
                self._interpreter.print_allocations()
                error: Exception | None = None
            except Exception as caught:  # TFLM raises RuntimeError, TypeError, ValueError…
                error = caught
        if error is not None:
            detail = _last_line(text[0] if text else "")
            raise ModelLoadError(f"TFLM cannot load the model with a {arena_size} B arena: "
                                 f"{detail or error or type(error).__name__}")
        found = _ARENA_TOTAL.search(text[0] if text else "")
        self.arena_used = int(found.group(1)) if found else 0

    @staticmethod
    def _tensors(details, label: str, count: int | None) -> tuple[TensorSpec, ...]:
        tensors = []
        index = 0
        while count is None or index < count:
            try:
                tensors.append(_tflm_tensor(details(index), f"{label}_{index}"))
            except IndexError:
                if count is not None:
                    raise
                break
            index += 1
        if not tensors:
            raise ModelLoadError(f"the model has no {label} tensor")
        return tuple(tensors)

    def invoke(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        interpreter = self._interpreter
        try:
            for index, array in enumerate(arrays):  # before every invoke: TFLM reuses input memory
                interpreter.set_input(array, index)
            started = time.perf_counter_ns()
            interpreter.invoke()
            elapsed = time.perf_counter_ns() - started
            outputs = [np.array(interpreter.get_output(i)) for i in range(len(self.outputs))]
        except Exception as error:
            raise ModelLoadError(f"TFLM inference failed: {error}") from None
        return outputs, elapsed / 1000.0


class LiteRtModel(LoadedModel):
    """LiteRT (``ai_edge_litert.interpreter.Interpreter``), one thread."""

    def __init__(self, payload: bytes, *, arena_size: int = 0, counts: tuple[int, int] | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - a dependency
            raise ModelLoadError("the ai-edge-litert package is not installed") from None
        with captured_stderr() as text:
            try:
                interpreter = Interpreter(model_content=bytes(payload), num_threads=1)
                interpreter.allocate_tensors()
                error: Exception | None = None
            except Exception as caught:
                error = caught
        if error is not None:
            detail = _last_line(text[0] if text else "")
            raise ModelLoadError(f"LiteRT cannot load the model: {error}{'; ' + detail if detail else ''}")
        self._interpreter = interpreter
        self._input_details = interpreter.get_input_details()
        self._output_details = interpreter.get_output_details()
        self.inputs = tuple(self._tensor(d) for d in self._input_details)
        self.outputs = tuple(self._tensor(d) for d in self._output_details)
        self.arena_used = self._activation_bytes()
        if arena_size and self.arena_used > arena_size:
            raise ModelLoadError(f"the model's activations take {self.arena_used} B, "
                                 f"more than the {arena_size} B arena budget")

    @staticmethod
    def _tensor(details: dict[str, Any]) -> TensorSpec:
        scale, zero = details.get("quantization", (0.0, 0))
        return _spec(str(details.get("name", "")), np.dtype(details["dtype"]).name,
                     tuple(int(d) for d in details["shape"]), float(scale), int(zero))

    def _activation_bytes(self) -> int:
        by_index = {d["index"]: d for d in self._interpreter.get_tensor_details()}
        live = {d["index"] for d in self._input_details}
        ops = getattr(self._interpreter, "_get_ops_details", None)
        if ops is None:  # pragma: no cover - older LiteRT: inputs and outputs only
            live |= {d["index"] for d in self._output_details}
        else:
            for op in ops():
                live |= {int(i) for i in op["outputs"]}
        total = 0
        for index in live:
            details = by_index.get(index)
            if details is not None:
                total += int(np.prod(details["shape"], dtype=np.int64)) * np.dtype(details["dtype"]).itemsize
        return total

    def invoke(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        interpreter = self._interpreter
        try:
            for details, array in zip(self._input_details, arrays):
                interpreter.set_tensor(details["index"], array)
            started = time.perf_counter_ns()
            interpreter.invoke()
            elapsed = time.perf_counter_ns() - started
            outputs = [np.array(interpreter.get_tensor(d["index"])) for d in self._output_details]
        except Exception as error:
            raise ModelLoadError(f"LiteRT inference failed: {error}") from None
        return outputs, elapsed / 1000.0


RUNTIMES: dict[str, type[LoadedModel]] = {
    "tflite-micro": TflmModel, "tflm": TflmModel,
    "litert": LiteRtModel, "tflite": LiteRtModel, "tensorflow-lite": LiteRtModel,
}
"""ML Runtime Name (26241/0) → interpreter class."""


RUNTIMES["emlearn"] = EmlearnModel  # C from the emlearn plugin, built with cc (simulators.runtime_emlearn)


RUNTIMES["onnxruntime"] = OnnxRuntimeModel  # ORT format models in ONNX Runtime (simulators.runtime_onnx)


PAYLOAD_FORMATS: dict[str, Callable[[bytes], bool]] = {
    "tflite": lambda payload: payload[4:8] == b"TFL3",
    "c-source": is_c_source,
    "ort": is_ort_format,
}
"""Model format (26241/9) → whether payload bytes are of that format (a device installs no others)."""


def installable(payload: bytes, formats: Iterable[str]) -> bool:
    """True when ``payload`` is of one of the model ``formats`` the device lists (26241/9)."""
    return any(PAYLOAD_FORMATS.get(name, lambda _: False)(payload) for name in formats)


ACCELERATED: dict[str, Any] = {}
"""Accelerator family (how the manifest's accelerator name starts, e.g. ``ethos-u``) → model
class for modules compiled for it. :mod:`simulators.objects` fills it (``ethos-u`` →
:class:`simulators.runtime_ethosu.EthosUModel`): those classes subclass :class:`LoadedModel`,
so this module cannot import them."""


def load_model(runtime: str, payload: bytes, *, arena_size: int,
               metadata: ModelMetadata | None = None, accelerators: Sequence[str] = ()) -> LoadedModel:
    """Load ``payload`` into the interpreter of ``runtime``; :class:`ModelLoadError` if it
    does not load (malformed, unsupported operator, arena too small, …). A module whose
    manifest names an accelerator goes to that accelerator's model class, which checks it
    against the device's ``accelerators`` (26241/8)."""
    kind = RUNTIMES.get(runtime.strip().lower())
    if kind is None:
        raise ModelLoadError(f"the simulator has no interpreter for runtime {runtime!r}")
    counts = (len(metadata.inputs), len(metadata.outputs)) if metadata is not None else None
    if metadata is not None and metadata.accelerator:
        family = next((f for f in ACCELERATED if metadata.accelerator.lower().startswith(f)), None)
        if family is None:
            raise ModelLoadError(f"the module needs accelerator {metadata.accelerator!r}, which the "
                                 "simulator does not implement")
        return ACCELERATED[family](payload, arena_size=arena_size, counts=counts, metadata=metadata,
                                   accelerators=accelerators)
    return kind(payload, arena_size=arena_size, counts=counts)


def zeros_for(tensors: Sequence[TensorSpec]) -> list[np.ndarray]:
    """One all-zero (or zero-point) array per tensor."""
    arrays = []
    for tensor in tensors:
        array = np.zeros(tensor.shape, dtype=tensor.dtype)
        if tensor.quantized:
            array[...] = tensor.zero_point
        arrays.append(array)
    return arrays


class ModelRuntime:
    """The device's runtime: modules in flash, interpreters in RAM, active/previous slots."""

    def __init__(self, name: str, arena_budget: int, *, fail_activation: bool = False,
                 accelerators: Sequence[str] = ()) -> None:
        self.name = name
        """ML Runtime Name (26241/0)."""
        self.arena_budget = arena_budget
        """Tensor arena given to TFLM (26241/5)."""
        self.accelerators = tuple(accelerators)
        """Accelerators (26241/8): a module compiled for one is checked against them."""
        self.fail_activation = fail_activation
        """Fault injection: every activation fails (the profile's ``tinyml.fail_activation``)."""
        self.active: InstalledModule | None = None
        """The module inferences run on."""
        self.previous: InstalledModule | None = None
        """The module that was active before; stays loadable for a fallback."""
        self._loaded: dict[bytes, LoadedModel] = {}

    def load(self, module: InstalledModule) -> LoadedModel:
        """The interpreter of ``module`` (loaded now if not in RAM); :class:`ModelLoadError`."""
        loaded = self._loaded.get(module.digest)
        if loaded is None:
            loaded = load_model(self.name, module.payload, arena_size=self.arena_budget, metadata=module.metadata,
                                accelerators=self.accelerators)
            self._loaded[module.digest] = loaded
        return loaded

    def activate(self, module: InstalledModule) -> LoadedModel:
        """Make ``module`` active after a trial run on zeros; on any failure raise
        :class:`ModelLoadError` and leave the slots as they were (rollback)."""
        if self.fail_activation:
            raise ModelLoadError("activation failed: fault injected by the profile (tinyml.fail_activation)")
        loaded = self.load(module)
        loaded.invoke(zeros_for(loaded.inputs))
        if self.active != module:  # the same bytes under another name or version count as another module
            self.previous, self.active = self.active, module
        self._trim()
        return loaded

    def deactivate(self) -> None:
        """Stop using the active module: the previous one (if any) runs again."""
        self.active, self.previous = self.previous, self.active
        self._trim()

    def remove(self, module: InstalledModule) -> None:
        """Forget ``module`` (uninstall); if it was active the previous one runs again."""
        if self.active == module:
            self.active, self.previous = self.previous, None
        elif self.previous == module:
            self.previous = None
        if all(m is None or m.digest != module.digest for m in (self.active, self.previous)):
            self._loaded.pop(module.digest, None)

    def current(self) -> LoadedModel | None:
        """The interpreter of the active module (reloaded after a power cycle)."""
        return None if self.active is None else self.load(self.active)

    def power_cycle(self) -> None:
        """A reboot: RAM is lost, flash (the modules and slots) is kept."""
        self._loaded.clear()

    def _trim(self) -> None:
        keep = {m.digest for m in (self.active, self.previous) if m is not None}
        for digest in [d for d in self._loaded if d not in keep]:
            if len(self._loaded) <= 3:
                break
            del self._loaded[digest]
