"""TLV codec (content format 11542): spec vectors, value widths, errors, properties."""

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
    ObjectDef,
    ObjectInstance,
    ObjectRegistry,
    ObjLnk,
    Operations,
    Resource,
    ResourceDef,
    ResourceInstance,
    ResourceType,
)
from ipso_objects.codecs import ContentFormat
from ipso_objects.codecs import decode as dispatch_decode
from ipso_objects.codecs import tlv
from strategies import ALL_TYPES_OBJECT, addressed_nodes
from spec_examples import DEVICE_INSTANCE

P = LwM2MPath.of
UNKNOWN_OBJECT = 32001
"""An object id no registry used here defines: values decode as raw bytes."""

# --- LwM2M Core 1.0 §6.4.3.1 / Core 1.1 §7.4.3.1 "Single Object Instance Request
# Example": Read /3/0 of the example client's Device object, answered as a
# sequence of Resource TLVs (hex as reproduced in Leshan's LwM2mNodeDecoderTest).
DEVICE_INSTANCE_TLV = bytes.fromhex(
    "C800144F70656E204D6F62696C6520416C6C69616E6365"  # /3/0/0 "Open Mobile Alliance"
    "C801164C69676874776569676874204D324D20436C69656E74"  # /3/0/1 "Lightweight M2M Client"
    "C80209333435303030313233"  # /3/0/2 "345000123"
    "C303312E30"  # /3/0/3 "1.0"
    "8606410001410105"  # /3/0/6 {0: 1, 1: 5}
    "88070842000ED842011388"  # /3/0/7 {0: 3800, 1: 5000}
    "870841007D42010384"  # /3/0/8 {0: 125, 1: 900}
    "C10964"  # /3/0/9 100
    "C10A0F"  # /3/0/10 15
    "830B410000"  # /3/0/11 {0: 0}
    "C40D5182428F"  # /3/0/13 1367491215
    "C60E2B30323A3030"  # /3/0/14 "+02:00"
    "C11055"  # /3/0/16 "U"
)
# Core 1.0 §6.4.3.2 / 1.1 §7.4.3.2 "Multiple Object Instance Request Examples",
# A) Request on Single-Instance Object: Read /3 wraps the same resources in one
# Object Instance TLV (08 00 79: instance 0, 121 bytes).
DEVICE_OBJECT_TLV = bytes.fromhex("080079") + DEVICE_INSTANCE_TLV

# Same section, B) Request on Multiple-Instances Object having 2 instances:
# Read /2 (Access Control); instance 2's ACL has instance 310 (16-bit id, 0x61).
ACL_OBJECT_TLV = bytes.fromhex(
    "08000EC10001C101008302417F07C1037F"
    "080212C10003C101008702417F0761013601C1037F"
)
ACL_OBJECT = Object(
    2,
    {
        0: ObjectInstance(
            0,
            {
                0: Resource(0, 1),
                1: Resource(1, 0),
                2: MultiResource(2, {127: 7}),
                3: Resource(3, 127),
            },
        ),
        2: ObjectInstance(
            2,
            {
                0: Resource(0, 3),
                1: Resource(1, 0),
                2: MultiResource(2, {127: 7, 310: 1}),
                3: Resource(3, 127),
            },
        ),
    },
)

# Same section, C) Request on Multiple-Instances Object having 1 instance: Read /1.
SERVER_OBJECT_TLV = bytes.fromhex("08000FC10001C40100015180C10601C10755")
SERVER_OBJECT = Object(
    1,
    {
        0: ObjectInstance(
            0, {0: Resource(0, 1), 1: Resource(1, 86400), 6: Resource(6, True), 7: Resource(7, "U")}
        )
    },
)

