"""What every codec module shares: content-format numbers and timestamped values."""

from __future__ import annotations

import enum
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import DecodeError, EncodeError, ModelError, PathError
from ..path import LwM2MPath
from ..values import Value


class ContentFormat(enum.IntEnum):
    """CoAP Content-Format numbers LwM2M uses (IANA CoAP Content-Formats registry)."""

    TEXT = 0
    """text/plain;charset=utf-8"""
    LINK = 40
    """application/link-format"""
    OPAQUE = 42
    """application/octet-stream"""
    SENML_JSON = 110
    """application/senml+json"""
    SENML_CBOR = 112
    """application/senml+cbor"""
    TLV = 11542
    """application/vnd.oma.lwm2m+tlv"""
    OMA_JSON = 11543
    """application/vnd.oma.lwm2m+json (LwM2M 1.0)"""
    LWM2M_CBOR = 11544
    """application/vnd.oma.lwm2m+cbor (LwM2M 1.2)"""


SENML_RELATIVE_TIME_LIMIT = 2**28
"""SenML times below this are relative to "now" (RFC 8428 §4.5.3)."""


@dataclass(frozen=True, slots=True)
class TimestampedValues:
    """Leaf values that share one timestamp (an Observe notification's history, a Send)."""

    time: float | None
    """SenML time as carried (base time + time); None when the payload had none.
    Values below :data:`SENML_RELATIVE_TIME_LIMIT` are relative to the receiver's "now"."""
    values: dict[LwM2MPath, Value] = field(default_factory=dict)
    """Leaf values by full path (``/o/i/r`` or ``/o/i/r/ri``)."""


def resolve_senml_time(time: float, now: float) -> float:
    """Absolute Unix time of a SenML time value, given the receiver's clock ``now``."""
    return now + time if time < SENML_RELATIVE_TIME_LIMIT else time


@contextmanager
def decode_errors() -> Iterator[None]:
    """Inside a decoder: re-raise model and path errors as :class:`DecodeError`."""
    try:
        yield
    except (ModelError, PathError) as error:
        raise DecodeError(error.reason) from None


@contextmanager
def encode_errors() -> Iterator[None]:
    """Inside an encoder: re-raise model and path errors as :class:`EncodeError`."""
    try:
        yield
    except (ModelError, PathError) as error:
        raise EncodeError(error.reason) from None
