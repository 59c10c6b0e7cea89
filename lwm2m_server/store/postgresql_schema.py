"""The PostgreSQL store's schema and migrations, its connection string, and
psycopg errors told as :class:`~.base.StoreError` naming the server, never the password.

Migrations run in one transaction holding an advisory lock: nodes that start
together migrate one after the other, and the later ones find nothing to do. DDL
is transactional in PostgreSQL, so a failed migration leaves the schema as it was.
"""

from __future__ import annotations

import os
import re
import time
from urllib.parse import unquote

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .base import FINISHED_STATES, PENDING, StoreError

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""Schema names the ``schema`` argument takes: lower case, so that PostgreSQL's
folding of unquoted names cannot make the search path and the schema differ."""
MIGRATION_LOCK = "tinymlaas store migration"
"""Advisory lock key (hashed) that migrating nodes take, one database-wide."""

_STATES_SQL = ", ".join(f"'{state}'" for state in (PENDING, *FINISHED_STATES))
FINISHED_SQL = ", ".join(f"'{state}'" for state in FINISHED_STATES)

# Keys that are listed in order (endpoints, document keys) use the "C" collation:
# code-point order, as SQLite sorts, whatever the database's locale; prefix
# searches (LIKE 'r1/%') can then use the primary key's index.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE registrations (
            id TEXT PRIMARY KEY,
            endpoint TEXT COLLATE "C" NOT NULL UNIQUE,
            address TEXT NOT NULL,
            lifetime BIGINT NOT NULL,
            lwm2m_version TEXT NOT NULL,
            binding TEXT NOT NULL,
            queue_mode BOOLEAN NOT NULL,
            sms TEXT,
            object_list TEXT NOT NULL,
            registered_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            extra TEXT NOT NULL,
            identity TEXT
        )""",
        "CREATE INDEX registrations_expires_at ON registrations (expires_at)",
        # seq orders observations made in the same instant by insertion
        """CREATE TABLE observations (
            token BYTEA PRIMARY KEY,
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            endpoint TEXT NOT NULL,
            registration_id TEXT NOT NULL REFERENCES registrations (id) ON DELETE CASCADE,
            paths TEXT NOT NULL,
            content_format INTEGER,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX observations_registration ON observations (registration_id)",
        "CREATE INDEX observations_endpoint ON observations (endpoint)",
        f"""CREATE TABLE queue (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            endpoint TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL CHECK (state IN ({_STATES_SQL})),
            request TEXT NOT NULL,
            result TEXT
        )""",
        "CREATE INDEX queue_endpoint_state ON queue (endpoint, state, created_at)",
        "CREATE INDEX queue_state_expires ON queue (state, expires_at)",
        "CREATE INDEX queue_endpoint_created ON queue (endpoint, created_at)",
        """CREATE TABLE documents (
            kind TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            data TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
    ),
    2: (
        # holder '' = released; the row stays so that the epoch keeps counting up
        """CREATE TABLE leases (
            name TEXT COLLATE "C" PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            epoch BIGINT NOT NULL
        )""",
    ),
}
"""Schema migrations: version → statements taking the previous version to it."""
SCHEMA_VERSION = max(MIGRATIONS)


class Target:
    """Where a store's connections go: the libpq connection string and its printable name."""

    def __init__(self, url: str, schema: str | None) -> None:
        self.secrets = _url_passwords(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as error:
            raise StoreError(f"PostgreSQL store: bad connection URL: {self.redact(str(error))}") from None
        if params.get("password"):
            self.secrets.add(str(params["password"]))
        self.server = _server_name(params)
        """``host:port/dbname``, for messages and logs (no user, no password)."""
        self.schema = schema
        """The schema the tables live in; None: the first one of the server's search_path."""
        extra: dict[str, str] = {}
        if schema is not None:
            if not SCHEMA_NAME.fullmatch(schema):
                raise StoreError(
                    f"PostgreSQL store {self.server}: schema {schema!r} must be a lower-case "
                    "name of letters, digits and _ (at most 63), not starting with a digit"
                )
            # every connection of the pool, including the ones made after a reconnect
            extra["options"] = f"{params.get('options', '')} -c search_path={schema}".strip()
        if "application_name" not in params:
            extra["application_name"] = "tinymlaas"  # how operators tell our sessions in pg_stat_activity
        if "connect_timeout" not in params:
            extra["connect_timeout"] = "10"  # libpq waits forever for an unanswering host otherwise
        self.conninfo = make_conninfo(url, **extra)
        """The connection string psycopg is given (it may hold the password: never print it)."""

    def redact(self, text: str) -> str:
        """``text`` without any password this target knows, on one line."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return " ".join(text.split())

    def error(self, operation: str, error: BaseException) -> StoreError:
        """A psycopg or pool failure as a StoreError naming the server and the operation."""
        if isinstance(error, psycopg_pool.PoolTimeout):
            reason = f"no database connection could be had in time (is the server up?): {error}"
        elif isinstance(error, psycopg_pool.PoolClosed):
            reason = "the store is closed"
        else:
            code = getattr(getattr(error, "diag", None), "sqlstate", None)
            text = str(error).removeprefix("connection failed: ")  # the operation says so already
            reason = f"{text} (SQLSTATE {code})" if code else text
        return StoreError(f"PostgreSQL store {self.server}: {operation} failed: {self.redact(reason)}")


def _url_passwords(url: str) -> set[str]:
    """The password of a ``scheme://user:password@host`` URL as written and decoded, found
    without a parser: an error about a URL libpq cannot parse may quote the URL."""
    match = re.match(r"[a-z]+://[^:@/]*:([^@/]*)@", url)  # libpq ends user:password at @ or /
    if not match or not match.group(1):
        return set()
    return {match.group(1), unquote(match.group(1))}


def _server_name(params: dict[str, object]) -> str:
    host = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "local socket")
    port = str(params.get("port") or os.environ.get("PGPORT") or 5432)
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user")
                 or os.environ.get("PGUSER") or _login_name())
    return f"{host}:{port}/{dbname}"


def _login_name() -> str:
    try:
        return os.getlogin()
    except OSError:
        import getpass

        return getpass.getuser()


async def migrate(connection: psycopg.AsyncConnection, target: Target) -> tuple[str, int]:
    """Create the schema if missing and bring it to :data:`SCHEMA_VERSION`; returns the
    schema and the version found. ``connection`` is in autocommit mode."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (MIGRATION_LOCK,))
        schema = target.schema or await _search_path_schema(connection, target)
        exists = await (await connection.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))).fetchone()
        if not exists:  # checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE right even then
            await connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await connection.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        row = await (await connection.execute("SELECT max(version) FROM schema_version")).fetchone()
        found = int(row[0] or 0) if row is not None else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL store {target.server}: schema {schema!r} is at version {found}, newer "
                f"than this program's {SCHEMA_VERSION}; upgrade TinyMLaaS"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (version, time.time())
            )
    return schema, found


async def _search_path_schema(connection: psycopg.AsyncConnection, target: Target) -> str:
    """The schema new tables go to: the first one of search_path (created if missing,
    so ``options=-csearch_path%3Dname`` in the URL is enough to pick one)."""
    row = await (await connection.execute("SELECT current_schema(), current_setting('search_path')")).fetchone()
    if row and row[0]:
        return str(row[0])
    for entry in re.findall(r'"(?:[^"]|"")*"|[^,\s]+', row[1] if row else ""):
        if entry.strip('"') == "$user":
            continue
        return entry[1:-1].replace('""', '"') if entry.startswith('"') else entry.lower()
    raise StoreError(f"PostgreSQL store {target.server}: search_path names no schema to keep tables in")
