"""Small models shipped with the package, for the plugins' conformance samples.

``tinymlaas plugins check`` runs in the daemon's installed environment, which
has no ``tests/`` folder, so the models the built-in plugins offer the
conformance kit ship here as package data:

* ``dense_int8.tflite`` (2,080 B) — a copy of ``tests/fixtures/models/dense_int8.tflite``:
  int8 [1,16] → FULLY_CONNECTED(32, RELU) → FULLY_CONNECTED(4) → SOFTMAX;
* ``dense_float.tflite`` (3,648 B) — a copy of ``tests/fixtures/models/dense_float.tflite``,
  the float32 model ``dense_int8`` was quantized from (the ``ptq-int8`` plugin
  accepts float models only).

Both are made by ``tests/fixtures/models/make_models.py`` (seeded, no TensorFlow);
``tests/test_plugin_standard.py`` checks the copies still equal the fixtures.
"""

from __future__ import annotations

from importlib import resources

from ..base import ModelInput


def sample_bytes(file_name: str) -> bytes:
    """The bytes of a shipped sample model (``dense_int8.tflite``, ``dense_float.tflite``)."""
    return resources.files(__name__).joinpath(file_name).read_bytes()


def sample_model(file_name: str, fmt: str = "tflite") -> ModelInput:
    """A shipped sample as a :class:`~..base.ModelInput` named after the file, version ``1.0.0``."""
    return ModelInput(sample_bytes(file_name), fmt, file_name.rsplit(".", 1)[0], "1.0.0")
