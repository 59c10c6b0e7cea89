"""Write the crafted inputs of the fuzz corpus (``tests/corpus/<parser>/``).

Run from the repository root (rewrites the ``crafted-*`` and ``spec-*`` files; files
named otherwise, such as ``found-*`` inputs that hypothesis turned up, are kept)::

    .venv/bin/python tests/corpus/make_corpus.py

``tests/test_fuzz.py`` replays every file of the corpus on each run and uses the
``spec-*`` (valid) ones as seeds to mutate. Inputs are small (a few KB at most);
the large hostile payloads (a 100k-link registration, megabyte nesting) are built
in the test itself. SUIT entries derived from the draft's examples need
``../shared/suit-examples``; without it they are left as they are. The corpus's own
SUIT envelopes are signed with a fixed Ed25519 key (deterministic signatures), so
a rerun writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from uuid import UUID

import cbor2

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))

CORPUS_KEY_SEED = hashlib.sha256(b"tinymlaas fuzz corpus signing key").digest()
"""Seed of the Ed25519 key that signs the corpus's own envelopes (test data, not a secret)."""
VENDOR = UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")  # UUID5(DNS, "arm.com"), as the draft's examples
CLASS = UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")


def cbor_nest(depth: int, opener: bytes = b"\x81", leaf: bytes = b"\x00") -> bytes:
    return opener * depth + leaf


def link_format() -> dict[str, bytes]:
    return {
        "spec-register.txt": b'</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>;ver=1.1,</3303/0>,</26241/0>',
        "spec-alternate-root.txt": b'</lwm2m>;rt="oma.lwm2m";ct="60 110 112 11542",</lwm2m/1/0>,</lwm2m/3/0>',
        "spec-rfc6690-anchor.txt": (
            b'</sensors>;ct=40;title="Sensor Index",</sensors/temp>;rt="temperature-c";if="sensor",'
            b'</sensors/light>;rt="light-lux";if="sensor",<http://www.example.com/sensors/t123>;'
            b'anchor="/sensors/temp";rel="describedby",</t>;anchor="/sensors/temp";rel="alternate"'
        ),
        "spec-discover.txt": b'</3/0>;pmin=10;pmax=60,</3/0/1>,</3/0/7>;dim=8;gt=50.5;lt=42.2;st=0.5,</3/0/8>;dim=3',
        "crafted-unterminated-quote.txt": b'</>;rt="oma.lwm2m;ct=110,</1/0>',
        "crafted-unterminated-target.txt": b"</3/0",
        "crafted-backslash-at-end.txt": b'</>;rt="a\\',
        "crafted-nul-in-quote.txt": b'</>;rt="oma\x00lwm2m"',
        "crafted-control-in-target.txt": b"</3\x01/0>",
        "crafted-many-params.txt": b"</3/0>" + b";a" * 1500,
        "crafted-many-links.txt": b",".join(b"</3303/%d>" % i for i in range(400)),
        "crafted-huge-ct.txt": b'</>;rt="oma.lwm2m";ct=' + b"9" * 5000,
        "crafted-huge-id.txt": b"</3/99999999999999999999999999999999>",
        "crafted-id-65536.txt": b"</65536/0>",
        "crafted-deep-path.txt": b"<" + b"/1" * 1000 + b">",
        "crafted-duplicate-links.txt": b"</3/0>,</3/0>",
        "crafted-two-roots.txt": b'</a>;rt="oma.lwm2m",</b>;rt="oma.lwm2m",</a/3/0>',
        "crafted-root-in-root.txt": b'</lwm2m>;rt="oma.lwm2m",</lwm2m>,</lwm2m/3/0/1/2>',
        "crafted-bad-percent.txt": b"</%zz/0>,</%33/0>",
        "crafted-ver-garbage.txt": b"</3/0>;ver=1.1.1.1;ver=x",
        "crafted-dim-overflow.txt": b"</3/0/7>;dim=99999999999999999999",
        "crafted-attr-nan.txt": b"</3/0/7>;gt=nan;lt=inf;st=-0;pmin=-1;pmax=1e400",
        "crafted-only-commas.txt": b",,,,,,",
        "crafted-invalid-utf8.txt": b"</3/0>;title=\"\xff\xfe\"",
        "crafted-whitespace-only.txt": b" \t\r\n" * 200,
        "crafted-empty-quotes.txt": b'</>;rt="";ct="";ver=""',
    }


