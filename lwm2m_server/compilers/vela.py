"""The ``vela`` plugin: int8 TFLite models for Arm Ethos-U NPUs, compiled by Arm Vela.

Vela (the ``ethos-u-vela`` package) turns an int8 (or int16) TFLite model into
a TFLite flatbuffer in which every operator the NPU supports is replaced by
one custom operator, ``ethos-u``, holding the NPU command stream; operators it
cannot place stay TFLite operators that TFLM runs on the CPU (the fallback).
The device's TFLM build must register the ``ethos-u`` operator (its Ethos-U
driver) and every fallback operator, so both are in the module's
``required_ops`` and checked against 26241/2.

The NPU configuration comes from the TinyML Capability object: the Ethos-U
variant and MAC count from Accelerators (26241/8, e.g. ``ethos-u55-128``), the
system configuration and memory mode from 26241/22 and 23 (Vela's
``--system-config`` / ``--memory-mode`` in its ``Arm/vela.ini``; defaults per
NPU family when absent) and the SRAM the NPU may use from 26241/24 (Vela's
``--arena-cache-size``). All of them shape the command stream, so all are
part of the device class.

Vela runs as a child process (``python -m ethosu.vela``) in a temporary
folder with a timeout: its compiler core is native code, and a crash or hang
on one model must not take the server with it. The figures are Vela's own,
read from its summary CSV and per-layer CSV (``--verbose-performance``):

* tensor arena: the non-constant tensors of Vela's output flatbuffer — the
  NPU scratch area (Vela's SRAM figure in the ``Shared_Sram`` and
  ``Sram_Only`` modes) plus the input, output and CPU-fallback tensors. With
  ``Dedicated_Sram`` the fast scratch area lives in the NPU's own SRAM, not the
  arena; Vela's SRAM figure is then checked against 26241/24 when given;
* storage: Vela's off-chip flash data (weights, biases) is a buffer of the
  output flatbuffer, so the payload already holds it: no extra flash is asked;
* the estimate: Vela's cycle count and its time estimate (cycles at the NPU
  clock of the system configuration), for the NPU part only. It is reported as
  an estimate and never as a measurement;
* placement: which source operators went to the NPU and which stay on the CPU
  (the TFLite operators left in the output), with Vela's reason for each
  fallback.

Compiles are cached per (model digest, NPU configuration, Vela version).
"""

from __future__ import annotations

import configparser
import csv
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, util
from pathlib import Path
from typing import Any, Mapping

from .base import (CompiledModule, CompileFailed, CompilerPlugin, ConformanceSample, Incompatible,
                   ModelInput, TargetSpec)
from .tflite_model import ModelInfo, SubgraphInfo, TensorInfo, parse_model

PLUGIN_VERSION = "1.0.0"
"""Version of this plugin's own logic; :attr:`VelaPlugin.version` adds Vela's."""
ETHOSU_OP = "ethos-u"
"""Custom operator name Vela writes and TFLM's Ethos-U kernel registers under."""
ACCELERATORS = frozenset({
    "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048",
})
"""Vela 5.2's ``--accelerator-config`` choices: NPU variant and MACs per cycle."""
DEFAULTS = {
    "ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u65": ("Ethos_U65_High_End", "Dedicated_Sram"),
    "ethos-u85": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram"),
}
"""System configuration and memory mode per NPU family when 26241/22 or 23 is absent (Arm/vela.ini)."""
CONFIG_FILE = "Arm/vela.ini"
"""Vela's shipped configuration file the system configurations and memory modes come from."""
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
"""Activation types Vela leaves to the CPU: a model computing in them is not quantized."""
TIMEOUT = 120.0
"""Seconds one Vela run may take."""
_FALLBACK = re.compile(r"^Warning \(supported operators\) operator: (?P<op>[^,]+), ofm: (?P<ofm>.*)$")


def vela_version() -> str | None:
    """Version of the installed ethos-u-vela package, or None when it is not installed."""
    try:
        return metadata.version("ethos-u-vela")
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def vela_configurations() -> tuple[frozenset[str], frozenset[str]]:
    """(system configurations, memory modes) defined in Vela's ``Arm/vela.ini``."""
    spec = util.find_spec("ethosu.vela")
    if spec is None or not spec.submodule_search_locations:
        return frozenset(), frozenset()
    ini = Path(list(spec.submodule_search_locations)[0]).parent / "config_files" / CONFIG_FILE
    parser = configparser.ConfigParser()
    parser.read(ini, encoding="utf-8")
    systems = {s.split(".", 1)[1] for s in parser.sections() if s.startswith("System_Config.")}
    modes = {s.split(".", 1)[1] for s in parser.sections() if s.startswith("Memory_Mode.")}
    return frozenset(systems), frozenset(modes)


