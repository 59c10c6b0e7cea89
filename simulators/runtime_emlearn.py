"""The ``emlearn`` runtime of the simulated device: build the C payload, run it for real.

An ``emlearn`` device receives a ``c-source`` module (made by the server's
``emlearn`` plugin): one C translation unit exporting ``tinymlaas_predict`` and
friends (``docs/classic-models.md``). The simulator builds it with the host's
C compiler (``cc``) into a shared library and calls it through :mod:`ctypes`,
so the predictions in Last Inference Result come from the generated code. A
real MCU would get the code linked into its firmware or loaded as a Zephyr
LLEXT module; the simulator does not model that step, nor the MCU's
instruction set (latency is the host's).

The payload is treated as untrusted-ish input although it arrives signed: it is
compiled freestanding (``-ffreestanding -nostdlib``) and linked with
``-Wl,--no-undefined``, so it can only compute — a call to any library
function (``system``, ``fopen``, …) fails the link. The device supplies
``memset``/``memcpy`` (compilers may emit calls to them) as firmware would.
Compilation has a time limit. Libraries are built once per payload digest into
a private temporary directory (mode 0700) that is removed at exit.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from lwm2m_server.suit import TensorSpec

from .runtime_base import LoadedModel, ModelLoadError

C_SOURCE_MAGIC = b"/* tinymlaas c-source v1"
"""First bytes of a ``c-source`` payload (as ``lwm2m_server.compilers.emlearn_plugin`` writes it)."""
BUILD_TIMEOUT_S = 60.0
"""Longest a payload build may take."""
CFLAGS = ("-std=c99", "-O2", "-fPIC", "-shared", "-ffreestanding", "-nostdlib", "-Wl,--no-undefined",
          "-Werror=implicit-function-declaration")
"""Compiler flags: an optimised shared library that can link nothing but the device's shim."""
MAX_CLASSES = 4096
"""Larger class counts reported by a library are refused (a sanity bound, not a format limit)."""

_SHIM = b"""/* What the device's firmware provides to models: memset and memcpy only. */
#include <stddef.h>
void *memset(void *dest, int c, size_t n) {
    volatile unsigned char *p = dest;  /* volatile: keep gcc from turning the loop into memset() */
    while (n--) *p++ = (unsigned char)c;
    return dest;
}
void *memcpy(void *dest, const void *src, size_t n) {
    volatile unsigned char *d = dest;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dest;
}
"""
_ERROR_LINE = re.compile(r"error:|undefined reference|fatal")


def is_c_source(payload: bytes) -> bool:
    """True when ``payload`` looks like a ``c-source`` module (its first bytes)."""
    return bytes(payload[:len(C_SOURCE_MAGIC)]) == C_SOURCE_MAGIC


