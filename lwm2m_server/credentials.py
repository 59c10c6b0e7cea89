"""The security store: per-endpoint DTLS 1.2 pre-shared keys (PSK), in a SQLite file.

A device authenticates with a PSK identity and key. A ``server`` credential admits
it to the LwM2M server (``/rd``, ``/dp`` and server→device requests); a
``bootstrap`` credential admits it only to the bootstrap interface (``/bs``).
Each identity names exactly one credential, so the DTLS layer can ask
:meth:`CredentialStore.by_identity` during a handshake.

Limits come from tinydtls (the DTLS library behind aiocoap's CoAPS): the PSK
identity buffer is 32 bytes (``DTLS_PSK_MAX_CLIENT_IDENTITY_LEN``) and the key
buffer 16 bytes (``DTLS_PSK_MAX_KEY_LEN``; its only cipher suite is
TLS_PSK_WITH_AES_128_CCM_8). tinydtls copies the key into that buffer without a
length check, so a longer key is refused here, never stored.

The file is created with mode 0600 before SQLite opens it; SQLite creates its
``-wal`` and ``-shm`` files with the permissions of the database file, so they
are 0600 too. An existing file readable by others is tightened to 0600 (with a
warning). Every call is synchronous and short (one indexed statement) and reads
afresh, so a credential added by the CLI in another process is seen by the
running daemon at the next lookup. Keys never appear in ``repr``, logs or errors.
The store logs only warnings; its callers (API, CLI) report the changes they make.
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
import stat
import string
import threading
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field, replace as with_changes
from pathlib import Path
from typing import Any, Iterator

import structlog

SCOPES = ("server", "bootstrap")
MAX_ENDPOINT_BYTES = 255
MAX_IDENTITY_BYTES = 32  # tinydtls DTLS_PSK_MAX_CLIENT_IDENTITY_LEN
MAX_KEY_BYTES = 16  # tinydtls DTLS_PSK_MAX_KEY_LEN
SCHEMA_VERSION = 1
BUSY_TIMEOUT = 2.0

log = structlog.get_logger("lwm2m_server.credentials")


class CredentialError(Exception):
    """Invalid credential or input; ``reason`` says what is wrong (never the key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CredentialConflict(CredentialError):
    """The identity, or the endpoint and scope, already has a credential."""

    def __init__(self, reason: str, field: str) -> None:
        super().__init__(reason)
        self.field = field
        """``"identity"`` or ``"endpoint"``: which one is taken."""


class CredentialStorageError(CredentialError):
    """The store's file cannot be used; the reason names the path and the problem."""


@dataclass(frozen=True, slots=True)
class PskCredential:
    """One pre-shared key of one endpoint, for one scope."""

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


_SCHEMA = """
CREATE TABLE credentials (
    endpoint TEXT NOT NULL,
    scope    TEXT NOT NULL CHECK (scope IN ('server', 'bootstrap')),
    identity TEXT NOT NULL UNIQUE CHECK (length(CAST(identity AS BLOB)) BETWEEN 1 AND 32),
    key      BLOB NOT NULL CHECK (typeof(key) = 'blob' AND length(key) BETWEEN 1 AND 16),
    created  REAL NOT NULL,
    PRIMARY KEY (endpoint, scope)
)"""
_COLUMNS = "endpoint, identity, key, scope, created"
_HINTS = {
    "SQLITE_NOTADB": "the file is not a SQLite database",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_READONLY": "the database or its folder is read-only",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_CANTOPEN": "cannot open the file (missing folder or no permission?)",
    "SQLITE_BUSY": f"another process held the database lock for {BUSY_TIMEOUT:g} s",
    "SQLITE_IOERR": "I/O error",
}


class CredentialStore:
    """PSK credentials in the SQLite file ``path`` (created with its folders)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        created = self._create_private_file()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise self._error("open", error) from None
        try:
            self._prepare()
        except BaseException:
            self._db.close()
            self._db = None
            raise
        if not created:
            self._tighten_mode()

    def _create_private_file(self) -> bool:
        """Create the file (and folders) with mode 0600 unless it exists; True if created."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if not self.path.is_file():
                    raise IsADirectoryError(21, "not a regular file") from None
                return False
            try:
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            finally:
                os.close(fd)
            return True
        except OSError as error:
            raise CredentialStorageError(
                f"credentials store {self.path}: cannot create or open the file: {error.strerror}") from None

    def _tighten_mode(self) -> None:
        """An existing store readable by others becomes 0600 (its keys are secrets)."""
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                os.chmod(self.path, 0o600)
                log.warning("credentials_file_mode_tightened", path=str(self.path), was=oct(mode), now="0o600")
        except OSError as error:
            log.warning("credentials_file_mode_not_tightened", path=str(self.path), error=error.strerror)

    def _prepare(self) -> None:
        with self._using("open") as db:
            # the first statement reads the header: a file that is no database fails here, untouched
            db.execute("PRAGMA journal_mode = WAL").fetchall()
            db.execute("PRAGMA synchronous = FULL")
            integrity = db.execute("PRAGMA quick_check(1)").fetchall()[0][0]
            if integrity != "ok":
                raise CredentialStorageError(
                    f"credentials store {self.path}: the database file is corrupt: {integrity}")
            with _transaction(db):  # always a write: a read-only file or folder fails now
                found = db.execute("PRAGMA user_version").fetchall()[0][0]
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and "credentials" not in tables:
                    raise CredentialStorageError(
                        f"credentials store {self.path}: a SQLite database of something else "
                        f"(tables {', '.join(sorted(tables))}), not a credentials store")
                if found > SCHEMA_VERSION:
                    raise CredentialStorageError(
                        f"credentials store {self.path}: schema version {found} is newer than this "
                        f"program's {SCHEMA_VERSION}; upgrade TinyMLaaS")
                if not tables:
                    db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _error(self, operation: str, error: sqlite3.Error) -> CredentialStorageError:
        code = getattr(error, "sqlite_errorname", None) or ""
        hint = next((text for key, text in _HINTS.items() if code == key or code.startswith(key + "_")), None)
        detail = f"{error} ({code})" if code else str(error)
        return CredentialStorageError(
            f"credentials store {self.path}: {operation} failed: {hint + ': ' if hint else ''}{detail}")

    @contextmanager
    def _using(self, operation: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; sqlite3 errors become CredentialStorageError."""
        with self._lock:
            if self._db is None:
                raise CredentialStorageError(f"credentials store {self.path}: {operation} after close")
            try:
                yield self._db
            except sqlite3.Error as error:
                raise self._error(operation, error) from None

    def _credential(self, row: tuple) -> PskCredential:
        endpoint, identity, key, scope, created = row
        try:
            return PskCredential(endpoint, identity, key, scope, created)
        except CredentialError as error:
            raise CredentialStorageError(
                f"credentials store {self.path}: invalid row of endpoint {endpoint!r}: {error.reason}") from None

    # -- lookups ------------------------------------------------------------------------

    def by_identity(self, identity: str | bytes) -> PskCredential | None:
        """The credential a DTLS peer names in its handshake; None if unknown."""
        if isinstance(identity, (bytes, bytearray)):
            try:
                identity = bytes(identity).decode("utf-8")
            except UnicodeDecodeError:
                return None
        if not isinstance(identity, str) or not 0 < len(identity.encode("utf-8", "replace")) <= MAX_IDENTITY_BYTES:
            return None
        with self._using("lookup") as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM credentials WHERE identity = ?", (identity,)).fetchall()
        return self._credential(rows[0]) if rows else None

    def for_endpoint(self, endpoint: str, scope: str = "server") -> PskCredential | None:
        """The endpoint's credential of ``scope``, or None."""
        _scope(scope)
        with self._using("lookup") as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM credentials WHERE endpoint = ? AND scope = ?",
                              (endpoint, scope)).fetchall()
        return self._credential(rows[0]) if rows else None

    def list(self) -> list[PskCredential]:
        """Every credential, sorted by endpoint and scope."""
        with self._using("list") as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM credentials ORDER BY endpoint, scope").fetchall()
        return [self._credential(row) for row in rows]

    # -- changes ------------------------------------------------------------------------

    def add(self, credential: PskCredential, *, replace: bool = False, now: float | None = None) -> bool:
        """Store ``credential`` (its ``created`` set to ``now`` when given). True when it
        replaced the endpoint's credential of that scope (only with ``replace``).
        CredentialConflict if the identity belongs to another endpoint or scope, or
        the endpoint has a credential of that scope already and ``replace`` is false."""
        validate(credential)
        if now is not None:
            credential = with_changes(credential, created=float(now))  # validates ``now``
        with self._using("add") as db, _transaction(db):
            owner = db.execute("SELECT endpoint, scope FROM credentials WHERE identity = ?",
                               (credential.identity,)).fetchall()
            if owner and tuple(owner[0]) != (credential.endpoint, credential.scope):
                raise CredentialConflict(
                    f"identity {credential.identity!r} is already the {owner[0][1]} credential of "
                    f"endpoint {owner[0][0]!r}; each identity names one credential", "identity")
            existing = db.execute("SELECT 1 FROM credentials WHERE endpoint = ? AND scope = ?",
                                  (credential.endpoint, credential.scope)).fetchall()
            if existing and not replace:
                raise CredentialConflict(
                    f"endpoint {credential.endpoint!r} already has a {credential.scope} credential "
                    "(replace it explicitly)", "endpoint")
            db.execute("DELETE FROM credentials WHERE endpoint = ? AND scope = ?",
                       (credential.endpoint, credential.scope))
            db.execute(f"INSERT INTO credentials ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                       (credential.endpoint, credential.identity, credential.key, credential.scope,
                        credential.created))
        return bool(existing)

    def get_or_create(self, endpoint: str, scope: str = "server", *, now: float,
                      identity: str | None = None) -> PskCredential:
        """The endpoint's credential of ``scope``; if it has none, one with a fresh
        random key and ``identity`` (default: the endpoint name if it is a free,
        valid identity, otherwise a random ``psk-…`` one)."""
        existing = self.for_endpoint(endpoint, scope)
        if existing is not None:
            return existing
        if identity is None:
            identity = endpoint
            taken = self.by_identity(endpoint) is not None
            if taken or len(endpoint.encode("utf-8", "replace")) > MAX_IDENTITY_BYTES:
                identity = f"psk-{secrets.token_hex(8)}"
        credential = PskCredential(endpoint, identity, generate_key(), scope, now)
        try:
            self.add(credential)
        except CredentialConflict as error:  # another process raced us to it
            found = self.for_endpoint(endpoint, scope)
            if found is None:
                raise error from None
            return found
        return credential

    def remove(self, endpoint: str, scope: str | None = None) -> int:
        """Delete the endpoint's credential of ``scope`` (both when None); how many went."""
        if scope is not None:
            _scope(scope)
        with self._using("remove") as db, _transaction(db):
            if scope is None:
                removed = db.execute("DELETE FROM credentials WHERE endpoint = ?", (endpoint,)).rowcount
            else:
                removed = db.execute("DELETE FROM credentials WHERE endpoint = ? AND scope = ?",
                                     (endpoint, scope)).rowcount
        return removed

    def close(self) -> None:
        """Close the file; later calls raise CredentialStorageError. Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> CredentialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scope(scope: Any) -> None:
    if scope not in SCOPES:
        raise CredentialError(f"scope: must be one of {', '.join(SCOPES)}, got {scope!r}")


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT; any exception (or a failed COMMIT) rolls back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
