"""Resource values: the Python type of each LwM2M data type, checks and text forms.

=====================  ==========================================
LwM2M type             Python value
=====================  ==========================================
String, Corelnk        ``str``
Integer                ``int`` in -2**63 .. 2**63-1
Unsigned Integer       ``int`` in 0 .. 2**64-1
Float                  ``float`` (IEEE 754 binary64)
Boolean                ``bool``
Opaque                 ``bytes``
Time                   ``datetime`` in UTC, whole seconds
Objlnk                 :class:`ObjLnk`
=====================  ==========================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Union

from .errors import DecodeError, ModelError
from .model import ResourceType

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
UINT_MAX = 2**64 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TIME_MIN = int((datetime.min.replace(tzinfo=timezone.utc) - EPOCH).total_seconds())
_DECIMAL_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
TIME_MAX = int((datetime.max.replace(tzinfo=timezone.utc) - EPOCH).total_seconds())


@dataclass(frozen=True, slots=True, order=True)
class ObjLnk:
    """An object link ``object_id:instance_id``; ``65535:65535`` is the null link."""

    object_id: int
    instance_id: int

    def __post_init__(self) -> None:
        for name in ("object_id", "instance_id"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 0xFFFF:
                raise ModelError(f"ObjLnk {name} must be an int in 0..65535, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> ObjLnk:
        """Parse ``"3:0"``; raises :class:`DecodeError` on anything else."""
        parts = text.split(":")
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
            raise DecodeError(f"objlnk {text!r} is not of the form 'object:instance'")
        try:
            return cls(int(parts[0]), int(parts[1]))
        except ModelError as error:
            raise DecodeError(error.reason) from None

    def __str__(self) -> str:
        return f"{self.object_id}:{self.instance_id}"


Value = Union[str, int, float, bool, bytes, datetime, ObjLnk]
"""A resource (instance) value; see the module table for which type is which."""


def show_number(value: int | float) -> str:
    """``value`` for an error message. A CBOR bignum can be thousands of digits long, more
    than Python converts to text (4,300 digits: ValueError): such an integer is given by size."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"a {value.bit_length()}-bit integer"
    return str(value)


def time_from_seconds(seconds: int) -> datetime:
    """Unix seconds to an aware UTC datetime; DecodeError when out of datetime's range."""
    if not TIME_MIN <= seconds <= TIME_MAX:
        raise DecodeError(f"time {show_number(seconds)} s is outside the representable years 1..9999")
    return EPOCH + timedelta(seconds=seconds)


def time_to_seconds(value: datetime) -> int:
    """An aware datetime to whole Unix seconds (sub-second part dropped toward -inf)."""
    return math.floor((value - EPOCH).total_seconds())


def infer_type(value: Value) -> ResourceType:
    """The LwM2M type a value naturally has, for resources the model does not know."""
    if isinstance(value, bool):
        return ResourceType.BOOLEAN
    if isinstance(value, int):
        return ResourceType.INTEGER if value <= INT_MAX else ResourceType.UNSIGNED_INTEGER
    if isinstance(value, float):
        return ResourceType.FLOAT
    if isinstance(value, str):
        return ResourceType.STRING
    if isinstance(value, (bytes, bytearray)):
        return ResourceType.OPAQUE
    if isinstance(value, datetime):
        return ResourceType.TIME
    if isinstance(value, ObjLnk):
        return ResourceType.OBJLNK
    raise ModelError(f"{type(value).__name__} is not a resource value type")


def coerce(value: object, rtype: ResourceType | None) -> Value:
    """Check that ``value`` fits ``rtype`` and return it in canonical form.

    Accepts the obvious widenings (int for Float, int seconds for Time, bytearray
    for Opaque). ``rtype=None`` (resource unknown to the model) keeps the value's
    natural type. Raises :class:`ModelError` naming the problem otherwise.
    """
    if rtype is None:
        rtype = infer_type(value)  # type: ignore[arg-type]
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        if isinstance(value, str):
            return value
    elif rtype is ResourceType.INTEGER:
        if isinstance(value, int) and not isinstance(value, bool):
            if INT_MIN <= value <= INT_MAX:
                return value
            raise ModelError(f"integer {show_number(value)} out of the signed 64-bit range")
    elif rtype is ResourceType.UNSIGNED_INTEGER:
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value <= UINT_MAX:
                return value
            raise ModelError(f"unsigned integer {show_number(value)} out of range 0..2**64-1")
    elif rtype is ResourceType.FLOAT:
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    elif rtype is ResourceType.BOOLEAN:
        if isinstance(value, bool):
            return value
    elif rtype is ResourceType.OPAQUE:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
    elif rtype is ResourceType.TIME:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ModelError("a Time value must be timezone-aware (UTC)")
            return time_from_seconds(time_to_seconds(value))
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return time_from_seconds(value)
            except DecodeError as error:
                raise ModelError(error.reason) from None
    elif rtype is ResourceType.OBJLNK:
        if isinstance(value, ObjLnk):
            return value
    elif rtype is ResourceType.NONE:
        raise ModelError("an executable resource has no value")
    raise ModelError(f"{rtype.value} resource cannot hold {type(value).__name__} {value!r}")


def to_text(value: Value, rtype: ResourceType) -> str:
    """The plain-text form of a value (Core spec, text/plain and SenML string forms).

    Opaque has no text form here: text/plain and SenML each define their own.
    """
    value = coerce(value, rtype)
    if rtype is ResourceType.BOOLEAN:
        return "1" if value else "0"
    if rtype is ResourceType.TIME:
        return str(time_to_seconds(value))  # type: ignore[arg-type]
    if rtype is ResourceType.FLOAT:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ModelError(f"float {value} has no LwM2M text form")
        return repr(value)
    if rtype is ResourceType.OPAQUE:
        raise ModelError("Opaque values have no plain-text form")
    return str(value)


def from_text(text: str, rtype: ResourceType) -> Value:
    """Parse the plain-text form of a value; raises :class:`DecodeError` when malformed."""
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        return text
    if rtype in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME):
        stripped = text.strip(" \t\r\n")
        body = stripped[1:] if stripped[:1] in "+-" else stripped
        if not body or not body.isascii() or not body.isdigit():
            raise DecodeError(f"{text!r} is not a decimal {rtype.value}")
        number = int(stripped)
        if rtype is ResourceType.TIME:
            return time_from_seconds(number)
        try:
            return coerce(number, rtype)
        except ModelError as error:
            raise DecodeError(error.reason) from None
    if rtype is ResourceType.FLOAT:
        stripped = text.strip(" \t\r\n")
        if not _DECIMAL_FLOAT.fullmatch(stripped):
            raise DecodeError(f"{text!r} is not a decimal Float")
        number = float(stripped)
        if not math.isfinite(number):
            raise DecodeError(f"{text!r} overflows a 64-bit Float")
        return number
    if rtype is ResourceType.BOOLEAN:
        if text.strip() in ("0", "1"):
            return text.strip() == "1"
        raise DecodeError(f"{text!r} is not a Boolean (0 or 1)")
    if rtype is ResourceType.OBJLNK:
        return ObjLnk.parse(text.strip())
    if rtype is ResourceType.OPAQUE:
        raise DecodeError("Opaque values have no plain-text form")
    raise DecodeError(f"{rtype.value} resources carry no value")
