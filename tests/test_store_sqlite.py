"""The SQLite store's own behaviour: its file (permissions, a full disk, corruption,
a newer schema), crash durability, its worker thread and group commit. What every
store does is in test_store_contract.py, run on this backend too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from lwm2m_server.store import SqliteStore, StoreError, UnknownRegistrationError
from lwm2m_server.store import sqlite as sqlite_store
from test_store_contract import entry, observation, registration

REPO = Path(__file__).parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tinymlaas.db"


@pytest.fixture
async def store(db_path: Path):
    store = await SqliteStore.open(db_path)
    yield store
    await store.close()


# -- durability ------------------------------------------------------------------


async def test_commits_survive_sigkill(db_path: Path):
    script = textwrap.dedent(
        """
        import asyncio, sys
        from ipso_objects import LwM2MPath
        from lwm2m_server.core.registration import ObjectLink, ObjectList, Registration
        from lwm2m_server.store import ObservationRecord, QueueEntry, SqliteStore

        async def main(path):
            store = await SqliteStore.open(path)
            objects = ObjectList("/", (112,), (ObjectLink(LwM2MPath.of(3, 0), "1.1"),))
            for i in range(50):
                await store.save_registration(Registration(
                    id=f"r{i}", endpoint=f"dev{i}", address="127.0.0.1:5683", lifetime=300,
                    lwm2m_version="1.1", binding="U", queue_mode=i % 2 == 0, sms=None,
                    object_list=objects, registered_at=1000.0 + i, updated_at=1000.5 + i,
                    extra={"i": str(i)}))
            for i in range(3):
                await store.save_observation(ObservationRecord(
                    bytes([i]), f"dev{i}", f"r{i}", (LwM2MPath.of(3303, 0, 5700),), 112, 2000.0))
                await store.enqueue(QueueEntry(f"q{i}", f"dev{i}", 3000.0, 3060.0,
                                               request={"op": "read", "n": i}), max_pending=5)
            print("saved", flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main(sys.argv[1]))
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(db_path),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            while (line := await process.stdout.readline()) != b"saved\n":
                if not line:
                    pytest.fail(f"writer died: {(await process.stderr.read()).decode()}")
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL

    async with await SqliteStore.open(db_path) as store:
        registrations = await store.load_registrations()
        assert sorted(r.id for r in registrations) == sorted(f"r{i}" for i in range(50))
        assert {r.extra["i"] for r in registrations} == {str(i) for i in range(50)}
        assert [o.token for o in await store.load_observations()] == [b"\x00", b"\x01", b"\x02"]
        assert [e.request for e in await store.pending("dev2")] == [{"op": "read", "n": 2}]


async def test_event_loop_runs_while_the_database_is_locked(db_path: Path, store: SqliteStore):
    """A slow or locked disk delays the save, not the server."""
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    save = asyncio.create_task(store.save_registration(registration()))
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20 and not save.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(save, 10)
    assert await store.load_registrations() == [registration()]


