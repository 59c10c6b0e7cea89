"""The management API described as an OpenAPI 3.1 document (served at
``GET /api/v1/openapi.json``, no token needed), and ``docs/api.md`` generated
from it::

    python -m lwm2m_server.api.openapi --markdown > docs/api.md
    python -m lwm2m_server.api.openapi            # the JSON document

The document is data: :data:`DOCUMENT`. ``tests/test_openapi.py`` fails when a
route under ``/api/v1`` is missing from it (or it names one that does not
exist); request-body schemas mirror :mod:`.bodies`, :mod:`.credentials` and
``http.py`` (unknown fields are refused: ``additionalProperties: false``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..core.responses import REASONS
from .errors import DEVICE_CODE_STATUS
from . import openapi_models
from .openapi_base import BAD_REQUEST, BOOLEAN, INTEGER, NO_DEPLOYMENT, STRING, TIME, UNAUTHORIZED
from .openapi_base import error_answer as _error, json_answer as _json, nullable as _nullable, obj as _obj, ref as _ref

VERSION = "1.0.0"

LWM2M_PATH = {
    "type": "string", "pattern": r"^/(((0|[1-9][0-9]{0,4})/){0,3}(0|[1-9][0-9]{0,4})/?)?$",
    "description": "LwM2M path: `/`, `/3`, `/3/0`, `/3/0/1` or `/3/0/1/2`", "examples": ["/3/0"],
}
SCALAR = {"type": ["string", "number", "boolean"],
          "description": "text parsed by the resource's type (Opaque as hex); a number or boolean as its text"}
ROLLOUT_ID = {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$", "examples": ["r-kws-1"]}
COAP_CODE = {"type": "string", "pattern": r"^([2-5]\.[0-9]{2}|unreachable)$",
             "description": "the device's CoAP response code (`2.05`, `4.04`, ...), or `unreachable` when "
                            "no answer came"}

DEVICE_STATUSES = ["pending", "in_flight", "retry_wait", "done", "failed", "incompatible", "rolled_back",
                   "superseded"]
ROLLOUT_STATES = ["running", "paused", "cancelled", "complete"]
QUEUE_STATES = ["pending", "delivered", "expired", "failed", "cancelled"]
SCOPES = ["server", "bootstrap"]
MODEL_FORMAT = {"type": "string", "examples": ["tflite", "onnx", "emlearn-json", "firmware"],
                "description": "a model format one of the daemon's installed compiler plugins accepts "
                               "(`tinymlaas plugins` in the daemon's environment lists them), or `firmware`; "
                               "another format is refused (400) with the list of those accepted"}
"""Not a fixed enum: the allowed values are the installed plugins' formats plus ``firmware``."""
EVENT_KINDS = ["registered", "updated", "deregistered", "expired", "registration_ended", "send", "notification",
               "queue", "profile", "discovery_incomplete", "rollout", "bootstrap"]