def tlv() -> dict[str, bytes]:
    from test_codec_tlv import (
        ACL_OBJECT_TLV, DEVICE_INSTANCE_TLV, DEVICE_OBJECT_TLV, OBJ65_INSTANCE_TLV,
        OBJ66_OBJECT_TLV, SERVER_OBJECT_TLV,
    )

    return {
        "spec-device-instance.bin": DEVICE_INSTANCE_TLV,
        "spec-device-object.bin": DEVICE_OBJECT_TLV,
        "spec-acl-object.bin": ACL_OBJECT_TLV,
        "spec-server-object.bin": SERVER_OBJECT_TLV,
        "spec-obj65-instance.bin": OBJ65_INSTANCE_TLV,
        "spec-obj66-object.bin": OBJ66_OBJECT_TLV,
        "crafted-24bit-length-ffffff.bin": bytes.fromhex("d800ffffff41"),
        "crafted-16bit-length-ffff.bin": bytes.fromhex("d000ffff41"),
        "crafted-nested-length-past-parent.bin": bytes.fromhex("0800 05 c800ffffff"),
        "crafted-instance-in-instance.bin": bytes.fromhex("08000508000200") + b"\x00",
        "crafted-truncated-header.bin": bytes.fromhex("e8"),
        "crafted-truncated-16bit-id.bin": bytes.fromhex("e0ff"),
        "crafted-int-3-bytes.bin": bytes.fromhex("c309010203"),
        "crafted-float-5-bytes.bin": bytes.fromhex("c5030102030405"),
        "crafted-bool-2.bin": bytes.fromhex("c10402"),
        "crafted-objlnk-short.bin": bytes.fromhex("c3070102"),
        "crafted-duplicate-ids.bin": bytes.fromhex("c10001c10002"),
        "crafted-65535-instances.bin": b"".join(bytes((0x20, i >> 8, i & 255)) for i in range(0, 3000)),
        "crafted-multiple-in-multiple.bin": bytes.fromhex("8809 05 8801 02 4100"),
        "crafted-invalid-utf8-string.bin": bytes.fromhex("c800 02 fffe"),
        "crafted-time-8-bytes-max.bin": bytes.fromhex("c8 0d 08 7fffffffffffffff"),
    }


def senml_json() -> dict[str, bytes]:
    from test_codec_senml import (
        COMPOSITE_JSON, COMPOSITE_PATHS_JSON, DEVICE_JSON, HISTORY_JSON, OBJECT_LINKS_JSON,
        RFC_CURRENT_JSON, WRITE_COMPOSITE_JSON,
    )

    return {
        "spec-device.json": DEVICE_JSON,
        "spec-composite.json": COMPOSITE_JSON,
        "spec-composite-paths.json": COMPOSITE_PATHS_JSON,
        "spec-write-composite.json": WRITE_COMPOSITE_JSON,
        "spec-history.json": HISTORY_JSON,
        "spec-object-links.json": OBJECT_LINKS_JSON,
        "spec-rfc8428-current.json": RFC_CURRENT_JSON,
        "crafted-nesting-bomb.json": b"[" * 6000 + b"]" * 6000,
        "crafted-object-nesting.json": b'[{"n":' * 1500 + b"1" + b"}]" * 1500,
        "crafted-float-overflow.json": b'[{"n":"/3/0/9","v":1e999999}]',
        "crafted-int-5000-digits.json": b'[{"n":"/3/0/9","v":' + b"9" * 5000 + b"}]",
        "crafted-bt-overflow.json": b'[{"bn":"/3/0/","bt":1e308,"n":"9","v":1,"t":1e308}]',
        "crafted-lone-surrogate.json": b'[{"n":"/3/0/0","vs":"\\ud800"}]',
        "crafted-duplicate-label.json": b'[{"n":"/3/0/9","v":1,"v":2}]',
        "crafted-bn-without-n.json": b'[{"bn":"/3/0/9"},{"bn":"/3/0/9"}]',
        "crafted-vlo-garbage.json": b'[{"n":"/65/0/0/0","vlo":"99999999:0"}]',
        "crafted-vd-bad-base64.json": b'[{"n":"/3/0/9","vd":"@@@"}]',
        "crafted-bom.json": b"\xef\xbb\xbf[]",
        "crafted-nan.json": b'[{"n":"/3/0/9","v":NaN}]',
        "crafted-utf16.json": '[{"n":"/3/0/9","v":1}]'.encode("utf-16"),
    }


