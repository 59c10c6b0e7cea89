"""The store contract: what every Store backend must do, run on SQLite and PostgreSQL.

Exact round trips, replacement rules, queue bounds and order, documents, reopening.
Each PostgreSQL test gets a schema of its own, dropped afterwards. When no PostgreSQL
answers at ``TINYMLAAS_TEST_POSTGRESQL_URL`` (default postgresql://127.0.0.1:5432/test)
its runs are skipped with the reason, or fail when ``TINYMLAAS_REQUIRE_POSTGRESQL=1``
(CI sets it, so that they cannot be skipped there without anyone noticing).
Backend-specific tests: test_store_sqlite.py, test_store_postgresql.py.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

from ipso_objects import LwM2MPath
from lwm2m_server.core.registration import ObjectLink, ObjectList, Registration
from lwm2m_server.store import (
    ObservationRecord,
    QueueEntry,
    QueueFullError,
    SqliteStore,
    Store,
    StoreError,
    UnknownEntryError,
    UnknownRegistrationError,
)
from lwm2m_server.store.base import Lease

P = LwM2MPath.parse
POSTGRESQL_URL = os.environ.get("TINYMLAAS_TEST_POSTGRESQL_URL", "postgresql://127.0.0.1:5432/test")
REQUIRE_POSTGRESQL = "TINYMLAAS_REQUIRE_POSTGRESQL"


# -- records -----------------------------------------------------------------------


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


# -- PostgreSQL for tests ------------------------------------------------------------


@functools.cache
def postgresql_unavailable() -> str | None:
    """Why the tests cannot use PostgreSQL, or None when they can."""
    try:
        for module in ("psycopg", "psycopg_pool"):
            importlib.import_module(module)
    except ImportError as error:
        return f"psycopg is not installed ({error}): pip install -e '.[dev]'"
    import psycopg

    try:
        psycopg.connect(POSTGRESQL_URL, connect_timeout=3).close()
    except psycopg.Error as error:
        return f"no PostgreSQL at {POSTGRESQL_URL}: {' '.join(str(error).split())}"
    return None


def require_postgresql() -> str:
    """The test server's URL; skips the test when there is none, or fails it when
    TINYMLAAS_REQUIRE_POSTGRESQL=1."""
    reason = postgresql_unavailable()
    if reason is not None:
        if os.environ.get(REQUIRE_POSTGRESQL) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRESQL}=1: PostgreSQL tests must run)")
        pytest.skip(reason)
    return POSTGRESQL_URL


def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRESQL_URL, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))




# -- the backends ----------------------------------------------------------------------


@dataclass
class Backend:
    """A store backend under test, with its data kept for the whole test."""

    name: str
    open: Callable[[], Awaitable[Store]]
    """Opens a store on this test's data (a second call: the same data again)."""


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "state" / "tinymlaas.db"
        return Backend("sqlite", lambda: SqliteStore.open(path))
    from lwm2m_server.store.postgresql import PostgresqlStore

    schema = request.getfixturevalue("pg_schema")
    return Backend("postgresql", lambda: PostgresqlStore.open(require_postgresql(), schema=schema))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    store = await backend.open()
    yield store
    await store.close()


# -- registrations ---------------------------------------------------------------------


async def test_registration_round_trip_is_exact(store: Store):
    full = registration(identity="psk-dev1", lifetime=4_294_967_295)
    minimal = registration(
        "r2", "a-first", address="10.0.0.1:5683", queue_mode=False, sms=None,
        lwm2m_version="1.0", binding="U", object_list=ObjectList(), extra={},
    )
    upper = registration("r3", "Zed")  # endpoints sort by code point: upper case first
    for saved in (full, minimal, upper):
        await store.save_registration(saved)
    assert await store.load_registrations() == [upper, minimal, full]
    loaded = (await store.load_registrations())[2]
    assert loaded.object_list.objects[1].version == "1.2"
    assert type(loaded.queue_mode) is bool and loaded.sms == "+358401234567"
    assert loaded.identity == "psk-dev1" and loaded.lifetime == 4_294_967_295


