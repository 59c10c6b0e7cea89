"""The PostgreSQL store: the :class:`~lwm2m_server.store.base.Store` that several
daemons can share (``pip install 'tinymlaas[postgresql]'``).

``await PostgresqlStore.open("postgresql://user@host:5432/dbname", schema="tinymlaas")``
connects once to create the schema if it is missing and migrate it, then serves every
call from a connection pool (psycopg 3, async). The schema is the ``schema`` argument,
else the first one of the connection's ``search_path``; a URL can pick it the libpq way:
``postgresql://host/db?options=-csearch_path%3Dtinymlaas``. A password goes in the URL
or in libpq's ``PGPASSWORD``/``~/.pgpass``; no message or log line carries it.

Group commit, as on SQLite: the calls made in one turn of the event loop run in order
as one transaction on one pooled connection, each in a savepoint of its own, so that a
call that fails (an unknown registration, a full queue, a trigger) takes back only its
own writes and gets its own error while the others commit; no call is answered before
its transaction committed, and a call whose caller is cancelled meanwhile still runs
(as on SQLite). At most MAX_BATCHES such transactions run at once; calls
made while they do wait and go together in the next one, so the busier the store, the
more calls a transaction takes. The saves of registrations and of profiles among
them go as a few statements, one pipeline each, in a savepoint per group (see
:mod:`.bulk`); a group that fails goes back to its savepoint and its calls run one by
one (a burst of Registers: 0.50 → 0.28 ms of the server's CPU and 0.13 → 0.08 ms of
PostgreSQL's per Register). Calls of different transactions, like calls of other
nodes, may run in any order. A connection is not checked before use: one the server
dropped (a restart, an administrator terminating our sessions) fails at the BEGIN, and
the transaction runs again at once on another. Every psycopg or pool error becomes a
:class:`StoreError` naming the server (``host:port/dbname``) and the operation.

Concurrency across nodes: enqueue counts and inserts under a transaction-scoped
advisory lock per (schema, endpoint), so no number of nodes exceeds ``max_pending``;
Registers of one endpoint take a lock of the endpoint too, so that when two nodes
save one at once, the later replaces the earlier, as on SQLite. A lease is taken in
one conditional upsert; a fenced document write locks the lease row (FOR SHARE), so it
and a takeover of the lease happen one after the other, never interleaved.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, TypeVar

import psycopg
import structlog
from psycopg.errors import ForeignKeyViolation, UniqueViolation
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

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
from .postgresql_schema import FINISHED_SQL, SCHEMA_VERSION, Target, migrate

log = structlog.get_logger(__name__)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]

MAX_CONNECTIONS = 10
"""Pool size by default: calls beyond it wait for a free connection."""
CONNECTION_TIMEOUT_S = 10.0
"""How long a call waits for a pooled connection (the server down) before it fails."""
RECONNECT_S = 5.0
"""How long the pool retries one lost connection (after 1, 2, 4 ... s) before it gives
up; the next call then starts a new attempt at once. This bounds how long calls still
fail after the server is back to about 2 s, where the pool's default (300 s of
doubling delays) would let it grow toward minutes after a long outage."""


MAX_BATCH = 50
"""Calls one transaction takes at most: each is a savepoint (a subtransaction), and a
transaction's first 64 subtransactions that write are the ones PostgreSQL keeps in
shared memory, beyond which every session's snapshots get slower."""
MAX_BATCHES = 2
"""Transactions of one store under way at once (each on a connection of its own): a
call made meanwhile waits for one to end and goes with the others made meanwhile, so
that the busier the store, the more calls a transaction takes; two, so that one slow
call (a lock another node holds) does not hold up all the others."""

_Call = tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...], "asyncio.Future[Any]"]
"""A call waiting for its transaction: operation, function, arguments, the caller's future."""


