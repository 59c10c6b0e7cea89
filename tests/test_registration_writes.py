"""RegistrationWrites (lwm2m_server/registration_writes.py) on a real SQLite store:
concurrent Registers share the store's transactions instead of taking turns, and a
Register still goes after the deferred writes it must follow."""

from __future__ import annotations

import asyncio
import time

import structlog

from lwm2m_server.core.registration import RegistrationBook, parse_register, parse_update
from lwm2m_server.registration_writes import RegistrationWrites
from lwm2m_server.store.sqlite import SqliteStore


class CountingStore(SqliteStore):
    """The SQLite store, counting the transactions it hands to its thread."""

    transactions = 0

    def _call_batch(self, calls):
        CountingStore.transactions += 1
        return super()._call_batch(calls)


def _register(book: RegistrationBook, endpoint: str, port: int):
    params = parse_register((f"ep={endpoint}", "lt=3600", "lwm2m=1.1", "b=U"), b"</1/0>,</3/0>", 40)
    return book.register(params, f"127.0.0.1:{port}", time.time())[0]


async def test_concurrent_registers_share_transactions(tmp_path):
    store = await CountingStore.open(tmp_path / "s.db")
    writes = RegistrationWrites(store, structlog.get_logger())
    book = RegistrationBook()
    registrations = [_register(book, f"dev{i}", 10000 + i) for i in range(50)]
    try:
        CountingStore.transactions = 0
        await asyncio.gather(*(writes.save_now(r) for r in registrations))
        # one after another they would be 50; together, the first and the rest while it ran
        assert CountingStore.transactions <= 5
        assert {r.id for r in await store.load_registrations()} == {r.id for r in registrations}
    finally:
        await store.close()


async def test_a_register_is_not_overtaken_by_a_flush_under_way(tmp_path):
    """A flush writes its changes one by one; a Register of an endpoint whose older
    registration it has still to write waits for it, else the older one would replace it."""
    store = await CountingStore.open(tmp_path / "s.db")
    writes = RegistrationWrites(store, structlog.get_logger(), flush_delay=60)  # flushed only when told
    book = RegistrationBook()
    try:
        other, first = _register(book, "other", 10001), _register(book, "dev", 10000)
        await asyncio.gather(writes.save_now(other), writes.save_now(first))
        for registration in (other, first):  # deferred Updates: "other" is written first
            writes.save(book.update(registration.id, parse_update(("lt=600",), b""), registration.address,
                                    time.time()))
        flushing = asyncio.ensure_future(writes.flush())
        await asyncio.sleep(0)  # the flush has handed "other" to the store and waits
        replacing = _register(book, "dev", 10002)  # the device registers again: a new id
        await writes.save_now(replacing)
        await flushing
        stored = {r.endpoint: r for r in await store.load_registrations()}
        assert stored["dev"].id == replacing.id and stored["other"].id == other.id and len(stored) == 2
    finally:
        writes.close()
        await store.close()