def oma_json() -> dict[str, bytes]:
    from test_codec_oma_json import DEVICE_JSON

    return {
        "spec-device.json": DEVICE_JSON,
        "crafted-nesting-bomb.json": b'{"e":' + b"[" * 6000 + b"]" * 6000 + b"}",
        "crafted-huge-int.json": b'{"bn":"/3/0/","e":[{"n":"9","v":' + b"1" * 5000 + b"}]}",
        "crafted-bt-inf.json": b'{"bn":"/3/0/","bt":1e999,"e":[{"n":"9","v":1,"t":-1e999}]}',
        "crafted-entries-not-list.json": b'{"bn":"/3/0/","e":{"n":"9"}}',
        "crafted-bn-garbage.json": b'{"bn":"/../../3/0/","e":[{"n":"9","v":1}]}',
        "crafted-ov-garbage.json": b'{"bn":"/65/0/0/","e":[{"n":"0","ov":"65536:-1"}]}',
    }


def cbor_bombs() -> dict[str, bytes]:
    """Shared by SenML CBOR and LwM2M CBOR."""
    return {
        "crafted-nesting-bomb.bin": cbor_nest(10_000),
        "crafted-map-nesting-bomb.bin": b"\xa1\x00" * 5000 + b"\x00",
        "crafted-indefinite-nesting.bin": b"\x9f" * 5000,
        "crafted-array-length-2e64.bin": bytes.fromhex("9bffffffffffffffff"),
        "crafted-map-length-2e32.bin": bytes.fromhex("baffffffff"),
        "crafted-bytes-length-2e40.bin": bytes.fromhex("5b000000ffffffffff"),
        "crafted-text-length-2e32.bin": bytes.fromhex("7affffffff") + b"a" * 16,
        "crafted-shared-ref-cycle.bin": bytes.fromhex("d81c81d81d00"),
        "crafted-shared-ref-map-cycle.bin": bytes.fromhex("81d81ca100d81d00"),
        "crafted-regex-tag.bin": b"\x81\xa1\x02" + cbor2.dumps(cbor2.CBORTag(35, "(a)" * 1500)),
        "crafted-mime-tag.bin": b"\x81\xa1\x02" + cbor2.dumps(cbor2.CBORTag(36, "Content-Type: x\n\nbody")),
        "crafted-bignum-4k.bin": b"\x81\xa2\x00\x66/3/0/9\x02\xc2\x59\x10\x00" + b"\xff" * 4096,
        "crafted-decimal-huge-exponent.bin": bytes.fromhex("81a202c4821b7fffffffffffffff0100662f332f302f39"),
        "crafted-bigfloat-huge-exponent.bin": bytes.fromhex("81a202c5821b7fffffffffffffff0100662f332f302f39"),
        "crafted-stringref.bin": bytes.fromhex("d90100 82 63616263 d81900"),
        "crafted-trailing-bytes.bin": bytes.fromhex("80") + b"\x00" * 100,
        "crafted-half-float-nan.bin": bytes.fromhex("81a2006d2f33323030302f302f3302f97e01"),
        "crafted-self-describe-tag.bin": bytes.fromhex("d9d9f780"),
    }


def senml_cbor() -> dict[str, bytes]:
    from test_codec_senml import DEVICE_CBOR, RFC_CURRENT_CBOR

    return {
        "spec-device.bin": DEVICE_CBOR,
        "spec-rfc8428-current.bin": RFC_CURRENT_CBOR,
        "spec-opaque.bin": bytes.fromhex("81a221662f302f302f330843abcdef"),
        **cbor_bombs(),
    }


