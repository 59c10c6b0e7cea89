"""Human-readable forms of values for the CLI and API: ``/3/0/0 Manufacturer = "Acme"``."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from ipso_objects import IpsoError, LwM2MPath, ObjectRegistry, ObjLnk, Value
from ipso_objects.nodes import (
    MultiResource, Node, Object, ObjectInstance, Resource, ResourceInstance, check_node_path,
)

from ..core.operations import OperationError

_HEX_SHOWN = 32


def format_value(value: Value) -> str:
    """A value for people: strings quoted, opaque as ``0x`` hex with its length
    (``0x63 (1 byte)``, so it is never mistaken for a number), time ISO 8601 UTC."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bytes, bytearray)):
        size = f"{len(value)} byte" if len(value) == 1 else f"{len(value)} bytes"
        if not value:
            return f"({size})"
        more = "…" if len(value) > _HEX_SHOWN else ""
        return f"0x{bytes(value[:_HEX_SHOWN]).hex()}{more} ({size})"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, ObjLnk):
        return str(value)
    return str(value)


def format_bytes(size: int | float) -> str:
    """``512 bytes``, ``1 byte``, ``16384 bytes (16 KB)``, ``3145728 bytes (3 MB)``."""
    number = int(size) if float(size).is_integer() else size
    text = f"{number} byte" if size == 1 else f"{number} bytes"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(size) >= scale:
            return f"{text} ({size / scale:.3g} {unit})"
    return text


def with_units(value: Value, units: str) -> str:
    """A number with the unit its resource declares (DDF ``<Units>``): bytes also in KB
    or MB, microseconds also in ms; other units as written (``95 %``, ``21.5 Cel``)."""
    shown = format_value(value)
    if not units or isinstance(value, bool) or not isinstance(value, (int, float)):
        return shown
    if units == "B":
        return format_bytes(value)
    if units == "us":
        return f"{shown} us ({value / 1000:.3g} ms)"
    return f"{shown} {'%' if units == '/100' else units}"


def _label(path: LwM2MPath, registry: ObjectRegistry) -> str:
    """``/3/0/6/0 Available Power Sources[0]``; the path alone when the model lacks it."""
    definition = registry.resource_def(path)
    if definition is None:
        return str(path)
    if len(path) == 4:
        return f"{path} {definition.name}[{path.ids[3]}]"
    return f"{path} {definition.name}"


def describe(path: LwM2MPath, value: Value, registry: ObjectRegistry) -> str:
    """``/3/0/0 Manufacturer = "Acme"``; a number with its unit, ``/3/0/9 Battery Level = 95 %``."""
    definition = registry.resource_def(path)
    return f"{_label(path, registry)} = {with_units(value, definition.units if definition else '')}"


def flat_lines(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> list[str]:
    """One :func:`describe` line per value under ``node``, in id order; empty
    containers get a line of their own so that nothing read is invisible."""
    try:
        check_node_path(node, path)
    except IpsoError as error:
        raise OperationError(error.reason) from None
    lines: list[str] = []
    _lines(node, path, registry, lines)
    return lines


def _lines(node: Node, path: LwM2MPath, registry: ObjectRegistry, lines: list[str]) -> None:
    if isinstance(node, (Resource, ResourceInstance)):
        lines.append(describe(path, node.value, registry))
    elif isinstance(node, MultiResource):
        if not node.instances:
            lines.append(f"{_label(path, registry)} = (no instances)")
        for ri in sorted(node.instances):
            lines.append(describe(path.child(ri), node.instances[ri], registry))
    elif isinstance(node, ObjectInstance):
        if not node.resources:
            lines.append(f"{path} (no resources)")
        for rid in sorted(node.resources):
            _lines(node.resources[rid], path.child(rid), registry, lines)
    elif isinstance(node, Object):
        if not node.instances:
            lines.append(f"{path} (no instances)")
        for iid in sorted(node.instances):
            _lines(node.instances[iid], path.child(iid), registry, lines)