_STRATEGY_PROPERTIES = {
    "max_in_flight": {"type": "integer", "minimum": 1, "default": 10, "description": "devices updated at once"},
    "canary_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                        "description": "share of devices (at least one) updated first"},
    "failure_threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.2,
                          "description": "pause when failed / finished devices reaches this share"},
    "max_attempts": {"type": "integer", "minimum": 1, "default": 3,
                     "description": "delivery attempts per device before it counts as failed"},
    "retry_backoff_s": {"type": "number", "minimum": 0, "default": 30.0,
                        "description": "seconds before the first retry; doubles each time"},
    "mode": {"type": "string", "enum": ["auto", "push", "pull"], "default": "auto"},
    "version_check": {"type": "string", "enum": ["auto", "package", "firmware", "none"], "default": "auto",
                      "description": "firmware: how a device proves it runs the new image"},
    "follow": {"type": "boolean", "default": False,
               "description": "keep running once every matched device is final, to enrol later matches"},
    "plugin": {"type": "string", "default": "",
               "description": "compiler plugin pinned for every device (`\"\"`: the ranking chooses); a device "
                              "it does not fit is `incompatible` with its reasons; an unknown plugin is a 400"},
}
_SELECTOR_PROPERTIES = {
    "device_classes": {"type": "array", "items": STRING, "description": "device class patterns"},
    "endpoints": {"type": "array", "items": STRING, "description": "endpoint patterns such as `m4f-*`"},
    "labels": {"type": "object", "additionalProperties": STRING,
               "description": "what /3 (or the TinyML object) must report exactly"},
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string", "description": "what went wrong, naming the field"}},
                  ("error",), closed=False, description="Every 4xx/5xx answer of the API (204 aside)."),
    "NotLeader": _obj({
        "error": {"type": "string", "description": "which node refused, and `node <leader> leads rollouts: "
                                                   "retry there` or `no node leads rollouts now: retry soon`"},
        "leader": _nullable({"type": "string", "description": "the node (its `cluster.node`) that leads "
                                                              "rollouts; null when none does now"}),
    }, ("error", "leader"), description="A rollout change refused by a node that does not lead rollouts "
                                        "(nodes sharing a store): an Error naming the node to send it to."),
    "Health": _obj({"status": {"const": "ok"}, "registrations": {"type": "integer", "minimum": 0}},
                   ("status", "registrations")),
    "Registration": _obj({
        "endpoint": STRING, "id": STRING, "address": STRING,
        "security": {"type": "string", "enum": ["none", "psk", "oscore"]},
        "identity": _nullable(STRING), "lwm2m_version": STRING, "binding": STRING, "queue_mode": BOOLEAN,
        "lifetime": INTEGER, "sms": _nullable(STRING), "registered_at": TIME, "updated_at": TIME,
        "expires_at": TIME, "root_path": STRING,
        "content_formats": {"type": "array", "items": INTEGER},
        "objects": {"type": "array", "items": _obj({"path": STRING, "ver": STRING}, ("path",))},
        "extra": {"type": "object", "additionalProperties": STRING},
    }, ("endpoint", "id", "address", "security", "lwm2m_version", "binding", "queue_mode", "lifetime",
        "objects"), closed=False),
    "Device": {"allOf": [_ref("Registration"), _obj({
        "profile": _nullable({"type": "object", "description": "what discovery found (capabilities)"}),
        "device_class": _nullable(STRING),
        "firmware_update": _nullable({"type": "string", "description": "Firmware Update state and result"}),
        "observations": {"type": "array", "items": {"type": "array", "items": STRING}},
    }, ("profile", "device_class", "firmware_update", "observations"), closed=False)]},
    "ValueRow": _obj({
        "path": STRING, "name": _nullable(STRING),
        "value": {"description": "JSON value: opaque as hex, time as ISO 8601, objlnk as `3:0`"},
        "line": {"type": "string", "description": "a display line with name and unit"},
    }, ("path", "name", "value", "line")),
    "Result": _obj({
        "ok": BOOLEAN, "code": COAP_CODE, "content_format": _nullable(INTEGER),
        "diagnostic": {"type": "string", "description": "why `ok` is false (empty when it is true)"},
        "values": {"type": "array", "items": _ref("ValueRow")},
        "links": {"type": "string", "description": "Discover: the CoRE Link Format answer"},
        "location": {"type": "string", "description": "Create: the new instance"},
    }, ("ok", "code", "content_format", "diagnostic"), description="What the device answered, decoded."),
    "DeviceFailure": _obj({
        "error": {"type": "string", "description": "e.g. `device answered 4.04 Not Found: no such resource`"},
        "ok": {"const": False}, "code": COAP_CODE, "content_format": _nullable(INTEGER),
        "diagnostic": {"type": "string", "description": "the device's error payload (or the code's reason "
                                                        "phrase), or why its answer could not be decoded"},
    }, ("error", "ok", "code", "content_format", "diagnostic"),
        description="The device refused (its CoAP error code, mapped as RFC 8075 does), sent an "
                    "answer that does not decode (502), or did not answer (504)."),
    "Queued": _obj({"queued": {"type": "string", "description": "queue entry id (`GET /queue/{id}`)"},
                    "expires_at": TIME}, ("queued", "expires_at")),
    "Cancelled": _obj({"cancelled": {"type": "boolean", "description": "whether an observation was found"}},
                      ("cancelled",)),
    "QueueEntry": _obj({
        "id": STRING, "endpoint": STRING, "state": {"type": "string", "enum": QUEUE_STATES},
        "created_at": TIME, "expires_at": TIME, "operation": _nullable(STRING),
        "result": _nullable({"type": "object", "description": "the device's answer once delivered"}),
    }, ("id", "endpoint", "state", "created_at", "expires_at", "operation", "result")),
    "Model": _obj({
        "name": STRING, "version": STRING, "format": MODEL_FORMAT,
        "digest": {"type": "string", "description": "SHA-256 hex of the file"},
        "size": {"type": "integer", "description": "bytes"}, "file": STRING, "added_at": TIME,
    }, ("name", "version", "format", "digest", "size", "file", "added_at")),
    "Strategy": _obj(_STRATEGY_PROPERTIES, tuple(_STRATEGY_PROPERTIES)),
    "Selector": _obj(_SELECTOR_PROPERTIES, tuple(_SELECTOR_PROPERTIES)),
    "Rollout": _obj({
        "id": STRING, "model": {"type": "string", "description": "`name@version`"},
        "state": {"type": "string", "enum": ROLLOUT_STATES}, "created_at": TIME, "paused_reason": STRING,
        "selector": _ref("Selector"), "strategy": _ref("Strategy"),
        "summary": _obj({"total": INTEGER, "finished": INTEGER,
                         "counts": {"type": "object", "propertyNames": {"enum": DEVICE_STATUSES},
                                    "additionalProperties": INTEGER}},
                        ("total", "finished", "counts")),
        "devices": {"type": "array", "items": _obj({
            "endpoint": STRING, "status": {"type": "string", "enum": DEVICE_STATUSES}, "attempts": INTEGER,
            "canary": BOOLEAN, "reason": STRING, "phase": _nullable(STRING), "mode": _nullable(STRING),
            "package": _nullable(STRING),
        }, ("endpoint", "status", "attempts", "canary", "reason", "phase", "mode", "package"))},
    }, ("id", "model", "state", "created_at", "paused_reason", "selector", "strategy", "summary"),
        description="`devices` only in `GET /rollouts/{id}`."),
    "Credential": _obj({
        "endpoint": STRING, "identity": STRING, "scope": {"type": "string", "enum": SCOPES},
        "created": TIME, "mechanism": {"const": "oscore"}, "sender_id": STRING, "recipient_id": STRING,
        "id_context": _nullable(STRING), "aead": INTEGER, "hkdf": INTEGER,
    }, ("endpoint", "identity", "scope", "created"), description="A stored credential; never its key."),
    "FleetRow": _obj({
        "endpoint": STRING, "device_class": _nullable(STRING),
        "status": {"type": "string", "description": "`discovering`, `incomplete`, `queue mode` or `online`"},
        "security": {"type": "string", "enum": ["none", "psk", "oscore"]}, "lwm2m_version": STRING,
        "binding": STRING, "updated_at": TIME, "expires_at": TIME,
        "model": _nullable({"type": "string", "description": "installed model `name@version`"}),
        "firmware_update": _nullable(STRING),
    }, ("endpoint", "device_class", "status", "security"), closed=False),
    "ModelModules": _obj({
        "model": STRING,
        "modules": {"type": "array", "items": {"type": "object", "properties": {
            "device_class": STRING, "plugin": _nullable(STRING), "size": _nullable(INTEGER),
            "arena_bytes": _nullable(INTEGER)}}},
        "incompatible": {"type": "array", "items": _obj(
            {"device_class": STRING, "reason": STRING, "devices": INTEGER}, closed=False)},
    }, ("model", "modules", "incompatible"), closed=False),
    "ObjectDefinition": _obj({
        "id": INTEGER, "name": STRING, "version": STRING, "multiple": BOOLEAN,
        "resources": {"type": "array", "items": _obj({
            "id": INTEGER, "name": STRING, "operations": STRING, "type": STRING, "units": _nullable(STRING),
            "multiple": BOOLEAN}, closed=False)},
    }, ("id", "name", "resources"), closed=False),
    **openapi_models.SCHEMAS,
    # request bodies
    "RolloutRequest": _obj({
        "model": {"type": "string", "minLength": 1, "description": "`name@version` of a registered model"},
        "selector": _nullable(_obj({k: _nullable(v) for k, v in _SELECTOR_PROPERTIES.items()})),
        "strategy": _nullable(_obj({k: _nullable(v) for k, v in _STRATEGY_PROPERTIES.items()})),
        "id": _nullable(ROLLOUT_ID),
        "follow": _nullable({"type": "boolean", "description": "short for `strategy.follow`"}),
    }, ("model",), description="Absent or null fields take their defaults."),
    "PskCredentialRequest": _obj({
        "mechanism": {"const": "psk"},
        "identity": {"type": "string", "minLength": 1, "description": "PSK identity (default: the endpoint)"},
        "key": {"type": "string", "description": "the key as hex (`0a1b...`, colons allowed)"},
        "scope": {"type": "string", "enum": SCOPES, "default": "server"},
        "replace": {"type": "boolean", "default": False},
    }, ("key",)),
    "OscoreCredentialRequest": _obj({
        "mechanism": {"const": "oscore"},
        "secret": {"type": "string", "description": "master secret, hex"},
        "sender_id": {"type": "string", "description": "the server's sender id, hex"},
        "recipient_id": {"type": "string", "description": "the server's recipient id, hex"},
        "salt": _nullable(STRING), "id_context": _nullable(STRING),
        "aead": {"type": "integer", "default": 10, "description": "COSE algorithm number"},
        "replace": {"type": "boolean", "default": False},
    }, ("mechanism", "secret", "sender_id", "recipient_id")),
}

