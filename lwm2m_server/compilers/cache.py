"""Compile results on disk, keyed by (model digest, plugin, plugin version, device class).

A model is compiled once per device class; every later device of the class —
and the server after a restart — gets the module from here. A folder holds,
per entry, ``<id>.payload`` (the payload bytes) and ``<id>.json`` (the key,
the payload's SHA-256 and size, and the module's metadata), in a subfolder
named after the id's first two hex digits. Both files are written to a
temporary name, fsynced and renamed, payload first, so a reader sees a whole
entry or none. An entry whose JSON does not parse, names another key, or whose
payload is missing or has another digest counts as corrupted: it is removed
and reported as a miss, never returned.

A new plugin version is a new key, so upgrading a compiler (or the TFLM build
behind it) recompiles instead of serving stale modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import structlog

from ..suit.model_info import Quantization, TensorSpec
from .base import CompiledModule, CompilerPlugin, ModelInput, TargetSpec, options_digest

log = structlog.get_logger(__name__)

ENTRY_FORMAT = 1
"""Version of the JSON layout; entries of another version are ignored (misses)."""


@dataclass(frozen=True, slots=True)
class CompileKey:
    """What identifies one compile result."""

    model_digest: str
    """SHA-256 hex of the model input."""
    plugin: str
    """Plugin name."""
    plugin_version: str
    """Plugin version (a change means a recompile)."""
    device_class: str
    """:attr:`TargetSpec.device_class` of the devices the module is for."""
    options_digest: str = ""
    """:func:`~.base.options_digest` of the compile options; "" for none."""

    @classmethod
    def of(cls, plugin: CompilerPlugin, model: ModelInput, target: TargetSpec,
           options: Mapping[str, Any] | None = None) -> CompileKey:
        """The key of compiling ``model`` with ``plugin`` for ``target``'s class."""
        return cls(model.digest, plugin.name, plugin.version, target.device_class, options_digest(options))

    @property
    def id(self) -> str:
        """SHA-256 hex of the key: the entry's file name."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _module_to_json(module: CompiledModule) -> dict[str, Any]:
    return {
        "payload_format": module.payload_format,
        "runtime": module.runtime,
        "required_arena_bytes": module.required_arena_bytes,
        "required_ram_bytes": module.required_ram_bytes,
        "required_ops": sorted(module.required_ops),
        "inputs": [_tensor_to_json(t) for t in module.inputs],
        "outputs": [_tensor_to_json(t) for t in module.outputs],
        "compiler": module.compiler,
        "compiler_version": module.compiler_version,
        "source_digest": module.source_digest,
        "log": list(module.log),
        "accelerator": module.accelerator,
        "accelerator_ops": list(module.accelerator_ops),
        "cpu_ops": list(module.cpu_ops),
        "required_flash_bytes": module.required_flash_bytes,
        "estimated_cycles": module.estimated_cycles,
        "estimated_latency_s": module.estimated_latency_s,
        "estimate_source": module.estimate_source,
        "report": dict(module.report),
    }


def _tensor_to_json(tensor: TensorSpec) -> dict[str, Any]:
    # flat scale/zero_point (0.0: not quantized), as entries written before have them
    return {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape),
            "scale": tensor.scale, "zero_point": tensor.zero_point}


def _module_from_json(payload: bytes, data: Mapping[str, Any]) -> CompiledModule:
    def tensors(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(str(t["name"]), str(t["dtype"]), tuple(int(d) for d in t["shape"]),
                                Quantization(float(t["scale"]), int(t["zero_point"])) if t["scale"] else None)
                     for t in items)

    return CompiledModule(
        payload=payload,
        payload_format=str(data["payload_format"]),
        runtime=str(data["runtime"]),
        required_arena_bytes=int(data["required_arena_bytes"]),
        required_ram_bytes=int(data["required_ram_bytes"]),
        required_ops=frozenset(str(o) for o in data["required_ops"]),
        inputs=tensors(data["inputs"]),
        outputs=tensors(data["outputs"]),
        compiler=str(data["compiler"]),
        compiler_version=str(data["compiler_version"]),
        source_digest=str(data["source_digest"]),
        log=tuple(str(line) for line in data["log"]),
        # entries written before these fields existed have none of them
        accelerator=str(data.get("accelerator", "")),
        accelerator_ops=tuple(str(o) for o in data.get("accelerator_ops", ())),
        cpu_ops=tuple(str(o) for o in data.get("cpu_ops", ())),
        required_flash_bytes=int(data.get("required_flash_bytes", 0)),
        estimated_cycles=None if data.get("estimated_cycles") is None else int(data["estimated_cycles"]),
        estimated_latency_s=None if data.get("estimated_latency_s") is None else float(data["estimated_latency_s"]),
        estimate_source=str(data.get("estimate_source", "")),
        report=dict(data.get("report") or {}),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


class CompileCache:
    """A folder of compiled modules with hit/miss/corrupted counters (thread-safe)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        """Where entries live; created when missing."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        """Lookups answered from disk."""
        self.misses = 0
        """Lookups not answered (absent or corrupted entries)."""
        self.corrupted = 0
        """Entries found broken and removed."""
        self._lock = threading.Lock()

    def _paths(self, key: CompileKey) -> tuple[Path, Path]:
        base = self.folder / key.id[:2] / key.id
        return base.with_suffix(".payload"), base.with_suffix(".json")

    def _count(self, hit: bool, corrupted: bool = False) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
            if corrupted:
                self.corrupted += 1

    def get(self, key: CompileKey) -> CompiledModule | None:
        """The cached module for ``key``, or None (a miss)."""
        payload_path, meta_path = self._paths(key)
        try:
            meta_text = meta_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._count(hit=False)
            return None
        except OSError as exc:
            return self._broken(key, f"unreadable metadata: {exc}")
        try:
            meta = json.loads(meta_text)
            if meta.get("format") != ENTRY_FORMAT or meta.get("key") != asdict(key):
                return self._broken(key, "metadata names another key or format")
            payload = payload_path.read_bytes()
            if len(payload) != meta["payload_size"] or hashlib.sha256(payload).hexdigest() != meta["payload_sha256"]:
                return self._broken(key, "payload does not match its digest")
            module = _module_from_json(payload, meta["module"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._broken(key, f"{type(exc).__name__}: {exc}")
        self._count(hit=True)
        return module

    def _broken(self, key: CompileKey, why: str) -> None:
        log.warning("compile_cache_corrupted", entry=key.id, reason=why)
        for path in self._paths(key):
            try:
                path.unlink()
            except OSError:
                pass
        self._count(hit=False, corrupted=True)
        return None

    def put(self, key: CompileKey, module: CompiledModule) -> None:
        """Store ``module`` under ``key`` (replacing an older entry)."""
        payload_path, meta_path = self._paths(key)
        payload_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": ENTRY_FORMAT, "key": asdict(key), "payload_sha256": module.payload_digest,
                "payload_size": len(module.payload), "module": _module_to_json(module)}
        _write_atomic(payload_path, module.payload)
        _write_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())

    def get_or_compile(self, plugin: CompilerPlugin, model: ModelInput, target: TargetSpec,
                       options: Mapping[str, Any] | None = None) -> tuple[CompiledModule, bool]:
        """The module from the cache, or compiled now and stored; and whether it was a hit.

        :class:`~.base.Incompatible` from the plugin propagates (nothing stored).
        """
        key = CompileKey.of(plugin, model, target, options)
        module = self.get(key)
        if module is not None:
            return module, True
        module = plugin.compile(model, target, options)
        self.put(key, module)
        return module, False

    def stats(self) -> dict[str, int]:
        """Counters: ``hits``, ``misses``, ``corrupted``."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "corrupted": self.corrupted}
