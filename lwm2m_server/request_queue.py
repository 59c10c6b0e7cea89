"""Requests held for sleeping (queue-mode) devices: stored until the device next
speaks, then sent in order; each finished, expired or withdrawn one is published as a
``queue`` event, which is how waiters learn the outcome."""

from __future__ import annotations

import asyncio
import secrets
from typing import Awaitable, Callable

import structlog

from .config import QueueConfig
from .core.events import EventHub
from .core.operations import DeviceRequest
from .core.queue_mode import Queued
from .core.registration import Registration
from .core.responses import UNREACHABLE, Result
from .store.base import CANCELLED, DELIVERED, EXPIRED, FAILED, PENDING, QueueEntry, Store


class RequestQueue:
    """The queued requests of one server."""

    def __init__(self, store: Store, events: EventHub, config: QueueConfig, *, clock: Callable[[], float],
                 registration_of: Callable[[str], Registration | None],
                 exchange: Callable[[Registration, DeviceRequest], Awaitable[Result]]) -> None:
        self._store = store
        self._events = events
        self._config = config
        self._clock = clock
        self._registration_of = registration_of
        self._exchange = exchange
        self._log = structlog.get_logger("lwm2m_server")

    async def add(self, endpoint: str, request: DeviceRequest) -> Queued:
        """Hold ``request`` until the device speaks (QueueFullError past the bound)."""
        now = self._clock()
        entry = QueueEntry(
            id=secrets.token_hex(8),
            endpoint=endpoint,
            created_at=now,
            expires_at=now + self._config.default_expiry_s,
            state=PENDING,
            request=request.to_dict(),
        )
        await self._store.enqueue(entry, self._config.max_pending_per_device)
        self._log.info("request_queued", ep=endpoint, id=entry.id, op=request.kind.name)
        self._events.publish("queue", endpoint=endpoint, entry=entry)
        return Queued(entry.id, entry.endpoint, entry.expires_at)

    async def deliver(self, endpoint: str) -> None:
        """Send what waits for ``endpoint``, oldest first (it has just spoken)."""
        for entry in await self._store.pending(endpoint):
            registration = self._registration_of(endpoint)
            if registration is None:
                return
            current = await self._store.get_entry(entry.id)
            if current is None or current.finished:  # cancelled while the ones before it went out
                continue
            if entry.expires_at < self._clock():
                finished = await self._store.set_state(entry.id, EXPIRED)
            else:
                result = await self._exchange(registration, DeviceRequest.from_dict(entry.request))
                state = FAILED if result.code == UNREACHABLE else DELIVERED
                finished = await self._store.set_state(entry.id, state, result.to_dict())
                self._log.info("queued_request_delivered", ep=endpoint, id=entry.id, code=result.code)
            self._events.publish("queue", endpoint=endpoint, entry=finished)

    async def cancel(self, entry_id: str) -> QueueEntry | None:
        entry = await self._store.get_entry(entry_id)
        if entry is None or entry.finished:
            return None
        entry = await self._store.set_state(entry_id, CANCELLED)
        self._log.info("queued_request_cancelled", ep=entry.endpoint, id=entry_id)
        self._events.publish("queue", endpoint=entry.endpoint, entry=entry)
        return entry

    async def wait_for(self, entry_id: str, timeout: float) -> QueueEntry | None:
        with self._events.subscribe(kinds=("queue",)) as events:
            entry = await self._store.get_entry(entry_id)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while entry is not None and not entry.finished:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        event = await events.get()
                except TimeoutError:
                    break
                if event.data["entry"].id == entry_id:
                    entry = event.data["entry"]
            return entry