@contextlib.asynccontextmanager
async def another_process_in_its_turn(db_path: Path):
    """A process holding the lock file beside the database until the block ends."""
    script = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(db_path) + "-lock"!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("holding", flush=True)
        sys.stdin.readline()
    """)
    other = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        assert await asyncio.wait_for(other.stdout.readline(), 10) == b"holding\n"
        yield
        other.stdin.write(b"done\n")
    finally:
        if other.returncode is None:
            other.kill()
        await other.wait()


async def test_writes_take_turns_with_the_other_processes_on_the_file(db_path: Path, store: SqliteStore):
    """Workers sharing the file queue on a lock file beside it (asked again every 0.2 ms,
    not after SQLite's busy handler's next sleep of up to 100 ms): a write waits its turn."""
    async with another_process_in_its_turn(db_path):
        save = asyncio.create_task(store.save_registration(registration()))
        await asyncio.sleep(0.3)
        assert not save.done()
    await asyncio.wait_for(save, 10)
    assert await store.load_registrations() == [registration()]


async def test_a_process_stopped_in_its_turn_delays_writes_by_the_busy_timeout_only(
        db_path: Path, store: SqliteStore, monkeypatch):
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT", 0.3)
    async with another_process_in_its_turn(db_path):
        await asyncio.wait_for(store.save_registration(registration()), 10)  # SQLite's own lock is free
    assert await store.load_registrations() == [registration()]


async def test_in_memory_store():
    async with await SqliteStore.open(":memory:") as store:
        await store.save_registration(registration())
        assert await store.load_registrations() == [registration()]


# -- errors ----------------------------------------------------------------------


async def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "notes.db"
    garbage = b"this is not a SQLite database, it is a shopping list\n" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="notes.db") as caught:
        await SqliteStore.open(path)
    assert "not a SQLite database" in str(caught.value)
    assert not isinstance(caught.value, sqlite3.Error)
    assert path.read_bytes() == garbage


async def test_a_corrupt_database_is_refused(db_path: Path):
    async with await SqliteStore.open(db_path) as store:
        for i in range(200):
            await store.save_registration(registration(f"r{i}", f"dev{i}"))
    data = bytearray(db_path.read_bytes())
    data[4096:8192] = b"\xa5" * 4096  # smash page 2
    db_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=str(db_path)):
        store = await SqliteStore.open(db_path)
        await store.load_registrations()  # if open did not notice, reading must


async def test_a_folder_that_cannot_be_created_is_a_store_error(tmp_path: Path):
    blocker = tmp_path / "state"
    blocker.write_text("a regular file where the folder should be")
    with pytest.raises(StoreError, match=str(blocker / "tinymlaas.db")):
        await SqliteStore.open(blocker / "tinymlaas.db")


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
async def test_a_read_only_folder_is_a_store_error(tmp_path: Path, existing: bool):
    folder = tmp_path / "ro"
    path = folder / "tinymlaas.db"
    if existing:
        async with await SqliteStore.open(path) as store:
            await store.save_registration(registration())
        path.chmod(stat.S_IRUSR)
    else:
        folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip(
                "root ignores chmod; run without CAP_DAC_OVERRIDE (e.g. setpriv "
                "--bounding-set -dac_override,-dac_read_search,-fowner) to run this"
            )
        # refused at open, not at the first Register
        with pytest.raises(StoreError, match="tinymlaas.db"):
            await SqliteStore.open(path)
    finally:
        folder.chmod(stat.S_IRWXU)


async def test_a_database_from_a_newer_version_is_refused(db_path: Path):
    await (await SqliteStore.open(db_path)).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("INSERT INTO schema_version VALUES (99, 0)")
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(db_path)


async def test_a_failed_write_loses_nothing(db_path: Path, store: SqliteStore):
    await store.save_registration(registration("old", "dev1"))
    await store.save_observation(observation(registration_id="old"))
    raw = sqlite3.connect(db_path)
    raw.execute(
        "CREATE TRIGGER fail BEFORE INSERT ON registrations WHEN NEW.id = 'new' "
        "BEGIN SELECT RAISE(ABORT, 'simulated I/O failure'); END"
    )
    raw.commit()
    raw.close()
    # the old row is deleted first in the same transaction: the failure must roll it back
    with pytest.raises(StoreError, match="simulated I/O failure") as caught:
        await store.save_registration(registration("new", "dev1"))
    assert str(db_path) in str(caught.value)
    assert [r.id for r in await store.load_registrations()] == ["old"]
    assert await store.load_observations() == [observation(registration_id="old")]


async def test_a_full_disk_is_a_store_error_and_loses_nothing(store: SqliteStore):
    await store.save_registration(registration())
    await store.enqueue(entry("q1"), max_pending=100)

    def cap(connection: sqlite3.Connection) -> None:  # the file may not grow any more
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")

    await store._run("test: cap size", cap)
    big = {"payload": "x" * 100_000}
    with pytest.raises(StoreError, match="full"):
        for i in range(10):
            await store.enqueue(entry(f"big{i}", request=big), max_pending=100)
    assert await store.load_registrations() == [registration()]
    assert [e.id for e in await store.pending("dev1")][0] == "q1"
    await store.set_state("q1", "delivered")  # small writes still work


async def test_calls_of_one_loop_turn_commit_together_and_a_failing_one_takes_back_only_its_own(db_path: Path):
    store = await SqliteStore.open(db_path)
    hops = 0
    call_batch = store._call_batch

    def counted(calls):
        nonlocal hops
        hops += 1
        return call_batch(calls)

    store._call_batch = counted
    outcomes = await asyncio.gather(
        store.save_registration(registration("r1", "dev1")),
        store.save_observation(observation(registration_id="gone")),  # refused: no such registration
        store.save_registration(registration("r2", "dev2")),
        store.save_observation(observation(b"\x07", registration_id="r2")),  # sees r2, saved before it
        return_exceptions=True,
    )
    assert hops == 1  # one trip to the store's thread, one transaction
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
    assert isinstance(outcomes[1], UnknownRegistrationError)
    await store.close()  # what was made before close is committed first
    async with await SqliteStore.open(db_path) as again:
        assert {r.id for r in await again.load_registrations()} == {"r1", "r2"}
        assert [o.token for o in await again.load_observations()] == [b"\x07"]


async def traced(store: SqliteStore) -> list[str]:
    """The statements the store's connection runs from now on."""
    statements: list[str] = []
    await store._run("test: trace", lambda connection: connection.set_trace_callback(statements.append))
    return statements


