"""The PostgreSQL store: the :class:`~lwm2m_server.store.base.Store` that several
daemons can share (``pip install 'tinymlaas[postgresql]'``).

``await PostgresqlStore.open("postgresql://user@host:5432/dbname", schema="tinymlaas")``
connects once to create the schema if it is missing and migrate it, then serves every
call from a connection pool (psycopg 3, async). The schema is the ``schema`` argument,
else the first one of the connection's ``search_path``; a URL can pick it the libpq way:
``postgresql://host/db?options=-csearch_path%3Dtinymlaas``. A password goes in the URL
or in libpq's ``PGPASSWORD``/``~/.pgpass``; no message or log line carries it.

Calls run concurrently, each on a pooled connection, each in its own transaction
(autocommit for single statements): unlike SQLite, calls not awaited one after the
other may run in any order. A connection is checked (an empty query) before each
use, so after the server restarts, or an administrator terminates our sessions, the
next call gets a fresh one. Every psycopg or pool error becomes a :class:`StoreError`
naming the server (``host:port/dbname``) and the operation.

Concurrency across nodes: enqueue counts and inserts under a transaction-scoped
advisory lock per (schema, endpoint), so no number of nodes exceeds ``max_pending``;
Registers of one endpoint take a lock of the endpoint too, so that when two nodes
save one at once, the later replaces the earlier, as on SQLite. A lease is taken in
one conditional upsert; a fenced document write locks the lease row (FOR SHARE), so it
and a takeover of the lease happen one after the other, never interleaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import psycopg
import structlog
from psycopg.errors import ForeignKeyViolation, UniqueViolation
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
        self._busy = 0  # calls under way: close waits for them
        self._idle = asyncio.Event()
        self._idle.set()

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
        """``await function(connection, *args)`` on a pooled connection; errors → StoreError."""
        if self._closed:
            raise StoreError(f"PostgreSQL store {self.server}: {operation} after close")
        self._busy += 1
        self._idle.clear()
        try:
            async with self._connection() as connection:
                return await function(connection, *args)
        except StoreError:
            raise
        except psycopg.Error as error:
            raise self._target.error(operation, error) from error
        except UnicodeError as error:  # a str with lone surrogates cannot be sent as UTF-8
            raise StoreError(
                f"PostgreSQL store {self.server}: {operation}: text is not valid Unicode ({error})"
            ) from error
        except (ValueError, KeyError, TypeError, IndexError) as error:
            # decoding a row that is not what this code writes
            raise StoreError(
                f"PostgreSQL store {self.server}: {operation}: unreadable row ({error!r})"
            ) from error
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection that answered just now. One the server dropped (a restart,
        pg_terminate_backend) goes back to the pool, which replaces it, and the next is
        tried at once: the pool's own check would wait 1, 2, 4 ... s between dead ones."""
        for attempt in range(self._max_connections + 1):
            connection = await self._pool.getconn()
            try:
                await connection.execute("")  # an empty query: one round trip, no work
            except BaseException as error:  # a cancelled call must give its connection back too
                await self._pool.putconn(connection)
                if isinstance(error, psycopg.OperationalError) and attempt < self._max_connections:
                    continue
                raise
            try:
                yield connection
            finally:
                await self._pool.putconn(connection)
            return

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


# -- queries: plain coroutines of a connection -----------------------------------


async def _fetchall(connection: Connection, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return await (await connection.execute(query, params)).fetchall()


async def _delete(connection: Connection, table: str, column: str, key: object) -> int:
    # table and column are this module's constants, never input
    return (await connection.execute(f"DELETE FROM {table} WHERE {column} = %s", (key,))).rowcount


async def _save_registration(connection: Connection, row: tuple[Any, ...]) -> None:
    # One pipelined round trip. The endpoint's lock makes Registers of one endpoint at
    # two nodes take turns: the later one's DELETE sees the earlier one committed and
    # replaces it, where it would otherwise fail on the endpoint's UNIQUE constraint.
    async with connection.pipeline(), connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended("
            "'tinymlaas registration ' || current_schema() || '/' || %s::text, 0))",
            (row[1],),
        )
        # A new Register of the endpoint replaces its old registration (and,
        # through the foreign key, that registration's observations).
        await connection.execute(
            "DELETE FROM registrations WHERE endpoint = %s AND id != %s", (row[1], row[0])
        )
        # An upsert keeps the observations of a registration that is only updated.
        await connection.execute(
            f"INSERT INTO registrations ({REGISTRATION_COLUMNS}, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET endpoint = excluded.endpoint, "
            "address = excluded.address, lifetime = excluded.lifetime, "
            "lwm2m_version = excluded.lwm2m_version, binding = excluded.binding, "
            "queue_mode = excluded.queue_mode, sms = excluded.sms, "
            "object_list = excluded.object_list, registered_at = excluded.registered_at, "
            "updated_at = excluded.updated_at, expires_at = excluded.expires_at, "
            "extra = excluded.extra, identity = excluded.identity",
            row,
        )


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
    async with connection.transaction():
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
    await connection.execute(
        "INSERT INTO documents (kind, key, data, updated_at) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        (kind, key, text, now),
    )


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
