"""SenML JSON (110) and SenML CBOR (112): spec vectors both ways, decoding rules, properties.

Vectors come from OMA-TS-LightweightM2M_Core-V1_1-20180710-A §7.4.4 (Tables
7.4.4-2..8, as quoted in Eclipse Wakaama's tests/data_senml_json_tests.c),
OMA-TS-LightweightM2M_Core-V1_1_1-20190617-A §7.4.5 (the SenML CBOR dump of
the Device example), RFC 8428 §5.1 and §6, and Eclipse Leshan's codec tests
(LwM2mNodeEncoderTest / LwM2mNodeDecoderTest / SenMLCborSerializerTest).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_folder
from ipso_objects import (
    DecodeError,
    EncodeError,
    LwM2MPath,
    MultiResource,
    Object,
    ObjectInstance,
    ObjectRegistry,
    ObjLnk,
    Resource,
    ResourceType,
)
from ipso_objects.codecs import ContentFormat, TimestampedValues, codec_module
from ipso_objects.codecs import senml, senml_cbor, senml_json
from ipso_objects.ddf import load_ddf_file
from spec_examples import DEVICE_INSTANCE
from strategies import (
    ALL_TYPES_OBJECT,
    MULTIPLE_RESOURCE,
    SINGLE_RESOURCE,
    TYPE_ORDER,
    addressed_nodes,
    ids,
    objects,
    values_of,
)

P = LwM2MPath.parse
FORMATS = pytest.mark.parametrize("codec", [senml_json, senml_cbor], ids=["json", "cbor"])
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def to_cbor(pack: list[dict]) -> bytes:
    """A JSON-shaped pack in CBOR, labels mapped by RFC 8428 §6 Table 4, encoded by cbor2
    (an encoder independent of ours; it keeps key order and writes these values minimally)."""
    return cbor2.dumps([{senml_cbor.LABELS.get(k, k): v for k, v in r.items()} for r in pack])


def write(codec, pack: list[dict]) -> bytes:
    """A pack in ``codec``'s format, written by an independent encoder where one exists
    (cbor2 also writes integers beyond 64 bits, as tag 2 bignums)."""
    return to_cbor(pack) if codec is senml_cbor else senml_json.dump_pack(pack)


# --- OMA LwM2M Core 1.1 §7.4.4 / 1.1.1 §7.4.5 ---------------------------------------------

# Core 1.1 Table 7.4.4-2: Read /3/0 (the Device object of the example client).
DEVICE_JSON = (
    b'[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},'
    b'{"n":"1","vs":"Lightweight M2M Client"},{"n":"2","vs":"345000123"},{"n":"3","vs":"1.0"},'
    b'{"n":"6/0","v":1},{"n":"6/1","v":5},{"n":"7/0","v":3800},{"n":"7/1","v":5000},'
    b'{"n":"8/0","v":125},{"n":"8/1","v":900},{"n":"9","v":100},{"n":"10","v":15},'
    b'{"n":"11/0","v":0},{"n":"13","v":1367491215},{"n":"14","vs":"+02:00"},{"n":"16","vs":"U"}]'
)
# Core 1.1.1 §7.4.5 (page 86): the same Read /3/0 as SenML CBOR.
DEVICE_CBOR = bytes.fromhex(
    "90a321652f332f302f00613003744f70656e204d6f62696c6520416c6c69616e6365a20061310376"
    "4c69676874776569676874204d324d20436c69656e74a20061320369333435303030313233a20061"
    "330363312e30a20063362f300201a20063362f310205a20063372f3002190ed8a20063372f310219"
    "1388a20063382f3002187da20063382f3102190384a2006139021864a200623130020fa200643131"
    "2f300200a200623133021a5182428fa20062313403662b30323a3030a200623136036155"
)


@pytest.mark.parametrize("codec, payload", [(senml_json, DEVICE_JSON), (senml_cbor, DEVICE_CBOR)])
def test_read_device_instance_both_ways(codec, payload, registry):
    assert codec.decode(payload, P("/3/0"), registry) == DEVICE_INSTANCE
    assert codec.encode(DEVICE_INSTANCE, P("/3/0"), registry) == payload


def test_device_cbor_is_the_json_example_with_cbor_labels():
    assert DEVICE_CBOR == to_cbor(json.loads(DEVICE_JSON))


# Core 1.1 Table 7.4.4-5: Read of the single resource /3/0/0 (the spec lacks a closing quote).
MANUFACTURER_JSON = b'[{"bn":"/3/0/0","vs":"Open Mobile Alliance"}]'


@pytest.mark.parametrize(
    "codec, payload",
    [(senml_json, MANUFACTURER_JSON), (senml_cbor, to_cbor(json.loads(MANUFACTURER_JSON)))],
)
def test_read_single_resource_both_ways(codec, payload, registry):
    node = Resource(0, "Open Mobile Alliance")
    assert codec.decode(payload, P("/3/0/0"), registry) == node
    assert codec.encode(node, P("/3/0/0"), registry) == payload


# Core 1.1 Table 7.4.4-6: Read-Composite request body.
COMPOSITE_PATHS_JSON = b'[{"n":"/3/0/0"},{"n":"/3/0/9"},{"n":"/1/0/1"}]'


@pytest.mark.parametrize(
    "codec, payload",
    [(senml_json, COMPOSITE_PATHS_JSON), (senml_cbor, to_cbor(json.loads(COMPOSITE_PATHS_JSON)))],
)
def test_read_composite_request_both_ways(codec, payload):
    paths = [P("/3/0/0"), P("/3/0/9"), P("/1/0/1")]
    assert codec.decode_paths(payload) == paths
    assert codec.encode_paths(paths) == payload


# Core 1.1 Table 7.4.4-7: Read-Composite response, as printed (with spaces) and compact.
COMPOSITE_SPEC_TEXT = (
    b'[{"n":"/3/0/0", "vs":"Open Mobile Alliance"},'
    b'{"n" :"/3/0/9", "v":95},{"n":"/1/0/1", "v":86400}]'
)
COMPOSITE_JSON = (
    b'[{"n":"/3/0/0","vs":"Open Mobile Alliance"},{"n":"/3/0/9","v":95},{"n":"/1/0/1","v":86400}]'
)
COMPOSITE_VALUES = {P("/3/0/0"): "Open Mobile Alliance", P("/3/0/9"): 95, P("/1/0/1"): 86400}


def test_read_composite_response_json(registry):
    assert senml_json.decode_composite(COMPOSITE_SPEC_TEXT, registry) == COMPOSITE_VALUES
    assert senml_json.decode_composite(COMPOSITE_JSON, registry) == COMPOSITE_VALUES
    assert senml_json.encode_composite(COMPOSITE_VALUES, registry) == COMPOSITE_JSON


def test_read_composite_response_cbor(registry):
    payload = to_cbor(json.loads(COMPOSITE_JSON))
    assert senml_cbor.decode_composite(payload, registry) == COMPOSITE_VALUES
    assert senml_cbor.encode_composite(COMPOSITE_VALUES, registry) == payload


# Core 1.1 Table 7.4.4-8: Write-Composite on the Light Control (3311) and Set Point (3308) objects.
WRITE_COMPOSITE_JSON = (
    b'[{"n":"/3311/0/5850","vb":false},{"n":"/3311/1/5850","vb":false},'
    b'{"n":"/3311/2/5851","v":20},{"n":"/3308/0/5900","v":18}]'
)


def test_write_composite_with_objects_the_model_lacks(registry):
    # 3311 and 3308 are not shipped: each value takes the natural type of its field.
    values = senml_json.decode_composite(WRITE_COMPOSITE_JSON, registry)
    assert values == {
        P("/3311/0/5850"): False,
        P("/3311/1/5850"): False,
        P("/3311/2/5851"): 20,
        P("/3308/0/5900"): 18,
    }
    assert type(values[P("/3308/0/5900")]) is int
    assert senml_json.encode_composite(values, registry) == WRITE_COMPOSITE_JSON


def test_write_composite_typed_by_the_oma_models():
    folder = shared_folder("lwm2m-registry")
    oma = ObjectRegistry(load_ddf_file(folder / "3311.xml") + load_ddf_file(folder / "3308.xml"))
    values = senml_json.decode_composite(WRITE_COMPOSITE_JSON, oma)
    set_point = values[P("/3308/0/5900")]
    assert type(set_point) is float and set_point == 18.0  # 5900 is a Float resource
    assert values[P("/3311/2/5851")] == 20
    # An integral Float is written as the spec writes it: "v":18, not 18.0.
    assert senml_json.encode_composite(values, oma) == WRITE_COMPOSITE_JSON


# Core 1.1 Table 7.4.4-3: notification with history (object 72: unknown, so Float by its field).
HISTORY_JSON = (
    b'[{"bn":"/72/","bt":25462634,"n":"1/2","v":22.4,"t":-5},'
    b'{"n":"1/2","v":22.9,"t":-30},{"n":"1/2","v":24.1,"t":-50}]'
)


def test_notification_with_history(registry):
    leaf = P("/72/1/2")
    assert senml_json.decode_timestamped(HISTORY_JSON, P("/72"), registry) == [
        TimestampedValues(25462629, {leaf: 22.4}),
        TimestampedValues(25462604, {leaf: 22.9}),
        TimestampedValues(25462584, {leaf: 24.1}),
    ]
    # A plain Read keeps the newest value (t=-5 is the most recent).
    node = senml_json.decode(HISTORY_JSON, P("/72"), registry)
    assert node == Object(72, {1: ObjectInstance(1, {2: Resource(2, 22.4)})})


@FORMATS
def test_notification_with_history_round_trip(codec, registry):
    # The spec's split of each time into bt + t cannot be recovered from the times,
    # so the encoder writes its own shape (bt per time); what it means is unchanged.
    entries = senml_json.decode_timestamped(HISTORY_JSON, P("/72"), registry)
    payload = codec.encode_timestamped(entries, registry)
    assert codec.decode_timestamped(payload, P("/72"), registry) == entries


def test_timestamped_encoding_shape(registry):
    entries = [
        TimestampedValues(1700000000, {P("/3303/0/5700"): 21.5, P("/3303/0/5701"): "Cel"}),
        TimestampedValues(1700000060, {P("/3303/0/5700"): 21.75}),
        TimestampedValues(None, {P("/3303/0/5700"): 22.0}),
    ]
    assert senml_json.encode_timestamped(entries, registry) == (
        b'[{"bt":1700000000,"n":"/3303/0/5700","v":21.5},{"n":"/3303/0/5701","vs":"Cel"},'
        b'{"bt":1700000060,"n":"/3303/0/5700","v":21.75},{"bt":0,"n":"/3303/0/5700","v":22}]'
    )


# Core 1.1 Table 7.4.4-4: object links across objects 65, 66 and 67 (not in the model).
OBJECT_LINKS_JSON = (
    b'[{"bn":"/","n":"65/0/0/0","vlo":"66:0"},{"n":"65/0/0/1","vlo":"66:1"},'
    b'{"n":"65/0/1","vs":"8613800755500"},{"n":"65/0/2","v":1},'
    b'{"n":"66/0/0","vs":"myService1"},{"n":"66/0/1","vs":"Internet.15.234"},'
    b'{"n":"66/0/2","vlo":"67:0"},{"n":"66/1/0","vs":"myService2"},'
    b'{"n":"66/1/1","vs":"Internet.15.235"},{"n":"66/1/2","vlo":"65535:65535"},'
    b'{"n":"67/0/0","vs":"85.76.76.84"},{"n":"67/0/1","vs":"85.76.255.255"}]'
)


@FORMATS
def test_object_links(codec, registry):
    values = senml_json.decode_composite(OBJECT_LINKS_JSON, registry)
    assert values[P("/65/0/0/0")] == ObjLnk(66, 0)
    assert values[P("/65/0/0/1")] == ObjLnk(66, 1)
    assert values[P("/65/0/1")] == "8613800755500"
    assert values[P("/65/0/2")] == 1
    assert values[P("/66/1/2")] == ObjLnk(65535, 65535)
    assert len(values) == 12
    # Written back with full names (the Table 7.4.4-7 shape), it reads the same.
    assert codec.decode_composite(codec.encode_composite(values, registry), registry) == values


def test_vlo_stays_a_text_label_in_cbor(registry):
    payload = senml_cbor.encode_composite({P("/65/0/0/1"): ObjLnk(66, 1)}, registry)
    assert payload == cbor2.dumps([{0: "/65/0/0/1", "vlo": "66:1"}])


# --- Leshan interoperability vectors --------------------------------------------------------


def test_leshan_opaque_resource_both_ways(registry):
    # LwM2mNodeEncoderTest: /0/0/3 (Public Key, Opaque) = ABCDEF; "q83v" is its base64url.
    node = Resource(3, bytes.fromhex("abcdef"))
    json_payload = b'[{"bn":"/0/0/3","vd":"q83v"}]'
    cbor_payload = bytes.fromhex("81a221662f302f302f330843abcdef")  # [{-2: "/0/0/3", 8: h'ABCDEF'}]
    assert senml_json.decode(json_payload, P("/0/0/3"), registry) == node
    assert senml_json.encode(node, P("/0/0/3"), registry) == json_payload
    assert senml_cbor.decode(cbor_payload, P("/0/0/3"), registry) == node
    assert senml_cbor.encode(node, P("/0/0/3"), registry) == cbor_payload


def test_leshan_multiple_resource_both_ways(registry):
    # LwM2mNodeEncoderTest.senml_json_encode_multiple_resource: /3/0/7 (Power Source Voltage).
    node = MultiResource(7, {0: 3800, 1: 5000})
    payload = b'[{"bn":"/3/0/7/","n":"0","v":3800},{"n":"1","v":5000}]'
    assert senml_json.decode(payload, P("/3/0/7"), registry) == node
    assert senml_json.encode(node, P("/3/0/7"), registry) == payload


def test_leshan_half_float_with_labels_in_another_order(registry):
    # SenMLCborSerializerTest.deserialize_float_resource: [{2: 300.0 (half), -2: "/3442/0/130"}].
    payload = bytes.fromhex("81a202f95cb0216b2f333434322f302f313330")
    node = senml_cbor.decode(payload, P("/3442/0/130"), registry)
    assert node == Resource(130, 300.0) and type(node.value) is float
    assert senml_cbor.encode(node, P("/3442/0/130"), registry) == bytes.fromhex(
        "81a2216b2f333434322f302f31333002f95cb0"
    )


def test_leshan_cbor_times_as_decimal_fractions(registry):
    # LwM2mNodeEncoderTest.senml_cbor_encode_timestamped_nodes: bt is 4([0, 500000004]).
    payload = bytes.fromhex(
        "83a321662f302f302f3022c482001a1dcd6504036c53616d706c65537472696e67"
        "a321662f302f302f3122c482001a1dcd650504f4a321662f302f302f3222c482001a1dcd6506021901c8"
    )
    assert senml_cbor.decode_timestamped(payload, LwM2MPath(), registry) == [
        TimestampedValues(500000004, {P("/0/0/0"): "SampleString"}),
        TimestampedValues(500000005, {P("/0/0/1"): False}),
        TimestampedValues(500000006, {P("/0/0/2"): 456}),
    ]


def test_leshan_json_timestamped_nodes(registry):
    # LwM2mNodeEncoderTest.senml_json_encode_timestamped_nodes.
    payload = (
        b'[{"bn":"/0/0/0","bt":500000001,"vs":"TestString"},'
        b'{"bn":"/0/1/","bt":500000002,"n":"1","vb":true},{"n":"2","v":123}]'
    )
    assert senml_json.decode_timestamped(payload, LwM2MPath(), registry) == [
        TimestampedValues(500000001, {P("/0/0/0"): "TestString"}),
        TimestampedValues(500000002, {P("/0/1/1"): True, P("/0/1/2"): 123}),
    ]


def test_leshan_base_time_carries_over_a_new_base_name(registry):
    # LwM2mNodeDecoderTest.senml_timestamped_resources_with_several_bn.
    payload = (
        b'[{"bn": "/3303/0/5700","bt": 1699877805.766,"v": -128.8},'
        b'{"bn": "/6/0/0","t": 0.101,"v": -39.0}]'
    )
    entries = senml_json.decode_timestamped(payload, LwM2MPath(), registry)
    assert entries == [
        TimestampedValues(1699877805.766, {P("/3303/0/5700"): -128.8}),
        TimestampedValues(1699877805.766 + 0.101, {P("/6/0/0"): -39.0}),
    ]


def test_leshan_time_in_exponent_notation(registry):
    # LwM2mNodeDecoderTest.senml_json_decode_single_resource_using_exponantial_notation.
    node = senml_json.decode(b'[{"bn":"/3/0/13","v":1.638435E9}]', P("/3/0/13"), registry)
    assert node == Resource(13, datetime(2021, 12, 2, 8, 50, tzinfo=timezone.utc))


# --- RFC 8428: packs and base-field resolution ------------------------------------------------

# §5.1.2, second example (the JSON text writes bt as 1.276020076001e+09; we write the same
# double in its shortest form, 1276020076.001).
RFC_CURRENT_JSON = (
    b'[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1276020076.001,"bu":"A","bver":5,'
    b'"n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2},'
    b'{"n":"current","t":-4,"v":1.3},'
    b'{"n":"current","t":-3,"v":1.4},{"n":"current","t":-2,"v":1.5},{"n":"current","t":-1,"v":1.6},'
    b'{"n":"current","v":1.7}]'
)
RFC_CURRENT_SPEC_TEXT = RFC_CURRENT_JSON.replace(b"1276020076.001", b"1.276020076001e+09")
# §6: the CBOR dump of the same measurements (the last record carries t = 0 explicitly),
# as printed in the RFC without its ASCII column.
RFC_CURRENT_CBOR_DUMP = """
 0000 87 a7 21 78 1b 75 72 6e 3a 64 65 76 3a 6f 77 3a
 0010 31 30 65 32 30 37 33 61 30 31 30 38 30 30 36 3a
 0020 22 fb 41 d3 03 a1 5b 00 10 62 23 61 41 20 05 00
 0030 67 76 6f 6c 74 61 67 65 01 61 56 02 fb 40 5e 06
 0040 66 66 66 66 66 a3 00 67 63 75 72 72 65 6e 74 06
 0050 24 02 fb 3f f3 33 33 33 33 33 33 a3 00 67 63 75
 0060 72 72 65 6e 74 06 23 02 fb 3f f4 cc cc cc cc cc
 0070 cd a3 00 67 63 75 72 72 65 6e 74 06 22 02 fb 3f
 0080 f6 66 66 66 66 66 66 a3 00 67 63 75 72 72 65 6e
 0090 74 06 21 02 f9 3e 00 a3 00 67 63 75 72 72 65 6e
 00a0 74 06 20 02 fb 3f f9 99 99 99 99 99 9a a3 00 67
 00b0 63 75 72 72 65 6e 74 06 00 02 fb 3f fb 33 33 33
 00c0 33 33 33
