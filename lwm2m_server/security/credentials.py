"""The security store: per-endpoint DTLS 1.2 pre-shared keys (PSK) and OSCORE
contexts (RFC 8613), in a SQLite file.

A device authenticates with a PSK identity and key. A ``server`` credential admits
it to the LwM2M server (``/rd``, ``/dp`` and server→device requests); a
``bootstrap`` credential admits it only to the bootstrap interface (``/bs``).
Each identity names exactly one credential, so the DTLS layer can ask
:meth:`CredentialStore.by_identity` during a handshake.

The limits of an identity and a key are those of tinydtls devices (:mod:`.psk`).

The file is created with mode 0600 before SQLite opens it; SQLite creates its
``-wal`` and ``-shm`` files with the permissions of the database file, so they
are 0600 too. An existing file readable by others is tightened to 0600 (with a
warning). Every call is synchronous and short (one indexed statement) and reads
afresh, so a credential added by the CLI in another process is seen by the
running daemon at the next lookup. Keys never appear in ``repr``, logs or errors.
The store logs only warnings; its callers (API, CLI) report the changes they make.

OSCORE credentials (:class:`~lwm2m_server.security.oscore.OscoreCredential`, server scope
only) live in their own table, one per endpoint, found by their Recipient ID; an
endpoint may have a PSK and an OSCORE credential. Their sequence state (the sender
sequence numbers reserved, the replay window saved at a clean stop) is kept per
context fingerprint and outlives the credential, so a context removed and added
again never reuses a nonce. Only one process may use that state at a time
(:meth:`CredentialStore.claim_oscore_state` locks ``<store>.oscore-lock``).

Schema version 2 added the OSCORE tables; a version 1 store is migrated in place
(its PSK rows stay as they are).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import stat
import threading
from contextlib import contextmanager
from dataclasses import replace as with_changes
from pathlib import Path
from typing import Iterator, Sequence

import structlog

from .oscore import IDENTITY_PREFIX, OscoreCredential, OscoreCredentialError, SequenceState
from .psk import MAX_IDENTITY_BYTES, CredentialError, PskCredential, _scope, generate_key, validate

SCHEMA_VERSION = 2
BUSY_TIMEOUT = 2.0

log = structlog.get_logger("lwm2m_server.credentials")


class CredentialConflict(CredentialError):
    """The identity, or the endpoint and scope, already has a credential."""

    def __init__(self, reason: str, field: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.field = field
        """``"identity"`` or ``"endpoint"``: which one is taken."""
        self.index = index
        """Position (from 0) of the conflicting credential in an :meth:`CredentialStore.add_many`
        batch; None for a single :meth:`CredentialStore.add`."""


class CredentialStorageError(CredentialError):
    """The store's file cannot be used; the reason names the path and the problem."""


