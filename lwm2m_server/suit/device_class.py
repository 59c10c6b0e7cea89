"""Device class names: the server compiles and signs once per class, and a device
checks the SUIT class id made from its own class. Both sides compute the name here."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Iterable


def version_key(version: str) -> str:
    """The part of a runtime version that splits device classes.

    A dotted release (``2.14.0``, ``v1.2.3-rc1``) keeps major.minor (``2.14``):
    patch releases do not change the operator set or the flatbuffer schema. Any
    other form (a TFLM commit date such as ``2025-01-15``) is kept whole.
    """
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:[.+-].*)?", version.strip())
    return f"{match[1]}.{match[2]}" if match else version.strip()


def accelerator_settings(system_config: str = "", memory_mode: str = "",
                         sram_bytes: int | None = None) -> tuple[str, ...]:
    """The accelerator configuration a device gives in 26241/22–24, as ``key=value``
    texts for :func:`device_class_name` (empty when it gives none): an NPU compiler's
    output depends on them, so two configurations are two classes."""
    settings = []
    if system_config.strip():
        settings.append(f"system-config={system_config.strip()}")
    if memory_mode.strip():
        settings.append(f"memory-mode={memory_mode.strip()}")
    if sram_bytes is not None:
        settings.append(f"sram-bytes={int(sram_bytes)}")
    return tuple(settings)


def device_class_name(
    runtime: str, runtime_version: str, cpu_core: str,
    accelerators: Iterable[str], formats: Iterable[str], ops: Iterable[str],
    settings: Iterable[str] = (),
) -> str:
    """Runtime, :func:`version_key`, CPU core and the sorted accelerators, formats and
    operators — not memory, which only filters (docs/tinyml-object.md) — plus the
    accelerator ``settings`` (:func:`accelerator_settings`) when there are any, so
    classes without them keep their names. Readable prefix plus 16 hex digits of
    SHA-256, e.g. ``tflite-micro-2025-01-15-cortex-m0plus-3f9a…``."""
    runtime, cpu_core = runtime.strip().lower(), cpu_core.strip().lower()
    key = [runtime, version_key(runtime_version), cpu_core, _sorted(accelerators, lower=True),
           _sorted(formats, lower=True), _sorted(ops, lower=False)]
    extra = _sorted(settings, lower=False)
    if extra:
        key.append(extra)
    digest = hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()
    return f"{runtime}-{version_key(runtime_version)}-{cpu_core}-{digest[:16]}"


def _sorted(values: Iterable[str], *, lower: bool) -> list[str]:
    cleaned = (str(v).strip() for v in values)
    return sorted({(v.lower() if lower else v) for v in cleaned if v})
