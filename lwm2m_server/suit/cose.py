"""COSE_Sign1 (RFC 9052 §4.4) on ``cbor2`` + ``cryptography``, and strict CBOR decoding.

``pycose`` does not work with cbor2 6.x, and the SUIT authentication wrapper
needs only a small, well specified part of COSE::

    COSE_Sign1 = #6.18([ protected: bstr .cbor header_map / bstr .size 0,
                         unprotected: header_map,
                         payload: bstr / nil,        ; nil = detached
                         signature: bstr ])
    Sig_structure = [ "Signature1", protected, external_aad: bstr, payload: bstr ]

The signature is computed over the CBOR encoding of ``Sig_structure``.
Algorithms: ES256 (-7, ECDSA P-256 with SHA-256; the signature is ``r || s``,
32 bytes each, not DER: RFC 9053 §2.1) and EdDSA (-8, Ed25519). The algorithm
must be in the protected bucket. ``kid`` (4) is a hint: the first 8 bytes of
SHA-256 over the key's SubjectPublicKeyInfo (see :func:`kid_for`); a verifier
given a ``kid`` tries only the trust anchor with that id.

:func:`loads` is the CBOR decoder of everything in this package that reads
untrusted bytes: definite lengths only, no duplicate map keys, a nesting limit,
no trailing bytes, and every tag kept as a plain :class:`cbor2.CBORTag` (no
dates, bignums, shared references...), so the only objects it produces are
ints, floats, bytes, str, bool, None, lists, dicts and tags. Any failure is a
:class:`FormatError`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Mapping, Sequence, TypeAlias

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import FormatError, SignatureError, UnknownKeyError, UnsupportedError

TAG_COSE_SIGN1 = 18
HEADER_ALG = 1
HEADER_CRIT = 2
HEADER_KID = 4
_UNDERSTOOD_HEADERS = frozenset({HEADER_ALG, HEADER_KID})
KID_LENGTH = 8
"""Bytes of SHA-256(SubjectPublicKeyInfo) used as ``kid`` (16 hex digits as key id)."""


class Algorithm(IntEnum):
    """COSE signature algorithms this package signs and verifies with (IANA COSE Algorithms)."""

    ES256 = -7
    EDDSA = -8

    @property
    def label(self) -> str:
        """The name COSE uses: ``ES256`` or ``EdDSA``."""
        return "ES256" if self is Algorithm.ES256 else "EdDSA"


SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

# --- strict CBOR -------------------------------------------------------------------------

MAX_DEPTH = 32
"""Deepest nesting accepted; SUIT structures nest a handful of levels per bstr wrapper."""

# cbor2 turns these tags into Python objects (dates, bignums, Fractions, shared
# references that can build cycles, ...). Decoding them as plain tags keeps the
# output to a small, predictable set of types.
_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100,
                  256, 258, 260, 261, 43000, 55799)  # fmt: skip


def _raw_tag(tag: int) -> Any:
    def keep(value: Any, immutable: bool) -> cbor2.CBORTag:
        return cbor2.CBORTag(tag, value)

    return keep


_RAW_TAGS = {tag: _raw_tag(tag) for tag in _SEMANTIC_TAGS}


def loads(data: Any, what: str) -> Any:
    """Decode exactly one CBOR data item from ``data``; ``what`` names it in errors."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_RAW_TAGS,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            read_size=1,
        )
        value = decoder.decode()
    except Exception as exc:  # cbor2 raises several types; none may escape as such
        raise FormatError(f"{what}: not valid CBOR ({exc})") from None
    if stream.tell() != len(data):
        raise FormatError(f"{what}: {len(data) - stream.tell()} bytes after the CBOR item")
    return _mutable(value)


def _mutable(value: Any) -> Any:
    """cbor2 decodes the content of tags immutably (tuples, frozendicts): make every
    array a list and every map a dict again, so tagged and untagged items look alike.
    Map keys stay as decoded (an array key is a tuple)."""
    if isinstance(value, (list, tuple)):
        return [_mutable(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _mutable(item) for key, item in value.items()}
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _mutable(value.value))
    return value


