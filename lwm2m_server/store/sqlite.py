"""The SQLite store: the default :class:`~lwm2m_server.store.base.Store`.

Every sqlite3 call runs on one dedicated worker thread that owns the
connection, so the event loop never waits on the disk and the connection is
never shared between threads. Calls run on that thread in the order they were
made. Calls go to the thread together and commit as one transaction (group
commit: one hop and one commit for a burst of Registers, not one each): those of
one turn of the event loop, and, while a transaction runs on the thread, every
call made meanwhile, which goes as the next one when it ends. Each call is a
savepoint in it, so a call that fails takes back only its own changes. The saves of
registrations and of profiles (documents) in a transaction go as one statement per kind
(see :mod:`.bulk`) in one savepoint: this thread releases the GIL around
every statement and waits for the busy event loop to hand it back (a daemon taking
20,000 new devices, one worker, three paired runs: 72,000–80,000 such waits of this
thread with a statement per call, 18,000–22,000 in bulk; its CPU 1.19–1.22 s → 0.68–1.12 s).
When one of them fails, the group is taken back and its calls run one by one, so the
failure is the failing call's alone.

Durability: WAL journal with ``synchronous=NORMAL``. A commit is in the WAL
file (in the OS page cache) before the call returns, so everything committed
survives a crash or SIGKILL of the process; only a power loss or kernel crash
may lose the last commits before the next checkpoint. The database is never
left corrupt either way.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from typing import Any, Callable, NamedTuple, TypeVar

import structlog

from lwm2m_server.core.registration import Registration

from .base import (
    EXPIRED,
    PENDING,
    Lease,
    ObservationRecord,
    QueueEntry,
    QueueFullError,
    Store,
    StoreError,
    UnknownEntryError,
    UnknownRegistrationError,
    check_lease_request,
    check_state,
    document_to_json,
)
from .bulk import Bulk, document_key, groups, pieces, registration_key
from .rows import (
    OBSERVATION_COLUMNS,
    QUEUE_COLUMNS,
    REGISTRATION_COLUMNS,
    entry_from_row,
    observation_row,
    observations_from_rows,
    queue_row,
    registration_from_row,
    registration_row,
    document_upsert,
    registration_upsert,
    result_json,
)
from .sqlite_schema import (
    BUSY_TIMEOUT, FINISHED_SQL, LOCK_SUFFIX, MEMORY, SCHEMA_VERSION, close_connection, open_connection, store_error,
    transaction,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
TURN_POLL_S = 0.0002
"""How often a writer asks for its turn while another process has it."""


class _TransactionLost(Exception):
    """SQLite rolled the whole transaction back on a call's failure (``failure``)."""

    def __init__(self, failure: Exception) -> None:
        super().__init__(str(failure))
        self.failure = failure


class _Call(NamedTuple):
    """A store call waiting for the thread: ``function(connection, *args)``."""

    operation: str
    function: Callable[..., Any]
    args: tuple[Any, ...]


