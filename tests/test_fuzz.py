"""Hostile input against every parser that meets the network or a file.

What a user relies on: nothing a device sends and no file an operator loads makes the
server crash, hang or balloon. A malformed CoAP request gets a 4.xx with a short
diagnostic (5.03 only for "server storage unavailable") and the server goes on
answering; a malformed payload, DDF, SUIT envelope, YAML config, key file or .tflite
raises its parser's documented error (DecodeError, DdfError, SuitError, ConfigError,
KeyFileError, ModelError, RegistrationError) and nothing else; no input of fuzzing size
costs more than a second of CPU; a large hostile payload stays under a memory cap.

How: hypothesis, bounded so that this file runs in well under a minute: random bytes,
structure-aware generators, and mutations of valid inputs (the ``spec-*`` files of
``tests/corpus``, the shipped DDFs, the draft's SUIT examples, the fixture models,
randomly generated nodes encoded by each codec). Every file of ``tests/corpus``
(crafted bombs, inputs hypothesis once found) is replayed on each run; see
``tests/corpus/make_corpus.py``. ``TINYMLAAS_FUZZ_EXAMPLES=N`` gives every property N
examples: ``benchmarks/fuzz_long.py`` runs this file that way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import tempfile
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from uuid import UUID

import aiocoap
import cbor2
import pytest
import yaml
from aiocoap import Code, Message, resource
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from conftest import make_registry
from corpus.make_corpus import shared_tables_model
from ipso_objects import (
    DdfError, DecodeError, LwM2MPath, MultiResource, Object, ObjectInstance, Resource, ResourceType,
)
from ipso_objects.codecs import (
    link_format, lwm2m_cbor, oma_json, opaque, senml_cbor, senml_json, text, tlv,
)
from ipso_objects.ddf import load_ddf
from ipso_objects.errors import EncodeError, IpsoError
from lwm2m_server.core import operations
from lwm2m_server.core.bootstrap import BootstrapError, parse_bootstrap_request, parse_discovery
from lwm2m_server.core.capabilities import DeviceProfile, build_profile
from lwm2m_server.compilers.base import ModelError
from lwm2m_server.compilers.tflite_model import parse_model
from lwm2m_server.config import ConfigError, ServerConfig, load_config
from lwm2m_server.core.operations import OperationError
from lwm2m_server.core.responses import Result, decode_response, parse_send, result_from_dict
from lwm2m_server.core.registration import RegistrationBook, RegistrationError, parse_object_list, parse_register, parse_update
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from lwm2m_server.suit import (
    SuitError, build_envelope, load_private_key, load_public_key, parse_envelope, verify_envelope,
)
from simulators.bootstrap import BootstrapInterface
from simulators.objects import DeviceObjects
from simulators.profiles import builtin_profiles
from strategies import addressed_nodes, values_of

TESTS = Path(__file__).parent
CORPUS = TESTS / "corpus"
SHARED = TESTS.parent.parent / "shared"
DEFINITIONS = TESTS.parent / "ipso_objects" / "definitions"
MODELS = TESTS / "fixtures" / "models"
P = LwM2MPath.parse
REGISTRY = make_registry()

CPU_LIMIT_S = 1.0
"""No single input of fuzzing size may cost more CPU than this (a hang, or a blow-up)."""
SCALE = int(os.environ.get("TINYMLAAS_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int) -> settings:
    """Hypothesis settings: ``examples`` (or ``TINYMLAAS_FUZZ_EXAMPLES``), no deadline (CPU
    time is checked per input instead), health checks that only flag slow generation off."""
    return settings(max_examples=SCALE or examples, deadline=None, suppress_health_check=list(HealthCheck))


def bounded(call, *allowed: type[BaseException]):
    """``call()``'s result, or the allowed error it raised (which must carry a reason);
    any other exception propagates; more than :data:`CPU_LIMIT_S` of CPU fails."""
    start = time.thread_time()
    try:
        outcome = call()
    except allowed as error:
        assert str(error), f"{type(error).__name__} without a reason"
        outcome = error
    spent = time.thread_time() - start
    assert spent < CPU_LIMIT_S, f"one input took {spent:.2f} s of CPU"
    return outcome


def corpus_files(parser: str, prefix: str = "") -> list[Path]:
    folder = CORPUS / parser
    return sorted(p for p in folder.glob(f"{prefix}*") if p.is_file()) if folder.is_dir() else []


def seeds(parser: str) -> list[bytes]:
    return [path.read_bytes() for path in corpus_files(parser, "spec-")]


INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80",
               b"\x9f", b"\xbf", b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff", b'"', b"<", b">", b"\\",
               b"&", b";", b",", b"=", b"{", b"[", b"\xd8\x1c", b"\xd8\x1d\x00", b"\xc4\x82"]


@st.composite
def mutated(draw, pool: list[bytes]) -> bytes:
    """A valid input from ``pool`` with one to six byte-level edits (AFL-style)."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(
            ["flip", "set", "insert", "delete", "truncate", "interesting", "repeat", "splice", "word"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[at:]
        elif action == "interesting":
            data[at:at + 1] = draw(st.sampled_from(INTERESTING))
        elif action == "repeat":
            end = draw(st.integers(at, min(len(data), at + 16)))
            data[at:at] = data[at:end] * draw(st.integers(1, 8))
        elif action == "splice":
            other = draw(st.sampled_from(pool))
            start = draw(st.integers(0, len(other)))
            data[at:at] = other[start:start + draw(st.integers(1, 32))]
        else:  # a flatbuffer / TLV length or offset word
            data[at:at + 4] = struct.pack("<i", draw(st.integers(-(2**31), 2**31 - 1)))
    return bytes(data)


# --------------------------------------------------------------------------- codecs

CODECS = {
    "text": text, "opaque": opaque, "tlv": tlv, "senml_json": senml_json,
    "senml_cbor": senml_cbor, "oma_json": oma_json, "lwm2m_cbor": lwm2m_cbor,
}
PATHS = [P("/3"), P("/3/0"), P("/3/0/0"), P("/3/0/6"), P("/3/0/6/1"), P("/32000"), P("/32000/0"),
         P("/32000/0/3"), P("/32000/0/12"), P("/32000/0/15/1"), P("/65000/1/2"), P("/26241/0"), P("/")]


def decode_everything(module, data: bytes) -> None:
    """Every decoder ``module`` has, at every path: values or DecodeError, nothing else."""
    for path in PATHS:
        bounded(lambda: module.decode(data, path, REGISTRY), DecodeError)
    for name in ("decode_composite", "decode_paths", "decode_timestamped"):
        function = getattr(module, name, None)
        if function is None:
            continue
        if name == "decode_composite":
            bounded(lambda: function(data, REGISTRY), DecodeError)
        elif name == "decode_paths":
            bounded(lambda: function(data), DecodeError)
        else:
            for path in (P("/"), P("/3/0")):
                bounded(lambda: function(data, path, REGISTRY), DecodeError)


def decode_links(data: bytes) -> None:
    """Link format as Register/Update payload and as a Discover answer."""
    links = bounded(lambda: link_format.decode(data), DecodeError)
    if isinstance(links, list):
        for link in links:
            for accessor in ("path", "ver", "lwm2m", "ct", "rt", "dim", "ssid", "uri", "notification_attributes"):
                bounded(lambda: getattr(link, accessor), DecodeError)
        bounded(lambda: link_format.lwm2m_root(links), DecodeError)
        bounded(lambda: link_format.encode(links), DecodeError, EncodeError)
    bounded(lambda: parse_object_list(data), RegistrationError)


def codec_pool(name: str) -> list[bytes]:
    own = seeds(name)
    return own or [b"\x00"]


@st.composite
def encoded_nodes(draw, name: str) -> bytes:
    """A random node of the all-types object, encoded by codec ``name`` (then maybe mutated)."""
    node, path = draw(addressed_nodes())
    try:
        data = CODECS[name].encode(node, path, REGISTRY)
    except EncodeError:
        assume(False)
    if draw(st.booleans()):
        data = draw(mutated([data]))
    return data


@pytest.mark.parametrize("name", list(CODECS))
@fuzz(200)
@given(data=st.data())
def test_codecs_decode_or_refuse_mutated_spec_vectors_and_random_nodes(name, data):
    payload = data.draw(st.one_of(
        mutated(codec_pool(name)),
        encoded_nodes(name),
        mutated(sum((seeds(other) for other in CODECS), [b"\x00"])),  # another format's bytes
        st.binary(max_size=300),
    ))
    decode_everything(CODECS[name], payload)


@fuzz(400)
@given(payload=st.one_of(
    mutated(seeds("link_format") or [b"</3/0>"]),
    st.text(alphabet=st.sampled_from('<>/;,="\\ \t\r\n%*0123456789abclrtoma.-:?#[]@!$&\'()+é\x00\x7f'),
            max_size=200).map(str.encode),
    st.binary(max_size=200),
))
def test_link_format_decodes_or_refuses(payload):
    decode_links(payload)


# --------------------------------------------------------------------------- registration (sans-I/O)

QUERY_NAMES = st.sampled_from(["ep", "lt", "lwm2m", "b", "Q", "sms", "x", "", "EP", "lt ", "ep\x00"]) | st.text(max_size=6)
QUERY_VALUES = st.sampled_from(
    ["dev", "1", "0", "60", "86400", "4294967295", "4294967296", "-1", "1e3", "٣", "1.0", "1.1", "1.2",
     "2.0", "U", "UQ", "T", "SN", "Q", "UU", "+123", "x" * 250, ""]) | st.text(max_size=20)
QUERY_ITEMS = st.builds(lambda name, sep, value: name + sep + value, QUERY_NAMES, st.sampled_from(["=", "", "=="]),
                        QUERY_VALUES) | st.text(max_size=30)
QUERIES = st.lists(QUERY_ITEMS.filter(lambda item: len(item.encode()) <= 255), max_size=8)
CONTENT_FORMATS = st.none() | st.sampled_from([0, 40, 42, 60, 110, 112, 11542, 11543, 11544, 65535]) | st.integers(0, 65535)


@fuzz(500)
@given(query=QUERIES, payload=st.one_of(mutated(seeds("link_format") or [b"</3/0>"]), st.binary(max_size=100)),
       content_format=CONTENT_FORMATS)
def test_register_and_update_parse_or_refuse_with_a_coap_code(query, payload, content_format):
    for parse in (parse_register, parse_update):
        outcome = bounded(lambda: parse(query, payload, content_format), RegistrationError)
        if isinstance(outcome, RegistrationError):
            assert outcome.code.startswith("4.") and outcome.reason


# --------------------------------------------------------------------------- Send and device responses

SEND_POOL = seeds("senml_json") + seeds("senml_cbor") + seeds("lwm2m_cbor") or [b"[]"]


@fuzz(300)
@given(query=QUERIES)
def test_bootstrap_requests_parse_or_refuse_with_4xx(query):
    outcome = bounded(lambda: parse_bootstrap_request(query), BootstrapError)
    if isinstance(outcome, BootstrapError):
        assert outcome.code == "4.00"
    else:
        assert outcome.endpoint and all(item.isprintable() for item in outcome.endpoint)


@fuzz(300)
@given(payload=st.one_of(mutated(seeds("link_format") or [b"</>;lwm2m=1.1,</0/0>"]), st.binary(max_size=200)))
def test_bootstrap_discover_answers_parse_or_refuse(payload):
    bounded(lambda: parse_discovery(payload), BootstrapError)


BOOTSTRAP_WRITES = st.one_of(mutated(seeds("tlv") or [b"\xc1\x00\x01"]), mutated(seeds("senml_cbor") or [b"\x80"]),
                             st.binary(max_size=200))


@fuzz(300)
@given(method=st.sampled_from(["PUT", "POST", "DELETE", "GET", "FETCH"]),
       path=st.sampled_from([(), ("0",), ("0", "1"), ("1", "0"), ("26241", "0", "21"), ("bs",), ("3", "0", "0"),
                             ("0", "65535"), ("99999",)]) | st.lists(st.text(max_size=6), max_size=4).map(tuple),
       content_format=CONTENT_FORMATS, payload=BOOTSTRAP_WRITES)
def test_a_device_answers_every_bootstrap_interface_request(method, path, content_format, payload):
    objects = DeviceObjects(REGISTRY, builtin_profiles()["cortex-m4f"], endpoint="fuzz-bs", seed=1, now=1.7e9)
    interface = BootstrapInterface(objects, "coap://127.0.0.1:5683")
    interface.begin()
    response = bounded(lambda: interface.handle(method, path, (), content_format, None, payload))
    assert response.code[:2] in ("2.", "4."), response
    assert interface.account() is None or interface.account().uri  # the tree still reads back


@fuzz(300)
@given(payload=st.one_of(mutated(SEND_POOL), st.binary(max_size=200)), content_format=CONTENT_FORMATS)
def test_send_payloads_parse_or_refuse_with_4xx(payload, content_format):
    outcome = bounded(lambda: parse_send(payload, content_format, REGISTRY), OperationError)
    if isinstance(outcome, OperationError):
        assert outcome.code in ("4.00", "4.15")
    else:
        assert any(entry.values for entry in outcome)


def _registration():
    book = RegistrationBook()
    params = parse_register(("ep=fuzz", "lwm2m=1.2"), b"</1/0>,</3/0>,</5/0>,</9/0>,</26241/0>,</32000/0>")
    return book.register(params, "192.0.2.1:5683", 0.0)[0]


REGISTRATION = _registration()
DEVICE_REQUESTS = [
    operations.read(REGISTRATION, P("/3/0"), registry=REGISTRY),
    operations.read(REGISTRATION, P("/26241/0"), registry=REGISTRY),
    operations.read(REGISTRATION, P("/9"), registry=REGISTRY),
    operations.read(REGISTRATION, P("/5/0/8"), registry=REGISTRY),
    operations.read(REGISTRATION, P("/32000/0/12"), registry=REGISTRY),
    operations.discover(REGISTRATION, P("/3/0"), registry=REGISTRY),
    operations.read_composite(REGISTRATION, [P("/3/0/0"), P("/1/0/1")], registry=REGISTRY),
    operations.create(REGISTRATION, P("/32000"), ObjectInstance(1, {}), registry=REGISTRY),
]
RESPONSE_POOL = SEND_POOL + seeds("tlv") + seeds("oma_json") + seeds("text") + seeds("link_format")


@fuzz(300)
@given(request=st.sampled_from(DEVICE_REQUESTS), code=st.sampled_from(["2.05", "2.04", "2.01", "4.04", "5.00"]),
       content_format=CONTENT_FORMATS, payload=st.one_of(mutated(RESPONSE_POOL), st.binary(max_size=200)),
       location=st.lists(st.sampled_from(["32000", "1", "99999999", "x", ""]), max_size=3))
def test_device_responses_decode_or_give_a_failed_result_and_a_usable_profile(request, code, content_format,
                                                                              payload, location):
    result = bounded(lambda: decode_response(request, code, content_format, payload, REGISTRY,
                                                        location_path=location))
    assert isinstance(result, Result) and (result.ok or result.diagnostic)
    again = bounded(lambda: result_from_dict(request, result.to_dict(), REGISTRY))
    assert again.ok == result.ok
    if result.ok and result.node is not None:  # what capability discovery does with a device's answer
        profile = bounded(lambda: build_profile("fuzz", {request.paths[0]: result.node}, 0.0))
        bounded(lambda: profile.device_class)
        assert DeviceProfile.from_dict(json.loads(json.dumps(profile.to_dict()))).endpoint == "fuzz"


# --------------------------------------------------------------------------- DDF XML

DDF_POOL = [path.read_bytes() for path in sorted(DEFINITIONS.glob("*.xml"))] + seeds("ddf")
if (SHARED / "lwm2m-registry").is_dir():
    DDF_POOL += [(SHARED / "lwm2m-registry" / f"{n}.xml").read_bytes() for n in (0, 3, 5, 3303, 10241)
                 if (SHARED / "lwm2m-registry" / f"{n}.xml").is_file()]
DDF_TAGS = ["LWM2M", "Object", "ObjectID", "Name", "ObjectURN", "ObjectVersion", "LWM2MVersion",
            "MultipleInstances", "Mandatory", "Resources", "Item", "Operations", "Type", "Description",
            "RangeEnumeration", "Units", "x"]
DDF_TEXT = st.sampled_from(["0", "3", "65535", "65536", "-1", "Single", "Multiple", "Mandatory", "Optional",
                            "R", "RW", "E", "", "Integer", "Float", "String", "Objlnk", "Time", "1.1",
                            "&amp;", "&lt;", "]]>", "\u0663"]) | st.text(max_size=8)


def xml_elements(depth: int = 0) -> st.SearchStrategy[str]:
    tag = st.sampled_from(DDF_TAGS)
    leaf = st.builds(lambda t, body, attr: f"<{t}{attr}>{body}</{t}>", tag,
                     DDF_TEXT.map(lambda s: s.replace("<", "&lt;").replace("&", "&amp;") if "&" not in s[:1] else s),
                     st.sampled_from(["", ' ID="0"', ' ID="70000"', ' ID=""', ' ID="x"']))
    if depth >= 3:
        return leaf
    return leaf | st.builds(lambda t, children: f"<{t}>{''.join(children)}</{t}>", tag,
                            st.lists(xml_elements(depth + 1), max_size=5))


@fuzz(300)
@given(data=st.one_of(mutated(DDF_POOL),
                      st.builds(lambda body: f"<LWM2M>{body}</LWM2M>".encode(), xml_elements()),
                      st.binary(max_size=200)))
def test_ddf_xml_loads_or_raises_only_ddf_error(data):
    bounded(lambda: load_ddf(data, source="fuzz.xml"), DdfError)


# --------------------------------------------------------------------------- SUIT envelopes

VENDOR_ID = UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")  # UUID5(DNS, "arm.com"), as in the draft's examples
CLASS_ID = UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OWN_KEY = ec.generate_private_key(ec.SECP256R1())
OWN = [
    build_envelope(b"TFL3" + bytes(range(200)), sequence_number=7, vendor_id=VENDOR_ID, class_id=CLASS_ID,
                   metadata=None, signing_key=OWN_KEY),
    build_envelope("coap://[::1]/fw/x", digest=b"\x01" * 32, size=1000, sequence_number=8, vendor_id=VENDOR_ID,
                   class_id=CLASS_ID, metadata=None, signing_key=OWN_KEY),
]
TRUST = [OWN_KEY.public_key()] + [load_public_key(pem.read_bytes()) for pem in corpus_files("pem", "spec-")]
EXAMPLE_KEY = SHARED / "suit-examples" / "signing_key_es256.pem"
if EXAMPLE_KEY.is_file():
    TRUST.append(load_public_key(EXAMPLE_KEY))
SUIT_POOL = OWN + seeds("suit")


def check_envelope(data: bytes) -> None:
    bounded(lambda: parse_envelope(data), SuitError)
    for minimum in (None, 3):
        bounded(lambda: verify_envelope(data, trust_anchors=TRUST, expected_vendor_id=VENDOR_ID,
                                        expected_class_id=CLASS_ID, min_sequence_number=minimum,
                                        payload=b"TFL3"), SuitError)


@fuzz(300)
@given(data=st.one_of(mutated(SUIT_POOL), st.binary(max_size=300)))
def test_suit_envelopes_verify_or_raise_only_suit_error(data):
    check_envelope(data)


def test_the_envelopes_mutated_are_valid_to_start_with():
    valid = OWN + [path.read_bytes() for path in corpus_files("suit", "spec-")
                   if "draft" not in path.name or EXAMPLE_KEY.is_file()]
    for data in valid:
        module = verify_envelope(data, trust_anchors=TRUST, expected_vendor_id=VENDOR_ID,
                                 expected_class_id=CLASS_ID, min_sequence_number=None)
        assert module.sequence_number >= 0


PEM_POOL = seeds("pem") + [path.read_bytes() for path in corpus_files("pem", "crafted-p384")]


@fuzz(200)
@given(data=st.one_of(mutated(PEM_POOL or [b"-----BEGIN PUBLIC KEY-----\n"]), st.binary(max_size=200)))
def test_key_files_load_or_raise_only_suit_error(data):
    bounded(lambda: load_public_key(data), SuitError)
    bounded(lambda: load_private_key(data), SuitError)


# --------------------------------------------------------------------------- YAML config

CONFIG_KEYS = ["coap", "registration", "queue", "store", "objects", "api", "logging", "deployment", "host",
               "port", "max_in_flight", "block_size", "rate_limit_per_peer", "rate_limit_burst", "min_lifetime_s",
               "grace_s", "kind", "path", "ddf_folders", "token", "token_file", "level", "format", "rollouts",
               "id", "model", "selector", "strategy", "file", "name", "version", "x"]
YAML_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
    st.sampled_from(["::", "127.0.0.1", "0.0.0.0", "localhost", "sqlite", "debug", "json", "data", "/", ".",
                     "a" * 16, "tflite-micro-*"]),
)
YAML_DOCUMENTS = st.recursive(
    YAML_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(CONFIG_KEYS) | YAML_LEAVES.filter(
        lambda v: isinstance(v, (str, int, bool)) or v is None), inner, max_size=5),
    max_leaves=20,
)
CONFIG_POOL = seeds("config") or [b"coap: {}\n"]