def lwm2m_cbor() -> dict[str, bytes]:
    from test_codec_lwm2m_cbor import DEVICE_CBOR

    return {
        "spec-device.bin": DEVICE_CBOR,
        **cbor_bombs(),
        "crafted-id-array-key-deep.bin": cbor2.dumps({(3, 0, 0, 0, 0, 0, 0): 1}),
        "crafted-id-overflow.bin": cbor2.dumps({2**64 - 1: {0: 1}}),
        "crafted-negative-id.bin": cbor2.dumps({-1: {0: 1}}),
        "crafted-same-path-twice.bin": cbor2.dumps({3: {0: {0: "a"}}, (3, 0): {0: "b"}}),
        "crafted-epoch-tag-huge.bin": cbor2.dumps({3: {0: {13: cbor2.CBORTag(1, 2**63)}}}),
    }


def text() -> dict[str, bytes]:
    return {
        "spec-integer.txt": b"42",
        "spec-float.txt": b"-3.25e2",
        "spec-objlnk.txt": b"3:0",
        "crafted-huge-integer.txt": b"9" * 5000,
        "crafted-float-overflow.txt": b"1e99999",
        "crafted-nan.txt": b"nan",
        "crafted-invalid-utf8.txt": b"\xff\xfe\xfd",
        "crafted-objlnk-overflow.txt": b"65536:99999999999999",
        "crafted-time-overflow.txt": b"9" * 30,
        "crafted-bool-2.txt": b"2",
    }


def ddf() -> dict[str, bytes]:
    laughs = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{i} "{"".join(f"&l{i - 1};" for _ in range(10))}">' for i in range(1, 9)
    ]
    bomb = f'<?xml version="1.0"?>\n<!DOCTYPE LWM2M [{"".join(laughs)}]>\n<LWM2M><Object><Name>&l8;</Name></Object></LWM2M>'
    xxe = '<?xml version="1.0"?><!DOCTYPE LWM2M [<!ENTITY x SYSTEM "file:///etc/passwd">]><LWM2M><Object><Name>&x;</Name></Object></LWM2M>'
    item = (
        '<Item ID="0"><Name>n</Name><Operations>R</Operations><MultipleInstances>Single</MultipleInstances>'
        "<Mandatory>Optional</Mandatory><Type>Integer</Type></Item>"
    )
    head = (
        "<LWM2M><Object><Name>x</Name><ObjectID>{id}</ObjectID><MultipleInstances>Single</MultipleInstances>"
        "<Mandatory>Optional</Mandatory><Resources>{items}</Resources></Object></LWM2M>"
    )
    return {
        "crafted-billion-laughs.xml": bomb.encode(),
        "crafted-billion-laughs-utf16.xml": bomb.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16"),
        "crafted-billion-laughs-utf16-no-bom.xml": bomb.replace('version="1.0"', 'version="1.0" encoding="UTF-16BE"').encode("utf-16-be"),
        "crafted-external-entity.xml": xxe.encode(),
        "crafted-external-entity-utf16.xml": xxe.encode("utf-16"),
        "crafted-deep-nesting.xml": b"<LWM2M>" + b"<a>" * 2000 + b"</a>" * 2000 + b"</LWM2M>",
        "crafted-not-well-formed.xml": b"<LWM2M><Object>",
        "crafted-id-overflow.xml": head.format(id="99999999999999999999", items=item).encode(),
        "crafted-id-unicode-digits.xml": head.format(id="\u0663", items=item).encode(),
        "crafted-duplicate-items.xml": head.format(id="40000", items=item * 60).encode(),
        "crafted-no-item-id.xml": head.format(id="40000", items=item.replace(' ID="0"', "")).encode(),
        "crafted-unknown-type.xml": head.format(id="40000", items=item.replace("Integer", "Quaternion")).encode(),
        "crafted-empty.xml": b"",
        "crafted-nul-bytes.xml": b"<LWM2M>\x00</LWM2M>",
        "crafted-invalid-utf8.xml": b"<LWM2M><Object><Name>\xff</Name></Object></LWM2M>",
        "crafted-latin1-declared.xml": '<?xml version="1.0" encoding="ISO-8859-1"?><LWM2M/>'.encode("latin-1"),
        "crafted-unknown-encoding.xml": b'<?xml version="1.0" encoding="UTF-7"?><LWM2M/>',
        "crafted-processing-instruction.xml": b"<?xml-stylesheet href='x'?><LWM2M><?pi data?></LWM2M>",
    }