def is_int(value: Any) -> bool:
    """A CBOR integer (``bool`` is an ``int`` in Python but not in CBOR)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_uint(value: Any) -> bool:
    return is_int(value) and value >= 0


_TYPE_NAMES: dict[type, str] = {
    bool: "bool", int: "integer", float: "float", bytes: "bstr", str: "tstr",
    list: "array", dict: "map", type(None): "null", cbor2.CBORTag: "tag",
}  # fmt: skip


def type_name(value: Any) -> str:
    """How an unexpected value is named in an error."""
    if isinstance(value, cbor2.CBORTag):
        return f"tag {value.tag}"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is of ``kind`` (``int`` never matches a bool), else a FormatError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise FormatError(f"{what}: expected {wanted}, got {type_name(value)}")
    return value


# --- keys ----------------------------------------------------------------------------------


def kid_for(key: PublicKey | SigningKey) -> bytes:
    """The ``kid`` of a key: first 8 bytes of SHA-256 over its SubjectPublicKeyInfo (DER)."""
    spki = _public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:KID_LENGTH]


def algorithm_of(key: PublicKey | SigningKey) -> Algorithm:
    """The COSE algorithm a key signs with; UnsupportedError for other key types or curves."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return Algorithm.EDDSA
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return Algorithm.ES256
        raise UnsupportedError(f"EC curve {key.curve.name} is not supported (ES256 needs P-256)")
    raise UnsupportedError(f"{type(key).__name__} keys are not supported (ES256 or Ed25519)")


def _public(key: PublicKey | SigningKey) -> PublicKey:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        return key.public_key()
    return key


def _fits(key: PublicKey, alg: Algorithm) -> bool:
    try:
        return algorithm_of(key) is alg
    except UnsupportedError:
        return False


# --- COSE_Sign1 ---------------------------------------------------------------------------


