"""SUIT envelopes (draft-ietf-suit-manifest): typed model, strict decoder, encoder, identifiers.

An inference module is a SUIT envelope (CBOR tag 107)::

    107({ 2: << [ << [-16, manifest-digest] >>, << COSE_Sign1 >> ] >>,   ; authentication wrapper
          3: << manifest >>,
          "#model": model-bytes })                                        ; only if integrated

with this manifest (labels of the draft; ``<< >>`` is a bstr-wrapped item)::

    { 1: 1,                                  ; manifest version
      2: sequence-number,                    ; anti-rollback counter
      3: << { 2: [component-id],             ; common: one component
              4: << [ 20, {1: vendor-id, 2: class-id, 3: << [-16, image-digest] >>, 14: image-size},
                      1, 15,                 ; condition vendor identifier
                      2, 15 ] >> } >>,       ; condition class identifier
      7: << [3, 15] >>,                      ; validate: condition image match
      9: << [23, 2] >>,                      ; invoke: activate the model
      20: << [20, {21: uri}, 21, 2, 3, 15] >>,   ; install: set URI, fetch, image match
      -26241: << model metadata >> }         ; see model_info.py for why here

The payload is either fetched from ``uri`` or integrated in the envelope under a
text key that is also the URI, a fragment-only reference (``"#model"``), as the
draft's Integrated Payload template says. The manifest digest is SHA-256 over the
bstr-wrapped manifest (its CBOR byte-string header included), and the COSE_Sign1
signs that digest's encoding as detached payload.

:func:`parse_envelope` decodes any envelope of the draft that uses what is
implemented here (single-signer COSE_Sign1, SHA-2 digests, every command and
parameter of the CDDL except PEN vendor ids), including severed elements, which
are matched against their digests. It does not check the signature: see
:func:`lwm2m_server.suit.verify.verify_envelope`. Maps are written in canonical
CBOR order, as the draft requires.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping
from uuid import UUID

import cbor2

from .commands import (
    CLASS_IDENTIFIER,
    FETCH,
    IMAGE_MATCH,
    INVOKE_DIRECTIVE,
    OVERRIDE_PARAMETERS,
    P_CLASS_ID,
    P_IMAGE_DIGEST,
    P_IMAGE_SIZE,
    P_URI,
    P_VENDOR_ID,
    REPORT_ALL,
    REPORT_ON_FAILURE,
    SHA256,
    VENDOR_IDENTIFIER,
    CommandSequence,
    ComponentId,
    ComponentParameters,
    Digest,
    as_bytes,
    as_uint,
    component_parameters,
    decode_digest,
    decode_wrapped,
)
from .cose import SigningKey, Sign1, decode_sign1, expect, is_int, is_uint, kid_for, loads, sign1
from .cose import type_name
from .errors import BuildError, FormatError, SeveredElementError, UnsupportedError
from .model_info import MODEL_INFO_KEY, ModelMetadata, decode_model_info, encode_model_info

TAG_ENVELOPE = 107
AUTHENTICATION, MANIFEST = 2, 3
VERSION, SEQUENCE_NUMBER, COMMON, REFERENCE_URI = 1, 2, 3, 4
VALIDATE, LOAD, INVOKE, PAYLOAD_FETCH, INSTALL, TEXT = 7, 8, 9, 16, 20, 23
SEVERABLE = (PAYLOAD_FETCH, INSTALL, TEXT)
COMPONENTS, SHARED_SEQUENCE = 2, 4

VENDOR_DOMAIN = "tinymlaas.example"
DEFAULT_COMPONENT: tuple[bytes, ...] = (b"tinymlaas", b"model")
DEFAULT_PAYLOAD_KEY = "#model"
_LANGUAGE_TAG = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")


def make_vendor_id(domain: str = VENDOR_DOMAIN) -> UUID:
    """Vendor ID as the draft recommends: UUID5(NAMESPACE_DNS, vendor domain name)."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, domain)


def make_class_id(vendor_id: UUID, device_class: str) -> UUID:
    """Class ID as the draft recommends: UUID5(vendor ID, class-specific information).

    TinyMLaaS device classes are strings such as ``tflm-2.x/cortex-m4f/ops:<hash>``.
    """
    return uuid.uuid5(vendor_id, device_class)