# -- responses and parameters --------------------------------------------------------------


UNKNOWN_ENDPOINT = _error("no such registered endpoint")
NO_STORE = _error("the security store is not running or its storage is unavailable")
NOT_LEADING = {
    "description": "this node does not lead rollouts (`leader` names the node that does; with none now, "
                   "`Retry-After: 5`), or model deployment is not running or its storage is unavailable",
    "headers": {"Retry-After": {"description": "seconds to wait, when no node leads rollouts now",
                                "schema": {"type": "integer", "minimum": 0}}},
    "content": {"application/json": {"schema": {"anyOf": [_ref("NotLeader"), _ref("Error")]}}},
}
"""The 503 of a rollout change: nodes sharing a store change rollouts at the one leading them only."""
EP = {"name": "ep", "in": "path", "required": True, "schema": {"type": "string", "examples": ["sensor-1"]},
      "description": "the device's endpoint client name"}
ID = {"name": "id", "in": "path", "required": True, "schema": STRING}

_OWN_DEVICE_RESPONSES = {
    400: BAD_REQUEST, 401: UNAUTHORIZED, 404: UNKNOWN_ENDPOINT,
    429: _error("too many requests are queued for this sleeping device"),
    503: _error("server storage unavailable"),
}


def _device_responses() -> dict[str, Any]:
    """200/202, this API's own errors, and every status a device's error code maps to; where
    both can give one status, the body says which (a device's answer has a CoAP ``code``)."""
    responses: dict[str, Any] = {
        "200": _json(_ref("Result"), "the device answered 2.xx; its answer decoded"),
        "202": _json(_ref("Queued"), "the device sleeps (queue mode): the request goes out at its next update"),
        "502": _json(_ref("DeviceFailure"), "the device answered 2.xx with a payload that could not be "
                                            "decoded, or 5.02/5.05; `code` is its CoAP code"),
        "504": _json(_ref("DeviceFailure"), "the device did not answer (`code` is `unreachable`), or 5.04"),
    }
    codes_by_status: dict[int, list[str]] = {}
    for code, status in DEVICE_CODE_STATUS.items():
        codes_by_status.setdefault(status, []).append(code)
    for status in sorted(set(codes_by_status) | set(_OWN_DEVICE_RESPONSES)):
        device = f"the device answered {', '.join(codes_by_status.get(status, ()))}" if status in codes_by_status else ""
        own = _OWN_DEVICE_RESPONSES.get(status)
        if str(status) in responses:
            continue
        if own is None:
            responses[str(status)] = _json(_ref("DeviceFailure"), device)
        elif not device:
            responses[str(status)] = own
        else:
            responses[str(status)] = _json({"anyOf": [_ref("Error"), _ref("DeviceFailure")]},
                                           f"{own['description']}; or {device} (`code` says which)")
    return dict(sorted(responses.items()))


