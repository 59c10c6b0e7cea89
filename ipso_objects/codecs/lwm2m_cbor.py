"""LwM2M CBOR (11544, ``application/vnd.oma.lwm2m+cbor``), LwM2M Core 1.2 §7.4.6.

A payload is one CBOR map read from the root of the object tree: its keys are
path ids and its values are either nested maps (one level deeper) or resource
values. A key may also be an array of ids that stands for several levels at
once, so ``{[3, 0]: {0: "Open Mobile Alliance"}}``, ``{3: {0: {0: ...}}}`` and
``{[3, 0, 0]: ...}`` say the same thing.

Decoding accepts any legal mix of single-id and array keys, definite or
indefinite lengths, and several keys that meet in the same map (they are
merged); two entries that land on the same path are an error.

Encoding picks one form so equal nodes give equal bytes (the form Anjay emits):
the request path is one key (a bare id for ``/o``, an array of ids for
deeper paths) and everything below it is nested maps keyed by single ids,
definite lengths, ids ascending. Composite payloads (several objects) nest
single-id maps from the root: ``{3: {0: {0: ...}}, 1: {0: {1: ...}}}``.

Values follow the model type (Core 1.2 Appendix C.2, "CBOR, LwM2M CBOR and
SenML CBOR"): String/Corelnk text string, Integer/Unsigned Integer CBOR
integers, Float the shortest of half/single/double that is lossless, Boolean,
Opaque byte string, Objlnk text ``"3:0"``. Time is "an unsigned integer or a
date/time string as defined in RFC 7049 §2.4.1": we send tag 1 (epoch
seconds) around an integer and accept a plain integer, tag 1 or a tag 0
RFC 3339 string. Floats may also arrive as decimal fractions (tag 4).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Mapping

import cbor2

from ..errors import DecodeError, EncodeError, ModelError
from ..model import ResourceType
from ..nodes import (
    MultiResource,
    Node,
    Object,
    ObjectInstance,
    Resource,
    ResourceInstance,
    check_node_path,
    flatten,
)
from ..path import MAX_ID, LwM2MPath
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
from .base import encode_errors

__all__ = ["encode", "decode", "encode_composite", "decode_composite"]

DATE_TIME_STRING_TAG = 0
EPOCH_TIME_TAG = 1
DECIMAL_FRACTION_TAG = 4

_MAX_PATH_DEPTH = 4
_MAX_CBOR_NESTING = 16
"""Root map + 4 levels + a tagged value leave plenty of room; deeper is garbage."""
_MAX_DECIMAL_EXPONENT = 1000
"""A decimal fraction beyond 10**±1000 is no float; refuse before computing it."""


@dataclass(frozen=True, slots=True, eq=False)
class _Tagged:
    """A CBOR tag kept as-is instead of cbor2's own Python object, so we can type-check it."""

    tag: int
    value: object


