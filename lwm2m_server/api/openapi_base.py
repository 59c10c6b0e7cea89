"""What the OpenAPI document's parts share: schema helpers and common answers
(:mod:`.openapi` assembles the document, :mod:`.openapi_models` describes the model
detail and compile routes)."""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, Any]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or ``null`` (JSON Schema 2020-12, as OpenAPI 3.1 uses it)."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = True,
        description: str | None = None) -> dict[str, Any]:
    """An object schema; ``closed``: other properties are refused (``additionalProperties: false``)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


STRING, INTEGER, NUMBER, BOOLEAN = ({"type": t} for t in ("string", "integer", "number", "boolean"))
TIME = {"type": "number", "description": "Unix time in seconds"}


def json_answer(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A response whose JSON body follows ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_answer(description: str) -> dict[str, Any]:
    """An error response (``{"error": "..."}``)."""
    return json_answer(ref("Error"), description)


UNAUTHORIZED = error_answer("missing or wrong bearer token")
BAD_REQUEST = error_answer("the request cannot be built: the message names the field and the problem")
NO_DEPLOYMENT = error_answer("model deployment is not running in this server, or its storage is unavailable")
