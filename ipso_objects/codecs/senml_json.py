"""SenML JSON (``application/senml+json``, content format 110), RFC 8428 §5.

Only the JSON layer lives here: bytes <-> a pack of records
(see :mod:`ipso_objects.codecs.senml` for what the records mean).

Written compactly (no spaces), keys in the order the record model gives them
(``bn``, ``bt``, ``n``, value, as in the Core 1.1 §7.4.4 examples). Numbers:
integers as such; floats in the shortest text that reads back as the same
double (Python's ``repr``), an integral float without its ``.0`` (``18``, as
Core Table 7.4.4-8 writes a Float). NaN and infinities have no JSON form.
``vd`` is base64url without padding (RFC 8428 §5); padding and the standard
alphabet are accepted on decode. An empty payload is an empty pack (Leshan
does the same, cf. OMA LwM2M_for_Developers issue #494).
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Sequence

from ..errors import DecodeError, EncodeError
from . import senml

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_TO_STANDARD_ALPHABET = str.maketrans("-_", "+/")


# --- bytes <-> pack ------------------------------------------------------------------------


def load_pack(data: bytes) -> list[senml.Record]:
    """Parse a SenML JSON payload into records (``vd`` decoded to bytes)."""
    if not data:
        return []
    try:
        document = json.loads(
            bytes(data).decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_float=_finite_float,
            parse_constant=_refuse_constant,
        )
    except (UnicodeError, ValueError, RecursionError) as error:
        # JSONDecodeError is a ValueError; so are our hooks' refusals and Python's
        # limit on the digits of an integer.
        raise DecodeError(f"not SenML JSON: {error}") from None
    if not isinstance(document, list):
        raise DecodeError("a SenML JSON pack is an array of records")
    pack = []
    for index, record in enumerate(document):
        if not isinstance(record, dict):
            raise DecodeError(f"record #{index} is not a JSON object")
        if "vd" in record:
            record["vd"] = _from_base64(record["vd"], f"record #{index}")
        pack.append(record)
    return pack


def dump_pack(pack: Sequence[senml.Record]) -> bytes:
    """Serialize records compactly, keys in their given order."""
    try:
        text = "[" + ",".join(_record_text(record) for record in pack) + "]"
        return text.encode("utf-8")
    except (UnicodeError, ValueError) as error:  # lone surrogates; giant integers
        raise EncodeError(f"cannot write SenML JSON: {error}") from None


def _record_text(record: senml.Record) -> str:
    members = (f"{json.dumps(label)}:{_value_text(value)}" for label, value in record.items())
    return "{" + ",".join(members) + "}"


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return '"' + base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii") + '"'
    raise EncodeError(f"SenML JSON cannot carry {type(value).__name__} {value!r}")


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise EncodeError(f"SenML JSON cannot carry {value!r}")
    negative_zero = value == 0 and math.copysign(1.0, value) < 0
    if value.is_integer() and abs(value) < 1e16 and not negative_zero:
        return str(int(value))  # "18" rather than "18.0"; repr switches to e-notation at 1e16
    return repr(value)


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    members: dict[str, object] = {}
    for key, value in pairs:
        if key in members:
            raise ValueError(f"field {key!r} appears twice in one record")
        for text in (key, value):
            if isinstance(text, str):
                text.encode("utf-8")  # a lone surrogate escape (\ud800) raises UnicodeError
        members[key] = value
    return members


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text} overflows a 64-bit float")
    return number


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _from_base64(text: object, where: str) -> bytes:
    """base64url without padding (RFC 8428 §5); padding and '+' '/' are tolerated."""
    if not isinstance(text, str) or not _BASE64.fullmatch(text):
        raise DecodeError(f"{where}: 'vd' is not base64 text")
    body = text.rstrip("=")
    if len(body) % 4 == 1 or (len(body) != len(text) and len(text) % 4):
        raise DecodeError(f"{where}: 'vd' has a base64 length that cannot be")
    padded = body.translate(_TO_STANDARD_ALPHABET) + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except ValueError as error:  # binascii.Error
        raise DecodeError(f"{where}: 'vd' is not base64: {error}") from None


_SERIALISATION = senml.Serialisation(lambda data: (load_pack(data), senml.TEXT_LABELS), dump_pack)
encode = _SERIALISATION.encode
decode = _SERIALISATION.decode
encode_composite = _SERIALISATION.encode_composite
decode_composite = _SERIALISATION.decode_composite
encode_paths = _SERIALISATION.encode_paths
decode_paths = _SERIALISATION.decode_paths
encode_timestamped = _SERIALISATION.encode_timestamped
decode_timestamped = _SERIALISATION.decode_timestamped
