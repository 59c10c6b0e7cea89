"""The OpenAPI description of the model detail (``GET /models/{key}``) and the compile
service (``POST /compile``), :mod:`.models`; :mod:`.openapi` merges it into the document."""

from __future__ import annotations

from typing import Any

from ..compilers.selection import RULE
from .openapi_base import (BAD_REQUEST, BOOLEAN, INTEGER, NO_DEPLOYMENT, NUMBER, STRING, TIME, UNAUTHORIZED,
                           error_answer, json_answer, nullable, obj, ref)

_RANK_RULE = f"Fitting plugins are ranked: {RULE} (docs/compiler-plugins.md, Selection)."

_VERDICT = obj({
    "plugin": STRING, "version": STRING,
    "fits": {"type": "boolean", "description": "compiled, and the module fits the device's figures"},
    "rank": nullable({"type": "integer", "minimum": 1, "description": "1: the plugin a rollout would use"}),
    "lossy": BOOLEAN,
    "why": {"type": "string", "description": "what placed the module at its rank, in the rule's terms "
                                             "(empty when it does not fit)"},
    "reasons": {"type": "array", "items": STRING, "description": "why it does not fit (empty when it does)"},
    "cache_hit": nullable({"type": "boolean", "description": "the module came from the compile cache"}),
    "payload_bytes": nullable(INTEGER), "storage_bytes": nullable(INTEGER), "arena_bytes": nullable(INTEGER),
    "ram_bytes": nullable(INTEGER),
    "accelerator": nullable({"type": "string", "description": "the accelerator the module runs on (`\"\"`: CPU)"}),
    "estimated_latency_s": nullable(NUMBER), "estimated_cycles": nullable(INTEGER),
    "estimate_source": nullable({"type": "string", "description": "what made the estimate: an estimate, never "
                                                                  "a measurement"}),
}, ("plugin", "version", "fits", "rank", "lossy", "why", "reasons", "cache_hit", "payload_bytes", "storage_bytes",
    "arena_bytes", "ram_bytes", "accelerator", "estimated_latency_s", "estimated_cycles", "estimate_source"),
    description="One installed plugin's verdict on a model for a device class; the figures are null when "
                "nothing compiled.")

_COMMON = {
    "model": {"type": "string", "description": "`name@version`"},
    "device_class": STRING,
    "endpoint": {"type": "string", "description": "the device whose figures (memory, ...) the verdicts used"},
    "target": {"type": "object", "description": "that device's target (lwm2m_server/compilers/schemas/"
                                                "target.schema.json)"},
    "pinned": {"type": "boolean", "description": "only the requested plugin was asked"},
    "rule": STRING,
    "ranking": {"type": "array", "items": ref("PluginVerdict"), "description": "fitting plugins by rank, then "
                                                                                "the others"},
}

SCHEMAS: dict[str, Any] = {
    "PluginVerdict": _VERDICT,
    "ModelDetail": obj({
        "name": STRING, "version": STRING, "format": STRING,
        "digest": {"type": "string", "description": "SHA-256 hex of the file"},
        "size": {"type": "integer", "description": "bytes"}, "file": STRING, "added_at": TIME,
        "rule": {"type": "string", "description": "the ranking rule"},
        "classes": {"type": "array", "description": "per device class of the registered devices (none for "
                                                    "firmware, which is not compiled)",
                    "items": obj({
                        "device_class": STRING,
                        "endpoint": {"type": "string", "description": "the device whose figures stand for the "
                                                                      "class: the first of `endpoints`"},
                        "endpoints": {"type": "array", "items": STRING},
                        "chosen": nullable({"type": "string", "description": "the rank-1 plugin; null: nothing "
                                                                             "fits"}),
                        "plugins": {"type": "array", "items": ref("PluginVerdict")},
                    }, ("device_class", "endpoint", "endpoints", "chosen", "plugins"))},
    }, ("name", "version", "format", "digest", "size", "file", "added_at", "rule", "classes")),
    "CompileRequest": obj({
        "model": {"type": "string", "minLength": 1, "description": "`name@version` of a registered model"},
        "device_class": nullable({"type": "string", "description": "a class of the registered devices; the "
                                                                   "first of its devices by name stands for it"}),
        "endpoint": nullable({"type": "string", "description": "compile for this device's class, with its "
                                                               "figures"}),
        "plugin": nullable({"type": "string", "description": "ask only this plugin (default: the ranking "
                                                             "chooses)"}),
    }, ("model",), description="Give `device_class` or `endpoint`, not both."),
    "CompileResult": obj({
        **_COMMON,
        "plugin": {"type": "string", "description": "the plugin ranked first (or the one asked)"},
        "cache_hit": nullable({"type": "boolean", "description": "the module came from the compile cache"}),
        "module": {"type": "object", "description": "the module's figures, compiler log and report "
                                                    "(lwm2m_server/compilers/schemas/result.schema.json)"},
        "payload_base64": {"type": "string", "contentEncoding": "base64",
                           "description": "the payload the device would install, base64"},
    }, (*_COMMON, "plugin", "cache_hit", "module", "payload_base64")),
    "CompileRefused": obj({
        "error": {"type": "string", "description": "`no compiler plugin fits: <plugin>: <reasons>; ...` or "
                                                   "`pinned plugin <name> does not fit: ...`"},
        "reasons_by_plugin": {"type": "object", "additionalProperties": {"type": "array", "items": STRING}},
        **_COMMON,
    }, ("error", "reasons_by_plugin", *_COMMON)),
}
"""Component schemas of these routes."""

_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "examples": ["kws@1.0"]},
        "description": "`name@version`"}

PATHS: dict[str, Any] = {
    "/api/v1/models/{key}": {"get": {
        "operationId": "get_model", "tags": ["models"],
        "summary": "A model and, per device class of the registered devices, every installed compiler plugin's "
                   "verdict on it: fits (rank, payload, arena, accelerator, latency estimate and its source) or "
                   "why not. Compiles what the compile cache lacks. " + _RANK_RULE,
        "parameters": [_KEY],
        "responses": {"200": json_answer(ref("ModelDetail"), "the model and its ranking per class"),
                      "401": UNAUTHORIZED, "404": error_answer("no such model"),
                      "422": error_answer("the stored model no longer parses"), "503": NO_DEPLOYMENT}}},
    "/api/v1/compile": {"post": {
        "operationId": "compile", "tags": ["models"],
        "summary": "Compile a registered model for a device class without deploying: the chosen plugin, the "
                   "ranking, the module's figures, the compiler's log and report, and the payload (base64 in "
                   "the answer). Results come from and go to the compile cache (`cache_hit`). " + _RANK_RULE,
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("CompileRequest")}}},
        "responses": {"200": json_answer(ref("CompileResult"), "compiled (or found in the cache)"),
                      "400": BAD_REQUEST, "401": UNAUTHORIZED,
                      "404": error_answer("no such model, device class or discovered device"),
                      "422": json_answer(ref("CompileRefused"), "no plugin fits (or the pinned one does not); "
                                                                "every plugin's reasons"),
                      "503": NO_DEPLOYMENT}}},
}
"""The two routes."""
