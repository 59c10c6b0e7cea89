"""Queue mode (LwM2M Core 1.1 §6.5, Transport 1.1 §6.5), sans-I/O.

A device that registered in queue mode (``Q``, or ``b=UQ`` in 1.0) sleeps
between its messages. The Transport spec makes it wait "at least
MAX_TRANSMIT_WAIT [CoAP] seconds from the last CoAP message it sent to the
LwM2M Server before intentionally going offline"; RFC 7252 §4.8.2 makes that
93 s with the default transmission parameters. So the server may reach it only
within that window after its last Register, Update, Send, notification or
response, and keeps requests for it in a queue until it wakes.

On wake the requests go out one at a time, oldest first (a client handles one
confirmable request at a time; aiocoap queues more silently): this module
decides which one, and enforces the life of a queued request::

    pending ──▶ delivered   the device answered (any response code)
            ├─▶ failed      no answer / could not be sent; it will not be retried
            ├─▶ expired     its expires_at passed before it was delivered
            └─▶ cancelled   an operator withdrew it

Persistence is not here: a store keeps entries with the same fields as
:class:`QueuedRequest` (``request`` is :meth:`DeviceRequest.to_dict`,
``result`` is :meth:`Result.to_dict`); its entries work with
:func:`plan_delivery` as they are, since only ``id``, ``created_at``,
``expires_at`` and ``state`` are read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Protocol

from .registration import Registration

MAX_TRANSMIT_WAIT = 93.0
"""Seconds; RFC 7252 §4.8.2 with the default ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4."""


class QueueError(Exception):
    """An illegal state transition, or an entry the queue does not hold."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QueueState(str, enum.Enum):
    """The life of a queued request; every state but PENDING is final."""

    PENDING = "pending"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: Mapping[QueueState, frozenset[QueueState]] = {
    QueueState.PENDING: frozenset(
        {QueueState.DELIVERED, QueueState.EXPIRED, QueueState.FAILED, QueueState.CANCELLED}),
    QueueState.DELIVERED: frozenset(),
    QueueState.EXPIRED: frozenset(),
    QueueState.FAILED: frozenset(),
    QueueState.CANCELLED: frozenset(),
}
"""The allowed moves out of each state."""


def _state(value: QueueState | str) -> QueueState:
    try:
        return QueueState(value)
    except ValueError:
        names = ", ".join(state.value for state in QueueState)
        raise QueueError(f"{value!r} is not a queue state ({names})") from None


def check_transition(current: QueueState | str, new: QueueState | str) -> QueueState:
    """``new`` as a :class:`QueueState` when ``current`` may move to it, else QueueError."""
    old, target = _state(current), _state(new)
    if target not in TRANSITIONS[old]:
        if not TRANSITIONS[old]:
            raise QueueError(f"a {old.value} request is final; it cannot become {target.value}")
        raise QueueError(f"a {old.value} request cannot become {target.value}")
    return target


@dataclass(frozen=True, slots=True)
class QueueModePolicy:
    """When a device can be sent a request right away."""

    awake_window_s: float = MAX_TRANSMIT_WAIT
    """Seconds a queue-mode device stays reachable after the last message it sent."""

    def __post_init__(self) -> None:
        if not self.awake_window_s > 0:
            raise QueueError(f"awake_window_s must be > 0, got {self.awake_window_s}")

    def awake_until(self, registration: Registration, last_seen: float) -> float | None:
        """Until when a queue-mode device is reachable; None for a device that never sleeps."""
        return last_seen + self.awake_window_s if registration.queue_mode else None

    def is_awake(self, registration: Registration, last_seen: float, now: float) -> bool:
        """True when a request sent ``now`` can reach the device.

        ``last_seen`` is the Unix time of the device's newest message of any
        kind (Register, Update, Send, notification, response). An expired
        registration is never reachable; a device not in queue mode always is.
        """
        if registration.is_expired(now):
            return False
        until = self.awake_until(registration, last_seen)
        return until is None or last_seen <= now <= until