# Core 1.0 §6.4.3.3 / 1.1 §7.4.3.3 "Example of Request on Objects Link": objects
# 65 and 66 are defined by the example itself. Read /65/0:
OBJ65_INSTANCE_TLV = bytes.fromhex(
    "88000C440000420000440100420001C8010D38363133383030373535353030C40212345678"
)
OBJ65_INSTANCE = ObjectInstance(
    0,
    {
        0: MultiResource(0, {0: ObjLnk(66, 0), 1: ObjLnk(66, 1)}),
        1: Resource(1, "8613800755500"),
        2: Resource(2, 0x12345678),
    },
)
# Read /66: two instances, the second links nowhere (the null link 65535:65535).
OBJ66_OBJECT_TLV = bytes.fromhex(
    "080026C8000B6D79536572766963652031C8010F496E7465726E65742E31352E323334C40200430000"
    "080126C8000B6D79536572766963652032C8010F496E7465726E65742E31352E323335C402FFFFFFFF"
)
OBJ66_OBJECT = Object(
    66,
    {
        0: ObjectInstance(
            0,
            {
                0: Resource(0, "myService 1"),
                1: Resource(1, "Internet.15.234"),
                2: Resource(2, ObjLnk(67, 0)),
            },
        ),
        1: ObjectInstance(
            1,
            {
                0: Resource(0, "myService 2"),
                1: Resource(1, "Internet.15.235"),
                2: Resource(2, ObjLnk(0xFFFF, 0xFFFF)),
            },
        ),
    },
)


def _link_object(object_id: int, types: dict[int, tuple[ResourceType, bool]]) -> ObjectDef:
    resources = {
        rid: ResourceDef(rid, f"res{rid}", Operations.R, multiple, False, rtype)
        for rid, (rtype, multiple) in types.items()
    }
    return ObjectDef(
        object_id, f"link example {object_id}", f"urn:example:{object_id}", True, False, resources
    )


@pytest.fixture(scope="module")
def link_registry(registry: ObjectRegistry) -> ObjectRegistry:
    """The session registry plus objects 65 and 66 of the Core spec's Objlnk example."""
    return ObjectRegistry(
        [
            *registry,
            _link_object(65, {0: (ResourceType.OBJLNK, True), 1: (ResourceType.STRING, False),
                              2: (ResourceType.INTEGER, False)}),
            _link_object(66, {0: (ResourceType.STRING, False), 1: (ResourceType.STRING, False),
                              2: (ResourceType.OBJLNK, False)}),
        ]
    )


# --- spec vectors: decode to the node, encode back to the same bytes ----------------


@pytest.mark.parametrize(
    ("data", "path", "node"),
    [
        pytest.param(DEVICE_INSTANCE_TLV, P(3, 0), DEVICE_INSTANCE, id="device-instance"),
        pytest.param(DEVICE_OBJECT_TLV, P(3), Object(3, {0: DEVICE_INSTANCE}), id="device-object"),
        pytest.param(ACL_OBJECT_TLV, P(2), ACL_OBJECT, id="access-control-2-instances"),
        pytest.param(SERVER_OBJECT_TLV, P(1), SERVER_OBJECT, id="server-1-instance"),
    ],
)
def test_core_spec_examples_decode_and_encode_back(registry, data, path, node):
    assert tlv.decode(data, path, registry) == node
    assert tlv.encode(node, path, registry) == data


def test_objlnk_examples_decode_and_encode_back(link_registry):
    assert tlv.decode(OBJ65_INSTANCE_TLV, P(65, 0), link_registry) == OBJ65_INSTANCE
    assert tlv.encode(OBJ65_INSTANCE, P(65, 0), link_registry) == OBJ65_INSTANCE_TLV
    assert tlv.decode(OBJ66_OBJECT_TLV, P(66), link_registry) == OBJ66_OBJECT
    assert tlv.encode(OBJ66_OBJECT, P(66), link_registry) == OBJ66_OBJECT_TLV


def test_instance_wrapped_in_object_instance_tlv_is_tolerated(registry):
    # A client answering Read /3/0 with the /3 form of the spec example.
    assert tlv.decode(DEVICE_OBJECT_TLV, P(3, 0), registry) == DEVICE_INSTANCE


