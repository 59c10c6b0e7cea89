"""The six example envelopes of draft-ietf-suit-manifest (``../shared/suit-examples``).

Each ``exampleN.txt`` holds the envelope in CBOR diagnostic notation and in hex
(without, then with, the COSE authentication object; example 2 also without its
severable elements); ``exampleN.json`` is the input it was made from;
``signing_key_es256.pem`` is the P-256 key that signed them. The vendor and class
ids are UUID5(DNS, "arm.com") and UUID5(vendor, "suit") (example 2's text gives
"arm.com" as vendor domain and "suit" as model info).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from conftest import shared_folder
from lwm2m_server.suit import (
    ClassMismatchError,
    Digest,
    DigestMismatchError,
    Envelope,
    FormatError,
    RollbackError,
    SeveredElementError,
    SignatureError,
    SizeMismatchError,
    UnknownKeyError,
    VendorMismatchError,
    load_private_key,
    load_public_key,
    make_class_id,
    make_vendor_id,
    parse_envelope,
    public_key_pem,
    verify_envelope,
    verify_payload,
)

VENDOR = UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
DIGEST_A = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")
DIGEST_B = bytes.fromhex("0123456789abcdeffedcba987654321000112233445566778899aabbccddeeff")
EXAMPLES = range(6)


@dataclass(frozen=True)
class Example:
    number: int
    signed: bytes
    """The full envelope: with the COSE authentication object (and severable elements)."""
    unsigned: bytes
    """The envelope without the COSE authentication object (digest only)."""
    diag: str
    json: dict


def _hex_blocks(text: str) -> list[bytes]:
    return [bytes.fromhex(block.replace("\n", "")) for block in re.findall(r"~~~\n([0-9a-f\n]+)~~~", text)]


@pytest.fixture(scope="module")
def folder() -> Path:
    return shared_folder("suit-examples")


@pytest.fixture(scope="module")
def examples(folder: Path) -> dict[int, Example]:
    loaded = {}
    for number in EXAMPLES:
        text = (folder / f"example{number}.txt").read_text()
        blocks = _hex_blocks(text)
        loaded[number] = Example(
            number, blocks[-1], blocks[0], text, json.loads((folder / f"example{number}.json").read_text())
        )
    return loaded


@pytest.fixture(scope="module")
def key(folder: Path):
    return load_public_key(folder / "signing_key_es256.pem")


def verify(data: bytes, key, **overrides):
    arguments = dict(
        trust_anchors=[key], expected_vendor_id=VENDOR, expected_class_id=CLASS, min_sequence_number=None
    )
    arguments.update(overrides)
    return verify_envelope(data, **arguments)


def signed_digest(diag: str) -> bytes:
    """The manifest digest as the diagnostic notation shows it (the first digest-bytes)."""
    return bytes.fromhex(re.search(r"digest-bytes /\s*h'([0-9a-f]+)'", diag).group(1))


def test_the_identifiers_are_uuid5_of_the_vendor_domain_and_model_info():
    assert make_vendor_id("arm.com") == VENDOR
    assert make_class_id(VENDOR, "suit") == CLASS


def test_the_private_key_given_is_the_signing_key(folder, key):
    private = load_private_key(folder / "signing_key_es256.pem")
    assert private.public_key().public_numbers() == key.public_numbers()
    # the public key the draft publishes for verifying the examples
    assert public_key_pem(key) == (
        "-----BEGIN PUBLIC KEY-----\n"
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhJaBGq4LqqvSYVcYnuzaJr6qi/Eb\n"
        "bz/m4rVlnIXbwK07HypLbAmBMcCjbazR14vTgdzfsJwFLbM5kdtzOLSolg==\n"
        "-----END PUBLIC KEY-----\n"
    )


@pytest.mark.parametrize("number", EXAMPLES)
def test_every_example_verifies_with_the_example_key(examples, key, number):
    example = examples[number]
    module = verify(example.signed, key)
    assert module.sequence_number == example.json["manifest-sequence-number"] == number
    assert (module.vendor_id, module.class_id) == (VENDOR, CLASS)
    assert module.metadata is None and module.payload is None
    assert module.manifest_digest == signed_digest(example.diag)


@pytest.mark.parametrize("number", EXAMPLES)
def test_the_manifest_digest_covers_the_bstr_header(examples, number):
    envelope = parse_envelope(examples[number].signed)
    assert envelope.digest_matches()
    wrapped = cbor2.dumps(envelope.manifest_bytes)
    assert hashlib.sha256(wrapped).digest() == envelope.manifest_digest.value
    assert hashlib.sha256(envelope.manifest_bytes).digest() != envelope.manifest_digest.value


@pytest.mark.parametrize("number", EXAMPLES)
def test_decoded_fields_match_the_json_input(examples, number):
    example = examples[number]
    manifest = parse_envelope(example.signed).manifest
    assert manifest.version == example.json["manifest-version"] == 1
    assert manifest.sequence_number == example.json["manifest-sequence-number"]
    parameters = manifest.parameters()
    components = example.json["components"]
    digests = {Digest(-16, bytes.fromhex(c["install-digest"]["digest-bytes"])) for c in components}
    found = {d for p in parameters for d in p.digests}
    assert digests <= found and found <= {Digest(-16, DIGEST_A), Digest(-16, DIGEST_B)}
    assert {c["install-size"] for c in components} <= {s for p in parameters for s in p.sizes}
    assert {c["uri"] for c in components if "uri" in c} == {u for p in parameters for u in p.uris}
    vendors = {UUID(c["vendor-id"]) for c in components if "vendor-id" in c}
    assert vendors == {v for p in parameters for v in p.vendor_ids} == {VENDOR}
    classes = {UUID(c["class-id"]) for c in components if "class-id" in c}
    assert classes == {c for p in parameters for c in p.class_ids} == {CLASS}


def test_example0_secure_boot_has_one_image_and_no_uri(examples, key):
    module = verify(examples[0].signed, key)
    assert module.image.component == (b"\x00",)
    assert module.image.digest == Digest(-16, DIGEST_A)
    assert (module.image.size, module.image.uri) == (34768, None)
    manifest = module.envelope.manifest
    assert [c.code for c in manifest.shared_sequence] == [20, 1, 2]
    assert [c.code for c in manifest.validate] == [3]
    assert [(c.code, c.argument) for c in manifest.invoke] == [(23, 2)]
    assert manifest.install is None


def test_example1_fetches_from_a_uri(examples, key):
    module = verify(examples[1].signed, key)
    assert module.image.uri == "http://example.com/file.bin"
    assert [c.code for c in module.envelope.manifest.install] == [20, 21, 3]


def test_example2_severed_elements_are_restored_and_checked(examples, key):
    envelope = parse_envelope(examples[2].signed)
    assert envelope.severed == {20, 23}
    manifest = envelope.manifest
    assert manifest.reference_uri == "https://git.io/JJYoj"
    assert manifest.install[0].argument.uri == "http://example.com/very/long/path/to/file/file.bin"
    english = manifest.text["en-US"]
    assert english.manifest[1].startswith("## Example 2: Simultaneous Download")
    assert english.components[(b"\x00",)][3] == "arm.com"
    assert verify(examples[2].signed, key).image.uri == manifest.install[0].argument.uri


def test_example2_verifies_with_its_severable_elements_severed(examples, key):
    blocks = _hex_blocks(examples[2].diag)
    severed = blocks[1]  # with the authentication object, without severable elements
    envelope = parse_envelope(severed)
    assert envelope.severed == frozenset()
    assert envelope.manifest.install == Digest(-16, bytes.fromhex(
        "cfa90c5c58595e7f5119a72f803fd0370b3e6abbec6315cd38f63135281bc498"))
    assert envelope.manifest.text == Digest(-16, bytes.fromhex(
        "302196d452bce5e8bfeaf71e395645ede6d365e63507a081379721eeecf00007"))
    module = verify(severed, key)
    assert module.image.uri is None and module.sequence_number == 2


def test_a_tampered_severed_element_is_refused(examples, key):
    envelope = cbor2.loads(examples[2].signed)
    members = dict(envelope.value)
    text = cbor2.loads(members[23])
    text["en-US"][1] = "Install me, I am harmless."
    members[23] = cbor2.dumps(text)
    tampered = cbor2.dumps(cbor2.CBORTag(107, members))
    with pytest.raises(SeveredElementError):
        parse_envelope(tampered)
    with pytest.raises(SignatureError):
        verify(tampered, key)


def test_example3_ab_slots_list_both_images(examples, key):
    module = verify(examples[3].signed, key)
    assert module.image is None  # two candidate images: the device picks by slot
    (component,) = module.envelope.manifest.parameters()
    assert component.slots == (0, 1)
    assert component.digests == (Digest(-16, DIGEST_A), Digest(-16, DIGEST_B))
    assert component.sizes == (34768, 76834)
    assert component.uris == ("http://example.com/file1.bin", "http://example.com/file2.bin")


def test_example4_load_from_external_storage(examples, key):
    manifest = verify(examples[4].signed, key).envelope.manifest
    assert manifest.components == ((b"\x00",), (b"\x02",), (b"\x01",))
    install, download, loaded = manifest.parameters()
    assert download.uris == ("http://example.com/file.bin",)
    assert install.source_components == (1,) and loaded.source_components == (0,)
    assert loaded.digests == (Digest(-16, DIGEST_B),) and loaded.sizes == (76834,)
    assert [c.code for c in manifest.load] == [12, 20, 22, 3]
    assert [c.code for c in manifest.payload_fetch] == [12, 20, 21, 3]


def test_example5_two_images(examples, key):
    manifest = verify(examples[5].signed, key).envelope.manifest
    first, second = manifest.parameters()
    assert (first.uris, second.uris) == (("http://example.com/file1.bin",), ("http://example.com/file2.bin",))
    assert (first.sizes, second.sizes) == ((34768,), (76834,))


@pytest.mark.parametrize("number", EXAMPLES)
def test_without_the_cose_object_nothing_verifies(examples, key, number):
    unsigned = examples[number].unsigned
    assert parse_envelope(unsigned).authentication == ()
    with pytest.raises(SignatureError, match="no authentication block"):
        verify(unsigned, key)


def _span(data: bytes, part: bytes) -> range:
    start = data.index(part)
    assert data.find(part, start + 1) == -1
    return range(start, start + len(part))


def _flipped(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


@pytest.mark.parametrize("number", EXAMPLES)
def test_any_flipped_signature_byte_is_refused(examples, key, number):
    data = examples[number].signed
    signature = parse_envelope(data).authentication[0].signature
    for position in _span(data, signature):
        with pytest.raises(SignatureError):
            verify(_flipped(data, position), key)


@pytest.mark.parametrize("number", EXAMPLES)
def test_flipped_manifest_or_digest_bytes_are_refused(examples, key, number):
    data = examples[number].signed
    envelope = parse_envelope(data)
    manifest = _span(data, envelope.manifest_bytes)
    positions = list(manifest[::5]) + [manifest[-1]] + list(_span(data, envelope.manifest_digest.value))
    for position in positions:
        with pytest.raises(SignatureError):
            verify(_flipped(data, position), key)


@pytest.mark.parametrize("number", EXAMPLES)
def test_compatibility_and_rollback_are_checked(examples, key, number):
    data = examples[number].signed
    assert verify(data, key, min_sequence_number=number - 1).sequence_number == number
    with pytest.raises(RollbackError):
        verify(data, key, min_sequence_number=number)
    with pytest.raises(VendorMismatchError):
        verify(data, key, expected_vendor_id=make_vendor_id("example.org"))
    with pytest.raises(ClassMismatchError):
        verify(data, key, expected_class_id=make_class_id(VENDOR, "other"))


def test_other_keys_do_not_verify(examples):
    data = examples[0].signed
    with pytest.raises(SignatureError):
        verify(data, ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(UnknownKeyError):  # no ES256 key among the anchors at all
        verify(data, ed25519.Ed25519PrivateKey.generate().public_key())


def test_a_payload_is_checked_against_the_example_digest_and_size(examples, key):
    module = verify(examples[0].signed, key)
    with pytest.raises(SizeMismatchError):
        verify_payload(module, b"\x00" * 100)
    with pytest.raises(DigestMismatchError):
        verify_payload(module, b"\x00" * 34768)


def test_envelope_is_a_typed_value(examples):
    envelope = parse_envelope(examples[1].signed)
    assert isinstance(envelope, Envelope)
    assert envelope.authentication[0].algorithm == -7 and envelope.authentication[0].kid is None
    with pytest.raises(FormatError):
        parse_envelope(examples[1].signed + b"\x00")
