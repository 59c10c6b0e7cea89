"""OMA TLV (``application/vnd.oma.lwm2m+tlv``, content format 11542).

LwM2M Core 1.0 §6.4.3 / Core 1.1 §7.4.3. Each TLV is a type byte, an 8- or
16-bit identifier, an optional 8/16/24-bit length and the value:

======  ==============================================================
bits    meaning of the type byte
======  ==============================================================
7-6     what the identifier names: Object Instance (00), Resource
        Instance (01), Multiple Resource (10), Resource with value (11)
5       identifier is 16 bits (1) or 8 bits (0)
4-3     length field: none, the length is in bits 2-0 (00); 8 (01),
        16 (10) or 24 bits (11)
2-0     the length when bits 4-3 are 00
======  ==============================================================

Object Instance and Multiple Resource TLVs hold further TLVs; the other two
hold a value encoded by the resource's type (see :func:`encode_value`).

What a payload holds depends on the path it is addressed to: ``/o`` a sequence
of Object Instance TLVs, ``/o/i`` a sequence of Resource and Multiple Resource
TLVs (one Object Instance TLV wrapping them is tolerated on decode),
``/o/i/r`` one Resource or Multiple Resource TLV and ``/o/i/r/ri`` one
Resource Instance TLV.

Decoding is strict: truncated or trailing bytes, duplicate ids, a TLV kind
that cannot appear where it is, ids that contradict the path and single vs.
multiple values that contradict the object model are all :class:`DecodeError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import DecodeError, EncodeError
from ..model import ResourceType
from ..nodes import (
    MultiResource,
    Node,
    Object,
    ObjectInstance,
    Resource,
    ResourceInstance,
    check_node_path,
)
from ..path import LwM2MPath
from ..registry import ObjectRegistry
from ..values import ObjLnk, Value, coerce, infer_type, time_from_seconds, time_to_seconds
from .base import decode_errors, encode_errors

MAX_LENGTH = 0xFFFFFF
"""The longest value a TLV can carry: its length field is at most 24 bits."""

_INTEGER_WIDTHS = (1, 2, 4, 8)
"""Integer, Unsigned Integer and Time values are 1, 2, 4 or 8 bytes long."""


class TlvKind(enum.IntEnum):
    """Bits 7-6 of the type byte: what the identifier of a TLV names."""

    OBJECT_INSTANCE = 0b00
    RESOURCE_INSTANCE = 0b01
    MULTIPLE_RESOURCE = 0b10
    RESOURCE_VALUE = 0b11

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    TlvKind.OBJECT_INSTANCE: "Object Instance",
    TlvKind.RESOURCE_INSTANCE: "Resource Instance",
    TlvKind.MULTIPLE_RESOURCE: "Multiple Resource",
    TlvKind.RESOURCE_VALUE: "Resource",
}
_RESOURCE_KINDS = frozenset({TlvKind.RESOURCE_VALUE, TlvKind.MULTIPLE_RESOURCE})


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV as framed on the wire, its value not yet interpreted."""

    kind: TlvKind
    """What the identifier names."""
    id: int
    """Object instance, resource or resource instance id."""
    value: bytes
    """The value bytes; for Object Instance and Multiple Resource TLVs, nested TLVs."""
    value_offset: int
    """Offset of the value in the whole payload, for error messages."""


# --- framing -----------------------------------------------------------------


def pack_tlv(kind: TlvKind, identifier: int, value: bytes) -> bytes:
    """One TLV with the narrowest identifier and length fields that fit."""
    if not 0 <= identifier <= 0xFFFF:
        raise EncodeError(f"TLV identifier {identifier} does not fit 16 bits")
    length = len(value)
    if length > MAX_LENGTH:
        raise EncodeError(f"a TLV value holds at most {MAX_LENGTH} bytes, got {length}")
    type_byte = kind << 6
    if identifier > 0xFF:
        type_byte |= 0b0010_0000
        id_bytes = identifier.to_bytes(2, "big")
    else:
        id_bytes = bytes((identifier,))
    if length < 8:
        type_byte |= length
        length_bytes = b""
    else:
        width = 1 if length <= 0xFF else 2 if length <= 0xFFFF else 3
        type_byte |= width << 3
        length_bytes = length.to_bytes(width, "big")
    return bytes((type_byte,)) + id_bytes + length_bytes + value


