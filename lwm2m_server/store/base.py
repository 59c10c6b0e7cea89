"""The store interface: what the server persists, and the records it persists.

What survives a restart (besides JSON documents):

* registrations (:class:`~lwm2m_server.core.registration.Registration`), at most one
  per endpoint;
* observations (:class:`ObservationRecord`), keyed by CoAP token, belonging to
  a registration: deleting or replacing a registration deletes its observations;
* queued requests for sleeping devices (:class:`QueueEntry`), keyed by id and
  addressed to an endpoint (they outlive re-registration);
* leases (:class:`Lease`): one holder at a time among the nodes sharing the store,
  with a fencing epoch that fenced writes (:meth:`Store.put_document_if_lease`) check.

A :class:`Store` is an async adapter (SQLite by default, Redis later). Every
failure it reports is a :class:`StoreError`; no backend exception leaks out.
The JSON helpers at the bottom are shared by backends that store documents.
"""

from __future__ import annotations

import abc
import functools
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Mapping, Self

from ipso_objects import IpsoError, LwM2MPath
from lwm2m_server.core.registration import ObjectLink, ObjectList, Registration

PENDING = "pending"
DELIVERED = "delivered"
EXPIRED = "expired"
FAILED = "failed"
CANCELLED = "cancelled"
QUEUE_STATES = (PENDING, DELIVERED, EXPIRED, FAILED, CANCELLED)
"""Every state a :class:`QueueEntry` can be in."""
FINISHED_STATES = (DELIVERED, EXPIRED, FAILED, CANCELLED)
"""States an entry does not leave on its own; :meth:`Store.prune` removes them."""
MAX_TOKEN_LENGTH = 8
"""CoAP tokens are 0 to 8 bytes (RFC 7252 §3)."""


class StoreError(Exception):
    """The store could not do what was asked; ``str()`` names the file or server and why."""


class QueueFullError(StoreError):
    """An endpoint already has ``max_pending`` pending requests."""

    def __init__(self, endpoint: str, max_pending: int) -> None:
        super().__init__(f"queue of endpoint {endpoint!r} is full ({max_pending} pending requests)")
        self.endpoint = endpoint
        """The endpoint whose queue is full."""
        self.max_pending = max_pending
        """The bound that was reached."""


