"""SenML as LwM2M uses it: the record model shared by SenML JSON (110) and SenML CBOR (112).

RFC 8428 defines a *pack* as a list of *records*; LwM2M (Core 1.1 §7.4.4 and
§7.4.5) names each value by its path (``bn`` + ``n``) and adds the ``vlo``
field for object links. Here a record is a ``dict`` keyed by the SenML text
labels (``"bn"``, ``"n"``, ``"v"``, ...), with ``"vd"`` holding ``bytes``. The
format modules only turn bytes into such packs and back; everything else
(base fields, paths, the object model, times) lives here.

Value fields by LwM2M type: Integer, Unsigned Integer, Float and Time use
``v`` (Time as Unix seconds), String and Corelnk ``vs``, Boolean ``vb``,
Opaque ``vd`` and Objlnk ``vlo`` (``"3:0"``).

Shapes written, as in the Core 1.1 §7.4.4 examples:

- a node read at ``/o/i``: ``bn`` ``"/o/i/"`` on the first record, then
  relative names ``"r"`` and ``"r/ri"`` (Table 7.4.4-2); a single resource or
  resource instance: only ``bn``, the full path (Table 7.4.4-5);
- composite values and path lists: the full path in ``n`` (Tables 7.4.4-6..8);
- an object instance without resources inside a node read at ``/o`` (a Create of an
  empty instance: ``POST /o``): a record without a value whose name is the instance,
  ``"/o/i/"``, so the instance id is not lost (an empty pack would leave the
  client to pick the id, cf. OMA LwM2M_for_Developers issue #422). Decoding a
  node at ``/o`` or ``/o/i`` accepts such a record (``/o/i`` or ``/o/i/``);
- timestamped values: as composite, with ``bt`` on the first record of each
  timestamp (``bt`` applies to the records after it, RFC 8428 §4.5.3).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from ..errors import DecodeError, EncodeError, ModelError, PathError
from ..model import ResourceType
from ..nodes import Node, Object, ObjectInstance, Resource, ResourceInstance, build, flatten
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
    show_number,
    time_from_seconds,
    time_to_seconds,
)
from .base import SENML_RELATIVE_TIME_LIMIT, TimestampedValues, decode_errors, encode_errors

Record = dict[str, object]
"""One SenML record keyed by its text label; ``"vd"`` holds bytes."""

Number = int | float

SENML_VERSION = 10
"""The SenML version of RFC 8428; a pack claiming a later one must not be used (§4.4)."""

VALUE_LABELS = ("v", "vs", "vb", "vd", "vlo")
"""The fields that carry a record's value; exactly one may appear."""
_VALUE_LABEL_SET = frozenset(VALUE_LABELS)

_TEXT_LABELS = frozenset({"bn", "n", "bu", "u", "vs", "vlo"})
_NUMBER_LABELS = frozenset({"bt", "t", "bv", "v", "bs", "s", "ut"})
_PATH_LIST_FORBIDDEN = ("bt", "t", "bv", "bs", "s", *VALUE_LABELS)

_LABEL_OF_TYPE = {
    ResourceType.INTEGER: "v",
    ResourceType.UNSIGNED_INTEGER: "v",
    ResourceType.FLOAT: "v",
    ResourceType.TIME: "v",
    ResourceType.STRING: "vs",
    ResourceType.CORELNK: "vs",
    ResourceType.BOOLEAN: "vb",
    ResourceType.OPAQUE: "vd",
    ResourceType.OBJLNK: "vlo",
}


# --- RFC 8428: records and their base fields -------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedRecord:
    """A record with the base fields that precede it applied (RFC 8428 §4.6)."""

    name: str
    """Base name + name."""
    time: Number | None
    """Base time + time; None when neither was given."""
    unit: str | None
    """Unit, or the base unit; LwM2M ignores it."""
    label: str | None
    """Which value field carried the value (``"v"``, ``"vs"``, ...); None when none did."""
    value: object
    """The value as carried; for ``v`` the base value is already added."""


