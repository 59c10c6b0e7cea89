"""What every ML runtime of the simulated device implements: :class:`LoadedModel`, and the
:class:`ModelLoadError` it raises.

Kept apart from :mod:`simulators.runtime` (which re-exports both) so that runtimes in
their own modules (:mod:`simulators.runtime_emlearn`, …) subclass them while
:mod:`simulators.runtime` imports those modules for its ``RUNTIMES`` table, without
an import circle.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lwm2m_server.suit import TensorSpec


class ModelLoadError(Exception):
    """A model cannot be loaded or run by the device's runtime; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoadedModel:
    """A model in an interpreter, ready to run."""

    inputs: tuple[TensorSpec, ...]
    """Input tensors in model order."""
    outputs: tuple[TensorSpec, ...]
    """Output tensors in model order."""
    arena_used: int
    """Bytes of tensor arena the model took."""

    def invoke(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Run once: set every input, invoke, read every output. Returns the outputs and
        the invoke time in microseconds. Raises :class:`ModelLoadError` on failure."""
        raise NotImplementedError
