"""LwM2M CBOR (11544): spec/implementation vectors both ways, errors, round trips, fuzzing.

Byte vectors marked "Anjay" come from AVSystem Anjay's unit tests
(tests/core/io/lwm2m_cbor_in.c and lwm2m_cbor_out.c). Object 13/14 are not in
our registry there, so their values decode by CBOR major type.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipso_objects import (
    LwM2MPath,
    MultiResource,
    Object,
    ObjectInstance,
    ObjLnk,
    Resource,
    ResourceInstance,
)
from ipso_objects.codecs import ContentFormat
from ipso_objects.codecs import decode as dispatch_decode
from ipso_objects.codecs import lwm2m_cbor
from ipso_objects.errors import DecodeError, EncodeError, UnsupportedFormatError
from ipso_objects.model import ResourceType
from ipso_objects.nodes import flatten
from ipso_objects.values import EPOCH, time_from_seconds

from spec_examples import DEVICE_INSTANCE, DEVICE_TIME
from strategies import (
    ALL_TYPES_OBJECT,
    MULTIPLE_RESOURCE,
    SINGLE_RESOURCE,
    addressed_nodes,
    objects,
    times,
)

P = LwM2MPath.parse
X = bytes.fromhex
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_way(data: bytes, path: str, registry) -> object:
    return lwm2m_cbor.decode(data, P(path), registry)


def both_ways(data: bytes, path: str, expected, registry) -> None:
    """The vector decodes to ``expected`` and ``expected`` encodes back to the vector."""
    assert lwm2m_cbor.decode(data, P(path), registry) == expected
    assert lwm2m_cbor.encode(expected, P(path), registry) == data


# ----------------------------------------------------------------- spec and implementation vectors


def test_single_resource_with_array_key(registry) -> None:
    # Anjay lwm2m_cbor_in.c "single_resource": {[13, 26, 1]: 42}
    both_ways(X("a1830d181a01182a"), "/13/26/1", Resource(1, 42), registry)


@pytest.mark.parametrize(
    "vector",
    [
        "a10da1181aa101182a",  # Anjay "single_resource_nested": {13: {26: {1: 42}}}
        "a1810da181181aa18101182a",  # Anjay "single_resource_nested_arrays": {[13]: {[26]: {[1]: 42}}}
        "bf9f0d181a01ff182aff",  # Anjay "single_resource_indefinite": {_ [_ 13, 26, 1]: 42}
        # Anjay "single_resource_nested_arrays_all_indefinite": {_ [_ 13]: {_ [_ 26]: {_ [_ 1]: 42}}}
        "bf9f0dffbf9f181affbf9f01ff182affffff",
    ],
)
def test_every_legal_grouping_decodes_to_the_same_resource(vector: str, registry) -> None:
    node = one_way(X(vector), "/13/26/1", registry)
    assert node == Resource(1, 42)
    # ... and re-encodes in the one deterministic form
    assert lwm2m_cbor.encode(node, P("/13/26/1"), registry) == X("a1830d181a01182a")


@pytest.mark.parametrize(
    "vector",
    [
        "a1820d181aa201182a0215",  # Anjay "two_resources_1": {[13, 26]: {1: 42, 2: 21}}
        "a2830d181a01182a830d181a0215",  # Anjay "two_resources_2": {[13, 26, 1]: 42, [13, 26, 2]: 21}
        "a2820d181aa101182a830d181a0215",  # Anjay "two_resources_3": {[13, 26]: {1: 42}, [13, 26, 2]: 21}
        "a2830d181a01182a820d181aa1810215",  # Anjay "two_resources_4": {[13, 26, 1]: 42, [13, 26]: {[2]: 21}}
    ],
)
def test_keys_that_meet_in_one_instance_are_merged(vector: str, registry) -> None:
    expected = ObjectInstance(26, {1: Resource(1, 42), 2: Resource(2, 21)})
    assert one_way(X(vector), "/13/26", registry) == expected
    assert lwm2m_cbor.encode(expected, P("/13/26"), registry) == X("a1820d181aa201182a0215")


def test_all_wire_types_of_an_unknown_object(registry) -> None:
    # Anjay "all_types": {[13, 26]: {1: 1, 2: -1, 3: 2.5, 4: "test", 5: h'11223344', 6: "12:34", 7: 1}}
    # 2.5 travels as a half float (f9 4100), the shortest lossless width.
    vector = X("a1820d181aa70101022003f94100046474657374054411223344066531323a33340701")
    expected = ObjectInstance(26, {
        1: Resource(1, 1), 2: Resource(2, -1), 3: Resource(3, 2.5), 4: Resource(4, "test"),
        5: Resource(5, b"\x11\x22\x33\x44"), 6: Resource(6, "12:34"), 7: Resource(7, 1),
    })
    both_ways(vector, "/13/26", expected, registry)


def test_byte_and_text_strings_definite_and_chunked(registry) -> None:
    data = bytes.fromhex("00112233445566778899aabbccddeeff")
    # Anjay "bytes": {[13, 26, 1]: h'00112233445566778899AABBCCDDEEFF'}
    both_ways(X("a1830d181a0150") + data, "/13/26/1", Resource(1, data), registry)
    # Anjay "bytes_indefinite": the same bytes in two chunks
    chunked = X("a1830d181a015f48") + data[:8] + X("48") + data[8:] + X("ff")
    assert one_way(chunked, "/13/26/1", registry) == Resource(1, data)
    # Anjay "string": {[13, 26, 1]: "c--cossiezepsulo"}
    text = "c--cossiezepsulo"
    both_ways(X("a1830d181a0170") + text.encode(), "/13/26/1", Resource(1, text), registry)


def test_decimal_fraction_at_the_deepest_nesting(registry) -> None:
    # Anjay "max_possible_nesting": {[13]: {[26]: {[1]: {[2]: 4([-1, 45])}}}} = 4.5
    node = one_way(X("a1810da181181aa18101a18102c48220182d"), "/13/26/1/2", registry)
    assert node == ResourceInstance(2, 4.5)
    assert lwm2m_cbor.encode(node, P("/13/26/1/2"), registry) == X("a1840d181a0102f94480")


# The Device object instance of the Core spec's Read /3/0 examples (the values of
# the TLV §7.4.3 and JSON §7.4.4/§6.4.4 examples), laid out as LwM2M CBOR §7.4.6.
# Hex derived from this diagnostic notation with cbor2.dumps, not with our codec:
# {[3, 0]: {0: "Open Mobile Alliance", 1: "Lightweight M2M Client", 2: "345000123",
#           3: "1.0", 6: {0: 1, 1: 5}, 7: {0: 3800, 1: 5000}, 8: {0: 125, 1: 900},
#           9: 100, 10: 15, 11: {0: 0}, 13: 1(1367491215), 14: "+02:00", 16: "U"}}
DEVICE_CBOR = X(
    "a1820300ad00744f70656e204d6f62696c6520416c6c69616e636501764c6967"
    "6874776569676874204d324d20436c69656e7402693334353030303132330363"
    "312e3006a20001010507a200190ed80119138808a200187d011903840918640a"
    "0f0ba100000dc11a5182428f0e662b30323a3030106155"
)


def test_device_instance_typed_by_the_model(registry) -> None:
    assert time_from_seconds(1367491215) == DEVICE_TIME
    both_ways(DEVICE_CBOR, "/3/0", DEVICE_INSTANCE, registry)
    # the same instance addressed as the whole object: {3: {0: {...}}}
    body = DEVICE_CBOR[4:]
    both_ways(X("a103a100") + body, "/3", Object(3, {0: DEVICE_INSTANCE}), registry)
    decoded = dispatch_decode(ContentFormat.LWM2M_CBOR, DEVICE_CBOR, P("/3/0"), registry)
    assert decoded == DEVICE_INSTANCE


@pytest.mark.parametrize(
    "vector",
    [
        "a18303000d1a5182428f",  # {[3, 0, 13]: 1367491215} (plain integer)
        "a18303000dc11a5182428f",  # {[3, 0, 13]: 1(1367491215)} (what we send)
        "a18303000dc074323031332d30352d30325431303a34303a31355a",  # {[3,0,13]: 0("2013-05-02T10:40:15Z")}
    ],
)
def test_time_forms_of_appendix_c2_are_accepted(vector: str, registry) -> None:
    # Core 1.2 Appendix C.2: Time is "an unsigned integer or a date/time string as
    # defined in RFC 7049 §2.4.1"; we send tag 1 and accept all three.
    assert one_way(X(vector), "/3/0/13", registry) == Resource(13, DEVICE_TIME)


def test_values_by_model_type(registry) -> None:
    def single(rtype: ResourceType, value, hex_value: str) -> None:
        rid = SINGLE_RESOURCE[rtype]
        path = f"/{ALL_TYPES_OBJECT}/0/{rid}"
        vector = X("a183197d0000") + bytes([rid]) + X(hex_value)  # {[32000, 0, rid]: value}
        both_ways(vector, path, Resource(rid, value), registry)

    single(ResourceType.FLOAT, 1.5, "f93e00")  # half float
    single(ResourceType.FLOAT, 100000.0, "fa47c35000")  # single float
    single(ResourceType.FLOAT, 1.1, "fb3ff199999999999a")  # only a double is lossless
    single(ResourceType.FLOAT, math.inf, "f97c00")
    single(ResourceType.INTEGER, -(2**63), "3b7fffffffffffffff")
    single(ResourceType.UNSIGNED_INTEGER, 2**64 - 1, "1bffffffffffffffff")
    single(ResourceType.BOOLEAN, False, "f4")
    single(ResourceType.OPAQUE, b"\x00\xff", "4200ff")
    single(ResourceType.STRING, "\u00e9", "62c3a9")
    single(ResourceType.CORELNK, "</3/0>", "663c2f332f303e")
    single(ResourceType.OBJLNK, ObjLnk(3, 0), "63333a30")
    five_seconds_before_epoch = EPOCH.replace(year=1969, month=12, day=31, hour=23, minute=59, second=55)
    single(ResourceType.TIME, five_seconds_before_epoch, "c124")


def test_integer_sent_for_a_float_resource_widens(registry) -> None:
    path = f"/{ALL_TYPES_OBJECT}/0/{SINGLE_RESOURCE[ResourceType.FLOAT]}"
    node = one_way(cbor2.dumps({tuple(P(path).ids): 7}), path, registry)
    assert node == Resource(SINGLE_RESOURCE[ResourceType.FLOAT], 7.0)
    assert isinstance(node.value, float)


# ----------------------------------------------------------------- empty containers


@pytest.mark.parametrize(
    ("payload", "path", "expected"),
    [
        ({32000: {}}, "/32000", Object(32000, {})),
        ({32000: {4: {}}}, "/32000", Object(32000, {4: ObjectInstance(4, {})})),
        ({(32000, 4): {}}, "/32000/4", ObjectInstance(4, {})),
        ({(32000, 4): {9: {}}}, "/32000/4", ObjectInstance(4, {9: MultiResource(9, {})})),
        ({(32000, 4, 9): {}}, "/32000/4/9", MultiResource(9, {})),
    ],
)
def test_empty_maps_round_trip(payload, path, expected, registry) -> None:
    both_ways(cbor2.dumps(payload, canonical=True), path, expected, registry)


def test_absent_multi_resource_is_empty_but_absent_single_resource_is_an_error(registry) -> None:
    assert one_way(cbor2.dumps({}), "/3/0/6", registry) == MultiResource(6, {})
    with pytest.raises(DecodeError, match="no value for /3/0/9"):
        one_way(cbor2.dumps({}), "/3/0/9", registry)


# ----------------------------------------------------------------- composite


def test_composite_from_the_root(registry) -> None:
    # Anjay "composite": {13: {26: {1: 1}}, 14: {27: {2: 2}}}
    vector = X("a20da1181aa101010ea1181ba10202")
    values = {P("/13/26/1"): 1, P("/14/27/2"): 2}
    assert lwm2m_cbor.decode_composite(vector, registry) == values
    assert lwm2m_cbor.encode_composite(values, registry) == vector
    # Anjay "composite_indefinite_maps_and_arrays": the same with [_ id] keys everywhere
    indefinite = X("bf9f0dffbf9f181affbf9f01ff01ffff9f0effbf9f181bffbf9f02ff02ffffff")
    assert lwm2m_cbor.decode_composite(indefinite, registry) == values


def test_composite_of_several_objects_typed_by_model(registry) -> None:
    values = {P("/3/0/0"): "Open Mobile Alliance", P("/3/0/6/1"): 5, P("/3/0/13"): DEVICE_TIME,
              P("/3303/0/5700"): 22.5}
    encoded = lwm2m_cbor.encode_composite(values, registry)
    assert cbor2.loads(encoded) == {
        3: {0: {0: "Open Mobile Alliance", 6: {1: 5}, 13: DEVICE_TIME}}, 3303: {0: {5700: 22.5}}}
    assert lwm2m_cbor.decode_composite(encoded, registry) == values


def test_composite_encode_rejects_overlapping_and_short_paths(registry) -> None:
    with pytest.raises(EncodeError, match="/32000/0/9"):
        lwm2m_cbor.encode_composite({P("/32000/0/9"): 1, P("/32000/0/9/0"): 2}, registry)
    with pytest.raises(EncodeError, match="/3/0 is not at a resource"):
        lwm2m_cbor.encode_composite({P("/3/0"): 1}, registry)


def test_lwm2m_cbor_has_no_timestamped_form(registry) -> None:
    from ipso_objects.codecs import decode_timestamped

    with pytest.raises(UnsupportedFormatError):
        decode_timestamped(ContentFormat.LWM2M_CBOR, DEVICE_CBOR, P("/3/0"), registry)


# ----------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("vector", "path", "message"),
    [
        ("a1820d181aa11a0001000005", "/13/26", "id 65536 under /13/26 is out of range"),  # Anjay
        ("a1830d181a1a0001000005", "/13/26", "id 65536 under / is out of range"),  # Anjay
        ("a1830d181a19ffff05", "/13/26", "id 65535 under / is out of range"),  # 65535 is reserved
        ("a1850d181a03040505", "/13/26", "/13/26/3/4/5 is deeper"),  # Anjay "path_too_long_1"
        ("a10da1181aa101a102a10304", "/13/26/1/2", "/13/26/1/2 is a resource instance: expected a value"),
        ("a20da180181aa18001182a", "/", "is not an id or a non-empty array"),  # Anjay empty array keys
        ("a10da162323601", "/13", "map key a text string under /13"),  # Anjay "path_unexpected_type_3"
        ("a1830dfb3fd0a3d70a3d70a401182a", "/13", "map key an array under /"),  # Anjay float in key array
        ("a1830d181a01182a", "/14", "/13 is outside the requested path /14"),  # Anjay "path_outside_base_1"
        ("a1830d181a01182a", "/13/26/2", "/13/26/1 is outside the requested path /13/26/2"),
        ("a1830d181a01182a", "/13/26/1/69", "/13/26/1 holds a single value"),  # Anjay "path_outside_base_4"
        ("a10da1181a81a101182a", "/13", "/13/26 is an object or instance: expected a map, got an array"),
        ("a10305", "/3", "/3 is an object or instance: expected a map, got an integer"),
        ("a182030005", "/3/0", "/3/0 is an object or instance"),
        ("00", "/3", "is a map, got an integer"),  # Anjay "not_a_map_int"
        ("8401020304", "/3", "is a map, got an array"),  # Anjay "not_a_map_array"
        ("a1820d181aa1", "/13", "malformed CBOR"),  # Anjay "path_sudden_nested_map_end"
        ("a1830d181a01182a00", "/13", "1 bytes follow"),
        ("", "/3", "malformed CBOR"),
        ("a2830d181a0101830d181a0102", "/13", "malformed CBOR"),  # duplicate key in one map
        ("a2830d181a01010da1181aa10102", "/13", "/13/26/1 appears more than once"),  # after flattening
        ("a2830d181a0a01830d181a0a01", "/13", "malformed CBOR"),
        ("a2840d181a0a0001830d181a0a01", "/13", "/13/26/10 has both a value and nested entries"),
    ],
)
def test_malformed_payloads_name_the_problem(vector: str, path: str, message: str,
                                             registry) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)):
        if path == "/":
            lwm2m_cbor.decode_composite(X(vector), registry)
        else:
            one_way(X(vector), path, registry)


@pytest.mark.parametrize(
    ("payload", "path", "message"),
    [
        ({(3, 0, 9): "100"}, "/3/0/9", "/3/0/9: Integer resource cannot be a text string"),
        ({(3, 0, 9): 2**63}, "/3/0/9", "/3/0/9: 9223372036854775808 is out of the Integer range"),
        ({(32000, 0, 2): -1}, "/32000/0/2", "out of the Unsigned Integer range"),
        ({(3, 0, 0): b"OMA"}, "/3/0/0", "/3/0/0: String resource cannot be a byte string"),
        ({(3, 0, 0): None}, "/3/0/0", "cannot be null"),
        ({(3, 0, 22, 0): "3:x"}, "/3/0/22/0", "/3/0/22/0: objlnk '3:x'"),
        ({(3, 0, 13): "1367491215"}, "/3/0/13", "/3/0/13: Time resource cannot be a text string"),
        ({(3, 0, 13): cbor2.CBORTag(1, "x")}, "/3/0/13", "tag 1 must hold a number"),
        ({(3, 0, 13): cbor2.CBORTag(0, "yesterday")}, "/3/0/13", "is not an RFC 3339 date/time"),
        ({(3, 0, 9): cbor2.CBORTag(2, b"\x01")}, "/3/0/9", "cannot be tag 2"),  # bignums never fit
        ({(13, 0, 1): None}, "/13/0/1", "/13/0/1: null is not a resource value"),
        ({(13, 0, 1): 2**64}, "/13/0/1", "is not a resource value"),  # cbor2 sends it as bignum
        ({(32000, 0, 3): cbor2.CBORTag(4, [9999, 1])}, "/32000/0/3", "exponent 9999 is out of range"),
        ({(32000, 0, 3): cbor2.CBORTag(4, [999, 1])}, "/32000/0/3", "overflows a 64-bit float"),
        ({(3, 0, 6): 1}, "/3/0/6", "/3/0/6 is a multiple-instance resource"),
        ({(3, 0, 9): {0: 1}}, "/3/0/9", "/3/0/9 is a single-instance resource: expected a value, got a map"),
        ({(3, 0, 9, 0): 1}, "/3/0/9/0", "/3/0/9 is a single-instance resource: no instance 0"),
    ],
)
def test_values_that_do_not_fit_the_model(payload, path: str, message: str, registry) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)):
        one_way(cbor2.dumps(payload), path, registry)


def test_decode_needs_a_node_path(registry) -> None:
    with pytest.raises(DecodeError, match="not /"):
        lwm2m_cbor.decode(DEVICE_CBOR, LwM2MPath(), registry)


@pytest.mark.parametrize(
    ("node", "path", "message"),
    [
        (Resource(9, "100"), "/3/0/9", "/3/0/9: Integer resource cannot hold str"),
        (Resource(6, 1), "/3/0/6", "/3/0/6 is a multiple-instance resource"),
        (MultiResource(9, {0: 1}), "/3/0/9", "/3/0/9 is a single-instance resource"),
        (ResourceInstance(0, 1), "/3/0/9/0", "/3/0/9 is a single-instance resource"),
        (Resource(1, 1), "/3/0/2", "does not match path"),
        (ObjectInstance(0, {1: Resource(2, "x")}), "/3/0", "/3/0/1: node keyed 1 has id 2"),
        (Object(3, {0: Resource(0, "x")}), "/3", "/3/0: Resource cannot sit at this depth"),
        (Resource(0, "\ud800"), "/3/0/0", "cannot encode as CBOR"),
        (Resource(13, datetime(2020, 1, 1)), "/3/0/13", "timezone-aware"),
    ],
)
def test_encode_rejects_what_the_model_forbids(node, path: str, message: str, registry) -> None:
    with pytest.raises(EncodeError, match=re.escape(message)):
        lwm2m_cbor.encode(node, P(path), registry)


# ----------------------------------------------------------------- properties


@ROUND_TRIP
@given(addressed_nodes())
def test_round_trip_every_type_and_depth(registry, addressed) -> None:
    node, path = addressed
    encoded = lwm2m_cbor.encode(node, path, registry)
    assert lwm2m_cbor.decode(encoded, path, registry) == node
    assert lwm2m_cbor.encode(lwm2m_cbor.decode(encoded, path, registry), path, registry) == encoded


natural_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.booleans(),
    times,
)
unknown_object_values = st.dictionaries(
    st.tuples(st.integers(40000, 40002), st.integers(0, 3), st.integers(0, 65534)).map(
        lambda ids: LwM2MPath(ids)
    ),
    natural_values,
    max_size=6,
)
device_values = st.fixed_dictionaries(
    {},
    optional={
        P("/3/0/0"): st.text(max_size=10),
        P("/3/0/6/0"): st.integers(0, 7),
        P("/3/0/6/3"): st.integers(0, 7),
        P("/3/0/13"): times,
        P("/3/0/22/1"): st.builds(ObjLnk, st.integers(0, 65535), st.integers(0, 65535)),
    },
)


@ROUND_TRIP
@given(objects(), device_values, unknown_object_values)
def test_composite_round_trip_across_objects(registry, all_types, device, unknown) -> None:
    values = {**flatten(all_types, LwM2MPath.of(ALL_TYPES_OBJECT)), **device, **unknown}
    encoded = lwm2m_cbor.encode_composite(values, registry)
    assert lwm2m_cbor.decode_composite(encoded, registry) == values


DECODE_PATHS = [P("/32000"), P("/32000/0"), P("/32000/0/1"),
                P(f"/32000/0/{MULTIPLE_RESOURCE[ResourceType.TIME]}/0"), P("/3/0"), P("/0")]


def decodes_or_rejects(data: bytes, registry) -> None:
    """Only DecodeError may come out, whatever the input."""
    for path in DECODE_PATHS:
        try:
            lwm2m_cbor.decode(data, path, registry)
        except DecodeError:
            pass
    try:
        lwm2m_cbor.decode_composite(data, registry)
    except DecodeError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(registry, data: bytes) -> None:
    decodes_or_rejects(data, registry)


cbor_scalars = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.booleans(),
    st.none(),
    st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 4, 28, 29, 100, 258, 1000]),
              st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=3))),
)
likely_ids = st.sampled_from([0, 1, 3, 9, 13, 32000])
cbor_keys = st.one_of(
    likely_ids,
    st.lists(likely_ids, min_size=1, max_size=4).map(tuple),
    st.integers(min_value=-2, max_value=70000),
    st.lists(st.integers(min_value=-1, max_value=65536), max_size=5).map(tuple),
    st.text(max_size=3),
    st.floats(allow_nan=False),
)


@st.composite
def id_keyed_maps(draw):
    """Random maps shaped like LwM2M CBOR (ids, id arrays, odd keys) with random leaves."""
    tree = st.recursive(
        cbor_scalars | st.lists(cbor_scalars, max_size=3),
        lambda children: st.dictionaries(cbor_keys, children, max_size=4),
        max_leaves=12,
    )
    return draw(st.dictionaries(cbor_keys, tree, max_size=4))


@FUZZ
@given(id_keyed_maps())
def test_random_structured_cbor_raises_only_decode_error(registry, payload) -> None:
    decodes_or_rejects(cbor2.dumps(payload), registry)


@FUZZ
@given(addressed_nodes(), st.integers(min_value=0), st.integers(min_value=0, max_value=255),
       st.booleans())
def test_corrupted_valid_payloads_raise_only_decode_error(registry, addressed, where, byte,
                                                          truncate) -> None:
    node, path = addressed
    encoded = bytearray(lwm2m_cbor.encode(node, path, registry))
    where %= len(encoded)
    if truncate:
        del encoded[where:]
    else:
        encoded[where] = byte
    decodes_or_rejects(bytes(encoded), registry)
