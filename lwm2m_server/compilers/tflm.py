"""The ``tflm`` plugin: TFLite flatbuffers for TensorFlow Lite Micro devices.

It checks the model's operators against the ones the device's TFLM build
registered (26241/2), measures the tensor arena the model needs with the real
TFLM interpreter from the ``tflite-micro`` package, and refuses the device
when the arena exceeds its budget (26241/5), the payload its model storage
(26241/4), or the input/output copies its model RAM (26241/3). The payload is
the flatbuffer itself, re-serialized only when a constant buffer is not
16-byte aligned.

Measuring the arena: TFLM's Python wrapper has no ``arena_used_bytes()`` and
``print_allocations()`` under-reports (it omits what the wrapper itself takes
from the arena), so :func:`measure_arena` bisects ``arena_size`` for the
smallest multiple of ``granularity`` (16 B, TFLM's buffer alignment) with which
the interpreter allocates tensors and runs one inference on zeros. The wrapper
segfaults on very small arenas, so every trial runs in a child process (one
per measurement, restarted after a crash). The figure comes from a 64-bit host
build; a 32-bit MCU's structs are smaller, so it is an upper bound there.
Results are cached per model digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Any, Mapping

from .base import (CompiledModule, CompileFailed, CompilerPlugin, ConformanceSample, Incompatible, ModelInput,
                   TargetSpec)
from .samples import sample_model
from .tflite_model import ModelInfo, model_object, parse_model, serialize

PLUGIN_VERSION = "1.0.0"
"""Version of this plugin's own logic; :attr:`TflmPlugin.version` adds the TFLM build."""
MAX_ARENA = 64 * 1024 * 1024
"""Largest arena tried; a model that does not run with it is refused."""

_PROBE = r"""
import json, sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
model = open(sys.argv[1], "rb").read()
arrays = [np.zeros(shape, dtype=dtype) for dtype, shape in json.loads(sys.argv[2])]
for line in sys.stdin:
    try:
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=int(line))
        for index, array in enumerate(arrays):
            interpreter.set_input(array, index)
        interpreter.invoke()
        del interpreter
        sys.stdout.write("ok\n")
    except Exception as exc:
        sys.stdout.write("fail " + json.dumps(str(exc)) + "\n")
    sys.stdout.flush()
"""
"""Child process: reads arena sizes, one per line; answers ``ok`` or ``fail <json message>``."""


def tflm_version() -> str | None:
    """Version of the installed tflite-micro package, or None when it is not installed."""
    try:
        import tflite_micro
    except ImportError:
        return None
    return str(tflite_micro.__version__)


@dataclass(frozen=True, slots=True)
class ArenaMeasurement:
    """Result of :func:`measure_arena`."""

    arena_bytes: int
    """Smallest working arena, a multiple of ``granularity``."""
    granularity: int
    """Step of the bisection; ``arena_bytes - granularity`` fails."""
    trials: int
    """Interpreter runs it took."""
    seconds: float
    """Wall time of the measurement."""