DEVICE_RESPONSES = _device_responses()
_PATH_ONLY = {"path": LWM2M_PATH}
_PATHS = {"type": "array", "items": LWM2M_PATH, "minItems": 1,
          "description": "several paths (Observe-Composite); instead of `path` (give one of the two)"}
OPERATION_BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "read": ("Read a path (Read, 2.05).", _obj(_PATH_ONLY, ("path",))),
    "delete": ("Delete an object instance.", _obj(_PATH_ONLY, ("path",))),
    "discover": ("Discover the resources and attributes under a path; the answer has `links`.",
                 _obj(_PATH_ONLY, ("path",))),
    "write": ("Write a resource (or resource instance) value; `replace: false` is a partial update (POST).",
              _obj({"path": LWM2M_PATH, "value": SCALAR, "replace": _nullable({"type": "boolean", "default": True})},
                   ("path", "value"))),
    "execute": ("Execute a resource.",
                _obj({"path": LWM2M_PATH, "args": {"type": "string", "default": "",
                                                   "description": "execute arguments such as `0='a',1`"}},
                     ("path",))),
    "write-attributes": ("Write notification attributes (`pmin`, `pmax`, `gt`, `lt`, `st`, `epmin`, `epmax`, "
                         "...); null unsets one.",
                         _obj({"path": LWM2M_PATH, "attributes": {
                             "type": "object", "additionalProperties": {"type": ["string", "number", "null"]},
                             "examples": [{"pmin": 10, "pmax": 60}]}}, ("path", "attributes"))),
    "create": ("Create an object instance; without `instance` (or with null) the device picks the id and "
               "the answer's `location` names it.",
               _obj({"path": LWM2M_PATH,
                     "instance": _nullable({"type": "integer", "minimum": 0, "maximum": 65534}),
                     "values": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                                "additionalProperties": SCALAR,
                                "description": "resource id → value text"}}, ("path",))),
    "observe": ("Observe a path (or several: Observe-Composite); notifications arrive on `GET /events` "
                "(kind `notification`). The answer is the device's first answer.",
                {**_obj({"path": LWM2M_PATH, "paths": _PATHS,
                         "timeout": _nullable({"type": "number", "exclusiveMinimum": 0,
                                               "description": "seconds to wait for the device's answer at most"})}),
                 }),
    "cancel-observe": ("Stop observing a path (or paths) and tell the device.",
                       {**_obj({"path": LWM2M_PATH, "paths": _PATHS}),
                        }),
}