def resolve(pack: Sequence[Mapping[str, object]]) -> list[ResolvedRecord]:
    """Check every record and apply base name, time, unit and value to it.

    Base fields apply to their own record and every later one until replaced.
    Unknown fields are ignored unless their label ends in ``_`` (RFC 8428 §4.4).
    """
    base_name = ""
    base_time: Number | None = None
    base_unit: str | None = None
    base_value: Number | None = None
    resolved = []
    for index, record in enumerate(pack):
        label = _check_fields(record, index)
        base_name = record.get("bn", base_name)  # type: ignore[assignment]
        base_time = record.get("bt", base_time)  # type: ignore[assignment]
        base_unit = record.get("bu", base_unit)  # type: ignore[assignment]
        base_value = record.get("bv", base_value)  # type: ignore[assignment]
        time = record.get("t")
        if base_time is not None or time is not None:
            time = _time_of(base_time, time, f"record #{index}")  # type: ignore[arg-type]
        value = record[label] if label else None
        if base_value is not None and label in ("v", None):
            # A missing value counts as zero when a base value is set (§4.5.4).
            label, value = "v", _add(base_value, value or 0, f"record #{index}")  # type: ignore[arg-type]
        name = base_name + record.get("n", "")  # type: ignore[operator]
        unit = record.get("u", base_unit)
        resolved.append(ResolvedRecord(name, time, unit, label, value))  # type: ignore[arg-type]
    return resolved


def _check_fields(record: Mapping[str, object], index: int) -> str | None:
    """Raise DecodeError for a malformed field; the label of the value field, if any.
    (A discovery answer is dozens of records, so each field is looked at once.)"""
    value_label = None
    for label, value in record.items():
        if label in _TEXT_LABELS:
            if not isinstance(value, str):
                raise DecodeError(f"record #{index}: {label!r} must be text, got {_kind(value)}")
        elif label in _NUMBER_LABELS:
            if not _is_number(value):
                raise DecodeError(f"record #{index}: {label!r} must be a number, got {_kind(value)}")
        elif label == "vb":
            if not isinstance(value, bool):
                raise DecodeError(f"record #{index}: 'vb' must be a boolean, got {_kind(value)}")
        elif label == "vd":
            if not isinstance(value, bytes):
                raise DecodeError(f"record #{index}: 'vd' must be binary data, got {_kind(value)}")
        elif label == "bver":
            if type(value) is not int or not 0 <= value <= SENML_VERSION:
                raise DecodeError(f"record #{index}: SenML version {value!r} is not supported")
        elif not isinstance(label, str):
            raise DecodeError(f"record #{index}: label {label!r} is not text")
        elif label.endswith("_"):
            raise DecodeError(f"record #{index}: must-understand field {label!r} is not supported")
        if label in _VALUE_LABEL_SET:
            if value_label is not None:
                values = [known for known in VALUE_LABELS if known in record]
                raise DecodeError(f"record #{index}: more than one value field ({', '.join(values)})")
            value_label = label
    return value_label


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Number) -> bool:
    return isinstance(value, int) or math.isfinite(value)  # isfinite() overflows on huge ints


def _kind(value: object) -> str:
    return type(value).__name__


def _add(left: Number, right: Number, where: str) -> Number:
    try:
        return left + right
    except OverflowError:
        raise DecodeError(f"{where}: {show_number(left)} + {show_number(right)} overflows a 64-bit float") from None


def _time_of(base_time: Number | None, time: Number | None, where: str) -> Number | None:
    if base_time is None and time is None:
        return None
    total = _add(base_time or 0, time or 0, where)
    if not _is_finite(total):
        raise DecodeError(f"{where}: time {total} is not a finite number")
    return total


# --- LwM2M: records <-> leaf values --------------------------------------------------------