"""
RFC_CURRENT_CBOR = bytes.fromhex(
    "".join(line.split(maxsplit=1)[1] for line in RFC_CURRENT_CBOR_DUMP.strip().splitlines())
)


def test_rfc8428_json_pack_both_ways():
    pack = senml_json.load_pack(RFC_CURRENT_SPEC_TEXT)
    assert pack[0]["bt"] == 1.276020076001e09
    assert senml_json.dump_pack(pack) == RFC_CURRENT_JSON


def test_rfc8428_cbor_dump_both_ways():
    pack = senml_cbor.load_pack(RFC_CURRENT_CBOR)
    assert pack[0] == {
        "bn": "urn:dev:ow:10e2073a0108006:",
        "bt": 1276020076.001,
        "bu": "A",
        "bver": 5,
        "n": "voltage",
        "u": "V",
        "v": 120.1,
    }
    assert pack[4] == {"n": "current", "t": -2, "v": 1.5}  # 1.5 as a half float (f9 3e00)
    assert senml_cbor.dump_pack(pack) == RFC_CURRENT_CBOR


def test_rfc8428_json_and_cbor_resolve_alike():
    from_json = senml.resolve(senml_json.load_pack(RFC_CURRENT_JSON))
    assert from_json == senml.resolve(senml_cbor.load_pack(RFC_CURRENT_CBOR))
    assert from_json[0] == senml.ResolvedRecord(
        "urn:dev:ow:10e2073a0108006:voltage", 1276020076.001, "V", "v", 120.1
    )
    # Base unit "A" applies where the record has no unit; times are bt + t.
    assert from_json[1] == senml.ResolvedRecord(
        "urn:dev:ow:10e2073a0108006:current", 1276020076.001 - 5, "A", "v", 1.2
    )
    assert from_json[6].time == 1276020076.001


def test_rfc8428_single_data_point():
    # §5.1.1.
    payload = b'[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]'
    pack = senml_json.load_pack(payload)
    assert senml_json.dump_pack(pack) == payload
    assert senml.resolve(pack) == [
        senml.ResolvedRecord("urn:dev:ow:10e2073a01080063", None, "Cel", "v", 23.1)
    ]


# §5.1.3 (JSON text writes bt as 1.320067464e+09).
RFC_MEASUREMENTS = """[
  {"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,"bu":"%RH","v":20},
  {"u":"lon","v":24.30621},{"u":"lat","v":60.07965},
  {"t":60,"v":20.3},{"u":"lon","t":60,"v":24.30622},{"u":"lat","t":60,"v":60.07965},
  {"t":120,"v":20.7},{"u":"lon","t":120,"v":24.30623},{"u":"lat","t":120,"v":60.07966},
  {"u":"%EL","t":150,"v":98},
  {"t":180,"v":21.2},{"u":"lon","t":180,"v":24.30628},{"u":"lat","t":180,"v":60.07967}
]"""
# §5.1.4: the same, resolved.
RFC_RESOLVED = """[
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067464e+09,"v":20},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067464e+09,"v":24.30621},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067464e+09,"v":60.07965},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067524e+09,"v":20.3},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067524e+09,"v":24.30622},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067524e+09,"v":60.07965},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067584e+09,"v":20.7},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067584e+09,"v":24.30623},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067584e+09,"v":60.07966},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%EL","t":1.320067614e+09,"v":98},
  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067644e+09,"v":21.2},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067644e+09,"v":24.30628},
  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067644e+09,"v":60.07967}
]"""


def test_rfc8428_resolution_gives_the_resolved_example():
    measured = senml.resolve(senml_json.load_pack(RFC_MEASUREMENTS.encode()))
    assert measured == senml.resolve(senml_json.load_pack(RFC_RESOLVED.encode()))
    assert measured[9] == senml.ResolvedRecord(
        "urn:dev:ow:10e2073a01080063", 1320067614, "%EL", "v", 98
    )


def test_rfc8428_multiple_data_types():
    # §5.1.5: "aGkgCg" is base64url (no padding) of "hi \n".
    payload = (
        b'[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},'
        b'{"n":"label","vs":"Machine Room"},{"n":"open","vb":false},'
        b'{"n":"nfv-reader","vd":"aGkgCg"}]'
    )
    pack = senml_json.load_pack(payload)
    assert [(r.label, r.value) for r in senml.resolve(pack)] == [
        ("v", 23.1),
        ("vs", "Machine Room"),
        ("vb", False),
        ("vd", b"hi \n"),
    ]
    assert senml_json.dump_pack(pack) == payload


def test_rfc8428_base_name_and_base_time_apply_onward():
    # §5.1.6: the last record uses the base name of the third and the base time of the first.
    payload = b"""[
      {"bn":"2001:db8::2/","bt":1.320078429e+09,"n":"temperature","u":"Cel","v":25.2},
      {"n":"humidity","u":"%RH","v":30},
      {"bn":"2001:db8::1/","n":"temperature","u":"Cel","v":12.3},
      {"n":"humidity","u":"%RH","v":67}
    ]"""
    last = senml.resolve(senml_json.load_pack(payload))[-1]
    assert last == senml.ResolvedRecord("2001:db8::1/humidity", 1320078429, "%RH", "v", 67)


def test_rfc8428_actuation_times_in_the_future():
    # §5.1.7, second example: two lights dimmed now and switched off 100 ms later.
    payload = b"""[
      {"bt":1.320078429e+09,"bu":"/","n":"2001:db8::3","v":0.5},
      {"n":"2001:db8::4","v":0.5},
      {"n":"2001:db8::3","t":0.1,"v":0},
      {"n":"2001:db8::4","t":0.1,"v":0}
    ]"""
    times = [r.time for r in senml.resolve(senml_json.load_pack(payload))]
    assert times == [1320078429, 1320078429, 1320078429.1, 1320078429.1]


# --- decoding rules ----------------------------------------------------------------------------


@FORMATS
def test_base_value_adds_to_v(codec, registry):
    payload = write(codec, [{"bn": "/3/0/", "bv": 100, "n": "9", "v": -5}, {"n": "10", "v": 7}])
    node = codec.decode(payload, P("/3/0"), registry)
    assert node == ObjectInstance(0, {9: Resource(9, 95), 10: Resource(10, 107)})


@FORMATS
def test_base_name_may_change_midway(codec, registry):
    pack = [{"bn": "/3/0/", "n": "9", "v": 95}, {"bn": "/1/0/", "n": "1", "v": 86400}]
    assert codec.decode_composite(write(codec, pack), registry) == {
        P("/3/0/9"): 95,
        P("/1/0/1"): 86400,
    }


@FORMATS
@pytest.mark.parametrize(
    "pack, complaint",
    [
        ([{"bver": 11, "n": "/3/0/9", "v": 1}], "version 11"),
        ([{"n": "/3/0/9", "v": 1, "vers_": 1}], "must-understand"),
        ([{"n": "3/0/9", "v": 1}], "not an LwM2M path"),
        ([{"n": "/3/0/9/0/0", "v": 1}], "not an LwM2M path"),
        ([{"n": "/3/0/x", "v": 1}], "not an LwM2M path"),
        ([{"n": "/3/0/9", "v": 1.5}], "not a whole number"),
        ([{"n": "/3/0/9", "vs": "1"}], "/3/0/9"),
        ([{"n": "/3/0/0", "v": 1}], "/3/0/0"),
        ([{"n": "/3/0/13", "v": 1.25}], "/3/0/13"),
        ([{"n": "/32000/0/2", "v": -1}], "unsigned"),
        ([{"n": "/32000/0/4", "v": 1}], "/32000/0/4"),
        ([{"n": "/32000/0/7", "vlo": "3"}], "objlnk"),
        ([{"n": "/3/0/9", "v": 1, "vs": "1"}], "more than one value"),
        ([{"n": "/3/0/9"}], "no value"),
        ([{"n": "/3/0/9", "v": True}], "number"),
        ([{"n": "/3/0/4", "vs": "x"}], "executable"),
        ([{"n": "/3/0/6", "v": 1}], "multiple resource"),
        ([{"n": "/3/0/9/0", "v": 1}], "single resource"),
        ([{"n": "/3/0", "vs": "x"}], "not a resource"),
        ([{"n": "/3/0/9", "v": 1, "t": 1}, {"n": "/3/0/9", "v": 2, "t": 1}], "same time"),
        ([{"n": "/99/0/1", "v": 2**64}], "out of range"),
    ],
)
def test_decode_refuses(codec, registry, pack, complaint):
    with pytest.raises(DecodeError, match=f"(?i){complaint}"):
        codec.decode_composite(write(codec, pack), registry)


@FORMATS
def test_numbers_fit_the_model_type(codec, registry):
    pack = [
        {"bn": "/32000/0/", "n": "1", "v": 300.0},  # Integer: an integral float is fine
        {"n": "2", "v": 18446744073709551615},  # Unsigned Integer: the whole range
        {"n": "3", "v": 2},  # Float: an integer is fine
        {"n": "6", "v": 1367491215.0},  # Time: whole seconds
    ]
    values = codec.decode_composite(write(codec, pack), registry)
    assert values == {
        P("/32000/0/1"): 300,
        P("/32000/0/2"): 2**64 - 1,
        P("/32000/0/3"): 2.0,
        P("/32000/0/6"): datetime(2013, 5, 2, 10, 40, 15, tzinfo=timezone.utc),
    }
    assert type(values[P("/32000/0/1")]) is int and type(values[P("/32000/0/3")]) is float


@FORMATS
def test_unknown_resources_take_the_natural_type(codec, registry):
    pack = [
        {"bn": "/99/0/", "n": "0", "v": 7},
        {"n": "1", "v": 7.5},
        {"n": "2", "vs": "x"},
        {"n": "3", "vb": True},
        {"n": "4", "vd": b"\x00\xff"},
        {"n": "5", "vlo": "3:0"},
        {"n": "6", "v": 2**63},
    ]
    assert codec.decode_composite(write(codec, pack), registry) == {
        P("/99/0/0"): 7,
        P("/99/0/1"): 7.5,
        P("/99/0/2"): "x",
        P("/99/0/3"): True,
        P("/99/0/4"): b"\x00\xff",
        P("/99/0/5"): ObjLnk(3, 0),
        P("/99/0/6"): 2**63,
    }


@FORMATS
def test_units_and_unknown_fields_are_ignored(codec, registry):
    pack = [{"bn": "/3/0/", "bu": "%", "n": "9", "u": "%", "v": 80, "x-vendor": "ok", "ut": 60}]
    assert codec.decode(write(codec, pack), P("/3/0"), registry) == ObjectInstance(
        0, {9: Resource(9, 80)}
    )


@FORMATS
def test_records_must_be_under_the_requested_path(codec, registry):
    payload = write(codec, [{"bn": "/3/0/", "n": "9", "v": 1}, {"bn": "/1/0/", "n": "1", "v": 1}])
    with pytest.raises(DecodeError, match="outside"):
        codec.decode(payload, P("/3/0"), registry)
    with pytest.raises(DecodeError, match="outside"):
        codec.decode_timestamped(payload, P("/3"), registry)


@FORMATS
def test_newest_value_wins(codec, registry):
    # Absolute times compare as times; relative ones (and none, "now") come after them.
    pack = [
        {"bn": "/3/0/9", "bt": 1700000060, "v": 60},
        {"bt": 1700000000, "v": 50},
        {"bn": "/3/0/10", "bt": -10, "v": 1},
        {"bt": 1700000000, "v": 2},
    ]
    node = codec.decode(write(codec, pack), P("/3/0"), registry)
    assert node == ObjectInstance(0, {9: Resource(9, 60), 10: Resource(10, 1)})


@FORMATS
def test_empty_multiple_resource_and_empty_payloads(codec, registry):
    assert codec.decode(write(codec, []), P("/3/0/6"), registry) == MultiResource(6, {})
    assert codec.decode(b"", P("/3/0/6"), registry) == MultiResource(6, {})
    assert codec.decode(b"", P("/3"), registry) == Object(3, {})
    with pytest.raises(DecodeError, match="no value"):
        codec.decode(write(codec, []), P("/3/0/9"), registry)


# A Create of an empty instance (POST /3303): the pack must still name /3303/7. Built by hand
# from RFC 8428 (§5: JSON labels; §6 Table 4: CBOR labels bn = -2 → 0x21, n = 0 → 0x00) and
# the Core 1.1 §7.4.4 naming rule (Base Name + Name = path, bn "/o/" as for a Read of /o).
EMPTY_INSTANCE_JSON = b'[{"bn":"/3303/","n":"7/"}]'
EMPTY_INSTANCE_CBOR = bytes.fromhex(
    "81"                      # array(1)
    "a2"                      # map(2)
    "21" "66" "2f333330332f"  # bn: text(6) "/3303/"
    "00" "62" "372f"          # n: text(2) "7/"
)
WITH_EMPTY_JSON = b'[{"bn":"/3303/","n":"7/5700","v":21.5},{"n":"8/"}]'


@pytest.mark.parametrize("codec, payload", [(senml_json, EMPTY_INSTANCE_JSON),
                                            (senml_cbor, EMPTY_INSTANCE_CBOR)])
def test_an_empty_instance_inside_an_object_keeps_its_id(codec, payload, registry):
    created = Object(3303, {7: ObjectInstance(7, {})})
    assert codec.encode(created, P("/3303"), registry) == payload
    assert codec.decode(payload, P("/3303"), registry) == created
    # the same record read at the instance itself, with or without the trailing "/"
    assert codec.decode(payload, P("/3303/7"), registry) == ObjectInstance(7, {})
    assert codec.decode(write(codec, [{"n": "/3303/7"}]), P("/3303"), registry) == created
    assert codec.decode(write(codec, [{"bn": "/3303/7/"}]), P("/3303"), registry) == created
    # an empty pack still means no instance at all
    assert codec.decode(write(codec, []), P("/3303"), registry) == Object(3303, {})


def test_an_empty_instance_beside_a_full_one(registry):
    both = Object(3303, {7: ObjectInstance(7, {5700: Resource(5700, 21.5)}), 8: ObjectInstance(8, {})})
    assert senml_json.encode(both, P("/3303"), registry) == WITH_EMPTY_JSON
    assert senml_json.decode(WITH_EMPTY_JSON, P("/3303"), registry) == both


@FORMATS
def test_a_record_without_value_is_only_an_instance_in_a_node(codec, registry):
    with pytest.raises(DecodeError, match="outside the requested /3303/8"):
        codec.decode(write(codec, [{"n": "/3303/7/"}]), P("/3303/8"), registry)
    with pytest.raises(DecodeError, match="no value"):
        codec.decode(write(codec, [{"n": "/3303/7/5700"}]), P("/3303"), registry)
    with pytest.raises(DecodeError, match="not a resource"):
        codec.decode_composite(write(codec, [{"n": "/3303/7/"}]), registry)
    with pytest.raises(DecodeError, match="not a resource"):
        codec.decode(write(codec, [{"n": "/3303/"}]), P("/3303"), registry)


@FORMATS
@PROPERTY
@given(node=objects(allow_empty_multi=False, allow_empty_instance=True))
def test_objects_with_empty_instances_round_trip(codec, registry, node):
    path = LwM2MPath.of(ALL_TYPES_OBJECT)
    assert codec.decode(codec.encode(node, path, registry), path, registry) == node


def test_json_opaque_accepts_padding_and_the_standard_alphabet(registry):
    for text in ("-_8", "+/8=", "-_8="):
        payload = b'[{"bn":"/0/0/3","vd":"' + text.encode() + b'"}]'
        assert senml_json.decode(payload, P("/0/0/3"), registry) == Resource(3, b"\xfb\xff")
    for text in ("-_8==", "a", "ab*c", "ab=c"):
        payload = b'[{"bn":"/0/0/3","vd":"' + text.encode() + b'"}]'
        with pytest.raises(DecodeError, match="base64"):
            senml_json.decode(payload, P("/0/0/3"), registry)


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"n":"/3/0/9","v":1,"n":"/3/0/10"}]',  # duplicate field
        b'[{"n":"/3/0/9","v":NaN}]',
        b'[{"n":"/3/0/9","v":1e999}]',
        b'{"n":"/3/0/9","v":1}',  # not an array
        b'[{"n":"/3/0/9","v":1}] x',
        b'[{"n":"/3/0/0","vs":"\\ud800"}]',  # lone surrogate
        b"\xff[]",
    ],
)
def test_json_refuses(payload, registry):
    with pytest.raises(DecodeError):
        senml_json.decode_composite(payload, registry)


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("81a200662f332f302f39020100"),  # a byte after the pack
        bytes.fromhex("81a300662f332f302f3902010001"),  # label 0 twice
        bytes.fromhex("81a2f5662f332f302f390201"),  # label true
        bytes.fromhex("a100662f332f302f39"),  # not an array
        bytes.fromhex("81a200662f332f302f3902f6"),  # v: null
    ],
)
def test_cbor_refuses(payload, registry):
    with pytest.raises(DecodeError):
        senml_cbor.decode_composite(payload, registry)


def test_cbor_accepts_indefinite_lengths_and_text_labels(registry):
    payload = bytes.fromhex("9fbf616e662f332f302f39021864ffff")  # [_ {_ "n": "/3/0/9", 2: 100}]
    assert senml_cbor.decode_composite(payload, registry) == {P("/3/0/9"): 100}


@FORMATS
def test_decode_paths_refuses_values_and_times(codec):
    pack = [{"bn": "/4/0/", "n": "0"}, {"n": "1"}, {"bn": "/5"}]
    assert codec.decode_paths(write(codec, pack)) == [P("/4/0/0"), P("/4/0/1"), P("/5")]
    for record in ({"n": "/4/0/1", "v": 200}, {"n": "/4/0/1", "t": 20000000}, {"u": "%"}):
        with pytest.raises(DecodeError):
            codec.decode_paths(write(codec, [record]))


# --- encoding rules ----------------------------------------------------------------------------

FLOAT_PATH = P("/32000/0/3")


@pytest.mark.parametrize(
    "value, text",
    [
        (18.0, b"18"),
        (0.1, b"0.1"),
        (-2.5, b"-2.5"),
        (-0.0, b"-0.0"),
        (1e16, b"1e+16"),
        (1.5e-07, b"1.5e-07"),
        (1.7976931348623157e308, b"1.7976931348623157e+308"),
    ],
)
def test_json_floats_in_shortest_exact_form(value, text, registry):
    payload = senml_json.encode(Resource(3, value), FLOAT_PATH, registry)
    assert payload == b'[{"bn":"/32000/0/3","v":' + text + b"}]"
    assert senml_json.decode(payload, FLOAT_PATH, registry).value == value


@pytest.mark.parametrize(
    "value, cbor",
    [
        (1.5, "f93e00"),
        (18.0, "f94c80"),
        (-0.0, "f98000"),
        (100000.0, "fa47c35000"),
        (0.1, "fb3fb999999999999a"),
        (math.inf, "f97c00"),
    ],
)
def test_cbor_floats_in_shortest_exact_form(value, cbor, registry):
    payload = senml_cbor.encode(Resource(3, value), FLOAT_PATH, registry)
    assert payload == bytes.fromhex("81a2216a2f33323030302f302f3302" + cbor)
    decoded = senml_cbor.decode(payload, FLOAT_PATH, registry).value
    assert decoded == value and math.copysign(1, decoded) == math.copysign(1, value)


def test_cbor_nan_float(registry):
    payload = senml_cbor.encode(Resource(3, math.nan), FLOAT_PATH, registry)
    assert payload.endswith(bytes.fromhex("02f97e00"))
    assert math.isnan(senml_cbor.decode(payload, FLOAT_PATH, registry).value)


def test_cbor_integers_and_times_stay_integers(registry):
    moment = datetime(2013, 5, 2, 10, 40, 15, tzinfo=timezone.utc)
    payload = senml_cbor.encode_composite(
        {P("/32000/0/1"): -(2**63), P("/32000/0/2"): 2**64 - 1, P("/32000/0/6"): moment}, registry
    )
    assert cbor2.loads(payload) == [
        {0: "/32000/0/1", 2: -(2**63)},
        {0: "/32000/0/2", 2: 2**64 - 1},
        {0: "/32000/0/6", 2: 1367491215},
    ]


@FORMATS
@pytest.mark.parametrize(
    "values",
    [
        {P("/3/0/9"): "not an integer"},
        {P("/3/0/4"): 1},  # executable
        {P("/3/0/6"): 1},  # a multiple resource needs instance paths
        {P("/3/0"): 1},
        {P("/3/0/9"): 2**63},
        {P("/99/0/0"): [1, 2]},
        {"/3/0/9": 1},
    ],
)
def test_encode_refuses(codec, registry, values):
    with pytest.raises(EncodeError):
        codec.encode_composite(values, registry)


def test_json_has_no_nan(registry):
    with pytest.raises(EncodeError):
        senml_json.encode(Resource(3, math.nan), FLOAT_PATH, registry)


@FORMATS
def test_encode_refuses_a_node_at_the_wrong_path_and_empty_entries(codec, registry):
    with pytest.raises(EncodeError):
        codec.encode(Resource(1, 5), P("/32000/0/2"), registry)
    with pytest.raises(EncodeError):
        codec.encode_timestamped([TimestampedValues(1, {})], registry)


def test_codec_dispatch_finds_both_modules():
    assert codec_module(ContentFormat.SENML_JSON) is senml_json
    assert codec_module(ContentFormat.SENML_CBOR) is senml_cbor


# --- properties ------------------------------------------------------------------------------


@FORMATS
@PROPERTY
# SenML has no record for an empty multiple resource nested in a larger node, so those are
# left out (a top-level empty node is a "[]" and does round-trip); empty instances inside an
# object are covered by test_objects_with_empty_instances_round_trip.
@given(addressed=addressed_nodes(allow_empty=False))
def test_node_round_trip(codec, registry, addressed):
    node, path = addressed
    assert codec.decode(codec.encode(node, path, registry), path, registry) == node


@st.composite
def leaf_values(draw, min_size: int = 0):
    """Leaf values of object 32000 by full path, every type, single and multiple."""
    chosen = draw(
        st.lists(
            st.tuples(ids, st.sampled_from(TYPE_ORDER), st.booleans(), ids),
            min_size=min_size,
            max_size=6,
        )
    )
    values = {}
    for iid, rtype, multiple, riid in chosen:
        if multiple:
            path = LwM2MPath.of(ALL_TYPES_OBJECT, iid, MULTIPLE_RESOURCE[rtype], riid)
        else:
            path = LwM2MPath.of(ALL_TYPES_OBJECT, iid, SINGLE_RESOURCE[rtype])
        values[path] = draw(values_of(rtype))
    return values


@FORMATS
@PROPERTY
@given(values=leaf_values())
def test_composite_round_trip(codec, registry, values):
    assert codec.decode_composite(codec.encode_composite(values, registry), registry) == values


@FORMATS
@PROPERTY
@given(paths=st.lists(st.lists(ids, max_size=4).map(lambda i: LwM2MPath(tuple(i))), max_size=6))
def test_paths_round_trip(codec, paths):
    assert codec.decode_paths(codec.encode_paths(paths)) == paths


times = st.one_of(
    st.none(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
).filter(lambda t: t != 0)  # time 0 is "now": it decodes as None


@FORMATS
@PROPERTY
@given(
    entries=st.lists(
        st.tuples(times, leaf_values(min_size=1)), max_size=4, unique_by=lambda entry: entry[0]
    )
)
def test_timestamped_round_trip(codec, registry, entries):
    entries = [TimestampedValues(time, values) for time, values in entries]
    payload = codec.encode_timestamped(entries, registry)
    assert codec.decode_timestamped(payload, LwM2MPath(), registry) == entries


DECODE_PATHS = [P("/3/0"), P("/32000"), P("/32000/0/9"), P("/3/0/0"), P("/32000/1/10/0")]


def assert_only_decode_errors(codec, data: bytes, registry) -> None:
    calls = [lambda p=p: codec.decode(data, p, registry) for p in DECODE_PATHS]
    calls += [
        lambda: codec.decode_composite(data, registry),
        lambda: codec.decode_paths(data),
        lambda: codec.decode_timestamped(data, LwM2MPath(), registry),
    ]
    for call in calls:
        try:
            call()
        except DecodeError:
            pass


@FORMATS
@FUZZ
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_errors(codec, registry, data):
    assert_only_decode_errors(codec, data, registry)


def containers(inner: st.SearchStrategy, keys: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3)


LABELS = [*senml_cbor.LABELS, "vlo", "x_", "ext"]
NAMES = ["/3/0/", "/3/0/9", "0", "9", "6/0", "/32000/0/", "1", "13", "/", "", "/32000/1/10/0", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(NAMES),
    st.sampled_from(["3:0", "65535:65535", "q83v", "AA=="]),
)
json_labels = st.one_of(st.sampled_from(LABELS), st.text(max_size=4))
json_records = st.dictionaries(json_labels, scalars, max_size=6)
json_documents = st.one_of(
    st.lists(json_records, max_size=5),
    st.recursive(scalars, lambda inner: containers(inner, json_labels), max_leaves=12),
)


@FUZZ
@given(document=json_documents)
def test_json_of_any_shape_raises_only_decode_errors(registry, document):
    assert_only_decode_errors(senml_json, json.dumps(document).encode(), registry)


cbor_labels = st.one_of(
    st.sampled_from(list(senml_cbor.LABELS.values())),
    st.integers(min_value=-10, max_value=12),
    st.sampled_from(LABELS),
    st.binary(max_size=2),
)
cbor_scalars = scalars | st.binary(max_size=8) | st.decimals(allow_nan=False, places=None)
cbor_records = st.dictionaries(cbor_labels, cbor_scalars, max_size=6)
cbor_documents = st.one_of(
    st.lists(cbor_records, max_size=5),
    st.recursive(cbor_scalars, lambda inner: containers(inner, cbor_labels), max_leaves=12),
)


@FUZZ
@given(document=cbor_documents)
def test_cbor_of_any_shape_raises_only_decode_errors(registry, document):
    assert_only_decode_errors(senml_cbor, cbor2.dumps(document), registry)


plain_names = st.sampled_from(
    [f"/{ALL_TYPES_OBJECT}/0/{r}" for r in SINGLE_RESOURCE.values()]
    + [f"/{ALL_TYPES_OBJECT}/0/{r}/{i}" for r in MULTIPLE_RESOURCE.values() for i in (0, 7)]
    + [f"/{ALL_TYPES_OBJECT}/0/{SINGLE_RESOURCE[ResourceType.INTEGER]}/0", f"/{ALL_TYPES_OBJECT}/0",
       f"/{ALL_TYPES_OBJECT}/0/{MULTIPLE_RESOURCE[ResourceType.STRING]}", "/3/0/0", "/3/0/9", "/32001/0/0", "x"]
)
plain_values = st.one_of(
    st.booleans(), st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 1.0, 1.5]),
    st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=4), st.sampled_from(["3:0", "x:y"]),
)
@st.composite
def plain_records(draw) -> dict:
    """Mostly a name and one value, of the resource's type or not; now and then a second
    value, a time or no name."""
    record = draw(st.fixed_dictionaries({}, optional={
        "bn": plain_names | st.sampled_from(["/32000/0/", ""]), "n": plain_names | st.sampled_from(["1", "9/0"])}))
    chance = draw(st.integers(0, 9))
    if chance > 1:  # a value of the type a resource of 32000 takes
        rtype = draw(st.sampled_from(TYPE_ORDER))
        multiple = draw(st.booleans())
        resource = f"{(MULTIPLE_RESOURCE if multiple else SINGLE_RESOURCE)[rtype]}" + ("/1" if multiple else "")
        record = draw(st.sampled_from([{"n": f"/{ALL_TYPES_OBJECT}/0/{resource}"}, {"n": resource},
                                       {"bn": f"/{ALL_TYPES_OBJECT}/0/", "n": resource},
                                       {"bn": f"/{ALL_TYPES_OBJECT}/0/{resource}"}]))
        value = draw(values_of(rtype) | st.sampled_from([2**64, -(2**63) - 1, 2**40, 2.0])
                     if senml._LABEL_OF_TYPE[rtype] == "v" else values_of(rtype))
        value = {datetime: lambda t: int(t.timestamp()), ObjLnk: str}.get(type(value), lambda v: v)(value)
        record[senml._LABEL_OF_TYPE[rtype]] = value
    elif chance:
        record[draw(st.sampled_from(senml.VALUE_LABELS))] = draw(plain_values)
    else:
        record.update(draw(st.dictionaries(st.sampled_from([*senml.VALUE_LABELS, "t"]), plain_values, max_size=2)))
    return record


@FUZZ
@given(pack=st.lists(plain_records(), max_size=3), under=st.sampled_from(["/", "/", "/32000", "/32000/0/1", "/3"]))
def test_the_plain_records_shortcut_decodes_as_the_checked_way(registry, pack, under):
    """The one-pass decoding of the usual records gives what the checked way gives, or
    leaves the pack to it: never another value, and never a value where it refuses."""
    under_path = P(under)
    plain = senml._plain_values(pack, under_path, registry, senml.TEXT_LABELS)
    records, labels = senml_cbor.load_records(to_cbor(pack))
    by_integer_labels = senml._plain_values(records, under_path, registry, labels)
    assert repr(by_integer_labels) == repr(plain)  # repr: NaN is not equal to itself
    try:
        checked = senml._checked_leaves(pack, under_path, registry)
    except DecodeError:
        assert plain is None
        return
    if plain is not None:
        assert [(path, None, value) for path, value in plain.items()] == checked
        assert [type(value) for value in plain.values()] == [type(value) for _, _, value in checked]


def test_the_plain_records_shortcut_takes_a_discovery_answer(registry):
    """The shortcut is taken for what devices send most (else it would only cost time)."""
    payload = to_cbor([
        {"n": "/3/0/0", "vs": "Open Mobile Alliance"}, {"n": "/3/0/9", "v": 100},
        {"n": "/3/0/13", "v": 1367491215}, {"n": "/3/0/7/0", "v": 3800},
        {"bn": "/32000/0/", "n": "3", "v": 1.5}, {"n": "4", "vb": True}, {"n": "5", "vd": b"\x01"},
    ])
    records, labels = senml_cbor.load_records(payload)
    assert labels is not senml.TEXT_LABELS  # read by their integer labels, not renamed first
    plain = senml._plain_values(records, LwM2MPath(), registry, labels)
    checked = senml._checked_leaves(senml_cbor.load_pack(payload), LwM2MPath(), registry)
    assert plain is not None and [(path, None, value) for path, value in plain.items()] == checked


def test_a_cbor_false_label_is_not_the_name_label_0(registry):
    """``false`` equals 0 as a dict key: a record labelled by it is refused, not taken for ``n``."""
    payload = cbor2.dumps([{False: "/3/0/0", 3: "Open Mobile Alliance"}])
    with pytest.raises(DecodeError, match="neither an integer nor text"):
        senml_cbor.decode_composite(payload, registry)
    assert senml_cbor.decode_composite(cbor2.dumps([{0: "/3/0/0", 3: "x"}]), registry) == {P("/3/0/0"): "x"}