def _device_operation(name: str) -> dict[str, Any]:
    summary, body = OPERATION_BODIES[name]
    responses = dict(DEVICE_RESPONSES)
    if name == "cancel-observe":  # answered by the server, not forwarded to the device
        responses = {"200": _json(_ref("Cancelled"), "whether an observation was cancelled"),
                     "400": BAD_REQUEST, "401": UNAUTHORIZED, "404": UNKNOWN_ENDPOINT}
    elif name == "observe":  # never queued
        del responses["202"], responses["429"]
    return {"post": {
        "operationId": f"device_{name.replace('-', '_')}", "tags": ["devices"], "summary": summary,
        "parameters": [EP],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": responses,
    }}


def _rollout_action(action: str) -> dict[str, Any]:
    return {"post": {
        "operationId": f"rollout_{action}", "tags": ["rollouts"],
        "summary": {"pause": "Pause a rollout.", "resume": "Resume a paused rollout.",
                    "cancel": "Cancel a rollout."}[action],
        "parameters": [ID],
        "requestBody": {"required": False, "description": "none, or an empty object",
                        "content": {"application/json": {"schema": _obj({})}}},
        "responses": {"200": _json(_ref("Rollout"), "the rollout after the change"), "400": BAD_REQUEST,
                      "401": UNAUTHORIZED, "404": _error("no such rollout"), "503": NOT_LEADING},
    }}


def _status_table() -> str:
    rows = "".join(f"| {code} {REASONS.get(code, '')} | `{status}` |\n" for code, status in DEVICE_CODE_STATUS.items())
    return "| device's CoAP code | HTTP status |\n|---|---|\n" + rows + "| any other 4.xx / 5.xx | `400` / `500` |\n"


DESCRIPTION = """\
The management API of the tinymlaas LwM2M server: JSON in, JSON out, on the daemon's
`api.host:api.port` (loopback by default). Every route but `/health` and `/openapi.json`
needs `Authorization: Bearer <token>` (the token is in `api.token_file`).

**Errors.** Every error answer is `{"error": "..."}` naming the problem: `400` a request
that cannot be built (a body that is not a JSON object, a field of the wrong type or an
unknown field), `401` no or a wrong token, `404` an unknown endpoint, rollout, queue entry
or credential, `409` a conflicting credential, `429` a sleeping device's queue is full,
`503` storage unavailable or the subsystem is not running, or a rollout change sent to a
node that does not lead rollouts (`NotLeader`: its `leader` names the node to retry at). A
`500` is a bug.

**Device operations** (`POST /devices/{ep}/<operation>`) keep the device's CoAP code in
`code` and map it to the HTTP status:

| the device | HTTP | body |
|---|---|---|
| answered 2.xx, payload decoded | `200` | `Result`, `ok: true` |
| sleeps (queue mode) | `202` | `Queued` |
| answered 4.xx or 5.xx | as RFC 8075 §7 maps it (table below) | `DeviceFailure` |
| answered 2.xx with a payload that does not decode | `502 Bad Gateway` | `DeviceFailure` |
| did not answer in time | `504 Gateway Timeout` | `DeviceFailure`, `code: "unreachable"` |

""" + _status_table() + """
A device's answer always has `ok: false` and its CoAP `code`; this API's own errors (an
unknown endpoint is a `404` too) have only `error`.
"""