def test_single_resource_multiple_resource_and_resource_instance(registry):
    # Slices of the Device example: one TLV each.
    manufacturer = bytes.fromhex("C800144F70656E204D6F62696C6520416C6C69616E6365")
    power_sources = bytes.fromhex("8606410001410105")
    assert tlv.decode(manufacturer, P(3, 0, 0), registry) == Resource(0, "Open Mobile Alliance")
    assert tlv.decode(power_sources, P(3, 0, 6), registry) == MultiResource(6, {0: 1, 1: 5})
    assert tlv.decode(bytes.fromhex("410105"), P(3, 0, 6, 1), registry) == ResourceInstance(1, 5)
    assert tlv.encode(Resource(0, "Open Mobile Alliance"), P(3, 0, 0), registry) == manufacturer
    assert tlv.encode(MultiResource(6, {1: 5, 0: 1}), P(3, 0, 6), registry) == power_sources
    assert tlv.encode(ResourceInstance(1, 5), P(3, 0, 6, 1), registry) == bytes.fromhex("410105")


def test_wakaama_vectors_with_16_bit_instance_id_and_unknown_resources(registry):
    # Wakaama tests/data_tlvtests.c test_tlv_parse, data2: instance 0x0203 (16-bit
    # id, type byte 0x28) holding resources 55 and 66; the model does not know
    # them, so they decode as raw bytes.
    data = bytes([0x28, 2, 3, 17, 0xC3, 55, 1, 2, 3, 0xC8, 66, 9, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    node = Object(
        UNKNOWN_OBJECT,
        {
            0x203: ObjectInstance(
                0x203, {55: Resource(55, b"\x01\x02\x03"), 66: Resource(66, bytes(range(4, 13)))}
            )
        },
    )
    assert tlv.decode(data, P(UNKNOWN_OBJECT), registry) == node
    assert tlv.encode(node, P(UNKNOWN_OBJECT), registry) == data


def test_dispatch_reaches_tlv(registry):
    assert dispatch_decode(ContentFormat.TLV, SERVER_OBJECT_TLV, P(1), registry) == SERVER_OBJECT


# --- value encodings: smallest widths, every type ----------------------------------


@pytest.mark.parametrize(
    ("rid", "value", "hex_payload"),
    [
        (1, 0, "C10100"),
        (1, 127, "C1017F"),
        (1, -128, "C10180"),
        (1, 128, "C2010080"),
        (1, -129, "C201FF7F"),
        (1, 32768, "C40100008000"),
        (1, 2**31, "C801080000000080000000"),
        (1, -(2**63), "C801088000000000000000"),
        (2, 255, "C102FF"),
        (2, 256, "C2020100"),
        (2, 0xEDCC, "C202EDCC"),  # Wakaama test_tlv_uint: 2 bytes ED CC are 0xEDCC unsigned
        (2, 0x8F34567891223344, "C802088F34567891223344"),  # ... and 8 bytes, top bit set
        (3, 1.5, "C4033FC00000"),  # exact in binary32: 4 bytes
        (3, 0.1, "C803083FB999999999999A"),  # not exact in binary32: 8 bytes
        (3, 1e300, "C803087E37E43C8800759C"),  # beyond binary32 range: 8 bytes
        (4, True, "C10401"),
        (4, False, "C10400"),
        (5, b"", "C005"),
        (6, datetime(2013, 5, 2, 10, 40, 15, tzinfo=timezone.utc), "C4065182428F"),
        (6, datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone.utc), "C106FF"),
        (7, ObjLnk(66, 0), "C40700420000"),
        (7, ObjLnk(0xFFFF, 0xFFFF), "C407FFFFFFFF"),
        (8, "</3/0>", "C608" + "</3/0>".encode().hex()),
        (0, "1234567", "C700" + b"1234567".hex()),  # 7 bytes: length inline
        (0, "12345678", "C80008" + b"12345678".hex()),  # 8 bytes: 8-bit length field
        (0, "é", "C200C3A9"),  # UTF-8
    ],
)
def test_value_encodings(registry, rid, value, hex_payload):
    path = P(ALL_TYPES_OBJECT, 0, rid)
    payload = bytes.fromhex(hex_payload)
    assert tlv.encode(Resource(rid, value), path, registry) == payload
    assert tlv.decode(payload, path, registry) == Resource(rid, value)


def test_length_fields_grow_to_16_and_24_bits(registry):
    text = "x" * 256
    payload = bytes.fromhex("D0000100") + text.encode()  # 16-bit length 0x0100
    assert tlv.encode(Resource(0, text), P(ALL_TYPES_OBJECT, 0, 0), registry) == payload
    blob = bytes(65536)
    payload = bytes.fromhex("D805010000") + blob  # 24-bit length 0x010000
    assert tlv.encode(Resource(5, blob), P(ALL_TYPES_OBJECT, 0, 5), registry) == payload
    assert tlv.decode(payload, P(ALL_TYPES_OBJECT, 0, 5), registry) == Resource(5, blob)


def test_16_bit_resource_id_is_used_only_above_255(registry):
    node = Resource(300, b"\x01\x02\x03")
    assert tlv.encode(node, P(UNKNOWN_OBJECT, 0, 300), registry) == bytes.fromhex("E3012C010203")


@pytest.mark.parametrize(
    ("hex_payload", "rid", "value"),
    [
        ("C801080000000000000064", 1, 100),  # Integer in 8 bytes where 1 would do
        ("E100012A", 1, 42),  # 16-bit identifier for id 1
        ("C80003616263", 0, "abc"),  # 8-bit length field for 3 bytes
        ("D0000003616263", 0, "abc"),  # 16-bit length field
        ("D800000003616263", 0, "abc"),  # 24-bit length field
        ("C803083FF8000000000000", 3, 1.5),  # Float in 8 bytes
        ("C2060001", 6, datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)),
    ],
)
def test_decode_accepts_every_legal_width(registry, hex_payload, rid, value):
    path = P(ALL_TYPES_OBJECT, 0, rid)
    assert tlv.decode(bytes.fromhex(hex_payload), path, registry) == Resource(rid, value)