@dataclass(frozen=True, slots=True)
class NpuConfig:
    """What Vela compiles for: the device's Ethos-U configuration."""

    accelerator: str
    """Vela's ``--accelerator-config``, e.g. ``ethos-u55-128`` (from 26241/8)."""
    system_config: str
    """Vela's ``--system-config``, e.g. ``Ethos_U55_High_End_Embedded`` (26241/22 or the family default)."""
    memory_mode: str
    """Vela's ``--memory-mode``, e.g. ``Shared_Sram`` (26241/23 or the family default)."""
    sram_bytes: int | None = None
    """Vela's ``--arena-cache-size`` (26241/24); None leaves Vela's default."""
    optimise: str = "Performance"
    """Vela's ``--optimise`` strategy: ``Performance`` or ``Size``."""

    def arguments(self) -> list[str]:
        """Vela command-line options for this configuration."""
        args = ["--accelerator-config", self.accelerator, "--system-config", self.system_config,
                "--memory-mode", self.memory_mode, "--config", CONFIG_FILE, "--optimise", self.optimise]
        if self.sram_bytes is not None:
            args += ["--arena-cache-size", str(self.sram_bytes)]
        return args

    @property
    def fast_scratch_in_npu_sram(self) -> bool:
        """True when the NPU's fast scratch area is its own SRAM, outside the TFLM arena."""
        return self.memory_mode.startswith("Dedicated_Sram")


def npu_config(target: TargetSpec, optimise: str = "Performance") -> tuple[NpuConfig | None, list[str]]:
    """The Ethos-U configuration of ``target``, or (None, reasons) when it has none Vela knows."""
    npus = sorted(a for a in target.accelerators if a.startswith("ethos-u"))
    if not npus:
        return None, [f"vela compiles for Arm Ethos-U NPUs; the device lists none in its accelerators "
                      f"(26241/8: {', '.join(sorted(target.accelerators)) or 'none'})"]
    known = [a for a in npus if a in ACCELERATORS]
    if not known:
        return None, [f"accelerator {npus[0]!r} is not an Ethos-U configuration Vela knows; name the variant "
                      f"and MACs per cycle, one of {', '.join(sorted(ACCELERATORS))}"]
    accelerator = known[0]
    family_system, family_mode = DEFAULTS[accelerator.rsplit("-", 1)[0]]
    config = NpuConfig(accelerator, target.accelerator_system_config or family_system,
                       target.accelerator_memory_mode or family_mode, target.accelerator_sram_bytes, optimise)
    systems, modes = vela_configurations()
    reasons = []
    if systems and config.system_config not in systems:
        reasons.append(f"accelerator system config {config.system_config!r} (26241/22) is not in Vela's "
                       f"{CONFIG_FILE}: {', '.join(sorted(systems))}")
    if modes and config.memory_mode not in modes:
        reasons.append(f"accelerator memory mode {config.memory_mode!r} (26241/23) is not in Vela's "
                       f"{CONFIG_FILE}: {', '.join(sorted(modes))}")
    return (None, reasons) if reasons else (config, [])


def quantization_reasons(info: ModelInfo) -> list[str]:
    """Why the model is not quantized the way Vela needs; empty when it is.

    Float activations are allowed only at the interface: a model input read only
    by QUANTIZE operators, a model output written by a DEQUANTIZE operator (the
    ``ptq-int8`` plugin's float interface; Vela leaves those two on the CPU).
    """
    main = info.main
    readers: dict[int, set[str]] = {}
    writers: dict[int, str] = {}
    for op in main.operators:
        for index in op.inputs:
            readers.setdefault(index, set()).add(op.name)
        for index in op.outputs:
            writers[index] = op.name
    interface = {i for i in main.inputs if readers.get(i, set()) <= {"QUANTIZE"}}
    interface |= {i for i in main.outputs if writers.get(i) == "DEQUANTIZE"}
    floating = [t.name or f"#{t.index}" for sg in info.subgraphs for t in sg.tensors
                if t.dtype in FLOAT_DTYPES and not t.is_constant and (sg is not main or t.index not in interface)]
    if not floating:
        return []
    shown = ", ".join(floating[:3]) + (f" and {len(floating) - 3} more" if len(floating) > 3 else "")
    return [f"vela needs an int8-quantized model; {len(floating)} activation tensor(s) are float ({shown}): "
            f"quantize it first (the ptq-int8 plugin does int8 post-training quantization)"]


