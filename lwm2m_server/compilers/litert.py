"""The ``litert`` plugin: TFLite flatbuffers for Linux-class devices running LiteRT.

The device runs the LiteRT interpreter (``ai-edge-litert``, the successor of
``tflite-runtime`` with the same ``Interpreter`` API). The plugin loads the
model in the same interpreter on the server — ai-edge-litert, or tflite-runtime
where that is what is installed — allocates its tensors and runs one inference
on zeros, so a model that would fail on the device fails here first. It then
checks the operators against the device's list (26241/2) and memory:

* arena: the bytes of every non-constant tensor added up — an upper bound of
  LiteRT's arena, whose planner reuses memory — against 26241/5;
* RAM outside the arena: the flatbuffer itself (LiteRT keeps the model in
  memory) plus the input/output copies, against 26241/3;
* storage: the flatbuffer against 26241/4.

The payload is the flatbuffer unchanged.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

from .base import CompiledModule, CompilerPlugin, ConformanceSample, Incompatible, ModelInput, TargetSpec
from .samples import sample_model
from .tflite_model import ModelInfo, parse_model

PLUGIN_VERSION = "1.0.0"
"""Version of this plugin's own logic; :attr:`LiteRtPlugin.version` adds the interpreter's."""


def litert_interpreter() -> tuple[Callable[..., Any] | None, str]:
    """The LiteRT ``Interpreter`` class and ``"<package> <version>"``; (None, reason) when absent."""
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"
    except ImportError:
        return None, "neither ai-edge-litert nor tflite-runtime is installed on the server"


def run_zeros(interpreter_class: Callable[..., Any], data: bytes) -> Any:
    """Load ``data``, allocate tensors and invoke once on zero inputs; returns the interpreter."""
    import numpy as np

    interpreter = interpreter_class(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
    interpreter.invoke()
    return interpreter


class LiteRtPlugin(CompilerPlugin):
    """TFLite flatbuffer → LiteRT devices (gateways, Linux boards)."""

    name = "litert"
    accepts = frozenset({"tflite"})
    targets = frozenset({"litert", "tflite-runtime", "tensorflow-lite"})
    output_format = "tflite"

    def __init__(self) -> None:
        self._interpreter, self._backend = litert_interpreter()
        self._loaded: dict[str, str] = {}  # model digest → "" (loads) or the interpreter's error
        self._lock = threading.Lock()

    @property
    def version(self) -> str:  # type: ignore[override]
        """Plugin version + interpreter, e.g. ``1.0.0+ai-edge-litert.2.3.0``."""
        backend = self._backend.replace(" ", ".") if self._interpreter else "unavailable"
        return f"{PLUGIN_VERSION}+{backend}"

    def load_error(self, model: ModelInput) -> str:
        """The interpreter's error for ``model``, or "" when it loads and runs (cached per digest)."""
        with self._lock:
            if model.digest in self._loaded:
                return self._loaded[model.digest]
        try:
            run_zeros(self._interpreter, model.data)  # type: ignore[arg-type]
            error = ""
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError with its log
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with self._lock:
            self._loaded[model.digest] = error
        return error

    @staticmethod
    def ram_needed(info: ModelInfo) -> int:
        """RAM outside the arena: the in-memory flatbuffer plus input/output copies."""
        return info.size + info.io_bytes

    def _verdict(self, model: ModelInput, target: TargetSpec) -> tuple[list[str], ModelInfo | None]:
        reasons = self.basic_reasons(model, target)
        if model.format not in self.accepts:
            return reasons, None
        info = parse_model(model.data)  # a malformed model is a ModelError whatever the target
        if reasons:
            return reasons, info
        if self._interpreter is None:
            return [self._backend], info
        missing = sorted(info.operators - target.ops)
        if missing:
            reasons.append(f"operators not supported by the device's LiteRT: {', '.join(missing)}")
        else:
            error = self.load_error(model)
            if error:
                reasons.append(f"LiteRT cannot run the model: {error}")
        if info.size > target.flash_bytes:
            reasons.append(f"model is {info.size} B, device model storage is {target.flash_bytes} B")
        if info.activation_bytes > target.arena_budget_bytes:
            reasons.append(f"needs up to {info.activation_bytes} B of tensor arena, "
                           f"device arena budget is {target.arena_budget_bytes} B")
        if self.ram_needed(info) > target.ram_bytes:
            reasons.append(f"model and input/output copies need {self.ram_needed(info)} B of RAM "
                           f"outside the arena, device has {target.ram_bytes} B")
        return reasons, info

    def validate(self, model: ModelInput) -> None:
        parse_model(model.data)

    def conformance_samples(self) -> list[ConformanceSample]:
        """The shipped int8 MLP on an aarch64 gateway running LiteRT 2.3."""
        target = TargetSpec("litert", "2.3.0", "aarch64", ram_bytes=64 * 1024 * 1024,
                            flash_bytes=256 * 1024 * 1024, arena_budget_bytes=16 * 1024 * 1024,
                            ops=frozenset({"FULLY_CONNECTED", "SOFTMAX"}), cpu_clock_hz=1_500_000_000)
        return [ConformanceSample(sample_model("dense_int8.tflite"), target)]

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return self._verdict(model, target)[0]

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        reasons, info = self._verdict(model, target)
        if reasons:
            raise Incompatible("; ".join(reasons))
        assert info is not None
        return CompiledModule(
            payload=model.data,
            payload_format=self.output_format,
            runtime=target.runtime,
            required_arena_bytes=info.activation_bytes,
            required_ram_bytes=self.ram_needed(info),
            required_ops=info.operators,
            inputs=tuple(t.spec for t in info.inputs),
            outputs=tuple(t.spec for t in info.outputs),
            compiler=self.name,
            compiler_version=self.version,
            source_digest=model.digest,
            log=(f"loaded, allocated and invoked with {self._backend}",
                 f"operators: {', '.join(sorted(info.operators))}",
                 f"arena at most {info.activation_bytes} B (activations without reuse), "
                 f"RAM {self.ram_needed(info)} B (model + input/output copies)"),
        )