def node_records(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> list[Record]:
    """The records of ``node`` read at ``path``: ``bn`` first, then relative names."""
    with encode_errors():
        leaves = flatten(node, path)
        if isinstance(node, (Resource, ResourceInstance)):
            return [{"bn": str(path), **_value_fields(path, leaves[path], registry)}]
        named: list[LwM2MPath] = list(leaves)
        if isinstance(node, Object):  # empty instances get a record naming them
            filled = {leaf.ids[1] for leaf in leaves}
            named += [path.child(iid) for iid in node.instances if iid not in filled]
            named.sort()
        records: list[Record] = []
        for leaf in named:
            record: Record = {} if records else {"bn": f"{path}/"}
            record["n"] = "/".join(str(i) for i in leaf.ids[len(path) :])
            if leaf in leaves:
                record.update(_value_fields(leaf, leaves[leaf], registry))
            else:
                record["n"] += "/"  # "/o/" + "i/": the instance itself, no value
            records.append(record)
        return records


def composite_records(values: Mapping[LwM2MPath, Value], registry: ObjectRegistry) -> list[Record]:
    """One record per leaf, named by its full path (Read-/Write-Composite)."""
    with encode_errors():
        return [
            {"n": str(_leaf(path)), **_value_fields(path, value, registry)}
            for path, value in values.items()
        ]


def path_records(paths: Iterable[LwM2MPath]) -> list[Record]:
    """A Read-/Observe-Composite request body: ``[{"n": "/3/0/9"}, ...]``."""
    records: list[Record] = []
    for path in paths:
        if not isinstance(path, LwM2MPath):
            raise EncodeError(f"{path!r} is not an LwM2MPath")
        records.append({"n": str(path)})
    return records


def timestamped_records(
    entries: Iterable[TimestampedValues], registry: ObjectRegistry
) -> list[Record]:
    """Leaf values by time (Send, notifications with history), ``bt`` set once per time."""
    records: list[Record] = []
    base_time: Number | None = None
    with encode_errors():
        for entry in entries:
            time = _entry_time(entry)
            if not entry.values:
                raise EncodeError(f"the entry at time {entry.time} has no values")
            for path, value in entry.values.items():
                record: Record = {}
                if time != base_time:
                    # A record without time means "now", so returning to "now" is bt 0.
                    record["bt"] = 0 if time is None else time
                    base_time = time
                record["n"] = str(_leaf(path))
                record.update(_value_fields(path, value, registry))
                records.append(record)
    return records


class Labels(NamedTuple):
    """How a serialisation's records, as it loaded them, name the fields that
    :func:`_plain_values` reads, and how they become records with text labels."""

    base_name: object
    name: object
    plain: frozenset
    """the fields a plain record may have"""
    value: Mapping[str, object]
    """each value label's key"""
    to_text: Callable[[Sequence[dict]], list[Record]]


TEXT_LABELS = Labels("bn", "n", frozenset({"bn", "n", *VALUE_LABELS}), {label: label for label in VALUE_LABELS},
                     list)
_ROOT = LwM2MPath()


def node_from_pack(pack: Sequence[Record], path: LwM2MPath, registry: ObjectRegistry,
                   labels: Labels = TEXT_LABELS) -> Node:
    """The node at ``path``; a leaf given several times keeps its newest value. A record
    without a value that names an object instance (``/o/i/``) stands for that instance,
    also when it has no resources. (``labels``: how the records name their fields, for
    a serialisation that hands them over undecoded; text labels by default.)"""
    with decode_errors():
        if not 1 <= len(path) <= 4:
            raise DecodeError(f"no node can be read at {path}")
        instances: set[int] = set()
        values = _plain_values(pack, path, registry, labels)
        if values is None:
            values = _newest(_checked_leaves(labels.to_text(pack), path, registry, instances))
        node = build(path, values, registry)
        if isinstance(node, Object) and not instances <= set(node.instances):
            every = {iid: ObjectInstance(iid, {}) for iid in instances} | dict(node.instances)
            node = Object(node.id, dict(sorted(every.items())))
        return node


def composite_from_pack(pack: Sequence[Record], registry: ObjectRegistry,
                        labels: Labels = TEXT_LABELS) -> dict[LwM2MPath, Value]:
    """Leaf values by full path; a leaf given several times keeps its newest value."""
    with decode_errors():
        values = _plain_values(pack, _ROOT, registry, labels)
        return values if values is not None else _newest(_checked_leaves(labels.to_text(pack), _ROOT, registry))


def timestamped_from_pack(
    pack: Sequence[Record], path: LwM2MPath, registry: ObjectRegistry, labels: Labels = TEXT_LABELS
) -> list[TimestampedValues]:
    """One entry per distinct time, in payload order; time 0 ("now") is None."""
    groups: dict[Number | None, dict[LwM2MPath, Value]] = {}
    with decode_errors():
        values = _plain_values(pack, path, registry, labels)
        if values is not None:
            return [TimestampedValues(None, values)] if values else []
        for leaf, time, value in _checked_leaves(labels.to_text(pack), path, registry):
            group = groups.setdefault(time or None, {})
            if leaf in group:
                raise DecodeError(f"{leaf} has two values at time {time}")
            group[leaf] = value
    return [TimestampedValues(time, values) for time, values in groups.items()]


def paths_from_pack(pack: Sequence[Record]) -> list[LwM2MPath]:
    """The paths of a Read-/Observe-Composite request; values and times are refused."""
    paths = []
    for index, (record, resolved) in enumerate(zip(pack, resolve(pack))):
        where = f"record #{index}"
        refused = [label for label in _PATH_LIST_FORBIDDEN if label in record]
        if refused:
            raise DecodeError(f"{where}: a path list carries no {refused[0]!r}")
        if "n" not in record and "bn" not in record:
            raise DecodeError(f"{where}: names no path")
        paths.append(_parse_name(resolved.name, index))
    return paths


# --- helpers: paths, model checks, typed values --------------------------------------------


def _leaf(path: object) -> LwM2MPath:
    if not isinstance(path, LwM2MPath):
        raise EncodeError(f"{path!r} is not an LwM2MPath")
    return path


def _entry_time(entry: TimestampedValues) -> Number | None:
    time = entry.time
    if time is None:
        return None
    if not _is_number(time) or not _is_finite(time):
        raise EncodeError(f"time {time!r} is not a finite number")
    return time or None


def _parse_name(name: str, index: int) -> LwM2MPath:
    try:
        return LwM2MPath.parse(name)
    except PathError as error:
        raise DecodeError(f"record #{index}: name {name!r} is not an LwM2M path ({error.reason})") from None


def _leaf_type(path: LwM2MPath, registry: ObjectRegistry) -> ResourceType | None:
    """The model's type for a value at ``path`` (None when the model does not know the
    resource); ModelError unless ``path`` can hold a value."""
    if len(path) < 3:
        raise ModelError(f"{path} is not a resource or resource instance path")
    definition = registry.resource_def(path)
    if definition is None:
        return None
    if definition.type is ResourceType.NONE:
        raise ModelError(f"{path} is executable and holds no value")
    if definition.multiple and len(path) == 3:
        raise ModelError(f"{path} is a multiple resource: its values belong to instances")
    if not definition.multiple and len(path) == 4:
        raise ModelError(f"{path.parent} is a single resource: it has no instances")
    return definition.type


def _value_fields(path: LwM2MPath, value: Value, registry: ObjectRegistry) -> Record:
    rtype = _leaf_type(path, registry)
    try:
        rtype = rtype or infer_type(value)
        value = coerce(value, rtype)
    except ModelError as error:
        raise EncodeError(f"{path}: {error.reason}") from None
    if rtype is ResourceType.TIME:
        return {"v": time_to_seconds(value)}  # type: ignore[arg-type]
    if rtype is ResourceType.OBJLNK:
        return {"vlo": str(value)}
    return {_LABEL_OF_TYPE[rtype]: value}


def _checked_leaves(
    pack: Sequence[Record], under: LwM2MPath, registry: ObjectRegistry,
    instances: set[int] | None = None,
) -> list[tuple[LwM2MPath, Number | None, Value]]:
    leaves = []
    for index, record in enumerate(resolve(pack)):
        path = _parse_name(record.name, index)
        if under.ids and not path.startswith(under):
            raise DecodeError(f"record #{index}: {path} is outside the requested {under}")
        if instances is not None and len(path) == 2 and record.label is None:
            instances.add(path.ids[1])
            continue
        try:
            rtype = _leaf_type(path, registry)
        except ModelError as error:
            raise DecodeError(f"record #{index}: {error.reason}") from None
        leaves.append((path, record.time, _typed_value(record, path, rtype)))
    return leaves


_AS_IS, _INTEGER, _UNSIGNED, _TIME, _FLOAT = range(5)
_PLAIN_SLOTS: dict[ResourceType, tuple[str, tuple[type, ...], int]] = {
    ResourceType.STRING: ("vs", (str,), _AS_IS), ResourceType.CORELNK: ("vs", (str,), _AS_IS),
    ResourceType.BOOLEAN: ("vb", (bool,), _AS_IS), ResourceType.OPAQUE: ("vd", (bytes,), _AS_IS),
    ResourceType.INTEGER: ("v", (int,), _INTEGER), ResourceType.UNSIGNED_INTEGER: ("v", (int,), _UNSIGNED),
    ResourceType.TIME: ("v", (int,), _TIME), ResourceType.FLOAT: ("v", (float, int), _FLOAT),
}
"""By resource type: its value field, the Python types a plain record carries there (a
client may write a whole Float as an integer), and how the value is made. Objlnk, and
a whole number written as a float for an Integer, go the checked way."""
_slots: weakref.WeakKeyDictionary[ObjectRegistry, tuple[int, dict[str, tuple | None]]] = \
    weakref.WeakKeyDictionary()
_SLOTS_LIMIT = 4096
"""Names remembered per registry; devices choose names, so the memory is bounded."""


def _plain_slot(name: str, registry: ObjectRegistry) -> tuple | None:
    """(path, value field, Python type, how) for a plain value named ``name``: a
    resource (instance) path the model knows, under its own multiplicity; else None."""
    try:
        path = LwM2MPath.parse(name)
    except PathError:
        return None
    if len(path) < 3:
        return None
    definition = registry.resource_def(path)
    if definition is None or definition.multiple != (len(path) == 4):
        return None
    slot = _PLAIN_SLOTS.get(definition.type)
    return None if slot is None else (path, *slot)


def _plain_values(
    pack: Sequence[dict], under: LwM2MPath, registry: ObjectRegistry, labels: Labels
) -> dict[LwM2MPath, Value] | None:
    """The leaf values of the usual answer, in one pass: every record a name (``bn``,
    ``n``) and one value of the type the model gives its resource, no times or base
    values, no leaf twice. None for anything else, well formed or not, which the checked
    way then decodes or refuses in its own words. (A discovery answer is dozens of such
    records, and every notification and Send is decoded here: this is the server's hot
    path; ``labels`` lets SenML CBOR's records be read with their integer labels.)"""
    generation, slots = _slots.get(registry, (-1, {}))
    if generation != registry.generation or len(slots) > _SLOTS_LIMIT:
        slots = {}
        _slots[registry] = (registry.generation, slots)
    base_name_key, name_key, plain_fields, value_keys = labels[:4]
    values = {}
    base_name = ""
    for record in pack:
        if not record.keys() <= plain_fields:
            return None
        bn, n = record.get(base_name_key), record.get(name_key)
        named = 0
        if bn is not None:
            if type(bn) is not str:
                return None
            base_name, named = bn, 1
        if n is not None:
            if type(n) is not str:
                return None
            name, named = base_name + n, named + 1
        else:
            name = base_name
        if len(record) != named + 1:
            return None  # no value, or several
        slot = slots.get(name, False)
        if slot is False:
            slot = slots[name] = _plain_slot(name, registry)
        if slot is None:
            return None
        path, label, kinds, how = slot
        raw = record.get(value_keys[label])
        if type(raw) not in kinds or (under.ids and not path.startswith(under)):
            return None
        if how == _INTEGER:
            if not INT_MIN <= raw <= INT_MAX:
                return None
        elif how == _UNSIGNED:
            if not 0 <= raw <= UINT_MAX:
                return None
        elif how == _TIME:
            try:
                raw = time_from_seconds(raw)
            except DecodeError:
                return None
        elif how == _FLOAT and type(raw) is int:
            try:
                raw = float(raw)
            except OverflowError:
                return None
        values[path] = raw
    return values if len(values) == len(pack) else None


def _typed_value(record: ResolvedRecord, path: LwM2MPath, rtype: ResourceType | None) -> Value:
    label, raw = record.label, record.value
    if label is None:
        raise DecodeError(f"{path}: the record has no value")
    if rtype is None:
        return _natural_value(label, raw, path)
    if label != _LABEL_OF_TYPE[rtype]:
        expected = _LABEL_OF_TYPE[rtype]
        raise DecodeError(f"{path}: {rtype.value} resources take {expected!r}, not {label!r}")
    if label == "v":
        return _number_value(raw, rtype, path)  # type: ignore[arg-type]
    if label == "vlo":
        return ObjLnk.parse(raw)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]  # vs/vb/vd: already type-checked