async def test_update_of_a_registration_keeps_its_observations(store: Store):
    await store.save_registration(registration())
    await store.save_observation(observation())
    updated = registration(address="192.0.2.7:4000", updated_at=1_700_000_500.0, lifetime=600)
    await store.save_registration(updated)
    assert await store.load_registrations() == [updated]
    assert await store.load_observations() == [observation()]


async def test_new_registration_of_an_endpoint_replaces_the_old_one(store: Store):
    await store.save_registration(registration("old", "dev1"))
    await store.save_registration(registration("other", "dev2"))
    await store.save_observation(observation(b"\x01", "old"))
    await store.save_observation(observation(b"\x02", "other", endpoint="dev2"))
    await store.save_registration(registration("new", "dev1"))
    assert [r.id for r in await store.load_registrations()] == ["new", "other"]
    # observations of the replaced registration are gone, others stay
    assert [o.token for o in await store.load_observations()] == [b"\x02"]


async def test_delete_registration_deletes_its_observations(store: Store):
    await store.save_registration(registration())
    await store.save_observation(observation())
    assert await store.delete_registration("r1") is True
    assert await store.delete_registration("r1") is False
    assert await store.load_registrations() == []
    assert await store.load_observations() == []


# -- observations ----------------------------------------------------------------------


async def test_observation_round_trip(store: Store):
    await store.save_registration(registration())
    single = observation(b"", content_format=None)
    composite = observation(
        b"\xff" * 8, paths=(P("/3/0/0"), P("/3303/0"), P("/"), P("/5/0/3/1")),
        content_format=11542, created_at=1_700_000_200.25,
    )
    await store.save_observation(composite)
    await store.save_observation(single)
    await store.save_observation(replace(single, content_format=None))  # same token: replaced
    same_instant = observation(b"\x00", created_at=single.created_at)
    await store.save_observation(same_instant)
    # oldest first; observations of the same instant in the order they were made
    assert await store.load_observations() == [single, same_instant, composite]


async def test_delete_observations(store: Store):
    await store.save_registration(registration("r1", "dev1"))
    await store.save_registration(registration("r2", "dev2"))
    for token in (b"\x01", b"\x02", b"\x03"):
        await store.save_observation(observation(token, "r1"))
    await store.save_observation(observation(b"\x04", "r2", endpoint="dev2"))
    assert await store.delete_observation(b"\x01") is True
    assert await store.delete_observation(b"\x01") is False
    assert await store.delete_observations_of("r1") == 2
    assert [o.token for o in await store.load_observations()] == [b"\x04"]


async def test_observation_of_unknown_registration_is_refused(store: Store):
    with pytest.raises(UnknownRegistrationError, match="'gone'") as caught:
        await store.save_observation(observation(registration_id="gone"))
    assert isinstance(caught.value, StoreError)
    assert await store.load_observations() == []


# -- queued requests -------------------------------------------------------------------


async def test_queue_round_trip_and_order(store: Store):
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
    assert await store.count_pending() == 4


async def test_set_state(store: Store):
    await store.enqueue(entry("q1"), max_pending=5)
    result = {"code": "2.04", "payload": None, "ms": 12.5}
    delivered = await store.set_state("q1", "delivered", result)
    assert delivered == replace(entry("q1"), state="delivered", result=result)
    assert await store.get_entry("q1") == delivered
    assert await store.pending("dev1") == []
    assert await store.count_pending() == 0
    failed = await store.set_state("q1", "failed")
    assert (failed.state, failed.result) == ("failed", None)


async def test_set_state_errors_are_store_errors(store: Store):
    await store.enqueue(entry("q1"), max_pending=5)
    with pytest.raises(UnknownEntryError, match="'missing'") as caught:
        await store.set_state("missing", "delivered")
    assert isinstance(caught.value, StoreError) and not isinstance(caught.value, KeyError)
    with pytest.raises(StoreError, match="'done'"):
        await store.set_state("q1", "done")
    with pytest.raises(StoreError, match="JSON"):
        await store.set_state("q1", "delivered", {"payload": b"\x00"})
    assert (await store.get_entry("q1")).state == "pending"


async def test_queue_bound(store: Store):
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