class PostgresqlStore(Store):
    """State in a PostgreSQL schema; create with ``await PostgresqlStore.open(url)``."""

    def __init__(self, target: Target, schema: str, pool: AsyncConnectionPool, max_connections: int) -> None:
        self.server = target.server
        """``host:port/dbname`` of the database (no credentials)."""
        self.schema = schema
        """The schema holding the tables."""
        self._target = target
        self._pool = pool
        self._max_connections = max_connections
        self._closed = False
        self._busy = 0  # calls made and not yet answered: close waits for them
        self._idle = asyncio.Event()
        self._idle.set()
        self._queue: list[_Call] = []  # calls for the next transaction
        self._flush_due = False  # a _flush is scheduled for the end of this loop turn
        self._running = 0  # transactions under way
        self._max_batches = min(MAX_BATCHES, max_connections)
        self._batches: set[asyncio.Task[None]] = set()  # (strong references to the tasks)

    def __repr__(self) -> str:
        return f"PostgresqlStore({self.server!r}, schema={self.schema!r}{', closed' if self._closed else ''})"

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        timeout_s: float = CONNECTION_TIMEOUT_S,
    ) -> PostgresqlStore:
        """Connect, create the schema if missing and migrate it, then open the pool;
        StoreError (naming the server, not the password) if any of it fails."""
        target = Target(str(url), schema)
        if max_connections < 1:
            raise StoreError(f"PostgreSQL store {target.server}: max_connections must be >= 1, got {max_connections}")
        try:
            connection = await psycopg.AsyncConnection.connect(target.conninfo, autocommit=True)
        except psycopg.Error as error:
            raise target.error("connect", error) from None
        try:
            found_schema, migrated_from = await migrate(connection, target)
        except psycopg.Error as error:
            raise target.error("migrate", error) from None
        finally:
            await connection.close()
        pool = AsyncConnectionPool(
            target.conninfo,
            kwargs={"autocommit": True},  # transactions are explicit, where a call needs one
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=timeout_s,
            reconnect_timeout=RECONNECT_S,
            name=f"tinymlaas-store {target.server}",
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except psycopg.Error as error:
            await pool.close()
            raise target.error("open connection pool", error) from None
        log.info("store opened", server=target.server, schema=found_schema, version=SCHEMA_VERSION,
                 migrated_from=migrated_from)
        return cls(target, found_schema, pool, max_connections)

    # -- plumbing ------------------------------------------------------------

    async def _run(self, operation: str, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await function(connection, *args)`` in the next transaction (see _flush);
        errors → StoreError."""
        if self._closed:
            raise StoreError(f"PostgreSQL store {self.server}: {operation} after close")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((operation, function, args, future))
        self._busy += 1  # given back when the call's transaction has ended (_run_batch)
        self._idle.clear()
        if not self._flush_due and self._running < self._max_batches:
            self._flush_due = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        """Start a transaction for the calls gathered so far (at most MAX_BATCH each) while
        fewer than MAX_BATCHES run; the calls left wait for one to end, and go together."""
        self._flush_due = False
        while self._queue and self._running < self._max_batches:
            calls, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run_batch(calls))
            self._batches.add(task)
            task.add_done_callback(self._batch_ended)

    def _batch_ended(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._running -= 1
        self._flush()

    async def _run_batch(self, calls: list[_Call]) -> None:
        """The calls as one transaction, then each call's outcome to its caller. When one
        of them loses a deadlock to another node's transaction (both batched calls whose
        locks they took in opposite orders), the calls before it commit, and it and the
        ones after it run each alone, in order: alone, a call holds no lock another call
        of its transaction took before it, and waits its turn instead of deadlocking."""
        outcomes: list[tuple[bool, Any]] = []
        units = [[calls[index] for index in group]
                 for group in groups([(function, args) for _, function, args, _ in calls], _BULK)]
        calls = [call for unit in units for call in unit]  # in the order they run (see .bulk)
        try:
            outcomes = await self._transaction(units)
            while len(outcomes) < len(calls):
                outcomes += await self._transaction([[calls[len(outcomes)]]])
        except Exception as error:  # a bug: no caller waits forever
            outcomes = [(False, error)] * len(calls)
        finally:  # cancelled (the loop ends): the callers left are cancelled too
            outcomes += [(False, None)] * (len(calls) - len(outcomes))
            for (*_, future), (ok, value) in zip(calls, outcomes):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                elif value is None:
                    future.cancel()
                else:
                    future.set_exception(value)
            self._busy -= len(calls)
            if not self._busy:
                self._idle.set()

    async def _transaction(self, units: list[list[_Call]]) -> list[tuple[bool, Any]]:
        """Run the calls in one transaction on a pooled connection: BEGIN, each unit in a
        savepoint of its own (when there are several calls), so that a failing call takes
        back only its own writes, then COMMIT. A unit is one call, or saves of one kind
        sent as one statement of their bulk form (see .bulk); when that statement is
        refused, its calls run one by one. Outcomes, (True, result) or (False, StoreError),
        in call order; none holds before the COMMIT succeeded. Fewer outcomes than calls:
        the first call without one lost a deadlock, and it and the rest did not run.

        No connection is checked before use (that was a round trip per call): one the
        server dropped (a restart, pg_terminate_backend) fails at the BEGIN, which goes
        with the first call's statements, goes back to the pool, which replaces it, and
        the transaction runs again at once on the next connection; so does one lost at
        any point before its COMMIT was sent (the server rolled the transaction back).
        The pool's own check would wait 1, 2, 4 ... s between dead ones."""
        calls = [call for unit in units for call in unit]
        for attempt in range(self._max_connections + 1):
            try:
                connection = await self._pool.getconn()
            except psycopg.Error as error:  # no connection in time: the server is down
                return [(False, self._error(operation, error)) for operation, *_ in calls]
            committing = False
            try:
                outcomes: list[tuple[bool, Any]] = []
                several = len(calls) > 1
                # Statements sent with the next call: its savepoint (a savepoint of the
                # same name in the one before: ROLLBACK TO takes back the latest only).
                ahead: tuple[str, ...] = ("BEGIN", "SAVEPOINT call") if several else ("BEGIN",)
                pending = list(units)
                while pending:
                    unit = pending.pop(0)
                    operation, function, args, _ = unit[0]
                    if len(unit) > 1:
                        outcome = await self._call(connection, ahead, operation, _BULK[function][0],
                                                   ([call[2] for call in unit],))
                        if not outcome[0] and not _lost_a_lock_race(outcome[1]):
                            # one of them is refused: each on its own names which
                            await connection.execute("ROLLBACK TO call")
                            ahead = ()
                            pending[:0] = [[call] for call in unit]
                            continue
                    else:
                        outcome = await self._call(connection, ahead, operation, function, args)
                    last = not pending
                    if several and not outcome[0] and _lost_a_lock_race(outcome[1]):
                        committing = True  # the calls before it, and none after it
                        await connection.execute("ROLLBACK TO call; COMMIT")
                        return outcomes
                    outcomes += [outcome] * len(unit)
                    if outcome[0]:
                        ahead = ("SAVEPOINT call",)
                        if last:
                            committing = True
                            await connection.execute("COMMIT")
                    elif several:
                        ahead = ()  # the next call starts from the savepoint this one rolled back to
                        committing = last
                        await connection.execute("ROLLBACK TO call; COMMIT" if last else "ROLLBACK TO call")
                    else:
                        await connection.execute("ROLLBACK")
                return outcomes
            except psycopg.Error as error:
                if not committing and connection.broken and attempt < self._max_connections:
                    continue  # nothing of it was committed: again, on another connection
                # none of it was committed: a call that failed keeps its own error
                outcomes += [(True, None)] * (len(calls) - len(outcomes))
                return [outcome if not outcome[0] else (False, self._error(
                    "commit" if committing else operation, error)) for outcome, (operation, *_) in zip(outcomes, calls)]
            finally:
                await self._pool.putconn(connection)  # rolls back a transaction left open
        raise AssertionError("unreachable")

    async def _call(self, connection: Connection, ahead: tuple[str, ...], operation: str,
                    function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> tuple[bool, Any]:
        """One call's outcome, the statements ``ahead`` sent before it (in its pipeline,
        if it is a PIPELINED function: one round trip for all); a lost connection raises
        (the whole transaction is gone)."""
        try:
            if function in PIPELINED:
                async with connection.pipeline():
                    for statement in ahead:
                        await connection.execute(statement)
                    result = await function(connection, *args)
            else:
                if ahead:
                    await connection.execute("; ".join(ahead))
                result = await function(connection, *args)
        except StoreError as error:
            return False, error
        except psycopg.Error as error:
            if connection.broken:
                raise
            return False, self._error(operation, error)
        except UnicodeError as error:  # a str with lone surrogates cannot be sent as UTF-8
            return False, _caused(StoreError(
                f"PostgreSQL store {self.server}: {operation}: text is not valid Unicode ({error})"
            ), error)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            # decoding a row that is not what this code writes
            return False, _caused(StoreError(
                f"PostgreSQL store {self.server}: {operation}: unreadable row ({error!r})"
            ), error)
        if connection.pgconn.transaction_status == TransactionStatus.INERROR:  # a failure swallowed
            return False, StoreError(f"PostgreSQL store {self.server}: {operation} failed: transaction aborted")
        return True, result

    def _error(self, operation: str, error: BaseException) -> StoreError:
        return _caused(self._target.error(operation, error), error)

    # -- registrations -------------------------------------------------------

    async def save_registration(self, registration: Registration) -> None:
        await self._run("save registration", _save_registration, registration_row(registration))

    async def delete_registration(self, registration_id: str) -> bool:
        return await self._run("delete registration", _delete, "registrations", "id", registration_id) > 0

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
        return await self._run(
            "read queue", _entries_where,
            "endpoint = %s AND state = %s ORDER BY created_at, seq", (endpoint, PENDING),
        )

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
        found = await self._run("read queue", _entries_where, "id = %s", (entry_id,))
        return found[0] if found else None

    async def entries(self, endpoint: str, limit: int = 100) -> list[QueueEntry]:
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        return await self._run(
            "read queue", _entries_where,
            "endpoint = %s ORDER BY created_at DESC, seq DESC LIMIT %s", (endpoint, limit),
        )

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
        self._closed = True  # calls made from now on fail; calls under way finish first
        await self._idle.wait()
        await self._pool.close()
        log.info("store closed", server=self.server, schema=self.schema)


def _lost_a_lock_race(error: BaseException) -> bool:
    """A deadlock (or serialization failure) with another transaction: the call may succeed alone."""
    return getattr(error.__cause__, "sqlstate", None) in ("40P01", "40001")


def _caused(error: StoreError, cause: BaseException) -> StoreError:
    error.__cause__ = cause  # as ``raise error from cause`` would
    return error


# -- queries: plain coroutines of a connection, each run inside a transaction ------------


async def _fetchall(connection: Connection, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return await (await connection.execute(query, params)).fetchall()


async def _delete(connection: Connection, table: str, column: str, key: object) -> int:
    # table and column are this module's constants, never input
    return (await connection.execute(f"DELETE FROM {table} WHERE {column} = %s", (key,))).rowcount


async def _save_registration(connection: Connection, row: tuple[Any, ...]) -> None:
    # PIPELINED
    await _save_registrations(connection, [(row,)])


async def _save_registrations(connection: Connection, calls: list[tuple[Any, ...]]) -> None:
    """The rows of ``calls`` (the arguments of :func:`_save_registration`), endpoints
    distinct: the endpoints' locks in one statement, in their order, then the other
    registrations of the endpoints deleted and the rows saved."""
    # PIPELINED: one round trip. The endpoint's lock makes Registers of one endpoint at
    # two nodes take turns: the later one's DELETE sees the earlier one committed and
    # replaces it, where it would otherwise fail on the endpoint's UNIQUE constraint.
    rows = [row for row, in calls]
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended("
        "'tinymlaas registration ' || current_schema() || '/' || endpoint, 0)) "
        "FROM unnest(%s::text[]) AS endpoint",
        (sorted(row[1] for row in rows),),
    )
    # A new Register of the endpoint replaces its old registration (and,
    # through the foreign key, that registration's observations).
    await connection.execute(
        "DELETE FROM registrations r USING unnest(%s::text[], %s::text[]) AS new (endpoint, id) "
        "WHERE r.endpoint = new.endpoint AND r.id != new.id",
        ([row[1] for row in rows], [row[0] for row in rows]),
    )
    for piece in pieces(rows):
        await connection.execute(registration_upsert("%s", len(piece)), [value for row in piece for value in row])


async def _load_registrations(connection: Connection) -> list[Registration]:
    rows = await _fetchall(connection, f"SELECT {REGISTRATION_COLUMNS} FROM registrations ORDER BY endpoint")
    return [registration_from_row(row) for row in rows]



async def _save_observation(connection: Connection, row: tuple[Any, ...]) -> None:
    try:
        await connection.execute(
            f"INSERT INTO observations ({OBSERVATION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (token) DO UPDATE SET endpoint = excluded.endpoint, "
            "registration_id = excluded.registration_id, paths = excluded.paths, "
            "content_format = excluded.content_format, created_at = excluded.created_at",
            row,
        )
    except ForeignKeyViolation:  # the foreign key checks the registration, even one deleted just now
        raise UnknownRegistrationError(row[2]) from None


async def _load_observations(connection: Connection) -> list[ObservationRecord]:
    rows = await _fetchall(connection, f"SELECT {OBSERVATION_COLUMNS} FROM observations ORDER BY created_at, seq")
    return observations_from_rows(rows)




async def _enqueue(connection: Connection, row: tuple[Any, ...], max_pending: int) -> None:
    entry_id, endpoint = row[0], row[1]
    # One enqueue per endpoint at a time, whichever node makes it: count and insert
    # are atomic. The lock is the transaction's; commit or rollback releases it.
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended("
        "'tinymlaas queue ' || current_schema() || '/' || %s::text, 0))",
        (endpoint,),
    )
    if await _fetchall(connection, "SELECT 1 FROM queue WHERE id = %s", (entry_id,)):
        raise StoreError(f"queue entry {entry_id!r} already exists")
    count = (await _fetchall(
        connection, "SELECT count(*) FROM queue WHERE endpoint = %s AND state = %s", (endpoint, PENDING)
    ))[0][0]
    if count >= max_pending:
        raise QueueFullError(endpoint, max_pending)
    try:
        await connection.execute(
            f"INSERT INTO queue ({QUEUE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", row
        )
    except UniqueViolation:  # the same id queued for another endpoint at this moment
        raise StoreError(f"queue entry {entry_id!r} already exists") from None


async def _entries_where(connection: Connection, condition: str, params: tuple[Any, ...]) -> list[QueueEntry]:
    rows = await _fetchall(connection, f"SELECT {QUEUE_COLUMNS} FROM queue WHERE {condition}", params)
    return [entry_from_row(row) for row in rows]


async def _count_pending(connection: Connection) -> int:
    return int((await _fetchall(connection, "SELECT count(*) FROM queue WHERE state = %s", (PENDING,)))[0][0])


async def _set_state(connection: Connection, entry_id: str, state: str, result: str | None) -> QueueEntry:
    rows = await _fetchall(
        connection,
        f"UPDATE queue SET state = %s, result = %s WHERE id = %s RETURNING {QUEUE_COLUMNS}",
        (state, result, entry_id),
    )
    if not rows:
        raise UnknownEntryError(entry_id)
    return entry_from_row(rows[0])


async def _expire_entries(connection: Connection, now: float) -> list[QueueEntry]:
    # One statement: an entry two nodes expire at once is reported by one of them.
    rows = await _fetchall(
        connection,
        f"WITH expired AS (UPDATE queue SET state = %s WHERE state = %s AND expires_at < %s "
        f"RETURNING seq, {QUEUE_COLUMNS}) "
        f"SELECT {QUEUE_COLUMNS} FROM expired ORDER BY created_at, seq",
        (EXPIRED, PENDING, now),
    )
    return [entry_from_row(row) for row in rows]


async def _prune(connection: Connection, before: float) -> int:
    return (await connection.execute(
        f"DELETE FROM queue WHERE state IN ({FINISHED_SQL}) AND created_at < %s", (before,)
    )).rowcount


async def _put_document(connection: Connection, kind: str, key: str, text: str, now: float) -> None:
    # PIPELINED
    await _put_documents(connection, [(kind, key, text, now)])


async def _put_documents(connection: Connection, calls: list[tuple[str, str, str, float]]) -> None:
    """The documents of ``calls`` (the arguments of :func:`_put_document`), keys distinct."""
    # PIPELINED
    for piece in pieces(calls):
        await connection.execute(document_upsert("%s", len(piece)), [value for call in piece for value in call])


async def _get_document(connection: Connection, kind: str, key: str) -> dict[str, Any] | None:
    rows = await _fetchall(connection, "SELECT data FROM documents WHERE kind = %s AND key = %s", (kind, key))
    return json.loads(rows[0][0]) if rows else None


async def _list_documents(connection: Connection, kind: str, prefix: str) -> dict[str, dict[str, Any]]:
    # LIKE with the prefix's own % _ \ escaped; on a "C"-collated key it uses the primary key index
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = await _fetchall(
        connection,
        "SELECT key, data FROM documents WHERE kind = %s AND key LIKE %s ORDER BY key",
        (kind, pattern),
    )
    return {key: json.loads(data) for key, data in rows}


async def _delete_document(connection: Connection, kind: str, key: str) -> bool:
    return (await connection.execute(
        "DELETE FROM documents WHERE kind = %s AND key = %s", (kind, key)
    )).rowcount > 0



async def _put_document_if_lease(connection: Connection, kind: str, key: str, text: str, now: float,
                                 fence: tuple[str, str, int, float]) -> bool:
    # FOR SHARE: a node taking the lease over (an UPDATE of its row) waits for this write
    # to commit, or this write waits for the takeover and then finds the epoch changed.
    return (await connection.execute(
        "WITH fence AS (SELECT 1 FROM leases WHERE name = %s AND holder = %s AND epoch = %s "
        "AND expires_at > %s FOR SHARE) "
        "INSERT INTO documents (kind, key, data, updated_at) SELECT %s, %s, %s, %s FROM fence "
        "ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        (*fence, kind, key, text, now),
    )).rowcount > 0


async def _acquire_lease(connection: Connection, name: str, holder: str, expires_at: float,
                         now: float) -> Lease | None:
    # One statement. Holders racing for a free lease: one inserts, the others meet its
    # row and, finding another holder's unexpired lease, change nothing. A new tenure
    # (another holder, or the same one after expiry) counts the epoch up; a renewal keeps it.
    rows = await (await connection.execute(
        "INSERT INTO leases (name, holder, expires_at, epoch) VALUES (%(name)s, %(holder)s, %(expires_at)s, 1) "
        "ON CONFLICT (name) DO UPDATE SET "
        "epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > %(now)s "
        "THEN leases.epoch ELSE leases.epoch + 1 END, "
        "holder = excluded.holder, expires_at = excluded.expires_at "
        "WHERE leases.holder = excluded.holder OR leases.expires_at <= %(now)s "
        "RETURNING name, holder, expires_at, epoch",
        {"name": name, "holder": holder, "expires_at": expires_at, "now": now},
    )).fetchall()
    return Lease(*rows[0]) if rows else None


async def _release_lease(connection: Connection, name: str, holder: str) -> bool:
    return (await connection.execute(
        "UPDATE leases SET holder = '', expires_at = 0 WHERE name = %s AND holder = %s", (name, holder)
    )).rowcount > 0


async def _get_lease(connection: Connection, name: str) -> Lease | None:
    rows = await _fetchall(
        connection, "SELECT name, holder, expires_at, epoch FROM leases WHERE name = %s AND holder != ''", (name,)
    )
    return Lease(*rows[0]) if rows else None


_BULK: Bulk = {
    _save_registration: (_save_registrations, registration_key),
    _put_document: (_put_documents, document_key),
}


PIPELINED = frozenset({_save_registration, _put_document, _save_registrations, _put_documents})
"""Query functions that only send statements, read no result and catch no error: the
store runs them in pipeline mode, with the statements before them (BEGIN, a
savepoint), all in one round trip; their errors come at the pipeline's end."""