def unpack_tlvs(data: bytes, base_offset: int = 0) -> list[Tlv]:
    """Split ``data`` into consecutive TLVs (not descending into nested ones)."""
    tlvs: list[Tlv] = []
    position = 0
    while position < len(data):
        start = position
        type_byte = data[position]
        id_width = 2 if type_byte & 0b0010_0000 else 1
        length_width = (type_byte >> 3) & 0b11
        header_end = position + 1 + id_width + length_width
        if header_end > len(data):
            raise DecodeError(f"TLV at byte {base_offset + start}: truncated header")
        identifier = int.from_bytes(data[position + 1 : position + 1 + id_width], "big")
        if length_width:
            length = int.from_bytes(data[position + 1 + id_width : header_end], "big")
        else:
            # Bits 2-0 hold the length only when there is no length field; like
            # Leshan and Wakaama we ignore them otherwise rather than reject.
            length = type_byte & 0b111
        end = header_end + length
        if end > len(data):
            raise DecodeError(
                f"TLV at byte {base_offset + start}: truncated, its length says {length} bytes"
                f" but {len(data) - header_end} remain"
            )
        kind = TlvKind(type_byte >> 6)
        tlvs.append(Tlv(kind, identifier, data[header_end:end], base_offset + header_end))
        position = end
    return tlvs


def _children(parent: Tlv, allowed: Iterable[TlvKind], where: LwM2MPath) -> list[Tlv]:
    """The TLVs nested in ``parent``, checked for kind and duplicate ids."""
    return _checked(unpack_tlvs(parent.value, parent.value_offset), allowed, where)


def _checked(tlvs: list[Tlv], allowed: Iterable[TlvKind], where: LwM2MPath) -> list[Tlv]:
    allowed = frozenset(allowed)
    seen: set[int] = set()
    for tlv in tlvs:
        if tlv.kind not in allowed:
            expected = " or ".join(sorted(kind.label for kind in allowed))
            raise DecodeError(
                f"{where}: {tlv.kind.label} TLV (id {tlv.id}) where {expected} TLVs are expected"
            )
        if tlv.id in seen:
            raise DecodeError(f"{where}: id {tlv.id} appears twice")
        seen.add(tlv.id)
    return tlvs


# --- values ------------------------------------------------------------------


def encode_value(value: Value, rtype: ResourceType) -> bytes:
    """The TLV value bytes of ``value`` (already coerced to ``rtype``)."""
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        try:
            return value.encode("utf-8")  # type: ignore[union-attr]
        except UnicodeEncodeError:
            raise EncodeError(f"string {value!r} is not encodable as UTF-8") from None
    if rtype is ResourceType.INTEGER:
        return _smallest_int(value, signed=True)  # type: ignore[arg-type]
    if rtype is ResourceType.UNSIGNED_INTEGER:
        return _smallest_int(value, signed=False)  # type: ignore[arg-type]
    if rtype is ResourceType.TIME:
        return _smallest_int(time_to_seconds(value), signed=True)  # type: ignore[arg-type]
    if rtype is ResourceType.FLOAT:
        # Core 1.1 Appendix C allows 4 or 8 bytes. Leshan always writes 8; we write
        # 4 when binary32 holds the value exactly (nothing is lost), else 8.
        try:
            single = struct.pack(">f", value)
            if struct.unpack(">f", single)[0] == value:
                return single
        except OverflowError:
            pass
        return struct.pack(">d", value)
    if rtype is ResourceType.BOOLEAN:
        return b"\x01" if value else b"\x00"
    if rtype is ResourceType.OBJLNK:
        return struct.pack(">HH", value.object_id, value.instance_id)  # type: ignore[union-attr]
    if rtype is ResourceType.OPAQUE:
        return bytes(value)  # type: ignore[arg-type]
    raise EncodeError(f"{rtype.value} resources carry no value")


def _smallest_int(number: int, *, signed: bool) -> bytes:
    for width in _INTEGER_WIDTHS:
        try:
            return number.to_bytes(width, "big", signed=signed)
        except OverflowError:
            continue
    raise EncodeError(f"integer {number} does not fit 8 bytes")