@dataclass(frozen=True, slots=True)
class VelaFigures:
    """Vela's own figures for one compile (summary CSV, per-layer CSV, its warnings)."""

    sram_bytes: int
    """Peak SRAM use (``Total SRAM used``)."""
    dram_bytes: int
    """Peak DRAM use."""
    on_chip_flash_bytes: int
    """On-chip flash use."""
    off_chip_flash_bytes: int
    """Off-chip flash use: the read-only data (weights, biases) the NPU reads there."""
    cycles: int
    """Estimated NPU cycles per inference, memory accesses included (``cycles_total``)."""
    npu_cycles: int
    """Estimated cycles of the NPU's compute alone."""
    seconds: float
    """Vela's time estimate per inference: ``cycles`` at the system configuration's NPU clock."""
    npu_clock_hz: float
    """NPU clock of the system configuration."""
    macs: int
    """Multiply-accumulates per inference."""
    layers: tuple[dict[str, Any], ...]
    """Per-layer rows: original operator, NPU operator, target (NPU/CPU), cycles, MACs, name."""
    fallbacks: tuple[dict[str, str], ...]
    """Vela's warning per operator it left on the CPU: operator, output tensor, reason."""


def _kib(value: str) -> int:
    """Vela's KiB figures are bytes / 1024 as floats: back to whole bytes."""
    return int(round(float(value) * 1024))


def _read_figures(summary: str, layers: str, stdout: str) -> VelaFigures:
    rows = list(csv.DictReader(io.StringIO(summary)))
    if not rows:
        raise CompileFailed("vela wrote an empty summary CSV")
    row = rows[0]
    try:
        per_layer = tuple(
            {"original": r["Original Operator"], "npu_op": r["NNG Operator"], "target": r["Target"],
             "cycles": int(float(r["Op Cycles"] or 0)), "macs": int(float(r["MAC Count"] or 0)), "name": r["Name"]}
            for r in csv.DictReader(io.StringIO(layers)))
        figures = dict(
            sram_bytes=_kib(row["sram_memory_used"]), dram_bytes=_kib(row["dram_memory_used"]),
            on_chip_flash_bytes=_kib(row["on_chip_flash_memory_used"]),
            off_chip_flash_bytes=_kib(row["off_chip_flash_memory_used"]),
            cycles=int(float(row["cycles_total"])), npu_cycles=int(float(row["cycles_npu"])),
            seconds=float(row["inference_time"]), npu_clock_hz=float(row["core_clock"]),
            macs=int(float(row["nn_macs"])))
    except (KeyError, ValueError) as exc:
        raise CompileFailed(f"vela's summary CSV lacks or garbles a figure: {type(exc).__name__}: {exc}") from None
    return VelaFigures(**figures, layers=per_layer, fallbacks=tuple(_fallbacks(stdout)))


def _fallbacks(stdout: str) -> list[dict[str, str]]:
    """Vela's ``Warning (supported operators)`` blocks: the operator, its output and the reason."""
    found: list[dict[str, str]] = []
    lines = stdout.splitlines()
    for number, line in enumerate(lines):
        match = _FALLBACK.match(line.strip())
        if not match:
            continue
        reason = []
        for follow in lines[number + 1:]:
            if not follow.strip() or _FALLBACK.match(follow.strip()):
                break
            reason.append(follow.strip().removeprefix("Reason: "))
        found.append({"operator": match["op"].strip(), "output": match["ofm"].strip().strip("'"),
                      "reason": " ".join(reason)})
    return found


@dataclass(frozen=True, slots=True)
class VelaResult:
    """One Vela compile of one model for one NPU configuration."""

    payload: bytes
    """Vela's output flatbuffer: the ``ethos-u`` operator(s) plus the CPU-fallback operators."""
    info: ModelInfo
    """The output flatbuffer, parsed."""
    figures: VelaFigures
    """Vela's figures."""
    config: NpuConfig
    """What it was compiled for."""
    accelerator_ops: tuple[str, ...]
    """Source operators on the NPU, in model order."""
    cpu_ops: tuple[str, ...]
    """Source operators left to the CPU, in model order."""
    npu_scratch_bytes: int
    """NPU scratch area in the tensor arena (the ``ethos-u`` operator's scratch tensors)."""
    cpu_tensor_bytes: int
    """Input, output and CPU-fallback tensors in the tensor arena."""
    seconds: float
    """Wall time of the Vela run."""

    @property
    def arena_bytes(self) -> int:
        """Tensor arena the output needs: NPU scratch plus CPU tensors (without reuse)."""
        return self.npu_scratch_bytes + self.cpu_tensor_bytes


