"""The records as table rows, shared by the SQL backends (SQLite, PostgreSQL): the
same columns in the same order, so each backend only says how to run its SQL."""

from __future__ import annotations

import functools
import json
from typing import Any

from lwm2m_server.core.registration import Registration

from .base import (
    PENDING,
    ObservationRecord,
    QueueEntry,
    StoreError,
    dump_json,
    extra_from_json,
    extra_to_json,
    object_list_from_json,
    object_list_to_json,
    paths_from_json,
    paths_to_json,
)

REGISTRATION_COLUMNS = (
    "id, endpoint, address, lifetime, lwm2m_version, binding, queue_mode, sms, "
    "object_list, registered_at, updated_at, extra, identity"
)
"""What a registration row holds; a save adds ``expires_at`` after them."""


@functools.lru_cache(maxsize=None)
def registration_upsert(placeholder: str, rows: int = 1) -> str:
    """The statement saving ``rows`` :func:`registration_row` s, with the driver's
    ``placeholder`` (``?``, ``%s``): an upsert, not a delete and insert, which would
    cascade to the observations of a registration that is only updated."""
    row = "(" + ", ".join([placeholder] * (REGISTRATION_COLUMNS.count(",") + 2)) + ")"  # and expires_at
    return (
        f"INSERT INTO registrations ({REGISTRATION_COLUMNS}, expires_at) VALUES {', '.join([row] * rows)} "
        "ON CONFLICT (id) DO UPDATE SET endpoint = excluded.endpoint, "
        "address = excluded.address, lifetime = excluded.lifetime, "
        "lwm2m_version = excluded.lwm2m_version, binding = excluded.binding, "
        "queue_mode = excluded.queue_mode, sms = excluded.sms, "
        "object_list = excluded.object_list, registered_at = excluded.registered_at, "
        "updated_at = excluded.updated_at, expires_at = excluded.expires_at, "
        "extra = excluded.extra, identity = excluded.identity"
    )


@functools.lru_cache(maxsize=None)
def document_upsert(placeholder: str, rows: int = 1) -> str:
    """The statement saving ``rows`` documents (kind, key, data, updated_at), with the
    driver's ``placeholder``."""
    row = "(" + ", ".join([placeholder] * 4) + ")"
    return (f"INSERT INTO documents (kind, key, data, updated_at) VALUES {', '.join([row] * rows)} "
            "ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at")


OBSERVATION_COLUMNS = "token, endpoint, registration_id, paths, content_format, created_at"
QUEUE_COLUMNS = "id, endpoint, created_at, expires_at, state, request, result"


def registration_row(registration: Registration) -> tuple[Any, ...]:
    """The values of :data:`REGISTRATION_COLUMNS`, then ``expires_at``."""
    return (
        registration.id,
        registration.endpoint,
        registration.address,
        registration.lifetime,
        registration.lwm2m_version,
        registration.binding,
        registration.queue_mode,
        registration.sms,
        object_list_to_json(registration.object_list),
        registration.registered_at,
        registration.updated_at,
        extra_to_json(registration.extra),
        registration.identity,
        registration.expires_at,
    )


def registration_from_row(row: tuple[Any, ...]) -> Registration:
    (id_, endpoint, address, lifetime, version, binding, queue_mode, sms,
     object_list, registered_at, updated_at, extra, identity) = row
    return Registration(
        id=id_,
        endpoint=endpoint,
        address=address,
        lifetime=lifetime,
        lwm2m_version=version,
        binding=binding,
        queue_mode=bool(queue_mode),
        sms=sms,
        object_list=object_list_from_json(object_list),
        registered_at=registered_at,
        updated_at=updated_at,
        extra=extra_from_json(extra),
        identity=identity,
    )


def observation_row(observation: ObservationRecord) -> tuple[Any, ...]:
    return (
        observation.token,
        observation.endpoint,
        observation.registration_id,
        paths_to_json(observation.paths),
        observation.content_format,
        observation.created_at,
    )


def observations_from_rows(rows: list[tuple[Any, ...]]) -> list[ObservationRecord]:
    return [
        ObservationRecord(
            token=bytes(token),
            endpoint=endpoint,
            registration_id=registration_id,
            paths=paths_from_json(paths),
            content_format=content_format,
            created_at=created_at,
        )
        for token, endpoint, registration_id, paths, content_format, created_at in rows
    ]


def queue_row(entry: QueueEntry, max_pending: int) -> tuple[Any, ...]:
    """The row of an entry to enqueue; StoreError for one that may not queue."""
    if entry.state != PENDING:
        raise StoreError(f"queue entry {entry.id!r} is {entry.state}, only pending entries queue")
    if max_pending < 0:
        raise StoreError(f"max_pending must be >= 0, got {max_pending}")
    if not isinstance(entry.request, dict):
        raise StoreError(f"request of queue entry {entry.id!r} must be a dict")
    return (
        entry.id,
        entry.endpoint,
        entry.created_at,
        entry.expires_at,
        entry.state,
        dump_json(entry.request, f"request of queue entry {entry.id!r}"),
        result_json(entry.id, entry.result),
    )


def result_json(entry_id: str, result: dict[str, Any] | None) -> str | None:
    if result is None:
        return None
    if not isinstance(result, dict):
        raise StoreError(f"result of queue entry {entry_id!r} must be a dict or None")
    return dump_json(result, f"result of queue entry {entry_id!r}")


def entry_from_row(row: tuple[Any, ...]) -> QueueEntry:
    id_, endpoint, created_at, expires_at, state, request, result = row
    return QueueEntry(
        id=id_,
        endpoint=endpoint,
        created_at=created_at,
        expires_at=expires_at,
        state=state,
        request=json.loads(request),
        result=json.loads(result) if result is not None else None,
    )
