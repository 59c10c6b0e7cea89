"""Inference on the active model and the TinyML resources it reports (26241/10–20).

Sans-I/O: time is passed in. After an activation, on Run Inference (E 18) and
every Inference Period (19) seconds the device runs its active model
(:class:`~simulators.runtime.ModelRuntime`) on synthetic input derived from its
sensors and sets Last Inference Result (14), Latency (15), Count (16) and Time
(17); the changes go out to observers like any other.

Inputs (:func:`synthetic_inputs`) are deterministic for a device seed, the
inference count and the sensor readings: the readings, normalised, are spread
over each input tensor and mixed with seeded noise, giving values in [-1, 1];
for a quantized input they are mapped onto the tensor's representable real
range and quantized with its scale and zero point. Latency is measured around
the interpreter's invoke (microseconds on the simulating host, not scaled to the
device's clock). The result (:func:`format_result`) is the first output tensor,
dequantized, flattened, as compact JSON of at most 1024 bytes (the longest
prefix of the values that fits).

A model whose outputs this host cannot compute — an Ethos-U module's NPU part
(:mod:`simulators.runtime_ethosu`) — gets no result, no latency and no count:
Run Inference runs what can run for real (the CPU part) and answers 5.01 with
a diagnostic. The compiler's estimate from the signed manifest is shown
instead, marked as one: Estimated Inference Cycles (25), Estimated Inference
Latency (26, µs) and Inference Estimate Source (27).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import structlog

from ipso_objects import TINYML_OBJECT_ID, LwM2MPath
from lwm2m_server.suit import TensorSpec

from .management import DeviceAccess, ExecuteHook, ExecuteRefused
from .runtime import InstalledModule, ModelLoadError, ModelRuntime

log = structlog.get_logger(__name__)

TML = TINYML_OBJECT_ID
MAX_RESULT_BYTES = 1024
"""Last Inference Result is at most this long (26241/14 range)."""


@dataclass(frozen=True, slots=True)
class InferenceOutcome:
    """One inference the device ran."""

    result: str
    """The JSON text written to 26241/14."""
    latency_us: float
    """Invoke time, microseconds (26241/15)."""
    count: int
    """Inference Count after this one (26241/16)."""
    outputs: tuple[np.ndarray, ...]
    """Raw output tensors."""


def synthetic_inputs(tensors: Sequence[TensorSpec], features: Sequence[float], seed: int,
                     count: int) -> list[np.ndarray]:
    """Input arrays for ``tensors`` from sensor ``features`` (see the module docstring)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, count & 0xFFFFFFFF])
    signal = np.tanh(np.asarray(features if len(features) else [0.0], dtype=np.float64))
    arrays = []
    for tensor in tensors:
        n = tensor.size
        phase = np.resize(signal, n) * 0.6
        unit = np.clip(phase + rng.normal(0.0, 0.3, n), -1.0, 1.0)
        dtype = np.dtype(tensor.dtype)
        if tensor.quantized and dtype.kind in "iu":
            info = np.iinfo(dtype)
            low = (info.min - tensor.zero_point) * tensor.scale
            high = (info.max - tensor.zero_point) * tensor.scale
            real = low + (unit + 1.0) / 2.0 * (high - low)
            q = np.round(real / tensor.scale) + tensor.zero_point
            array = np.clip(q, info.min, info.max).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            span = min(float(info.max), 127.0)
            array = np.clip(np.round(unit * span), info.min, info.max).astype(dtype)
        elif dtype.kind == "b":
            array = unit > 0
        else:
            array = unit.astype(dtype)
        arrays.append(array.reshape(tensor.shape))
    return arrays


def dequantize(array: np.ndarray, tensor: TensorSpec) -> np.ndarray:
    """Real values of an output tensor (float32), flattened in row-major order."""
    flat = np.asarray(array).reshape(-1)
    if tensor.quantized:
        return ((flat.astype(np.float32) - np.float32(tensor.zero_point)) * np.float32(tensor.scale)).astype(np.float32)
    return flat.astype(np.float32)


def _number(value: np.float32) -> str:
    if not math.isfinite(float(value)):
        return "null"
    text = str(value)  # numpy's shortest repr of the float32
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def format_result(values: np.ndarray, limit: int = MAX_RESULT_BYTES) -> str:
    """Compact JSON array of ``values``; when too long, the longest prefix that fits."""
    parts: list[str] = []
    size = 2  # the brackets
    for value in values:
        text = _number(np.float32(value))
        extra = len(text) + (1 if parts else 0)
        if size + extra > limit:
            break
        parts.append(text)
        size += extra
    return "[" + ",".join(parts) + "]"


class InferenceObjects(DeviceAccess, Protocol):
    """What :class:`InferenceService` uses of the device's objects beyond :class:`DeviceAccess`."""

    def sensor_features(self) -> list[float]:
        """Every sensor value, normalised, in a fixed order (the synthetic inputs' source)."""
        ...

    @property
    def run_inference(self) -> ExecuteHook | None:
        """Hook of Run Inference (/26241/0/18), which the periodic inference executes."""
        ...