def test_empty_instance_and_empty_multiple_resource_round_trip(registry):
    node = Object(
        ALL_TYPES_OBJECT,
        {4: ObjectInstance(4, {}), 5: ObjectInstance(5, {9: MultiResource(9, {})})},
    )
    payload = bytes.fromhex("0004" "0205" "8009")  # instance 4: empty; 5: {9: {}}
    assert tlv.encode(node, P(ALL_TYPES_OBJECT), registry) == payload
    assert tlv.decode(payload, P(ALL_TYPES_OBJECT), registry) == node
    assert tlv.decode(b"", P(ALL_TYPES_OBJECT, 7), registry) == ObjectInstance(7, {})
    assert tlv.decode(b"", P(ALL_TYPES_OBJECT), registry) == Object(ALL_TYPES_OBJECT, {})
    empty_multiple = tlv.decode(bytes.fromhex("8009"), P(ALL_TYPES_OBJECT, 0, 9), registry)
    assert empty_multiple == MultiResource(9, {})


# --- decode errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_payload", "path", "message"),
    [
        ("C10964" "00", P(3, 0), "truncated header"),  # trailing garbage
        ("C800144F70656E", P(3, 0, 0), "truncated"),  # value shorter than its length
        ("C10001C10002", P(1, 0), "appears twice"),
        ("00000000", P(1), "appears twice"),
        ("410001", P(3, 0), "Resource Instance TLV"),
        ("C10964", P(3), r"Resource TLV \(id 9\) where Object Instance"),
        ("8606C10001C10105", P(3, 0, 6), r"Resource TLV \(id 0\) where Resource Instance"),
        ("410001", P(3, 0, 6), "Resource Instance TLV"),
        ("C10964C10A0F", P(3, 0, 9), "exactly one TLV"),
        ("", P(3, 0, 9), "exactly one TLV"),
        ("C10A0F", P(3, 0, 9), "does not match path"),
        ("080103C10964", P(3, 0), "does not match path"),
        ("C10601", P(3, 0), "multiple-instance"),
        ("8309410064", P(3, 0), "single-instance"),
        ("410064", P(3, 0, 9, 0), "single-instance"),
        ("C10402", P(ALL_TYPES_OBJECT, 0), "Boolean"),
        ("C301010203", P(ALL_TYPES_OBJECT, 0, 1), "1, 2, 4 or 8 bytes"),
        ("C303010203", P(ALL_TYPES_OBJECT, 0, 3), "4 or 8 bytes"),
        ("C307004200", P(ALL_TYPES_OBJECT, 0, 7), "Objlnk"),
        ("C200C328", P(ALL_TYPES_OBJECT, 0, 0), "UTF-8"),
        ("C806088000000000000000", P(ALL_TYPES_OBJECT, 0, 6), "outside"),
        ("C10001", P(), "cannot address"),
        ("E1FFFF01", P(UNKNOWN_OBJECT, 0), "65535"),  # reserved id
    ],
)
def test_decode_errors_name_the_problem(registry, hex_payload, path, message):
    with pytest.raises(DecodeError, match=message):
        tlv.decode(bytes.fromhex(hex_payload), path, registry)