class UnknownEntryError(StoreError):
    """No queue entry has the given id."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no queue entry {entry_id!r}")
        self.entry_id = entry_id
        """The id that was looked up."""


class UnknownRegistrationError(StoreError):
    """An observation names a registration the store does not hold."""

    def __init__(self, registration_id: str) -> None:
        super().__init__(f"no registration {registration_id!r}")
        self.registration_id = registration_id
        """The registration id the observation named."""


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    """An Observe or Observe-Composite the server holds on a device."""

    token: bytes
    """CoAP token of the Observe request (0..8 bytes); the key."""
    endpoint: str
    """Endpoint client name of the device."""
    registration_id: str
    """The registration the observation was made under."""
    paths: tuple[LwM2MPath, ...]
    """Observed paths: one for Observe, one or more for Observe-Composite."""
    content_format: int | None
    """Content-Format requested (Accept), None for the device's default."""
    created_at: float
    """Unix time the observation was established."""

    def __post_init__(self) -> None:
        if not isinstance(self.token, bytes) or len(self.token) > MAX_TOKEN_LENGTH:
            raise ValueError(f"token must be 0..{MAX_TOKEN_LENGTH} bytes, got {self.token!r}")
        if not isinstance(self.paths, tuple) or not self.paths:
            raise ValueError("an observation needs a non-empty tuple of paths")
        if not all(isinstance(path, LwM2MPath) for path in self.paths):
            raise ValueError(f"paths must be LwM2MPath values, got {self.paths!r}")


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A request waiting for a sleeping (queue-mode) device, or its outcome."""

    id: str
    """Entry id, unique in the store."""
    endpoint: str
    """Endpoint client name the request is for."""
    created_at: float
    """Unix time the request was queued; pending entries are sent in this order."""
    expires_at: float
    """Unix time after which a still-pending request is given up."""
    state: str = PENDING
    """One of :data:`QUEUE_STATES`."""
    request: dict[str, Any] = field(default_factory=dict)
    """JSON description of the request; the store does not look inside."""
    result: dict[str, Any] | None = None
    """JSON outcome (response code, payload, reason), None while pending."""

    def __post_init__(self) -> None:
        if self.state not in QUEUE_STATES:
            raise ValueError(f"state {self.state!r} is not one of {', '.join(QUEUE_STATES)}")

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass(frozen=True, slots=True)
class Lease:
    """A named lease in the store: at most one holder at a time, until it expires."""

    name: str
    """What the lease is for (``rollouts``)."""
    holder: str
    """Who holds it (a node name)."""
    expires_at: float
    """Unix time from which another holder may take it."""
    epoch: int
    """Fencing counter: 1 at the first holder, one more at each new tenure (another
    holder, or the same one after its lease had expired); a renewal keeps it."""

    def held(self, now: float) -> bool:
        """Whether it is still in force at ``now``."""
        return now < self.expires_at


class Store(abc.ABC):
    """Persistent server state. All methods are coroutines; all failures are StoreError.

    Usable as ``async with await SqliteStore.open(path) as store:``.
    """

    # -- registrations -------------------------------------------------------

    @abc.abstractmethod
    async def save_registration(self, registration: Registration) -> None:
        """Insert or replace by id, atomically dropping another registration of the endpoint.

        Replacing by id (an Update) keeps the registration's observations;
        dropping another registration of the endpoint (a new Register) deletes its
        observations too.
        """

    @abc.abstractmethod
    async def delete_registration(self, registration_id: str) -> bool:
        """Delete a registration and its observations; False if there was none."""

    @abc.abstractmethod
    async def load_registrations(self) -> list[Registration]:
        """Every stored registration, ordered by endpoint."""

    # -- observations --------------------------------------------------------

    @abc.abstractmethod
    async def save_observation(self, observation: ObservationRecord) -> None:
        """Insert or replace by token.

        Raises :class:`UnknownRegistrationError` when its registration is not stored.
        """

    @abc.abstractmethod
    async def delete_observation(self, token: bytes) -> bool:
        """Delete one observation; False if there was none."""

    @abc.abstractmethod
    async def delete_observations_of(self, registration_id: str) -> int:
        """Delete every observation of a registration; returns how many."""

    @abc.abstractmethod
    async def load_observations(self) -> list[ObservationRecord]:
        """Every stored observation, oldest first."""

    # -- queued requests -----------------------------------------------------

    @abc.abstractmethod
    async def enqueue(self, entry: QueueEntry, max_pending: int) -> None:
        """Add a pending entry unless the endpoint already has ``max_pending`` pending.

        Check and insert are one atomic step. Raises :class:`QueueFullError`, or
        :class:`StoreError` for a duplicate id, a non-pending entry or a request
        that is not plain JSON.
        """

    @abc.abstractmethod
    async def pending(self, endpoint: str) -> list[QueueEntry]:
        """Pending entries of an endpoint, oldest first (the order to send them)."""

    @abc.abstractmethod
    async def count_pending(self) -> int:
        """Pending entries of all endpoints together (the queue depth; one cheap query)."""

    @abc.abstractmethod
    async def set_state(
        self, entry_id: str, state: str, result: dict[str, Any] | None = None
    ) -> QueueEntry:
        """Set an entry's state and result; returns the updated entry.

        Raises :class:`UnknownEntryError` for an unknown id and :class:`StoreError`
        for a state not in :data:`QUEUE_STATES`.
        """

    @abc.abstractmethod
    async def get_entry(self, entry_id: str) -> QueueEntry | None:
        """One entry by id, None if unknown."""

    @abc.abstractmethod
    async def entries(self, endpoint: str, limit: int = 100) -> list[QueueEntry]:
        """Entries of an endpoint in any state, newest first, at most ``limit``."""

    @abc.abstractmethod
    async def expire_entries(self, now: float) -> list[QueueEntry]:
        """Mark pending entries with ``expires_at < now`` expired; returns them, oldest first."""

    @abc.abstractmethod
    async def prune(self, before: float) -> int:
        """Delete finished entries created before ``before``; returns how many."""

    # -- documents -------------------------------------------------------------
    # Small JSON documents by (kind, key): device profiles, models, rollouts and
    # their per-device state. Keys sort; list_documents filters by key prefix.

    @abc.abstractmethod
    async def put_document(self, kind: str, key: str, data: dict[str, Any], now: float) -> None:
        """Insert or replace; StoreError unless ``data`` round-trips through JSON."""

    @abc.abstractmethod
    async def get_document(self, kind: str, key: str) -> dict[str, Any] | None:
        """The document, or None."""

    @abc.abstractmethod
    async def list_documents(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every document of ``kind`` whose key starts with ``prefix``, by key."""

    @abc.abstractmethod
    async def delete_document(self, kind: str, key: str) -> bool:
        """False when there was none."""

    # -- leases ----------------------------------------------------------------
    # One holder at a time across every process and node sharing the store (the
    # rollout leader). Times are the callers' clocks: nodes need them in step (NTP).

    @abc.abstractmethod
    async def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        """Take the lease ``name`` until ``now + ttl_s`` if it is free, expired or
        ``holder``'s already (a renewal); None while another holder has it.

        One atomic step, also against other processes and nodes: of holders racing
        for a free lease exactly one gets it. The epoch goes up by one with each new
        tenure and stays the same on a renewal.
        """

    @abc.abstractmethod
    async def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up at once (anyone may take it next); False unless ``holder`` had it."""

    @abc.abstractmethod
    async def get_lease(self, name: str) -> Lease | None:
        """The lease as stored (its ``expires_at`` may be past); None if never taken or released."""

    @abc.abstractmethod
    async def put_document_if_lease(
        self, kind: str, key: str, data: dict[str, Any], now: float, lease: Lease, *, held_until: float | None = None
    ) -> bool:
        """:meth:`put_document`, but only while ``lease`` is in force: the stored lease has its
        holder and epoch and expires after ``held_until`` (default ``now``). Check and write
        are one atomic step, so a node that lost the lease cannot overwrite what the new
        holder writes. False (nothing written) otherwise."""

    # -- lifecycle -----------------------------------------------------------

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release the backend; idempotent. Later calls raise StoreError."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


# -- JSON documents shared by backends ------------------------------------------


def check_state(state: str) -> str:
    """``state`` if it is one of :data:`QUEUE_STATES`, else StoreError."""
    if state not in QUEUE_STATES:
        raise StoreError(f"state {state!r} is not one of {', '.join(QUEUE_STATES)}")
    return state


def check_lease_request(name: str, holder: str, ttl_s: float | None = None) -> None:
    """StoreError unless ``name`` and ``holder`` are non-empty strings and ``ttl_s`` (if given) > 0."""
    for what, value in (("lease name", name), ("lease holder", holder)):
        if not isinstance(value, str) or not value:
            raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    if ttl_s is not None and not ttl_s > 0:
        raise StoreError(f"lease {name!r}: ttl_s must be > 0, got {ttl_s!r}")


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_COMPACT_FINITE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""(json.dumps with any option makes an encoder per call: a third of encoding a small document.)"""