def _aligned(size: int, alignment: int = 16) -> int:
    return -(-size // alignment) * alignment


def _arena(main: SubgraphInfo, config: NpuConfig) -> tuple[int, int]:
    """(NPU scratch bytes, CPU tensor bytes) of the output's non-constant tensors, 16-byte aligned
    as Vela's ``--cpu-tensor-alignment`` default; the fast scratch area is left out when it
    lives in the NPU's dedicated SRAM."""
    scratch: set[int] = set()
    fast: set[int] = set()
    used: set[int] = set(main.inputs) | set(main.outputs)
    for op in main.operators:
        used |= {i for i in op.inputs + op.outputs if i >= 0}
        if op.name == ETHOSU_OP and len(op.inputs) >= 4:
            scratch.add(op.inputs[2])
            if op.inputs[3] != op.inputs[2]:
                fast.add(op.inputs[3])
    if not config.fast_scratch_in_npu_sram:
        scratch |= fast
        fast = set()

    def size(tensor: TensorInfo) -> int:
        return _aligned(tensor.byte_size)

    live = [main.tensors[i] for i in sorted(used - fast) if not main.tensors[i].is_constant]
    npu = sum(size(t) for t in live if t.index in scratch)
    return npu, sum(size(t) for t in live if t.index not in scratch)


def _placement(source: ModelInfo, output: ModelInfo) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(NPU operators, CPU operators) of the source model: the TFLite operators left in
    Vela's output are the CPU's (matched by name, in source order), the rest went to the NPU."""
    left = Counter(op.name for op in output.main.operators if op.name != ETHOSU_OP)
    npu, cpu = [], []
    for op in source.main.operators:
        if left[op.name] > 0:
            left[op.name] -= 1
            cpu.append(op.name)
        else:
            npu.append(op.name)
    return tuple(npu), tuple(cpu)


def run_vela(data: bytes, source: ModelInfo, config: NpuConfig, *, timeout: float = TIMEOUT) -> VelaResult:
    """Compile ``data`` with Vela for ``config`` in a child process; :class:`CompileFailed`
    with Vela's message when it fails or takes longer than ``timeout`` seconds."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vela-") as folder:
        work = Path(folder)
        (work / "model.tflite").write_bytes(data)
        command = [sys.executable, "-m", "ethosu.vela", "model.tflite", "--output-dir", "out",
                   "--output-format", "tflite", "--verbose-performance", *config.arguments()]
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONHASHSEED": "0"})  # a fixed hash order: same bytes every run
        except subprocess.TimeoutExpired:
            raise CompileFailed(f"vela did not finish within {timeout:.0f} s") from None
        if done.returncode != 0:
            lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if "Error" in line] or lines[-1:] or ["no message"]
            raise CompileFailed(f"vela failed (exit {done.returncode}): {errors[-1][:400]}")
        out = work / "out"
        try:
            payload = (out / "model_vela.tflite").read_bytes()
            summary = next(out.glob("model_summary_*.csv")).read_text(encoding="utf-8")
            layers = (out / "model_per-layer.csv").read_text(encoding="utf-8")
        except (OSError, StopIteration) as exc:
            raise CompileFailed(f"vela did not write its output files: {exc}") from None
    figures = _read_figures(summary, layers, done.stdout)
    info = parse_model(payload)
    npu_ops, cpu_ops = _placement(source, info)
    scratch, cpu_bytes = _arena(info.main, config)
    return VelaResult(payload, info, figures, config, npu_ops, cpu_ops, scratch, cpu_bytes,
                      time.perf_counter() - started)


_CACHE: OrderedDict[tuple[str, NpuConfig, str], VelaResult | CompileFailed] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 128