class _Builds:
    """Shared libraries built so far, by payload digest, in one private directory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._built: dict[str, Path] = {}

    def directory(self) -> Path:
        """The private build directory (made again if something removed it)."""
        if self._dir is None or not self._dir.is_dir():
            self._dir = Path(tempfile.mkdtemp(prefix="tinymlaas-emlearn-"))  # mode 0700
            (self._dir / "shim.c").write_bytes(_SHIM)
            atexit.register(shutil.rmtree, self._dir, True)
            self._built.clear()
        return self._dir

    def library(self, payload: bytes) -> Path:
        """The built library of ``payload`` (built now unless already); :class:`ModelLoadError`."""
        digest = hashlib.sha256(payload).hexdigest()
        with self._lock:  # one build at a time: devices of a class share the library
            built = self._built.get(digest)
            if built is not None and built.is_file():
                return built
            compiler = shutil.which("cc")
            if compiler is None:
                raise ModelLoadError("no C compiler (cc) on the simulating host: cannot build the emlearn model")
            try:
                folder = self.directory()
                source = folder / f"{digest[:32]}.c"
                source.write_bytes(payload)
            except OSError as error:
                raise ModelLoadError(f"cannot write the C model for building: {error}") from None
            library, partial = folder / f"{digest[:32]}.so", folder / f"{digest[:32]}.partial.so"
            try:
                done = subprocess.run([compiler, *CFLAGS, "-o", str(partial), str(source), str(folder / "shim.c")],
                                      cwd=folder, capture_output=True, timeout=BUILD_TIMEOUT_S,
                                      env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
            except subprocess.TimeoutExpired:
                raise ModelLoadError(f"building the C model took longer than {BUILD_TIMEOUT_S:.0f} s") from None
            except OSError as error:
                raise ModelLoadError(f"cannot run the C compiler {compiler}: {error}") from None
            finally:
                source.unlink(missing_ok=True)
            if done.returncode != 0:
                partial.unlink(missing_ok=True)
                text = done.stderr.decode("utf-8", "replace").replace(f"{folder}{os.sep}", "")
                lines = [line.strip() for line in text.splitlines() if line.strip()]
                first = next((line for line in lines if _ERROR_LINE.search(line)), lines[0] if lines else "")
                raise ModelLoadError(f"the C model does not build (cc exit {done.returncode}): {first}")
            os.replace(partial, library)
            self._built[digest] = library
            return library


_BUILDS = _Builds()


class EmlearnModel(LoadedModel):
    """A ``c-source`` model built with ``cc`` and called through ctypes.

    Input: float32 [1, n_features]. Outputs: the predicted class, int32 [1]
    (what Last Inference Result shows), and a score per class, float32
    [1, n_classes] (votes or mean leaf proportions, as the module computes).
    """

    def __init__(self, payload: bytes, *, arena_size: int = 0, counts: tuple[int, int] | None = None) -> None:
        payload = bytes(payload)
        if not is_c_source(payload):
            raise ModelLoadError("the payload is not a TinyMLaaS c-source module")
        try:
            library = ctypes.CDLL(str(_BUILDS.library(payload)))
            predict, proba = library.tinymlaas_predict, library.tinymlaas_predict_proba
            n_features, n_classes = int(library.tinymlaas_n_features()), int(library.tinymlaas_n_classes())
        except (OSError, AttributeError) as error:  # a library without the entry points
            raise ModelLoadError(f"the C model lacks the tinymlaas entry points: {error}") from None
        if not 0 < n_features <= 65536 or not 1 < n_classes <= MAX_CLASSES:
            raise ModelLoadError(f"the C model reports {n_features} features and {n_classes} classes")
        float_p = ctypes.POINTER(ctypes.c_float)
        predict.argtypes, predict.restype = [float_p, ctypes.c_int32], ctypes.c_int32
        proba.argtypes, proba.restype = [float_p, ctypes.c_int32, float_p, ctypes.c_int32], ctypes.c_int32
        self._library, self._predict, self._proba = library, predict, proba
        self.n_features, self.n_classes = n_features, n_classes
        self.inputs = (TensorSpec("features", "float32", (1, n_features)),)
        self.outputs = (TensorSpec("class", "int32", (1,)), TensorSpec("scores", "float32", (1, n_classes)))
        if counts is not None and counts != (1, 2):
            raise ModelLoadError(f"the manifest describes {counts[0]} input(s) and {counts[1]} output(s), "
                                 f"the C model has 1 and 2")
        self.arena_used = 0  # no tensor arena: the trees are code and constants

    def invoke(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        if len(arrays) != 1:
            raise ModelLoadError(f"the C model takes 1 input, got {len(arrays)}")
        features = np.ascontiguousarray(np.asarray(arrays[0], dtype=np.float32).reshape(-1))
        if features.size != self.n_features:
            raise ModelLoadError(f"the C model takes {self.n_features} features, got {features.size}")
        scores = np.zeros(self.n_classes, dtype=np.float32)
        float_p = ctypes.POINTER(ctypes.c_float)
        pointer = features.ctypes.data_as(float_p)
        started = time.perf_counter_ns()
        predicted = self._predict(pointer, self.n_features)
        elapsed = time.perf_counter_ns() - started
        status = self._proba(pointer, self.n_features, scores.ctypes.data_as(float_p), self.n_classes)
        if predicted < 0 or predicted >= self.n_classes or status != 0:
            raise ModelLoadError(f"emlearn inference failed (predict returned {predicted}, predict_proba {status})")
        return [np.array([predicted], dtype=np.int32), scores.reshape(1, -1)], elapsed / 1000.0
