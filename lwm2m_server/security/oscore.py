"""OSCORE (RFC 8613) contexts and the credentials of endpoints: values, limits and
sequence-number bookkeeping (sans-I/O). The aiocoap side lives in
:mod:`lwm2m_server.transport.oscore`.

One type, :class:`OscoreContext`, holds a context's parameters from one party's
point of view; the server's stored :class:`OscoreCredential` is one (plus its
endpoint), and the Bootstrap-Server writes its :meth:`~OscoreContext.reversed` view
to the device. An endpoint's OSCORE credential holds what LwM2M's OSCORE object
(/21) gives the device, seen from the server: the Master Secret and Master Salt, the ID Context,
the AEAD and HKDF algorithms, and two identifiers. **Sender ID** and **Recipient
ID** here are the *server's*: the server's Recipient ID is the device's Sender ID
(/21/x/1, the ``kid`` in the device's requests), and the server's Sender ID is the
device's Recipient ID (/21/x/2).

The server knows a device by the context its requests verify under; the identity
that stands for it (in registrations, logs and the rules of
:mod:`lwm2m_server.core.identity`) is
``oscore:<recipient id in hex>``. PSK identities cannot start with ``oscore:``, so
the two kinds never name each other.

Nonces must never repeat under one key: the sender sequence number goes up by one
per protected message, and it is reserved ahead in growing steps before use
(RFC 8613 Appendix B.1.1), so after a crash the server resumes above anything it
may have sent. The state is keyed by a fingerprint of the context's parameters,
not by the credential row: removing a credential and adding the same one again
resumes where it stopped instead of starting at 0.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

IDENTITY_PREFIX = "oscore:"
DEFAULT_AEAD = 10
"""AES-CCM-16-64-128 (COSE algorithm 10), the RFC 8613 default."""
DEFAULT_HKDF = -10
"""HKDF SHA-256 (COSE algorithm -10), the RFC 8613 default."""
AEAD_ALGORITHMS: dict[int, tuple[str, int]] = {
    10: ("AES-CCM-16-64-128", 13), 11: ("AES-CCM-16-64-256", 13),
    12: ("AES-CCM-64-64-128", 7), 13: ("AES-CCM-64-64-256", 7),
    30: ("AES-CCM-16-128-128", 13), 31: ("AES-CCM-16-128-256", 13),
    32: ("AES-CCM-64-128-128", 7), 33: ("AES-CCM-64-128-256", 7),
    1: ("A128GCM", 12), 2: ("A192GCM", 12), 3: ("A256GCM", 12), 24: ("ChaCha20/Poly1305", 12),
}
"""COSE AEAD algorithm number (RFC 9053) → (name, nonce length in bytes)."""
HKDF_ALGORITHMS: dict[int, str] = {-10: "sha256", -11: "sha512"}
"""COSE HKDF algorithm number → hash function."""
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64
MAX_SALT_BYTES = 64
MAX_ID_CONTEXT_BYTES = 64
MAX_SEQUENCE_NUMBER = (1 << 40) - 1
"""The Partial IV is at most 5 bytes (RFC 8613 §7.2.1)."""


class OscoreCredentialError(ValueError):
    """An OSCORE credential breaks a limit; ``reason`` names the field, never the secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def identity_for(recipient_id: bytes) -> str:
    """The identity of the device whose requests carry ``recipient_id`` as their kid."""
    return IDENTITY_PREFIX + recipient_id.hex()


def is_oscore_identity(identity: str | None) -> bool:
    return identity is not None and identity.startswith(IDENTITY_PREFIX)


@dataclass(frozen=True, slots=True)
class OscoreContext:
    """An OSCORE security context's parameters as one party holds them (RFC 8613
    §3.2): the Sender ID is the kid of this party's requests. The other party holds
    :meth:`reversed`. On a device these are its OSCORE object instance (/21/x)."""

    sender_id: bytes
    """This party's Sender ID (/21/x/1 on a device), the other's Recipient ID."""
    recipient_id: bytes
    """This party's Recipient ID (/21/x/2 on a device), the other's Sender ID."""
    master_secret: bytes = field(repr=False)
    """16..64 bytes (/21/x/0). Never shown in repr, logs, listings or API answers."""
    master_salt: bytes = field(default=b"", repr=False)
    """0..64 bytes (/21/x/5; empty: the RFC 8613 default)."""
    id_context: bytes | None = None
    """ID Context (/21/x/6), or None for none (an empty one is not none)."""
    aead: int = DEFAULT_AEAD
    """COSE AEAD algorithm number (/21/x/3)."""
    hkdf: int = DEFAULT_HKDF
    """COSE HKDF algorithm number (/21/x/4, the registry's HMAC Algorithm)."""

    def __post_init__(self) -> None:
        _validate_context(self)

    def reversed(self) -> OscoreContext:
        """The same context as the other party holds it: Sender and Recipient ID swapped."""
        return OscoreContext(self.recipient_id, self.sender_id, self.master_secret, self.master_salt,
                             self.id_context, self.aead, self.hkdf)

    def fingerprint(self) -> bytes:
        """SHA-256 over every parameter the keys and nonces derive from: the same
        context, however often stored, has the same fingerprint (and sequence state)."""
        digest = hashlib.sha256(b"tinymlaas oscore context v1")
        for part in (self.master_secret, self.master_salt, self.sender_id, self.recipient_id,
                     b"\xff" if self.id_context is None else b"\x00" + self.id_context,
                     self.aead.to_bytes(4, "big", signed=True), self.hkdf.to_bytes(4, "big", signed=True)):
            digest.update(len(part).to_bytes(4, "big") + part)
        return digest.digest()