def _number_value(raw: Number, rtype: ResourceType, path: LwM2MPath) -> Value:
    if rtype is ResourceType.FLOAT:
        try:
            return float(raw)
        except OverflowError:
            raise DecodeError(f"{path}: {show_number(raw)} does not fit a 64-bit Float") from None
    # Integer, Unsigned Integer and Time take whole numbers; 300.0 is one, 1.5 is not.
    if isinstance(raw, float):
        if not raw.is_integer():
            raise DecodeError(f"{path}: {raw!r} is not a whole number ({rtype.value})")
        raw = int(raw)
    if rtype is ResourceType.TIME:
        return time_from_seconds(raw)
    try:
        return coerce(raw, rtype)
    except ModelError as error:
        raise DecodeError(f"{path}: {error.reason}") from None


def _natural_value(label: str, raw: object, path: LwM2MPath) -> Value:
    """The value of a resource the model does not know, typed by its field."""
    if label == "vlo":
        return ObjLnk.parse(raw)  # type: ignore[arg-type]
    if label == "v" and isinstance(raw, int):
        try:
            return coerce(raw, None)  # Integer, or Unsigned above 2**63-1; range-checked
        except ModelError as error:
            raise DecodeError(f"{path}: {error.reason}") from None
    return raw  # type: ignore[return-value]


