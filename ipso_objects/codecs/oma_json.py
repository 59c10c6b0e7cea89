"""OMA JSON (11543, ``application/vnd.oma.lwm2m+json``): LwM2M 1.0 JSON (Core 1.0 §6.4.4).

LwM2M 1.0 clients send it; LwM2M 1.1 replaced it with SenML JSON. A payload is

    {"bn": "/3/0/", "bt": 25462634,
     "e": [{"n": "0", "sv": "Open Mobile Alliance"}, {"n": "6/0", "v": 1, "t": -5}, ...]}

An entry's path is ``bn`` + ``n`` (plain concatenation, as in SenML; a missing
leading ``/`` is tolerated). Without ``bn`` a name that does not start with
``/`` is relative to the request path, as Wakaama sends it. An entry's time
is ``bt`` + ``t``. Its value sits in exactly
one of ``v`` (Integer, Unsigned Integer, Float, Time in seconds), ``bv``
(Boolean), ``ov`` (Objlnk ``"3:0"``) or ``sv`` (String, Corelnk, and Opaque
as base64, per the 1.0 data type table).

The format only carries leaf values: empty multi-instance resources cannot
be expressed (they encode to nothing). An object whose one instance is empty
(a Create of an instance without resources, ``POST /o``) is written with the
instance as base name and no entries, ``{"bn":"/o/i/","e":[]}``, so the id is
not lost, and read back so; an empty instance beside others is an
:class:`EncodeError`.

Encoding: compact JSON, ``bn`` then ``e``; a payload for an object, instance
or multi-instance resource has ``bn`` = path + ``/`` and names relative to it,
one for a single value has ``bn`` = its path and no ``n`` (the form of the
spec examples and Leshan).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import DecodeError, EncodeError, ModelError, PathError
from ..model import ResourceType
from ..nodes import MultiResource, Node, Object, ObjectInstance, build, flatten
from ..path import LwM2MPath
from ..registry import ObjectRegistry
from ..values import (
    INT_MAX,
    INT_MIN,
    UINT_MAX,
    ObjLnk,
    Value,
    coerce,
    infer_type,
    time_from_seconds,
    time_to_seconds,
)
from .base import TimestampedValues, decode_errors, encode_errors

__all__ = ["encode", "decode", "encode_timestamped", "decode_timestamped"]

VALUE_FIELDS = ("v", "sv", "bv", "ov")

_FIELD_OF_TYPE = {
    ResourceType.STRING: "sv",
    ResourceType.CORELNK: "sv",
    ResourceType.OPAQUE: "sv",
    ResourceType.INTEGER: "v",
    ResourceType.UNSIGNED_INTEGER: "v",
    ResourceType.FLOAT: "v",
    ResourceType.TIME: "v",
    ResourceType.BOOLEAN: "bv",
    ResourceType.OBJLNK: "ov",
}


@dataclass(frozen=True, slots=True)
class _Record:
    """One entry of ``e`` with its name and time resolved, value not yet typed."""

    path: LwM2MPath
    """Full path: ``bn`` + ``n``."""
    field: str
    """Which value field carried the value (``v``, ``sv``, ``bv`` or ``ov``)."""
    raw: object
    """The JSON value as parsed."""
    time: float | None
    """``bt`` + ``t``; None when the payload has neither."""


# --------------------------------------------------------------------------- decode


def decode(data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> Node:
    """The node at ``path`` (1 to 4 ids) carried by an OMA JSON payload."""
    if not 1 <= len(path) <= 4:
        raise DecodeError(f"OMA JSON decodes /o, /o/i, /o/i/r or /o/i/r/ri, not {path}")
    leaves: dict[LwM2MPath, Value] = {}
    records, base_name = _records(data, path)
    for record in records:
        _check_inside(record.path, path)
        if record.path in leaves:
            raise DecodeError(
                f"{record.path} appears more than once (a history needs decode_timestamped)")
        leaves[record.path] = _decode_value(record, registry)
    if not records and len(path) == 1:
        instance = _instance_named(base_name, path)
        if instance is not None:
            return Object(path.ids[0], {instance: ObjectInstance(instance, {})})
    with decode_errors():
        return build(path, leaves, registry)


def _instance_named(base_name: str, path: LwM2MPath) -> int | None:
    """The instance id when ``bn`` names an object instance of ``path`` (``"/3303/7/"``)."""
    try:
        named = LwM2MPath.parse(base_name if base_name.startswith("/") else "/" + base_name)
    except PathError:
        return None
    return named.ids[1] if len(named) == 2 and named.startswith(path) else None


def decode_timestamped(
    data: bytes, path: LwM2MPath, registry: ObjectRegistry
) -> list[TimestampedValues]:
    """Leaf values under ``path`` grouped by time (``bt`` + ``t``), in order of first appearance."""
    groups: dict[float | None, dict[LwM2MPath, Value]] = {}
    for record in _records(data, path)[0]:
        _check_inside(record.path, path)
        values = groups.setdefault(record.time, {})
        if record.path in values:
            raise DecodeError(f"{record.path} appears twice at time {record.time}")
        values[record.path] = _decode_value(record, registry)
    return [TimestampedValues(time, values) for time, values in groups.items()]


def _records(data: bytes, request: LwM2MPath) -> tuple[list[_Record], str]:
    """The entries with name and time resolved, and the base name they were resolved against."""
    document = _load(data)
    if not isinstance(document, dict):
        raise DecodeError(f"an OMA JSON payload is a JSON object, got {_describe(document)}")
    relative_to_request = "bn" not in document
    base_name = document.get("bn", "" if request.is_root else f"{request}/")
    if not isinstance(base_name, str):
        raise DecodeError(f"'bn' must be a string, got {_describe(base_name)}")
    base_time = _optional_number(document, "bt", "")
    entries = document.get("e")
    if not isinstance(entries, list):
        raise DecodeError(f"'e' must be an array of entries, got {_describe(entries)}")
    return [_record(entry, index, base_name, relative_to_request, base_time)
            for index, entry in enumerate(entries)], base_name


def _record(entry: object, index: int, base_name: str, relative_to_request: bool,
            base_time: float | None) -> _Record:
    where = f"e[{index}]"
    if not isinstance(entry, dict):
        raise DecodeError(f"{where} must be an object, got {_describe(entry)}")
    name = entry.get("n", "")
    if not isinstance(name, str):
        raise DecodeError(f"{where}: 'n' must be a string, got {_describe(name)}")
    full_name = name if relative_to_request and name.startswith("/") else base_name + name
    try:
        path = LwM2MPath.parse(full_name if full_name.startswith("/") else "/" + full_name)
    except PathError as error:
        raise DecodeError(f"{where}: {error.reason}") from None
    if len(path) < 3:
        raise DecodeError(f"{where}: {path} is not a resource or resource instance path")
    fields = [field for field in VALUE_FIELDS if field in entry]
    if len(fields) != 1:
        found = ", ".join(fields) or "none"
        raise DecodeError(f"{where} ({path}) needs exactly one of v, sv, bv, ov; found {found}")
    time = _optional_number(entry, "t", f"{where}: ")
    if base_time is not None or time is not None:
        time = (base_time or 0.0) + (time or 0.0)
        if not math.isfinite(time):
            raise DecodeError(f"{where}: 'bt' + 't' overflows a 64-bit float")
    return _Record(path, fields[0], entry[fields[0]], time)


def _check_inside(leaf: LwM2MPath, path: LwM2MPath) -> None:
    if not leaf.startswith(path):
        raise DecodeError(f"{leaf} is outside the requested path {path}")


def _load(data: bytes) -> object:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"payload must be bytes, got {type(data).__name__}")
    try:
        return json.loads(
            bytes(data).decode("utf-8"),
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as error:  # bad UTF-8, bad JSON, too many digits
        raise DecodeError(f"malformed JSON: {error}") from None


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise DecodeError(f"key {key[:40]!r} appears twice in one JSON object")
        document[key] = value
    return document


def _reject_constant(name: str) -> object:
    raise DecodeError(f"{name} is not a JSON number")


def _optional_number(document: dict, key: str, where: str) -> float | None:
    """``document[key]`` as a finite float, None when absent."""
    if key not in document:
        return None
    value = document[key]
    if _is_int(value) or isinstance(value, float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise DecodeError(f"{where}'{key}' must be a finite number, got {_describe(value)}")


def _decode_value(record: _Record, registry: ObjectRegistry) -> Value:
    rtype = registry.value_type(record.path)
    multiple = _model_multiple(record.path, registry)
    problem = _multiplicity_problem(record.path, multiple)
    try:
        if problem:
            raise DecodeError(problem)
        if rtype is None:
            return _natural_value(record.field, record.raw)
        return _typed_value(record.field, record.raw, rtype)
    except DecodeError as error:
        raise DecodeError(f"{record.path}: {error.reason}") from None


def _typed_value(field: str, raw: object, rtype: ResourceType) -> Value:
    expected = _FIELD_OF_TYPE[rtype]
    objlnk_as_text = rtype is ResourceType.OBJLNK and field == "sv"  # what some 1.0 clients send
    if field != expected and not objlnk_as_text:
        raise DecodeError(f"{rtype.value} value belongs in '{expected}', got '{field}'")
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        return _text(raw)
    if rtype is ResourceType.OPAQUE:
        return _from_base64(_text(raw))
    if rtype is ResourceType.OBJLNK:
        return ObjLnk.parse(_text(raw))
    if rtype is ResourceType.BOOLEAN:
        return _boolean(raw)
    if rtype is ResourceType.FLOAT:
        return _float(raw)
    seconds_or_integer = _whole_number(raw)
    if rtype is ResourceType.TIME:
        return time_from_seconds(seconds_or_integer)
    low, high = (INT_MIN, INT_MAX) if rtype is ResourceType.INTEGER else (0, UINT_MAX)
    if not low <= seconds_or_integer <= high:
        raise DecodeError(f"{seconds_or_integer} is out of the {rtype.value} range {low}..{high}")
    return seconds_or_integer


def _natural_value(field: str, raw: object) -> Value:
    """A value of a resource the model does not know, typed by the field that carries it."""
    if field == "v":
        if _is_int(raw):
            if not INT_MIN <= raw <= UINT_MAX:  # type: ignore[operator]
                raise DecodeError(f"integer {raw} does not fit 64 bits")
            return raw  # type: ignore[return-value]
        return _float(raw)
    if field == "bv":
        return _boolean(raw)
    if field == "ov":
        return ObjLnk.parse(_text(raw))
    return _text(raw)


def _text(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    raise DecodeError(f"expected a string, got {_describe(raw)}")


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    raise DecodeError(f"expected true or false, got {_describe(raw)}")


def _float(raw: object) -> float:
    if _is_int(raw):
        try:
            return float(raw)  # type: ignore[arg-type]
        except OverflowError:
            raise DecodeError("integer overflows a 64-bit Float") from None
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise DecodeError("number overflows a 64-bit Float")
        return raw
    raise DecodeError(f"expected a number, got {_describe(raw)}")


def _whole_number(raw: object) -> int:
    """An integer, also when a client wrote it as ``100.0`` or ``1e2``."""
    if _is_int(raw):
        return raw  # type: ignore[return-value]
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return int(raw)
    raise DecodeError(f"expected a whole number, got {_describe(raw)}")


def _from_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        raise DecodeError(f"{text[:40]!r} is not base64") from None


def _is_int(raw: object) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)


def _describe(item: object) -> str:
    """Short JSON type name for error messages (never the whole item)."""
    if isinstance(item, bool):
        return f"a boolean ({item!r})"
    if _is_int(item) or isinstance(item, float):
        return f"a number ({item!r:.40})"
    names = {str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(item), type(item).__name__)


def _model_multiple(path: LwM2MPath, registry: ObjectRegistry) -> bool | None:
    definition = registry.resource_def(path)
    return None if definition is None else definition.multiple


def _multiplicity_problem(leaf: LwM2MPath, multiple: bool | None) -> str | None:
    """Why a value at ``leaf`` contradicts the model's multiplicity, or None when it does not."""
    if len(leaf) == 3 and multiple:
        return f"{leaf} is a multiple-instance resource: its values need instance ids"
    if len(leaf) == 4 and multiple is False:
        return f"{leaf.parent} is a single-instance resource: it has no instance {leaf.ids[3]}"
    return None