async def test_saves_in_a_row_go_as_one_statement_per_kind_and_do_what_they_do_one_by_one(store: SqliteStore):
    await store.save_registration(registration("old", "dev0"))
    await store.save_observation(observation(registration_id="old"))
    statements = await traced(store)
    count = 70  # statements of 64, 4, 1 and 1 rows
    await asyncio.gather(
        *(store.save_registration(registration(f"r{i}", f"dev{i}")) for i in range(count)),
        *(store.put_document("profile", f"dev{i}", {"n": i}, 1.0) for i in range(count)),
    )
    saves = [s for s in statements if s.startswith("INSERT INTO registrations")]
    assert [s.count("), (") + 1 for s in saves] == [64, 4, 1, 1]
    assert len([s for s in statements if s.startswith("INSERT INTO documents")]) == 4
    assert sorted(r.id for r in await store.load_registrations()) == sorted(f"r{i}" for i in range(count))
    assert await store.load_observations() == []  # "old" was replaced by r0, and its observation with it
    documents = await store.list_documents("profile")
    assert {key: data["n"] for key, data in documents.items()} == {f"dev{i}": i for i in range(count)}



async def test_saves_of_registrations_and_documents_interleaved_go_one_statement_per_kind(store: SqliteStore):
    statements = await traced(store)
    outcomes = await asyncio.gather(
        *(call for i in range(16) for call in (store.save_registration(registration(f"r{i}", f"dev{i}")),
                                                store.put_document("profile", f"dev{i}", {"n": i}, 1.0))),
        store.save_observation(observation(registration_id="r15")),  # saved in its place: after r15
        store.save_registration(registration("r16", "dev16")),
    )
    assert outcomes == [None] * 34
    inserts = [s.split(" (")[0] for s in statements if s.startswith("INSERT")]
    assert inserts == ["INSERT INTO registrations", "INSERT INTO documents", "INSERT INTO observations",
                       "INSERT INTO registrations"]
    assert len(await store.load_registrations()) == 17 and len(await store.list_documents("profile")) == 16
    assert [o.registration_id for o in await store.load_observations()] == ["r15"]


async def test_a_write_that_fills_the_disk_takes_back_its_whole_transaction_and_nothing_runs_outside_it(
        store: SqliteStore):
    await store.save_registration(registration("old", "dev0"))

    def cap(connection: sqlite3.Connection) -> None:  # the file may not grow any more
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")

    await store._run("test: cap size", cap)
    # SQLite rolls back the whole transaction on this failure; the small writes after it
    # would fit, but run on their own they would be kept while told they failed
    outcomes = await asyncio.gather(
        store.put_document("profile", "dev0", {"payload": "x" * 100_000}, 1.0),
        *(store.put_document("profile", f"dev{i}", {"n": i}, 1.0) for i in range(1, 4)),
        *(store.save_registration(registration(f"r{i}", f"dev{i}")) for i in range(4)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, StoreError) and "full" in str(outcome) for outcome in outcomes), outcomes
    assert "calls of its transaction were all taken back" in str(outcomes[-1])
    assert [r.id for r in await store.load_registrations()] == ["old"]
    assert await store.list_documents("profile") == {}
    await store._run("test: uncap size", lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchone())
    await store.save_registration(registration("r1", "dev1"))  # the store works again
    assert sorted(r.id for r in await store.load_registrations()) == ["old", "r1"]