class VelaPlugin(CompilerPlugin):
    """int8 TFLite → Ethos-U NPU (Vela) + CPU fallback, for TFLM devices with an Ethos-U."""

    name = "vela"
    accepts = frozenset({"tflite"})
    targets = frozenset({"tflite-micro"})
    output_format = "tflite"
    priority = 10
    """Ahead of ``tflm`` for a device with an Ethos-U: the NPU runs what it can."""

    def __init__(self, *, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        """Seconds one Vela run may take."""
        self._backend = vela_version()

    @property
    def version(self) -> str:  # type: ignore[override]
        """Plugin version + Vela's, e.g. ``1.0.0+vela.5.2.0``."""
        return f"{PLUGIN_VERSION}+vela.{self._backend or 'unavailable'}"

    def compiled(self, model: ModelInput, source: ModelInfo, config: NpuConfig) -> VelaResult:
        """:func:`run_vela` of ``model`` for ``config``, cached (failures too)."""
        key = (model.digest, config, self._backend or "")
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                hit = _CACHE[key]
                if isinstance(hit, CompileFailed):
                    raise hit
                return hit
        try:
            result: VelaResult | CompileFailed = run_vela(model.data, source, config, timeout=self.timeout)
        except CompileFailed as exc:
            result = exc
        with _CACHE_LOCK:
            _CACHE[key] = result
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        if isinstance(result, CompileFailed):
            raise result
        return result

    def _verdict(self, model: ModelInput, target: TargetSpec, optimise: str = "Performance"
                 ) -> tuple[list[str], VelaResult | None]:
        reasons = self.basic_reasons(model, target)
        if model.format not in self.accepts:
            return reasons, None
        source = parse_model(model.data)  # a malformed model is a ModelError whatever the target
        config, npu_reasons = npu_config(target, optimise)
        reasons += npu_reasons + quantization_reasons(source)
        if reasons:
            return reasons, None
        if self._backend is None:
            return ["the ethos-u-vela package is not installed on the server"], None
        assert config is not None
        try:
            result = self.compiled(model, source, config)
        except CompileFailed as exc:
            return [exc.reason], None
        figures = result.figures
        if ETHOSU_OP not in result.info.operators:
            return [f"Vela placed none of the model's {len(source.main.operators)} operators on the "
                    f"{config.accelerator} NPU; the tflm plugin runs such a model on the CPU"], result
        missing = sorted(result.info.operators - target.ops)
        if missing:
            reasons.append(f"operators not supported by the device's TFLM build: {', '.join(missing)}"
                           + (f" (the Ethos-U driver registers {ETHOSU_OP!r})" if ETHOSU_OP in missing else ""))
        if result.arena_bytes > target.arena_budget_bytes:
            scratch = "NPU scratch area" + ("" if config.fast_scratch_in_npu_sram else
                                            f" (Vela's SRAM figure: {figures.sram_bytes} B)")
            reasons.append(f"needs {result.arena_bytes} B of tensor arena ({scratch} {result.npu_scratch_bytes} B "
                           f"+ {result.cpu_tensor_bytes} B of input, output and CPU tensors), "
                           f"device arena budget is {target.arena_budget_bytes} B")
        sram = target.accelerator_sram_bytes
        if config.fast_scratch_in_npu_sram and sram is not None and figures.sram_bytes > sram:
            reasons.append(f"Vela's SRAM figure is {figures.sram_bytes} B, the NPU's SRAM (26241/24) is {sram} B")
        if len(result.payload) > target.flash_bytes:
            reasons.append(f"Vela's output is {len(result.payload)} B (its {figures.off_chip_flash_bytes} B of "
                           f"off-chip flash data included), device model storage is {target.flash_bytes} B")
        if result.info.io_bytes > target.ram_bytes:
            reasons.append(f"input/output copies need {result.info.io_bytes} B of RAM outside the arena, "
                           f"device has {target.ram_bytes} B")
        return reasons, result

    def validate(self, model: ModelInput) -> None:
        parse_model(model.data)

    def conformance_samples(self) -> list[ConformanceSample]:
        """The shipped int8 MLP for a Cortex-M55 with an Ethos-U55-128 whose TFLM build registers ``ethos-u``."""
        from .samples import sample_model  # package data, read only when the kit asks

        target = TargetSpec("tflite-micro", "2025-01-15", "cortex-m55", ram_bytes=32768, flash_bytes=262144,
                            arena_budget_bytes=65536, ops=frozenset({ETHOSU_OP, "FULLY_CONNECTED", "SOFTMAX"}),
                            accelerators=frozenset({"ethos-u55-128"}), cpu_clock_hz=160_000_000,
                            accelerator_system_config="Ethos_U55_High_End_Embedded",
                            accelerator_memory_mode="Shared_Sram")
        return [ConformanceSample(sample_model("vela_sample_int8.tflite"), target)]

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return self._verdict(model, target)[0]

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        options = dict(options or {})
        optimise = options.pop("optimise", "Performance")
        if options:
            raise CompileFailed(f"unknown vela option(s): {', '.join(sorted(map(str, options)))} "
                                f"(vela takes 'optimise': 'Performance' or 'Size')")
        if optimise not in ("Performance", "Size"):
            raise CompileFailed(f"vela option optimise must be 'Performance' or 'Size', got {optimise!r}")
        reasons, result = self._verdict(model, target, optimise)
        if reasons:
            raise Incompatible("; ".join(reasons))
        assert result is not None
        return self._module(model, target, result)

    def _module(self, model: ModelInput, target: TargetSpec, result: VelaResult) -> CompiledModule:
        figures, config, info = result.figures, result.config, result.info
        scope = "; NPU operators only" if result.cpu_ops else ""
        fallback = [f"{f['operator']} ({f['reason']})" for f in figures.fallbacks]
        report = {
            "accelerator": config.accelerator, "system_config": config.system_config,
            "memory_mode": config.memory_mode, "arena_cache_size": config.sram_bytes, "optimise": config.optimise,
            "npu_clock_hz": figures.npu_clock_hz, "sram_bytes": figures.sram_bytes, "dram_bytes": figures.dram_bytes,
            "on_chip_flash_bytes": figures.on_chip_flash_bytes, "off_chip_flash_bytes": figures.off_chip_flash_bytes,
            "cycles": figures.cycles, "npu_cycles": figures.npu_cycles, "inference_time_s": figures.seconds,
            "macs": figures.macs,
            "npu_operators": sum(1 for layer in figures.layers if layer["target"] == "NPU"),
            "cpu_operators": sum(1 for layer in figures.layers if layer["target"] == "CPU"),
            "layers": [dict(layer) for layer in figures.layers],
            "cpu_fallback": [dict(f) for f in figures.fallbacks],
            "arena": {"npu_scratch_bytes": result.npu_scratch_bytes, "cpu_tensor_bytes": result.cpu_tensor_bytes},
        }
        return CompiledModule(
            payload=result.payload,
            payload_format=self.output_format,
            runtime=target.runtime,
            required_arena_bytes=result.arena_bytes,
            required_ram_bytes=info.io_bytes,
            required_ops=info.operators,
            inputs=tuple(t.spec for t in info.inputs),
            outputs=tuple(t.spec for t in info.outputs),
            compiler=self.name,
            compiler_version=self.version,
            source_digest=model.digest,
            log=(
                f"vela {self._backend} for {config.accelerator} ({config.system_config}, {config.memory_mode}"
                f"{f', arena cache {config.sram_bytes} B' if config.sram_bytes is not None else ''}) "
                f"in {result.seconds:.2f} s",
                f"NPU: {', '.join(result.accelerator_ops)}",
                f"CPU fallback: {', '.join(result.cpu_ops) or 'none'}"
                + (f" — vela: {'; '.join(fallback)}" if fallback else ""),
                f"Vela: SRAM {figures.sram_bytes} B, DRAM {figures.dram_bytes} B, off-chip flash "
                f"{figures.off_chip_flash_bytes} B (inside the {len(result.payload)} B payload), {figures.macs} MACs",
                f"tensor arena {result.arena_bytes} B: NPU scratch {result.npu_scratch_bytes} B + input, output "
                f"and CPU tensors {result.cpu_tensor_bytes} B (TFLM's own bookkeeping not included)",
                f"estimate, not a measurement: {figures.cycles} cycles, {figures.seconds * 1e6:.3f} µs at "
                f"{figures.npu_clock_hz / 1e6:g} MHz NPU clock{' (CPU-fallback operators not included)' if scope else ''}",
            ),
            accelerator=config.accelerator,
            accelerator_ops=result.accelerator_ops,
            cpu_ops=result.cpu_ops,
            required_flash_bytes=0,  # Vela's off-chip flash data is a buffer of the payload
            estimated_cycles=figures.cycles,
            estimated_latency_s=figures.seconds,
            estimate_source=f"vela {self._backend} performance estimate ({config.system_config}, "
                            f"{config.memory_mode}{scope})",
            report=report,
        )
