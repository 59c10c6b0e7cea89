"""Verifying an envelope the way a device does before it installs an inference module.

Order (draft-ietf-suit-manifest, "Required Checks" and "Manifest Processor Setup"):

1. split the envelope and its authentication wrapper (FormatError / UnsupportedError);
2. the manifest must hash, bstr-wrapped, to the digest in the wrapper, and a
   COSE_Sign1 over that digest must verify with a trust anchor (SignatureError,
   UnknownKeyError) — before any byte of the manifest is parsed;
3. decode the manifest; delivered severed members must match their digests;
4. anti-rollback: the sequence number must be strictly greater than the one
   installed (RollbackError);
5. compatibility: the shared sequence must check the vendor and the class
   identifier, and every vendor / class id the manifest sets must be the
   device's (VendorMismatchError, ClassMismatchError);
6. the payload, when there is one (integrated in the envelope or passed in after
   fetching it): length equal to the image size, then digest equal to the image
   digest (SizeMismatchError, DigestMismatchError).

For any input bytes, :func:`verify_envelope` returns or raises a
:class:`~lwm2m_server.suit.errors.SuitError`, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence
from uuid import UUID

import cbor2

from .cose import PublicKey, kid_for, verify_sign1
from .errors import (
    ClassMismatchError,
    CompatibilityError,
    DigestMismatchError,
    FormatError,
    RollbackError,
    SignatureError,
    SizeMismatchError,
    SuitError,
    UnknownKeyError,
    UnsupportedError,
    VendorMismatchError,
)
from .commands import (
    CLASS_IDENTIFIER,
    RUN_SEQUENCE,
    TRY_EACH,
    VENDOR_IDENTIFIER,
    CommandSequence,
    ComponentId,
    ComponentParameters,
    Digest,
)
from .manifest import Envelope, EnvelopeParts, assemble, decode_manifest, split_envelope
from .model_info import ModelMetadata


@dataclass(frozen=True, slots=True)
class Image:
    """The one image an inference module installs."""

    component: ComponentId
    """Component the image is installed into."""
    digest: Digest
    """Image digest from the manifest."""
    size: int | None
    """Image size from the manifest (None if the manifest sets none)."""
    uri: str | None
    """Where to fetch it; a ``#fragment`` names an integrated payload."""


@dataclass(frozen=True, slots=True)
class VerifiedModule:
    """An envelope that passed :func:`verify_envelope`."""

    envelope: Envelope
    """The decoded envelope."""
    key_id: str
    """Key id (16 hex digits) of the trust anchor whose signature verified."""
    sequence_number: int
    """Manifest sequence number, to store as the new installed one."""
    vendor_id: UUID
    """The (checked) vendor identifier."""
    class_id: UUID
    """The (checked) class identifier."""
    image: Image | None
    """The single image the manifest describes; None when it describes several
    (A/B slots, several components), which this verifier does not match payloads to."""
    payload: bytes | None
    """The payload, once checked against the image digest and size (integrated, or
    passed in); None until then."""
    metadata: ModelMetadata | None
    """Model metadata from the manifest, if it carries any."""

    @property
    def manifest_digest(self) -> bytes:
        """SHA-256 (or the wrapper's algorithm) of the bstr-wrapped manifest."""
        return self.envelope.manifest_digest.value


def _authenticate(parts: EnvelopeParts, trust_anchors: Sequence[PublicKey]) -> PublicKey:
    if not parts.authentication:
        raise SignatureError("the envelope has no authentication block")
    if not parts.manifest_digest.matches(cbor2.dumps(parts.manifest_bytes)):
        raise SignatureError("the manifest does not match the digest in the authentication wrapper")
    failures: list[SuitError] = []
    for block in parts.authentication:
        try:
            return verify_sign1(block, trust_anchors, detached_payload=parts.digest_bytes).key
        except (SignatureError, FormatError) as error:
            failures.append(error)
    for error in failures:
        if not isinstance(error, UnknownKeyError):
            raise error
    raise failures[0]


def _conditions(sequence: CommandSequence) -> set[int]:
    codes: set[int] = set()
    for command in sequence:
        codes.add(command.code)
        if command.code == TRY_EACH:
            for branch in command.argument:
                codes |= _conditions(branch or ())
        elif command.code == RUN_SEQUENCE:
            codes |= _conditions(command.argument)
    return codes