def _age(time: Number | None) -> tuple[int, Number]:
    """Sort key, oldest first. Relative times (and no time, i.e. "now") are taken to be
    relative to a "now" later than any absolute time in the same payload."""
    if time is None or time < SENML_RELATIVE_TIME_LIMIT:
        return (1, time or 0)
    return (0, time)


def _newest(leaves: list[tuple[LwM2MPath, Number | None, Value]]) -> dict[LwM2MPath, Value]:
    if all(time is None for _, time, _ in leaves):  # the usual answer: one value per path, no times
        values = {path: value for path, _, value in leaves}
        if len(values) == len(leaves):
            return values
    chosen: dict[LwM2MPath, tuple[tuple[int, Number], Value]] = {}
    for path, time, value in leaves:
        age = _age(time)
        if path in chosen:
            if age == chosen[path][0]:
                raise DecodeError(f"{path} has two values at the same time")
            if age < chosen[path][0]:
                continue
        chosen[path] = (age, value)
    return {path: value for path, (_, value) in chosen.items()}


class Serialisation:
    """The codec contract of one SenML serialisation (JSON, CBOR), given how it turns
    bytes into records (with the :class:`Labels` they use) and a pack back into bytes;
    the serialisation modules export its bound methods as their module functions."""

    def __init__(
        self,
        load_records: Callable[[bytes], tuple[list[dict], Labels]],
        dump_pack: Callable[[Sequence[Record]], bytes],
    ) -> None:
        self.load_records = load_records
        self.dump_pack = dump_pack

    def encode(self, node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
        return self.dump_pack(node_records(node, path, registry))

    def decode(self, data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> Node:
        records, labels = self.load_records(data)
        return node_from_pack(records, path, registry, labels)

    def encode_composite(self, values: Mapping[LwM2MPath, Value], registry: ObjectRegistry) -> bytes:
        return self.dump_pack(composite_records(values, registry))

    def decode_composite(self, data: bytes, registry: ObjectRegistry) -> dict[LwM2MPath, Value]:
        records, labels = self.load_records(data)
        return composite_from_pack(records, registry, labels)

    def encode_paths(self, paths: Sequence[LwM2MPath]) -> bytes:
        return self.dump_pack(path_records(paths))

    def decode_paths(self, data: bytes) -> list[LwM2MPath]:
        records, labels = self.load_records(data)
        return paths_from_pack(labels.to_text(records))

    def encode_timestamped(self, entries: Sequence[TimestampedValues], registry: ObjectRegistry) -> bytes:
        return self.dump_pack(timestamped_records(entries, registry))

    def decode_timestamped(self, data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> list[TimestampedValues]:
        records, labels = self.load_records(data)
        return timestamped_from_pack(records, path, registry, labels)
