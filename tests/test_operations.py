"""Device operations, sans-I/O: the exact CoAP request each builder makes, the
content-format policy, response decoding, the CLI's lines and Send payloads."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import cbor2
import pytest

from ipso_objects import LwM2MPath, ObjLnk
from ipso_objects import codecs
from ipso_objects.codecs import ContentFormat as CF
from ipso_objects.codecs import TimestampedValues
from ipso_objects.codecs.link_format import UNSET, NotificationAttributes
from ipso_objects.nodes import MultiResource, Object, ObjectInstance, Resource, ResourceInstance
from lwm2m_server.api import display
from lwm2m_server.core import operations as ops
from lwm2m_server.core.operations import DeviceRequest, Operation, OperationError
from lwm2m_server.core.responses import Result, decode_response, parse_send, result_from_dict
from lwm2m_server.core.registration import ObjectList, Registration

P = LwM2MPath.parse
ALL = 32000  # the all-types test object of conftest


def device(version: str = "1.1", formats: tuple[int, ...] = (), root: str = "/") -> Registration:
    return Registration(
        id="r1", endpoint="dev-1", address="127.0.0.1:40000", lifetime=300,
        lwm2m_version=version, binding="U", queue_mode=False, sms=None,
        object_list=ObjectList(root, formats, ()), registered_at=0.0, updated_at=0.0,
    )


def roundtrip(request: DeviceRequest) -> DeviceRequest:
    """Through JSON, as a queue store keeps it."""
    return DeviceRequest.from_dict(json.loads(json.dumps(request.to_dict())))


# --- Read / Observe: method, path with alternate root, Accept -----------------------------

READ_ACCEPT = [
    # version, advertised ct, path, expected Accept
    ("1.0", (), "/3/0/0", None),            # lwm2m-node-lib: no Accept on single resources
    ("1.0", (), "/3/0/6", None),            # 1.0 answers TLV unasked; lwm2m-node-lib drops
    ("1.0", (), "/3/0", None),              # an Accept it does not know: ask only for
    ("1.0", (), "/3", None),                # formats the device advertised
    ("1.0", (CF.TLV,), "/3/0", CF.TLV),
    ("1.0", (), "/5/0/0", None),            # Opaque, still single: no Accept
    ("1.0", (), "/4242/0/1", None),         # unknown to the model: let the device choose
    ("1.0", (CF.OMA_JSON,), "/3/0", CF.OMA_JSON),
    ("1.0", (CF.OMA_JSON, CF.TLV), "/3/0", CF.TLV),
    ("1.1", (), "/3/0/0", CF.TEXT),         # text/plain is a MUST for 1.1 clients
    ("1.1", (), "/5/0/0", CF.OPAQUE),       # so is opaque
    ("1.1", (), "/3/0", CF.SENML_CBOR),     # no MUST multi-value format: SenML CBOR
    ("1.1", (), "/3/0/6/1", CF.TEXT),
    ("1.1", (), "/4242/0/1", CF.SENML_CBOR),
    ("1.1", (CF.SENML_JSON,), "/3/0", CF.SENML_JSON),
    ("1.1", (CF.SENML_JSON,), "/3/0/0", CF.SENML_JSON),
    ("1.1", (CF.TLV, CF.SENML_JSON, CF.SENML_CBOR), "/3/0", CF.SENML_CBOR),
    ("1.1", (CF.TLV,), "/3/0", CF.TLV),
    ("1.1", (CF.LWM2M_CBOR, CF.SENML_JSON), "/3/0", CF.SENML_JSON),  # no LwM2M CBOR in 1.1
    ("1.1", (60,), "/3/0", CF.SENML_CBOR),  # plain CBOR is not an LwM2M node format
    ("1.2", (), "/3/0", CF.SENML_CBOR),
    ("1.2", (CF.SENML_CBOR, CF.LWM2M_CBOR), "/3/0", CF.LWM2M_CBOR),
    ("1.2", (CF.SENML_JSON, CF.TLV), "/3", CF.SENML_JSON),
    ("1.2", (CF.LWM2M_CBOR,), "/5/0/0", CF.OPAQUE),
]


@pytest.mark.parametrize("version, formats, path, accept", READ_ACCEPT)
def test_read_accept_policy(registry, version, formats, path, accept):
    request = ops.read(device(version, formats), P(path), registry=registry)
    assert (request.method, request.accept, request.content_format) == ("GET", accept, None)
    assert (request.payload, request.observe, request.query) == (b"", None, ())
    assert request.paths == (P(path),)
    assert roundtrip(request) == request


@pytest.mark.parametrize("root, uri", [
    ("/", ("3", "0", "9")), ("/lwm2m", ("lwm2m", "3", "0", "9")), ("/a/b/", ("a", "b", "3", "0", "9")),
])
def test_uri_path_under_the_root_path(registry, root, uri):
    request = ops.read(device("1.0", root=root), P("/3/0/9"), registry=registry)
    assert request.uri_path == uri
    assert request.uri == "/" + "/".join(uri)


def test_observe_and_cancel_observe(registry):
    reg = device("1.1", (CF.SENML_JSON,), "/lwm2m")
    start = ops.observe(reg, P("/3303/0/5700"), registry=registry)
    stop = ops.cancel_observe(reg, P("/3303/0/5700"), registry=registry)
    for request, option in ((start, 0), (stop, 1)):
        assert (request.method, request.observe, request.accept) == ("GET", option, CF.SENML_JSON)
        assert request.uri_path == ("lwm2m", "3303", "0", "5700")
    assert (start.kind, stop.kind) == (Operation.OBSERVE, Operation.CANCEL_OBSERVE)
    assert ops.observe(device("1.0"), P("/3/0/9"), registry=registry).accept is None


def test_accept_override(registry):
    request = ops.read(device("1.1"), P("/3/0"), registry=registry, accept=CF.TLV)
    assert request.accept == CF.TLV


def test_read_refuses_the_root(registry):
    with pytest.raises(OperationError, match=r"Read applies to /o, /o/i, /o/i/r, /o/i/r/ri, not /"):
        ops.read(device(), LwM2MPath(), registry=registry)


def test_resource_instances_need_1_1(registry):
    with pytest.raises(OperationError, match=r"resource instance /3/0/6/1 needs LwM2M 1\.1\+"):
        ops.read(device("1.0"), P("/3/0/6/1"), registry=registry)


# --- Write --------------------------------------------------------------------------------

def _decoded(request: DeviceRequest, registry):
    return codecs.decode(request.content_format, request.payload, request.paths[0], registry)


def test_write_single_resource_on_1_0_is_text(registry):
    request = ops.write(device("1.0", root="/lwm2m"), P("/1/0/1"), 3600, registry=registry)
    assert (request.kind, request.method) == (Operation.WRITE_REPLACE, "PUT")
    assert request.uri_path == ("lwm2m", "1", "0", "1")
    assert (request.content_format, request.accept, request.payload) == (CF.TEXT, None, b"3600")


def test_write_opaque_on_1_0_is_raw_bytes(registry):
    request = ops.write(device("1.0"), P("/5/0/0"), b"\x00\xffFW", registry=registry)
    assert (request.content_format, request.payload) == (CF.OPAQUE, b"\x00\xffFW")


def test_write_value_text_cannot_carry_falls_back_to_tlv(registry):
    # Float infinity has no plain-text form; TLV carries it as IEEE 754.
    request = ops.write(device("1.0"), P(f"/{ALL}/0/3"), float("inf"), registry=registry)
    assert request.content_format == CF.TLV
    assert _decoded(request, registry) == Resource(3, float("inf"))


def test_write_wrong_type_names_the_problem(registry):
    with pytest.raises(OperationError, match="Integer"):
        ops.write(device("1.0"), P("/1/0/1"), "soon", registry=registry)


@pytest.mark.parametrize("version, formats, expected", [
    ("1.1", (), CF.TEXT), ("1.1", (CF.SENML_CBOR,), CF.SENML_CBOR),
    ("1.2", (CF.LWM2M_CBOR, CF.SENML_JSON), CF.LWM2M_CBOR), ("1.2", (CF.TLV,), CF.TLV),
])
def test_write_single_resource_on_1_1_plus(registry, version, formats, expected):
    request = ops.write(device(version, formats), P("/3/0/14"), "+02", registry=registry)
    assert (request.method, request.content_format) == ("PUT", expected)
    assert _decoded(request, registry) == Resource(14, "+02")


def test_write_opaque_on_1_1_plus_is_octet_stream(registry):
    request = ops.write(device("1.2", (CF.LWM2M_CBOR,)), P("/9/0/2"), b"\x01" * 2000, registry=registry)
    assert (request.content_format, request.payload) == (CF.OPAQUE, b"\x01" * 2000)


def test_write_unknown_resource_by_value_type(registry):
    request = ops.write(device("1.0"), P("/4242/0/7"), b"\x01\x02", registry=registry)
    assert request.content_format == CF.OPAQUE
    assert ops.write(device("1.0"), P("/4242/0/7"), 7, registry=registry).payload == b"7"


INSTANCE = ObjectInstance(0, {
    0: Resource(0, "name"), 1: Resource(1, -5), 3: Resource(3, 1.5),
    9: MultiResource(9, {0: "a", 3: "b"}), 7: Resource(7, ObjLnk(3, 0)),
})


@pytest.mark.parametrize("version, formats, expected", [
    ("1.0", (), CF.TLV), ("1.1", (), CF.SENML_CBOR), ("1.1", (CF.SENML_JSON,), CF.SENML_JSON),
    ("1.2", (CF.LWM2M_CBOR,), CF.LWM2M_CBOR),
])
def test_write_instance_replace_and_update(registry, version, formats, expected):
    reg = device(version, formats, "/rd-root")
    path = P(f"/{ALL}/0")
    replace = ops.write(reg, path, INSTANCE, registry=registry)
    update = ops.write(reg, path, INSTANCE, replace=False, registry=registry)
    assert (replace.method, replace.kind) == ("PUT", Operation.WRITE_REPLACE)
    assert (update.method, update.kind) == ("POST", Operation.WRITE_UPDATE)
    for request in (replace, update):
        assert request.uri_path == ("rd-root", str(ALL), "0")
        assert request.content_format == expected and request.accept is None
        assert _decoded(request, registry) == INSTANCE
        assert roundtrip(request) == request


def test_write_multi_instance_resource(registry):
    node = MultiResource(10, {0: 1, 1: 2})
    request = ops.write(device("1.0"), P(f"/{ALL}/0/10"), node, registry=registry)
    assert (request.method, request.content_format) == ("PUT", CF.TLV)
    assert _decoded(request, registry) == node
    # 1.1+: a partial update (POST) of a multi-instance resource adds instances.
    update = ops.write(device("1.1"), P(f"/{ALL}/0/10"), node, replace=False, registry=registry)
    assert (update.method, update.content_format) == ("POST", CF.SENML_CBOR)


def test_write_resource_instance_on_1_1(registry):
    request = ops.write(device("1.1"), P(f"/{ALL}/0/10/4"), 42, registry=registry)
    assert (request.content_format, request.payload) == (CF.TEXT, b"42")
    assert request.uri_path == (str(ALL), "0", "10", "4")


@pytest.mark.parametrize("version, path, node, replace, problem", [
    ("1.1", "/3/0/0", "Acme", True, r"/3/0/0 Manufacturer is not writable \(operations R\)"),
    ("1.1", "/3/0/4", "x", True, "Reboot is not writable"),
    ("1.1", "/3/0", ObjectInstance(0, {0: Resource(0, "x")}), False, "Manufacturer is not writable"),
    ("1.1", "/1/0/1", 60, False, "partial update of /1/0/1 needs a multi-instance resource"),
    ("1.0", f"/{ALL}/0/10", MultiResource(10, {}), False, r"needs a multi-instance resource and LwM2M 1\.1\+"),
    ("1.1", "/1", Object(1, {}), True, "Write applies to"),
    ("1.1", "/1/0/1", Resource(2, 60), True, "does not match path"),
])
def test_write_refusals(registry, version, path, node, replace, problem):
    with pytest.raises(OperationError, match=problem):
        ops.write(device(version), P(path), node, replace=replace, registry=registry)


# --- Execute ------------------------------------------------------------------------------

ACCEPTED_ARGUMENTS = {
    "": {},
    "0": {0: None},
    "0,1": {0: None, 1: None},
    "5='http://x.y/z?a=1'": {5: "http://x.y/z?a=1"},
    "0='',9='!#$%&()*+,-./:;<=>?@[]^_`{|}~'": {0: "", 9: "!#$%&()*+,-./:;<=>?@[]^_`{|}~"},
    "2='a,b',3": {2: "a,b", 3: None},
}
REFUSED_ARGUMENTS = {
    "a": "expected a digit 0-9 at offset 0",
    "10": "expected ',' between arguments at offset 1",
    "1,": "expected a digit 0-9 at offset 2, found the end",
    ",1": "expected a digit 0-9 at offset 0",
    "0=x": "expected a quote",
    "0='x": "never closed",
    "0='a b'": "' ' at offset 4 is not allowed",
    "0='a\"b'": "'\"' at offset 4 is not allowed",
    "0='a\\b'": "at offset 4 is not allowed",
    "0='é'": "'é' at offset 3 is not allowed",
    "0='a'1": "expected ',' between arguments at offset 5",
    "0 ,1": "expected ',' between arguments at offset 1",
    "1,1='x'": "argument 1 given twice",
}


@pytest.mark.parametrize("text, parsed", ACCEPTED_ARGUMENTS.items())
def test_execute_argument_grammar_accepts(text, parsed):
    assert ops.parse_execute_arguments(text) == parsed


@pytest.mark.parametrize("text, problem", REFUSED_ARGUMENTS.items())
def test_execute_argument_grammar_refuses(registry, text, problem):
    with pytest.raises(OperationError) as caught:
        ops.execute(device(), P("/3/0/4"), text, registry=registry)
    assert problem in caught.value.reason


def test_execute_request(registry):
    reboot = ops.execute(device("1.0", root="/lwm2m"), P("/3/0/4"), registry=registry)
    assert (reboot.method, reboot.uri_path) == ("POST", ("lwm2m", "3", "0", "4"))
    assert (reboot.content_format, reboot.payload) == (None, b"")
    update = ops.execute(device(), P("/5/0/2"), "0='fw-2.1'", registry=registry)
    assert (update.content_format, update.payload) == (CF.TEXT, b"0='fw-2.1'")


def test_execute_refuses_what_is_not_executable(registry):
    with pytest.raises(OperationError, match=r"/3/0/9 Battery Level is not executable"):
        ops.execute(device(), P("/3/0/9"), registry=registry)
    with pytest.raises(OperationError, match="Execute applies to /o/i/r"):
        ops.execute(device(), P("/3/0"), registry=registry)


# --- Create, Delete, Discover, Write-Attributes --------------------------------------------

@pytest.mark.parametrize("version, expected", [("1.0", CF.TLV), ("1.1", CF.SENML_CBOR)])
def test_create_names_the_new_instance(registry, version, expected):
    instance = ObjectInstance(2, {0: Resource(0, "x"), 1: Resource(1, 7)})
    request = ops.create(device(version, root="/lwm2m"), P(f"/{ALL}"), instance, registry=registry)
    assert (request.kind, request.method, request.uri_path) == (
        Operation.CREATE, "POST", ("lwm2m", str(ALL)))
    assert request.content_format == expected
    assert codecs.decode(expected, request.payload, P(f"/{ALL}"), registry) == Object(ALL, {2: instance})


# Create /3303 with instance 7, each format, written by hand from the format specs:
# TLV from Core 1.0 §6.4.3 Table 21 (type byte: bits 7-6 kind, 00 Object Instance,
# 11 Resource; bit 5 16-bit id; bits 4-3 length field; bits 2-0 short length) as in its
# "08 00 79" Object Instance example, Float 21.5 as binary32 41ac0000 (Appendix C);
# SenML JSON/CBOR from Core 1.1 §7.4.4/§7.4.5 naming (bn "/3303/" + n "7/5700") with
# RFC 8428 §6 labels (bn -2 → 21, n 0 → 00, v 2 → 02, vs 3 → 03); LwM2M CBOR from Core 1.2
# §7.4.6 nested maps keyed by ids; OMA JSON from Core 1.0 §6.4.4 (bn, e, n, v, sv). CBOR
# items per RFC 8949: 19 0ce7 = 3303, f9 4d60 = 21.5 as a half float, 6x = text of x bytes.
TEMPERATURE = {5700: Resource(5700, 21.5), 5701: Resource(5701, "Cel")}
CREATE_VECTORS = [
    # format, resources of /3303/7, payload
    (CF.TLV, {}, "00 07"),  # an empty Object Instance TLV: type 00000000, id 7, length 0
    (CF.TLV, TEMPERATURE,
     "08 07 0d"  # Object Instance 7, 8-bit length field: 13 bytes
     " e4 1644 41ac0000"  # Resource 5700 (16-bit id), 4 bytes: 21.5
     " e3 1645 43656c"),  # Resource 5701, 3 bytes: "Cel"
    (CF.SENML_JSON, {}, '[{"bn":"/3303/","n":"7/"}]'),
    (CF.SENML_JSON, TEMPERATURE, '[{"bn":"/3303/","n":"7/5700","v":21.5},{"n":"7/5701","vs":"Cel"}]'),
    (CF.SENML_CBOR, {}, "81 a2 21 66 2f333330332f 00 62 372f"),
    (CF.SENML_CBOR, TEMPERATURE,
     "82 a3 21 66 2f333330332f 00 66 372f35373030 02 f9 4d60"
     " a2 00 66 372f35373031 03 63 43656c"),
    (CF.LWM2M_CBOR, {}, "a1 19 0ce7 a1 07 a0"),  # {3303: {7: {}}}
    (CF.LWM2M_CBOR, TEMPERATURE, "a1 19 0ce7 a1 07 a2 19 1644 f9 4d60 19 1645 63 43656c"),
    (CF.OMA_JSON, {}, '{"bn":"/3303/7/","e":[]}'),
    (CF.OMA_JSON, TEMPERATURE, '{"bn":"/3303/","e":[{"n":"7/5700","v":21.5},{"n":"7/5701","sv":"Cel"}]}'),
]


@pytest.mark.parametrize("fmt, resources, expected", CREATE_VECTORS,
                         ids=[f"{CF(f).name}-{'full' if r else 'empty'}" for f, r, _ in CREATE_VECTORS])
def test_create_carries_the_instance_id_in_every_format(registry, fmt, resources, expected):
    """An empty instance once went as the SenML CBOR pack 80 (no records, no id): 4.00."""
    instance = ObjectInstance(7, resources)
    request = ops.create(device("1.2", root="/lwm2m"), P("/3303"), instance, registry=registry,
                         content_format=fmt)
    payload = expected.encode() if expected.startswith(("[", "{")) else bytes.fromhex(expected)
    assert (request.method, request.uri_path, request.content_format) == ("POST", ("lwm2m", "3303"), fmt)
    assert request.payload == payload
    assert codecs.decode(fmt, payload, P("/3303"), registry) == Object(3303, {7: instance})


CREATE_FORMATS = [
    # version, advertised ct, format of a Create
    ("1.0", (), CF.TLV),
    ("1.0", (CF.OMA_JSON,), CF.TLV),  # TLV is mandatory for 1.0 clients (Core 1.0 §6.4)
    ("1.1", (), CF.SENML_CBOR),
    ("1.1", (CF.TLV,), CF.TLV),
    ("1.1", (CF.SENML_JSON, CF.TLV), CF.SENML_JSON),
    ("1.2", (), CF.SENML_CBOR),
    ("1.2", (CF.TLV, CF.LWM2M_CBOR), CF.LWM2M_CBOR),
]


@pytest.mark.parametrize("version, formats, expected", CREATE_FORMATS)
def test_create_format_follows_version_and_advertised_formats(registry, version, formats, expected):
    request = ops.create(device(version, formats), P("/3303"), ObjectInstance(7, {}), registry=registry)
    assert request.content_format == expected
    assert codecs.decode(expected, request.payload, P("/3303"), registry) == Object(3303, {7: ObjectInstance(7, {})})


def test_create_without_an_id_leaves_it_to_the_device(registry):
    # Resource TLVs at the top, no Object Instance TLV (OMA LwM2M_for_Developers #422).
    full = ops.create(device("1.1", (CF.TLV,)), P("/3303"), TEMPERATURE, registry=registry)
    assert (full.content_format, full.payload) == (CF.TLV, bytes.fromhex("e4 1644 41ac0000 e3 1645 43656c"))
    empty = ops.create(device("1.0"), P("/3303"), {}, registry=registry)
    assert (empty.content_format, empty.payload) == (CF.TLV, b"")
    created = decode_response(empty, "2.01", None, b"", registry, location_path=("3303", "4"))
    assert created.ok and created.location == P("/3303/4")
    with pytest.raises(OperationError, match="did not advertise TLV: give an id"):
        ops.create(device("1.1"), P("/3303"), {}, registry=registry)
    with pytest.raises(OperationError, match=r"cannot go as SENML_CBOR \(112\): give an id"):
        ops.create(device("1.1", (CF.TLV,)), P("/3303"), {}, registry=registry, content_format=CF.SENML_CBOR)
    with pytest.raises(OperationError, match="ObjectInstance or a mapping of resources"):
        ops.create(device(), P("/3303"), [Resource(5700, 1.0)], registry=registry)


def test_delete_and_discover(registry):
    reg = device("1.0", root="/lwm2m")
    gone = ops.delete(reg, P("/3303/1"))
    assert (gone.method, gone.uri_path, gone.payload, gone.accept) == (
        "DELETE", ("lwm2m", "3303", "1"), b"", None)
    with pytest.raises(OperationError, match="Delete applies to /o/i"):
        ops.delete(reg, P("/3303"))
    found = ops.discover(reg, P("/3/0"))
    assert (found.method, found.accept, found.content_format) == ("GET", CF.LINK, None)


def test_write_attributes_query_without_payload(registry):
    attrs = NotificationAttributes(pmin=10, pmax=60, gt=20.5, st=UNSET)
    request = ops.write_attributes(device("1.0", root="/lwm2m"), P("/3303/0/5700"), attrs,
                                   registry=registry)
    assert (request.method, request.uri_path) == ("PUT", ("lwm2m", "3303", "0", "5700"))
    assert request.query == ("pmin=10", "pmax=60", "gt=20.5", "st")
    assert (request.payload, request.content_format, request.accept) == (b"", None, None)
    assert NotificationAttributes.from_query(request.query) == attrs
    assert request.uri == "/lwm2m/3303/0/5700?pmin=10&pmax=60&gt=20.5&st"


@pytest.mark.parametrize("version, path, attrs, problem", [
    ("1.0", "/3303/0/5700", NotificationAttributes(epmin=5), r"epmin needs LwM2M 1\.1\+"),
    ("1.1", "/3303/0/5700", NotificationAttributes(edge=1), r"edge needs LwM2M 1\.2\+"),
    ("1.1", "/3303/0", NotificationAttributes(gt=3.0), "gt applies to a resource"),
    ("1.1", "/3/0/0", NotificationAttributes(st=1.0), "st does not apply to String"),
    ("1.1", "/3303/0", NotificationAttributes(), "at least one attribute"),
])
def test_write_attributes_refusals(registry, version, path, attrs, problem):
    with pytest.raises(OperationError, match=problem):
        ops.write_attributes(device(version), P(path), attrs, registry=registry)


def test_write_attributes_1_2_edge_on_boolean(registry):
    request = ops.write_attributes(device("1.2"), P(f"/{ALL}/0/4"), NotificationAttributes(edge=1),
                                   registry=registry)
    assert request.query == ("edge=1",)


# --- composite operations -----------------------------------------------------------------

@pytest.mark.parametrize("version, formats, payload_format, accept", [
    ("1.1", (), CF.SENML_CBOR, CF.SENML_CBOR),
    ("1.1", (CF.SENML_JSON, CF.TLV), CF.SENML_JSON, CF.SENML_JSON),
    ("1.2", (CF.SENML_CBOR, CF.LWM2M_CBOR), CF.SENML_CBOR, CF.LWM2M_CBOR),
    ("1.2", (CF.LWM2M_CBOR, CF.SENML_JSON), CF.SENML_JSON, CF.LWM2M_CBOR),
])
def test_read_and_observe_composite(registry, version, formats, payload_format, accept):
    reg = device(version, formats, "/lwm2m")
    paths = [P("/3/0/9"), P("/3303/0"), P("/1")]
    read = ops.read_composite(reg, paths, registry=registry)
    start = ops.observe_composite(reg, paths, registry=registry)
    stop = ops.cancel_observe_composite(reg, paths, registry=registry)
    for request, option in ((read, None), (start, 0), (stop, 1)):
        assert (request.method, request.uri_path, request.observe) == ("FETCH", ("lwm2m",), option)
        assert (request.content_format, request.accept) == (payload_format, accept)
        assert codecs.decode_paths(payload_format, request.payload) == paths
        assert request.paths == tuple(paths)
        assert roundtrip(request) == request


def test_write_composite(registry):
    values = {P("/1/0/1"): 60, P(f"/{ALL}/0/10/2"): 5, P("/3/0/14"): "+01"}
    request = ops.write_composite(device("1.1", root="/lwm2m"), values, registry=registry)
    assert (request.method, request.uri_path, request.content_format) == (
        "iPATCH", ("lwm2m",), CF.SENML_CBOR)
    assert codecs.decode_composite(CF.SENML_CBOR, request.payload, registry) == values
    with pytest.raises(OperationError, match="Short Server ID is not writable"):
        ops.write_composite(device("1.1"), {P("/1/0/0"): 2}, registry=registry)


@pytest.mark.parametrize("build", [
    lambda reg, r: ops.read_composite(reg, [P("/3/0")], registry=r),
    lambda reg, r: ops.observe_composite(reg, [P("/3/0")], registry=r),
    lambda reg, r: ops.cancel_observe_composite(reg, [P("/3/0")], registry=r),
    lambda reg, r: ops.write_composite(reg, {P("/1/0/1"): 60}, registry=r),
])
def test_composite_needs_1_1(registry, build):
    with pytest.raises(OperationError, match=r"composite operations need LwM2M 1\.1\+"):
        build(device("1.0"), registry)


def test_composite_refusals(registry):
    with pytest.raises(OperationError, match="at least one path"):
        ops.read_composite(device(), [], registry=registry)
    with pytest.raises(OperationError, match="listed twice"):
        ops.read_composite(device(), [P("/3/0"), P("/3/0")], registry=registry)
    with pytest.raises(OperationError, match="Write-Composite applies to /o/i/r, /o/i/r/ri"):
        ops.write_composite(device(), {P("/3/0"): 1}, registry=registry)


# --- choose_format directly -----------------------------------------------------------------

def test_choose_format_by_operation(registry):
    reg = device("1.2", (CF.LWM2M_CBOR, CF.SENML_CBOR))
    assert ops.choose_format(reg, Operation.DISCOVER, P("/3"), registry) == (None, CF.LINK)
    assert ops.choose_format(reg, Operation.DELETE, P("/3/0"), registry) == (None, None)
    assert ops.choose_format(reg, Operation.WRITE_ATTRIBUTES, P("/3/0"), registry) == (None, None)
    assert ops.choose_format(reg, Operation.EXECUTE, P("/3/0/4"), registry) == (CF.TEXT, None)
    assert ops.choose_format(reg, Operation.READ, P("/3/0"), registry) == (None, CF.LWM2M_CBOR)
    assert ops.choose_format(reg, Operation.WRITE_REPLACE, P("/3/0"), registry) == (CF.LWM2M_CBOR, None)
    assert ops.choose_format(reg, Operation.CREATE, P("/3303"), registry) == (CF.LWM2M_CBOR, None)
    assert ops.choose_format(reg, Operation.READ_COMPOSITE, P("/"), registry) == (
        CF.SENML_CBOR, CF.LWM2M_CBOR)
    assert ops.choose_format(reg, Operation.WRITE_COMPOSITE, P("/"), registry) == (CF.LWM2M_CBOR, None)


# --- DeviceRequest persistence -------------------------------------------------------------

def test_request_dict_is_json_and_round_trips(registry):
    request = ops.write(device("1.0"), P("/5/0/0"), bytes(range(256)), registry=registry)
    data = request.to_dict()
    assert data["payload"] == __import__("base64").b64encode(bytes(range(256))).decode()
    assert data["kind"] == "WRITE_REPLACE" and data["paths"] == ["/5/0/0"]
    assert type(data["content_format"]) is int
    assert roundtrip(request) == request


@pytest.mark.parametrize("broken, problem", [
    ({"method": "GET"}, "lacks 'kind'"),
    ({"kind": "READ"}, "lacks 'method'"),
    ({"kind": "JUMP", "method": "GET"}, "malformed request dict"),
    ({"kind": "READ", "method": "BREW"}, "method 'BREW'"),
    ({"kind": "READ", "method": "GET", "payload": "!!"}, "malformed request dict"),
    ({"kind": "READ", "method": "GET", "paths": ["3/0"]}, "malformed request path"),
    ({"kind": "READ", "method": "GET", "accept": "110"}, "accept must be an integer"),
    ({"kind": "READ", "method": "GET", "uri_path": [3]}, "uri_path must be a list of strings"),
    ({"kind": "READ", "method": "GET", "observe": 2}, "observe must be 0, 1"),
])
def test_request_from_malformed_dict(broken, problem):
    with pytest.raises(OperationError, match=problem):
        DeviceRequest.from_dict(broken)


# --- decode_response -----------------------------------------------------------------------

def test_read_response_text_with_and_without_content_format(registry):
    request = ops.read(device("1.0"), P("/3/0/0"), registry=registry)
    for content_format in (None, CF.TEXT):  # absent Content-Format means text/plain
        result = decode_response(request, "2.05", content_format, b"Acme", registry)
        assert result.ok and result.node == Resource(0, "Acme") and result.diagnostic == ""
    battery = ops.read(device("1.0"), P("/3/0/9"), registry=registry)
    assert decode_response(battery, "2.05", None, b"95", registry).node == Resource(9, 95)


def test_read_response_decoded_by_the_format_it_carries(registry):
    request = ops.read(device("1.1"), P("/3/0"), registry=registry)  # asked for SenML CBOR
    node = ObjectInstance(0, {0: Resource(0, "Acme"), 6: MultiResource(6, {0: 1, 1: 5})})
    tlv = codecs.encode(CF.TLV, node, P("/3/0"), registry)
    result = decode_response(request, "2.05", CF.TLV, tlv, registry)
    assert (result.ok, result.content_format, result.node) == (True, CF.TLV, node)


def test_error_response_carries_its_diagnostic(registry):
    request = ops.read(device(), P("/3303/7"), registry=registry)
    result = decode_response(request, "4.04", None, b"no instance 7\n", registry)
    assert (result.ok, result.code, result.node, result.diagnostic) == (
        False, "4.04", None, "no instance 7")
    bare = decode_response(request, "4.05", None, b"", registry)
    assert (bare.ok, bare.diagnostic) == (False, "Method Not Allowed")
    assert decode_response(request, "5.00", 0, b"\xff", registry).diagnostic == "\ufffd"


@pytest.mark.parametrize("content_format, payload, path, problem", [
    (CF.SENML_CBOR, b"\xff\x00", "/3/0", "SENML_CBOR (112) payload for /3/0 could not be decoded"),
    (None, b"lots", "/3/0/9", "payload for /3/0/9 could not be decoded"),
    (CF.TEXT, b"x", "/3/0", "payload for /3/0 could not be decoded"),
    (60, b"\xa0", "/3/0", "content format 60 payload for /3/0 could not be decoded"),
    (CF.LINK, b"</3/0>", "/3/0", "not an LwM2M node format"),
])
def test_undecodable_payload_is_not_ok(registry, content_format, payload, path, problem):
    request = ops.read(device("1.1"), P(path), registry=registry)
    result = decode_response(request, "2.05", content_format, payload, registry)
    assert not result.ok and result.code == "2.05" and result.node is None
    assert problem in result.diagnostic


def test_discover_response(registry):
    request = ops.discover(device(), P("/3/0"), registry=registry)
    payload = b"</3/0>;pmin=10,</3/0/0>,</3/0/6>;dim=2"
    result = decode_response(request, "2.05", CF.LINK, payload, registry)
    assert result.ok and [link.target for link in result.links] == ["/3/0", "/3/0/0", "/3/0/6"]
    assert result.links[2].dim == 2
    broken = decode_response(request, "2.05", CF.LINK, b"<3/0", registry)
    assert not broken.ok and "link format" in broken.diagnostic
    wrong = decode_response(request, "2.05", CF.TLV, b"", registry)
    assert not wrong.ok and "must be link format" in wrong.diagnostic


def test_composite_read_response(registry):
    request = ops.read_composite(device("1.1"), [P("/3/0/0"), P("/3/0/9")], registry=registry)
    values = {P("/3/0/0"): "Acme", P("/3/0/9"): 95}
    payload = codecs.encode_composite(CF.SENML_CBOR, values, registry)
    result = decode_response(request, "2.05", CF.SENML_CBOR, payload, registry)
    assert result.ok and result.values == values
    textual = decode_response(request, "2.05", None, b"Acme", registry)
    assert not textual.ok and "could not be decoded" in textual.diagnostic


def test_changed_created_deleted(registry):
    reg = device("1.1", root="/lwm2m")
    written = decode_response(ops.write(reg, P("/1/0/1"), 60, registry=registry), "2.04", None, b"",
                                  registry)
    assert written.ok and written.node is None
    create = ops.create(reg, P(f"/{ALL}"), ObjectInstance(3, {}), registry=registry)
    created = decode_response(create, "2.01", None, b"", registry,
                                  location_path=("lwm2m", str(ALL), "3"))
    assert created.ok and created.location == P(f"/{ALL}/3")
    deleted = decode_response(ops.delete(reg, P(f"/{ALL}/3")), "2.02", None, b"", registry)
    assert deleted.ok


def test_bad_response_code_is_a_caller_error(registry):
    request = ops.read(device(), P("/3/0/0"), registry=registry)
    with pytest.raises(OperationError, match="not a CoAP response code"):
        decode_response(request, "205", None, b"", registry)


def test_result_dict_decodes_again(registry):
    request = ops.read(device("1.1"), P("/3/0/0"), registry=registry)
    result = decode_response(request, "2.05", CF.TEXT, b"Acme", registry)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ok"] and data["code"] == "2.05"
    assert result_from_dict(request, data, registry) == result


# --- describe / flat_lines -----------------------------------------------------------------

def test_describe_device_values(registry):
    assert display.describe(P("/3/0/0"), "Acme", registry) == '/3/0/0 Manufacturer = "Acme"'
    assert display.describe(P("/3/0/6/0"), 1, registry) == "/3/0/6/0 Available Power Sources[0] = 1"
    assert display.describe(P("/4242/0/1"), 'say "hi"', registry) == r'/4242/0/1 = "say \"hi\""'


def test_flat_lines_of_a_device_instance(registry):
    device_instance = ObjectInstance(0, {
        0: Resource(0, "Acme"),
        1: Resource(1, "X-1"),
        6: MultiResource(6, {0: 1, 1: 5}),
        9: Resource(9, 95),
        11: MultiResource(11, {}),
        13: Resource(13, datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
    })
    assert display.flat_lines(device_instance, P("/3/0"), registry) == [
        '/3/0/0 Manufacturer = "Acme"',
        '/3/0/1 Model Number = "X-1"',
        "/3/0/6/0 Available Power Sources[0] = 1",
        "/3/0/6/1 Available Power Sources[1] = 5",
        "/3/0/9 Battery Level = 95 %",  # with the unit of its DDF (/100)
        "/3/0/11 Error Code = (no instances)",
        "/3/0/13 Current Time = 2024-05-01T12:30:00Z",
    ]


def test_flat_lines_value_forms(registry):
    instance = ObjectInstance(0, {
        3: Resource(3, 0.1), 4: Resource(4, True), 5: Resource(5, b"\x00\xab"),
        7: Resource(7, ObjLnk(3, 0)), 14: MultiResource(14, {0: bytes(40)}),
    })
    lines = display.flat_lines(Object(ALL, {0: instance}), P(f"/{ALL}"), registry)
    assert lines == [
        f"/{ALL}/0/3 Float Single = 0.1",
        f"/{ALL}/0/4 Boolean Single = true",
        f"/{ALL}/0/5 Opaque Single = 0x00ab (2 bytes)",
        f"/{ALL}/0/7 Objlnk Single = 3:0",
        f"/{ALL}/0/14/0 Opaque Multiple[0] = 0x{'00' * 32}… (40 bytes)",
    ]
    assert display.flat_lines(Object(3303, {}), P("/3303"), registry) == ["/3303 (no instances)"]
    assert display.flat_lines(ResourceInstance(2, b""), P(f"/{ALL}/0/14/2"), registry) == [
        f"/{ALL}/0/14/2 Opaque Multiple[2] = (0 bytes)"]
    with pytest.raises(OperationError, match="does not match"):
        display.flat_lines(Resource(1, 5), P("/3/0/2"), registry)


def test_opaque_is_shown_as_hex_alike_alone_and_inside_an_instance(registry):
    """An opaque b"c" read alone once printed ``= 63 (1 bytes)``, which reads as the number 63."""
    alone = display.describe(P(f"/{ALL}/0/5"), b"c", registry)
    assert alone == f"/{ALL}/0/5 Opaque Single = 0x63 (1 byte)"
    inside = display.flat_lines(ObjectInstance(0, {5: Resource(5, b"c")}), P(f"/{ALL}/0"), registry)
    assert inside == [alone]
    assert display.format_value(b"c") == "0x63 (1 byte)"
    assert display.format_value(bytes(32)) == f"0x{'00' * 32} (32 bytes)"  # no ellipsis at the limit
    assert display.format_value(99) == "99"  # a number stays bare: the two cannot be confused


# --- Send ----------------------------------------------------------------------------------

# Core 1.1 Table 7.4.4-3 (SenML JSON with history: base time and relative times).
HISTORY_JSON = (
    b'[{"bn":"/72/","bt":25462634,"n":"1/2","v":22.4,"t":-5},'
    b'{"n":"1/2","v":22.9,"t":-30},{"n":"1/2","v":24.1,"t":-50}]'
)


def test_parse_send_with_history(registry):
    assert parse_send(HISTORY_JSON, CF.SENML_JSON, registry) == [
        TimestampedValues(25462629, {P("/72/1/2"): 22.4}),
        TimestampedValues(25462604, {P("/72/1/2"): 22.9}),
        TimestampedValues(25462584, {P("/72/1/2"): 24.1}),
    ]


def test_parse_send_of_several_objects(registry):
    payload = (b'[{"bn":"/3/0/","n":"0","vs":"Acme"},{"n":"9","v":95},'
               b'{"bn":"/3303/0/","bt":1700000000,"n":"5700","v":21.5}]')
    assert parse_send(payload, CF.SENML_JSON, registry) == [
        TimestampedValues(None, {P("/3/0/0"): "Acme", P("/3/0/9"): 95}),
        TimestampedValues(1700000000, {P("/3303/0/5700"): 21.5}),
    ]
    cbor = cbor2.dumps([{-2: "/3303/0/", 0: "5700", 2: 21.5}])
    assert parse_send(cbor, CF.SENML_CBOR, registry) == [
        TimestampedValues(None, {P("/3303/0/5700"): 21.5})]


def test_parse_send_lwm2m_cbor(registry):
    values = {P("/3303/0/5700"): 21.5, P("/3/0/9"): 80}
    payload = codecs.encode_composite(CF.LWM2M_CBOR, values, registry)
    assert parse_send(payload, CF.LWM2M_CBOR, registry) == [TimestampedValues(None, values)]


@pytest.mark.parametrize("payload, content_format, code, problem", [
    (b"Acme", None, "4.15", "expected SenML JSON"),
    (b"\x00", CF.TLV, "4.15", "TLV (11542)"),
    (b"[{", CF.SENML_JSON, "4.00", "Send payload (SENML_JSON (110))"),
    (b"[]", CF.SENML_JSON, "4.00", "carries no value"),
    (b'[{"n":"/3/0","v":1}]', CF.SENML_JSON, "4.00", "Send payload"),
])
def test_parse_send_refusals(registry, payload, content_format, code, problem):
    with pytest.raises(OperationError) as caught:
        parse_send(payload, content_format, registry)
    assert caught.value.code == code and problem in caught.value.reason


def test_result_defaults():
    result = Result(True, "2.04")
    assert (result.node, dict(result.values), result.links, result.diagnostic) == (None, {}, (), "")
