"""The PostgreSQL store's own behaviour, against a real server: several stores (nodes)
on one schema, reconnecting after the server drops our sessions, migrations, errors
that name the server but never the password, its configuration and the daemon on it.
Skipped without a server, failed instead with TINYMLAAS_REQUIRE_POSTGRESQL=1 (see
test_store_contract.py, which runs the common contract on this backend)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import uuid
from dataclasses import replace
from typing import Callable, Iterator

import pytest

from lwm2m_server.config import ConfigError, ServerConfig, StoreConfig, config_to_dict, parse_config
from lwm2m_server.store import QueueFullError, StoreError, UnknownEntryError, UnknownRegistrationError
from test_store_contract import drop_schema, entry, observation, registration, require_postgresql

ALL_VERSIONS = [(1,), (2,)]
"""schema_version after migrating: one row per migration (2: leases)."""


def with_params(url: str, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
def url() -> str:
    return require_postgresql()


@pytest.fixture
def new_schema(url: str) -> Iterator[Callable[[], str]]:
    """Makes fresh schema names; every one is dropped after the test."""
    made: list[str] = []

    def new() -> str:
        made.append(f"test_{uuid.uuid4().hex[:16]}")
        return made[-1]

    yield new
    for schema in made:
        drop_schema(schema)


async def open_store(url: str, schema: str, **options):
    from lwm2m_server.store.postgresql import PostgresqlStore

    return await PostgresqlStore.open(url, schema=schema, **options)


async def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    """One statement on a connection of its own (as an administrator would run it)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        cursor = await connection.execute(query, params)
        return await cursor.fetchall() if cursor.description else []


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- several nodes on one schema -----------------------------------------------------


async def test_two_stores_on_one_schema_see_each_others_writes(url, new_schema):
    schema = new_schema()
    async with await open_store(url, schema) as a, await open_store(url, schema) as b:
        await a.save_registration(registration("old", "dev1"))
        await a.save_observation(observation(b"\x01", "old"))
        assert await b.load_observations() == [observation(b"\x01", "old")]
        # a Register at the other node replaces the registration and drops its observations
        await b.save_registration(registration("new", "dev1"))
        assert [r.id for r in await a.load_registrations()] == ["new"]
        assert await a.load_observations() == []

        await a.enqueue(entry("q1"), max_pending=5)
        assert await b.pending("dev1") == [entry("q1")]
        await b.set_state("q1", "delivered", {"code": "2.04"})
        assert (await a.get_entry("q1")).state == "delivered"

        await b.put_document("rollout", "r1", {"state": "running"}, 1.0)
        assert await a.list_documents("rollout") == {"r1": {"state": "running"}}


async def test_concurrent_enqueues_from_two_stores_never_exceed_max_pending(url, new_schema):
    schema = new_schema()
    async with await open_store(url, schema) as a, await open_store(url, schema) as b:
        for round_ in range(5):
            endpoint = f"dev{round_}"
            results = await asyncio.gather(
                *(store.enqueue(entry(f"{endpoint}-{name}{i}", endpoint), max_pending=3)
                  for i in range(10) for name, store in (("a", a), ("b", b))),
                return_exceptions=True,
            )
            assert sum(result is None for result in results) == 3
            assert all(isinstance(result, QueueFullError) for result in results if result is not None)
            assert len(await a.pending(endpoint)) == 3
        # an entry that expires is reported by one node, not by both
        expired = await asyncio.gather(a.expire_entries(now=1e12), b.expire_entries(now=1e12))
        ids = [e.id for found in expired for e in found]
        assert len(ids) == len(set(ids)) == 15


async def test_racing_registers_of_one_endpoint_on_two_stores_leave_the_last_one(url, new_schema):
    schema = new_schema()
    async with await open_store(url, schema) as a, await open_store(url, schema) as b:
        saves = [(a if i % 2 else b).save_registration(registration(f"r{i}", "dev1")) for i in range(20)]
        assert await asyncio.gather(*saves) == [None] * 20  # none fails on the endpoint's UNIQUE
        assert len(await a.load_registrations()) == 1


async def test_batched_registers_of_two_stores_in_opposite_orders_all_succeed(url, new_schema):
    # each store's Registers of one loop turn are one transaction, taking the endpoints'
    # locks in opposite orders: PostgreSQL breaks the deadlock, the loser's calls run again
    schema = new_schema()
    async with await open_store(url, schema) as a, await open_store(url, schema) as b:
        saves = [*(a.save_registration(registration(f"a{i}", f"dev{i}")) for i in range(10)),
                 *(b.save_registration(registration(f"b{i}", f"dev{i}")) for i in reversed(range(10)))]
        assert await asyncio.gather(*saves) == [None] * 20
        assert len(await a.load_registrations()) == 10


# -- connections ---------------------------------------------------------------------


