"""Request bodies of the management API, checked field by field.

A body that is not JSON, not a JSON object, has a field of the wrong type or a
field the route does not know is a 400 whose message names the field and what
it must be (``strategy.max_in_flight: must be an integer, got "ten"``), never
a Python error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Iterable

from aiohttp import web

from ..ota.rollouts import RolloutError, Selector, Strategy
from .errors import ApiError

ROLLOUT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""Rollout ids appear in URLs (``/rollouts/{id}``); the same rule as in the config file."""


def kind(value: Any) -> str:
    """A JSON value's type in words, with the value when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}" if len(value) <= 40 else "a long string"
    return "a list" if isinstance(value, list) else "an object"


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; with ``optional`` an empty body is ``{}``."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:  # its message names a position, never the text
        raise ApiError(400, f"body is not JSON: {error.msg} at character {error.pos}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"body must be a JSON object, got {kind(body)}")
    return body


def check_fields(body: dict[str, Any], known: Iterable[str], where: str = "body") -> None:
    """400 naming the fields of ``body`` that are not in ``known``."""
    known = list(known)
    unknown = sorted(set(body) - set(known))
    if unknown:
        listed = ", ".join(known) if known else "none"
        raise ApiError(400, f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {listed}")


def optional_string(body: dict[str, Any], name: str, where: str = "") -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{where}{name}: must be a string, got {kind(value)}")
    return value


def boolean(body: dict[str, Any], name: str, default: bool, where: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{where}{name}: must be true or false, got {kind(value)}")
    return value


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ApiError(400, f"{name}: must be a list of strings, got {kind(value)}")
    return tuple(value)


def selector(raw: Any) -> Selector:
    """``{"device_classes": [...], "endpoints": [...], "labels": {key: value}}``, each optional."""
    if raw is None:
        return Selector()
    if not isinstance(raw, dict):
        raise ApiError(400, f"selector: must be an object, got {kind(raw)}")
    check_fields(raw, ("device_classes", "endpoints", "labels"), "selector")
    labels = raw.get("labels")
    labels = {} if labels is None else labels
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ApiError(400, f"selector.labels: must be an object of strings, got {kind(labels)}")
    return Selector(_strings(raw.get("device_classes"), "selector.device_classes"),
                    _strings(raw.get("endpoints"), "selector.endpoints"), dict(labels))


def strategy(raw: Any) -> Strategy:
    """Any of :class:`Strategy`'s fields, each of its default's type (a whole number
    does for a float); null or absent keeps the default."""
    if raw is None:
        return Strategy()
    if not isinstance(raw, dict):
        raise ApiError(400, f"strategy: must be an object, got {kind(raw)}")
    fields = {field.name: field.default for field in dataclasses.fields(Strategy)}
    check_fields(raw, fields, "strategy")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            continue
        default = fields[name]
        if isinstance(default, bool):
            ok, wanted = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, wanted = type(value) is int, "an integer"
        elif isinstance(default, float):
            ok, wanted = type(value) in (int, float) and math.isfinite(value), "a finite number"
        else:
            ok, wanted = isinstance(value, str), "a string"
        if not ok:
            raise ApiError(400, f"strategy.{name}: must be {wanted}, got {kind(value)}")
        values[name] = value
    try:
        return Strategy(**values)
    except RolloutError as error:  # out of range: "max_in_flight must be > 0, got 0"
        name, _, problem = str(error).partition(" ")
        raise ApiError(400, f"strategy.{name}: {problem}") from None


def rollout(body: dict[str, Any]) -> tuple[str, Selector, Strategy, str | None]:
    """``POST /rollouts``: ``{"model": "name@version", "selector": {...}, "strategy":
    {...}, "id": "...", "follow": bool}`` (``follow`` is short for ``strategy.follow``)."""
    check_fields(body, ("model", "selector", "strategy", "id", "follow"))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, f"model: give the model as \"name@version\", got {kind(model)}")
    rollout_id = optional_string(body, "id")
    if rollout_id is not None and not ROLLOUT_ID.fullmatch(rollout_id):
        raise ApiError(400, f"id: use 1..64 letters, digits, '.', '_' or '-', got {kind(rollout_id)}")
    raw_strategy = body.get("strategy")
    if "follow" in body:
        follow = boolean(body, "follow", False)
        if raw_strategy is None:
            raw_strategy = {}
        if isinstance(raw_strategy, dict):
            raw_strategy = {**raw_strategy, "follow": follow}
    return model, selector(body.get("selector")), strategy(raw_strategy), rollout_id