PATHS: dict[str, Any] = {
    "/api/v1/health": {"get": {
        "operationId": "health", "tags": ["server"], "summary": "Liveness and the number of registrations.",
        "security": [], "responses": {"200": _json(_ref("Health"), "the server runs")}}},
    "/api/v1/openapi.json": {"get": {
        "operationId": "openapi", "tags": ["server"], "summary": "This document.", "security": [],
        "responses": {"200": _json({"type": "object"}, "the OpenAPI 3.1 document")}}},
    "/api/v1/devices": {"get": {
        "operationId": "list_devices", "tags": ["devices"], "summary": "The registered devices.",
        "responses": {"200": _json({"type": "array", "items": _ref("Registration")}, "registrations"),
                      "401": UNAUTHORIZED}}},
    "/api/v1/devices/{ep}": {"get": {
        "operationId": "get_device", "tags": ["devices"],
        "summary": "One device: its registration, discovered profile, class, firmware update state and "
                   "observations.",
        "parameters": [EP],
        "responses": {"200": _json(_ref("Device"), "the device"), "401": UNAUTHORIZED,
                      "404": UNKNOWN_ENDPOINT}}},
    **{f"/api/v1/devices/{{ep}}/{name}": _device_operation(name) for name in OPERATION_BODIES},
    "/api/v1/queue/{id}": {"get": {
        "operationId": "get_queue_entry", "tags": ["devices"],
        "summary": "A request queued for a sleeping device, and its result once delivered.",
        "parameters": [ID],
        "responses": {"200": _json(_ref("QueueEntry"), "the entry"), "401": UNAUTHORIZED,
                      "404": _error("no such queue entry"), "503": _error("server storage unavailable")}}},
    "/api/v1/models": {
        "get": {"operationId": "list_models", "tags": ["models"], "summary": "The registered models.",
                "responses": {"200": _json({"type": "array", "items": _ref("Model")}, "models"),
                              "401": UNAUTHORIZED, "503": NO_DEPLOYMENT}},
        "post": {"operationId": "add_model", "tags": ["models"],
                 "summary": "Register a model (validated by each installed compiler plugin that accepts its "
                            "format) or a firmware image; the body is the file. The "
                            "same bytes again answer the existing record; other bytes under a used "
                            "name@version are refused.",
                 "parameters": [
                     {"name": "name", "in": "query", "required": True,
                      "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
                     {"name": "version", "in": "query", "required": True,
                      "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
                     {"name": "format", "in": "query", "required": False,
                      "description": MODEL_FORMAT["description"],
                      "schema": {**MODEL_FORMAT, "default": "tflite"}}],
                 "requestBody": {"required": True, "content": {"application/octet-stream": {
                     "schema": {"type": "string", "format": "binary", "contentMediaType":
                                "application/octet-stream"}}}},
                 "responses": {"201": _json(_ref("Model"), "registered (or already registered with these bytes)"),
                               "400": BAD_REQUEST, "401": UNAUTHORIZED, "503": NO_DEPLOYMENT}}},
    **openapi_models.PATHS,
    "/api/v1/rollouts": {
        "get": {"operationId": "list_rollouts", "tags": ["rollouts"], "summary": "Every rollout, with counts.",
                "responses": {"200": _json({"type": "array", "items": _ref("Rollout")}, "rollouts"),
                              "401": UNAUTHORIZED, "503": NO_DEPLOYMENT}},
        "post": {"operationId": "create_rollout", "tags": ["rollouts"],
                 "summary": "Roll a model out to the devices a selector picks.",
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": _ref("RolloutRequest")}}},
                 "responses": {"201": _json(_ref("Rollout"), "created"), "400": BAD_REQUEST,
                               "401": UNAUTHORIZED, "503": NOT_LEADING}}},
    "/api/v1/rollouts/{id}": {"get": {
        "operationId": "get_rollout", "tags": ["rollouts"], "summary": "A rollout with each device's status.",
        "parameters": [ID],
        "responses": {"200": _json(_ref("Rollout"), "the rollout, with `devices`"), "401": UNAUTHORIZED,
                      "404": _error("no such rollout"), "503": NO_DEPLOYMENT}}},
    **{f"/api/v1/rollouts/{{id}}/{action}": _rollout_action(action) for action in ("pause", "resume", "cancel")},
    "/api/v1/events": {"get": {
        "operationId": "events", "tags": ["events"],
        "summary": "Server events as newline-delimited JSON, one object a line (an empty line is a "
                   "keep-alive), until the client leaves or `timeout` passes.",
        "parameters": [
            {"name": "endpoint", "in": "query", "required": False, "schema": STRING,
             "description": "only this device's events"},
            {"name": "kinds", "in": "query", "required": False, "schema": STRING,
             "description": "comma-separated kinds: " + ", ".join(f"`{k}`" for k in EVENT_KINDS)},
            {"name": "timeout", "in": "query", "required": False,
             "schema": {"type": "number", "exclusiveMinimum": 0}, "description": "end the stream after S seconds"}],
        "responses": {"200": {"description": "the event stream; each line an object with `kind`, `endpoint`, "
                                             "`time` and the kind's data",
                              "content": {"application/x-ndjson": {"schema": STRING}}},
                      "400": BAD_REQUEST, "401": UNAUTHORIZED}}},
    # the dashboard's routes (lwm2m_server/api/dashboard.py)
    "/api/v1/events/sse": {"get": {
        "operationId": "events_sse", "tags": ["events"],
        "summary": "The event stream as Server-Sent Events (`event: <kind>`, `data: <the JSON of /events>`), "
                   "with a keep-alive comment every 15 s, until the client leaves.",
        "parameters": [
            {"name": "endpoint", "in": "query", "required": False, "schema": STRING,
             "description": "only this device's events"},
            {"name": "kinds", "in": "query", "required": False, "schema": STRING,
             "description": "comma-separated kinds, as for `/events`"}],
        "responses": {"200": {"description": "the event stream",
                              "content": {"text/event-stream": {"schema": STRING}}},
                      "401": UNAUTHORIZED}}},
    "/api/v1/fleet": {"get": {
        "operationId": "fleet", "tags": ["devices"],
        "summary": "Every registered device, one row each: class, status, security, installed model.",
        "responses": {"200": _json({"type": "array", "items": _ref("FleetRow")}, "rows, by endpoint"),
                      "401": UNAUTHORIZED}}},
    "/api/v1/models/{key}/modules": {"get": {
        "operationId": "model_modules", "tags": ["models"],
        "summary": "A model's compiled modules per device class, and why classes were found incompatible.",
        "parameters": [{"name": "key", "in": "path", "required": True,
                        "schema": {"type": "string", "examples": ["kws@1.0"]}, "description": "`name@version`"}],
        "responses": {"200": _json(_ref("ModelModules"), "modules and incompatible classes"),
                      "401": UNAUTHORIZED, "404": _error("no such model"), "503": NO_DEPLOYMENT}}},
    "/api/v1/objects/{id}": {"get": {
        "operationId": "object_definition", "tags": ["server"],
        "summary": "An LwM2M object's definition: name, version and resources (operations, type, units).",
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]+$", "examples": ["3303"]},
                        "description": "object id"}],
        "responses": {"200": _json(_ref("ObjectDefinition"), "the definition"), "400": BAD_REQUEST,
                      "401": UNAUTHORIZED, "404": _error("no definition of this object")}}},
    "/api/v1/credentials": {"get": {
        "operationId": "list_credentials", "tags": ["credentials"], "summary": "Stored credentials (never a key).",
        "responses": {"200": _json({"type": "array", "items": _ref("Credential")}, "credentials"),
                      "401": UNAUTHORIZED, "503": NO_STORE}}},
    "/api/v1/credentials/{ep}": {
        "put": {"operationId": "put_credential", "tags": ["credentials"],
                "summary": "Store a device's PSK (default) or OSCORE context.",
                "parameters": [EP],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [_ref("PskCredentialRequest"), _ref("OscoreCredentialRequest")]}}}},
                "responses": {"200": _json(_ref("Credential"), "replaced"), "201": _json(_ref("Credential"), "added"),
                              "400": BAD_REQUEST, "401": UNAUTHORIZED,
                              "409": _error("the endpoint or identity has another credential (use `replace`)"),
                              "503": NO_STORE}},
        "delete": {"operationId": "delete_credentials", "tags": ["credentials"],
                   "summary": "Remove a device's credentials (all, or one scope or mechanism).",
                   "parameters": [EP,
                                  {"name": "scope", "in": "query", "required": False,
                                   "schema": {"type": "string", "enum": SCOPES}},
                                  {"name": "mechanism", "in": "query", "required": False,
                                   "schema": {"type": "string", "enum": ["psk", "oscore"]}}],
                   "responses": {"204": {"description": "removed"}, "400": BAD_REQUEST, "401": UNAUTHORIZED,
                                 "404": _error("the endpoint has no such credential"), "503": NO_STORE}}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tinymlaas management API", "version": VERSION, "description": DESCRIPTION,
             "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
    "servers": [{"url": "http://127.0.0.1:5780", "description": "the daemon's default api.host and api.port"}],
    "security": [{"bearerAuth": []}, {"sessionCookie": []}],
    "tags": [{"name": n} for n in ("server", "devices", "models", "rollouts", "events", "credentials")],
    "paths": PATHS,
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "the token of `api.token` or `api.token_file`"},
                            "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "tinymlaas_session",
                                              "description": "the web dashboard's login session "
                                                             "(`POST /dashboard/login`); a change also needs "
                                                             "its CSRF token in `X-CSRF-Token`, else 403"}},
        "schemas": SCHEMAS,
    },
}
"""The OpenAPI 3.1 document of the management API."""


