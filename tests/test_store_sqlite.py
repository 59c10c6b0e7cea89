"""The SQLite store: exact round trips, replacement rules, queue bounds, durability, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from ipso_objects import LwM2MPath
from lwm2m_server.core.registration import ObjectLink, ObjectList, Registration
from lwm2m_server.store import (
    ObservationRecord,
    QueueEntry,
    QueueFullError,
    SqliteStore,
    StoreError,
    UnknownEntryError,
    UnknownRegistrationError,
)

P = LwM2MPath.parse
REPO = Path(__file__).parent.parent


def registration(id_: str = "r1", endpoint: str = "dev1", **changes) -> Registration:
    value = Registration(
        id=id_,
        endpoint=endpoint,
        address="[2001:db8::1]:56830",
        lifetime=300,
        lwm2m_version="1.1",
        binding="UT",
        queue_mode=True,
        sms="+358401234567",
        object_list=ObjectList(
            root_path="/lwm2m",
            content_formats=(60, 110, 112, 11542),
            objects=(
                ObjectLink(P("/1/0")),
                ObjectLink(P("/3/0"), "1.2"),
                ObjectLink(P("/3303")),
                ObjectLink(P("/26241/65534"), "1.0"),
            ),
        ),
        registered_at=1_700_000_000.123456,
        updated_at=1_700_000_042.000001,
        extra={"vendor": "acme", "flag": "", "ünï": "cödé"},
    )
    return replace(value, **changes)


def observation(token: bytes = b"\x01\x02", registration_id: str = "r1", **changes) -> ObservationRecord:
    value = ObservationRecord(
        token=token,
        endpoint="dev1",
        registration_id=registration_id,
        paths=(P("/3303/0/5700"),),
        content_format=112,
        created_at=1_700_000_100.5,
    )
    return replace(value, **changes)


def entry(id_: str, endpoint: str = "dev1", created_at: float = 1000.0, **changes) -> QueueEntry:
    value = QueueEntry(
        id=id_,
        endpoint=endpoint,
        created_at=created_at,
        expires_at=created_at + 60,
        request={"op": "write", "path": "/3/0/14", "value": "+02:00", "nested": [1, 2.5, None]},
    )
    return replace(value, **changes)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tinymlaas.db"


@pytest.fixture
async def store(db_path: Path):
    store = await SqliteStore.open(db_path)
    yield store
    await store.close()


# -- registrations ---------------------------------------------------------------


async def test_registration_round_trip_is_exact(store: SqliteStore):
    full = registration()
    minimal = registration(
        "r2", "a-first", address="10.0.0.1:5683", queue_mode=False, sms=None,
        lwm2m_version="1.0", binding="U", object_list=ObjectList(), extra={},
    )
    await store.save_registration(full)
    await store.save_registration(minimal)
    assert await store.load_registrations() == [minimal, full]  # ordered by endpoint
    loaded = (await store.load_registrations())[1]
    assert loaded.object_list.objects[1].version == "1.2"
    assert type(loaded.queue_mode) is bool and loaded.sms == "+358401234567"


async def test_update_of_a_registration_keeps_its_observations(store: SqliteStore):
    await store.save_registration(registration())
    await store.save_observation(observation())
    updated = registration(address="192.0.2.7:4000", updated_at=1_700_000_500.0, lifetime=600)
    await store.save_registration(updated)
    assert await store.load_registrations() == [updated]
    assert await store.load_observations() == [observation()]


async def test_new_registration_of_an_endpoint_replaces_the_old_one(store: SqliteStore):
    await store.save_registration(registration("old", "dev1"))
    await store.save_registration(registration("other", "dev2"))
    await store.save_observation(observation(b"\x01", "old"))
    await store.save_observation(observation(b"\x02", "other", endpoint="dev2"))
    await store.save_registration(registration("new", "dev1"))
    assert [r.id for r in await store.load_registrations()] == ["new", "other"]
    # observations of the replaced registration are gone, others stay
    assert [o.token for o in await store.load_observations()] == [b"\x02"]


async def test_delete_registration_deletes_its_observations(store: SqliteStore):
    await store.save_registration(registration())
    await store.save_observation(observation())
    assert await store.delete_registration("r1") is True
    assert await store.delete_registration("r1") is False
    assert await store.load_registrations() == []
    assert await store.load_observations() == []


# -- observations ----------------------------------------------------------------


async def test_observation_round_trip(store: SqliteStore):
    await store.save_registration(registration())
    single = observation(b"", content_format=None)
    composite = observation(
        b"\xff" * 8, paths=(P("/3/0/0"), P("/3303/0"), P("/"), P("/5/0/3/1")),
        content_format=11542, created_at=1_700_000_200.25,
    )
    await store.save_observation(composite)
    await store.save_observation(single)
    await store.save_observation(replace(single, content_format=None))  # same token: replaced
    assert await store.load_observations() == [single, composite]  # oldest first


async def test_delete_observations(store: SqliteStore):
    await store.save_registration(registration("r1", "dev1"))
    await store.save_registration(registration("r2", "dev2"))
    for token in (b"\x01", b"\x02", b"\x03"):
        await store.save_observation(observation(token, "r1"))
    await store.save_observation(observation(b"\x04", "r2", endpoint="dev2"))
    assert await store.delete_observation(b"\x01") is True
    assert await store.delete_observation(b"\x01") is False
    assert await store.delete_observations_of("r1") == 2
    assert [o.token for o in await store.load_observations()] == [b"\x04"]


async def test_observation_of_unknown_registration_is_refused(store: SqliteStore):
    with pytest.raises(UnknownRegistrationError, match="'gone'") as caught:
        await store.save_observation(observation(registration_id="gone"))
    assert isinstance(caught.value, StoreError)
    assert await store.load_observations() == []


# -- queued requests -------------------------------------------------------------


async def test_queue_round_trip_and_order(store: SqliteStore):
    first, second = entry("q1", created_at=1000.0), entry("q2", created_at=1000.0)
    third = entry("q3", created_at=999.0)
    for e in (first, second, third):
        await store.enqueue(e, max_pending=10)
    await store.enqueue(entry("x1", "dev2"), max_pending=10)
    # creation order; entries of the same instant in the order they were queued
    assert await store.pending("dev1") == [third, first, second]
    assert await store.get_entry("q2") == second
    assert await store.get_entry("nope") is None
    assert await store.entries("dev1") == [second, first, third]  # newest first
    assert await store.entries("dev1", limit=2) == [second, first]
    assert await store.pending("nobody") == []


async def test_set_state(store: SqliteStore):
    await store.enqueue(entry("q1"), max_pending=5)
    result = {"code": "2.04", "payload": None, "ms": 12.5}
    delivered = await store.set_state("q1", "delivered", result)
    assert delivered == replace(entry("q1"), state="delivered", result=result)
    assert await store.get_entry("q1") == delivered
    assert await store.pending("dev1") == []
    failed = await store.set_state("q1", "failed")
    assert (failed.state, failed.result) == ("failed", None)


async def test_set_state_errors_are_store_errors(store: SqliteStore):
    await store.enqueue(entry("q1"), max_pending=5)
    with pytest.raises(UnknownEntryError, match="'missing'") as caught:
        await store.set_state("missing", "delivered")
    assert isinstance(caught.value, StoreError) and not isinstance(caught.value, KeyError)
    with pytest.raises(StoreError, match="'done'"):
        await store.set_state("q1", "done")
    with pytest.raises(StoreError, match="JSON"):
        await store.set_state("q1", "delivered", {"payload": b"\x00"})
    assert (await store.get_entry("q1")).state == "pending"


async def test_queue_bound(store: SqliteStore):
    for i in range(3):
        await store.enqueue(entry(f"q{i}", created_at=1000.0 + i), max_pending=3)
    with pytest.raises(QueueFullError, match="dev1") as caught:
        await store.enqueue(entry("q3"), max_pending=3)
    assert (caught.value.endpoint, caught.value.max_pending) == ("dev1", 3)
    assert isinstance(caught.value, StoreError)
    await store.enqueue(entry("y0", "dev2"), max_pending=3)  # another endpoint has its own bound
    await store.set_state("q0", "delivered", {"code": "2.04"})
    await store.enqueue(entry("q3", created_at=1003.0), max_pending=3)  # a finished entry frees a slot
    assert [e.id for e in await store.pending("dev1")] == ["q1", "q2", "q3"]


async def test_queue_bound_holds_under_concurrent_enqueues(store: SqliteStore):
    results = await asyncio.gather(
        *(store.enqueue(entry(f"q{i}"), max_pending=5) for i in range(20)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 5
    assert all(isinstance(r, QueueFullError) for r in results if r is not None)
    assert len(await store.pending("dev1")) == 5


async def test_bad_queue_entries_are_refused_and_nothing_is_stored(store: SqliteStore):
    await store.enqueue(entry("q1"), max_pending=5)
    with pytest.raises(StoreError, match="already exists"):
        await store.enqueue(entry("q1", "dev2"), max_pending=5)
    with pytest.raises(StoreError, match="JSON"):
        await store.enqueue(entry("q2", request={"payload": b"\x01"}), max_pending=5)
    with pytest.raises(StoreError, match="JSON"):
        await store.enqueue(entry("q3", request={"path": (3, 0)}), max_pending=5)  # would load as a list
    with pytest.raises(StoreError, match="pending"):
        await store.enqueue(entry("q4", state="delivered"), max_pending=5)
    assert [e.id for e in await store.entries("dev1")] == ["q1"]
    assert await store.entries("dev2") == []


async def test_expire_entries(store: SqliteStore):
    await store.enqueue(entry("old", expires_at=100.0), max_pending=10)
    await store.enqueue(entry("older", created_at=999.0, expires_at=50.0), max_pending=10)
    await store.enqueue(entry("fresh", expires_at=500.0), max_pending=10)
    await store.enqueue(entry("at-now", expires_at=200.0), max_pending=10)
    await store.enqueue(entry("done", expires_at=100.0), max_pending=10)
    await store.set_state("done", "delivered", {"code": "2.05"})
    expired = await store.expire_entries(now=200.0)
    assert expired == [
        entry("older", created_at=999.0, expires_at=50.0, state="expired"),
        entry("old", expires_at=100.0, state="expired"),
    ]
    assert [e.id for e in await store.pending("dev1")] == ["fresh", "at-now"]
    assert (await store.get_entry("old")).state == "expired"
    assert (await store.get_entry("done")).state == "delivered"
    assert await store.expire_entries(now=200.0) == []


async def test_prune_removes_only_old_finished_entries(store: SqliteStore):
    for i, state in enumerate(["delivered", "expired", "failed", "cancelled"]):
        await store.enqueue(entry(f"f{i}", created_at=100.0 + i), max_pending=10)
        await store.set_state(f"f{i}", state)
    await store.enqueue(entry("old-pending", created_at=50.0), max_pending=10)
    await store.enqueue(entry("new-done", created_at=900.0), max_pending=10)
    await store.set_state("new-done", "delivered")
    assert await store.prune(before=500.0) == 4
    assert [e.id for e in await store.entries("dev1")] == ["new-done", "old-pending"]


# -- durability ------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(db_path: Path):
    store = await SqliteStore.open(db_path)
    await store.save_registration(registration())
    await store.save_observation(observation())
    await store.enqueue(entry("q1"), max_pending=5)
    await store.enqueue(entry("q2", created_at=1001.0), max_pending=5)
    done = await store.set_state("q2", "failed", {"reason": "4.04 Not Found"})
    await store.close()

    async with await SqliteStore.open(db_path) as again:
        assert await again.load_registrations() == [registration()]
        assert await again.load_observations() == [observation()]
        assert await again.pending("dev1") == [entry("q1")]
        assert await again.get_entry("q2") == done


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


async def test_concurrent_saves_all_land(store: SqliteStore):
    saved = [registration(f"r{i}", f"dev{i:03}") for i in range(100)]
    await asyncio.gather(*(store.save_registration(r) for r in saved))
    assert await store.load_registrations() == saved


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


async def test_use_after_close_is_a_store_error(db_path: Path):
    store = await SqliteStore.open(db_path)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="close"):
        await store.load_registrations()


async def test_close_lets_queued_calls_finish(db_path: Path):
    store = await SqliteStore.open(db_path)
    saves = [
        asyncio.ensure_future(store.save_registration(registration(f"r{i}", f"d{i}")))
        for i in range(20)
    ]
    await asyncio.sleep(0)  # the saves are on the worker's queue
    await store.close()
    await asyncio.gather(*saves)
    async with await SqliteStore.open(db_path) as again:
        assert len(await again.load_registrations()) == 20


async def test_documents_round_trip_list_by_prefix_and_survive_reopen(tmp_path):
    path = tmp_path / "docs.sqlite3"
    store = await SqliteStore.open(path)
    await store.put_document("profile", "dev-1", {"a": 1, "nested": {"x": [1, 2]}}, 10.0)
    await store.put_document("rollout-device", "r1/dev-1", {"state": "pushing"}, 10.0)
    await store.put_document("rollout-device", "r1/dev-2", {"state": "done"}, 10.0)
    await store.put_document("rollout-device", "r10/dev-1", {"state": "done"}, 10.0)
    await store.put_document("profile", "dev-1", {"a": 2}, 11.0)  # replace
    assert await store.get_document("profile", "dev-1") == {"a": 2}
    assert list(await store.list_documents("rollout-device", "r1/")) == ["r1/dev-1", "r1/dev-2"]
    with pytest.raises(StoreError, match="does not survive JSON"):
        await store.put_document("profile", "dev-2", {"t": (1, 2)}, 12.0)
    await store.close()
    store = await SqliteStore.open(path)
    assert await store.get_document("profile", "dev-1") == {"a": 2}
    assert await store.delete_document("profile", "dev-1") and not await store.delete_document("profile", "dev-1")
    await store.close()


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