def dump_json(value: Any, what: str) -> str:
    """Compact JSON that loads back equal to ``value``, or StoreError naming ``what``."""
    try:
        text = _COMPACT_FINITE.encode(value)
    except (TypeError, ValueError) as error:
        raise StoreError(f"{what} is not JSON-serialisable: {error}") from None
    if json.loads(text) != value:
        # tuples, non-str keys, ...: the loaded value would differ from the saved one
        raise StoreError(f"{what} does not survive JSON unchanged (tuples or non-str keys?)")
    return text


def document_to_json(kind: str, key: str, data: dict[str, Any]) -> str:
    """A document as JSON; StoreError unless it survives the JSON round trip unchanged."""
    return dump_json(data, f"{kind} {key!r}")


@functools.lru_cache(maxsize=1024)  # an object list is shared by a class of devices and written at every Update
def object_list_to_json(object_list: ObjectList) -> str:
    """(A fleet's devices advertise a few object lists between them: each is encoded once.)"""
    return _COMPACT.encode(
        {
            "root_path": object_list.root_path,
            "content_formats": list(object_list.content_formats),
            "objects": [[str(link.path), link.version] for link in object_list.objects],
        }
    )


@functools.lru_cache(maxsize=1024)
def object_list_from_json(text: str) -> ObjectList:
    """Raises ValueError, KeyError or TypeError when the document is malformed. (Decoded
    once per distinct list: registrations share the immutable result.)"""
    data = json.loads(text)
    objects = tuple(ObjectLink(_path(path), _version(version)) for path, version in data["objects"])
    return ObjectList(
        root_path=str(data["root_path"]),
        content_formats=tuple(int(cf) for cf in data["content_formats"]),
        objects=objects,
    )


def paths_to_json(paths: tuple[LwM2MPath, ...]) -> str:
    return _COMPACT.encode([str(path) for path in paths])


def paths_from_json(text: str) -> tuple[LwM2MPath, ...]:
    return tuple(_path(path) for path in json.loads(text))


def extra_to_json(extra: Mapping[str, str]) -> str:
    return _COMPACT.encode(dict(extra)) if extra else "{}"


def extra_from_json(text: str) -> dict[str, str]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("extra parameters are not a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def _version(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"an object version is text, got {type(value).__name__}")
    return value


def _path(text: str) -> LwM2MPath:
    try:
        return LwM2MPath.parse(text)
    except IpsoError as error:
        raise ValueError(str(error)) from None