class InferenceService:
    """The TinyML object's model and inference resources over a :class:`ModelRuntime`."""

    def __init__(self, objects: InferenceObjects, runtime: ModelRuntime, *, seed: int, now: float) -> None:
        self.objects = objects
        self.runtime = runtime
        self.seed = seed
        """Seed of the synthetic inputs (the device's)."""
        self.last_run_at = now
        """When an inference last ran (or the period was set), for the period."""

    # -- the active model ------------------------------------------------------------------

    def show_active(self) -> None:
        """Write 26241/10–13 from the runtime's active module (empty when none)."""
        module = self.runtime.active
        base = LwM2MPath.of(TML, 0)
        if module is None:
            values: tuple = ("", "", b"", 0)
        else:
            loaded = self.runtime.current()
            values = (module.name, module.version, module.digest, loaded.arena_used if loaded else 0)
        for rid, value in zip((10, 11, 12, 13), values):
            if self.objects.get(base.child(rid)) != value:
                self.objects.set(base.child(rid), value)
        self._show_estimate(module)

    def _show_estimate(self, module: InstalledModule | None) -> None:
        """26241/25–27 from the active module's manifest: the compiler's estimate, absent without one."""
        base = LwM2MPath.of(TML, 0)
        meta = module.metadata if module is not None else None
        latency = meta.estimated_latency_s if meta is not None else None
        estimate = {} if meta is None or (meta.estimated_cycles is None and latency is None) else {
            25: meta.estimated_cycles, 26: None if latency is None else round(latency * 1e6, 3),
            27: meta.estimate_source}
        for rid in (25, 26, 27):
            value = estimate.get(rid)
            if value is None:
                if self.objects.get(base.child(rid)) is not None:
                    self.objects.remove(base.child(rid))
            elif self.objects.get(base.child(rid)) != value:
                self.objects.set(base.child(rid), value)

    def activated(self, module: InstalledModule, now: float) -> None:
        """A new model is active: show it, reset the statistics, run it once."""
        self.show_active()
        self.reset_statistics()
        self.last_run_at = now
        try:
            self.run(now)
        except ModelLoadError as error:
            log.warning("inference_failed", ep=self.objects.endpoint, reason=error.reason)
        except ExecuteRefused as refused:  # no output on this host (an NPU module): nothing to show
            log.info("inference_without_output", ep=self.objects.endpoint, reason=refused.reason)

    # -- running -------------------------------------------------------------------------------

    def run(self, now: float) -> InferenceOutcome:
        """Run the active model once and update 14–17; ExecuteRefused 4.05 without one and
        5.01 when the first output cannot be computed here (nothing is updated then),
        :class:`ModelLoadError` if the interpreter fails."""
        module = self.runtime.active
        if module is None:
            raise ExecuteRefused("4.05", "no model is active: deploy and activate an inference module first")
        loaded = self.runtime.current()
        assert loaded is not None
        count = int(self.objects.get(f"/{TML}/0/16") or 0)
        arrays = synthetic_inputs(loaded.inputs, self.objects.sensor_features(), self.seed, count)
        outputs, latency = loaded.invoke(arrays)
        if outputs[0] is None:  # computed by hardware this host lacks: no result is invented
            explain = getattr(loaded, "no_output_reason", None)
            raise ExecuteRefused("5.01", explain(latency) if explain else "the model gave no output on this device")
        result = format_result(dequantize(outputs[0], loaded.outputs[0]))
        base = LwM2MPath.of(TML, 0)
        self.objects.set(base.child(14), result)
        self.objects.set(base.child(15), round(latency, 3))
        self.objects.set(base.child(16), count + 1)
        self.objects.set(base.child(17), int(now))
        self.last_run_at = now
        return InferenceOutcome(result, latency, count + 1, tuple(outputs))

    def reset_statistics(self) -> None:
        """Count back to 0; result, latency and time cleared (the active model stays)."""
        base = LwM2MPath.of(TML, 0)
        self.objects.set(base.child(16), 0)
        self.objects.set(base.child(14), "")
        self.objects.set(base.child(15), 0.0)
        self.objects.remove(base.child(17))

    # -- hooks and the period ------------------------------------------------------------------

    def execute_run(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        """Run Inference (E 26241/0/18)."""
        try:
            self.run(objects.now)
        except ModelLoadError as error:
            raise ExecuteRefused("5.00", error.reason) from None

    def execute_reset(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        """Reset Statistics (E 26241/0/20)."""
        self.reset_statistics()

    def period_written(self, objects: DeviceAccess, path: LwM2MPath, value: int) -> None:
        """Inference Period (W 26241/0/19): the period counts from now."""
        self.last_run_at = objects.now

    def due_at(self) -> float | None:
        """When the next periodic inference is due; None when there is none."""
        period = self.objects.get(f"/{TML}/0/19") or 0
        if period <= 0 or self.runtime.active is None:
            return None
        return self.last_run_at + period

    def tick(self, now: float) -> bool:
        """Run the periodic inference if it is due; True when one ran."""
        due = self.due_at()
        if due is None or now < due:
            return False
        hook = self.objects.run_inference
        try:
            if hook is None:
                return False
            hook(self.objects, LwM2MPath.of(TML, 0, 18), "")
        except (ExecuteRefused, ModelLoadError) as error:
            log.warning("periodic_inference_failed", ep=self.objects.endpoint, reason=str(error))
        finally:
            self.last_run_at = now
        return True
