"""In-process event fan-out: the server publishes, API streams and waiters subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator


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
    never blocks the server."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size

    def publish(self, kind: str, *, endpoint: str, **data: Any) -> None:
        event = Event(kind, endpoint, data, time.time())
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