def test_truncated_spec_example_is_rejected(registry):
    with pytest.raises(DecodeError, match="truncated"):
        tlv.decode(DEVICE_OBJECT_TLV[:-1], P(3), registry)
    with pytest.raises(DecodeError):
        tlv.decode(DEVICE_OBJECT_TLV + b"\xc1", P(3), registry)


# --- encode errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "path", "message"),
    [
        (Resource(0, 5), P(3, 0, 0), "String resource cannot hold int"),
        (Resource(1, 2**63), P(ALL_TYPES_OBJECT, 0, 1), "signed 64-bit"),
        (Resource(2, -1), P(ALL_TYPES_OBJECT, 0, 2), "unsigned"),
        (Resource(4, 1), P(3, 0, 4), "executable"),
        (Resource(6, 1), P(3, 0, 6), "multiple-instance"),
        (MultiResource(9, {0: 1}), P(3, 0, 9), "single-instance"),
        (ResourceInstance(0, 1), P(3, 0, 9, 0), "single-instance"),
        (Resource(0, "x"), P(3, 0), "cannot be addressed"),
        (Resource(1, "x"), P(3, 0, 0), "does not match"),
        (ObjectInstance(0, {1: Resource(2, "x")}), P(3, 0), "keyed 1 has id 2"),
        (Object(3, {0: Resource(0, "x")}), P(3), "Resource cannot appear here"),
        (Resource(0, "\ud800"), P(3, 0, 0), "UTF-8"),
        (Resource(5, bytes(0x1000000)), P(ALL_TYPES_OBJECT, 0, 5), "at most 16777215"),
    ],
)
def test_encode_errors_name_the_problem(registry, node, path, message):
    with pytest.raises(EncodeError, match=message):
        tlv.encode(node, path, registry)


# --- properties ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(addressed_nodes())
def test_encode_then_decode_is_identity(registry, node_and_path):
    node, path = node_and_path
    payload = tlv.encode(node, path, registry)
    assert tlv.decode(payload, path, registry) == node
    assert tlv.encode(tlv.decode(payload, path, registry), path, registry) == payload


FUZZ_PATHS = [
    P(ALL_TYPES_OBJECT),
    P(ALL_TYPES_OBJECT, 0),
    P(ALL_TYPES_OBJECT, 0, 3),
    P(ALL_TYPES_OBJECT, 0, 12),
    P(ALL_TYPES_OBJECT, 0, 15, 1),
    P(3, 0),
    P(UNKNOWN_OBJECT),
    P(UNKNOWN_OBJECT, 1, 2),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(FUZZ_PATHS))
def test_arbitrary_bytes_raise_only_decode_error(registry, data, path):
    try:
        tlv.decode(data, path, registry)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(addressed_nodes(), st.data())
def test_corrupted_payloads_raise_only_decode_error(registry, node_and_path, data):
    node, path = node_and_path
    payload = bytearray(tlv.encode(node, path, registry))
    if not payload:
        return
    index = data.draw(st.integers(0, len(payload) - 1))
    payload[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    try:
        tlv.decode(bytes(payload[:cut]), path, registry)
    except DecodeError:
        pass
