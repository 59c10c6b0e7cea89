"""The ``example`` compiler plugin: TFLite flatbuffers for the made-up runtime ``example-rt``.

An out-of-tree plugin as the standard describes it (docs/compiler-plugins.md):
class attributes, ``validate``, ``check``, ``compile`` and ``conformance_samples``,
registered under the entry-point group ``tinymlaas.compilers``. The payload is
the flatbuffer unchanged; what it needs comes from
:func:`lwm2m_server.compilers.tflite_model.parse_model`.
"""

from __future__ import annotations

from typing import Any, Mapping

from lwm2m_server.compilers.base import (CompiledModule, CompilerPlugin, ConformanceSample, Incompatible,
                                         ModelInput, TargetSpec)
from lwm2m_server.compilers.samples import sample_model
from lwm2m_server.compilers.tflite_model import ModelInfo, parse_model

RUNTIME = "example-rt"
"""The runtime name (26241/0) this plugin compiles for; made up for the example."""
COUNTED = frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"})
"""Operators the cost model counts multiply-accumulates of."""
ESTIMATE_SOURCE = ("example-rt cost model: 1 cycle per multiply-accumulate of "
                   "FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D; other operators not counted")


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= max(dim, 1)
    return count


def multiply_accumulates(info: ModelInfo) -> int:
    """Multiply-accumulates of one inference over the operators in :data:`COUNTED`."""
    total = 0
    for op in info.main.operators:
        if op.name not in COUNTED or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        weights = info.main.tensors[op.inputs[1]].shape
        outputs = _elements(info.main.tensors[op.outputs[0]].shape)
        if op.name == "FULLY_CONNECTED":  # weights [units, depth]: each output sums `depth` products
            total += outputs * (weights[-1] if weights else 1)
        elif op.name == "CONV_2D":  # weights [out_channels, kh, kw, in_channels]
            total += outputs * _elements(weights[1:])
        else:  # DEPTHWISE_CONV_2D, weights [1, kh, kw, channels]: one kernel window per output
            total += outputs * _elements(weights[1:3])
    return total


class ExamplePlugin(CompilerPlugin):
    """TFLite flatbuffer → ``example-rt`` devices, unchanged, with a cycle estimate."""

    name = "example"
    version = "0.1.0"
    accepts = frozenset({"tflite"})
    targets = frozenset({RUNTIME})
    output_format = "tflite"

    def _verdict(self, model: ModelInput, target: TargetSpec) -> tuple[list[str], ModelInfo | None]:
        reasons = self.basic_reasons(model, target)
        if model.format not in self.accepts:
            return reasons, None
        info = parse_model(model.data)  # malformed bytes are a ModelError, whatever the target
        missing = sorted(info.operators - target.ops)
        if missing:
            reasons.append(f"operators not supported by the device's example-rt: {', '.join(missing)}")
        if info.size > target.flash_bytes:
            reasons.append(f"model is {info.size} B, device model storage is {target.flash_bytes} B")
        if info.activation_bytes > target.arena_budget_bytes:
            reasons.append(f"needs {info.activation_bytes} B of tensor arena, "
                           f"device arena budget is {target.arena_budget_bytes} B")
        if info.io_bytes > target.ram_bytes:
            reasons.append(f"input/output copies need {info.io_bytes} B of RAM, device has {target.ram_bytes} B")
        return reasons, info

    def validate(self, model: ModelInput) -> None:
        parse_model(model.data)

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return self._verdict(model, target)[0]

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        reasons, info = self._verdict(model, target)
        if reasons:
            raise Incompatible("; ".join(reasons))
        assert info is not None
        macs = multiply_accumulates(info)
        uncounted = sorted(info.operators - COUNTED)
        return CompiledModule(
            payload=model.data,
            payload_format=self.output_format,
            runtime=target.runtime,
            required_arena_bytes=info.activation_bytes,
            required_ram_bytes=info.io_bytes,
            required_ops=info.operators,
            inputs=tuple(t.spec for t in info.inputs),
            outputs=tuple(t.spec for t in info.outputs),
            compiler=self.name,
            compiler_version=self.version,
            source_digest=model.digest,
            cpu_ops=tuple(op.name for op in info.main.operators),
            estimated_cycles=macs,
            estimate_source=ESTIMATE_SOURCE,
            report={"multiply_accumulates": macs, "operators_not_counted": uncounted,
                    "constant_bytes": info.constant_bytes},
            log=(f"payload: the flatbuffer unchanged ({info.size} B)",
                 f"operators: {', '.join(sorted(info.operators))}",
                 f"{macs} multiply-accumulates per inference"),
        )

    def conformance_samples(self) -> list[ConformanceSample]:
        """The server's shipped int8 MLP on an example-rt device with its two operators."""
        target = TargetSpec(RUNTIME, "0.1", "cortex-m33", ram_bytes=16384, flash_bytes=65536,
                            arena_budget_bytes=8192, ops=frozenset({"FULLY_CONNECTED", "SOFTMAX"}))
        return [ConformanceSample(sample_model("dense_int8.tflite"), target)]
