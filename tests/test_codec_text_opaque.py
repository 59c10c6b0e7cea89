"""Plain text (content format 0) and opaque (42) codecs: single values only."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipso_objects import (
    DecodeError,
    EncodeError,
    LwM2MPath,
    MultiResource,
    Object,
    ObjectInstance,
    ObjLnk,
    Resource,
    ResourceInstance,
    ResourceType,
)
from ipso_objects.codecs import ContentFormat
from ipso_objects.codecs import decode as dispatch_decode
from ipso_objects.codecs import encode as dispatch_encode
from ipso_objects.codecs import opaque, text
from strategies import (
    ALL_TYPES_OBJECT,
    MULTIPLE_RESOURCE,
    SINGLE_RESOURCE,
    TYPE_ORDER,
    single_value_nodes,
)

P = LwM2MPath.of
UTC = timezone.utc
UNKNOWN_OBJECT = 32001

# --- plain text: vectors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path", "node"),
    [
        # Core 1.0 §6.4.1 / 1.1 §7.4.1 Plain Text example: GET /3/0/0 answers
        # "Open Mobile Alliance".
        (b"Open Mobile Alliance", P(3, 0, 0), Resource(0, "Open Mobile Alliance")),
        # Leshan LwM2mNodeDecoderTest text_battery_resource: /3/0/9 "100".
        (b"100", P(3, 0, 9), Resource(9, 100)),
        # Current Time of the Core spec's Device example (TLV C4 0D 5182428F), as text.
        (b"1367491215", P(3, 0, 13), Resource(13, datetime(2013, 5, 2, 10, 40, 15, tzinfo=UTC))),
        (b"-5", P(ALL_TYPES_OBJECT, 0, 1), Resource(1, -5)),
        (b"18446744073709551615", P(1, 0, 11), Resource(11, 2**64 - 1)),
        (b"23.5", P(3303, 0, 5700), Resource(5700, 23.5)),
        (b"1", P(1, 0, 6), Resource(6, True)),
        (b"0", P(1, 0, 6), Resource(6, False)),
        (b"66:0", P(1, 0, 10), Resource(10, ObjLnk(66, 0))),
        (b"</3/0>,</1/0>", P(ALL_TYPES_OBJECT, 0, 8), Resource(8, "</3/0>,</1/0>")),
        (b"\xc3\xa9t\xc3\xa9", P(3, 0, 1), Resource(1, "été")),
        # A resource instance of a multiple-instance resource (Available Power Sources).
        (b"5", P(3, 0, 6, 1), ResourceInstance(1, 5)),
        # LwM2M 1.0 writes Opaque as base64 in plain text; Leshan's
        # text_decode_opaque_from_base64_string uses /5/0/0 "AQIDBAU=".
        (b"AQIDBAU=", P(5, 0, 0), Resource(0, b"\x01\x02\x03\x04\x05")),
        (b"", P(5, 0, 0), Resource(0, b"")),
        # A resource the model does not know stays text.
        (b"42", P(UNKNOWN_OBJECT, 0, 0), Resource(0, "42")),
    ],
)
def test_text_vectors_decode_and_encode_back(registry, payload, path, node):
    assert text.decode(payload, path, registry) == node
    assert text.encode(node, path, registry) == payload


def test_text_decode_tolerates_surrounding_whitespace_in_numbers(registry):
    assert text.decode(b" 100\n", P(3, 0, 9), registry) == Resource(9, 100)


def test_text_encodes_unknown_resources_by_value_type(registry):
    path = P(UNKNOWN_OBJECT, 0, 0)
    assert text.encode(Resource(0, 7), path, registry) == b"7"
    assert text.encode(Resource(0, True), path, registry) == b"1"
    assert text.encode(Resource(0, b"\x01\x02"), path, registry) == b"AQI="


def test_dispatch_reaches_text_and_opaque(registry):
    assert dispatch_decode(ContentFormat.TEXT, b"100", P(3, 0, 9), registry) == Resource(9, 100)
    package = Resource(0, b"\x00\xff")
    assert dispatch_encode(ContentFormat.OPAQUE, package, P(5, 0, 0), registry) == b"\x00\xff"


# --- plain text: errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path", "message"),
    [
        (b"100", P(3, 0), "not a resource or resource instance"),
        (b"100", P(3), "not a resource or resource instance"),
        (b"1", P(3, 0, 6), "multiple-instance resource"),
        (b"1", P(3, 0, 9, 0), "single-instance resource"),
        (b"", P(3, 0, 4), "executable"),
        (b"\xff\xfe", P(3, 0, 0), "not valid UTF-8"),
        (b"\xc3(", P(UNKNOWN_OBJECT, 0, 0), "not valid UTF-8"),
        (b"abc", P(3, 0, 9), "not a decimal Integer"),
        (b"2", P(1, 0, 6), "Boolean"),
        (b"1e999", P(3303, 0, 5700), "overflows"),
        (b"\x1c5", P(3303, 0, 5700), "not a decimal Float"),  # whitespace float() rejects
        (b"66", P(1, 0, 10), "objlnk"),
        (b"-1", P(1, 0, 11), "out of range"),
        # Leshan text_decode_should_throw_an_exception_for_invalid_base64.
        (b"!,-INVALID$_'", P(5, 0, 0), "not valid base64"),
        (b"AQIDBAU", P(5, 0, 0), "not valid base64"),  # padding missing
        ("é".encode(), P(5, 0, 0), "not valid base64"),
    ],
)
def test_text_decode_errors_name_the_problem(registry, payload, path, message):
    with pytest.raises(DecodeError, match=message):
        text.decode(payload, path, registry)


@pytest.mark.parametrize(
    ("node", "path", "message"),
    [
        (MultiResource(6, {0: 1}), P(3, 0, 6), "carries one value, not a MultiResource"),
        (ObjectInstance(0, {}), P(3, 0), "carries one value, not a ObjectInstance"),
        (Object(3, {}), P(3), "carries one value"),
        (Resource(6, 1), P(3, 0, 6), "multiple-instance resource"),
        (ResourceInstance(0, 1), P(3, 0, 9, 0), "single-instance resource"),
        (Resource(9, "full"), P(3, 0, 9), "Integer resource cannot hold str"),
        (Resource(5700, float("nan")), P(3303, 0, 5700), "no LwM2M text form"),
        (Resource(0, "\ud800"), P(3, 0, 0), "UTF-8"),
        (Resource(1, 5), P(3, 0, 0), "does not match"),
    ],
)
def test_text_encode_errors_name_the_problem(registry, node, path, message):
    with pytest.raises(EncodeError, match=message):
        text.encode(node, path, registry)


# --- plain text: properties ------------------------------------------------------------


@pytest.mark.parametrize("rtype", TYPE_ORDER, ids=lambda t: t.name)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_text_round_trip_for_every_type(registry, rtype, data):
    node, path = data.draw(single_value_nodes(rtype))
    assert text.decode(text.encode(node, path, registry), path, registry) == node
    riid = data.draw(st.integers(0, 65534))
    instance_path = P(ALL_TYPES_OBJECT, 0, MULTIPLE_RESOURCE[rtype], riid)
    instance = ResourceInstance(riid, node.value)
    payload = text.encode(instance, instance_path, registry)
    assert text.decode(payload, instance_path, registry) == instance


TEXT_FUZZ_PATHS = [P(ALL_TYPES_OBJECT, 0, rid) for rid in SINGLE_RESOURCE.values()] + [
    P(ALL_TYPES_OBJECT, 0, 10, 3),
    P(ALL_TYPES_OBJECT, 0, 14, 0),
    P(ALL_TYPES_OBJECT, 0, 9),
    P(ALL_TYPES_OBJECT, 0),
    P(UNKNOWN_OBJECT, 1, 2),
    P(3, 0, 13),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.sampled_from(TEXT_FUZZ_PATHS))
def test_text_arbitrary_bytes_raise_only_decode_error(registry, data, path):
    try:
        text.decode(data, path, registry)
    except DecodeError:
        pass


NUMBERISH = st.text(alphabet="0123456789.-+eE: \t\n\x1c\x1f\x85\xa0\u2028", max_size=12)
"""Strings close to numbers, with the odd whitespace ``str.strip`` and ``float`` disagree on."""


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), NUMBERISH), st.sampled_from(TEXT_FUZZ_PATHS))
def test_text_arbitrary_strings_raise_only_decode_error(registry, string, path):
    try:
        text.decode(string.encode("utf-8", "surrogatepass"), path, registry)
    except DecodeError:
        pass


# --- opaque ----------------------------------------------------------------------------


def test_opaque_carries_raw_bytes_of_opaque_resources(registry):
    # Core 1.1 §7.4.2: e.g. a firmware package written to /5/0/0 as is.
    package = bytes(range(256)) * 4
    assert opaque.decode(package, P(5, 0, 0), registry) == Resource(0, package)
    assert opaque.encode(Resource(0, package), P(5, 0, 0), registry) == package
    instance_path = P(ALL_TYPES_OBJECT, 0, MULTIPLE_RESOURCE[ResourceType.OPAQUE], 3)
    assert opaque.decode(b"\x00", instance_path, registry) == ResourceInstance(3, b"\x00")
    from_bytearray = ResourceInstance(3, bytearray(b"\x00"))
    assert opaque.encode(from_bytearray, instance_path, registry) == b"\x00"
    # A resource the model does not know is taken as Opaque.
    assert opaque.decode(b"\xff", P(UNKNOWN_OBJECT, 0, 1), registry) == Resource(1, b"\xff")
    assert opaque.encode(Resource(1, b"\xff"), P(UNKNOWN_OBJECT, 0, 1), registry) == b"\xff"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (P(3, 0, 0), "String resource; application/octet-stream carries only Opaque"),
        (P(3, 0), "not a resource or resource instance"),
        (P(ALL_TYPES_OBJECT, 0, MULTIPLE_RESOURCE[ResourceType.OPAQUE]), "multiple-instance"),
        (P(5, 0, 0, 0), "single-instance"),
        (P(5, 0, 2), "executable"),
    ],
)
def test_opaque_decode_errors_name_the_problem(registry, path, message):
    with pytest.raises(DecodeError, match=message):
        opaque.decode(b"\x01", path, registry)


@pytest.mark.parametrize(
    ("node", "path", "message"),
    [
        (Resource(0, "Open Mobile Alliance"), P(3, 0, 0), "String resource"),
        (Resource(0, "not bytes"), P(5, 0, 0), "Opaque resource cannot hold str"),
        (Resource(1, 5), P(UNKNOWN_OBJECT, 0, 1), "Opaque resource cannot hold int"),
        (MultiResource(14, {0: b""}), P(ALL_TYPES_OBJECT, 0, 14), "not a MultiResource"),
        (Object(5, {}), P(5), "not a Object"),
        (Resource(1, b""), P(5, 0, 0), "does not match"),
    ],
)
def test_opaque_encode_errors_name_the_problem(registry, node, path, message):
    with pytest.raises(EncodeError, match=message):
        opaque.encode(node, path, registry)


@settings(max_examples=200, deadline=None)
@given(single_value_nodes(ResourceType.OPAQUE))
def test_opaque_round_trip(registry, node_and_path):
    node, path = node_and_path
    assert opaque.decode(opaque.encode(node, path, registry), path, registry) == node


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.sampled_from(TEXT_FUZZ_PATHS))
def test_opaque_arbitrary_bytes_raise_only_decode_error(registry, data, path):
    try:
        node = opaque.decode(data, path, registry)
    except DecodeError:
        return
    assert node.value == data  # whenever it decodes, the value is the payload itself
