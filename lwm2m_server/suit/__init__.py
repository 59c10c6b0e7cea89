"""Inference modules: signed IETF SUIT envelopes (draft-ietf-suit-manifest), sans-I/O.

An inference module is a SUIT envelope whose manifest installs one model into one
component and carries the model's metadata (:mod:`.model_info`), signed with
COSE_Sign1 (ES256 or EdDSA, :mod:`.cose`). The server builds envelopes
(:func:`build_envelope`); devices, including the simulator, verify them
(:func:`verify_envelope`). This package imports nothing else from the server, so
the device side can use it alone. :mod:`.keys` generates and loads signing keys
(the only module here that touches files).

Modules: ``errors`` (the exception hierarchy), ``cose`` (COSE_Sign1 and strict
CBOR decoding), ``model_info`` (model metadata and where it lives in the
manifest), ``commands`` (command sequences, parameters, digests), ``manifest``
(envelope and manifest model, decoder, encoder, vendor/class ids),
``verify`` (the device-side checks), ``processor`` (running a verified manifest's
command sequences on a device), ``keys`` (key files).
"""

from .cose import Algorithm, PublicKey, SigningKey
from .errors import (
    AbortError,
    BuildError,
    ClassMismatchError,
    CommandError,
    CompatibilityError,
    ConditionFailedError,
    DigestMismatchError,
    FormatError,
    KeyFileError,
    PayloadError,
    ProcessingError,
    RollbackError,
    SeveredElementError,
    SignatureError,
    SizeMismatchError,
    SuitError,
    UnknownKeyError,
    UnsupportedError,
    VendorMismatchError,
)
from .keys import (
    KeyFiles,
    describe_key,
    generate_key_files,
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    load_trust_anchors,
    public_key_pem,
    write_signing_key,
)
from .commands import Command, ComponentParameters, Digest, Parameters
from .manifest import (
    DEFAULT_COMPONENT,
    DEFAULT_PAYLOAD_KEY,
    VENDOR_DOMAIN,
    VENDOR_ID,
    Envelope,
    LanguageText,
    Manifest,
    build_envelope,
    make_class_id,
    make_vendor_id,
    parse_envelope,
)
from .model_info import MODEL_INFO_KEY, ModelMetadata, Quantization, TensorSpec
from .verify import Image, VerifiedModule, verify_envelope, verify_payload
from .processor import INVOCATION, UPDATE, DeviceFacts, Outcome, process

__all__ = [
    "Algorithm", "PublicKey", "SigningKey",
    "BuildError", "ClassMismatchError", "CompatibilityError", "DigestMismatchError", "FormatError",
    "KeyFileError", "PayloadError", "RollbackError", "SeveredElementError", "SignatureError",
    "SizeMismatchError", "SuitError", "UnknownKeyError", "UnsupportedError", "VendorMismatchError",
    "KeyFiles", "describe_key", "generate_key_files", "generate_signing_key", "key_id",
    "load_private_key", "load_public_key", "load_trust_anchors", "public_key_pem",
    "write_signing_key",
    "DEFAULT_COMPONENT", "DEFAULT_PAYLOAD_KEY", "VENDOR_DOMAIN", "VENDOR_ID", "Command",
    "ComponentParameters", "Digest", "Envelope", "LanguageText", "Manifest", "Parameters",
    "build_envelope", "make_class_id", "make_vendor_id", "parse_envelope",
    "MODEL_INFO_KEY", "ModelMetadata", "Quantization", "TensorSpec",
    "Image", "VerifiedModule", "verify_envelope", "verify_payload",
    "AbortError", "CommandError", "ConditionFailedError", "ProcessingError",
    "INVOCATION", "UPDATE", "DeviceFacts", "Outcome", "process",
]  # fmt: skip