@dataclass(frozen=True, slots=True, init=False)
class OscoreCredential(OscoreContext):
    """One endpoint's OSCORE context as the server stores it: the server's view (its
    Recipient ID is the device's Sender ID, unique within the store)."""

    endpoint: str = ""
    """The LwM2M endpoint name the credential belongs to."""
    created: float = 0.0
    """When it was stored (Unix time)."""

    scope = "server"
    """OSCORE credentials open the LwM2M server interface only."""
    mechanism = "oscore"

    def __init__(self, endpoint: str, sender_id: bytes, recipient_id: bytes, master_secret: bytes,
                 master_salt: bytes = b"", id_context: bytes | None = None, aead: int = DEFAULT_AEAD,
                 hkdf: int = DEFAULT_HKDF, created: float = 0.0) -> None:
        # the endpoint leads, as in every other credential
        for name, value in (("endpoint", endpoint), ("sender_id", sender_id), ("recipient_id", recipient_id),
                            ("master_secret", master_secret), ("master_salt", master_salt),
                            ("id_context", id_context), ("aead", aead), ("hkdf", hkdf), ("created", created)):
            object.__setattr__(self, name, value)
        endpoint_bytes = len(endpoint.encode("utf-8", "replace")) if isinstance(endpoint, str) else 0
        if not 0 < endpoint_bytes <= 255:
            raise OscoreCredentialError("endpoint: must be 1..255 bytes of text")
        _validate_context(self)
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created) \
                or created < 0:
            raise OscoreCredentialError(f"created: must be a finite Unix time >= 0, got {created!r}")

    @property
    def identity(self) -> str:
        return identity_for(self.recipient_id)

    def public(self) -> dict[str, Any]:
        """The credential without its secret or salt, for listings and API answers."""
        return {"endpoint": self.endpoint, "identity": self.identity, "scope": self.scope,
                "mechanism": self.mechanism, "sender_id": self.sender_id.hex(),
                "recipient_id": self.recipient_id.hex(),
                "id_context": None if self.id_context is None else self.id_context.hex(),
                "aead": self.aead, "hkdf": self.hkdf, "created": self.created}


def _bytes(value: Any, name: str, low: int, high: int) -> None:
    if not isinstance(value, bytes):
        raise OscoreCredentialError(f"{name}: must be bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise OscoreCredentialError(f"{name}: {len(value)} bytes, must be {low}..{high}")


def _validate_context(context: OscoreContext) -> None:
    """Raise :class:`OscoreCredentialError` naming the first field that breaks a limit."""
    if not isinstance(context.aead, int) or context.aead not in AEAD_ALGORITHMS:
        known = ", ".join(f"{number} ({name})" for number, (name, _) in AEAD_ALGORITHMS.items())
        raise OscoreCredentialError(f"aead: COSE algorithm {context.aead!r} is not supported; one of {known}")
    if not isinstance(context.hkdf, int) or context.hkdf not in HKDF_ALGORITHMS:
        raise OscoreCredentialError(f"hkdf: COSE algorithm {context.hkdf!r} is not supported; -10 or -11")
    longest_id = AEAD_ALGORITHMS[context.aead][1] - 6  # RFC 8613 §3.3: nonce length - 6
    _bytes(context.sender_id, "sender_id", 0, longest_id)
    _bytes(context.recipient_id, "recipient_id", 0, longest_id)
    if context.sender_id == context.recipient_id:
        raise OscoreCredentialError("sender_id and recipient_id must differ (RFC 8613 §3.3)")
    _bytes(context.master_secret, "master_secret", MIN_SECRET_BYTES, MAX_SECRET_BYTES)
    _bytes(context.master_salt, "master_salt", 0, MAX_SALT_BYTES)
    if context.id_context is not None:
        _bytes(context.id_context, "id_context", 0, MAX_ID_CONTEXT_BYTES)


@dataclass(frozen=True, slots=True)
class SequenceState:
    """What must outlive the process for one context."""

    reserved: int = 0
    """No sender sequence number below this may be used again (persisted before use)."""
    replay_window: dict | None = None
    """The recipient replay window as saved at a clean stop; None when unknown (the
    first request after a start is then answered 4.01 with Echo, RFC 8613 B.1.2)."""


class SequenceReservation:
    """Sender sequence numbers reserved ahead in growing steps (RFC 8613 B.1.1): a
    write before the first use of each step, so a crash loses at most a step of
    numbers and never reuses one. Steps double from ``first_step`` up to ``max_step``."""

    def __init__(self, reserved: int, first_step: int = 16, max_step: int = 4096) -> None:
        self.reserved = reserved
        self._step = first_step
        self._max_step = max_step

    def needs_reserving(self, next_number: int) -> int | None:
        """Before using numbers below ``next_number``: the new bound to persist first,
        or None when it is already reserved."""
        if next_number <= self.reserved:
            return None
        bound = max(next_number, self.reserved + self._step)
        self._step = min(self._step * 2, self._max_step)
        return bound

    def reserved_to(self, bound: int) -> None:
        """Record that ``bound`` is persisted."""
        self.reserved = max(self.reserved, bound)
