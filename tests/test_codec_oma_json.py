"""OMA JSON (11543, LwM2M 1.0 JSON): vectors both ways, errors, round trips, fuzzing.

Vectors marked "Leshan" come from Eclipse Leshan's LwM2mNodeDecoderTest /
LwM2mNodeEncoderTest (their JSON tests reproduce the Core 1.0 §6.4.4 examples),
"Wakaama" from Eclipse Wakaama's tests/tlv_json_lwm2m_data_test.c.
Objects 11, 12, 65 and 1024 are not in our registry: their values decode by
the JSON field that carries them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

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
from ipso_objects.codecs import ContentFormat, TimestampedValues
from ipso_objects.codecs import encode as dispatch_encode
from ipso_objects.codecs import oma_json
from ipso_objects.errors import DecodeError, EncodeError
from ipso_objects.nodes import flatten

from strategies import ALL_TYPES_OBJECT, addressed_nodes
from spec_examples import DEVICE_INSTANCE

P = LwM2MPath.parse
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def compact(text: str) -> bytes:
    """The spec pretty-prints its examples; we compare against the compact form."""
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False).encode()


def both_ways(data: bytes, path: str, expected, registry) -> None:
    assert oma_json.decode(data, P(path), registry) == expected
    assert oma_json.encode(expected, P(path), registry) == data


# ----------------------------------------------------------------- spec and implementation vectors

# Core 1.0 §6.4.4 example "Read on the Device object instance" (Leshan
# "json_encode_device_object_instance" / "json_device_object_instance0").
DEVICE_JSON = compact("""
{"bn":"/3/0/",
 "e":[
  {"n":"0","sv":"Open Mobile Alliance"},
  {"n":"1","sv":"Lightweight M2M Client"},
  {"n":"2","sv":"345000123"},
  {"n":"3","sv":"1.0"},
  {"n":"6/0","v":1},
  {"n":"6/1","v":5},
  {"n":"7/0","v":3800},
  {"n":"7/1","v":5000},
  {"n":"8/0","v":125},
  {"n":"8/1","v":900},
  {"n":"9","v":100},
  {"n":"10","v":15},
  {"n":"11/0","v":0},
  {"n":"13","v":1367491215},
  {"n":"14","sv":"+02:00"},
  {"n":"16","sv":"U"}]
}""")


def test_device_instance_both_ways(registry) -> None:
    both_ways(DEVICE_JSON, "/3/0", DEVICE_INSTANCE, registry)
    assert dispatch_encode(ContentFormat.OMA_JSON, DEVICE_INSTANCE, P("/3/0"), registry) == DEVICE_JSON


def test_device_object_with_the_instance_inside(registry) -> None:
    data = DEVICE_JSON.replace(b'"bn":"/3/0/"', b'"bn":"/3/"').replace(b'"n":"', b'"n":"0/')
    both_ways(data, "/3", Object(3, {0: DEVICE_INSTANCE}), registry)


@pytest.mark.parametrize(
    "rewrite",
    [
        # Leshan "json_device_object_instance0_with_empty_root_basename": bn "/" and n "3/0/..."
        lambda text: text.replace('"bn":"/3/0/"', '"bn":"/"').replace('"n":"', '"n":"3/0/'),
        # Leshan "json_device_object_instance0_without_basename": absolute names, no bn
        lambda text: text.replace('"bn":"/3/0/",', "").replace('"n":"', '"n":"/3/0/'),
        # Wakaama "test_3": no bn, names relative to the request URI
        lambda text: text.replace('"bn":"/3/0/",', ""),
        # Leshan "json_custom_object_instance": bn without its leading slash
        lambda text: text.replace('"bn":"/3/0/"', '"bn":"3/0/"'),
    ],
)
def test_device_instance_in_every_naming_style(rewrite, registry) -> None:
    data = rewrite(DEVICE_JSON.decode()).encode()
    assert oma_json.decode(data, P("/3/0"), registry) == DEVICE_INSTANCE


def test_multiple_object_instances(registry) -> None:
    # The two Access Control instances of Core §7.4.3 TLV example B, laid out per JSON §6.4.4.
    data = compact("""
    {"bn":"/2/","e":[
      {"n":"0/0","v":1},{"n":"0/1","v":0},{"n":"0/2/127","v":7},{"n":"0/3","v":127},
      {"n":"2/0","v":3},{"n":"2/1","v":0},{"n":"2/2/127","v":7},{"n":"2/2/310","v":1},{"n":"2/3","v":127}]}
    """)
    expected = Object(2, {
        0: ObjectInstance(0, {0: Resource(0, 1), 1: Resource(1, 0), 2: MultiResource(2, {127: 7}),
                              3: Resource(3, 127)}),
        2: ObjectInstance(2, {0: Resource(0, 3), 1: Resource(1, 0), 2: MultiResource(2, {127: 7, 310: 1}),
                              3: Resource(3, 127)}),
    })
    both_ways(data, "/2", expected, registry)


def test_object_links_in_ov(registry) -> None:
    # Object 65 of the Core 1.0 object-link example (Leshan "assertObj65Instance"; Wakaama "test_9" uses ov)
    data = compact("""
    {"bn":"/65/0/","e":[{"n":"0/0","ov":"66:0"},{"n":"0/1","ov":"66:1"},
                        {"n":"1","sv":"8613800755500"},{"n":"2","v":305419896}]}""")
    expected = ObjectInstance(0, {0: MultiResource(0, {0: ObjLnk(66, 0), 1: ObjLnk(66, 1)}),
                                  1: Resource(1, "8613800755500"), 2: Resource(2, 305419896)})
    both_ways(data, "/65/0", expected, registry)


def test_booleans_and_escaped_strings(registry) -> None:
    # Wakaama "test_4", read at /11/3 (no bn: names relative to the request)
    data = compact("""{"e":[{"n":"0","sv":"a \\"test\\""},{"n":"1","v":2015},
                             {"n":"2/0","bv":true},{"n":"2/1","bv":false}]}""")
    expected = ObjectInstance(3, {0: Resource(0, 'a "test"'), 1: Resource(1, 2015),
                                  2: MultiResource(2, {0: True, 1: False})})
    assert oma_json.decode(data, P("/11/3"), registry) == expected
    assert oma_json.encode(expected, P("/11/3"), registry) == (
        b'{"bn":"/11/3/","e":[{"n":"0","sv":"a \\"test\\""},{"n":"1","v":2015},'
        b'{"n":"2/0","bv":true},{"n":"2/1","bv":false}]}'
    )


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        (b'{"bn":"/3/0/0","e":[{"sv":"Open Mobile Alliance"}]}', "/3/0/0", Resource(0, "Open Mobile Alliance")),
        # Opaque travels as base64 in sv (1.0 data types; Leshan's base64 vector "AQIDBAU=")
        (b'{"bn":"/5/0/0","e":[{"sv":"AQIDBAU="}]}', "/5/0/0", Resource(0, b"\x01\x02\x03\x04\x05")),
        (b'{"bn":"/3/0/7/","e":[{"n":"0","v":3800},{"n":"1","v":5000}]}', "/3/0/7",
         MultiResource(7, {0: 3800, 1: 5000})),
        (b'{"bn":"/3/0/7/1","e":[{"v":5000}]}', "/3/0/7/1", ResourceInstance(1, 5000)),
        (b'{"bn":"/3303/0/5700","e":[{"v":-12.5}]}', "/3303/0/5700", Resource(5700, -12.5)),
        (b'{"bn":"/3/0/22/0","e":[{"ov":"65535:65535"}]}', "/3/0/22/0", ResourceInstance(0, ObjLnk(65535, 65535))),
        (b'{"bn":"/32000/0/","e":[{"n":"2","v":18446744073709551615},{"n":"4","bv":true}]}', "/32000/0",
         ObjectInstance(0, {2: Resource(2, 2**64 - 1), 4: Resource(4, True)})),
    ],
)
def test_single_values_and_resources(data: bytes, path: str, expected, registry) -> None:
    both_ways(data, path, expected, registry)


def test_lenient_number_and_objlnk_forms(registry) -> None:
    # a 1.0 client printing integers as doubles, and Objlnk in sv as older Leshan sends it
    data = b'{"bn":"/3/0/","e":[{"n":"9","v":100.0},{"n":"13","v":1.367491215E9},{"n":"22/0","sv":"3:0"}]}'
    assert oma_json.decode(data, P("/3/0"), registry) == ObjectInstance(0, {
        9: Resource(9, 100), 13: Resource(13, datetime(2013, 5, 2, 10, 40, 15, tzinfo=timezone.utc)),
        22: MultiResource(22, {0: ObjLnk(3, 0)})})


def test_empty_entries_mean_empty_containers(registry) -> None:
    # Leshan "json_empty_object" / "json_empty_instance" / "json_empty_multi_resource" / "json_empty_single_resource"
    assert oma_json.decode(b'{"e":[]}', P("/2"), registry) == Object(2, {})
    assert oma_json.decode(b'{"bn":"2/0","e":[]}', P("/2/0"), registry) == ObjectInstance(0, {})
    assert oma_json.decode(b'{"bn":"3/0/6","e":[]}', P("/3/0/6"), registry) == MultiResource(6, {})
    with pytest.raises(DecodeError, match="no value for resource /2/0/0"):
        oma_json.decode(b'{"bn":"2/0/0","e":[]}', P("/2/0/0"), registry)


def test_an_empty_instance_of_an_object_is_named_by_the_base_name(registry) -> None:
    # A Create of /3303/7 without resources: entries cannot name it, the base name can.
    created = Object(3303, {7: ObjectInstance(7, {})})
    assert oma_json.encode(created, P("/3303"), registry) == b'{"bn":"/3303/7/","e":[]}'
    assert oma_json.decode(b'{"bn":"/3303/7/","e":[]}', P("/3303"), registry) == created
    assert oma_json.decode(b'{"bn":"3303/7","e":[]}', P("/3303"), registry) == created
    assert oma_json.decode(b'{"bn":"/3304/7/","e":[]}', P("/3303"), registry) == Object(3303, {})
    with pytest.raises(EncodeError, match="/3303/8 has no resources"):
        oma_json.encode(Object(3303, {7: ObjectInstance(7, {5701: Resource(5701, "Cel")}),
                                      8: ObjectInstance(8, {})}), P("/3303"), registry)


# ----------------------------------------------------------------- timestamps


def test_notification_history_with_base_time(registry) -> None:
    # Leshan "json_timestamped_resources" (the Core 1.0 §6.4.4 notification example: bt + relative t)
    data = b'{"bn":"/1024/0/1","e":[{"v":22.9,"t":-30},{"v":22.4,"t":-5},{"v":24.1,"t":-50}],"bt":25462634}'
    leaf = P("/1024/0/1")
    assert oma_json.decode_timestamped(data, leaf, registry) == [
        TimestampedValues(25462604.0, {leaf: 22.9}),
        TimestampedValues(25462629.0, {leaf: 22.4}),
        TimestampedValues(25462584.0, {leaf: 24.1}),
    ]
    with pytest.raises(DecodeError, match="appears more than once"):
        oma_json.decode(data, leaf, registry)


@pytest.mark.parametrize(
    ("data", "groups"),
    [
        # Leshan "json_encode_timestamped_resources"
        (b'{"bn":"/1024/0/1","e":[{"v":22.9,"t":500},{"v":22.4,"t":510},{"v":24.1,"t":520}]}',
         [(500, {"/1024/0/1": 22.9}), (510, {"/1024/0/1": 22.4}), (520, {"/1024/0/1": 24.1})]),
        # Leshan "json_encode_timestamped_instances"
        (b'{"bn":"/1024/0/","e":[{"n":"1","v":22.9,"t":110},{"n":"0","sv":"a string","t":120},'
         b'{"n":"1","v":22.4,"t":120},{"n":"1","v":24.1,"t":130}]}',
         [(110, {"/1024/0/1": 22.9}), (120, {"/1024/0/0": "a string", "/1024/0/1": 22.4}),
          (130, {"/1024/0/1": 24.1})]),
        # Leshan "json_encode_timestamped_Object"
        (b'{"bn":"/1024/","e":[{"n":"0/1","v":22.9,"t":210},{"n":"0/0","sv":"a string","t":220},'
         b'{"n":"0/1","v":22.4,"t":220},{"n":"1/1","v":23.0,"t":220},{"n":"0/1","v":24.1,"t":230}]}',
         [(210, {"/1024/0/1": 22.9}), (220, {"/1024/0/0": "a string", "/1024/0/1": 22.4, "/1024/1/1": 23.0}),
          (230, {"/1024/0/1": 24.1})]),
    ],
)
def test_timestamped_both_ways(data: bytes, groups, registry) -> None:
    entries = [TimestampedValues(float(t), {P(k): v for k, v in values.items()}) for t, values in groups]
    assert oma_json.encode_timestamped(entries, registry) == data
    assert oma_json.decode_timestamped(data, P("/1024"), registry) == entries


def test_values_without_any_time(registry) -> None:
    # Wakaama "test_7": bt applies to every entry; read here without bt as well
    data = b'{"e":[{"n":"1","v":1234},{"n":"3","v":56.789}],"bn":"/12/0/","bt":1234567}'
    values = {P("/12/0/1"): 1234, P("/12/0/3"): 56.789}
    assert oma_json.decode_timestamped(data, P("/12"), registry) == [TimestampedValues(1234567.0, values)]
    untimed = data.replace(b',"bt":1234567', b"")
    assert oma_json.decode_timestamped(untimed, P("/12"), registry) == [TimestampedValues(None, values)]
    assert oma_json.encode_timestamped([TimestampedValues(None, values)], registry) == (
        b'{"bn":"/12/0/","e":[{"n":"1","v":1234},{"n":"3","v":56.789}]}')


# ----------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        (b"{}", "/2", "'e' must be an array"),  # Leshan "json_empty_object": completely empty
        (b'{"e":{}}', "/2", "'e' must be an array of entries, got an object"),
        (b"[]", "/2", "is a JSON object, got an array"),
        (b'{"e":[1]}', "/2", "e[0] must be an object, got a number"),
        (b'{"bn":2,"e":[]}', "/2", "'bn' must be a string"),
        (b'{"bn":"/2/0/","e":[{"n":"0"}]}', "/2/0", "e[0] (/2/0/0) needs exactly one of v, sv, bv, ov; found none"),
        (b'{"bn":"/2/0/","e":[{"n":"0","v":1,"sv":"1"}]}', "/2/0", "found v, sv"),
        (b'{"bn":"/2/0/","e":[{"n":1,"v":1}]}', "/2/0", "e[0]: 'n' must be a string"),
        (b'{"bn":"/2/0/","e":[{"n":"x","v":1}]}', "/2/0", "e[0]: path '/2/0/x'"),
        (b'{"bn":"/2/0/","e":[{"n":"70000","v":1}]}', "/2/0", "out of range"),
        (b'{"bn":"/2/","e":[{"n":"0","v":1}]}', "/2", "e[0]: /2/0 is not a resource or resource instance path"),
        (b'{"bn":"/2/0/","e":[{"n":"0","v":1,"t":"x"}]}', "/2/0", "e[0]: 't' must be a finite number"),
        (b'{"bt":true,"e":[]}', "/2", "'bt' must be a finite number"),
        (b'{"bt":1' + b"0" * 400 + b',"e":[]}', "/2", "'bt' must be a finite number"),
        (b'{"bt":1e308,"bn":"/3/0/9","e":[{"v":1,"t":1e308}]}', "/3/0/9", "'bt' + 't' overflows"),
        (b'{"bn":"/2/1/","e":[{"n":"0","v":1}]}', "/2/0", "/2/1/0 is outside the requested path /2/0"),
        # Leshan "json_invalid_instance_2_resources_with_the_same_id"
        (b'{"bn":"3/0/","e":[{"n":"1","sv":"client1"},{"n":"1","sv":"client2"}]}', "/3/0",
         "/3/0/1 appears more than once"),
        # Leshan "json_invalid_multi_resource_2_instances_with_the_same_id"
        (b'{"bn":"3/0/11/","e":[{"n":"1","v":2},{"n":"1","v":0}]}', "/3/0/11", "/3/0/11/1 appears more than once"),
        (b'{"e":[],"e":[]}', "/2", "key 'e' appears twice"),
        (b'{"bn":"/3/0/9","e":[{"v":NaN}]}', "/3/0/9", "NaN is not a JSON number"),
        (b'{"bn":"/3303/0/5700","e":[{"v":1e400}]}', "/3303/0/5700", "overflows a 64-bit Float"),
        (b'{"bn":"/3/0/9","e":[{"v":1' + b"0" * 5000 + b"}]}", "/3/0/9", "malformed JSON"),
        (b'{"bn":"/3/0/9","e":[{"v":1}]', "/3/0/9", "malformed JSON"),
        (b'\xff{"e":[]}', "/2", "malformed JSON"),
        (b"[" * 100000, "/2", "malformed JSON"),
        (b'{"bn":"/3/0/9","e":[{"v":1.5}]}', "/3/0/9", "/3/0/9: expected a whole number, got a number (1.5)"),
        (b'{"bn":"/3/0/9","e":[{"v":true}]}', "/3/0/9", "expected a whole number, got a boolean"),
        (b'{"bn":"/3/0/9","e":[{"v":9223372036854775808}]}', "/3/0/9", "out of the Integer range"),
        (b'{"bn":"/3/0/9","e":[{"sv":"100"}]}', "/3/0/9", "/3/0/9: Integer value belongs in 'v', got 'sv'"),
        (b'{"bn":"/3/0/0","e":[{"sv":1}]}', "/3/0/0", "/3/0/0: expected a string, got a number"),
        (b'{"bn":"/5/0/0","e":[{"sv":"AQ*D"}]}', "/5/0/0", "/5/0/0: 'AQ*D' is not base64"),
        (b'{"bn":"/3/0/22/0","e":[{"ov":"3-0"}]}', "/3/0/22/0", "objlnk '3-0'"),
        (b'{"bn":"/32000/0/4","e":[{"bv":1}]}', "/32000/0/4", "expected true or false"),
        (b'{"bn":"/3/0/13","e":[{"v":1e300}]}', "/3/0/13", "outside the representable years"),
        (b'{"bn":"/3/0/6","e":[{"v":1}]}', "/3/0/6", "/3/0/6 is a multiple-instance resource"),
        (b'{"bn":"/3/0/9/0","e":[{"v":1}]}', "/3/0/9/0", "/3/0/9 is a single-instance resource"),
        (b'{"bn":"/12/0/1","e":[{"v":-9223372036854775809}]}', "/12/0/1", "does not fit 64 bits"),
    ],
)
def test_malformed_payloads_name_the_problem(data: bytes, path: str, message: str,
                                             registry) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)):
        oma_json.decode(data, P(path), registry)


@pytest.mark.parametrize(
    ("node", "path", "message"),
    [
        (Resource(9, "100"), "/3/0/9", "/3/0/9: Integer resource cannot hold str"),
        (Resource(5700, float("nan")), "/3303/0/5700", "/3303/0/5700: JSON has no number for nan"),
        (Resource(6, 1), "/3/0/6", "/3/0/6 is a multiple-instance resource"),
        (ResourceInstance(0, 1), "/3/0/9/0", "/3/0/9 is a single-instance resource"),
        (Resource(1, 1), "/3/0/2", "does not match path"),
        (Resource(0, "\ud800"), "/3/0/0", "cannot encode as JSON"),
    ],
)
def test_encode_rejects_what_the_model_forbids(node, path: str, message: str, registry) -> None:
    with pytest.raises(EncodeError, match=re.escape(message)):
        oma_json.encode(node, P(path), registry)


def test_timestamped_encode_rejects_short_paths_and_bad_times(registry) -> None:
    with pytest.raises(EncodeError, match="need resource paths"):
        oma_json.encode_timestamped([TimestampedValues(1.0, {P("/3/0"): 1})], registry)
    with pytest.raises(EncodeError, match="not a finite number"):
        oma_json.encode_timestamped([TimestampedValues(float("inf"), {P("/3/0/9"): 1})], registry)
    assert oma_json.encode_timestamped([], registry) == b'{"e":[]}'


# ----------------------------------------------------------------- properties


# allow_empty=False: the format only lists leaf values, so an empty object
# instance inside an object, or an empty multi-instance resource inside an
# instance, leaves no trace and cannot come back.
@ROUND_TRIP
@given(addressed_nodes(allow_empty=False))
def test_round_trip_every_type_and_depth(registry, addressed) -> None:
    node, path = addressed
    encoded = oma_json.encode(node, path, registry)
    assert oma_json.decode(encoded, path, registry) == node


group_times = st.one_of(
    st.none(),
    st.integers(min_value=-(2**40), max_value=2**40).map(float),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
)


@st.composite
def timestamped_groups(draw):
    """Up to four groups with distinct times, each holding the leaves of one node of object 32000."""
    times = draw(st.lists(group_times, unique=True, min_size=1, max_size=4))
    groups = []
    for time in times:
        node, path = draw(addressed_nodes(allow_empty=False))
        values = flatten(node, path)
        if values:
            groups.append(TimestampedValues(time, values))
    return groups


@ROUND_TRIP
@given(timestamped_groups())
def test_timestamped_round_trip(registry, groups) -> None:
    encoded = oma_json.encode_timestamped(groups, registry)
    assert oma_json.decode_timestamped(encoded, LwM2MPath.of(ALL_TYPES_OBJECT), registry) == groups


DECODE_PATHS = [P("/32000"), P("/32000/0"), P("/32000/0/1"), P("/32000/0/10/0"), P("/3/0"), P("/1")]


def decodes_or_rejects(data: bytes, registry) -> None:
    """Only DecodeError may come out, whatever the input."""
    for path in DECODE_PATHS:
        try:
            oma_json.decode(data, path, registry)
        except DecodeError:
            pass
    try:
        oma_json.decode_timestamped(data, LwM2MPath(), registry)
    except DecodeError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(registry, data: bytes) -> None:
    decodes_or_rejects(data, registry)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.just(10**400),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["0", "1/0", "/32000/0/1", "/3/0/9", "32000/0/", "AQID", "3:0", "65536"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["bn", "bt", "e", "n", "v", "sv", "bv", "ov", "t", "x"]), children, max_size=4),
    max_leaves=15,
)
entries = st.fixed_dictionaries(
    {},
    optional={"n": json_values, "v": json_values, "sv": json_values, "bv": json_values, "ov": json_values,
              "t": json_values},
)
documents = st.fixed_dictionaries(
    {}, optional={"bn": json_values, "bt": json_values, "e": st.lists(entries | json_values, max_size=4)}
) | json_values


@FUZZ
@given(documents)
def test_random_structured_json_raises_only_decode_error(registry, document) -> None:
    decodes_or_rejects(json.dumps(document).encode(), registry)


@FUZZ
@given(addressed_nodes(allow_empty=False), st.integers(min_value=0), st.integers(min_value=0, max_value=255),
       st.booleans())
def test_corrupted_valid_payloads_raise_only_decode_error(registry, addressed, where, byte,
                                                          truncate) -> None:
    node, path = addressed
    encoded = bytearray(oma_json.encode(node, path, registry))
    where %= len(encoded)
    if truncate:
        del encoded[where:]
    else:
        encoded[where] = byte
    decodes_or_rejects(bytes(encoded), registry)
