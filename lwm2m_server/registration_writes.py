"""Writes of registration changes that outlive a full disk.

The :class:`~.core.registration.RegistrationBook` in memory is what the server
answers from; the store keeps a copy for the next start. When the store cannot be
written (a full disk: ``SQLITE_FULL``, or any other :class:`~.store.base.StoreError`)
an Update or a De-register still succeeds: the change waits here, newest per
registration, and is written at the next write that gets through or at the
server's periodic flush (its expiry sweep). Nothing already stored is lost: a
failed transaction changes nothing, so until the flush the store holds the
registration as it was last written (a restart in between brings back that
version, with its older lifetime).

An Update or a De-register is not written while its answer waits: it joins the changes
written together :data:`FLUSH_DELAY_S` later, in one transaction (the newest change of a
registration only). A fleet's Updates would otherwise each cost a transaction and a
hop to the store's thread; a crash in between costs what a full disk costs (above).

A Register is not deferred: :meth:`RegistrationWrites.save_now` raises, and the
server answers 5.03 (Service Unavailable), so the device retries later. A new
registration's id, endpoint and identity are what every later message of the
device is checked against. Held only in memory, a restart would forget a device
that believes it is registered, or, for a re-Register, bring back the endpoint's
replaced registration (an id the device no longer uses) with its observations.
Refusing costs the device one retry; the disk is full either way. Registers saved
while nothing waits go to the store at once and share its transactions; while
changes wait, a Register takes its turn after them (a flush under way may still
have to write an endpoint's older registration, which would replace the new one).
An Update or a De-register only changes a registration that is stored already: a restart before
the flush brings back its older lifetime and address (the device's next Update
renews them), or a de-registered registration until its lifetime ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .core.registration import Registration
from .store.base import Store, StoreError


FLUSH_DELAY_S = 0.05
"""How long an Update's or De-register's write waits for others to share its transaction."""


class RegistrationWrites:
    """The store's registration rows, written now or as soon as the store takes them."""

    def __init__(self, store: Store, log: Any, flush_delay: float = FLUSH_DELAY_S) -> None:
        self._store = store
        self._log = log
        self._flush_delay = flush_delay
        self._scheduled: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task] = set()
        self._pending: dict[str, tuple[str, Registration | None]] = {}
        """Registration id -> (endpoint, the registration to save, or None: delete it), oldest first."""
        self._lock = asyncio.Lock()  # one writer at a time: a flush must not overtake a newer write
        self._failing = False

    @property
    def pending(self) -> int:
        """Changes waiting for the store."""
        return len(self._pending)

    def save(self, registration: Registration) -> None:
        """Save an updated registration, with the others of the next flush."""
        self._defer(registration.id, registration.endpoint, registration)

    def delete(self, registration: Registration) -> None:
        """Delete a registration's row (and its observations), with the others of the next flush."""
        self._defer(registration.id, registration.endpoint, None)

    async def save_now(self, registration: Registration) -> None:
        """Save a new registration or raise StoreError. On success, waiting saves of
        the endpoint's earlier registrations are dropped: the store replaces them
        with this one, and writing one later would replace this one."""
        if self._pending:  # written first, and no flush may write an older one after this
            async with self._lock:
                await self._flush()
                await self._store.save_registration(registration)
        else:  # nothing to keep in order: concurrent Registers share the store's transaction
            await self._store.save_registration(registration)
        self.forget(registration.endpoint)

    def forget(self, endpoint: str) -> None:
        """Drop waiting saves of ``endpoint``: another process stored a newer registration
        of it, which a late save of an older one would replace."""
        for registration_id, (waiting_endpoint, waiting) in list(self._pending.items()):
            if waiting_endpoint == endpoint and waiting is not None:
                del self._pending[registration_id]

    async def flush(self) -> int:
        """Write what waits; returns how many changes still wait."""
        async with self._lock:
            await self._flush()
            return len(self._pending)

    def close(self) -> None:
        """No flush after this one (the server stops: it flushed last)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None

    def _defer(self, registration_id: str, endpoint: str, registration: Registration | None) -> None:
        self._pending.pop(registration_id, None)  # the newest change of a registration goes last
        self._pending[registration_id] = (endpoint, registration)
        if self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_later(self._flush_delay, self._flush_later)

    def _flush_later(self) -> None:
        self._scheduled = None
        task = asyncio.get_running_loop().create_task(self.flush(), name="registration-writes")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self) -> None:
        written = 0
        for registration_id, (endpoint, registration) in list(self._pending.items()):
            try:
                if registration is None:
                    await self._store.delete_registration(registration_id)
                else:
                    await self._store.save_registration(registration)
            except StoreError as error:
                if not self._failing:  # once per outage, not per message
                    self._log.error("registration_writes_deferred", error=str(error), waiting=len(self._pending))
                self._failing = True
                return
            del self._pending[registration_id]
            written += 1
        if self._failing:
            self._log.info("registration_writes_flushed", written=written)
        self._failing = False