class SqliteStore(Store):
    """State in one SQLite file; create with ``await SqliteStore.open(path)``."""

    def __init__(self, path: str, executor: ThreadPoolExecutor, connection: sqlite3.Connection,
                 turns: int | None = None) -> None:
        self.path = path
        """The database file (or ``:memory:``)."""
        self._executor = executor
        self._connection = connection  # touched only on the executor's thread
        self._turns = turns  # the lock file's descriptor (see _call_batch)
        self._closed = False
        self._batch: list[tuple[_Call, asyncio.Future]] = []  # the next transaction's calls
        self._running = False  # a transaction on the thread: calls wait for it to end, and go together

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r}{', closed' if self._closed else ''})"

    @classmethod
    async def open(cls, path: str | PathLike[str]) -> SqliteStore:
        """Open (creating file and parent folders) and migrate; StoreError if that fails."""
        name = str(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        loop = asyncio.get_running_loop()
        try:
            connection, migrated_from = await loop.run_in_executor(
                executor, open_connection, name
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        turns = None
        if name != MEMORY:
            try:
                turns = os.open(name + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as error:
                await loop.run_in_executor(executor, close_connection, connection)
                executor.shutdown(wait=False)
                raise StoreError(f"SQLite store {name}: cannot open its lock file: {error}") from error
        log.info("store opened", path=name, schema=SCHEMA_VERSION, migrated_from=migrated_from)
        return cls(name, executor, connection, turns)

    # -- plumbing ------------------------------------------------------------

    async def _run(self, operation: str, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(connection, *args)`` on the worker thread, in the next
        transaction; sqlite3 errors → StoreError."""
        if self._closed:
            raise StoreError(f"SQLite store {self.path}: {operation} after close")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._batch and not self._running:
            loop.call_soon(self._flush)
        self._batch.append((_Call(operation, function, args), future))
        return await future

    def _flush(self, *, now: bool = False) -> None:
        """Hand the calls gathered so far to the worker thread as one transaction, unless
        one runs there (``now``: all the same; the thread runs them after it)."""
        if (self._running and not now) or not self._batch:
            return
        batch, self._batch = self._batch, []
        self._running = True
        done = asyncio.get_running_loop().run_in_executor(self._executor, self._call_batch, [c for c, _ in batch])
        done.add_done_callback(functools.partial(self._ended, [f for _, f in batch]))

    def _ended(self, futures: list[asyncio.Future], done: asyncio.Future) -> None:
        self._running = False
        _deliver(futures, done)
        self._flush()

    def _call(self, call: _Call) -> Any:
        operation = call.operation
        try:
            return call.function(self._connection, *call.args)
        except sqlite3.Error as error:
            raise store_error(self.path, operation, error) from error
        except (ValueError, KeyError, TypeError, IndexError) as error:
            # decoding a row that is not what this code writes
            raise StoreError(
                f"SQLite store {self.path}: {operation}: unreadable row ({error!r})"
            ) from error

    def _call_batch(self, calls: list[_Call]) -> list[tuple[bool, Any]]:
        """The calls as one transaction, in turn with the other processes on the file (the
        workers): a lock file asked every 0.2 ms, where SQLite's busy handler sleeps 1, 2,
        5 … 100 ms between tries (two workers, paired runs: ×1.52–1.84 → ×1.69–1.89 the
        Registers of one; the machine 1.69–1.74 → 1.84–1.86 cores busy)."""
        taken = self._turns is not None and self._take_turn()
        try:
            return self._call_batch_in_turn(calls)
        finally:
            if taken:
                fcntl.flock(self._turns, fcntl.LOCK_UN)

    def _take_turn(self) -> bool:
        """The lock file, asked again every TURN_POLL_S; False after BUSY_TIMEOUT (a process
        stopped in its turn: then SQLite's own wait decides, and names the failure)."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                fcntl.flock(self._turns, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(TURN_POLL_S)

    def _call_batch_in_turn(self, calls: list[_Call]) -> list[tuple[bool, Any]]:
        if len(calls) == 1:
            return [self._outcome(calls[0])]
        try:
            with transaction(self._connection):
                outcomes: list[tuple[bool, Any]] = [(False, None)] * len(calls)
                for group in groups([(call.function, call.args) for call in calls], _BULK):
                    results = self._call_group([calls[i] for i in group])
                    if not self._connection.in_transaction:
                        # SQLite took back the whole transaction (a full disk may): nothing of it
                        # was kept, and the calls after it must not run outside of it
                        raise _TransactionLost(next((value for ok, value in results if not ok), StoreError(
                            f"SQLite store {self.path}: the transaction ended unexpectedly")))
                    for index, outcome in zip(group, results):
                        outcomes[index] = outcome
        except _TransactionLost as lost:
            failure = StoreError(f"{lost.failure} (the {len(calls)} calls of its transaction were all taken back)")
            return [(False, failure)] * len(calls)
        except sqlite3.Error as error:  # the COMMIT failed (e.g. a full disk): none of it was kept
            failure = store_error(self.path, "commit", error)
            return [(False, failure)] * len(calls)
        return outcomes

    def _call_group(self, group: list[_Call]) -> list[tuple[bool, Any]]:
        """Calls of one function with a bulk form (:data:`_BULK`) in one savepoint; any
        other call, or any failure, one by one."""
        if len(group) > 1:
            save_all, _ = _BULK[group[0].function]
            try:
                with transaction(self._connection):
                    save_all(self._connection, [call.args for call in group])
                return [(True, None)] * len(group)
            except sqlite3.Error as error:
                if not self._connection.in_transaction:  # SQLite took back the whole transaction
                    return [(False, store_error(self.path, group[0].operation, error))] * len(group)
                # the calls again, one by one: the failing one gets the error, the others are saved
        outcomes = []
        for call in group:
            outcomes.append(self._outcome(call))
            if not self._connection.in_transaction:  # lost: no call may run outside of it
                break
        return outcomes

    def _outcome(self, call: _Call) -> tuple[bool, Any]:
        try:
            return True, self._call(call)
        except Exception as error:  # handed to the caller's future
            return False, error

    # -- registrations -------------------------------------------------------

    async def save_registration(self, registration: Registration) -> None:
        await self._run("save registration", _save_registration, registration_row(registration))

    async def delete_registration(self, registration_id: str) -> bool:
        return await self._run("delete registration", _delete_registration, registration_id)

    async def load_registrations(self) -> list[Registration]:
        return await self._run("load registrations", _load_registrations)

    # -- observations --------------------------------------------------------

    async def save_observation(self, observation: ObservationRecord) -> None:
        await self._run("save observation", _save_observation, observation_row(observation))

    async def delete_observation(self, token: bytes) -> bool:
        return await self._run("delete observation", _delete, "observations", "token", token) > 0

    async def delete_observations_of(self, registration_id: str) -> int:
        return await self._run(
            "delete observations", _delete, "observations", "registration_id", registration_id
        )

    async def load_observations(self) -> list[ObservationRecord]:
        return await self._run("load observations", _load_observations)

    # -- queued requests -----------------------------------------------------

    async def enqueue(self, entry: QueueEntry, max_pending: int) -> None:
        await self._run("enqueue", _enqueue, queue_row(entry, max_pending), max_pending)

    async def pending(self, endpoint: str) -> list[QueueEntry]:
        return await self._run("read queue", _pending, endpoint)

    async def count_pending(self) -> int:
        return await self._run("count queue", _count_pending)

    async def set_state(
        self, entry_id: str, state: str, result: dict[str, Any] | None = None
    ) -> QueueEntry:
        check_state(state)
        return await self._run(
            "set queue entry state", _set_state, entry_id, state, result_json(entry_id, result)
        )

    async def get_entry(self, entry_id: str) -> QueueEntry | None:
        return await self._run("read queue", _get_entry, entry_id)

    async def entries(self, endpoint: str, limit: int = 100) -> list[QueueEntry]:
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        return await self._run("read queue", _entries, endpoint, limit)

    async def expire_entries(self, now: float) -> list[QueueEntry]:
        return await self._run("expire queue entries", _expire_entries, now)

    async def prune(self, before: float) -> int:
        return await self._run("prune queue", _prune, before)

    # -- documents -------------------------------------------------------------

    async def put_document(self, kind: str, key: str, data: dict[str, Any], now: float) -> None:
        text = document_to_json(kind, key, data)
        await self._run(f"save {kind}", _put_document, kind, key, text, now)

    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        return await self._run(f"load {kind}", _get_document, kind, key)

    async def list_documents(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        return await self._run(f"list {kind}", _list_documents, kind, prefix)

    async def delete_document(self, kind: str, key: str) -> bool:
        return await self._run(f"delete {kind}", _delete_document, kind, key)

    async def put_document_if_lease(
        self, kind: str, key: str, data: dict[str, Any], now: float, lease: Lease, *, held_until: float | None = None
    ) -> bool:
        text = document_to_json(kind, key, data)
        fence = (lease.name, lease.holder, lease.epoch, now if held_until is None else held_until)
        return await self._run(f"save {kind}", _put_document_if_lease, kind, key, text, now, fence)

    # -- leases ------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        check_lease_request(name, holder, ttl_s)
        return await self._run(f"acquire lease {name}", _acquire_lease, name, holder, now + ttl_s, now)

    async def release_lease(self, name: str, holder: str) -> bool:
        check_lease_request(name, holder)
        return await self._run(f"release lease {name}", _release_lease, name, holder)

    async def get_lease(self, name: str) -> Lease | None:
        return await self._run(f"read lease {name}", _get_lease, name)

    # -- lifecycle -----------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # calls made from now on fail; calls already queued run first
        self._flush(now=True)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._call, _Call("close", close_connection, ()))
        finally:
            self._executor.shutdown(wait=False)
            if self._turns is not None:
                os.close(self._turns)
            log.info("store closed", path=self.path)


def _deliver(futures: list[asyncio.Future], done: asyncio.Future) -> None:
    if done.cancelled() or done.exception() is not None:
        outcomes = [(False, done.exception() or asyncio.CancelledError())] * len(futures)
    else:
        outcomes = done.result()
    for future, (ok, value) in zip(futures, outcomes):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


# -- worker-thread side: plain functions of the connection ---------------------


def _delete(connection: sqlite3.Connection, table: str, column: str, key: object) -> int:
    with transaction(connection):
        return connection.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,)).rowcount


def _save_registration(connection: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    with transaction(connection):
        _save_registrations(connection, [(row,)])


def _save_registrations(connection: sqlite3.Connection, calls: list[tuple[Any, ...]]) -> None:
    """The rows of ``calls`` (the arguments of :func:`_save_registration`, endpoints distinct)."""
    for rows in pieces([row for row, in calls]):
        # A new Register of the endpoint replaces its old registration (and,
        # through the foreign key, that registration's observations).
        endpoints = [row[1] for row in rows]
        pairs = [value for row in rows for value in (row[1], row[0])]
        connection.execute(_delete_replaced(len(rows)), endpoints + pairs)
        connection.execute(registration_upsert("?", len(rows)), [value for row in rows for value in row])


@functools.lru_cache(maxsize=None)
def _delete_replaced(rows: int) -> str:
    """Deletes the other registrations of the endpoints of ``rows`` (endpoint, id) pairs."""
    return (f"DELETE FROM registrations WHERE endpoint IN ({', '.join(['?'] * rows)}) "
            f"AND (endpoint, id) NOT IN (VALUES {', '.join(['(?, ?)'] * rows)})")


def _delete_registration(connection: sqlite3.Connection, registration_id: str) -> bool:
    return _delete(connection, "registrations", "id", registration_id) > 0


def _load_registrations(connection: sqlite3.Connection) -> list[Registration]:
    rows = connection.execute(
        f"SELECT {REGISTRATION_COLUMNS} FROM registrations ORDER BY endpoint"
    ).fetchall()
    return [registration_from_row(row) for row in rows]



def _save_observation(connection: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    with transaction(connection):
        registration_id = row[2]
        known = connection.execute(
            "SELECT 1 FROM registrations WHERE id = ?", (registration_id,)
        ).fetchone()
        if known is None:
            raise UnknownRegistrationError(registration_id)
        connection.execute(
            f"INSERT INTO observations ({OBSERVATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (token) DO UPDATE SET endpoint = excluded.endpoint, "
            "registration_id = excluded.registration_id, paths = excluded.paths, "
            "content_format = excluded.content_format, created_at = excluded.created_at",
            row,
        )


def _load_observations(connection: sqlite3.Connection) -> list[ObservationRecord]:
    rows = connection.execute(
        f"SELECT {OBSERVATION_COLUMNS} FROM observations ORDER BY created_at, rowid"
    ).fetchall()
    return observations_from_rows(rows)




def _enqueue(connection: sqlite3.Connection, row: tuple[Any, ...], max_pending: int) -> None:
    entry_id, endpoint = row[0], row[1]
    # BEGIN IMMEDIATE takes the write lock first: count and insert are atomic,
    # also against other processes using the same file.
    with transaction(connection):
        if connection.execute("SELECT 1 FROM queue WHERE id = ?", (entry_id,)).fetchone():
            raise StoreError(f"queue entry {entry_id!r} already exists")
        count = connection.execute(
            "SELECT count(*) FROM queue WHERE endpoint = ? AND state = ?", (endpoint, PENDING)
        ).fetchone()[0]
        if count >= max_pending:
            raise QueueFullError(endpoint, max_pending)
        connection.execute(f"INSERT INTO queue ({QUEUE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)


def _pending(connection: sqlite3.Connection, endpoint: str) -> list[QueueEntry]:
    rows = connection.execute(
        f"SELECT {QUEUE_COLUMNS} FROM queue WHERE endpoint = ? AND state = ? "
        "ORDER BY created_at, seq",
        (endpoint, PENDING),
    ).fetchall()
    return [entry_from_row(row) for row in rows]


def _count_pending(connection: sqlite3.Connection) -> int:
    # the index queue_state_expires (state, expires_at) answers it without reading rows
    return connection.execute("SELECT count(*) FROM queue WHERE state = ?", (PENDING,)).fetchone()[0]


def _get_entry(connection: sqlite3.Connection, entry_id: str) -> QueueEntry | None:
    row = connection.execute(f"SELECT {QUEUE_COLUMNS} FROM queue WHERE id = ?", (entry_id,)).fetchone()
    return entry_from_row(row) if row is not None else None


def _set_state(
    connection: sqlite3.Connection, entry_id: str, state: str, result: str | None
) -> QueueEntry:
    with transaction(connection):
        changed = connection.execute(
            "UPDATE queue SET state = ?, result = ? WHERE id = ?", (state, result, entry_id)
        ).rowcount
        if not changed:
            raise UnknownEntryError(entry_id)
        entry = _get_entry(connection, entry_id)
    assert entry is not None
    return entry


def _entries(connection: sqlite3.Connection, endpoint: str, limit: int) -> list[QueueEntry]:
    rows = connection.execute(
        f"SELECT {QUEUE_COLUMNS} FROM queue WHERE endpoint = ? "
        "ORDER BY created_at DESC, seq DESC LIMIT ?",
        (endpoint, limit),
    ).fetchall()
    return [entry_from_row(row) for row in rows]


def _expire_entries(connection: sqlite3.Connection, now: float) -> list[QueueEntry]:
    with transaction(connection):
        rows = connection.execute(
            f"SELECT {QUEUE_COLUMNS} FROM queue WHERE state = ? AND expires_at < ? "
            "ORDER BY created_at, seq",
            (PENDING, now),
        ).fetchall()
        connection.execute(
            "UPDATE queue SET state = ? WHERE state = ? AND expires_at < ?", (EXPIRED, PENDING, now)
        )
    return [entry_from_row(row[:4] + (EXPIRED,) + row[5:]) for row in rows]


def _prune(connection: sqlite3.Connection, before: float) -> int:
    with transaction(connection):
        return connection.execute(
            f"DELETE FROM queue WHERE state IN ({FINISHED_SQL}) AND created_at < ?", (before,)
        ).rowcount


def _put_document(connection: sqlite3.Connection, kind: str, key: str, text: str, now: float) -> None:
    with transaction(connection):
        _put_documents(connection, [(kind, key, text, now)])


def _put_documents(connection: sqlite3.Connection, calls: list[tuple[str, str, str, float]]) -> None:
    """The documents of ``calls`` (the arguments of :func:`_put_document`, keys distinct)."""
    for piece in pieces(calls):
        connection.execute(document_upsert("?", len(piece)), [value for call in piece for value in call])


_BULK: Bulk = {
    _save_registration: (_save_registrations, registration_key),
    _put_document: (_put_documents, document_key),
}


def _get_document(connection: sqlite3.Connection, kind: str, key: str) -> dict[str, Any] | None:
    row = connection.execute("SELECT data FROM documents WHERE kind = ? AND key = ?", (kind, key)).fetchone()
    return json.loads(row[0]) if row else None


def _list_documents(connection: sqlite3.Connection, kind: str, prefix: str) -> dict[str, dict[str, Any]]:
    # substr() instead of LIKE: keys may contain % and _
    rows = connection.execute(
        "SELECT key, data FROM documents WHERE kind = ? AND substr(key, 1, ?) = ? ORDER BY key",
        (kind, len(prefix), prefix),
    )
    return {key: json.loads(data) for key, data in rows}


def _delete_document(connection: sqlite3.Connection, kind: str, key: str) -> bool:
    with transaction(connection):
        return connection.execute("DELETE FROM documents WHERE kind = ? AND key = ?", (kind, key)).rowcount > 0


def _put_document_if_lease(connection: sqlite3.Connection, kind: str, key: str, text: str, now: float,
                           fence: tuple[str, str, int, float]) -> bool:
    # one statement in a write transaction: no other process takes the lease between check and write
    with transaction(connection):
        return connection.execute(
            "INSERT INTO documents (kind, key, data, updated_at) SELECT ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM leases WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > ?) "
            "ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            (kind, key, text, now, *fence),
        ).rowcount > 0


# A new tenure (another holder, or the same one after expiry) counts the epoch up; a renewal keeps it.
LEASE_UPSERT = (
    "INSERT INTO leases (name, holder, expires_at, epoch) VALUES (:name, :holder, :expires_at, 1) "
    "ON CONFLICT (name) DO UPDATE SET "
    "epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > :now "
    "THEN leases.epoch ELSE leases.epoch + 1 END, "
    "holder = excluded.holder, expires_at = excluded.expires_at "
    "WHERE leases.holder = excluded.holder OR leases.expires_at <= :now "
    "RETURNING name, holder, expires_at, epoch"
)


def _acquire_lease(connection: sqlite3.Connection, name: str, holder: str, expires_at: float,
                   now: float) -> Lease | None:
    with transaction(connection):
        rows = connection.execute(
            LEASE_UPSERT, {"name": name, "holder": holder, "expires_at": expires_at, "now": now}
        ).fetchall()  # all: the statement is done before the commit
    return Lease(*rows[0]) if rows else None


def _release_lease(connection: sqlite3.Connection, name: str, holder: str) -> bool:
    with transaction(connection):
        return connection.execute(
            "UPDATE leases SET holder = '', expires_at = 0 WHERE name = ? AND holder = ?", (name, holder)
        ).rowcount > 0


def _get_lease(connection: sqlite3.Connection, name: str) -> Lease | None:
    row = connection.execute(
        "SELECT name, holder, expires_at, epoch FROM leases WHERE name = ? AND holder != ''", (name,)
    ).fetchone()
    return Lease(*row) if row is not None else None