# --------------------------------------------------------------------------- encode


def encode(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    """``node`` addressed by ``path`` as ``{"bn": ..., "e": [...]}``."""
    with encode_errors():
        leaves = flatten(node, path)
    if isinstance(node, Object):
        empty = sorted(set(node.instances) - {leaf.ids[1] for leaf in leaves})
        if empty and len(node.instances) == 1:
            return _dump({"bn": f"{path.child(empty[0])}/", "e": []})
        if empty:
            raise EncodeError(f"{path.child(empty[0])} has no resources: OMA JSON cannot carry "
                              "an empty object instance beside others")
    container = len(path) <= 2 or isinstance(node, MultiResource)
    base_name = f"{path}/" if container else str(path)
    entries = [
        _entry(leaf, value, registry, _relative_name(leaf, path) if container else None, None)
        for leaf, value in leaves.items()
    ]
    return _dump({"bn": base_name, "e": entries})


def encode_timestamped(entries: Sequence[TimestampedValues], registry: ObjectRegistry) -> bytes:
    """Groups of leaf values with their times as entries with ``t``, under one common ``bn``."""
    leaves = [leaf for group in entries for leaf in group.values]
    for leaf in leaves:
        if not isinstance(leaf, LwM2MPath) or len(leaf) < 3:
            raise EncodeError(f"timestamped values need resource paths, got {leaf!r}")
    if not leaves:
        return _dump({"e": []})
    prefix = _common_prefix(leaves)
    single = all(leaf == leaves[0] for leaf in leaves)
    base_name = str(prefix) if single else ("/" if prefix.is_root else f"{prefix}/")
    records = []
    for group in entries:
        if group.time is not None and not math.isfinite(group.time):
            raise EncodeError(f"time {group.time} is not a finite number")
        for leaf in sorted(group.values):
            name = None if single else _relative_name(leaf, prefix)
            records.append(_entry(leaf, group.values[leaf], registry, name, group.time))
    return _dump({"bn": base_name, "e": records})


def _entry(leaf: LwM2MPath, value: Value, registry: ObjectRegistry, name: str | None,
           time: float | None) -> dict[str, object]:
    rtype = registry.value_type(leaf)
    problem = _multiplicity_problem(leaf, _model_multiple(leaf, registry))
    if problem:
        raise EncodeError(problem)
    try:
        value = coerce(value, rtype)
        kind = rtype or infer_type(value)
    except ModelError as error:
        raise EncodeError(f"{leaf}: {error.reason}") from None
    entry: dict[str, object] = {} if name is None else {"n": name}
    if kind is ResourceType.OPAQUE:
        entry["sv"] = base64.b64encode(value).decode("ascii")  # type: ignore[arg-type]
    elif kind is ResourceType.TIME:
        entry["v"] = time_to_seconds(value)  # type: ignore[arg-type]
    elif kind is ResourceType.OBJLNK:
        entry["ov"] = str(value)
    elif kind is ResourceType.FLOAT and not math.isfinite(value):  # type: ignore[arg-type]
        raise EncodeError(f"{leaf}: JSON has no number for {value}")
    else:
        entry[_FIELD_OF_TYPE[kind]] = value
    if time is not None:
        entry["t"] = int(time) if float(time).is_integer() else time
    return entry


def _relative_name(leaf: LwM2MPath, base: LwM2MPath) -> str:
    return "/".join(str(i) for i in leaf.ids[len(base):])


def _common_prefix(paths: list[LwM2MPath]) -> LwM2MPath:
    ids = paths[0].ids
    for path in paths[1:]:
        length = 0
        while length < min(len(ids), len(path)) and ids[length] == path.ids[length]:
            length += 1
        ids = ids[:length]
    return LwM2MPath(ids)


def _dump(document: dict) -> bytes:
    try:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (ValueError, TypeError) as error:  # UnicodeEncodeError is a ValueError
        raise EncodeError(f"cannot encode as JSON: {error}") from None
