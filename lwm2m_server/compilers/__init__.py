"""Compiler plugins: turn an uploaded model into a module a device class can run.

The standard interface is in :mod:`.base` (docs/compiler-plugins.md); the shipped plugins are

* ``tflm`` (:mod:`.tflm`) — TFLite flatbuffers for TensorFlow Lite Micro MCUs,
  operators checked and tensor arena measured with the real TFLM interpreter;
* ``litert`` (:mod:`.litert`) — TFLite flatbuffers for Linux-class devices
  running LiteRT, loaded and run in the real LiteRT interpreter;
* ``ptq-int8`` (:mod:`.ptq`) — int8 post-training quantization of float
  models, handed on to ``tflm`` or ``litert``; lossy, so ranked after a
  lossless module;
* ``vela`` (:mod:`.vela`) — int8 TFLite for Arm Ethos-U NPUs with Arm's Vela;
* ``onnxruntime`` (:mod:`.onnxrt`) — ONNX models as ORT format for ONNX Runtime;
* ``emlearn`` (:mod:`.emlearn_plugin`) — classic models (``emlearn-json``) as C.

They register under the entry-point group ``tinymlaas.compilers``.
:func:`rank_plugins` (:mod:`.selection`) compiles with every plugin that fits
and ranks the modules; :class:`CompileCache` keeps the results. The plugin
modules import their backends lazily or on import of that module only, so
importing this package needs none of them.
"""

from .base import (
    ENTRY_POINT_GROUP,
    CompiledModule,
    CompileFailed,
    CompilerError,
    CompilerPlugin,
    Incompatible,
    InvalidTarget,
    ModelError,
    ModelInput,
    TargetSpec,
    discover_plugins,
    fit_reasons,
    options_digest,
)
from ..suit.device_class import version_key
from .cache import CompileCache, CompileKey
from .selection import RULE, Candidate, Ranking, rank_key, rank_plugins, select_plugin

__all__ = [
    "ENTRY_POINT_GROUP", "RULE", "Candidate", "CompileCache", "CompileFailed", "CompileKey", "CompiledModule",
    "CompilerError", "CompilerPlugin", "Incompatible", "InvalidTarget", "ModelError", "ModelInput",
    "Ranking", "TargetSpec", "discover_plugins", "fit_reasons", "options_digest", "rank_key",
    "rank_plugins", "select_plugin", "version_key",
]