async def test_queue_bound_holds_under_concurrent_enqueues(store: Store):
    results = await asyncio.gather(
        *(store.enqueue(entry(f"q{i}"), max_pending=5) for i in range(20)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 5
    assert all(isinstance(r, QueueFullError) for r in results if r is not None)
    assert len(await store.pending("dev1")) == 5


async def test_bad_queue_entries_are_refused_and_nothing_is_stored(store: Store):
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


async def test_expire_entries(store: Store):
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


async def test_prune_removes_only_old_finished_entries(store: Store):
    for i, state in enumerate(["delivered", "expired", "failed", "cancelled"]):
        await store.enqueue(entry(f"f{i}", created_at=100.0 + i), max_pending=10)
        await store.set_state(f"f{i}", state)
    await store.enqueue(entry("old-pending", created_at=50.0), max_pending=10)
    await store.enqueue(entry("new-done", created_at=900.0), max_pending=10)
    await store.set_state("new-done", "delivered")
    assert await store.prune(before=500.0) == 4
    assert [e.id for e in await store.entries("dev1")] == ["new-done", "old-pending"]


# -- documents ---------------------------------------------------------------------------


async def test_documents_round_trip_list_by_prefix_and_survive_reopen(backend: Backend):
    store = await backend.open()
    await store.put_document("profile", "dev-1", {"a": 1, "nested": {"x": [1, 2]}}, 10.0)
    await store.put_document("rollout-device", "r1/dev-1", {"state": "pushing"}, 10.0)
    await store.put_document("rollout-device", "r1/dev-2", {"state": "done"}, 10.0)
    await store.put_document("rollout-device", "r10/dev-1", {"state": "done"}, 10.0)
    await store.put_document("profile", "dev-1", {"a": 2}, 11.0)  # replace
    assert await store.get_document("profile", "dev-1") == {"a": 2}
    assert await store.get_document("profile", "nobody") is None
    assert list(await store.list_documents("rollout-device", "r1/")) == ["r1/dev-1", "r1/dev-2"]
    with pytest.raises(StoreError, match="does not survive JSON"):
        await store.put_document("profile", "dev-2", {"t": (1, 2)}, 12.0)
    await store.close()
    store = await backend.open()
    assert await store.get_document("profile", "dev-1") == {"a": 2}
    assert await store.delete_document("profile", "dev-1") and not await store.delete_document("profile", "dev-1")
    await store.close()


async def test_document_keys_list_in_code_point_order_and_prefixes_are_literal(store: Store):
    keys = ["b", "B", "a_1", "a%1", "ab", "ä", "a\\1", "a"]
    for key in keys:
        await store.put_document("kind", key, {"key": key}, 1.0)
    await store.put_document("other", "a", {}, 1.0)
    assert list(await store.list_documents("kind")) == sorted(keys)  # Python sorts by code point
    # % _ and \ in a prefix match themselves only, not any character
    assert list(await store.list_documents("kind", "a_")) == ["a_1"]
    assert list(await store.list_documents("kind", "a%")) == ["a%1"]
    assert list(await store.list_documents("kind", "a\\")) == ["a\\1"]
    assert list(await store.list_documents("kind", "a")) == ["a", "a%1", "a\\1", "a_1", "ab"]
    assert await store.list_documents("kind", "zz") == {}


# -- lifetime and concurrency ---------------------------------------------------------------


async def test_everything_survives_close_and_reopen(backend: Backend):
    store = await backend.open()
    await store.save_registration(registration())
    await store.save_observation(observation())
    await store.enqueue(entry("q1"), max_pending=5)
    await store.enqueue(entry("q2", created_at=1001.0), max_pending=5)
    done = await store.set_state("q2", "failed", {"reason": "4.04 Not Found"})
    await store.close()

    async with await backend.open() as again:
        assert await again.load_registrations() == [registration()]
        assert await again.load_observations() == [observation()]
        assert await again.pending("dev1") == [entry("q1")]
        assert await again.get_entry("q2") == done


async def test_concurrent_saves_all_land(store: Store):
    saved = [registration(f"r{i}", f"dev{i:03}") for i in range(100)]
    await asyncio.gather(*(store.save_registration(r) for r in saved))
    assert await store.load_registrations() == saved


async def test_use_after_close_is_a_store_error(backend: Backend):
    store = await backend.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="close"):
        await store.load_registrations()


async def test_close_lets_calls_under_way_finish(backend: Backend):
    store = await backend.open()
    saves = [
        asyncio.ensure_future(store.save_registration(registration(f"r{i}", f"d{i}")))
        for i in range(20)
    ]
    await asyncio.sleep(0)  # the saves have started
    await store.close()
    await asyncio.gather(*saves)
    async with await backend.open() as again:
        assert len(await again.load_registrations()) == 20


# -- leases ------------------------------------------------------------------------------------


async def test_a_lease_has_one_holder_and_a_renewal_keeps_its_epoch(store: Store):
    assert await store.get_lease("rollouts") is None
    first = await store.acquire_lease("rollouts", "node-a", 10.0, now=100.0)
    assert first == Lease("rollouts", "node-a", 110.0, 1)
    assert await store.get_lease("rollouts") == first
    assert await store.acquire_lease("rollouts", "node-b", 10.0, now=105.0) is None  # held
    renewed = await store.acquire_lease("rollouts", "node-a", 10.0, now=106.0)
    assert renewed == Lease("rollouts", "node-a", 116.0, 1)
    assert await store.acquire_lease("other", "node-b", 5.0, now=106.0) == Lease("other", "node-b", 111.0, 1)
    assert (await store.get_lease("rollouts")).holder == "node-a"


async def test_an_expired_lease_is_taken_over_and_the_epoch_goes_up(store: Store):
    await store.acquire_lease("rollouts", "node-a", 10.0, now=100.0)
    assert await store.acquire_lease("rollouts", "node-b", 10.0, now=109.999) is None
    taken = await store.acquire_lease("rollouts", "node-b", 10.0, now=110.0)  # expires_at is the first free instant
    assert taken == Lease("rollouts", "node-b", 120.0, 2)
    assert await store.acquire_lease("rollouts", "node-a", 10.0, now=111.0) is None  # the old holder cannot renew
    # the same holder after its own lease expired: a new tenure, a new epoch
    again = await store.acquire_lease("rollouts", "node-b", 10.0, now=130.0)
    assert again == Lease("rollouts", "node-b", 140.0, 3)


async def test_a_released_lease_is_free_at_once_and_its_epoch_keeps_counting(store: Store):
    await store.acquire_lease("rollouts", "node-a", 60.0, now=100.0)
    assert await store.release_lease("rollouts", "node-b") is False  # not node-b's
    assert await store.release_lease("rollouts", "node-a") is True
    assert await store.release_lease("rollouts", "node-a") is False
    assert await store.get_lease("rollouts") is None
    assert await store.acquire_lease("rollouts", "node-b", 60.0, now=101.0) == Lease("rollouts", "node-b", 161.0, 2)
    assert await store.release_lease("never-taken", "node-a") is False
    with pytest.raises(StoreError, match="ttl_s"):
        await store.acquire_lease("rollouts", "node-a", 0, now=1.0)
    with pytest.raises(StoreError, match="holder"):
        await store.acquire_lease("rollouts", "", 10.0, now=1.0)


@pytest.mark.parametrize("expired", [False, True], ids=["free", "expired"])
async def test_of_two_stores_racing_for_a_lease_exactly_one_wins(backend: Backend, expired: bool):
    """Two stores on the same data (two nodes), many holders each, every round at once."""
    stores = [await backend.open(), await backend.open()]
    try:
        for round_ in range(5):
            name, now = f"race-{round_}", 1000.0
            if expired:  # someone held it, long ago
                await stores[0].acquire_lease(name, "gone", 1.0, now=0.0)
            holders = [(stores[i % 2], f"node-{i}") for i in range(8)]
            won = await asyncio.gather(*(s.acquire_lease(name, h, 30.0, now) for s, h in holders))
            winners = [lease for lease in won if lease is not None]
            assert len(winners) == 1, won
            assert winners[0].epoch == (2 if expired else 1)
            for s in stores:
                assert await s.get_lease(name) == winners[0]
    finally:
        for s in stores:
            await s.close()


async def test_fenced_writes_land_only_while_the_lease_is_held(store: Store):
    lease = await store.acquire_lease("rollouts", "node-a", 10.0, now=100.0)
    assert await store.put_document_if_lease("rollout", "r1", {"v": 1}, 101.0, lease) is True
    assert await store.get_document("rollout", "r1") == {"v": 1}
    # the lease must hold past held_until (a margin against clock skew), not only now
    assert await store.put_document_if_lease("rollout", "r1", {"v": 2}, 101.0, lease, held_until=110.0) is False
    assert await store.put_document_if_lease("rollout", "r1", {"v": 2}, 110.0, lease) is False  # expired
    taken = await store.acquire_lease("rollouts", "node-b", 10.0, now=110.0)
    assert await store.put_document_if_lease("rollout", "r1", {"v": 3}, 111.0, lease) is False  # the old epoch
    assert await store.put_document_if_lease("rollout", "r1", {"v": 4}, 111.0, taken) is True
    forged = Lease("rollouts", "node-b", taken.expires_at, taken.epoch + 1)
    assert await store.put_document_if_lease("rollout", "r1", {"v": 5}, 111.0, forged) is False
    assert await store.put_document_if_lease("rollout", "r2", {"v": 6}, 111.0, Lease("nope", "node-b", 1e12, 1)) is False
    assert await store.get_document("rollout", "r1") == {"v": 4}
    assert await store.get_document("rollout", "r2") is None
    with pytest.raises(StoreError, match="does not survive JSON"):
        await store.put_document_if_lease("rollout", "r1", {"t": (1,)}, 111.0, taken)


async def test_leases_survive_reopen(backend: Backend):
    store = await backend.open()
    lease = await store.acquire_lease("rollouts", "node-a", 3600.0, now=100.0)
    await store.close()
    async with await backend.open() as again:
        assert await again.get_lease("rollouts") == lease
        assert await again.acquire_lease("rollouts", "node-b", 10.0, now=200.0) is None

# -- saves in bulk (registrations and profiles of a burst of Registers share statements) ----------


async def test_saves_made_together_are_each_what_they_are_alone(store: Store):
    await store.save_registration(registration("old", "dev0"))
    await store.save_observation(observation(registration_id="old"))
    count = 70
    outcomes = await asyncio.gather(
        *(call for i in range(count) for call in (store.save_registration(registration(f"r{i}", f"dev{i}")),
                                                   store.put_document("profile", f"dev{i}", {"n": i}, 1.0))),
        store.save_observation(observation(b"\x07", registration_id="r5")),  # after r5, in its place
    )
    assert outcomes == [None] * (2 * count + 1)
    assert sorted(r.id for r in await store.load_registrations()) == sorted(f"r{i}" for i in range(count))
    assert [o.token for o in await store.load_observations()] == [b"\x07"]  # "old" and its own went with dev0
    documents = await store.list_documents("profile")
    assert {key: data["n"] for key, data in documents.items()} == {f"dev{i}": i for i in range(count)}


async def test_a_failing_save_among_others_fails_alone(store: Store):
    outcomes = await asyncio.gather(
        store.save_registration(registration("r1", "dev1")),
        store.save_registration(registration("r2", "dev2", address=None)),  # NOT NULL
        store.save_registration(registration("r3", "dev3")),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], StoreError) and "address" in str(outcomes[1])  # names the column
    assert sorted(r.id for r in await store.load_registrations()) == ["r1", "r3"]


async def test_saves_of_one_endpoint_in_a_row_keep_the_last(store: Store):
    await asyncio.gather(
        store.save_registration(registration("a", "dev1")),
        store.save_registration(registration("b", "dev1")),  # a new Register of dev1 replaces "a"
        store.put_document("profile", "dev1", {"n": 1}, 1.0),
        store.put_document("profile", "dev1", {"n": 2}, 2.0),
    )
    assert [r.id for r in await store.load_registrations()] == ["b"]
    assert await store.get_document("profile", "dev1") == {"n": 2}
