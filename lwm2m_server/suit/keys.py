"""Signing keys for inference modules: generate, store as PEM, load, identify, describe.

A key pair is two files: the private key as unencrypted PKCS#8 PEM, mode 0600,
and beside it the public key (SubjectPublicKeyInfo PEM) under the same name with
``.pub.pem`` (``signing.pem`` -> ``signing.pub.pem``). Devices get the public key
as trust anchor. The key id is the first 16 hex digits of SHA-256 over the
public key's SubjectPublicKeyInfo DER; its first 8 bytes are the COSE ``kid`` of
every signature the key makes. Nothing here ever prints or returns the private
key except :func:`private_key_pem`, which writing the file needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .cose import Algorithm, PublicKey, SigningKey, algorithm_of, kid_for
from .errors import KeyFileError, UnsupportedError

PUBLIC_SUFFIX = ".pub.pem"
_ALGORITHM_NAMES = {"es256": Algorithm.ES256, "eddsa": Algorithm.EDDSA, "ed25519": Algorithm.EDDSA}
_DESCRIPTIONS = {Algorithm.ES256: "ECDSA P-256 with SHA-256", Algorithm.EDDSA: "EdDSA with Ed25519"}


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """Where a key pair was written."""

    private_path: Path
    """The private key PEM (mode 0600)."""
    public_path: Path
    """The public key PEM beside it."""
    key_id: str
    """The key id (16 hex digits)."""
    algorithm: Algorithm
    """ES256 or EdDSA."""


def parse_algorithm(name: str | int | Algorithm) -> Algorithm:
    """``"ES256"``, ``"EdDSA"`` (or ``"Ed25519"``), case-insensitive, or a COSE algorithm id."""
    if isinstance(name, str):
        found = _ALGORITHM_NAMES.get(name.lower())
        if found is not None:
            return found
    elif isinstance(name, int) and name in (-7, -8):
        return Algorithm(name)
    raise UnsupportedError(f"unknown signing algorithm {name!r} (ES256 or EdDSA)")


def generate_signing_key(algorithm: str | int | Algorithm = Algorithm.ES256) -> SigningKey:
    """A new private key for ES256 (P-256) or EdDSA (Ed25519)."""
    if parse_algorithm(algorithm) is Algorithm.ES256:
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def key_id(key: SigningKey | PublicKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER, hex, first 16 characters."""
    return kid_for(key).hex()


def _public(key: SigningKey | PublicKey) -> PublicKey:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        return key.public_key()
    return key


def public_key_pem(key: SigningKey | PublicKey) -> str:
    """The public key as SubjectPublicKeyInfo PEM text."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def private_key_pem(key: SigningKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (for writing the key file only)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_path_for(private_path: Path | str) -> Path:
    """``keys/signing.pem`` -> ``keys/signing.pub.pem`` (``.pub.pem`` appended otherwise)."""
    path = Path(private_path)
    stem = path.name[: -len(".pem")] if path.name.endswith(".pem") else path.name
    return path.with_name(stem + PUBLIC_SUFFIX)


def write_signing_key(key: SigningKey, path: Path | str, *, overwrite: bool = False) -> KeyFiles:
    """Write ``key`` to ``path`` (mode 0600) and its public key beside it."""
    algorithm = _checked_algorithm(key, str(path))
    private_path = Path(path)
    public_path = public_path_for(private_path)
    if not overwrite:
        for existing in (private_path, public_path):
            if existing.exists():
                raise KeyFileError(f"{existing}: already exists (refusing to overwrite a key)")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        descriptor = os.open(private_path, flags, 0o600)
    except OSError as error:
        raise KeyFileError(f"{private_path}: cannot write ({error.strerror})") from None
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)  # an overwritten file keeps its old mode otherwise
        file.write(private_key_pem(key))
    try:
        public_path.write_text(public_key_pem(key), encoding="ascii")
    except OSError as error:
        raise KeyFileError(f"{public_path}: cannot write ({error.strerror})") from None
    return KeyFiles(private_path, public_path, key_id(key), algorithm)


def generate_key_files(
    path: Path | str, algorithm: str | int | Algorithm = Algorithm.ES256, *, overwrite: bool = False
) -> KeyFiles:
    """Generate a key and write it with :func:`write_signing_key` (``keys generate``)."""
    return write_signing_key(generate_signing_key(algorithm), path, overwrite=overwrite)


def _read(source: Path | str | bytes) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "<bytes>"
    try:
        return Path(source).read_bytes(), str(source)
    except OSError as error:
        raise KeyFileError(f"{source}: cannot read ({error.strerror})") from None


def _checked_algorithm(key: object, where: str) -> Algorithm:
    try:
        return algorithm_of(key)  # type: ignore[arg-type]
    except UnsupportedError as error:
        raise KeyFileError(f"{where}: {error.reason}") from None


def _load(
    source: Path | str | bytes, password: bytes | None
) -> tuple[SigningKey | PublicKey, bool, str]:
    data, where = _read(source)
    if b"PRIVATE KEY-----" in data:
        try:
            key = serialization.load_pem_private_key(data, password)
        except TypeError:
            reason = "encrypted and no password given, or a password given for a plain key"
            raise KeyFileError(f"{where}: {reason}") from None
        except (ValueError, UnsupportedAlgorithm) as error:  # e.g. a curve OpenSSL lacks
            raise KeyFileError(f"{where}: not a usable PEM private key ({error})") from None
        _checked_algorithm(key, where)
        return key, True, where  # type: ignore[return-value]
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{where}: not a PEM public or private key") from None
    except UnsupportedAlgorithm as error:  # e.g. an EC key on a curve OpenSSL does not know
        raise KeyFileError(f"{where}: unsupported public key ({error})") from None
    _checked_algorithm(public, where)
    return public, False, where  # type: ignore[return-value]


def load_private_key(source: Path | str | bytes, password: bytes | None = None) -> SigningKey:
    """A signing key from a PEM file (path) or PEM bytes; KeyFileError otherwise."""
    key, private, where = _load(source, password)
    if not private:
        raise KeyFileError(f"{where}: holds a public key, a private key is needed to sign")
    return key  # type: ignore[return-value]


def load_public_key(source: Path | str | bytes) -> PublicKey:
    """A public key from a PEM public key, or the public half of a PEM private key."""
    key, _, _ = _load(source, None)
    return _public(key)


def load_trust_anchors(sources: Iterable[Path | str | bytes]) -> list[PublicKey]:
    """Public keys for ``verify_envelope(trust_anchors=...)``."""
    return [load_public_key(source) for source in sources]


def describe_key(path: Path | str) -> str:
    """Algorithm, key id and public key PEM of a key file (``keys show``); never the private key."""
    key, private, where = _load(path, None)
    algorithm = algorithm_of(key)
    kind = "private key (its public key is shown)" if private else "public key"
    return (
        f"file:      {where}\n"
        f"kind:      {kind}\n"
        f"algorithm: {algorithm.label} ({_DESCRIPTIONS[algorithm]})\n"
        f"key id:    {key_id(key)}\n"
        f"{public_key_pem(key)}"
    )