@pytest.fixture(scope="module")
def config_dir():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def check_config(folder: Path, data: bytes) -> None:
    path = folder / "server.yaml"
    path.write_bytes(data)
    outcome = bounded(lambda: load_config(path), ConfigError)
    if isinstance(outcome, ConfigError):
        message = str(outcome)
        assert "\n" not in message and message.encode("utf-8")
    else:
        assert isinstance(outcome, ServerConfig)


@fuzz(300)
@given(data=st.one_of(
    mutated(CONFIG_POOL),
    YAML_DOCUMENTS.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")),
    st.dictionaries(st.sampled_from(CONFIG_KEYS[:8]), YAML_DOCUMENTS, max_size=3).map(
        lambda doc: yaml.safe_dump(doc).encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
))
def test_yaml_config_loads_or_raises_only_one_line_config_error(config_dir, data):
    check_config(config_dir, data)


# --------------------------------------------------------------------------- .tflite

TFLITE_POOL = [path.read_bytes() for path in sorted(MODELS.glob("*.tflite"))]


def check_model(data: bytes) -> None:
    info = bounded(lambda: parse_model(data), ModelError)
    if not isinstance(info, ModelError):  # what the compiler plugins read next
        bounded(lambda: (info.inputs, info.outputs, info.constant_bytes, info.activation_bytes,
                         info.io_bytes, info.is_float, info.aligned(), [t.spec for t in info.inputs]))


@fuzz(300)
@given(data=st.one_of(mutated(TFLITE_POOL), st.binary(max_size=300).map(lambda b: b"\x10\x00\x00\x00TFL3" + b)))
def test_tflite_parses_or_raises_only_model_error(data):
    check_model(data)


# --------------------------------------------------------------------------- large hostile payloads

def peak_of(call, *allowed) -> tuple[int, float]:
    """Peak traced memory of one call, and the CPU seconds of another run of it without
    tracing (tracemalloc slows allocation about fivefold, and unevenly across machines)."""
    def run() -> None:
        try:
            call()
        except allowed:
            pass

    tracemalloc.start()
    try:
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    start = time.thread_time()
    run()
    return peak, time.thread_time() - start


def _large_yaml(folder: Path):
    path = folder / "server.yaml"
    path.write_bytes(b"coap:\n" + b"- a\n" * 16_000)  # 64 KB: PyYAML takes ~150 bytes per byte
    return lambda: load_config(path)


def _oversized_yaml(folder: Path):
    path = folder / "huge.yaml"
    path.write_bytes(b"# " + b"x" * 10_000_000 + b"\n")
    return lambda: load_config(path)


LARGE = {  # name: (make the call, given a scratch folder; errors allowed; memory cap in MB)
    "100k-link registration (1.4 MB)": (lambda _: lambda: parse_register(("ep=big",), ",".join(
        f"</{3300 + i // 60000}/{i % 60000}>" for i in range(100_000)).encode()), (RegistrationError,), 128),
    "1 MB CBOR nesting (SenML Send)": (
        lambda _: lambda: parse_send(b"\x81" * 1_000_000 + b"\x00", 112, REGISTRY), (OperationError,), 16),
    "1 MB CBOR map nesting (LwM2M CBOR Send)": (
        lambda _: lambda: parse_send(b"\xa1\x03" * 500_000 + b"\x00", 11544, REGISTRY), (OperationError,), 16),
    "1 MB JSON nesting (SenML Send)": (lambda _: lambda: parse_send(b"[" * 1_000_000, 110, REGISTRY), (OperationError,), 16),
    "1 MB CBOR nesting (SUIT)": (lambda _: lambda: parse_envelope(b"\xd8\x6b" + b"\x81" * 1_000_000), (SuitError,), 16),
    "64k TLV resources": (lambda _: lambda: tlv.decode(
        b"".join(bytes((0xE1, i >> 8, i & 255, 1)) for i in range(65536)), P("/65000/0"), REGISTRY), (DecodeError,), 128),
    "one link with 100k params (400 KB)": (lambda _: lambda: link_format.decode(b"</3/0>" + b";a=1" * 100_000),
                                           (DecodeError,), 128),
    "64 KB YAML list": (_large_yaml, (ConfigError,), 32),
    "10 MB YAML file": (_oversized_yaml, (ConfigError,), 2),
    "4 MB DDF": (lambda _: lambda: load_ddf(
        b"<LWM2M><Object><Resources>" + b"<Item ID='1'><x/></Item>" * 170_000 + b"</Resources></Object></LWM2M>"),
        (DdfError,), 256),
    "1 MB .tflite of shared tables": (lambda _: lambda: parse_model(shared_tables_model(60_000, 60_000)), (ModelError,), 64),
}


@pytest.mark.parametrize("name", list(LARGE))
def test_large_hostile_payloads_stay_under_a_memory_cap(name, tmp_path):
    make, allowed, cap_mb = LARGE[name]
    peak, spent = peak_of(make(tmp_path), *allowed)
    assert peak < cap_mb * 1024 * 1024, f"{name}: {peak / 1e6:.1f} MB"
    # linear work at most: a blow-up would take minutes
    assert spent < 5 * CPU_LIMIT_S, f"{name}: {spent:.2f} s of CPU"


# --------------------------------------------------------------------------- the real server over loopback


class Loopback:
    """The real server and a raw aiocoap peer on an event loop in a thread (hypothesis
    examples are synchronous). Records every error logged and every loop exception."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.loop_errors: list[dict] = []
        self.log_records: list[logging.LogRecord] = []
        self.loop.set_exception_handler(lambda loop, context: self.loop_errors.append(context))

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        base = ServerConfig()
        config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=2,
                                            rate_limit_per_peer=0))
        self.store = await SqliteStore.open(self.folder / "state.sqlite3")
        self.server = LwM2MServer(config, REGISTRY, self.store)
        await self.server.start()
        self.device = _Device()
        self.client = await aiocoap.Context.create_server_context(
            self.device, bind=("127.0.0.1", 0), transports=["udp6"])
        self.stranger = await aiocoap.Context.create_server_context(
            resource.Site(), bind=("127.0.0.1", 0), transports=["udp6"])
        response = await self.request("POST", ("rd",), ("ep=fuzz-base", "lt=86400", "lwm2m=1.1"), 40,
                                      b"</1/0>,</3/0>,</3303/0>")
        assert response.code == Code.CREATED
        self.base_id = response.opt.location_path[-1]
        await self.settle()
        self.baseline_tasks = len(asyncio.all_tasks(self.loop))

    async def request(self, method: str, path, query, content_format, payload: bytes, peer=None) -> Message:
        message = Message(code=getattr(Code, method), payload=payload)
        message.set_request_uri(f"coap://127.0.0.1:{self.server.port}/")
        message.opt.uri_path = tuple(path)
        message.opt.uri_query = tuple(query)
        if content_format is not None:
            message.opt.content_format = content_format
        async with asyncio.timeout(20):
            return await (peer or self.client).request(message).response

    async def settle(self, timeout: float = 10) -> None:
        """Wait for the server's own tasks (capability discovery) to finish."""
        deadline = self.loop.time() + timeout
        while self.server._tasks and self.loop.time() < deadline:
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        async def _stop():
            await self.client.shutdown()
            await self.stranger.shutdown()
            await self.server.stop()
            await self.store.close()
        self.run(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Device(resource.Resource):
    """The fuzzing peer as a device: answers the server's reads (capability discovery)
    with what a test sets in ``answers`` (by path), 4.04 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[tuple[str, ...], tuple[Code, int | None, bytes]] = {}

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return True

    async def render(self, request: Message) -> Message:
        code, content_format, payload = self.answers.get(tuple(request.opt.uri_path), (Code.NOT_FOUND, None, b""))
        answer = Message(code=code, payload=payload)
        if content_format is not None:
            answer.opt.content_format = content_format
        return answer


class _Errors(logging.Handler):
    def __init__(self, records: list) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def loopback():
    with tempfile.TemporaryDirectory() as folder, capture_logs() as logs:
        server = Loopback(Path(folder))
        handler = _Errors(server.log_records)
        logging.getLogger().addHandler(handler)
        server.logs = logs
        server.start()
        try:
            yield server
        finally:
            logging.getLogger().removeHandler(handler)
            server.stop()


def check_answer(response: Message) -> None:
    """A 2.xx, or a 4.xx with a short diagnostic; 5.03 only when storage is down."""
    code = response.code
    assert code.is_response(), code
    if code.class_ == 5:
        assert response.payload == b"server storage unavailable", (code, response.payload)
    else:
        assert code.class_ in (2, 4), code
    if code.class_ == 4:
        assert len(response.payload) <= 1024, f"{code}: {len(response.payload)} B diagnostic"
        response.payload.decode("utf-8")


def check_healthy(loopback: Loopback) -> None:
    response = loopback.run(loopback.request("POST", ("rd",), ("ep=fuzz-canary", "lt=600"), None, b"</3/0>"))
    assert response.code == Code.CREATED, "the server stopped answering a good Register"
    failures = [entry for entry in loopback.logs if entry.get("log_level") in ("error", "critical", "exception")
                and entry.get("event") != "store_failed"]
    assert not failures, failures[:3]
    assert not loopback.loop_errors, loopback.loop_errors[:3]
    assert not [r for r in loopback.log_records if r.name.startswith(("coap", "aiocoap"))], loopback.log_records[:3]


SEGMENTS = st.sampled_from(["rd", "dp", "..", ".", "", "fw", "%00", "rd?", "bs", "<id>"]) | st.text(max_size=10)
PATHS_ON_WIRE = st.one_of(
    st.just(("rd",)), st.just(("dp",)), st.just(("bs",)), st.just(("rd", "<id>")),
    st.tuples(st.just("rd"), SEGMENTS), st.lists(SEGMENTS, max_size=4).map(tuple),
)
METHODS = st.sampled_from(["POST"] * 6 + ["PUT", "GET", "DELETE", "FETCH", "PATCH", "iPATCH"])
WIRE_PAYLOADS = st.one_of(
    mutated(seeds("link_format") or [b"</3/0>"]),
    mutated(SEND_POOL),
    st.text(alphabet=st.sampled_from('<>/;,="\\ 0123456789abcrtoma.'), max_size=200).map(str.encode),
    st.binary(max_size=200),
    st.integers(1100, 4000).map(lambda n: b"</3303/0>," * (n // 10)),  # Block1 on the way in
)


@fuzz(300)
@given(method=METHODS, path=PATHS_ON_WIRE, query=QUERIES, content_format=CONTENT_FORMATS, payload=WIRE_PAYLOADS)
def test_coap_requests_to_rd_bs_and_dp_get_2xx_or_4xx_and_the_server_keeps_serving(
        loopback, method, path, query, content_format, payload):
    path = tuple(loopback.base_id if segment == "<id>" else segment for segment in path)
    if method == "DELETE" and path == ("rd", loopback.base_id):
        method = "POST"  # keep the device that Sends registered
    response = loopback.run(loopback.request(method, path, query, content_format, payload))
    check_answer(response)
    check_healthy(loopback)


DISCOVERED = {("3", "0"): 3, ("5", "0", "8"): 5, ("5", "0", "9"): 5, ("9",): 9, ("26241", "0"): 26241}


@st.composite
def instances_of(draw, object_id: int) -> ObjectInstance:
    """An instance of ``object_id`` with random values of the types its DDF gives."""
    definition = REGISTRY.get(object_id)
    resources = {}
    for rid, rdef in definition.resources.items():
        if rdef.type is ResourceType.NONE or not draw(st.booleans()):
            continue
        values = values_of(rdef.type, finite=draw(st.booleans()))
        if rdef.multiple:
            resources[rid] = MultiResource(rid, draw(st.dictionaries(st.integers(0, 3), values, max_size=3)))
        else:
            resources[rid] = Resource(rid, draw(values))
    return ObjectInstance(0, resources)


@st.composite
def device_answers(draw, path: tuple[str, ...]):
    """What a hostile or broken device answers to one discovery read."""
    lwm2m_path = LwM2MPath.of(*map(int, path))
    instance = draw(instances_of(DISCOVERED[path]))
    content_format = draw(st.sampled_from([11542, 110, 112, 11543, 11544, 0, None]) | CONTENT_FORMATS)
    payload = b""
    if content_format in CODECS_BY_FORMAT:
        node = instance
        if len(lwm2m_path) == 1:
            node = Object(lwm2m_path.ids[0], {0: instance})
        elif len(lwm2m_path) == 3:
            node = instance.resources.get(lwm2m_path.ids[2]) or Resource(lwm2m_path.ids[2], 0)
        try:
            payload = CODECS_BY_FORMAT[content_format].encode(node, lwm2m_path, REGISTRY)
        except IpsoError:
            payload = b""
    if not payload or draw(st.booleans()):
        payload = draw(st.one_of(mutated([payload or b"\x00"] + RESPONSE_POOL), st.binary(max_size=100)))
    code = draw(st.sampled_from([Code.CONTENT] * 4 + [Code.CHANGED, Code.NOT_FOUND, Code.BAD_REQUEST,
                                                       Code.INTERNAL_SERVER_ERROR]))
    return code, content_format, payload


CODECS_BY_FORMAT = {0: text, 42: opaque, 11542: tlv, 110: senml_json, 112: senml_cbor, 11543: oma_json,
                    11544: lwm2m_cbor}


@fuzz(120)
@given(answers=st.fixed_dictionaries({path: device_answers(path) for path in DISCOVERED}),
       lwm2m=st.sampled_from(["1.0", "1.1", "1.2"]))
def test_hostile_answers_to_capability_discovery_leave_a_profile_and_a_healthy_server(loopback, answers, lwm2m):
    loopback.device.answers = answers
    try:
        response = loopback.run(loopback.request(
            "POST", ("rd",), ("ep=fuzz-hostile", f"lwm2m={lwm2m}"), 40, b"</1/0>,</3/0>,</5/0>,</9/0>,</26241/0>"))
        assert response.code == Code.CREATED
        loopback.run(loopback.settle())
    finally:
        loopback.device.answers = {}
    profile = loopback.server.profile("fuzz-hostile")
    assert profile is not None and profile.endpoint == "fuzz-hostile"
    event(f"TinyML object decoded: {profile.tinyml is not None}; reads refused: {len(profile.problems)}")
    event(f"device class: {profile.device_class is not None}")
    check_healthy(loopback)


@fuzz(100)
@given(datagram=st.one_of(
    st.binary(max_size=64),
    st.builds(lambda mid, token, rest: bytes([0x40 | len(token), 0x02]) + mid + token + rest,
              st.binary(min_size=2, max_size=2), st.binary(max_size=8), st.binary(max_size=80)),
))
def test_raw_datagrams_do_not_disturb_the_server(loopback, datagram):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, ("127.0.0.1", loopback.server.port))
    response = loopback.run(loopback.request("POST", ("rd",), ("ep=fuzz-canary", "lt=600"), None, b"</3/0>"))
    assert response.code == Code.CREATED
    # Known upstream (aiocoap issues #176, #417): a string option (Uri-Path, Uri-Query, ...)
    # that is not UTF-8 raises UnicodeDecodeError in aiocoap's receive callback instead of
    # "unparsable message"; asyncio logs it and drops the datagram, the server goes on.
    loopback.loop_errors[:] = [error for error in loopback.loop_errors
                               if not (isinstance(error.get("exception"), UnicodeDecodeError)
                                       and "aiocoap" in repr(error.get("handle")))]
    check_healthy(loopback)


def test_no_task_is_left_behind(loopback):
    loopback.run(loopback.settle())
    tasks = loopback.run(_task_count(loopback))
    assert tasks <= loopback.baseline_tasks + 2, f"{tasks} tasks, {loopback.baseline_tasks} after start"


async def _task_count(loopback: Loopback) -> int:
    await asyncio.sleep(0.05)
    return len(asyncio.all_tasks(loopback.loop)) - 1  # not this one


# --------------------------------------------------------------------------- corpus replay


def replay_coap(loopback: Loopback, data: bytes) -> None:
    """A request from the corpus: from the registered peer, or (``"registered": false``) from
    a peer without registration, whose Send must be refused."""
    spec = json.loads(data)
    registered = spec.get("registered", True)
    response = loopback.run(loopback.request(
        spec["method"], tuple(spec["path"]), tuple(spec["query"]), spec["content_format"],
        bytes.fromhex(spec["payload_hex"]), peer=None if registered else loopback.stranger))
    check_answer(response)
    if not registered and spec["path"] == ["dp"] and spec["method"] in ("POST", "iPATCH"):
        assert response.code == Code.FORBIDDEN, response
    check_healthy(loopback)


REPLAY = {
    "link_format": decode_links,
    "ddf": lambda data: bounded(lambda: load_ddf(data, source="corpus.xml"), DdfError),
    "suit": check_envelope,
    "tflite": check_model,
    "pem": lambda data: (bounded(lambda: load_public_key(data), SuitError),
                         bounded(lambda: load_private_key(data), SuitError)),
    "text": lambda data: decode_everything(text, data),
    **{name: (lambda module: lambda data: (decode_everything(module, data),
                                          bounded(lambda: parse_send(data, 110, REGISTRY), OperationError),
                                          bounded(lambda: parse_send(data, 112, REGISTRY), OperationError),
                                          bounded(lambda: parse_send(data, 11544, REGISTRY), OperationError)))(CODECS[name])
       for name in ("tlv", "senml_json", "senml_cbor", "oma_json", "lwm2m_cbor")},
}
PARSERS = sorted(p.name for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
CORPUS_FILES = [path for parser in PARSERS for path in corpus_files(parser)]


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_replays(path, request):
    data = path.read_bytes()
    parser = path.parent.name
    if parser == "coap":
        replay_coap(request.getfixturevalue("loopback"), data)
    elif parser == "config":
        with tempfile.TemporaryDirectory() as folder:
            check_config(Path(folder), data)
    else:
        REPLAY[parser](data)


def test_corpus_covers_every_parser():
    assert set(PARSERS) >= {
        "coap", "link_format", "tlv", "senml_json", "senml_cbor", "oma_json", "lwm2m_cbor", "text",
        "ddf", "suit", "config", "tflite", "pem"}
    assert all(path.stat().st_size <= 16 * 1024 for path in CORPUS_FILES), "corpus files stay small"


# --------------------------------------------------------------------------- what fuzzing found (fixed)


def test_a_key_on_a_curve_openssl_does_not_know_is_a_key_file_error():
    data = (CORPUS / "pem" / "found-unknown-curve-oid.pem").read_bytes()  # a P-384 key, one OID bit flipped
    with pytest.raises(SuitError, match="unsupported public key"):
        load_public_key(data)


def test_a_ddf_with_an_unknown_encoding_is_a_ddf_error():
    with pytest.raises(DdfError, match="encoding"):
        load_ddf((CORPUS / "ddf" / "found-unknown-encoding.xml").read_bytes())


def test_a_utf16_ddf_cannot_hide_a_dtd_from_the_guard():
    """The DTD check reads bytes: in UTF-16 ``<!DOCTYPE`` slipped past it to expat."""
    with pytest.raises(DdfError, match="not UTF-8"):
        load_ddf((CORPUS / "ddf" / "crafted-billion-laughs-utf16.xml").read_bytes())


def test_a_senml_cbor_regex_tag_is_not_compiled():
    """cbor2 compiles tag 35 (a regular expression): 2.9 s of CPU for a 60 KB Send."""
    payload = b"\x81\xa1\x02" + cbor2.dumps(cbor2.CBORTag(35, "(a)" * 20_000))
    start = time.thread_time()
    with pytest.raises(OperationError, match="must be a number"):
        parse_send(payload, 112, REGISTRY)
    assert time.thread_time() - start < 0.1


def test_a_bignum_too_long_to_print_is_refused_by_its_size():
    """Python refuses to turn an int of over 4,300 digits into text: the error message did."""
    with pytest.raises(OperationError, match=r"a 32768-bit integer"):
        parse_send(cbor2.dumps([{0: "/3/0/9", 2: 2**32767}]), 112, REGISTRY)
    with pytest.raises(DecodeError, match="-bit integer"):
        senml_cbor.decode_timestamped(cbor2.dumps([{0: "/3/0/13", 2: 2**20000}]), P("/"), REGISTRY)


def test_a_tflite_of_shared_tables_is_refused_in_linear_time():
    """600 subgraph entries pointing at one subgraph of 600 tensor entries pointing at one
    tensor: 5 KB that took 8.6 s (and a million objects) to walk."""
    for model in TFLITE_POOL:  # real models stay far inside the budget (and the schema is loaded)
        assert parse_model(model).main.outputs
    data = (CORPUS / "tflite" / "crafted-shared-subgraphs-and-tensors.tflite").read_bytes()
    assert len(data) < 8192
    start = time.thread_time()
    with pytest.raises(ModelError, match="shared offsets"):
        parse_model(data)
    assert time.thread_time() - start < 0.1


@pytest.mark.parametrize(("name", "message"), [
    ("crafted-deep-list.yaml", "nested deeper than 64 levels"),
    ("crafted-huge-int.yaml", "Exceeds the limit"),
    ("crafted-surrogate-path.yaml", "store.path: is not a file name"),
    ("crafted-newline-key.yaml", r"coap.a\nb: unknown key"),
    ("crafted-surrogate-key.yaml", r"\ud800: unknown section"),
])
def test_hostile_yaml_gives_a_one_line_config_error(tmp_path, name, message):
    path = tmp_path / "server.yaml"
    path.write_bytes((CORPUS / "config" / name).read_bytes())
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert message in text and "\n" not in text
    text.encode("utf-8")


def test_an_oversized_config_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_bytes(b"# padding\n" * 30_000)
    with pytest.raises(ConfigError, match="larger than 256 KiB"):
        load_config(path)
