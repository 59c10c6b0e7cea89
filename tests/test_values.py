"""Resource values: type checks, text forms, object links and times."""

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings

from ipso_objects import DecodeError, ModelError, ObjLnk, ResourceType
from ipso_objects.values import UINT_MAX, coerce, from_text, infer_type, to_text
from strategies import TYPE_ORDER, values_of

T = ResourceType


@pytest.mark.parametrize(
    "value, rtype, expected",
    [
        (5, T.FLOAT, 5.0),
        (0, T.TIME, datetime(1970, 1, 1, tzinfo=timezone.utc)),
        (bytearray(b"ab"), T.OPAQUE, b"ab"),
        (datetime(2020, 1, 1, 0, 0, 0, 999_999, tzinfo=timezone.utc), T.TIME,
         datetime(2020, 1, 1, tzinfo=timezone.utc)),
        (UINT_MAX, T.UNSIGNED_INTEGER, UINT_MAX),
    ],
)
def test_coerce_widens_and_normalises(value, rtype, expected):
    assert coerce(value, rtype) == expected


@pytest.mark.parametrize(
    "value, rtype, reason",
    [
        (True, T.INTEGER, "cannot hold bool"),
        (2**63, T.INTEGER, "signed 64-bit"),
        (-1, T.UNSIGNED_INTEGER, "out of range"),
        ("1", T.INTEGER, "cannot hold str"),
        (1, T.BOOLEAN, "cannot hold int"),
        (datetime(2020, 1, 1), T.TIME, "timezone-aware"),
        (1, T.NONE, "executable"),
        (b"x", T.STRING, "cannot hold bytes"),
    ],
)
def test_coerce_rejects_with_reason(value, rtype, reason):
    with pytest.raises(ModelError, match=reason):
        coerce(value, rtype)


@pytest.mark.parametrize(
    "value, rtype, text",
    [
        (True, T.BOOLEAN, "1"),
        (-42, T.INTEGER, "-42"),
        (1.5, T.FLOAT, "1.5"),
        (datetime(2001, 9, 9, 1, 46, 40, tzinfo=timezone.utc), T.TIME, "1000000000"),
        (ObjLnk(3, 0), T.OBJLNK, "3:0"),
        ("</3/0>", T.CORELNK, "</3/0>"),
    ],
)
def test_text_forms(value, rtype, text):
    assert to_text(value, rtype) == text
    assert from_text(text, rtype) == value


@pytest.mark.parametrize(
    "text, rtype",
    [("1_0", T.INTEGER), ("", T.INTEGER), ("0x10", T.INTEGER), ("2", T.BOOLEAN),
     ("nan", T.FLOAT), ("inf", T.FLOAT), ("1e999", T.FLOAT), ("1_0.5", T.FLOAT),
     ("3", T.OBJLNK), ("3:65536", T.OBJLNK), ("99999999999999", T.TIME), ("-1", T.UNSIGNED_INTEGER)],
)
def test_from_text_rejects(text, rtype):
    with pytest.raises(DecodeError):
        from_text(text, rtype)


def test_objlnk_range_and_null_link():
    assert str(ObjLnk(0xFFFF, 0xFFFF)) == "65535:65535"
    with pytest.raises(ModelError):
        ObjLnk(65536, 0)


def test_infer_type():
    assert infer_type(True) is T.BOOLEAN
    assert infer_type(2**64 - 1) is T.UNSIGNED_INTEGER
    assert infer_type(ObjLnk(1, 2)) is T.OBJLNK


@settings(max_examples=50)
@given(data=__import__("hypothesis").strategies.data())
def test_text_round_trip_every_text_type(data):
    for rtype in TYPE_ORDER:
        if rtype is T.OPAQUE:
            continue
        value = data.draw(values_of(rtype))
        assert from_text(to_text(value, rtype), rtype) == value
