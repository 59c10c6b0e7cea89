"""SenML CBOR (``application/senml+cbor``, content format 112), RFC 8428 §6.

Only the CBOR layer lives here: bytes <-> a pack of records
(see :mod:`ipso_objects.codecs.senml` for what the records mean).

Labels are the integers of RFC 8428 Table 4 (``bn`` = -2, ``n`` = 0, ``v`` = 2,
...); the LwM2M extension ``vlo`` stays the text label ``"vlo"`` (Core 1.1
§7.4.5). ``vd`` is a byte string. Numbers use the shortest form that keeps
their value: integers as CBOR integers, floats as half, single or double
precision, whichever is the first to hold the value exactly (RFC 8949
§4.2.2 preferred serialization). Decoding also accepts decimal fractions
(tag 4, which RFC 8428 §6 allows and Leshan sends for times), indefinite
lengths, and text labels in place of the integer ones. An empty payload is
an empty pack.
"""

from __future__ import annotations

import io
import math
import struct
from decimal import Decimal
from itertools import chain
from typing import Sequence

import cbor2

from ..errors import DecodeError, EncodeError
from . import senml

LABELS = {
    "bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6,
    "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8,
}  # fmt: skip
"""CBOR integer label of each SenML field (RFC 8428 Table 4)."""
_NAMES = {number: label for label, number in LABELS.items()}

_MAX_DEPTH = 8
"""A pack nests two deep; anything much deeper is refused before it costs anything."""

# cbor2 turns many tags into Python objects, some costly to build from hostile bytes (tag 35
# compiles a regular expression: seconds of CPU for 60 KB; 36 parses MIME; 28/29 build
# cycles). SenML needs bignums (2, 3) and decimal fractions (4) only: every other tag cbor2
# knows stays a plain CBORTag, which no SenML field accepts.
_RAW_TAGS = {
    tag: (lambda value, immutable, tag=tag: cbor2.CBORTag(tag, value))
    for tag in (0, 1, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004)
}


# --- bytes <-> pack ------------------------------------------------------------------------


def load_pack(data: bytes) -> list[senml.Record]:
    """Parse a SenML CBOR payload into records keyed by the SenML text labels."""
    return _text_records(_document(data))


def load_records(data: bytes) -> tuple[list[dict], senml.Labels]:
    """The records as cbor2 gave them, read by their integer labels, where every record
    is a map with no boolean key (``false`` equals the label 0 in a dict); else with text
    labels, or the refusal that names the faulty record."""
    document = _document(data)
    if set(map(type, document)) <= {dict} and bool not in set(map(type, chain.from_iterable(document))):
        return document, _INTEGER_LABELS
    return _text_records(document), senml.TEXT_LABELS


def _document(data: bytes) -> list:
    if not data:
        return []
    stream = io.BytesIO(bytes(data))
    try:
        decoder = cbor2.CBORDecoder(
            stream, semantic_decoders=_RAW_TAGS, max_depth=_MAX_DEPTH, allow_duplicate_keys=False
        )
        document = decoder.decode()
    except Exception as error:  # cbor2 raises many types (CBORDecodeError, ValueError, ...)
        raise DecodeError(f"not CBOR: {error}") from None
    if stream.tell() != len(data):
        raise DecodeError(f"{len(data) - stream.tell()} bytes after the CBOR pack")
    if not isinstance(document, list):
        raise DecodeError("a SenML CBOR pack is an array of records")
    return document


def _text_records(document: Sequence[object]) -> list[senml.Record]:
    return [_record(item, index) for index, item in enumerate(document)]


def _record(item: object, index: int) -> senml.Record:
    if type(item) is dict:  # the usual record: Table 4 labels only, no decimal fractions
        record = {_NAMES[key]: value for key, value in item.items()
                  if type(key) is int and key in _NAMES and type(value) is not Decimal}
        if len(record) == len(item):
            return record
    where = f"record #{index}"
    if not isinstance(item, dict):
        raise DecodeError(f"{where} is not a CBOR map")
    record: senml.Record = {}
    for key, value in item.items():
        if type(key) is int:
            if key not in _NAMES:
                continue  # Table 4 is conclusive; RFC 8428 §4.4 says to ignore the unknown
            key = _NAMES[key]
        elif not isinstance(key, str):
            raise DecodeError(f"{where}: label {key!r} is neither an integer nor text")
        if key in record:
            raise DecodeError(f"{where}: field {key!r} appears twice")
        record[key] = _number(value, where) if isinstance(value, Decimal) else value
    return record


def _number(value: Decimal, where: str) -> int | float:
    """A decimal fraction (tag 4) as the int or float it stands for."""
    try:
        if value.is_finite() and value == value.to_integral_value() and value.adjusted() < 40:
            return int(value)
        number = float(value)
    except (ArithmeticError, ValueError) as error:  # decimal signals, signalling NaN
        raise DecodeError(f"{where}: decimal fraction {value}: {error}") from None
    if not math.isfinite(number):
        raise DecodeError(f"{where}: decimal fraction {value} overflows a 64-bit float")
    return number


def dump_pack(pack: Sequence[senml.Record]) -> bytes:
    """Serialize records as a definite-length array of maps, keys in their given order."""
    out = bytearray(_head(4, len(pack)))
    for record in pack:
        out += _head(5, len(record))
        for label, value in record.items():
            out += _item(LABELS.get(label, label))
            out += _item(value)
    return bytes(out)


def _head(major_type: int, argument: int) -> bytes:
    """The initial byte(s) of a CBOR data item (RFC 8949 §3), shortest form."""
    if argument < 24:
        return bytes([major_type << 5 | argument])
    for size, additional in ((1, 24), (2, 25), (4, 26), (8, 27)):
        if argument < 1 << (8 * size):
            return bytes([major_type << 5 | additional]) + argument.to_bytes(size, "big")
    raise EncodeError(f"{argument} does not fit a CBOR integer")


def _item(value: object) -> bytes:
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        try:
            encoded = value.encode("utf-8")
        except UnicodeError as error:
            raise EncodeError(f"text cannot be UTF-8 encoded: {error}") from None
        return _head(3, len(encoded)) + encoded
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    raise EncodeError(f"SenML CBOR cannot carry {type(value).__name__} {value!r}")


def _float(value: float) -> bytes:
    """The shortest of half, single and double precision that holds ``value`` exactly."""
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    for initial, layout in ((0xF9, ">e"), (0xFA, ">f")):
        try:
            packed = struct.pack(layout, value)
        except OverflowError:
            continue
        if struct.unpack(layout, packed)[0] == value:  # struct keeps the sign of -0.0
            return bytes([initial]) + packed
    return b"\xfb" + struct.pack(">d", value)


_INTEGER_LABELS = senml.Labels(
    LABELS["bn"], LABELS["n"], frozenset(LABELS[label] for label in ("bn", "n", "v", "vs", "vb", "vd")),
    {label: LABELS.get(label, label) for label in senml.VALUE_LABELS}, _text_records,
)
_SERIALISATION = senml.Serialisation(load_records, dump_pack)
encode = _SERIALISATION.encode
decode = _SERIALISATION.decode
encode_composite = _SERIALISATION.encode_composite
decode_composite = _SERIALISATION.decode_composite
encode_paths = _SERIALISATION.encode_paths
decode_paths = _SERIALISATION.decode_paths
encode_timestamped = _SERIALISATION.encode_timestamped
decode_timestamped = _SERIALISATION.decode_timestamped