def _as_uuid(value: UUID | bytes) -> UUID:
    return value if isinstance(value, UUID) else UUID(bytes=bytes(value))


def _check_identity(
    shared: CommandSequence,
    parameters: tuple[ComponentParameters, ...],
    condition: int,
    expected: UUID,
    error: type[CompatibilityError],
) -> UUID:
    label = "vendor" if condition == VENDOR_IDENTIFIER else "class"
    if condition not in _conditions(shared):
        raise FormatError(f"the shared sequence does not check the {label} identifier")
    vendor = condition == VENDOR_IDENTIFIER
    found = [value for p in parameters for value in (p.vendor_ids if vendor else p.class_ids)]
    if not found:
        raise FormatError(f"the manifest sets no {label} identifier")
    for value in found:
        if value != expected:
            raise error(f"the manifest is for {label} {value}, this device's is {expected}")
    return expected


def _single_image(parameters: tuple[ComponentParameters, ...]) -> Image | None:
    with_digest = [p for p in parameters if p.digests]
    if len(with_digest) != 1:
        return None
    params = with_digest[0]
    if len(params.digests) != 1 or len(params.sizes) > 1 or len(params.uris) > 1:
        return None
    size = params.sizes[0] if params.sizes else None
    uri = params.uris[0] if params.uris else None
    return Image(params.component, params.digests[0], size, uri)


def verify_envelope(
    data: bytes,
    *,
    trust_anchors: Sequence[PublicKey],
    expected_vendor_id: UUID | bytes,
    expected_class_id: UUID | bytes,
    min_sequence_number: int | None,
    payload: bytes | None = None,
) -> VerifiedModule:
    """Authenticate and check an envelope; see the module docstring for the steps.

    ``min_sequence_number`` is the sequence number of the module installed now (None
    when there is none): the envelope's must be strictly greater. ``payload`` is a
    payload fetched from the manifest's URI, checked against its digest and size;
    an integrated payload is always checked. Without either, check the fetched bytes
    later with :func:`verify_payload`.
    """
    parts = split_envelope(data)
    anchor = _authenticate(parts, trust_anchors)
    envelope = assemble(parts, decode_manifest(parts.manifest_bytes))
    manifest = envelope.manifest
    if min_sequence_number is not None and manifest.sequence_number <= min_sequence_number:
        raise RollbackError(
            f"sequence number {manifest.sequence_number} is not greater than the installed "
            f"{min_sequence_number}",
            sequence_number=manifest.sequence_number,
            installed=min_sequence_number,
        )
    parameters = manifest.parameters()
    shared = manifest.shared_sequence
    vendor = _check_identity(
        shared, parameters, VENDOR_IDENTIFIER, _as_uuid(expected_vendor_id), VendorMismatchError
    )
    klass = _check_identity(
        shared, parameters, CLASS_IDENTIFIER, _as_uuid(expected_class_id), ClassMismatchError
    )
    image = _single_image(parameters)
    module = VerifiedModule(
        envelope=envelope,
        key_id=kid_for(anchor).hex(),
        sequence_number=manifest.sequence_number,
        vendor_id=vendor,
        class_id=klass,
        image=image,
        payload=None,
        metadata=manifest.model,
    )
    if image is not None and image.uri is not None:
        integrated = envelope.integrated_payloads.get(image.uri)
        if integrated is not None:
            module = verify_payload(module, integrated)
        elif image.uri.startswith("#"):
            raise FormatError(f"the integrated payload {image.uri!r} is not in the envelope")
    if payload is not None:
        module = verify_payload(module, payload)
    return module


def verify_payload(module: VerifiedModule, payload: Any) -> VerifiedModule:
    """Check a payload against the image size and digest; the module with ``payload`` set."""
    image = module.image
    if image is None:
        raise UnsupportedError("the manifest does not describe exactly one image to match a payload to")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise FormatError(f"payload: expected bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if image.size is not None and len(payload) != image.size:
        raise SizeMismatchError(f"payload is {len(payload)} bytes, the manifest says {image.size}")
    if not image.digest.matches(payload):
        raise DigestMismatchError("payload digest differs from the image digest in the manifest")
    return replace(module, payload=payload)