async def test_the_next_call_works_after_the_server_drops_every_session(url, new_schema):
    name = f"tinymlaas-test-{uuid.uuid4().hex[:8]}"
    async with await open_store(with_params(url, application_name=name), new_schema()) as store:
        await asyncio.gather(*(store.save_registration(registration(f"r{i}", f"dev{i}")) for i in range(5)))
        loop = asyncio.get_running_loop()
        for _ in range(2):
            await in_two_sessions(url, store)
            terminated = await sql(
                url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
            assert len(terminated) > 1 and all(ok for (ok,) in terminated)
            # a restart of the server looks the same to the pool: every session is gone
            started = loop.time()
            assert len(await store.load_registrations()) == 5
            assert loop.time() - started < 1  # dead sessions are skipped, not waited out
            found = await asyncio.gather(*(store.load_registrations() for _ in range(3)))
            assert all(len(registrations) == 5 for registrations in found)


async def in_two_sessions(url: str, store) -> None:
    """Two transactions of the store under way at once (calls of one loop turn share one),
    so that its pool holds two sessions after: the first waits for a lock held here."""
    import psycopg

    async def wait_for_the_lock(connection) -> None:
        await connection.execute("SELECT pg_advisory_xact_lock(7366)")

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(7366)")
        first = asyncio.ensure_future(store._run("wait", wait_for_the_lock))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(store._run("wait", wait_for_the_lock))
        await asyncio.sleep(0.1)
        await holder.execute("SELECT pg_advisory_unlock(7366)")
        await asyncio.gather(first, second)


class Proxy:
    """A TCP relay to the server that the test can stop and restart on the same port:
    a database that goes away and comes back, without touching the real one."""

    def __init__(self, url: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(url)
        self.upstream = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
        self.dbname = str(params.get("dbname") or "test")
        self.port = 0
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"postgresql://127.0.0.1:{self.port}/{self.dbname}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_calls_fail_naming_the_server_while_it_is_down_and_work_when_it_is_back(url, new_schema):
    proxy = Proxy(url)
    await proxy.start()
    try:
        async with await open_store(proxy.url, new_schema(), timeout_s=1) as store:
            await store.save_registration(registration())
            await proxy.stop()
            with pytest.raises(StoreError, match=f"127.0.0.1:{proxy.port}/.*load registrations failed.*server up"):
                await store.load_registrations()
            await proxy.start()  # the same port
            loop = asyncio.get_running_loop()
            back = loop.time()
            while True:  # the pool's next reconnection attempt may be a second or two away
                try:
                    assert await store.load_registrations() == [registration()]
                    break
                except StoreError:
                    assert loop.time() - back < 8, "no reconnection 8 s after the server came back"
    finally:
        await proxy.stop()


async def test_a_refused_connection_names_host_and_port_fast():
    port = free_tcp_port()  # nothing listens there
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreError) as caught:
        await open_store(f"postgresql://tinymlaas:S3cret-pw@127.0.0.1:{port}/tinymlaas", "x")
    message = str(caught.value)
    assert f"127.0.0.1:{port}/tinymlaas" in message and "refused" in message
    assert "S3cret-pw" not in message and "\n" not in message
    assert loop.time() - started < 5


async def test_errors_name_the_database_and_never_the_password(url):
    with pytest.raises(StoreError, match="no_such_database.*does not exist"):
        await open_store(url.rsplit("/", 1)[0] + "/no_such_database", "x")
    with pytest.raises(StoreError, match="bad connection URL") as caught:
        await open_store("postgresql://me:S3cr%zzet@127.0.0.1/test", "x")  # a broken %-escape
    assert "S3cr" not in str(caught.value)
    with pytest.raises(StoreError, match="bad connection URL.*colour"):
        await open_store(with_params(url, colour="blue"), "x")
    with pytest.raises(StoreError, match="lower-case name"):
        await open_store(url, "Robert'); DROP TABLE students;--")


# -- schema and migrations -----------------------------------------------------------


async def test_migration_of_an_empty_schema_and_an_idempotent_reopen(url, new_schema):
    schema = new_schema()
    async with await open_store(url, schema) as store:
        assert store.schema == schema
        await store.save_registration(registration())
    tables = await sql(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                            "ORDER BY table_name", (schema,))
    assert [t for (t,) in tables] == ["documents", "leases", "observations", "queue", "registrations",
                                      "schema_version"]
    for _ in range(2):
        async with await open_store(url, schema) as again:
            assert await again.load_registrations() == [registration()]
    assert await sql(url, f"SELECT version FROM {schema}.schema_version ORDER BY version") == ALL_VERSIONS


async def test_nodes_starting_together_migrate_once(url, new_schema):
    schema = new_schema()
    stores = await asyncio.gather(*(open_store(url, schema) for _ in range(4)))
    try:
        assert await sql(url, f"SELECT version FROM {schema}.schema_version ORDER BY version") == ALL_VERSIONS
    finally:
        for store in stores:
            await store.close()


async def test_the_schema_can_come_from_the_urls_search_path(url, new_schema):
    from lwm2m_server.store.postgresql import PostgresqlStore

    schema = new_schema()
    async with await PostgresqlStore.open(with_params(url, options=f"-csearch_path%3D{schema}")) as store:
        assert store.schema == schema
        await store.put_document("profile", "dev1", {"a": 1}, 1.0)
    assert await sql(url, f"SELECT key FROM {schema}.documents") == [("dev1",)]


async def test_a_schema_from_a_newer_version_is_refused(url, new_schema):
    schema = new_schema()
    await (await open_store(url, schema)).close()
    await sql(url, f"INSERT INTO {schema}.schema_version VALUES (99, 0)")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:5432/.*version 99, newer"):
        await open_store(url, schema)


async def test_a_failed_write_loses_nothing(url, new_schema):
    schema = new_schema()
    async with await open_store(url, schema) as store:
        await store.save_registration(registration("old", "dev1"))
        await store.save_observation(observation(registration_id="old"))
        await sql(url, f"""CREATE FUNCTION {schema}.fail() RETURNS trigger LANGUAGE plpgsql AS
                          $$ BEGIN RAISE EXCEPTION 'simulated failure'; END $$""")
        await sql(url, f"CREATE TRIGGER fail BEFORE INSERT ON {schema}.registrations FOR EACH ROW "
                       f"WHEN (NEW.id = 'new') EXECUTE FUNCTION {schema}.fail()")
        # the old row is deleted first in the same transaction: the failure must roll it back
        with pytest.raises(StoreError, match="save registration failed: simulated failure") as caught:
            await store.save_registration(registration("new", "dev1"))
        assert store.server in str(caught.value)
        assert [r.id for r in await store.load_registrations()] == ["old"]
        assert await store.load_observations() == [observation(registration_id="old")]


async def test_calls_of_one_loop_turn_commit_together_and_a_failing_one_takes_back_only_its_own(url, new_schema):
    schema = new_schema()
    async with await open_store(url, schema) as store:
        await store.save_registration(registration("old3", "dev3"))
        lease = await store.acquire_lease("rollouts", "me", 60, now=1000.0)
        # every registration row written records the transaction that wrote it; a save
        # of registration "bad" fails after its DELETE of "old3" (same endpoint)
        await sql(url, f"CREATE TABLE {schema}.written (id TEXT, txid BIGINT)")
        await sql(url, f"""CREATE FUNCTION {schema}.written() RETURNS trigger LANGUAGE plpgsql AS
                          $$ BEGIN INSERT INTO {schema}.written VALUES (NEW.id, txid_current()); RETURN NEW; END $$""")
        await sql(url, f"CREATE TRIGGER written AFTER INSERT ON {schema}.registrations FOR EACH ROW "
                       f"EXECUTE FUNCTION {schema}.written()")
        await sql(url, f"""CREATE FUNCTION {schema}.fail() RETURNS trigger LANGUAGE plpgsql AS
                          $$ BEGIN RAISE EXCEPTION 'simulated failure'; END $$""")
        await sql(url, f"CREATE TRIGGER fail BEFORE INSERT ON {schema}.registrations FOR EACH ROW "
                       f"WHEN (NEW.id = 'bad') EXECUTE FUNCTION {schema}.fail()")
        outcomes = await asyncio.gather(
            store.save_registration(registration("r1", "dev1")),
            store.save_observation(observation(registration_id="gone")),  # refused: no such registration
            store.save_registration(registration("bad", "dev3")),  # fails after deleting old3
            store.save_registration(registration("r2", "dev2")),
            store.save_observation(observation(b"\x07", registration_id="r2")),  # sees r2, saved before it
            store.set_state("no-such-entry", "delivered"),
            store.put_document_if_lease("rollout", "x", {"a": 1}, 1001.0, replace(lease, epoch=lease.epoch + 1)),
            store.put_document_if_lease("rollout", "y", {"b": 2}, 1001.0, lease),
            return_exceptions=True,
        )
        assert outcomes[0] is None and outcomes[3] is None and outcomes[4] is None
        assert isinstance(outcomes[1], UnknownRegistrationError)
        assert isinstance(outcomes[2], StoreError) and "save registration failed: simulated failure" in str(outcomes[2])
        assert isinstance(outcomes[5], UnknownEntryError)
        assert outcomes[6] is False and outcomes[7] is True  # a fence refused; a fence held
        written = await sql(url, f"SELECT id, txid FROM {schema}.written ORDER BY id")
        assert [id_ for id_, _ in written] == ["r1", "r2"]
        assert written[0][1] == written[1][1]  # one transaction
        assert sorted(r.id for r in await store.load_registrations()) == ["old3", "r1", "r2"]
        assert [o.token for o in await store.load_observations()] == [b"\x07"]
        assert await store.list_documents("rollout") == {"y": {"b": 2}}


async def test_the_saves_of_a_burst_go_as_a_few_statements(url, new_schema):
    schema = new_schema()
    async with await open_store(url, schema) as store:
        await store.save_registration(registration("init", "dev-init"))  # the tables exist
        await sql(url, f"CREATE TABLE {schema}.statements (target TEXT)")
        await sql(url, f"""CREATE FUNCTION {schema}.counted() RETURNS trigger LANGUAGE plpgsql AS
                          $$ BEGIN INSERT INTO {schema}.statements VALUES (TG_TABLE_NAME); RETURN NULL; END $$""")
        for table in ("registrations", "documents"):
            await sql(url, f"CREATE TRIGGER counted AFTER INSERT ON {schema}.{table} "
                           f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.counted()")
        count = 40
        await asyncio.gather(*(call for i in range(count) for call in (
            store.save_registration(registration(f"r{i}", f"dev{i}")),
            store.put_document("profile", f"dev{i}", {"n": i}, 1.0))))
        statements = await sql(url, f"SELECT target, count(*) FROM {schema}.statements GROUP BY target")
        assert all(n <= 12 for _, n in statements) and len(statements) == 2, statements  # not 40 each
        assert len(await store.load_registrations()) == count + 1
        assert len(await store.list_documents("profile")) == count


# -- configuration and the daemon ----------------------------------------------------


def test_config_store_kinds_and_their_keys():
    pg = parse_config({"store": {"kind": "postgresql", "url": "postgresql://tiny:pw@db.example:5433/tiny"}})
    assert pg.store.target == "postgresql://tiny:pw@db.example:5433/tiny"
    assert parse_config({}).store.target == ServerConfig().store.path  # sqlite: the file
    errors = {
        "store.url: must be set when store.kind is postgresql": {"kind": "postgresql"},
        "store.url: is for store.kind postgresql; kind sqlite keeps its data in store.path":
            {"url": "postgresql://db.example/tiny"},
        "store.url: must be a postgresql:// URL": {"kind": "postgresql", "url": "mysql://me:S3cret@db/tiny"},
    }
    for message, store in errors.items():
        with pytest.raises(ConfigError, match=message) as caught:
            parse_config({"store": store}, "server.yaml")
        assert str(caught.value).startswith("server.yaml: ") and "S3cret" not in str(caught.value)


def test_config_show_hides_the_password_in_the_url():
    config = ServerConfig(store=StoreConfig(kind="postgresql", url="postgresql://tiny:S3cret@db/tiny?password=x2"))
    assert config_to_dict(config)["store"]["url"] == "postgresql://tiny:***@db/tiny?password=***"


async def test_the_daemons_open_store_opens_postgresql_from_the_url(url, new_schema):
    from lwm2m_server.store_plugins import open_store as daemon_open_store
    from lwm2m_server.store.postgresql import PostgresqlStore

    schema = new_schema()
    config = ServerConfig(store=StoreConfig(kind="postgresql", url=with_params(url, options=f"-csearch_path%3D{schema}")))
    async with await daemon_open_store(config) as store:
        assert isinstance(store, PostgresqlStore) and store.schema == schema


def test_the_daemon_on_postgresql_keeps_devices_over_a_restart(url, new_schema, tmp_path):
    from test_daemon import Daemon, cli, register_many

    schema = new_schema()
    store_url = with_params(url, options=f"-csearch_path%3D{schema}")

    def start() -> Daemon:
        for attempt in range(3):  # free ports are picked, then bound: another process may take one between
            daemon = Daemon(tmp_path, extra=f"store: {{kind: postgresql, url: '{store_url}'}}\n")
            try:
                daemon.start()
                return daemon
            except AssertionError as error:
                said = "".join(daemon.lines[-20:])
                if "is in use" not in said or attempt == 2:
                    raise AssertionError(f"{error}; it said:\n{said}") from None
        raise AssertionError("unreachable")

    daemon = start()
    try:
        asyncio.run(register_many(daemon.coap_port, 5))
        assert daemon.kill(signal.SIGKILL) == -signal.SIGKILL
        daemon = start()
        listed = cli("devices", "--json", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert sorted(device["endpoint"] for device in json.loads(listed.stdout)) == [f"dev-{i:03d}" for i in range(5)]
        assert not (tmp_path / "data" / "tinymlaas.sqlite3").exists()  # nothing went to the SQLite default
        assert daemon.kill(signal.SIGTERM) == 0
    finally:
        if daemon.process and daemon.process.poll() is None:
            daemon.kill()
