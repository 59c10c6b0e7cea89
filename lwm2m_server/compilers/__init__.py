"""Compiler plugins: turn an uploaded model into a module a device class can run.

The standard interface is in :mod:`.base`; the shipped plugins are

* ``tflm`` (:mod:`.tflm`) — TFLite flatbuffers for TensorFlow Lite Micro MCUs,
  operators checked and tensor arena measured with the real TFLM interpreter;
* ``litert`` (:mod:`.litert`) — TFLite flatbuffers for Linux-class devices
  running LiteRT, loaded and run in the real LiteRT interpreter;
* ``ptq-int8`` (:mod:`.ptq`) — int8 post-training quantization of float
  models, handed on to ``tflm`` or ``litert``; lossy, so chosen only when the
  float model does not fit.

They register under the entry-point group ``tinymlaas.compilers``.
:func:`select_plugin` picks one per device class, :class:`CompileCache` keeps
the results. The plugin modules import their backends (numpy, tflite-micro,
ai-edge-litert) lazily or on import of that module only, so importing this
package needs none of them.
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
    rank_key,
    select_plugin,
)
from ..suit.device_class import version_key
from .cache import CompileCache, CompileKey

__all__ = [
    "ENTRY_POINT_GROUP", "CompileCache", "CompileFailed", "CompileKey", "CompiledModule",
    "CompilerError", "CompilerPlugin", "Incompatible", "InvalidTarget", "ModelError", "ModelInput",
    "TargetSpec", "discover_plugins", "fit_reasons", "options_digest", "rank_key",
    "select_plugin", "version_key",
]