def decode_value(raw: bytes, rtype: ResourceType | None, path: LwM2MPath) -> Value:
    """Interpret TLV value bytes as ``rtype``; None (unknown resource) yields bytes."""
    if rtype is None or rtype is ResourceType.OPAQUE:
        return bytes(raw)
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            reason = f"{path}: {rtype.value} value is not valid UTF-8 ({error.reason})"
            raise DecodeError(reason) from None
    if rtype in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME):
        if len(raw) not in _INTEGER_WIDTHS:
            raise DecodeError(
                f"{path}: {rtype.value} value must be 1, 2, 4 or 8 bytes, got {len(raw)}"
            )
        number = int.from_bytes(raw, "big", signed=rtype is not ResourceType.UNSIGNED_INTEGER)
        if rtype is ResourceType.TIME:
            try:
                return time_from_seconds(number)
            except DecodeError as error:
                raise DecodeError(f"{path}: {error.reason}") from None
        return number
    if rtype is ResourceType.FLOAT:
        if len(raw) == 4:
            return struct.unpack(">f", raw)[0]
        if len(raw) == 8:
            return struct.unpack(">d", raw)[0]
        raise DecodeError(f"{path}: Float value must be 4 or 8 bytes, got {len(raw)}")
    if rtype is ResourceType.BOOLEAN:
        if raw not in (b"\x00", b"\x01"):
            raise DecodeError(f"{path}: Boolean value must be one byte 0 or 1, got {raw.hex()!r}")
        return raw == b"\x01"
    if rtype is ResourceType.OBJLNK:
        if len(raw) != 4:
            raise DecodeError(f"{path}: Objlnk value must be 4 bytes, got {len(raw)}")
        return ObjLnk(*struct.unpack(">HH", raw))
    raise DecodeError(f"{path}: {rtype.value} resources carry no value")


# --- encoding ----------------------------------------------------------------