_SCHEMA = """
CREATE TABLE credentials (
    endpoint TEXT NOT NULL,
    scope    TEXT NOT NULL CHECK (scope IN ('server', 'bootstrap')),
    identity TEXT NOT NULL UNIQUE CHECK (length(CAST(identity AS BLOB)) BETWEEN 1 AND 32),
    key      BLOB NOT NULL CHECK (typeof(key) = 'blob' AND length(key) BETWEEN 1 AND 16),
    created  REAL NOT NULL,
    PRIMARY KEY (endpoint, scope)
)"""
_OSCORE_SCHEMA = (
    """CREATE TABLE oscore_credentials (
    endpoint     TEXT NOT NULL PRIMARY KEY,
    recipient_id BLOB NOT NULL UNIQUE CHECK (typeof(recipient_id) = 'blob' AND length(recipient_id) <= 7),
    sender_id    BLOB NOT NULL CHECK (typeof(sender_id) = 'blob' AND length(sender_id) <= 7),
    secret       BLOB NOT NULL CHECK (typeof(secret) = 'blob' AND length(secret) BETWEEN 16 AND 64),
    salt         BLOB NOT NULL CHECK (typeof(salt) = 'blob' AND length(salt) <= 64),
    id_context   BLOB CHECK (id_context IS NULL OR (typeof(id_context) = 'blob' AND length(id_context) <= 64)),
    aead         INTEGER NOT NULL,
    hkdf         INTEGER NOT NULL,
    created      REAL NOT NULL
)""",
    """CREATE TABLE oscore_sequence (
    fingerprint BLOB NOT NULL PRIMARY KEY,
    reserved    INTEGER NOT NULL CHECK (reserved >= 0),
    replay      TEXT
)""",
)
_COLUMNS = "endpoint, identity, key, scope, created"
_OSCORE_COLUMNS = "endpoint, sender_id, recipient_id, secret, salt, id_context, aead, hkdf, created"
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
        self._oscore_claim: int | None = None  # file descriptor of the held lock
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
                if "oscore_credentials" not in tables:  # new, or version 1: add the OSCORE tables
                    self._check_no_reserved_identities(db)
                    for statement in _OSCORE_SCHEMA:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_no_reserved_identities(self, db: sqlite3.Connection) -> None:
        rows = db.execute("SELECT endpoint, identity FROM credentials WHERE identity LIKE 'oscore:%'").fetchall()
        if rows:
            raise CredentialStorageError(
                f"credentials store {self.path}: PSK identity {rows[0][1]!r} of endpoint {rows[0][0]!r} "
                f"starts with {IDENTITY_PREFIX!r}, which now names OSCORE credentials; rename it with a "
                "program of schema version 1 first")

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

    def by_identity(self, identity: str | bytes) -> PskCredential | OscoreCredential | None:
        """The credential a DTLS peer names in its handshake, or (``oscore:<hex>``) the
        OSCORE credential of that Recipient ID; None if unknown."""
        if isinstance(identity, str) and identity.startswith(IDENTITY_PREFIX):
            try:
                recipient_id = bytes.fromhex(identity[len(IDENTITY_PREFIX):])
            except ValueError:
                return None
            found = self.oscore_by_recipient(recipient_id)
            return found if found is not None and found.identity == identity else None
        return self.psk_by_identity(identity)

    def psk_by_identity(self, identity: str | bytes) -> PskCredential | None:
        """The PSK credential a DTLS peer names in its handshake; None if unknown."""
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

    def for_endpoint(self, endpoint: str, scope: str = "server") -> PskCredential | OscoreCredential | None:
        """The endpoint's credential of ``scope`` (its PSK one first), or None."""
        found = self.psk_for_endpoint(endpoint, scope)
        if found is None and scope == "server":
            return self.oscore_for_endpoint(endpoint)
        return found

    def has_any(self, endpoint: str) -> bool:
        """True when the endpoint has a credential of any scope or mechanism: one query,
        where the lookups of each take three (a plain-CoAP Register asks this)."""
        with self._using("lookup") as db:
            return db.execute(
                "SELECT EXISTS (SELECT 1 FROM credentials WHERE endpoint = ?) "
                "OR EXISTS (SELECT 1 FROM oscore_credentials WHERE endpoint = ?)", (endpoint, endpoint),
            ).fetchone()[0] == 1

    def psk_for_endpoint(self, endpoint: str, scope: str = "server") -> PskCredential | None:
        """The endpoint's PSK credential of ``scope``, or None."""
        _scope(scope)
        with self._using("lookup") as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM credentials WHERE endpoint = ? AND scope = ?",
                              (endpoint, scope)).fetchall()
        return self._credential(rows[0]) if rows else None

    def list(self) -> list[PskCredential | OscoreCredential]:
        """Every credential, sorted by endpoint and scope, a PSK before an OSCORE one."""
        with self._using("list") as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM credentials").fetchall()
            oscore = db.execute(f"SELECT {_OSCORE_COLUMNS} FROM oscore_credentials").fetchall()
        found = [self._credential(row) for row in rows] + [self._oscore(row) for row in oscore]
        return sorted(found, key=lambda c: (c.endpoint, c.scope, c.mechanism != "psk"))

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
            return self._put(db, credential, replace)

    def add_many(self, credentials: Sequence[PskCredential], *, replace: bool = False,
                 now: float | None = None) -> list[bool]:
        """Store every credential in one transaction: all of them, or (on any error)
        none. For each, True when it replaced one (only with ``replace``), as :meth:`add`.
        CredentialError if two of them share an identity or an endpoint and scope;
        CredentialConflict (its ``index`` saying which) as :meth:`add`."""
        batch = []
        identities: dict[str, int] = {}
        slots: dict[tuple[str, str], int] = {}
        for index, credential in enumerate(credentials):
            validate(credential)
            if now is not None:
                credential = with_changes(credential, created=float(now))
            first = identities.setdefault(credential.identity, index)
            if first != index:
                raise CredentialError(f"credentials[{index}]: identity {credential.identity!r} is also "
                                      f"credentials[{first}]'s")
            first = slots.setdefault((credential.endpoint, credential.scope), index)
            if first != index:
                raise CredentialError(f"credentials[{index}]: endpoint {credential.endpoint!r} has a second "
                                      f"{credential.scope} credential (credentials[{first}])")
            batch.append(credential)
        replaced = []
        with self._using("add") as db, _transaction(db):
            for index, credential in enumerate(batch):
                try:
                    replaced.append(self._put(db, credential, replace))
                except CredentialConflict as error:
                    raise CredentialConflict(error.reason, error.field, index) from None
        return replaced

    def _put(self, db: sqlite3.Connection, credential: PskCredential, replace: bool) -> bool:
        """Insert ``credential`` inside the caller's transaction; True if it replaced one."""
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
        existing = self.psk_for_endpoint(endpoint, scope)
        if existing is not None:
            return existing
        if identity is None:
            identity = endpoint
            taken = self.psk_by_identity(endpoint) is not None
            if taken or len(endpoint.encode("utf-8", "replace")) > MAX_IDENTITY_BYTES \
                    or endpoint.startswith(IDENTITY_PREFIX):
                identity = f"psk-{secrets.token_hex(8)}"
        credential = PskCredential(endpoint, identity, generate_key(), scope, now)
        try:
            self.add(credential)
        except CredentialConflict as error:  # another process raced us to it
            found = self.psk_for_endpoint(endpoint, scope)
            if found is None:
                raise error from None
            return found
        return credential

    def remove(self, endpoint: str, scope: str | None = None, mechanism: str | None = None) -> int:
        """Delete the endpoint's credentials of ``scope`` and ``mechanism`` (``psk`` or
        ``oscore``; all when None); how many went. An OSCORE context's sequence state
        stays (see the module docstring)."""
        if scope is not None:
            _scope(scope)
        if mechanism not in (None, "psk", "oscore"):
            raise CredentialError(f"mechanism: must be psk or oscore, got {mechanism!r}")
        removed = 0
        with self._using("remove") as db, _transaction(db):
            if mechanism != "oscore":
                if scope is None:
                    removed += db.execute("DELETE FROM credentials WHERE endpoint = ?", (endpoint,)).rowcount
                else:
                    removed += db.execute("DELETE FROM credentials WHERE endpoint = ? AND scope = ?",
                                          (endpoint, scope)).rowcount
            if mechanism != "psk" and scope in (None, "server"):
                removed += db.execute("DELETE FROM oscore_credentials WHERE endpoint = ?", (endpoint,)).rowcount
        return removed

    # -- OSCORE ---------------------------------------------------------------------------

    def _oscore(self, row: tuple) -> OscoreCredential:
        endpoint, sender_id, recipient_id, secret, salt, id_context, aead, hkdf, created = row
        try:
            return OscoreCredential(endpoint, sender_id, recipient_id, secret, salt, id_context, aead, hkdf,
                                    created)
        except OscoreCredentialError as error:
            raise CredentialStorageError(
                f"credentials store {self.path}: invalid OSCORE row of endpoint {endpoint!r}: {error.reason}"
            ) from None

    def oscore_by_recipient(self, recipient_id: bytes) -> OscoreCredential | None:
        """The OSCORE credential whose Recipient ID (the kid of the device's requests)
        is ``recipient_id``; None if unknown."""
        if not isinstance(recipient_id, (bytes, bytearray)) or len(recipient_id) > 7:
            return None
        with self._using("lookup") as db:
            rows = db.execute(f"SELECT {_OSCORE_COLUMNS} FROM oscore_credentials WHERE recipient_id = ?",
                              (bytes(recipient_id),)).fetchall()
        return self._oscore(rows[0]) if rows else None

    def oscore_for_endpoint(self, endpoint: str) -> OscoreCredential | None:
        """The endpoint's OSCORE credential, or None."""
        with self._using("lookup") as db:
            rows = db.execute(f"SELECT {_OSCORE_COLUMNS} FROM oscore_credentials WHERE endpoint = ?",
                              (endpoint,)).fetchall()
        return self._oscore(rows[0]) if rows else None

    def add_oscore(self, credential: OscoreCredential, *, replace: bool = False,
                   now: float | None = None) -> bool:
        """Store an OSCORE credential (``created`` set to ``now`` when given). True when
        it replaced the endpoint's one (only with ``replace``). CredentialConflict if
        its Recipient ID is another endpoint's, or the endpoint has one already and
        ``replace`` is false."""
        if now is not None:
            credential = oscore_credential(credential.endpoint, sender_id=credential.sender_id,
                                           recipient_id=credential.recipient_id,
                                           master_secret=credential.master_secret,
                                           master_salt=credential.master_salt, id_context=credential.id_context,
                                           aead=credential.aead, hkdf=credential.hkdf, created=float(now))
        with self._using("add") as db, _transaction(db):
            owner = db.execute("SELECT endpoint FROM oscore_credentials WHERE recipient_id = ?",
                               (credential.recipient_id,)).fetchall()
            if owner and owner[0][0] != credential.endpoint:
                raise CredentialConflict(
                    f"recipient id {credential.recipient_id.hex()!r} is already the OSCORE credential of "
                    f"endpoint {owner[0][0]!r}; each recipient id names one credential", "identity")
            existing = db.execute("SELECT 1 FROM oscore_credentials WHERE endpoint = ?",
                                  (credential.endpoint,)).fetchall()
            if existing and not replace:
                raise CredentialConflict(
                    f"endpoint {credential.endpoint!r} already has an OSCORE credential (replace it explicitly)",
                    "endpoint")
            db.execute("DELETE FROM oscore_credentials WHERE endpoint = ?", (credential.endpoint,))
            db.execute(f"INSERT INTO oscore_credentials ({_OSCORE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (credential.endpoint, credential.sender_id, credential.recipient_id,
                        credential.master_secret, credential.master_salt, credential.id_context,
                        credential.aead, credential.hkdf, credential.created))
        return bool(existing)

    def claim_oscore_state(self) -> None:
        """Take the lock that makes this process the only user of the OSCORE sequence
        state (two servers counting from the same numbers would reuse nonces).
        CredentialStorageError if another process holds it. Released by :meth:`close`."""
        if self._oscore_claim is not None:
            return
        lock_path = f"{self.path}.oscore-lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise CredentialStorageError(f"credentials store {self.path}: cannot open {lock_path}: "
                                         f"{error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CredentialStorageError(
                f"credentials store {self.path}: another process uses its OSCORE contexts "
                f"({lock_path} is locked); two servers must not share them") from None
        self._oscore_claim = fd

    def sequence_state(self, credential: OscoreCredential) -> SequenceState:
        """The persisted sequence state of ``credential``'s context (fresh: all zero)."""
        with self._using("lookup") as db:
            rows = db.execute("SELECT reserved, replay FROM oscore_sequence WHERE fingerprint = ?",
                              (credential.fingerprint(),)).fetchall()
        if not rows:
            return SequenceState(0, {"index": 0, "bitfield": 0})
        reserved, replay = rows[0]
        try:
            window = json.loads(replay) if replay is not None else None
        except ValueError:
            window = None
        return SequenceState(int(reserved), window if isinstance(window, dict) else None)

    def save_sequence_state(self, credential: OscoreCredential, state: SequenceState) -> None:
        """Persist ``state`` (synchronously, before the numbers it reserves are used);
        the reserved bound never goes down."""
        if self._oscore_claim is None:
            raise CredentialStorageError(
                f"credentials store {self.path}: OSCORE state written without claim_oscore_state()")
        replay = None if state.replay_window is None else json.dumps(state.replay_window)
        with self._using("save sequence state") as db, _transaction(db):
            db.execute("INSERT INTO oscore_sequence (fingerprint, reserved, replay) VALUES (?, ?, ?) "
                       "ON CONFLICT (fingerprint) DO UPDATE SET reserved = max(reserved, excluded.reserved), "
                       "replay = excluded.replay",
                       (credential.fingerprint(), state.reserved, replay))

    def close(self) -> None:
        """Close the file; later calls raise CredentialStorageError. Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._oscore_claim is not None:
                os.close(self._oscore_claim)  # releases the flock
                self._oscore_claim = None

    def __enter__(self) -> CredentialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def oscore_credential(endpoint: str, *, sender_id: bytes, recipient_id: bytes, master_secret: bytes,
                      master_salt: bytes = b"", id_context: bytes | None = None, aead: int = 10,
                      hkdf: int = -10, created: float = 0.0) -> OscoreCredential:
    """An :class:`OscoreCredential`, its limits broken raising :class:`CredentialError`."""
    try:
        return OscoreCredential(endpoint, sender_id, recipient_id, master_secret, master_salt, id_context,
                                aead, hkdf, created)
    except OscoreCredentialError as error:
        raise CredentialError(error.reason) from None


def generate_master_secret() -> bytes:
    """A fresh random 16-byte OSCORE Master Secret."""
    return secrets.token_bytes(16)


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
