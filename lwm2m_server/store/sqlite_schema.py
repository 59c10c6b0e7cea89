"""The SQLite store's file: its schema and migrations, opening a connection,
transactions, and SQLite errors told as :class:`~.base.StoreError`."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import structlog

from .base import FINISHED_STATES, PENDING, StoreError

log = structlog.get_logger("lwm2m_server.store.sqlite")

MEMORY = ":memory:"
"""Pass as the path for a throw-away in-memory store (tests)."""
LOCK_SUFFIX = "-lock"
"""Beside the database file: the processes sharing it take their turns to write on it."""
BUSY_TIMEOUT = 5.0
"""Seconds to wait for another process's write lock before failing."""

_STATES_SQL = ", ".join(f"'{state}'" for state in (PENDING, *FINISHED_STATES))
FINISHED_SQL = ", ".join(f"'{state}'" for state in FINISHED_STATES)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE registrations (
            id TEXT PRIMARY KEY,
            endpoint TEXT NOT NULL UNIQUE,
            address TEXT NOT NULL,
            lifetime INTEGER NOT NULL,
            lwm2m_version TEXT NOT NULL,
            binding TEXT NOT NULL,
            queue_mode INTEGER NOT NULL,
            sms TEXT,
            object_list TEXT NOT NULL,
            registered_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            extra TEXT NOT NULL
        )""",
        "CREATE INDEX registrations_expires_at ON registrations (expires_at)",
        """CREATE TABLE observations (
            token BLOB PRIMARY KEY,
            endpoint TEXT NOT NULL,
            registration_id TEXT NOT NULL REFERENCES registrations (id) ON DELETE CASCADE,
            paths TEXT NOT NULL,
            content_format INTEGER,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX observations_registration ON observations (registration_id)",
        "CREATE INDEX observations_endpoint ON observations (endpoint)",
        # seq orders entries created in the same instant by insertion
        f"""CREATE TABLE queue (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            endpoint TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            state TEXT NOT NULL CHECK (state IN ({_STATES_SQL})),
            request TEXT NOT NULL,
            result TEXT
        )""",
        "CREATE INDEX queue_endpoint_state ON queue (endpoint, state, created_at)",
        "CREATE INDEX queue_state_expires ON queue (state, expires_at)",
        "CREATE INDEX queue_endpoint_created ON queue (endpoint, created_at)",
    ),
    2: (
        """CREATE TABLE documents (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            data TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
    ),
    3: ("ALTER TABLE registrations ADD COLUMN identity TEXT",),
    4: (
        # holder '' = released; the row stays so that the epoch keeps counting up
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at REAL NOT NULL,
            epoch INTEGER NOT NULL
        )""",
    ),
}
"""Schema migrations: version → statements taking the previous version to it."""
SCHEMA_VERSION = max(MIGRATIONS)


def store_error(path: str, operation: str, error: sqlite3.Error) -> StoreError:
    code = getattr(error, "sqlite_errorname", None)
    hints = {
        "SQLITE_NOTADB": "the file is not a SQLite database",
        "SQLITE_CORRUPT": "the database file is corrupt",
        "SQLITE_READONLY": "the database or its folder is read-only",
        "SQLITE_FULL": "the disk (or the database's size limit) is full",
        "SQLITE_CANTOPEN": "cannot open the file (missing folder or no permission?)",
        "SQLITE_BUSY": f"another process held the database lock for {BUSY_TIMEOUT:g} s",
        "SQLITE_IOERR": "I/O error",
    }
    # extended codes (SQLITE_READONLY_DIRECTORY, SQLITE_IOERR_WRITE, …) share the hint
    hint = next(
        (text for key, text in hints.items() if code and (code == key or code.startswith(key + "_"))),
        None,
    )
    detail = f"{error} ({code})" if code else str(error)
    reason = f"{hint}: {detail}" if hint else detail
    return StoreError(f"SQLite store {path}: {operation} failed: {reason}")


def open_connection(path: str) -> tuple[sqlite3.Connection, int]:
    """Connect, configure and migrate; returns the connection and the version found."""
    if path != MEMORY:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"SQLite store {path}: cannot create its folder: {error}") from error
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as error:
        raise store_error(path, "open", error) from error
    try:
        # The first statement reads the header: a file that is no database fails here.
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and path != MEMORY:
            log.warning("store without WAL", path=path, journal_mode=mode)
        # NORMAL in WAL mode: commits survive a process crash/SIGKILL; only power
        # loss may drop the last commits (the file stays consistent).
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        found = migrate(connection, path)
        # A write on every open: a read-only file or folder fails now, not at the
        # first Register. user_version mirrors the schema version for sqlite3 tools.
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        integrity = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
        if integrity != "ok":
            raise StoreError(f"SQLite store {path}: the database file is corrupt: {integrity}")
        return connection, found
    except sqlite3.Error as error:
        connection.close()
        raise store_error(path, "open", error) from error
    except BaseException:
        connection.close()
        raise


def migrate(connection: sqlite3.Connection, path: str) -> int:
    with transaction(connection):
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        found = connection.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"SQLite store {path}: schema version {found} is newer than this "
                f"program's {SCHEMA_VERSION}; upgrade TinyMLaaS"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
    return found


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT; any exception (or a failed COMMIT) rolls back. Inside
    a transaction already (a group commit), a savepoint that rolls back only its own."""
    if connection.in_transaction:
        connection.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            if connection.in_transaction:  # else SQLite took back the whole transaction (a full disk)
                connection.execute("ROLLBACK TO part")
                connection.execute("RELEASE part")
            raise
        connection.execute("RELEASE part")
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def close_connection(connection: sqlite3.Connection) -> None:
    try:
        connection.execute("PRAGMA optimize")  # keeps query plans good; optional
    except sqlite3.Error as error:
        log.warning("store optimize skipped", error=str(error))
    connection.close()