def yaml_config() -> dict[str, bytes]:
    from pathlib import Path as _P

    return {
        "spec-shipped.yaml": (_P(ROOT) / "config" / "server.yaml").read_bytes(),
        "crafted-deep-list.yaml": b"coap: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "crafted-deep-map.yaml": b"coap: " + b"{a: " * 1500 + b"1" + b"}" * 1500 + b"\n",
        "crafted-billion-laughs.yaml": (
            "x: &x [a, a, a, a, a, a, a, a, a]\n"
            + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}' if i > 1 else '*x'] * 9)}]\n" for i in range(1, 9))
        ).encode(),
        "crafted-billion-laughs-in-rollout.yaml": (
            "deployment:\n  rollouts:\n  - id: r\n    model: {file: m.tflite, name: n, version: '1'}\n"
            "    selector: {endpoints: &e0 [a, a, a, a, a, a, a, a]}\n"
            "  - id: s\n    model: {file: m.tflite, name: n, version: '1'}\n"
            "    selector: {endpoints: &e1 [*e0, *e0, *e0, *e0, *e0, *e0, *e0, *e0]}\n"
            "  - id: t\n    model: {file: m.tflite, name: n, version: '1'}\n"
            "    selector: {endpoints: [*e1, *e1, *e1, *e1, *e1, *e1, *e1, *e1]}\n"
        ).encode(),
        "crafted-recursive-alias.yaml": b"coap: &a {host: *a}\n",
        "crafted-merge-key.yaml": b"base: &b {port: 1}\ncoap:\n  <<: *b\n",
        "crafted-python-tag.yaml": b"coap: !!python/object/apply:os.system [echo pwned]\n",
        "crafted-binary-tag.yaml": b"api: {token: !!binary aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=}\n",
        "crafted-set-tag.yaml": b"objects: {ddf_folders: !!set {a, b}}\n",
        "crafted-timestamp.yaml": b"registration: {grace_s: 2001-12-14t21:59:43.10-05:00}\n",
        "crafted-float-inf.yaml": b"coap: {request_timeout_s: .inf, rate_limit_per_peer: .nan}\n",
        "crafted-huge-int.yaml": b"coap: {port: " + b"9" * 5000 + b"}\n",
        "crafted-surrogate-key.yaml": b'"\\ud800": 1\n',
        "crafted-surrogate-path.yaml": b'store: {path: "\\ud800"}\n',
        "crafted-newline-key.yaml": b'coap: {"a\\nb": 1}\n',
        "crafted-nul-path.yaml": b'store: {path: "a\\0b"}\n',
        "crafted-unhashable-key.yaml": b"? [a, b]\n: 1\n",
        "crafted-duplicate-key.yaml": b"coap: {port: 1, port: 2}\n",
        "crafted-invalid-utf8.yaml": b"coap: {host: \xff}\n",
        "crafted-bom.yaml": b"\xef\xbb\xbfcoap: {port: 0}\n",
        "crafted-tab-indent.yaml": b"coap:\n\tport: 1\n",
        "crafted-control-char.yaml": b"coap: {host: \x07}\n",
        "crafted-multi-document.yaml": b"coap: {}\n---\ncoap: {}\n",
        "crafted-long-key.yaml": b"coap: {" + b"k" * 8000 + b": 1}\n",
    }