class QueueItem(Protocol):
    """What :func:`plan_delivery` reads of a queued entry (a store's own type fits)."""

    @property
    def id(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def expires_at(self) -> float | None: ...
    @property
    def state(self) -> QueueState | str: ...


@dataclass(frozen=True, slots=True)
class Queued:
    """A request held for a sleeping device; follow it with the server's ``queue_entry``."""

    entry_id: str
    """Queue entry id."""
    endpoint: str
    """The device it waits for."""
    expires_at: float
    """Unix time after which it is given up."""


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request waiting for (or done with) a queue-mode device."""

    id: str
    """Unique id of the entry."""
    endpoint: str
    """The device's endpoint name."""
    created_at: float
    """Unix time it was queued; delivery follows this order."""
    expires_at: float | None
    """Unix time after which it must not be sent; None to wait forever."""
    request: Mapping[str, Any]
    """:meth:`DeviceRequest.to_dict` of the request."""
    state: QueueState = QueueState.PENDING
    """Where it is in its life."""
    result: Mapping[str, Any] | None = None
    """:meth:`Result.to_dict` of the answer, or ``{"diagnostic": ...}`` for a failure."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", _state(self.state))

    def is_expired(self, now: float) -> bool:
        return is_expired(self, now)

    def moved_to(self, state: QueueState | str,
                 result: Mapping[str, Any] | None = None) -> QueuedRequest:
        """This entry in ``state`` (QueueError when the move is not allowed)."""
        target = check_transition(self.state, state)
        return replace(self, state=target, result=dict(result) if result is not None else self.result)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form with the store's field names."""
        return {"id": self.id, "endpoint": self.endpoint, "created_at": self.created_at,
                "expires_at": self.expires_at, "state": self.state.value,
                "request": dict(self.request),
                "result": dict(self.result) if self.result is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueuedRequest:
        try:
            return cls(str(data["id"]), str(data["endpoint"]), float(data["created_at"]),
                       None if data.get("expires_at") is None else float(data["expires_at"]),
                       dict(data["request"]), data.get("state", "pending"), data.get("result"))
        except KeyError as missing:
            raise QueueError(f"queue entry lacks {missing.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise QueueError(f"malformed queue entry: {error}") from None


def is_expired(item: QueueItem, now: float) -> bool:
    """True when a pending item can no longer be delivered (its expiry is now or past)."""
    return item.expires_at is not None and now >= item.expires_at


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """What to do with a device's queue now."""

    deliver: QueueItem | None = None
    """The one request to send now, or None."""
    expire: tuple[QueueItem, ...] = ()
    """Pending items past their expiry: mark them expired."""
    waiting: int = 0
    """Pending items left for later (after ``deliver`` is answered)."""


def plan_delivery(items: Iterable[QueueItem], now: float, *, in_flight: bool = False,
                  awake: bool = True) -> DeliveryPlan:
    """Which pending request to send now: the oldest unexpired one (ties by id).

    Nothing is delivered while another request to the device is ``in_flight``
    or when the device is not ``awake``; expired items are reported either way.
    """
    pending = sorted((item for item in items if _state(item.state) is QueueState.PENDING),
                     key=lambda item: (item.created_at, item.id))
    expire = tuple(item for item in pending if is_expired(item, now))
    live = [item for item in pending if not is_expired(item, now)]
    if in_flight or not awake or not live:
        return DeliveryPlan(None, expire, len(live))
    return DeliveryPlan(live[0], expire, len(live) - 1)


@dataclass(slots=True)
class DeviceQueue:
    """One device's queue in memory: the rules above with the in-flight bookkeeping.

    Pure state; the adapter persists each returned entry and sends what
    :meth:`next` hands out.
    """

    endpoint: str
    """The device's endpoint name."""
    entries: dict[str, QueuedRequest] = field(default_factory=dict)
    """Entries by id, in the order they were added."""
    in_flight: str | None = None
    """Id of the request sent and not yet answered."""

    def add(self, entry: QueuedRequest) -> QueuedRequest:
        if entry.endpoint != self.endpoint:
            raise QueueError(f"entry {entry.id} is for {entry.endpoint}, not {self.endpoint}")
        if entry.id in self.entries:
            raise QueueError(f"entry {entry.id} is already queued")
        self.entries[entry.id] = entry
        return entry

    def pending(self) -> list[QueuedRequest]:
        """Pending entries in delivery order."""
        return sorted((e for e in self.entries.values() if e.state is QueueState.PENDING),
                      key=lambda e: (e.created_at, e.id))

    def next(self, now: float, *, awake: bool = True) -> tuple[QueuedRequest | None, list[QueuedRequest]]:
        """Expire what is due, then hand out the next request (marked in flight).

        Returns ``(entry to send or None, entries that just expired)``.
        """
        waiting = [e for e in self.entries.values() if e.id != self.in_flight]  # in flight: not expired
        plan = plan_delivery(waiting, now, in_flight=self.in_flight is not None, awake=awake)
        expired = [self._move(item.id, QueueState.EXPIRED) for item in plan.expire]
        if plan.deliver is None:
            return None, expired
        self.in_flight = plan.deliver.id
        return self.entries[plan.deliver.id], expired

    def delivered(self, entry_id: str, result: Mapping[str, Any]) -> QueuedRequest:
        """The device answered the in-flight request."""
        return self._finish(entry_id, QueueState.DELIVERED, result)

    def failed(self, entry_id: str, diagnostic: str) -> QueuedRequest:
        """The in-flight request got no answer, or could not be sent."""
        return self._finish(entry_id, QueueState.FAILED, {"ok": False, "diagnostic": diagnostic})

    def requeue(self, entry_id: str) -> QueuedRequest:
        """The in-flight request was not sent after all (the device slept): keep it pending."""
        self._check_in_flight(entry_id)
        self.in_flight = None
        return self.entries[entry_id]

    def cancel(self, entry_id: str) -> QueuedRequest:
        """Withdraw a pending request; one already in flight cannot be withdrawn."""
        if entry_id == self.in_flight:
            raise QueueError(f"entry {entry_id} is being delivered; it cannot be cancelled")
        return self._move(entry_id, QueueState.CANCELLED)

    def _finish(self, entry_id: str, state: QueueState, result: Mapping[str, Any]) -> QueuedRequest:
        self._check_in_flight(entry_id)
        entry = self._move(entry_id, state, result)
        self.in_flight = None
        return entry

    def _check_in_flight(self, entry_id: str) -> None:
        if entry_id != self.in_flight:
            raise QueueError(f"entry {entry_id} is not the request in flight ({self.in_flight})")

    def _move(self, entry_id: str, state: QueueState,
              result: Mapping[str, Any] | None = None) -> QueuedRequest:
        entry = self.entries.get(entry_id)
        if entry is None:
            raise QueueError(f"no entry {entry_id} for {self.endpoint}")
        moved = entry.moved_to(state, result)
        self.entries[entry_id] = moved
        return moved


__all__ = [
    "MAX_TRANSMIT_WAIT", "DeliveryPlan", "DeviceQueue", "QueueError", "QueueItem", "QueueModePolicy",
    "QueueState", "Queued", "QueuedRequest", "TRANSITIONS", "check_transition", "is_expired", "plan_delivery",
]
