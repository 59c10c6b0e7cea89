"""In-process event fan-out: the server publishes, API streams and waiters subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Iterator


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a device."""

    kind: str
    """``registered``, ``updated``, ``deregistered``, ``expired``, ``registration_ended`` (its
    credentials no longer admit it; ``reason`` says why), ``notification``, ``send``, ``queue``."""
    endpoint: str
    """The device concerned."""
    data: dict[str, Any] = field(default_factory=dict)
    """Kind-specific details (the registration, the decoded result, the queue entry...)."""
    time: float = 0.0
    """Unix time of publication."""


class EventHub:
    """Bounded per-subscriber queues: a slow subscriber loses its oldest events,
    never blocks the server. A subscriber may ask for one endpoint and some kinds
    only: events are routed by endpoint, so a publish costs what its own listeners
    cost, not one queue operation for every listener of every device."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._everything: dict[asyncio.Queue[Event], frozenset[str] | None] = {}
        self._by_endpoint: dict[str, dict[asyncio.Queue[Event], frozenset[str] | None]] = {}
        self._queue_size = queue_size

    def publish(self, kind: str, *, endpoint: str, **data: Any) -> None:
        listeners = self._by_endpoint.get(endpoint)
        if not self._everything and not listeners:
            return
        event = Event(kind, endpoint, data, time.time())
        for group in (self._everything, listeners or {}):
            for queue, kinds in group.items():
                if kinds is not None and kind not in kinds:
                    continue
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(event)

    def subscribers(self) -> int:
        return len(self._everything) + sum(len(group) for group in self._by_endpoint.values())

    @contextlib.contextmanager
    def subscribe(self, endpoint: str | None = None,
                  kinds: Collection[str] | None = None) -> Iterator[asyncio.Queue[Event]]:
        """Events of ``endpoint`` (every device's when None) of ``kinds`` (all when None)."""
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        group = self._everything if endpoint is None else self._by_endpoint.setdefault(endpoint, {})
        group[queue] = frozenset(kinds) if kinds else None
        try:
            yield queue
        finally:
            group.pop(queue, None)
            if endpoint is not None and not group and self._by_endpoint.get(endpoint) is group:
                del self._by_endpoint[endpoint]