def shared_tables_model(n_subgraphs: int, n_tensors: int, shape_len: int = 1) -> bytes:
    """A TFLite flatbuffer whose subgraph entries all point at one subgraph and whose
    tensor entries all point at one tensor: n_subgraphs x n_tensors tensors to walk."""
    import flatbuffers
    from lwm2m_server.compilers.tflite_model import schema

    fb = schema()
    b = flatbuffers.Builder(1024)
    fb.TensorStartShapeVector(b, shape_len)
    for _ in range(shape_len):
        b.PrependInt32(1)
    shape = b.EndVector()
    name = b.CreateString("t")
    fb.TensorStart(b)
    fb.TensorAddShape(b, shape)
    fb.TensorAddName(b, name)
    fb.TensorAddBuffer(b, 0)
    tensor = fb.TensorEnd(b)
    fb.SubGraphStartTensorsVector(b, n_tensors)
    for _ in range(n_tensors):
        b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    fb.SubGraphStartOutputsVector(b, 1)
    b.PrependInt32(0)
    outputs = b.EndVector()
    fb.SubGraphStart(b)
    fb.SubGraphAddTensors(b, tensors)
    fb.SubGraphAddOutputs(b, outputs)
    subgraph = fb.SubGraphEnd(b)
    fb.ModelStartSubgraphsVector(b, n_subgraphs)
    for _ in range(n_subgraphs):
        b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    fb.BufferStart(b)
    empty = fb.BufferEnd(b)
    fb.ModelStartBuffersVector(b, 1)
    b.PrependUOffsetTRelative(empty)
    buffers = b.EndVector()
    fb.ModelStart(b)
    fb.ModelAddVersion(b, 3)
    fb.ModelAddSubgraphs(b, subgraphs)
    fb.ModelAddBuffers(b, buffers)
    b.Finish(fb.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def tflite() -> dict[str, bytes]:
    shared = shared_tables_model
    return {
        "crafted-shared-subgraphs-and-tensors.tflite": shared(600, 600),
        "crafted-shared-shape-vector.tflite": shared(1, 400, 2000),
        "crafted-header-only.tflite": b"\x10\x00\x00\x00TFL3",
        "crafted-root-offset-past-end.tflite": b"\xff\xff\xff\x7fTFL3" + b"\x00" * 16,
        "crafted-vtable-loop.tflite": b"\x08\x00\x00\x00TFL3" + b"\xfc\xff\xff\xff" * 8,
        "crafted-vector-length-max.tflite": b"\x0c\x00\x00\x00TFL3\x00\x00\x00\x00\x08\x00\x00\x00" + b"\xff" * 16,
        "crafted-wrong-identifier.tflite": b"\x10\x00\x00\x00TFL2" + b"\x00" * 16,
    }


def pem() -> dict[str, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    p384 = ec.derive_private_key(12345, ec.SECP384R1())
    return {
        "spec-ed25519-public.pem": ed25519.Ed25519PrivateKey.from_private_bytes(CORPUS_KEY_SEED).public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "crafted-p384-public.pem": p384.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "crafted-garbage-base64.pem": b"-----BEGIN PUBLIC KEY-----\n@@@@\n-----END PUBLIC KEY-----\n",
        "crafted-huge-base64.pem": b"-----BEGIN PUBLIC KEY-----\n" + b"QUFB\n" * 2000 + b"-----END PUBLIC KEY-----\n",
        "crafted-unterminated.pem": b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n",
        "crafted-private-as-public.pem": b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        "crafted-empty.pem": b"",
        "crafted-binary.pem": bytes(range(256)),
    }


def suit() -> dict[str, bytes]:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from lwm2m_server.suit import build_envelope

    key = ed25519.Ed25519PrivateKey.from_private_bytes(CORPUS_KEY_SEED)

    def own(sequence: int, model: bytes) -> bytes:
        return build_envelope(model, sequence_number=sequence, vendor_id=VENDOR, class_id=CLASS,
                              metadata=None, signing_key=key)

    first, second = own(1, b"TFL3 model one"), own(2, b"TFL3 model two")
    entries = {
        "spec-own-envelope.cbor": first,
        "crafted-own-swapped-signature.cbor": swap_authentication(first, second),
        "crafted-own-signature-bits-flipped.cbor": flip_signature(first),
        "crafted-nesting-bomb.cbor": b"\xd8\x6b" + cbor_nest(5000),
        "crafted-envelope-bstr-2e64.cbor": bytes.fromhex("d86ba1025bffffffffffffffff"),
        "crafted-manifest-before-auth.cbor": reorder(first),
        "crafted-unsigned.cbor": drop_signatures(first),
        "crafted-cose-sign-not-sign1.cbor": cbor2.dumps(cbor2.CBORTag(107, {
            2: cbor2.dumps([cbor2.dumps([-16, b"\x00" * 32]), cbor2.dumps(cbor2.CBORTag(98, [b"", {}, None, []]))]),
            3: cbor2.dumps({1: 1, 2: 0}),
        })),
    }
    folder = SHARED / "suit-examples"
    if folder.is_dir():
        examples = [_example(folder / f"example{n}.txt") for n in range(6)]
        entries["spec-draft-example0.cbor"] = examples[0]
        entries["spec-draft-example3.cbor"] = examples[3]
        entries["crafted-draft-swapped-signature.cbor"] = swap_authentication(examples[0], examples[1])
        entries["crafted-draft-signature-halves-swapped.cbor"] = swap_signature_halves(examples[0])
    return entries


def _example(path: Path) -> bytes:
    blocks = re.findall(r"~~~\n([0-9a-f\n]+)~~~", path.read_text())
    return bytes.fromhex(blocks[-1].replace("\n", ""))


def _members(envelope: bytes) -> dict:
    return dict(cbor2.loads(envelope).value)


def _envelope(members: dict) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(107, members))


def swap_authentication(target: bytes, donor: bytes) -> bytes:
    """``target``'s manifest with ``donor``'s authentication wrapper: a valid signature, wrong digest."""
    members = _members(target)
    members[2] = _members(donor)[2]
    return _envelope(members)


def _rewrite_signature(envelope: bytes, change) -> bytes:
    members = _members(envelope)
    wrapper = cbor2.loads(members[2])
    sign1 = cbor2.loads(wrapper[1])
    body = list(sign1.value) if isinstance(sign1, cbor2.CBORTag) else list(sign1)
    body[3] = change(body[3])
    wrapper[1] = cbor2.dumps(cbor2.CBORTag(18, body) if isinstance(sign1, cbor2.CBORTag) else body)
    members[2] = cbor2.dumps(wrapper)
    return _envelope(members)


def flip_signature(envelope: bytes) -> bytes:
    return _rewrite_signature(envelope, lambda sig: bytes([sig[0] ^ 1]) + sig[1:])


def swap_signature_halves(envelope: bytes) -> bytes:
    return _rewrite_signature(envelope, lambda sig: sig[len(sig) // 2:] + sig[: len(sig) // 2])


def drop_signatures(envelope: bytes) -> bytes:
    members = _members(envelope)
    members[2] = cbor2.dumps(cbor2.loads(members[2])[:1])
    return _envelope(members)


def reorder(envelope: bytes) -> bytes:
    members = _members(envelope)
    return _envelope({3: members[3], 2: members[2], **{k: v for k, v in members.items() if k not in (2, 3)}})


def coap() -> dict[str, bytes]:
    """Requests for the real server: method, path, query, content format, payload (hex or text)."""

    def request(method: str, path: list[str], query: list[str] = (), cf: int | None = None,
                payload: bytes = b"", registered: bool = True) -> bytes:
        """``registered``: sent by the test's registered peer, or by a peer without registration."""
        return json.dumps({
            "method": method, "path": list(path), "query": list(query), "content_format": cf,
            "payload_hex": payload.hex(), "registered": registered,
        }, indent=1).encode() + b"\n"

    return {
        "crafted-register-unterminated-quote.json": request("POST", ["rd"], ["ep=q1"], 40, b'</>;rt="oma.lwm2m,</3/0>'),
        "crafted-register-many-queries.json": request("POST", ["rd"], [f"x{i}=1" for i in range(200)] + ["ep=q2"], None, b"</3/0>"),
        "crafted-register-lt-overflow.json": request("POST", ["rd"], ["ep=q3", "lt=" + "9" * 400]),
        "crafted-register-ep-control-chars.json": request("POST", ["rd"], ["ep=a\x00\x1b[2J"]),
        "crafted-register-ep-256.json": request("POST", ["rd"], ["ep=" + "e" * 256]),
        "crafted-register-ep-twice.json": request("POST", ["rd"], ["ep=a", "ep=b"]),
        "crafted-register-empty-query.json": request("POST", ["rd"], ["", "=", "=x", "ep"]),
        "crafted-register-q-on-1.0.json": request("POST", ["rd"], ["ep=q4", "Q"]),
        "crafted-register-binding-garbage.json": request("POST", ["rd"], ["ep=q5", "b=UUQQ"]),
        "crafted-register-cf-65535.json": request("POST", ["rd"], ["ep=q6"], 65535, b"</3/0>"),
        "crafted-register-cf-senml-cbor.json": request("POST", ["rd"], ["ep=q7"], 112, cbor_nest(3000)),
        "crafted-register-invalid-utf8.json": request("POST", ["rd"], ["ep=q8"], 40, b"</3/0>;x=\"\xff\""),
        "crafted-register-deep-path.json": request("POST", ["rd"], ["ep=q9"], 40, b"<" + b"/1" * 400 + b">"),
        "crafted-update-unknown-id.json": request("POST", ["rd", "does-not-exist"], ["lt=60"]),
        "crafted-update-nested-path.json": request("POST", ["rd", "a", "b", "c"]),
        "crafted-delete-rd-root.json": request("DELETE", ["rd"]),
        "crafted-put-rd.json": request("PUT", ["rd"], ["ep=q10"]),
        "crafted-fetch-dp.json": request("FETCH", ["dp"], [], 112, b"\x80"),
        "crafted-send-unregistered.json": request("POST", ["dp"], [], 110, b'[{"n":"/3/0/9","v":1}]', registered=False),
        "crafted-send-nesting-bomb.json": request("POST", ["dp"], [], 110, b"[" * 3000 + b"]" * 3000),
        "crafted-send-cbor-cycle.json": request("POST", ["dp"], [], 112, bytes.fromhex("d81c81d81d00")),
        "crafted-send-regex-tag.json": request("POST", ["dp"], [], 112, b"\x81\xa1\x02" + cbor2.dumps(cbor2.CBORTag(35, "(a)" * 300))),
        "crafted-send-lwm2m-cbor-bomb.json": request("POST", ["dp"], [], 11544, cbor_nest(5000)),
        "crafted-send-no-content-format.json": request("POST", ["dp"], [], None, b"[]"),
        "crafted-send-tlv.json": request("POST", ["dp"], [], 11542, bytes.fromhex("d800ffffff41")),
        "crafted-send-empty-pack.json": request("iPATCH", ["dp"], [], 110, b"[]"),
        "crafted-dotdot-path.json": request("POST", ["..", "rd"], ["ep=q11"]),
        "crafted-well-known-core.json": request("GET", [".well-known", "core"]),
        "crafted-fw-download-missing.json": request("GET", ["fw", "nope"]),
        "crafted-bootstrap-no-ep.json": request("POST", ["bs"], ["pct=112"]),
        "crafted-bootstrap-ep-twice.json": request("POST", ["bs"], ["ep=b1", "ep=b2"]),
        "crafted-bootstrap-pct-garbage.json": request("POST", ["bs"], ["ep=b3", "pct=" + "9" * 300]),
        "crafted-bootstrap-ep-control-chars.json": request("POST", ["bs"], ["ep=\x00\x1b[2J"]),
        "crafted-bootstrap-with-payload.json": request("POST", ["bs"], ["ep=b4"], 112, cbor_nest(2000)),
        "crafted-bootstrap-get.json": request("GET", ["bs"], ["ep=b5"]),
        "crafted-bootstrap-unregistered.json": request("POST", ["bs"], ["ep=b6"], registered=False),
    }


GENERATORS = {
    "link_format": link_format, "tlv": tlv, "senml_json": senml_json, "senml_cbor": senml_cbor,
    "oma_json": oma_json, "lwm2m_cbor": lwm2m_cbor, "text": text, "ddf": ddf, "config": yaml_config,
    "tflite": tflite, "pem": pem, "suit": suit, "coap": coap,
}


def main() -> None:
    for parser, generate in GENERATORS.items():
        folder = HERE / parser
        folder.mkdir(exist_ok=True)
        for old in folder.glob("crafted-*"):
            old.unlink()
        for old in folder.glob("spec-*"):
            old.unlink()
        entries = generate()
        for name, data in entries.items():
            (folder / name).write_bytes(data)
        print(f"{parser}: {len(entries)} files, largest {max(len(d) for d in entries.values())} B")


if __name__ == "__main__":
    main()