# cbor2 turns these tags into datetimes, Decimals, sets, shared references, ...:
# catch them all so only the three tags LwM2M uses survive, and value sharing
# (28/29) can never build a cyclic structure. Tag 55799 (self-describe) is left to cbor2,
# which drops it.
_CBOR2_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                        260, 261, 1004)
_KEEP_TAGS = {
    tag: (lambda value, immutable, tag=tag: _Tagged(tag, value)) for tag in _CBOR2_SEMANTIC_TAGS
}


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A resource (instance) value as it came off the wire, not yet typed."""

    raw: object


_Branch = dict  # id -> _Branch | _Leaf: one level of the merged object tree


# --------------------------------------------------------------------------- decode


def decode(data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> Node:
    """The node at ``path`` (1 to 4 ids) carried by an LwM2M CBOR payload."""
    if not 1 <= len(path) <= _MAX_PATH_DEPTH:
        raise DecodeError(f"LwM2M CBOR decodes /o, /o/i, /o/i/r or /o/i/r/ri, not {path}")
    entry: _Branch | _Leaf | None = _parse_tree(data)
    for depth, wanted in enumerate(path.ids):
        here = LwM2MPath(path.ids[:depth])
        if isinstance(entry, _Leaf):
            raise DecodeError(f"{here} holds a single value, so {path} is not in the payload")
        outside = next((key for key in entry if key != wanted), None)
        if outside is not None:
            raise DecodeError(f"{here.child(outside)} is outside the requested path {path}")
        entry = entry.get(wanted)
        if entry is None:
            return _absent_node(path, registry)
    return _node(entry, path, registry)


def decode_composite(data: bytes, registry: ObjectRegistry) -> dict[LwM2MPath, Value]:
    """Leaf values keyed by full path from a payload read from the root (Read-Composite etc.)."""
    values: dict[LwM2MPath, Value] = {}
    for object_id, branch in sorted(_parse_tree(data).items()):
        path = LwM2MPath.of(object_id)
        values.update(flatten(_node(branch, path, registry), path))
    return values


def _parse_tree(data: bytes) -> _Branch:
    root: _Branch = {}
    _merge_map(_load(data), (), root)
    return root


def _load(data: bytes) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"payload must be bytes, got {type(data).__name__}")
    payload = bytes(data)
    stream = io.BytesIO(payload)
    try:
        item = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_KEEP_TAGS,
            max_depth=_MAX_CBOR_NESTING,
            allow_duplicate_keys=False,
        ).decode()
    except Exception as error:  # cbor2 raises many kinds of errors on malformed input
        raise DecodeError(f"malformed CBOR: {error}") from None
    if stream.tell() != len(payload):
        raise DecodeError(f"{len(payload) - stream.tell()} bytes follow the CBOR map")
    if not isinstance(item, dict):
        raise DecodeError(f"an LwM2M CBOR payload is a map, got {_describe(item)}")
    return item


def _merge_map(cbor_map: dict, prefix: tuple[int, ...], branch: _Branch) -> None:
    """Fold one CBOR map found at ``prefix`` into the tree rooted at ``branch``."""
    for key, item in cbor_map.items():
        ids = prefix + _key_ids(key, prefix)
        if len(ids) > _MAX_PATH_DEPTH:
            raise DecodeError(f"{_show(ids)} is deeper than /object/instance/resource/instance")
        target = branch
        for depth in range(len(prefix), len(ids) - 1):
            target = _child_branch(target, ids[: depth + 1])
        last = ids[-1]
        existing = target.get(last)
        if isinstance(item, dict):
            if len(ids) == _MAX_PATH_DEPTH:
                raise DecodeError(
                    f"{_show(ids)} is a resource instance: expected a value, got a map")
            if isinstance(existing, _Leaf):
                raise DecodeError(f"{_show(ids)} has both a value and nested entries")
            if existing is None:
                existing = target[last] = {}
            _merge_map(item, ids, existing)
        else:
            if len(ids) < 3:
                raise DecodeError(
                    f"{_show(ids)} is an object or instance: expected a map, got {_describe(item)}")
            if isinstance(existing, dict):
                raise DecodeError(f"{_show(ids)} has both a value and nested entries")
            if existing is not None:
                raise DecodeError(f"{_show(ids)} appears more than once")
            target[last] = _Leaf(item)


def _key_ids(key: object, prefix: tuple[int, ...]) -> tuple[int, ...]:
    if type(key) is int:
        ids: tuple = (key,)
    elif isinstance(key, tuple) and key and all(type(i) is int for i in key):
        ids = key
    else:
        raise DecodeError(f"map key {_describe(key)} under {_show(prefix)} is not an id"
                          " or a non-empty array of ids")
    for value in ids:
        if not 0 <= value <= MAX_ID:
            raise DecodeError(f"id {value} under {_show(prefix)} is out of range 0..{MAX_ID}")
    return ids


def _child_branch(branch: _Branch, ids: tuple[int, ...]) -> _Branch:
    child = branch.get(ids[-1])
    if isinstance(child, _Leaf):
        raise DecodeError(f"{_show(ids)} has both a value and nested entries")
    if child is None:
        child = branch[ids[-1]] = {}
    return child


def _node(entry: _Branch | _Leaf, path: LwM2MPath, registry: ObjectRegistry) -> Node:
    """Type the merged tree below ``path``; leaves only sit at depth 3 or 4 (see _merge_map)."""
    if len(path) == 1:
        return Object(path.ids[0], {
            iid: _node(child, path.child(iid), registry) for iid, child in sorted(entry.items())
        })
    if len(path) == 2:
        return ObjectInstance(path.ids[1], {
            rid: _node(child, path.child(rid), registry) for rid, child in sorted(entry.items())
        })
    if len(path) == 3:
        multiple = _model_multiple(path, registry)
        if isinstance(entry, _Leaf):
            if multiple:
                raise DecodeError(
                    f"{path} is a multiple-instance resource: expected a map of instances")
            return Resource(path.ids[2], _decode_value(entry.raw, path, registry))
        if multiple is False:
            raise DecodeError(f"{path} is a single-instance resource: expected a value, got a map")
        return MultiResource(path.ids[2], {
            riid: _decode_value(leaf.raw, path.child(riid), registry)
            for riid, leaf in sorted(entry.items())
        })
    if _model_multiple(path, registry) is False:
        raise DecodeError(f"{path.parent} is a single-instance resource: no instance {path.ids[3]}")
    assert isinstance(entry, _Leaf)  # maps at depth 4 were refused by _merge_map
    return ResourceInstance(path.ids[3], _decode_value(entry.raw, path, registry))


def _absent_node(path: LwM2MPath, registry: ObjectRegistry) -> Node:
    """What a payload that never mentions ``path`` means: empty containers, or nothing."""
    if len(path) == 1:
        return Object(path.ids[0], {})
    if len(path) == 2:
        return ObjectInstance(path.ids[1], {})
    if len(path) == 3 and _model_multiple(path, registry):
        return MultiResource(path.ids[2], {})
    raise DecodeError(f"the payload has no value for {path}")


def _model_multiple(path: LwM2MPath, registry: ObjectRegistry) -> bool | None:
    """Whether the model says the resource at ``path`` has instances; None when it does not know."""
    definition = registry.resource_def(path)
    return None if definition is None else definition.multiple


def _decode_value(raw: object, path: LwM2MPath, registry: ObjectRegistry) -> Value:
    rtype = registry.value_type(path)
    try:
        return _natural_value(raw) if rtype is None else _typed_value(raw, rtype)
    except DecodeError as error:
        raise DecodeError(f"{path}: {error.reason}") from None


def _typed_value(raw: object, rtype: ResourceType) -> Value:
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        if isinstance(raw, str):
            return raw
    elif rtype in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER):
        if _is_int(raw):
            low = INT_MIN if rtype is ResourceType.INTEGER else 0
            high = INT_MAX if rtype is ResourceType.INTEGER else UINT_MAX
            if not low <= raw <= high:  # type: ignore[operator]
                raise DecodeError(f"{raw} is out of the {rtype.value} range {low}..{high}")
            return raw  # type: ignore[return-value]
    elif rtype is ResourceType.FLOAT:
        if _is_int(raw):
            return float(raw)  # type: ignore[arg-type]
        if isinstance(raw, float):
            return raw
        if isinstance(raw, _Tagged) and raw.tag == DECIMAL_FRACTION_TAG:
            return _decimal_fraction(raw.value)
    elif rtype is ResourceType.BOOLEAN:
        if isinstance(raw, bool):
            return raw
    elif rtype is ResourceType.OPAQUE:
        if isinstance(raw, bytes):
            return raw
    elif rtype is ResourceType.TIME:
        time = _time_value(raw)
        if time is not None:
            return time
    elif rtype is ResourceType.OBJLNK:
        if isinstance(raw, str):
            return ObjLnk.parse(raw)
    raise DecodeError(f"{rtype.value} resource cannot be {_describe(raw)}")


def _natural_value(raw: object) -> Value:
    """A value of a resource the model does not know, typed by its CBOR major type."""
    if isinstance(raw, (bool, float, str, bytes)):
        return raw
    if _is_int(raw):
        if not INT_MIN <= raw <= UINT_MAX:  # type: ignore[operator]
            raise DecodeError(f"integer {raw} does not fit 64 bits")
        return raw  # type: ignore[return-value]
    if isinstance(raw, _Tagged) and raw.tag == DECIMAL_FRACTION_TAG:
        return _decimal_fraction(raw.value)
    time = _time_value(raw) if isinstance(raw, _Tagged) else None
    if time is not None:
        return time
    raise DecodeError(f"{_describe(raw)} is not a resource value")


def _time_value(raw: object) -> datetime | None:
    """Time from a plain integer, tag 1 (epoch seconds) or tag 0 (RFC 3339); None if neither."""
    if _is_int(raw):
        return time_from_seconds(raw)  # type: ignore[arg-type]
    if not isinstance(raw, _Tagged):
        return None
    if raw.tag == EPOCH_TIME_TAG:
        if _is_int(raw.value):
            return time_from_seconds(raw.value)  # type: ignore[arg-type]
        if isinstance(raw.value, float) and math.isfinite(raw.value):
            return time_from_seconds(math.floor(raw.value))
        raise DecodeError(f"tag 1 must hold a number of seconds, got {_describe(raw.value)}")
    if raw.tag == DATE_TIME_STRING_TAG and isinstance(raw.value, str):
        try:
            parsed = datetime.fromisoformat(raw.value)
        except ValueError:
            raise DecodeError(f"{raw.value[:40]!r} is not an RFC 3339 date/time") from None
        if parsed.tzinfo is None:
            raise DecodeError(f"date/time {raw.value[:40]!r} has no UTC offset")
        try:
            return coerce(parsed, ResourceType.TIME)  # type: ignore[return-value]
        except (ModelError, OverflowError, ValueError) as error:
            raise DecodeError(f"date/time {raw.value[:40]!r}: {error}") from None
    return None


def _decimal_fraction(value: object) -> float:
    """RFC 8949 §3.4.4 decimal fraction ``[exponent, mantissa]`` as a float."""
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(part) for part in value)):
        raise DecodeError("a decimal fraction (tag 4) must be [integer exponent, integer mantissa]")
    exponent, mantissa = value
    if abs(exponent) > _MAX_DECIMAL_EXPONENT:
        raise DecodeError(f"decimal fraction exponent {exponent} is out of range")
    try:
        number = float(Decimal(mantissa).scaleb(exponent))
    except ArithmeticError:  # decimal.Overflow and friends
        raise DecodeError("decimal fraction does not fit a 64-bit float") from None
    if not math.isfinite(number):
        raise DecodeError("decimal fraction overflows a 64-bit float")
    return number


def _is_int(raw: object) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)


def _describe(item: object) -> str:
    """Short name of a CBOR item for error messages (never the whole item)."""
    if isinstance(item, (_Tagged, cbor2.CBORTag)):
        return f"tag {item.tag}"
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a text string",
             bytes: "a byte string", list: "an array", tuple: "an array", dict: "a map",
             type(None): "null"}
    name = names.get(type(item), f"a {type(item).__name__}")
    if isinstance(item, (bool, int, float)):
        return f"{name} ({item!r:.40})"
    return name


def _show(ids: tuple[int, ...]) -> str:
    return "/" + "/".join(str(i) for i in ids)


# --------------------------------------------------------------------------- encode


def encode(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    """``node`` addressed by ``path`` as ``{path-key: value-or-nested-maps}``."""
    with encode_errors():
        check_node_path(node, path)
        body = _encode_node(node, path, registry)
    key: int | tuple[int, ...] = path.ids[0] if len(path) == 1 else path.ids
    return _dump({key: body})


def encode_composite(values: Mapping[LwM2MPath, Value], registry: ObjectRegistry) -> bytes:
    """Leaf values keyed by full path as single-id maps nested from the root."""
    root: dict = {}
    for path in sorted(_checked_paths(values)):
        if len(path) < 3:
            raise EncodeError(f"value at {path} is not at a resource or resource instance path")
        _check_leaf_multiplicity(path, registry)
        target = root
        for depth, child_id in enumerate(path.ids[:-1]):
            target = target.setdefault(child_id, {})
            if not isinstance(target, dict):
                raise EncodeError(f"{LwM2MPath(path.ids[: depth + 1])} has a value and also {path}")
        if path.ids[-1] in target:
            raise EncodeError(f"{path} has a value and also resource instances")
        target[path.ids[-1]] = _encode_value(values[path], path, registry)
    return _dump(root)


def _checked_paths(values: Mapping[LwM2MPath, Value]) -> list[LwM2MPath]:
    paths = list(values)
    for path in paths:
        if not isinstance(path, LwM2MPath):
            raise EncodeError(f"composite keys must be LwM2MPath, got {type(path).__name__}")
    return paths


def _encode_node(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> object:
    if isinstance(node, Object):
        return {iid: _encode_child(node.instances[iid], iid, ObjectInstance, path, registry)
                for iid in sorted(node.instances)}
    if isinstance(node, ObjectInstance):
        return {rid: _encode_child(node.resources[rid], rid, (Resource, MultiResource), path,
                                   registry)
                for rid in sorted(node.resources)}
    if isinstance(node, MultiResource):
        if _model_multiple(path, registry) is False:
            raise EncodeError(f"{path} is a single-instance resource, not a MultiResource")
        return {riid: _encode_value(node.instances[riid], path.child(riid), registry)
                for riid in sorted(node.instances)}
    _check_leaf_multiplicity(path, registry)
    return _encode_value(node.value, path, registry)  # Resource or ResourceInstance


def _encode_child(child: Node, child_id: int, kinds: type | tuple, parent: LwM2MPath,
                  registry: ObjectRegistry) -> object:
    path = parent.child(child_id)
    if not isinstance(child, kinds):
        raise EncodeError(f"{path}: {type(child).__name__} cannot sit at this depth")
    if child.id != child_id:
        raise EncodeError(f"{path}: node keyed {child_id} has id {child.id}")
    return _encode_node(child, path, registry)


def _check_leaf_multiplicity(path: LwM2MPath, registry: ObjectRegistry) -> None:
    multiple = _model_multiple(path, registry)
    if len(path) == 3 and multiple:
        raise EncodeError(f"{path} is a multiple-instance resource: give its instances")
    if len(path) == 4 and multiple is False:
        raise EncodeError(f"{path.parent} is a single-instance resource: no instance {path.ids[3]}")


def _encode_value(value: Value, path: LwM2MPath, registry: ObjectRegistry) -> object:
    rtype = registry.value_type(path)
    try:
        value = coerce(value, rtype)
        kind = rtype or infer_type(value)
    except ModelError as error:
        raise EncodeError(f"{path}: {error.reason}") from None
    if kind is ResourceType.TIME:
        return cbor2.CBORTag(EPOCH_TIME_TAG, time_to_seconds(value))  # type: ignore[arg-type]
    if kind is ResourceType.OBJLNK:
        return str(value)
    return value


def _dump(item: object) -> bytes:
    try:
        # canonical: shortest lossless float width and ids in ascending order
        return cbor2.dumps(item, canonical=True)
    except Exception as error:  # e.g. a string with lone surrogates
        raise EncodeError(f"cannot encode as CBOR: {error}") from None