class ArenaProbe:
    """Runs TFLM trials for one model in a child process; a context manager."""

    def __init__(self, model: bytes, info: ModelInfo | None = None, *, timeout: float = 30.0) -> None:
        info = info or parse_model(model)
        self._inputs = json.dumps([[t.dtype, list(t.shape)] for t in info.inputs])
        self._file = tempfile.NamedTemporaryFile(prefix="tflm-probe-", suffix=".tflite", delete=False)
        self._file.write(model)
        self._file.close()
        self._timeout = timeout
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self.trials = 0
        """Trials run so far."""

    def __enter__(self) -> ArenaProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child and delete the temporary model file."""
        self._stop()
        try:
            os.unlink(self._file.name)
        except OSError:
            pass

    def _stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
            self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _start(self) -> subprocess.Popen[str]:
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PROBE, self._file.name, self._inputs],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        return self._process

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def run(self, arena_size: int) -> tuple[bool, str]:
        """Try one arena size: (works, TFLM's message when it does not)."""
        process = self._process if self._process is not None and self._process.poll() is None else self._start()
        assert process.stdin is not None and process.stdout is not None
        self.trials += 1
        try:
            process.stdin.write(f"{arena_size}\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], self._timeout)
            line = process.stdout.readline() if ready else None
        except (BrokenPipeError, OSError):
            line = ""
        if line is None:
            self._stop()
            return False, f"TFLM did not answer within {self._timeout:.0f} s"
        if not line:  # the child died: TFLM crashes on arenas too small for its own bookkeeping
            process.wait()
            message = self._stderr_tail()
            self._stop()
            return False, f"TFLM crashed (exit {process.returncode}){': ' + message if message else ''}"
        if line.startswith("ok"):
            return True, ""
        detail = json.loads(line[5:]) if line.startswith("fail ") else line.strip()
        tail = self._stderr_tail()
        return False, f"{detail}{' (' + tail + ')' if tail and tail not in detail else ''}"


_CACHE: OrderedDict[tuple[str, int, str], ArenaMeasurement] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 512


def measure_arena(model: bytes, *, granularity: int = 16, max_arena: int = MAX_ARENA,
                  timeout: float = 30.0, digest: str | None = None) -> ArenaMeasurement:
    """Smallest tensor arena (a multiple of ``granularity``) TFLM runs ``model`` with.

    Cached per (model digest, granularity, TFLM version). Raises
    :class:`CompileFailed` with TFLM's message when the model does not run even
    with ``max_arena`` bytes, and :class:`~.base.ModelError` for malformed bytes.
    """
    version = tflm_version()
    if version is None:
        raise CompileFailed("the tflite-micro package is not installed on the server")
    digest = digest or hashlib.sha256(model).hexdigest()
    key = (digest, granularity, version)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    info = parse_model(model)
    started = time.perf_counter()
    overhead = 256 * (sum(len(sg.tensors) + len(sg.operators) for sg in info.subgraphs)) + 4096
    hi = -(-(info.activation_bytes + overhead) // granularity) * granularity
    with ArenaProbe(model, info, timeout=timeout) as probe:
        while True:
            works, message = probe.run(hi)
            if works:
                break
            if hi >= max_arena:
                raise CompileFailed(f"TFLM cannot run the model even with a {hi} B arena: {message}")
            hi = min(hi * 2, max_arena)
        lo = 0  # treated as failing: no model runs without an arena
        while hi - lo > granularity:
            mid = (lo + hi) // 2 // granularity * granularity
            if probe.run(mid)[0]:
                hi = mid
            else:
                lo = mid
        result = ArenaMeasurement(hi, granularity, probe.trials, time.perf_counter() - started)
    with _CACHE_LOCK:
        _CACHE[key] = result
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return result


class TflmPlugin(CompilerPlugin):
    """TFLite flatbuffer → TFLite Micro devices, with a measured tensor arena."""

    name = "tflm"
    accepts = frozenset({"tflite"})
    targets = frozenset({"tflite-micro"})
    output_format = "tflite"

    def __init__(self, *, granularity: int = 16, timeout: float = 30.0) -> None:
        self.granularity = granularity
        """Step of the arena bisection, bytes."""
        self.timeout = timeout
        """Seconds one interpreter trial may take."""
        self._backend = tflm_version()

    @property
    def version(self) -> str:  # type: ignore[override]
        """Plugin version + TFLM build, e.g. ``1.0.0+tflm.0.dev20261023182759-g8f6596d``."""
        return f"{PLUGIN_VERSION}+tflm.{self._backend or 'unavailable'}"

    def payload(self, data: bytes, info: ModelInfo) -> tuple[bytes, list[str]]:
        """The flatbuffer to ship: as given, or re-serialized when a buffer is misaligned."""
        if info.aligned():
            return data, []
        payload = serialize(model_object(data))
        return payload, [f"re-serialized with 16-byte aligned buffers ({len(data)} B → {len(payload)} B)"]

    def measure(self, model: ModelInput) -> ArenaMeasurement:
        """Arena measurement of the payload for ``model`` (cached)."""
        info = parse_model(model.data)
        payload, _ = self.payload(model.data, info)
        return measure_arena(payload, granularity=self.granularity, timeout=self.timeout,
                             digest=model.digest if payload is model.data else None)

    def _verdict(self, model: ModelInput, target: TargetSpec
                 ) -> tuple[list[str], ModelInfo | None, ArenaMeasurement | None]:
        reasons = self.basic_reasons(model, target)
        if model.format not in self.accepts:
            return reasons, None, None
        info = parse_model(model.data)  # a malformed model is a ModelError whatever the target
        if reasons:
            return reasons, info, None
        if self._backend is None:
            return ["the tflite-micro package is not installed on the server"], info, None
        missing = sorted(info.operators - target.ops)
        if missing:
            reasons.append(f"operators not supported by the device's TFLM build: {', '.join(missing)}")
        payload_size = info.size if info.aligned() else len(self.payload(model.data, info)[0])
        if payload_size > target.flash_bytes:
            reasons.append(f"model is {payload_size} B, device model storage is {target.flash_bytes} B")
        if info.io_bytes > target.ram_bytes:
            reasons.append(f"input/output copies need {info.io_bytes} B of RAM outside the arena, "
                           f"device has {target.ram_bytes} B")
        if missing:
            return reasons, info, None
        try:
            measured = self.measure(model)
        except CompileFailed as exc:
            return reasons + [exc.reason], info, None
        if measured.arena_bytes > target.arena_budget_bytes:
            reasons.append(f"needs {measured.arena_bytes} B of tensor arena, "
                           f"device arena budget is {target.arena_budget_bytes} B")
        return reasons, info, measured

    def validate(self, model: ModelInput) -> None:
        parse_model(model.data)

    def conformance_samples(self) -> list[ConformanceSample]:
        """The shipped int8 MLP on a Cortex-M4F whose TFLM build registers its two operators."""
        target = TargetSpec("tflite-micro", "2025-01-15", "cortex-m4f", ram_bytes=32768, flash_bytes=262144,
                            arena_budget_bytes=65536, ops=frozenset({"FULLY_CONNECTED", "SOFTMAX"}),
                            cpu_clock_hz=168_000_000)
        return [ConformanceSample(sample_model("dense_int8.tflite"), target)]

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return self._verdict(model, target)[0]

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        reasons, info, measured = self._verdict(model, target)
        if reasons:
            raise Incompatible("; ".join(reasons))
        assert info is not None and measured is not None
        payload, notes = self.payload(model.data, info)
        return CompiledModule(
            payload=payload,
            payload_format=self.output_format,
            runtime=target.runtime,
            required_arena_bytes=measured.arena_bytes,
            required_ram_bytes=info.io_bytes,
            required_ops=info.operators,
            inputs=tuple(t.spec for t in info.inputs),
            outputs=tuple(t.spec for t in info.outputs),
            compiler=self.name,
            compiler_version=self.version,
            source_digest=model.digest,
            log=tuple(notes) + (
                f"operators: {', '.join(sorted(info.operators))}",
                f"tensor arena {measured.arena_bytes} B measured with TFLM {self._backend} "
                f"(bisection in {measured.granularity} B steps, {measured.trials} trials, "
                f"{measured.seconds:.2f} s; 64-bit host build, an upper bound on a 32-bit MCU)",
                f"payload {len(payload)} B, input/output copies {info.io_bytes} B",
            ),
        )
