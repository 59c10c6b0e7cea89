"""PSK credentials as values: tinydtls' limits, validation, keys written in hex.

Limits come from tinydtls, the DTLS library of many devices (Wakaama's, the
simulator's; the server's own DTLS has no such limit): the PSK identity buffer is
32 bytes (``DTLS_PSK_MAX_CLIENT_IDENTITY_LEN``) and the key buffer 16 bytes
(``DTLS_PSK_MAX_KEY_LEN``). tinydtls copies the key into that buffer without a
length check, so a longer key, which such a device could not hold, is refused here. The DTLS transport, the store, key files and the
simulator's devices all take the limits from here.
"""

from __future__ import annotations

import math
import secrets
import string
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .oscore import IDENTITY_PREFIX

MAX_KEY_BYTES = 16
"""tinydtls copies the key into a 16-byte buffer (DTLS_PSK_MAX_KEY_LEN) unchecked."""
MAX_IDENTITY_BYTES = 32
"""DTLS_PSK_MAX_CLIENT_IDENTITY_LEN."""
SCOPES = ("server", "bootstrap")
MAX_ENDPOINT_BYTES = 255


class CredentialError(Exception):
    """Invalid credential or input; ``reason`` says what is wrong (never the key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PskCredential:
    """One pre-shared key of one endpoint, for one scope."""

    mechanism = "psk"

    endpoint: str
    """The LwM2M endpoint name the credential belongs to."""
    identity: str
    """PSK identity the device presents in the handshake (1..32 bytes of UTF-8)."""
    key: bytes = field(repr=False)
    """The pre-shared key, 1..16 bytes. Never shown in repr, logs or errors."""
    scope: str = "server"
    """``server`` (LwM2M server) or ``bootstrap`` (bootstrap interface only)."""
    created: float = 0.0
    """When it was stored (Unix time)."""

    def __post_init__(self) -> None:
        validate(self)

    @property
    def psk(self) -> tuple[bytes, bytes]:
        """``(identity, key)`` as a DTLS client takes them."""
        return self.identity.encode("utf-8"), self.key

    def public(self) -> dict[str, Any]:
        """The credential without its key, for listings and API answers."""
        return {"endpoint": self.endpoint, "identity": self.identity, "scope": self.scope,
                "created": self.created}


def _text(value: Any, name: str, limit: int) -> None:
    if not isinstance(value, str):
        raise CredentialError(f"{name}: must be a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise CredentialError(f"{name}: is not valid Unicode (lone surrogate)") from None
    if size == 0:
        raise CredentialError(f"{name}: must not be empty")
    if size > limit:
        hint = " (tinydtls' PSK identity buffer, DTLS_PSK_MAX_CLIENT_IDENTITY_LEN)" if name == "identity" else ""
        raise CredentialError(f"{name}: {size} bytes in UTF-8, at most {limit}{hint}")
    for position, char in enumerate(value, 1):
        if unicodedata.category(char) == "Cc":
            raise CredentialError(f"{name}: control character U+{ord(char):04X} at character {position}")


def validate(credential: PskCredential) -> None:
    """Raise :class:`CredentialError` naming the first field that breaks a limit."""
    _text(credential.endpoint, "endpoint", MAX_ENDPOINT_BYTES)
    _text(credential.identity, "identity", MAX_IDENTITY_BYTES)
    if credential.identity.startswith(IDENTITY_PREFIX):
        raise CredentialError(f"identity: {IDENTITY_PREFIX!r} starts the identities of OSCORE credentials")
    key = credential.key
    if not isinstance(key, bytes):
        raise CredentialError(f"key: must be bytes, got {type(key).__name__}")
    if not key:
        raise CredentialError("key: must not be empty")
    if len(key) > MAX_KEY_BYTES:
        raise CredentialError(
            f"key: {len(key)} bytes, at most {MAX_KEY_BYTES}: tinydtls copies the PSK into a "
            f"{MAX_KEY_BYTES}-byte buffer (DTLS_PSK_MAX_KEY_LEN) without checking, so a longer "
            "key would overflow it"
        )
    if credential.scope not in SCOPES:
        raise CredentialError(f"scope: must be one of {', '.join(SCOPES)}, got {credential.scope!r}")
    created = credential.created
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created) \
            or created < 0:
        raise CredentialError(f"created: must be a finite Unix time >= 0, got {created!r}")


def parse_key(text: str) -> bytes:
    """Hex text (case-insensitive; an optional ``0x``; whitespace or ``:`` between
    bytes) as bytes. Errors name the position, never the text: it is a secret."""
    if not isinstance(text, str):
        raise CredentialError("key: must be hexadecimal text")
    stripped = text.lstrip()
    start = len(text) - len(stripped)
    if stripped[:2] in ("0x", "0X"):
        start += 2
    key = bytearray()
    high: str | None = None
    for position in range(start, len(text)):
        char = text[position]
        if char in string.hexdigits:
            if high is None:
                high = char
            else:
                key.append(int(high + char, 16))
                high = None
        elif char.isspace() or char == ":":
            if high is not None:
                raise CredentialError(f"key: separator inside a byte (character {position + 1})")
        else:
            raise CredentialError(f"key: not hexadecimal (character {position + 1})")
    if high is not None:
        raise CredentialError("key: odd number of hex digits (each byte is two)")
    if not key:
        raise CredentialError("key: empty")
    return bytes(key)


def generate_key() -> bytes:
    """A fresh random key of the largest size tinydtls takes (16 bytes)."""
    return secrets.token_bytes(MAX_KEY_BYTES)


def parse_hex(text: str, name: str, *, allow_empty: bool = False) -> bytes:
    """Hex text as bytes (see :func:`parse_key`), errors naming ``name``; ``""`` is
    empty bytes when ``allow_empty`` (an OSCORE id or salt may be empty)."""
    if allow_empty and isinstance(text, str) and not text.strip():
        return b""
    try:
        return parse_key(text)
    except CredentialError as error:
        raise CredentialError(name + error.reason[len("key"):]) from None


def _scope(scope: Any) -> None:
    if scope not in SCOPES:
        raise CredentialError(f"scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