VENDOR_ID = make_vendor_id()
"""The TinyMLaaS vendor ID, UUID5(NAMESPACE_DNS, "tinymlaas.example")."""


# --- the typed model ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LanguageText:
    """One language of suit-text."""

    manifest: dict[int, str]
    """Manifest-wide text by label (1 manifest description, 2 update description, ...)."""
    components: dict[ComponentId, dict[int, str]]
    """Per-component text by label (1 vendor name, ... 6 component version)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A decoded SUIT_Manifest. Severable members are a :class:`Digest` when severed
    and not delivered in the envelope."""

    version: int
    sequence_number: int
    components: tuple[ComponentId, ...]
    shared_sequence: CommandSequence
    reference_uri: str | None = None
    validate: CommandSequence | None = None
    load: CommandSequence | None = None
    invoke: CommandSequence | None = None
    payload_fetch: CommandSequence | Digest | None = None
    install: CommandSequence | Digest | None = None
    text: dict[str, LanguageText] | Digest | None = None
    model: ModelMetadata | None = None
    """TinyMLaaS model metadata (manifest member -26241), if present."""

    def sequences(self) -> Iterator[tuple[str, CommandSequence]]:
        """The command sequences present (not severed), in Update then Invocation order."""
        yield "shared", self.shared_sequence
        for name in ("payload_fetch", "install", "validate", "load", "invoke"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                yield name, value

    def parameters(self) -> tuple[ComponentParameters, ...]:
        """Every parameter value the sequences assign, per component."""
        return component_parameters(self.components, (sequence for _, sequence in self.sequences()))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded SUIT envelope (structure only: nothing here has been authenticated)."""

    manifest: Manifest
    """The manifest, with delivered severed members restored."""
    manifest_bytes: bytes
    """The manifest exactly as carried (content of the bstr at key 3)."""
    manifest_digest: Digest
    """The digest the authentication wrapper claims for the manifest."""
    digest_bytes: bytes
    """The encoded SUIT_Digest, the detached payload every authentication block signs."""
    authentication: tuple[Sign1, ...]
    """The COSE_Sign1 authentication blocks, in order."""
    integrated_payloads: dict[str, bytes]
    """Integrated payloads by envelope key (a URI, e.g. ``"#model"``)."""
    severed: frozenset[int]
    """Severable members (16, 20, 23) that were carried in the envelope."""

    def digest_matches(self) -> bool:
        """Whether the manifest hashes (bstr-wrapped) to :attr:`manifest_digest`."""
        return self.manifest_digest.matches(cbor2.dumps(self.manifest_bytes))


# --- decoding ------------------------------------------------------------------------------


def _decode_common(data: Any) -> tuple[tuple[ComponentId, ...], CommandSequence]:
    what = "common"
    common = expect(loads(as_bytes(data, what), what), dict, what)
    for key in common:
        if not is_int(key) or key not in (COMPONENTS, SHARED_SEQUENCE):
            _unknown_member(key, what)
    if COMPONENTS not in common:
        raise FormatError(f"{what}: no components")
    listed = expect(common[COMPONENTS], list, f"{what} components")
    if not listed:
        raise FormatError(f"{what}: at least one component is required")
    components = []
    for position, identifier in enumerate(listed):
        parts = expect(identifier, list, f"{what} component {position}")
        components.append(tuple(as_bytes(p, f"{what} component {position}") for p in parts))
    if len(set(components)) != len(components):
        raise FormatError(f"{what}: component identifiers must be distinct")
    shared: CommandSequence = ()
    if SHARED_SEQUENCE in common:
        shared = decode_wrapped(common[SHARED_SEQUENCE], len(components), True, -1, "shared sequence")
    return tuple(components), shared


def _unknown_member(key: Any, what: str) -> None:
    if is_int(key):
        raise UnsupportedError(f"{what}: member {key} is not supported")
    raise FormatError(f"{what}: member labels are integers, got {type_name(key)}")


def _decode_text(data: Any, components: tuple[ComponentId, ...]) -> dict[str, LanguageText]:
    what = "text"
    languages = expect(loads(as_bytes(data, what), what), dict, what)
    if not languages:
        raise FormatError(f"{what}: at least one language is required")
    text: dict[str, LanguageText] = {}
    for tag, entries in languages.items():
        if not isinstance(tag, str) or not _LANGUAGE_TAG.fullmatch(tag):
            raise FormatError(f"{what}: {tag!r} is not a language tag")
        manifest_text: dict[int, str] = {}
        component_text: dict[ComponentId, dict[int, str]] = {}
        for key, entry in expect(entries, dict, f"{what} {tag}").items():
            if is_int(key):
                manifest_text[key] = expect(entry, str, f"{what} {tag} {key}")
                continue
            if not isinstance(key, tuple) or not all(isinstance(p, bytes) for p in key):
                raise FormatError(f"{what} {tag}: keys are integers or component identifiers")
            if key not in components:
                raise FormatError(f"{what} {tag}: component {list(key)} is not in the manifest")
            fields = expect(entry, dict, f"{what} {tag} component")
            for label, value in fields.items():
                if not is_int(label):
                    raise FormatError(f"{what} {tag} component: labels are integers")
                expect(value, str, f"{what} {tag} component {label}")
            component_text[key] = dict(fields)
        text[tag] = LanguageText(manifest_text, component_text)
    return text


def decode_manifest(data: bytes) -> Manifest:
    """A SUIT_Manifest from its encoded bytes (the content of envelope key 3)."""
    what = "manifest"
    members = expect(loads(data, what), dict, what)
    known = {VERSION, SEQUENCE_NUMBER, COMMON, REFERENCE_URI, VALIDATE, LOAD, INVOKE,
             PAYLOAD_FETCH, INSTALL, TEXT, MODEL_INFO_KEY}  # fmt: skip
    for key in members:
        if not is_int(key) or key not in known:
            _unknown_member(key, what)
    for key, name in ((VERSION, "version"), (SEQUENCE_NUMBER, "sequence number"), (COMMON, "common")):
        if key not in members:
            raise FormatError(f"{what}: no {name}")
    version = members[VERSION]
    if not is_int(version):
        raise FormatError(f"{what}: version must be an integer")
    if version != 1:
        raise UnsupportedError(f"{what}: version {version} is not supported (1)")
    sequence_number = as_uint(members[SEQUENCE_NUMBER], f"{what} sequence number")
    components, shared = _decode_common(members[COMMON])
    count = len(components)

    def sequence(key: int, name: str) -> CommandSequence | None:
        return decode_wrapped(members[key], count, False, -1, name) if key in members else None

    def severable(key: int, name: str, read: Callable[[Any], Any]) -> Any:
        if key not in members:
            return None
        value = members[key]
        return decode_digest(value, f"{name} digest") if isinstance(value, list) else read(value)

    reference_uri = None
    if REFERENCE_URI in members:
        reference_uri = expect(members[REFERENCE_URI], str, f"{what} reference URI")
    model = None
    if MODEL_INFO_KEY in members:
        model = decode_model_info(as_bytes(members[MODEL_INFO_KEY], "model metadata"))
    return Manifest(
        version=version,
        sequence_number=sequence_number,
        components=components,
        shared_sequence=shared,
        reference_uri=reference_uri,
        validate=sequence(VALIDATE, "validate"),
        load=sequence(LOAD, "load"),
        invoke=sequence(INVOKE, "invoke"),
        payload_fetch=severable(PAYLOAD_FETCH, "payload fetch",
                                lambda v: decode_wrapped(v, count, False, -1, "payload fetch")),
        install=severable(INSTALL, "install",
                          lambda v: decode_wrapped(v, count, False, -1, "install")),
        text=severable(TEXT, "text", lambda v: _decode_text(v, components)),
        model=model,
    )


@dataclass(frozen=True, slots=True)
class EnvelopeParts:
    """An envelope split into its members, before the manifest is decoded."""

    manifest_bytes: bytes
    digest_bytes: bytes
    manifest_digest: Digest
    authentication: tuple[Sign1, ...]
    severable: dict[int, bytes]
    integrated_payloads: dict[str, bytes]


_UNSUPPORTED_BLOCKS = {98: "COSE_Sign", 97: "COSE_Mac", 17: "COSE_Mac0"}


def split_envelope(data: bytes) -> EnvelopeParts:
    """Decode the envelope and its authentication wrapper, not the manifest."""
    item = loads(data, "envelope")
    if not isinstance(item, cbor2.CBORTag) or item.tag != TAG_ENVELOPE:
        raise FormatError(f"envelope: expected tag {TAG_ENVELOPE} (SUIT_Envelope), got {type_name(item)}")
    members = expect(item.value, dict, "envelope")
    payloads: dict[str, bytes] = {}
    for key, value in members.items():
        if isinstance(key, str):
            payloads[key] = as_bytes(value, f"integrated payload {key!r}")
        elif is_int(key) and key in (AUTHENTICATION, MANIFEST, *SEVERABLE):
            as_bytes(value, f"envelope member {key}")
        else:
            _unknown_member(key, "envelope")
    if AUTHENTICATION not in members or MANIFEST not in members:
        raise FormatError("envelope: needs an authentication wrapper (2) and a manifest (3)")
    order = list(members)
    if order.index(AUTHENTICATION) > order.index(MANIFEST):
        raise FormatError("envelope: the authentication wrapper must come before the manifest")
    what = "authentication wrapper"
    wrapper = expect(loads(members[AUTHENTICATION], what), list, what)
    if not wrapper:
        raise FormatError("authentication wrapper: the manifest digest is missing")
    digest_bytes = as_bytes(wrapper[0], "authentication wrapper digest")
    digest = decode_digest(loads(digest_bytes, "manifest digest"), "manifest digest")
    blocks = []
    for position, block in enumerate(wrapper[1:]):
        what = f"authentication block {position}"
        decoded = loads(as_bytes(block, what), what)
        if isinstance(decoded, cbor2.CBORTag) and decoded.tag in _UNSUPPORTED_BLOCKS:
            raise UnsupportedError(f"{what}: {_UNSUPPORTED_BLOCKS[decoded.tag]} is not supported")
        blocks.append(decode_sign1(decoded, what))
    severable = {key: members[key] for key in SEVERABLE if key in members}
    return EnvelopeParts(members[MANIFEST], digest_bytes, digest, tuple(blocks), severable, payloads)


def assemble(parts: EnvelopeParts, manifest: Manifest) -> Envelope:
    """An :class:`Envelope` from its parts and decoded manifest; delivered severed members
    are checked against their digests (SeveredElementError) and restored."""
    names = {PAYLOAD_FETCH: "payload_fetch", INSTALL: "install", TEXT: "text"}
    restored: dict[str, Any] = {}
    for key, data in parts.severable.items():
        claimed = getattr(manifest, names[key])
        if not isinstance(claimed, Digest):
            raise FormatError(f"envelope: member {key} is carried but the manifest does not sever it")
        if not claimed.matches(cbor2.dumps(data)):
            raise SeveredElementError(f"severed member {key} does not match its digest in the manifest")
        if key == TEXT:
            restored[names[key]] = _decode_text(data, manifest.components)
        else:
            restored[names[key]] = decode_wrapped(data, len(manifest.components), False, -1, names[key])
    return Envelope(
        manifest=replace(manifest, **restored),
        manifest_bytes=parts.manifest_bytes,
        manifest_digest=parts.manifest_digest,
        digest_bytes=parts.digest_bytes,
        authentication=parts.authentication,
        integrated_payloads=parts.integrated_payloads,
        severed=frozenset(parts.severable),
    )


def parse_envelope(data: bytes) -> Envelope:
    """Decode an envelope without checking its signature (see ``verify_envelope``).

    Raises FormatError / UnsupportedError for malformed input, SeveredElementError
    when a delivered severed member does not match its digest.
    """
    parts = split_envelope(data)
    return assemble(parts, decode_manifest(parts.manifest_bytes))


# --- encoding ------------------------------------------------------------------------------


def build_envelope(
    payload_or_uri: bytes | str,
    *,
    digest: bytes | None = None,
    size: int | None = None,
    sequence_number: int,
    vendor_id: UUID,
    class_id: UUID,
    metadata: ModelMetadata | None,
    signing_key: SigningKey,
    integrated: bool | None = None,
    component: ComponentId = DEFAULT_COMPONENT,
    payload_key: str = DEFAULT_PAYLOAD_KEY,
    include_kid: bool = True,
    component_text: Mapping[int, str] | None = None,
) -> bytes:
    """A signed inference-module envelope (see the module docstring for its layout).

    ``payload_or_uri`` is the model bytes (``integrated``: carried in the envelope
    under ``payload_key``, which is also the URI) or the URI to fetch it from;
    ``integrated`` defaults to whether bytes were given. ``digest`` (SHA-256) and
    ``size`` are required for a URI and checked against the bytes when integrated.
    The COSE_Sign1 carries the key's ``kid`` unless ``include_kid`` is false.
    ``component_text`` (suit-text labels such as 5 description and 6 component
    version, in English) names a firmware image, which has no model metadata.
    Raises BuildError for inconsistent arguments.
    """
    if integrated is None:
        integrated = isinstance(payload_or_uri, (bytes, bytearray))
    if integrated:
        if not isinstance(payload_or_uri, (bytes, bytearray)):
            raise BuildError("an integrated payload must be bytes")
        if not payload_key.startswith("#") or len(payload_key) < 2:
            raise BuildError(f"payload_key must be a fragment-only URI like '#model', got {payload_key!r}")
        payload = bytes(payload_or_uri)
        actual = hashlib.sha256(payload).digest()
        if digest is not None and digest != actual:
            raise BuildError("digest does not match the integrated payload")
        if size is not None and size != len(payload):
            raise BuildError(f"size {size} does not match the integrated payload ({len(payload)} bytes)")
        digest, size, uri = actual, len(payload), payload_key
    else:
        if not isinstance(payload_or_uri, str) or not payload_or_uri:
            raise BuildError("a fetched payload needs a non-empty URI string")
        if digest is None or size is None:
            raise BuildError("digest and size are required for a payload fetched by URI")
        uri = payload_or_uri
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise BuildError("digest must be the 32-byte SHA-256 of the payload")
    if not is_uint(size) or not is_uint(sequence_number) or sequence_number >= 2**64:
        raise BuildError("size and sequence_number must be unsigned integers (below 2**64)")
    if not isinstance(vendor_id, UUID) or not isinstance(class_id, UUID):
        raise BuildError("vendor_id and class_id must be uuid.UUID values")
    if not component or not all(isinstance(part, bytes) for part in component):
        raise BuildError("component must be a non-empty tuple of bytes")

    def wrap(item: Any) -> bytes:
        return cbor2.dumps(item, canonical=True)

    image = {P_VENDOR_ID: vendor_id.bytes, P_CLASS_ID: class_id.bytes,
             P_IMAGE_DIGEST: Digest(SHA256, digest).encode(), P_IMAGE_SIZE: size}  # fmt: skip
    shared = [OVERRIDE_PARAMETERS, image, VENDOR_IDENTIFIER, REPORT_ALL, CLASS_IDENTIFIER, REPORT_ALL]
    install = [OVERRIDE_PARAMETERS, {P_URI: uri}, FETCH, REPORT_ON_FAILURE, IMAGE_MATCH, REPORT_ALL]
    manifest: dict[int, Any] = {
        VERSION: 1,
        SEQUENCE_NUMBER: sequence_number,
        COMMON: wrap({COMPONENTS: [list(component)], SHARED_SEQUENCE: wrap(shared)}),
        VALIDATE: wrap([IMAGE_MATCH, REPORT_ALL]),
        INVOKE: wrap([INVOKE_DIRECTIVE, REPORT_ON_FAILURE]),
        INSTALL: wrap(install),
    }
    if metadata is not None:
        manifest[MODEL_INFO_KEY] = encode_model_info(metadata)
    if component_text:
        if not all(is_int(label) and isinstance(value, str) for label, value in component_text.items()):
            raise BuildError("component_text maps integer suit-text labels to strings")
        manifest[TEXT] = wrap({"en": {tuple(component): dict(component_text)}})
    manifest_bytes = wrap(manifest)
    digest_bytes = Digest.of(cbor2.dumps(manifest_bytes)).encode()
    kid = kid_for(signing_key) if include_kid else None
    signature = sign1(digest_bytes, signing_key, detached=True, kid=kid)
    members: dict[Any, bytes] = {
        AUTHENTICATION: wrap([digest_bytes, signature]),
        MANIFEST: manifest_bytes,
    }
    if integrated:
        members[payload_key] = payload
    return cbor2.dumps(cbor2.CBORTag(TAG_ENVELOPE, members))
