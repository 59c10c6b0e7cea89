"""Inference modules as SUIT envelopes: build, parse, verify; COSE_Sign1; key files.

What a device relies on: an envelope we build verifies with our key and yields the
model and its metadata; anything tampered, rolled back, meant for other devices or
signed by another key is refused with its specific error; and no byte string,
however malformed (even signed by a trusted key), makes the verifier raise anything
but a ``SuitError``. The shared draft examples are in ``test_suit_examples.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import uuid
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwm2m_server.suit import (
    VENDOR_ID,
    Algorithm,
    BuildError,
    ClassMismatchError,
    Digest,
    DigestMismatchError,
    FormatError,
    KeyFileError,
    ModelMetadata,
    Quantization,
    RollbackError,
    SignatureError,
    SizeMismatchError,
    SuitError,
    TensorSpec,
    UnknownKeyError,
    UnsupportedError,
    VendorMismatchError,
    build_envelope,
    describe_key,
    generate_key_files,
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    make_class_id,
    make_vendor_id,
    parse_envelope,
    verify_envelope,
    verify_payload,
)
from lwm2m_server.suit.cose import decode_sign1, kid_for, sig_structure, sign1, verify_sign1
from lwm2m_server.suit.model_info import MODEL_INFO_KEY, decode_model_info, encode_model_info

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASS = make_class_id(VENDOR_ID, "tflm-2.x/cortex-m4f/ops:0123abcd")
MODEL = bytes(range(256)) * 40 + b"TFL3"
URI = "coap://[::1]/modules/kws-1.2.0"
METADATA = ModelMetadata(
    name="kws",
    version="1.2.0",
    arena_bytes=22_528,
    inputs=(TensorSpec("input_1", "int8", (1, 49, 10, 1), Quantization(0.5847, 83)),),
    outputs=(TensorSpec("Identity", "int8", (1, 12), Quantization(0.00390625, -128)),),
    runtime_name="tflite-micro",
    runtime_version="2.14.0",
    compiler_name="tflm-flatbuffer",
    compiler_version="0.1.0",
)
KEYS = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
}
ES256 = KEYS["ES256"]


def build(payload_or_uri: bytes | str = MODEL, key=ES256, **overrides: Any) -> bytes:
    arguments: dict[str, Any] = dict(
        sequence_number=7, vendor_id=VENDOR_ID, class_id=CLASS, metadata=METADATA, signing_key=key
    )
    if isinstance(payload_or_uri, str):
        arguments.update(digest=hashlib.sha256(MODEL).digest(), size=len(MODEL))
    arguments.update(overrides)
    return build_envelope(payload_or_uri, **arguments)


def verify(data: bytes, key=ES256, **overrides: Any):
    arguments: dict[str, Any] = dict(
        trust_anchors=[key.public_key()],
        expected_vendor_id=VENDOR_ID,
        expected_class_id=CLASS,
        min_sequence_number=6,
    )
    arguments.update(overrides)
    return verify_envelope(data, **arguments)


def envelope_members(data: bytes) -> dict[Any, bytes]:
    return dict(cbor2.loads(data).value)


def with_members(members: dict[Any, Any]) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(107, members))


VALID = build()
VALID_URI = build(URI)

# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
@pytest.mark.parametrize("integrated", [True, False], ids=["integrated", "uri"])
def test_envelope_round_trips(algorithm: str, integrated: bool):
    key = KEYS[algorithm]
    data = build(MODEL if integrated else URI, key)
    module = verify(data, key)
    assert module.metadata == METADATA
    assert module.sequence_number == 7 and (module.vendor_id, module.class_id) == (VENDOR_ID, CLASS)
    assert module.key_id == key_id(key)
    assert module.image.digest == Digest(-16, hashlib.sha256(MODEL).digest())
    assert module.image.size == len(MODEL)
    assert module.envelope.authentication[0].algorithm == Algorithm[algorithm.upper()]
    if integrated:
        assert module.image.uri == "#model" and module.payload == MODEL
    else:
        assert module.image.uri == URI and module.payload is None
        assert verify_payload(module, MODEL).payload == MODEL
        assert verify(data, key, payload=MODEL).payload == MODEL


def test_envelope_follows_the_draft_layout():
    members = envelope_members(VALID)
    assert cbor2.loads(VALID).tag == 107 and list(members) == [2, 3, "#model"]
    digest, signature = cbor2.loads(members[2])
    assert cbor2.loads(digest) == [-16, hashlib.sha256(cbor2.dumps(members[3])).digest()]
    assert cbor2.loads(signature).tag == 18
    manifest = parse_envelope(VALID).manifest
    assert manifest.components == ((b"tinymlaas", b"model"),)
    assert [(c.code, c.argument) for c in manifest.shared_sequence[1:]] == [(1, 15), (2, 15)]
    image = manifest.shared_sequence[0].argument
    assert (image.vendor_id, image.class_id, image.image_size) == (VENDOR_ID, CLASS, len(MODEL))
    assert [c.code for c in manifest.install] == [20, 21, 3]
    assert manifest.install[0].argument.uri == "#model"
    assert [c.code for c in manifest.validate] == [3] and [c.code for c in manifest.invoke] == [23]
    assert cbor2.loads(members[3])[MODEL_INFO_KEY] == encode_model_info(METADATA)
    decoded = cbor2.loads(members[3])
    assert list(decoded) == [1, 2, 3, 7, 9, 20, MODEL_INFO_KEY]  # canonical order
    assert cbor2.dumps(decoded, canonical=True) == members[3]


def test_a_uri_envelope_carries_no_payload():
    assert list(envelope_members(VALID_URI)) == [2, 3]
    assert len(VALID_URI) < 600


def test_metadata_is_optional():
    module = verify(build(metadata=None))
    assert module.metadata is None and module.payload == MODEL


def test_vendor_and_class_ids():
    assert VENDOR_ID == uuid.uuid5(uuid.NAMESPACE_DNS, "tinymlaas.example") == make_vendor_id()
    assert make_class_id(VENDOR_ID, "tflm-2.x/cortex-m4f/ops:0123abcd") == CLASS
    assert make_class_id(VENDOR_ID, "tflm-2.x/cortex-m33/ops:0123abcd") != CLASS
    assert CLASS.version == 5


# --- refusals ------------------------------------------------------------------------------


def test_tampered_integrated_payload_is_refused():
    members = envelope_members(VALID)
    members["#model"] = MODEL[:-1] + b"X"
    with pytest.raises(DigestMismatchError):
        verify(with_members(members))
    members["#model"] = MODEL[:-1]
    with pytest.raises(SizeMismatchError):
        verify(with_members(members))
    del members["#model"]
    with pytest.raises(FormatError, match="not in the envelope"):
        verify(with_members(members))


def test_tampered_fetched_payload_is_refused():
    with pytest.raises(DigestMismatchError):
        verify(VALID_URI, payload=b"\xff" + MODEL[1:])
    with pytest.raises(SizeMismatchError):
        verify(VALID_URI, payload=MODEL + b"\x00")
    module = verify(VALID_URI)
    with pytest.raises(DigestMismatchError):
        verify_payload(module, MODEL[::-1])


@pytest.mark.parametrize("installed", [7, 8, 1000])
def test_rollback_is_refused(installed: int):
    with pytest.raises(RollbackError) as caught:
        verify(VALID, min_sequence_number=installed)
    assert (caught.value.sequence_number, caught.value.installed) == (7, installed)


def test_newer_or_first_installs_are_accepted():
    assert verify(VALID, min_sequence_number=None).sequence_number == 7
    assert verify(VALID, min_sequence_number=0).sequence_number == 7


def test_wrong_class_or_vendor_is_refused():
    with pytest.raises(ClassMismatchError):
        verify(VALID, expected_class_id=make_class_id(VENDOR_ID, "tflm-2.x/cortex-m0plus/ops:0"))
    with pytest.raises(VendorMismatchError):
        verify(VALID, expected_vendor_id=make_vendor_id("other.example"))
    assert verify(VALID, expected_vendor_id=VENDOR_ID.bytes, expected_class_id=CLASS.bytes).payload


def test_wrong_key_is_refused():
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UnknownKeyError, match=key_id(ES256)):
        verify(VALID, other)
    with pytest.raises(UnknownKeyError):
        verify(VALID, trust_anchors=[])
    anonymous = build(include_kid=False)
    with pytest.raises(SignatureError) as caught:
        verify(anonymous, other)
    assert not isinstance(caught.value, UnknownKeyError)
    assert verify(anonymous, trust_anchors=[other.public_key(), ES256.public_key()]).key_id == key_id(ES256)


def test_a_signature_naming_a_trusted_key_but_made_by_another_is_refused():
    impostor = ec.generate_private_key(ec.SECP256R1())
    members = envelope_members(VALID)
    digest, _ = cbor2.loads(members[2])
    forged = sign1(digest, impostor, detached=True, kid=kid_for(ES256))
    members[2] = cbor2.dumps([digest, forged])
    with pytest.raises(SignatureError) as caught:
        verify(with_members(members))
    assert not isinstance(caught.value, UnknownKeyError)


def test_a_second_valid_signature_block_suffices():
    other = ed25519.Ed25519PrivateKey.generate()
    members = envelope_members(VALID)
    digest, signature = cbor2.loads(members[2])
    extra = sign1(digest, other, detached=True, kid=kid_for(other))
    members[2] = cbor2.dumps([digest, extra, signature])
    assert verify(with_members(members)).key_id == key_id(ES256)
    assert verify(with_members(members), other).key_id == key_id(other)


def test_bad_build_arguments_raise_build_errors():
    with pytest.raises(BuildError):
        build(URI, digest=None)
    with pytest.raises(BuildError):
        build(MODEL, digest=b"\x00" * 32)
    with pytest.raises(BuildError):
        build(MODEL, size=1)
    with pytest.raises(BuildError):
        build(MODEL, integrated=False)
    with pytest.raises(BuildError):
        build(MODEL, sequence_number=-1)
    with pytest.raises(BuildError):
        build(MODEL, vendor_id="fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
    with pytest.raises(BuildError):
        build(MODEL, payload_key="model")
    with pytest.raises(BuildError):
        build(MODEL, metadata=replace(METADATA, inputs=()))
    with pytest.raises(BuildError):
        build(MODEL, metadata=replace(METADATA, arena_bytes=-1))
    with pytest.raises(BuildError):
        build(MODEL, metadata=replace(METADATA, outputs=(TensorSpec("y", "complex64", (1,)),)))
    with pytest.raises(ValueError):  # BuildError is also a ValueError
        zero_scale = TensorSpec("y", "int8", (1,), Quantization(0.0, 0))
        build(MODEL, metadata=replace(METADATA, outputs=(zero_scale,)))


# --- model metadata ------------------------------------------------------------------------


def test_metadata_round_trips_and_serialises():
    float_model = replace(METADATA, inputs=(TensorSpec("x", "float32", [1, 3]),))
    for meta in (METADATA, float_model):
        assert decode_model_info(encode_model_info(meta)) == meta
    assert METADATA.as_dict()["inputs"][0] == {
        "name": "input_1", "dtype": "int8", "shape": [1, 49, 10, 1],
        "quantization": {"scale": 0.5847, "zero_point": 83},
    }  # fmt: skip
    assert float_model.inputs[0].shape == (1, 3)


@pytest.mark.parametrize(
    "change",
    [
        {3: -1},
        {3: 2**40},
        {4: []},
        {1: ""},
        {9: 1},
        {10: "extra"},
        {4: [{1: "x", 2: "int8", 3: [1], 4: 0.5}]},
        {4: [{1: "x", 2: "int8", 3: [1], 4: -0.5, 5: 0}]},
        {4: [{1: "x", 2: "int8", 3: [1], 4: 1, 5: 0}]},
        {4: [{1: "x", 2: "int9", 3: [1]}]},
        {4: [{1: "x", 2: "int8", 3: [-1]}]},
    ],
)
def test_malformed_metadata_is_a_format_error(change: dict):
    fields = cbor2.loads(encode_model_info(METADATA))
    fields.update(change)
    with pytest.raises(FormatError):
        decode_model_info(cbor2.dumps(fields))


# --- hand-made (but validly signed) manifests -----------------------------------------------


def signed_envelope(manifest: Any, key=ES256, payloads: dict[str, bytes] | None = None) -> bytes:
    """An envelope around any manifest (bytes, or an item to encode), correctly signed."""
    manifest_bytes = manifest if isinstance(manifest, bytes) else cbor2.dumps(manifest)
    digest = cbor2.dumps([-16, hashlib.sha256(cbor2.dumps(manifest_bytes)).digest()])
    signature = sign1(digest, key, detached=True, kid=kid_for(key))
    return with_members({2: cbor2.dumps([digest, signature]), 3: manifest_bytes, **(payloads or {})})


def wrap(item: Any) -> bytes:
    return cbor2.dumps(item)


def manifest_tree(members: dict | None = None, shared: list | None = None) -> dict:
    digest = wrap([-16, hashlib.sha256(MODEL).digest()])
    image = {1: VENDOR_ID.bytes, 2: CLASS.bytes, 3: digest, 14: len(MODEL)}
    tree = {
        1: 1,
        2: 7,
        3: wrap({2: [[b"m"]], 4: wrap(shared if shared is not None else [20, image, 1, 15, 2, 15])}),
        7: wrap([3, 15]),
        20: wrap([20, {21: URI}, 21, 2, 3, 15]),
    }
    tree.update(members or {})
    return {k: v for k, v in tree.items() if v is not None}


def test_a_hand_made_manifest_verifies():
    module = verify(signed_envelope(manifest_tree()), payload=MODEL)
    assert module.image.component == (b"m",) and module.payload == MODEL


@pytest.mark.parametrize(
    ("tree", "error", "match"),
    [
        (manifest_tree({1: 2}), UnsupportedError, "version 2"),
        (manifest_tree({5: wrap([3, 15])}), UnsupportedError, "member 5"),
        (manifest_tree({"x": 1}), FormatError, "member labels"),
        ({True: 1, 2: 7, 3: manifest_tree()[3]}, FormatError, "member labels"),
        ({1.0: 1, 2: 7, 3: manifest_tree()[3]}, FormatError, "member labels"),
        (manifest_tree({2: -1}), FormatError, "sequence number"),
        (manifest_tree({3: None}), FormatError, "no common"),
        (manifest_tree({7: wrap([99, 15])}), UnsupportedError, "command 99"),
        (manifest_tree({7: wrap([3, 16])}), FormatError, "reporting policy"),
        (manifest_tree({7: wrap([3])}), FormatError, "pairs"),
        (manifest_tree({7: wrap([12, 1, 3, 15])}), FormatError, "out of range"),
        (manifest_tree({7: wrap([15, [wrap([3, 15])]])}), FormatError, "Try Each"),
        (manifest_tree({7: wrap([15, [wrap([3, 15]), None]])}), FormatError, "Try Each"),
        (manifest_tree({7: wrap([15, [wrap([3, 15]), None, wrap([3, 15])]])}), FormatError, "Try Each"),
        (manifest_tree({7: wrap([15, [wrap([5, 5]), wrap([14, 0]), None]])}), None, None),
        (manifest_tree({7: wrap([20, {}])}), FormatError, "at least one parameter"),
        (manifest_tree({7: wrap([20, {99: 1}])}), UnsupportedError, "parameter 99"),
        (manifest_tree({7: wrap([20, {3: wrap([-16, b"short"])}])}), FormatError, "32 bytes"),
        (manifest_tree({7: wrap([20, {3: wrap([-18, b"x" * 32])}])}), UnsupportedError, "algorithm -18"),
        (manifest_tree({7: wrap([20, {1: b"not a uuid"}])}), FormatError, "UUID"),
        (manifest_tree({7: wrap([20, {1: cbor2.CBORTag(112, b"\x01")}])}), UnsupportedError, "PEN"),
        (manifest_tree({20: wrap([-300, b"custom", 3, 15])}), None, None),
        (manifest_tree(shared=[20, {1: VENDOR_ID.bytes, 2: CLASS.bytes}, 1, 15, -300, None]), FormatError,
         "custom commands"),
        (manifest_tree(shared=[20, {1: VENDOR_ID.bytes, 2: CLASS.bytes}, 1, 15, 21, 2]), FormatError,
         "not allowed in the shared"),
        (manifest_tree(shared=[20, {1: VENDOR_ID.bytes, 2: CLASS.bytes}, 1, 15]), FormatError,
         "class identifier"),
        (manifest_tree(shared=[20, {2: CLASS.bytes}, 2, 15, 1, 15]), FormatError, "no vendor"),
        (manifest_tree({MODEL_INFO_KEY: wrap({1: "x"})}), FormatError, "model metadata"),
        (manifest_tree({23: wrap({"not a language!": {1: "x"}})}), FormatError, "language tag"),
        (manifest_tree({23: wrap({"en": {(b"zz",): {1: "x"}}})}), FormatError, "not in the manifest"),
    ],
)
def test_signed_but_malformed_manifests_are_refused(tree: dict, error: type | None, match: str | None):
    data = signed_envelope(tree)
    if error is None:
        verify(data)
        return
    with pytest.raises(error, match=match):
        verify(data)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda data: data + b"\x00", "after the CBOR item"),
        (lambda data: cbor2.dumps(cbor2.loads(data).value), "tag 107"),
        (lambda data: with_members({3: envelope_members(data)[3], 2: envelope_members(data)[2]}), "before"),
        (lambda data: with_members({**envelope_members(data), 1: b"delegation"}), "member 1"),
        (lambda data: with_members({**envelope_members(data), 20: b"\x80"}), "does not sever"),
        (lambda data: with_members({2: envelope_members(data)[2]}), "manifest"),
        (lambda data: with_members({**envelope_members(data), "#model": "text"}), "expected bstr"),
        (lambda data: with_members({**envelope_members(data), 2: wrap([])}), "digest is missing"),
        (lambda data: b"\xd8\x6b\xbf\x02\x40\xff", "indefinite"),
        (lambda data: bytes.fromhex("d86ba3024003400240"), "Duplicate"),
    ],
)
def test_malformed_envelopes_are_format_errors(mutate, match: str):
    with pytest.raises(FormatError, match=match):
        verify(mutate(VALID))


# --- COSE_Sign1 ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
@pytest.mark.parametrize("detached", [True, False])
def test_sign1_round_trips(algorithm: str, detached: bool):
    key = KEYS[algorithm]
    message = sign1(b"payload", key, detached=detached, external_aad=b"aad", kid=kid_for(key))
    decoded = decode_sign1(message)
    assert decoded.payload == (None if detached else b"payload") and decoded.kid == kid_for(key)
    result = verify_sign1(
        message, [key.public_key()], detached_payload=b"payload" if detached else None, external_aad=b"aad"
    )
    assert result.payload == b"payload" and result.algorithm is Algorithm[algorithm.upper()]
    with pytest.raises(SignatureError):
        verify_sign1(message, [key.public_key()], detached_payload=b"payload" if detached else None)
    with pytest.raises(FormatError):
        verify_sign1(message, [key.public_key()], detached_payload=None if detached else b"payload")


def test_es256_signatures_are_r_concatenated_with_s():
    message = cbor2.loads(sign1(b"data", ES256))
    protected, _, payload, signature = message.value
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    ES256.public_key().verify(der, sig_structure(protected, b"", payload), ec.ECDSA(hashes.SHA256()))
    assert cbor2.loads(protected) == {1: -7}


def test_cose_wg_sign1_example_verifies():
    """cose-wg/Examples sign1-tests/sign-pass-02 (ES256 with external AAD, kid "11")."""

    def number(text: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    public = ec.EllipticCurvePublicNumbers(
        number("usWxHK2PmfnHKwXPS54m0kTcGJ90UiglWiGahtagnv8"),
        number("IBOL-C3BttVivg-lSreASjpkttcsz-1rb7btKLv8EX4"),
        ec.SECP256R1(),
    ).public_key()
    message = bytes.fromhex(
        "D28443A10126A10442313154546869732069732074686520636F6E74656E742E5840EAE868ECC176883766C5DC5BA5"
        "B8DCA25DAB3C2E56A551CE5705B793914348E155388B10C4F1B59A6733EAB416870A945111A4B2FBDBEF33A77234B1"
        "DEFF2F9B"
    )
    aad = bytes.fromhex("11aa22bb33cc44dd55006699")
    decoded = decode_sign1(message)
    assert decoded.kid == b"11"
    with pytest.raises(UnknownKeyError):  # "11" is not a key id of ours
        verify_sign1(decoded, [public], external_aad=aad)
    result = verify_sign1(replace(decoded, kid=None), [public], external_aad=aad)
    assert result.payload == b"This is the content."
    with pytest.raises(SignatureError):
        verify_sign1(replace(decoded, kid=None), [public])


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([cbor2.dumps({}), {1: -7}, None, b"x" * 64], FormatError),  # alg unprotected
        ([cbor2.dumps({1: -7}), {1: -7}, None, b"x" * 64], FormatError),  # alg in both buckets
        ([cbor2.dumps({1: -35}), {}, None, b"x" * 64], UnsupportedError),  # ES384
        ([cbor2.dumps({1: "ES256"}), {}, None, b"x" * 64], UnsupportedError),
        ([cbor2.dumps({1: -7, 2: [99]}), {}, None, b"x" * 64], UnsupportedError),  # crit
        ([cbor2.dumps({1: -7, 2: [[1]]}), {}, None, b"x" * 64], UnsupportedError),
        ([cbor2.dumps({1: -7, 2: []}), {}, None, b"x" * 64], UnsupportedError),
        ([cbor2.dumps({1: -7}), {}, None, b"x" * 63], FormatError),
        ([cbor2.dumps({1: -7}), {4: "kid"}, None, b"x" * 64], FormatError),
        ([cbor2.dumps({1: -7}), {}, None], FormatError),
        ([b"\xa1\x01", {}, None, b"x" * 64], FormatError),
    ],
)
def test_malformed_cose_sign1_is_refused(body: list, error: type):
    with pytest.raises(error):
        verify_sign1(cbor2.dumps(cbor2.CBORTag(18, body)), [ES256.public_key()], detached_payload=b"p")


# --- key files -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_generated_key_files(tmp_path, algorithm: str):
    files = generate_key_files(tmp_path / "keys" / "signing.pem", algorithm)
    assert files.public_path == tmp_path / "keys" / "signing.pub.pem"
    assert stat.S_IMODE(os.stat(files.private_path).st_mode) == 0o600
    private = load_private_key(files.private_path)
    public = load_public_key(files.public_path)
    assert key_id(private) == key_id(public) == key_id(load_public_key(files.private_path)) == files.key_id
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert files.key_id == hashlib.sha256(spki).hexdigest()[:16]
    assert files.algorithm.label == algorithm
    data = build(MODEL, private)
    assert verify(data, trust_anchors=[public]).key_id == files.key_id


def test_describe_key_never_shows_the_private_key(tmp_path):
    files = generate_key_files(tmp_path / "signing.pem", "ES256")
    for path in (files.private_path, files.public_path):
        text = describe_key(path)
        assert "ES256" in text and files.key_id in text
        assert files.public_path.read_text() in text
        assert "PRIVATE" not in text
    assert "private key" in describe_key(files.private_path)


def test_existing_keys_are_not_overwritten(tmp_path):
    first = generate_key_files(tmp_path / "signing.pem")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_files(tmp_path / "signing.pem")
    assert key_id(load_private_key(first.private_path)) == first.key_id
    os.chmod(first.private_path, 0o644)
    second = generate_key_files(tmp_path / "signing.pem", "EdDSA", overwrite=True)
    assert second.key_id != first.key_id
    assert stat.S_IMODE(os.stat(second.private_path).st_mode) == 0o600


def test_unusable_key_files_raise_key_file_errors(tmp_path):
    other_curve = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encrypted = ES256.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )  # fmt: skip
    for name, content in [
        ("garbage.pem", b"not a key"),
        ("p384.pem", other_curve.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())),
        ("rsa.pub.pem", rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)),
        ("encrypted.pem", encrypted),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(KeyFileError):
            load_private_key(tmp_path / name)
        with pytest.raises(KeyFileError):
            describe_key(tmp_path / name)
    assert key_id(load_private_key(tmp_path / "encrypted.pem", b"secret")) == key_id(ES256)
    with pytest.raises(KeyFileError, match="public key"):
        load_private_key(generate_key_files(tmp_path / "k.pem").public_path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")
    with pytest.raises(UnsupportedError):
        generate_signing_key("RS256")


# --- fuzzing: nothing but SuitError ----------------------------------------------------------


def outcome(data: bytes, **overrides: Any) -> str:
    """Run the verifier; any exception that is not a SuitError fails the test."""
    try:
        verify(data, **overrides)
    except SuitError:
        return "refused"
    return "accepted"


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_suit_errors(data: bytes):
    assert outcome(data) == "refused"
    try:
        parse_envelope(data)
    except SuitError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_prefix_raise_only_suit_errors(tail: bytes):
    assert outcome(VALID[:100] + tail) == "refused"
    assert outcome(b"\xd8\x6b\xa2\x02" + tail) == "refused"


@st.composite
def mutated(draw, original: bytes = VALID) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[position]
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(mutated(VALID) | mutated(VALID_URI))
def test_mutated_envelopes_raise_only_suit_errors(data: bytes):
    outcome(data, payload=None)


CBOR_LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats()
    | st.binary(max_size=34) | st.text(max_size=12)
    | st.sampled_from([-16, 0, 1, 2, 3, 12, 14, 15, 20, 21, 23, 32, -257, True, b"\x00" * 16, b"\x00" * 32])
)  # fmt: skip
CBOR_VALUES = st.recursive(
    CBOR_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.integers(-300, 30) | st.text(max_size=3), inner, max_size=5)
        | st.builds(cbor2.CBORTag, st.sampled_from([1, 2, 18, 28, 29, 37, 107, 112, 256]), inner)
        | inner.map(cbor2.dumps)
    ),
    max_leaves=12,
)


def _children(node: Any) -> list[tuple[Any, Any]]:
    """(key, child) pairs; a bstr holding CBOR counts as a node whose child is its content."""
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, list):
        return list(enumerate(node))
    return []


@st.composite
def mutated_manifests(draw) -> Any:
    """A valid manifest tree with one node replaced, removed or added, at any depth
    (bstr-wrapped parts are decoded, mutated and re-wrapped)."""

    def mutate(node: Any) -> Any:
        wrapped = False
        if isinstance(node, bytes):
            try:
                node, wrapped = cbor2.loads(node), True
            except Exception:
                return draw(CBOR_VALUES)
        children = _children(node)
        if not children or draw(st.integers(0, 3)) == 0:
            action = draw(st.sampled_from(["replace", "remove", "add"]))
            if action == "replace" or not children:
                node = draw(CBOR_VALUES)
            elif action == "remove":
                key = draw(st.sampled_from([k for k, _ in children]))
                if isinstance(node, dict):
                    node = {k: v for k, v in node.items() if k != key}
                else:
                    node = node[:key] + node[key + 1 :]
            elif isinstance(node, dict):
                node = {**node, draw(st.integers(-300, 30)): draw(CBOR_VALUES)}
            else:
                node = node + [draw(CBOR_VALUES)]
        else:
            key, child = draw(st.sampled_from(children))
            node = dict(node) if isinstance(node, dict) else list(node)
            node[key] = mutate(child)
        return cbor2.dumps(node) if wrapped else node

    tree = manifest_tree({MODEL_INFO_KEY: encode_model_info(METADATA), 9: wrap([23, 2])})
    return mutate(tree)


@FUZZ
@given(mutated_manifests())
def test_signed_mutated_manifests_raise_only_suit_errors(tree: Any):
    try:
        data = signed_envelope(tree)
    except Exception:  # cbor2 cannot encode it (e.g. unhashable key): nothing to verify
        return
    outcome(data, payload=MODEL)
    outcome(data, payload=None)


@FUZZ
@given(CBOR_VALUES)
def test_signed_arbitrary_manifests_raise_only_suit_errors(manifest: Any):
    try:
        data = signed_envelope(manifest)
    except Exception:
        return
    assert outcome(data) == "refused"


@FUZZ
@given(CBOR_VALUES, CBOR_VALUES, st.dictionaries(st.sampled_from([1, 2, 4, 5, "x"]), CBOR_VALUES, max_size=3))
def test_arbitrary_cose_headers_raise_only_suit_errors(protected: Any, unprotected: Any, headers: dict):
    members = envelope_members(VALID)
    digest, signature = cbor2.loads(members[2])
    body = list(cbor2.loads(signature).value)
    for bucket in (protected, {1: -7, **headers}):
        try:
            body[0], body[1] = cbor2.dumps(bucket), unprotected
            members[2] = cbor2.dumps([digest, cbor2.dumps(cbor2.CBORTag(18, body))])
            data = with_members(members)
        except Exception:
            continue
        outcome(data)


@FUZZ
@given(CBOR_VALUES, CBOR_VALUES)
def test_arbitrary_envelope_members_raise_only_suit_errors(authentication: Any, manifest: Any):
    members = {2: authentication, 3: manifest}
    try:
        data = with_members(members)
    except Exception:
        return
    assert outcome(data) == "refused"