def encode(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    """The TLV payload of ``node`` addressed to ``path``."""
    with encode_errors():
        check_node_path(node, path)
        if isinstance(node, Object):
            return b"".join(
                pack_tlv(
                    TlvKind.OBJECT_INSTANCE,
                    iid,
                    _encode_instance(instance, path.child(iid), registry),
                )
                for iid, instance in _children_in_id_order(node.instances, ObjectInstance, path)
            )
        if isinstance(node, ObjectInstance):
            return _encode_instance(node, path, registry)
        if isinstance(node, (Resource, MultiResource)):
            return _encode_resource(node, path, registry)
        _check_multiplicity(path.parent, registry, multiple=True, error=EncodeError)
        value = _encode_leaf(node.value, path, registry)
        return pack_tlv(TlvKind.RESOURCE_INSTANCE, node.id, value)


def _children_in_id_order(
    children: object, kind: type | tuple[type, ...], path: LwM2MPath
) -> list[tuple[int, Any]]:
    """``(id, child)`` pairs of a node's mapping in id order, checked: int keys, each
    child of ``kind`` and keyed by its own id."""
    if not isinstance(children, Mapping):
        raise EncodeError(f"{path}: children must be a mapping, got {type(children).__name__}")
    for key, child in children.items():
        if type(key) is not int:
            raise EncodeError(f"{path}: child key {key!r} is not an int id")
        if not isinstance(child, kind):
            raise EncodeError(f"{path}/{key}: {type(child).__name__} cannot appear here")
        if child.id != key:
            raise EncodeError(f"{path}: child keyed {key} has id {child.id}")
    return sorted(children.items())


def _encode_instance(
    instance: ObjectInstance, path: LwM2MPath, registry: ObjectRegistry
) -> bytes:
    resources = _children_in_id_order(instance.resources, (Resource, MultiResource), path)
    return b"".join(
        _encode_resource(resource, path.child(rid), registry) for rid, resource in resources
    )


def _encode_resource(
    resource: Resource | MultiResource, path: LwM2MPath, registry: ObjectRegistry
) -> bytes:
    if isinstance(resource, Resource):
        _check_multiplicity(path, registry, multiple=False, error=EncodeError)
        value = _encode_leaf(resource.value, path, registry)
        return pack_tlv(TlvKind.RESOURCE_VALUE, resource.id, value)
    _check_multiplicity(path, registry, multiple=True, error=EncodeError)
    if not isinstance(resource.instances, Mapping):
        raise EncodeError(f"{path}: instances must be a mapping")
    if any(type(ri) is not int for ri in resource.instances):
        raise EncodeError(f"{path}: resource instance ids must be ints")
    instances = b"".join(
        pack_tlv(TlvKind.RESOURCE_INSTANCE, ri, _encode_leaf(value, path.child(ri), registry))
        for ri, value in sorted(resource.instances.items())
    )
    return pack_tlv(TlvKind.MULTIPLE_RESOURCE, resource.id, instances)


def _encode_leaf(value: Value, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    definition = registry.resource_def(path)
    if definition is not None and definition.type is ResourceType.NONE:
        raise EncodeError(f"{path} is executable and carries no value")
    rtype = registry.value_type(path) or infer_type(value)
    return encode_value(coerce(value, rtype), rtype)


def _check_multiplicity(
    path: LwM2MPath, registry: ObjectRegistry, *, multiple: bool, error: type[Exception]
) -> None:
    """Raise ``error`` when the model says the resource at ``path`` is the other kind."""
    definition = registry.resource_def(path)
    if definition is None or definition.multiple == multiple:
        return
    if definition.multiple:
        raise error(f"{path} is a multiple-instance resource, not a single value")
    raise error(f"{path} is a single-instance resource; it has no resource instances")


# --- decoding ----------------------------------------------------------------


def decode(data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> Node:
    """The node at ``path`` carried by the TLV payload ``data``."""
    with decode_errors():
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"a TLV payload is bytes, got {type(data).__name__}")
        data = bytes(data)
        if not 1 <= len(path) <= 4:
            raise DecodeError(f"TLV cannot address {path}: it needs /o, /o/i, /o/i/r or /o/i/r/ri")
        tlvs = unpack_tlvs(data)
        if len(path) == 1:
            instances = {}
            for tlv in _checked(tlvs, {TlvKind.OBJECT_INSTANCE}, path):
                instance_path = path.child(tlv.id)
                resources = _children(tlv, _RESOURCE_KINDS, instance_path)
                instances[tlv.id] = _decode_instance(resources, instance_path, registry)
            return Object(path.ids[0], instances)
        if len(path) == 2:
            return _decode_instance(_unwrap_instance(tlvs, path), path, registry)
        if len(path) == 3:
            return _decode_resource(_single(tlvs, _RESOURCE_KINDS, path), path, registry)
        tlv = _single(tlvs, {TlvKind.RESOURCE_INSTANCE}, path)
        _check_multiplicity(path.parent, registry, multiple=True, error=DecodeError)
        return ResourceInstance(tlv.id, decode_value(tlv.value, registry.value_type(path), path))


def _single(tlvs: list[Tlv], allowed: Iterable[TlvKind], path: LwM2MPath) -> Tlv:
    """The one TLV a payload for ``path`` must hold: of an allowed kind, its id the path's last."""
    if len(tlvs) != 1:
        raise DecodeError(f"a TLV payload for {path} holds exactly one TLV, got {len(tlvs)}")
    _checked(tlvs, allowed, path)
    if tlvs[0].id != path.ids[-1]:
        raise DecodeError(f"TLV id {tlvs[0].id} does not match path {path}")
    return tlvs[0]


def _unwrap_instance(tlvs: list[Tlv], path: LwM2MPath) -> list[Tlv]:
    """Resource TLVs of ``/o/i``: as sent, or from inside one Object Instance TLV."""
    if len(tlvs) == 1 and tlvs[0].kind is TlvKind.OBJECT_INSTANCE:
        if tlvs[0].id != path.ids[1]:
            raise DecodeError(f"Object Instance TLV id {tlvs[0].id} does not match path {path}")
        return _children(tlvs[0], _RESOURCE_KINDS, path)
    return _checked(tlvs, _RESOURCE_KINDS, path)


def _decode_instance(
    tlvs: list[Tlv], path: LwM2MPath, registry: ObjectRegistry
) -> ObjectInstance:
    resources = {tlv.id: _decode_resource(tlv, path.child(tlv.id), registry) for tlv in tlvs}
    return ObjectInstance(path.ids[1], resources)


def _decode_resource(
    tlv: Tlv, path: LwM2MPath, registry: ObjectRegistry
) -> Resource | MultiResource:
    if tlv.kind is TlvKind.RESOURCE_VALUE:
        _check_multiplicity(path, registry, multiple=False, error=DecodeError)
        return Resource(tlv.id, decode_value(tlv.value, registry.value_type(path), path))
    _check_multiplicity(path, registry, multiple=True, error=DecodeError)
    rtype = registry.value_type(path)
    return MultiResource(
        tlv.id,
        {
            child.id: decode_value(child.value, rtype, path.child(child.id))
            for child in _children(tlv, {TlvKind.RESOURCE_INSTANCE}, path)
        },
    )