def document() -> dict[str, Any]:
    """A copy of :data:`DOCUMENT` (callers may change theirs)."""
    return json.loads(json.dumps(DOCUMENT))


# -- docs/api.md --------------------------------------------------------------------------------


def _schema_text(schema: dict[str, Any]) -> str:
    """A short type description of a schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()}-schema)"
    if "anyOf" in schema and "properties" not in schema:
        return " or ".join(_schema_text(s) for s in schema["anyOf"])
    if "oneOf" in schema:
        return " or ".join(_schema_text(s) for s in schema["oneOf"])
    if "allOf" in schema:
        return " + ".join(_schema_text(s) for s in schema["allOf"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array":
        return f"array of {_schema_text(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_schema_text(schema['additionalProperties'])}"
    return kind


def _constraints(schema: dict[str, Any]) -> str:
    notes = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("minLength", "length >="),
                      ("minItems", "items >=")):
        if key in schema:
            notes.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        notes.append(f"pattern `{schema['pattern']}`")
    if "default" in schema:
        notes.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(notes)


def _field_rows(schema: dict[str, Any]) -> list[str]:
    rows = ["| field | type | required | notes |", "|---|---|---|---|"]
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        inner = prop["anyOf"][0] if "anyOf" in prop and "properties" not in prop and len(prop["anyOf"]) == 2 \
            and prop["anyOf"][1] == {"type": "null"} else prop
        notes = "; ".join(filter(None, (prop.get("description") or inner.get("description", ""),
                                        _constraints(inner)))).replace("|", "\\|")
        rows.append(f"| `{name}` | {_schema_text(prop)} | {'yes' if name in required else ''} | {notes} |")
    if schema.get("additionalProperties") is False:
        rows.append("")
        rows.append("Other fields are refused (400).")
    return rows


def markdown(doc: dict[str, Any] | None = None) -> str:
    """``docs/api.md``: the routes, their parameters, bodies and answers, and the schemas."""
    doc = doc or DOCUMENT
    out = ["<!-- generated by `python -m lwm2m_server.api.openapi --markdown > docs/api.md`; do not edit -->",
           "", f"# {doc['info']['title']} {doc['info']['version']}", "",
           doc["info"]["description"].rstrip(), "",
           "The machine-readable document is served at `GET /api/v1/openapi.json`.", "", "## Routes", "",
           "| method | path | summary |", "|---|---|---|"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            anchor = operation["operationId"].replace("_", "-")
            out.append(f"| {method.upper()} | [`{path}`](#{anchor}) | {operation['summary']} |")
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            out += ["", f"### {operation['operationId'].replace('_', '-')}", "",
                    f"`{method.upper()} {path}`" + ("  (no token needed)" if operation.get("security") == []
                                                     else ""), "", operation["summary"]]
            if operation.get("parameters"):
                out += ["", "| parameter | in | type | required | notes |", "|---|---|---|---|---|"]
                for parameter in operation["parameters"]:
                    schema = parameter["schema"]
                    notes = "; ".join(filter(None, (parameter.get("description", ""), _constraints(schema))))
                    out.append(f"| `{parameter['name']}` | {parameter['in']} | {_schema_text(schema)} | "
                               f"{'yes' if parameter.get('required') else ''} | {notes} |")
            body = operation.get("requestBody")
            if body:
                for media, content in body["content"].items():
                    schema = content["schema"]
                    out += ["", f"Body ({media}{', optional' if not body.get('required') else ''}): "
                                f"{body.get('description', _schema_text(schema))}"]
                    if "properties" in schema and schema["properties"]:
                        out += [""] + _field_rows(schema)
                        if "paths" in schema["properties"]:
                            out.append("Give `path` or `paths`, not both (else 400).")
            out += ["", "| status | body | meaning |", "|---|---|---|"]
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                shown = ", ".join(f"{_schema_text(c['schema'])}" + (f" ({m})" if m != "application/json" else "")
                                  for m, c in content.items()) or "none"
                out.append(f"| {status} | {shown} | {response['description']} |")
    out += ["", "## Schemas"]
    for name, schema in doc["components"]["schemas"].items():
        out += ["", f"### {name} (schema)", ""]
        if schema.get("description"):
            out += [schema["description"], ""]
        if "allOf" in schema:
            parts = schema["allOf"]
            out += [f"{_schema_text(parts[0])}, and:", ""] + _field_rows(parts[1])
        else:
            out += _field_rows(schema)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(markdown())
    elif not args:
        sys.stdout.write(json.dumps(DOCUMENT, indent=2) + "\n")
    else:
        print("usage: python -m lwm2m_server.api.openapi [--markdown]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