def sig_structure(protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    """The bytes signed: CBOR of ``["Signature1", protected, external_aad, payload]``."""
    return cbor2.dumps(["Signature1", protected, external_aad, payload])


def sign1(
    payload: bytes,
    key: SigningKey,
    *,
    detached: bool = False,
    external_aad: bytes = b"",
    kid: bytes | None = None,
) -> bytes:
    """A tagged COSE_Sign1 over ``payload``; with ``detached`` the payload field is nil."""
    alg = algorithm_of(key)
    protected = cbor2.dumps({HEADER_ALG: int(alg)})
    to_be_signed = sig_structure(protected, external_aad, payload)
    if alg is Algorithm.ES256:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(to_be_signed, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        signature = key.sign(to_be_signed)
    unprotected = {HEADER_KID: kid} if kid is not None else {}
    body = [protected, unprotected, None if detached else payload, signature]
    return cbor2.dumps(cbor2.CBORTag(TAG_COSE_SIGN1, body))


@dataclass(frozen=True, slots=True)
class Sign1:
    """A decoded COSE_Sign1 (not yet verified)."""

    protected: bytes
    """The protected header bucket as serialized (what the signature covers)."""
    algorithm: int
    """The ``alg`` label from the protected header (see :class:`Algorithm`)."""
    kid: bytes | None
    """The ``kid`` header, from either bucket, if present."""
    unprotected: Mapping[Any, Any]
    """The unprotected header map."""
    payload: bytes | None
    """The embedded payload, or None when detached."""
    signature: bytes
    """The signature bytes (``r || s`` for ES256)."""


def _header_map(value: Any, what: str) -> dict[Any, Any]:
    headers = expect(value, dict, what)
    for label in headers:
        if not (is_int(label) or isinstance(label, str)):
            raise FormatError(f"{what}: header label must be int or tstr, got {type_name(label)}")
    return headers


def decode_sign1(data: bytes | cbor2.CBORTag, what: str = "COSE_Sign1") -> Sign1:
    """Decode a tagged COSE_Sign1 (bytes, or the already decoded tag 18)."""
    item = data if isinstance(data, cbor2.CBORTag) else loads(data, what)
    if not isinstance(item, cbor2.CBORTag) or item.tag != TAG_COSE_SIGN1:
        raise FormatError(f"{what}: expected tag {TAG_COSE_SIGN1} (COSE_Sign1), got {type_name(item)}")
    body = expect(item.value, list, what)
    if len(body) != 4:
        raise FormatError(f"{what}: expected 4 elements, got {len(body)}")
    protected_bytes, unprotected, payload, signature = body
    expect(protected_bytes, bytes, f"{what} protected header")
    protected: dict[Any, Any] = {}
    if protected_bytes:  # an empty bucket is encoded as a zero-length bstr
        protected = _header_map(loads(protected_bytes, f"{what} protected"), f"{what} protected header")
    unprotected = _header_map(unprotected, f"{what} unprotected header")
    if payload is not None:
        expect(payload, bytes, f"{what} payload")
    expect(signature, bytes, f"{what} signature")
    if set(protected) & set(unprotected):
        raise FormatError(f"{what}: a header label is in both the protected and the unprotected bucket")
    if HEADER_ALG in unprotected or HEADER_ALG not in protected:
        raise FormatError(f"{what}: the algorithm must be in the protected header")
    alg = protected[HEADER_ALG]
    if not is_int(alg):
        raise UnsupportedError(f"{what}: algorithm {alg!r} is not supported")
    if HEADER_CRIT in protected:
        crit = expect(protected[HEADER_CRIT], list, f"{what} crit header")
        unknown = [label for label in crit if not (is_int(label) and label in _UNDERSTOOD_HEADERS)]
        if not crit or unknown:
            raise UnsupportedError(f"{what}: critical headers {unknown or crit!r} are not understood")
    kid = protected.get(HEADER_KID, unprotected.get(HEADER_KID))
    if kid is not None:
        expect(kid, bytes, f"{what} kid")
    return Sign1(protected_bytes, alg, kid, unprotected, payload, signature)


@dataclass(frozen=True, slots=True)
class VerifiedSign1:
    """The outcome of a successful verification."""

    payload: bytes
    """The payload that was signed (embedded or detached)."""
    key: PublicKey
    """The trust anchor that verified the signature."""
    algorithm: Algorithm
    """The algorithm used."""


def _signature_valid(key: PublicKey, alg: Algorithm, signature: bytes, message: bytes) -> bool:
    try:
        if alg is Algorithm.ES256:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        else:
            assert isinstance(key, ed25519.Ed25519PublicKey)
            key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_sign1(
    message: bytes | Sign1,
    trust_anchors: Sequence[PublicKey],
    *,
    detached_payload: bytes | None = None,
    external_aad: bytes = b"",
) -> VerifiedSign1:
    """Verify a COSE_Sign1 with one of ``trust_anchors``.

    With a ``kid`` only the anchor of that id is tried (UnknownKeyError when there
    is none); without, every anchor of the right algorithm. Raises FormatError,
    UnsupportedError, UnknownKeyError or SignatureError.
    """
    sign = message if isinstance(message, Sign1) else decode_sign1(message)
    try:
        alg = Algorithm(sign.algorithm)
    except ValueError:
        raise UnsupportedError(f"COSE algorithm {sign.algorithm} is not supported (ES256, EdDSA)") from None
    if sign.payload is None and detached_payload is None:
        raise FormatError("COSE_Sign1 payload is detached but none was supplied")
    if sign.payload is not None and detached_payload is not None:
        raise FormatError("COSE_Sign1 has an embedded payload and a detached one was supplied")
    payload = sign.payload if sign.payload is not None else detached_payload
    assert payload is not None
    if len(sign.signature) != 64:
        raise FormatError(f"{alg.label} signature must be 64 bytes, got {len(sign.signature)}")
    trust_anchors = [_public(key) for key in trust_anchors]
    candidates = [key for key in trust_anchors if _fits(key, alg)]
    if sign.kid is not None:
        named = [key for key in trust_anchors if kid_for(key) == sign.kid]
        if not named:
            raise UnknownKeyError(f"no trusted key has key id {sign.kid.hex()}")
        candidates = [key for key in named if _fits(key, alg)]
        if not candidates:
            raise SignatureError(f"trusted key {sign.kid.hex()} is not an {alg.label} key")
    if not candidates:
        raise UnknownKeyError(f"no trusted {alg.label} key")
    to_be_signed = sig_structure(sign.protected, external_aad, payload)
    for key in candidates:
        if _signature_valid(key, alg, sign.signature, to_be_signed):
            return VerifiedSign1(payload, key, alg)
    if sign.kid is not None:
        raise SignatureError(f"{alg.label} signature does not verify with trusted key {sign.kid.hex()}")
    count = len(candidates)
    raise SignatureError(f"{alg.label} signature does not verify with any of {count} trusted keys")
