"""Persistent server state behind one interface: registrations, observations, queues.

``await SqliteStore.open(path)`` is the default store;
``await PostgresqlStore.open(url)`` (module :mod:`.postgresql`, imported on its own
because psycopg is the optional ``postgresql`` extra) lets several daemons share one
database. Other backends implement :class:`Store`. Every failure is a :class:`StoreError`.
"""

from .base import (
    FINISHED_STATES,
    QUEUE_STATES,
    ObservationRecord,
    QueueEntry,
    QueueFullError,
    Store,
    StoreError,
    UnknownEntryError,
    UnknownRegistrationError,
)
from .sqlite import SqliteStore

__all__ = [
    "FINISHED_STATES", "QUEUE_STATES", "ObservationRecord", "QueueEntry", "QueueFullError",
    "SqliteStore", "Store", "StoreError", "UnknownEntryError", "UnknownRegistrationError",
]
