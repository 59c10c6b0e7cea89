"""The JSON form of the compiler interface's values, and the schemas it follows.

A target, a model and a compile result each have a JSON form, described by a
JSON Schema (draft 2020-12) shipped beside this module under ``schemas/``:
``target.schema.json``, ``model.schema.json`` and ``result.schema.json``. The
JSON forms carry no bytes: a model is its digest, size, format, name and
version; a module's payload is its SHA-256 and size. The conformance kit
(:mod:`.conformance`) validates every result a plugin returns against
``result.schema.json``; the management API can show the same documents.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from .base import CompiledModule, ModelInput, TargetSpec

SchemaName = Literal["target", "model", "result"]
"""The shipped schemas, by the name their file starts with."""


@lru_cache(maxsize=None)
def schema(name: SchemaName) -> dict[str, Any]:
    """The parsed JSON Schema ``schemas/<name>.schema.json``."""
    text = resources.files(__package__).joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator(name: SchemaName) -> Any:
    import jsonschema_rs  # imported here: only validation needs it, describing does not

    return jsonschema_rs.Draft202012Validator(schema(name))


def schema_errors(name: SchemaName, document: Any) -> list[str]:
    """Why ``document`` does not follow schema ``name``, one line per error naming the
    JSON path (``/inputs/0/dtype: "int7" is not one of ...``); empty when it does."""
    errors = []
    for error in _validator(name).iter_errors(document):
        where = "/" + "/".join(str(part) for part in error.instance_path)
        errors.append(f"{where}: {error.message}")
    return sorted(errors)


def target_to_json(target: TargetSpec) -> dict[str, Any]:
    """``target`` as a document of ``target.schema.json`` (sets sorted, the class id included)."""
    return {
        "runtime": target.runtime,
        "runtime_version": target.runtime_version,
        "cpu_core": target.cpu_core,
        "architecture": target.architecture,
        "cpu_clock_hz": target.cpu_clock_hz,
        "ram_bytes": target.ram_bytes,
        "flash_bytes": target.flash_bytes,
        "arena_budget_bytes": target.arena_budget_bytes,
        "ops": sorted(target.ops),
        "accelerators": sorted(target.accelerators),
        "accelerator_system_config": target.accelerator_system_config,
        "accelerator_memory_mode": target.accelerator_memory_mode,
        "accelerator_sram_bytes": target.accelerator_sram_bytes,
        "formats": sorted(target.formats),
        "device_class": target.device_class,
    }


def model_to_json(model: ModelInput) -> dict[str, Any]:
    """``model`` as a document of ``model.schema.json``: digest and size instead of the bytes."""
    return {"format": model.format, "digest": model.digest, "size": len(model.data),
            "name": model.name, "version": model.version}


def module_to_json(module: CompiledModule) -> dict[str, Any]:
    """``module`` as a document of ``result.schema.json``: the payload as SHA-256 and size.

    ``report`` is copied as the plugin gave it; ``json.dumps`` of the result fails
    when the plugin put a value there that is not JSON (the kit checks that).
    """
    return {
        "payload": {"sha256": module.payload_digest, "size": len(module.payload)},
        "payload_format": module.payload_format,
        "runtime": module.runtime,
        "required_arena_bytes": module.required_arena_bytes,
        "required_ram_bytes": module.required_ram_bytes,
        "required_flash_bytes": module.required_flash_bytes,
        "storage_bytes": module.storage_bytes,
        "required_ops": sorted(module.required_ops),
        "inputs": [tensor.as_dict() for tensor in module.inputs],
        "outputs": [tensor.as_dict() for tensor in module.outputs],
        "accelerator": module.accelerator,
        "accelerator_ops": list(module.accelerator_ops),
        "cpu_ops": list(module.cpu_ops),
        "estimated_cycles": module.estimated_cycles,
        "estimated_latency_s": module.estimated_latency_s,
        "estimate_source": module.estimate_source,
        "compiler": module.compiler,
        "compiler_version": module.compiler_version,
        "source_digest": module.source_digest,
        "report": dict(module.report),
        "log": list(module.log),
    }
