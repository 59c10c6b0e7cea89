"""Rollouts, sans-I/O: which devices a deployment targets, in what order, how many
at once, and when it pauses.

A rollout names a model, a selector and a strategy. Each matching device gets a
:class:`DeviceRollout` that moves pending → in_flight → done | failed |
incompatible | rolled_back | superseded, with retries after a backoff. Canaries
go first: until the canary share has finished without failure, no other device
starts. When failed devices reach the failure threshold the rollout pauses; an
operator resumes it.

Two kinds of retry. A device that *answered* and failed (refused a write, reported
an update error, runs the wrong model, made no progress) uses one of
``max_attempts`` and starts a fresh delivery after the backoff. A device that did
not answer at all (unreachable, or a queued request that was never delivered)
uses no attempt: its slot goes back to the rollout at once, and after a backoff
(doubling, at most :data:`UNREACHABLE_BACKOFF_CAP_S`; sooner when the device has
contacted the server since) the same delivery resumes where it stood. Such a device
never fails for being away; it keeps the rollout from completing until it is
back or the rollout is cancelled.

One device has one delivery per target (its /9 instance, or /5): when a newer
rollout takes the device, an older one's record becomes ``superseded``
(:func:`superseded`). A rollout ends ``complete`` once every matched device is
final (:func:`is_complete`), unless it *follows* (``Strategy.follow``): then it
stays running and enrols devices that match later.
"""

from __future__ import annotations

import enum
import fnmatch
import heapq
import itertools
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..core.capabilities import DeviceProfile


class RolloutError(Exception):
    """A rollout definition or transition that is not allowed; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices a rollout is for. Empty fields match everything."""

    device_classes: tuple[str, ...] = ()
    """Device classes (fnmatch patterns, e.g. ``tflite-micro-*``)."""
    endpoints: tuple[str, ...] = ()
    """Endpoint name patterns (fnmatch, e.g. ``m4f-*``)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Profile facts that must match exactly: ``manufacturer``, ``model``, ``runtime``, ``cpu_core``."""

    def matches(self, endpoint: str, profile: DeviceProfile | None) -> bool:
        if self.endpoints and not any(fnmatch.fnmatchcase(endpoint, p) for p in self.endpoints):
            return False
        if self.device_classes:
            device_class = profile.device_class if profile is not None else None
            if device_class is None or not any(fnmatch.fnmatchcase(device_class, p) for p in self.device_classes):
                return False
        for key, wanted in self.labels.items():
            if _label(profile, key) != wanted:
                return False
        return True


def _label(profile: DeviceProfile | None, key: str) -> str | None:
    if profile is None:
        return None
    if key in ("manufacturer", "model", "firmware_version", "hardware_version"):
        return getattr(profile, key)
    if profile.tinyml is not None and key in ("runtime", "cpu_core"):
        return getattr(profile.tinyml, key)
    return None


VERSION_CHECKS = ("auto", "package", "firmware", "none")


@dataclass(frozen=True, slots=True)
class Strategy:
    """How fast and how carefully."""

    max_in_flight: int = 10
    """Devices being updated at once."""
    canary_fraction: float = 0.1
    """Share of devices (at least one) updated first; the rest waits for them."""
    failure_threshold: float = 0.2
    """Pause when failed / finished devices reaches this share (after at least one failure)."""
    max_attempts: int = 3
    """Delivery attempts per device before it counts as failed."""
    retry_backoff_s: float = 30.0
    """Wait before the first retry; doubles each time."""
    mode: str = "auto"
    """``push``, ``pull`` or ``auto`` (what the device prefers, pull when it takes both)."""
    version_check: str = "auto"
    """Firmware: how a device proves it runs the new image once State is Idle with
    Update Result 1: ``package`` (/5/0/7 PkgVersion), ``firmware`` (/3/0/3), ``none``,
    or ``auto`` (``package`` when the device has /5/0/7, else ``firmware``)."""
    follow: bool = False
    """Keep running once every matched device is final, to enrol devices that match
    later (registered or rediscovered). Without it the rollout ends ``complete``."""
    plugin: str = ""
    """Compiler plugin pinned for every device (``tflm``); "" lets the ranking choose. A
    device the pinned plugin does not fit is ``incompatible`` with its reasons."""

    def __post_init__(self) -> None:
        checks = [
            (self.max_in_flight > 0, f"max_in_flight must be > 0, got {self.max_in_flight}"),
            (0 <= self.canary_fraction <= 1, f"canary_fraction must be in 0..1, got {self.canary_fraction}"),
            (0 < self.failure_threshold <= 1, f"failure_threshold must be in (0, 1], got {self.failure_threshold}"),
            (self.max_attempts > 0, f"max_attempts must be > 0, got {self.max_attempts}"),
            (self.retry_backoff_s >= 0, f"retry_backoff_s must be >= 0, got {self.retry_backoff_s}"),
            (self.mode in ("push", "pull", "auto"), f"mode must be push, pull or auto, got {self.mode!r}"),
            (isinstance(self.follow, bool), f"follow must be true or false, got {self.follow!r}"),
            (isinstance(self.plugin, str) and self.plugin == self.plugin.strip(),
             f"plugin must be a plugin name (or empty), got {self.plugin!r}"),
            (self.version_check in VERSION_CHECKS,
             f"version_check must be {', '.join(VERSION_CHECKS)}, got {self.version_check!r}"),
        ]
        for ok, reason in checks:
            if not ok:
                raise RolloutError(reason)


class RolloutState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETE = "complete"
    """Every matched device is final and the rollout does not follow: it enrols no more."""


ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED)
"""States in which a rollout enrols devices and owns their deliveries."""


class DeviceStatus(enum.Enum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRY_WAIT = "retry_wait"
    DONE = "done"
    FAILED = "failed"
    INCOMPATIBLE = "incompatible"
    ROLLED_BACK = "rolled_back"
    """Failed, and the previous module was restored."""
    SUPERSEDED = "superseded"
    """A newer rollout for the same target took the device over; the reason names it."""


FINAL = (DeviceStatus.DONE, DeviceStatus.FAILED, DeviceStatus.INCOMPATIBLE, DeviceStatus.ROLLED_BACK,
         DeviceStatus.SUPERSEDED)
UNREACHABLE_BACKOFF_CAP_S = 600.0
"""Longest wait between tries to reach a device that does not answer."""


@dataclass(frozen=True, slots=True)
class DeviceRollout:
    """One device's progress in one rollout."""

    endpoint: str
    status: DeviceStatus = DeviceStatus.PENDING
    attempts: int = 0
    canary: bool = False
    next_attempt_at: float = 0.0
    reason: str = ""
    """Why it failed or is incompatible."""
    job: dict[str, Any] | None = None
    """The persisted :class:`~.delivery.DeliveryJob` of the current attempt."""
    updated_at: float = 0.0
    package: str = ""
    """What the device gets and why, e.g. ``raw image: the device declares no SUIT support``."""
    unreachable: int = 0
    """Tries in a row that got no answer from the device (for the backoff); 0 once it answers."""

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; the job is the record's own dict, not a copy (records are replaced,
        never changed in place, and this is saved at every job step)."""
        data = {name: getattr(self, name) for name in _DEVICE_FIELDS}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceRollout:
        values = dict(data)
        values["status"] = DeviceStatus(values["status"])
        return cls(**values)


_DEVICE_FIELDS = tuple(f.name for f in fields(DeviceRollout))


@dataclass(frozen=True, slots=True)
class Rollout:
    """A deployment of one model to the devices a selector picks."""

    id: str
    model: str
    """``name@version`` of a registered model."""
    selector: Selector = field(default_factory=Selector)
    strategy: Strategy = field(default_factory=Strategy)
    state: RolloutState = RolloutState.RUNNING
    created_at: float = 0.0
    paused_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "model": self.model, "state": self.state.value,
            "created_at": self.created_at, "paused_reason": self.paused_reason,
            "selector": {"device_classes": list(self.selector.device_classes),
                         "endpoints": list(self.selector.endpoints), "labels": dict(self.selector.labels)},
            "strategy": asdict(self.strategy),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        selector = data.get("selector", {})
        # saved before ``follow`` existed: such rollouts ran on and enrolled newcomers; they still do
        strategy = {"follow": True, **data.get("strategy", {})}
        return cls(
            id=data["id"], model=data["model"], state=RolloutState(data.get("state", "running")),
            created_at=data.get("created_at", 0.0), paused_reason=data.get("paused_reason", ""),
            selector=Selector(tuple(selector.get("device_classes", ())), tuple(selector.get("endpoints", ())),
                              dict(selector.get("labels", {}))),
            strategy=Strategy(**strategy),
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts per status, for progress bars."""

    total: int
    counts: Mapping[str, int]

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s.value, 0) for s in FINAL)


class DeviceTable(dict):
    """A rollout's devices by endpoint, counted and indexed by status as they change: its
    progress is asked at every status change, and the orchestrator's every tick looks for
    the devices to start; scanning them all each time cost O(devices) per tick."""

    def __init__(self, devices: Iterable[DeviceRollout] = ()) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}
        self._by_status: dict[DeviceStatus, dict[str, None]] = {}  # insertion-ordered sets
        self._canaries: dict[str, None] = {}
        for device in devices:
            self[device.endpoint] = device

    def __setitem__(self, endpoint: str, device: DeviceRollout) -> None:
        old = self.get(endpoint)
        if old is not None:
            self._counts[old.status.value] -= 1
            del self._by_status[old.status][endpoint]
            self._canaries.pop(endpoint, None)
        super().__setitem__(endpoint, device)
        self._counts[device.status.value] = self._counts.get(device.status.value, 0) + 1
        self._by_status.setdefault(device.status, {})[endpoint] = None
        if device.canary:
            self._canaries[endpoint] = None

    def summary(self) -> Summary:
        return Summary(len(self), {status: n for status, n in self._counts.items() if n})

    def endpoints_with(self, status: DeviceStatus) -> Iterable[str]:
        return self._by_status.get(status, {}).keys()

    def with_status(self, status: DeviceStatus) -> list[DeviceRollout]:
        return [self[endpoint] for endpoint in self.endpoints_with(status)]

    def canaries(self) -> list[DeviceRollout]:
        return [self[endpoint] for endpoint in self._canaries]


def summarize(devices: Iterable[DeviceRollout]) -> Summary:
    if isinstance(devices, DeviceTable):
        return devices.summary()
    counts: dict[str, int] = {}
    total = 0
    for device in devices:
        total += 1
        counts[device.status.value] = counts.get(device.status.value, 0) + 1
    return Summary(total, counts)


def assign_canaries(devices: list[DeviceRollout], fraction: float) -> list[DeviceRollout]:
    """Mark the first ceil(fraction × compatible devices) pending ones as canaries."""
    candidates = [d for d in devices if d.status is not DeviceStatus.INCOMPATIBLE]
    wanted = math.ceil(fraction * len(candidates)) if fraction > 0 else 0
    already = sum(1 for d in candidates if d.canary)
    out = []
    for device in devices:
        if already < wanted and not device.canary and device.status is DeviceStatus.PENDING:
            device = replace(device, canary=True)
            already += 1
        out.append(device)
    return out


def should_pause(rollout: Rollout, devices: Iterable[DeviceRollout]) -> str | None:
    """The reason to pause, or None."""
    counts = summarize(devices).counts
    failed = sum(counts.get(s.value, 0) for s in (DeviceStatus.FAILED, DeviceStatus.ROLLED_BACK))
    finished = failed + counts.get(DeviceStatus.DONE.value, 0)
    if failed and finished and failed / finished >= rollout.strategy.failure_threshold:
        return f"{failed} of {finished} finished devices failed (threshold {rollout.strategy.failure_threshold:.0%})"
    return None


def is_complete(rollout: Rollout, devices: Iterable[DeviceRollout]) -> bool:
    """True when a running rollout that does not follow has matched devices and all
    of them are final. One that has matched no device yet waits for its first."""
    summary = summarize(devices)
    return (rollout.state is RolloutState.RUNNING and not rollout.strategy.follow
            and summary.total > 0 and sum(summary.counts.get(s.value, 0) for s in FINAL) == summary.total)


def next_devices(rollout: Rollout, devices: Iterable[DeviceRollout], now: float,
                 last_contact: Callable[[str], float | None] | None = None) -> list[str]:
    """Endpoints to start now: canaries first, never more than max_in_flight at once.

    ``last_contact(endpoint)`` is when the device last registered or updated (None when
    it is not registered): a device waiting out an unreachable backoff is ready as soon
    as it has been heard from. Only the devices waiting to start are looked at when
    ``devices`` is a :class:`DeviceTable`.
    """
    if rollout.state is not RolloutState.RUNNING:
        return []
    table = devices if isinstance(devices, DeviceTable) else DeviceTable(devices)
    room = rollout.strategy.max_in_flight - table.summary().counts.get(DeviceStatus.IN_FLIGHT.value, 0)
    if room <= 0:
        return []

    def retry_due(device: DeviceRollout) -> bool:
        if device.next_attempt_at <= now:
            return True
        heard = last_contact(device.endpoint) if device.unreachable and last_contact is not None else None
        return heard is not None and heard > device.updated_at

    canaries = table.canaries()
    if not all(d.status is DeviceStatus.DONE for d in canaries):  # the canaries go first, alone
        ready = [d.endpoint for d in canaries
                 if d.status is DeviceStatus.PENDING or (d.status is DeviceStatus.RETRY_WAIT and retry_due(d))]
        return sorted(ready)[:room]
    retrying = (d.endpoint for d in table.with_status(DeviceStatus.RETRY_WAIT) if retry_due(d))
    return heapq.nsmallest(room, itertools.chain(table.endpoints_with(DeviceStatus.PENDING), retrying))


def after_failure(device: DeviceRollout, strategy: Strategy, reason: str, now: float) -> DeviceRollout:
    """Retry after a backoff, or fail for good once the attempts are used up."""
    if device.attempts >= strategy.max_attempts:
        return replace(device, status=DeviceStatus.FAILED, reason=reason, updated_at=now, job=None, unreachable=0)
    backoff = strategy.retry_backoff_s * (2 ** (device.attempts - 1))
    return replace(device, status=DeviceStatus.RETRY_WAIT, reason=reason, next_attempt_at=now + backoff,
                   updated_at=now, job=None, unreachable=0)


def after_unreachable(device: DeviceRollout, strategy: Strategy, reason: str, now: float) -> DeviceRollout:
    """The device did not answer: give the slot back and resume the same delivery
    (its ``job`` is kept) after a doubling backoff. Uses no attempt."""
    count = device.unreachable + 1
    cap = max(strategy.retry_backoff_s, UNREACHABLE_BACKOFF_CAP_S)
    backoff = min(strategy.retry_backoff_s * (2 ** min(count - 1, 30)), cap)
    return replace(device, status=DeviceStatus.RETRY_WAIT, reason=f"unreachable: {reason}", unreachable=count,
                   next_attempt_at=now + backoff, updated_at=now)


@dataclass(frozen=True, slots=True)
class Claim:
    """One rollout's record of one device for one target, as :func:`superseded` weighs it."""

    rollout: Rollout
    device: DeviceRollout
    target: str
    """What the delivery writes to: ``/9/<instance>`` or ``/5/0``."""


def superseded(claims: Sequence[Claim]) -> list[tuple[Claim, Rollout]]:
    """Records to mark superseded, each with the newer rollout that takes the device.

    Per (endpoint, target) the newest active rollout whose record is not
    incompatible or superseded owns the device (done, failed or rolled back count:
    that rollout decided what the device runs). Every older active rollout's record
    that is not final yet is superseded by it.
    """
    groups: dict[tuple[str, str], list[Claim]] = {}
    for claim in claims:
        if claim.rollout.state in ACTIVE or claim.rollout.state is RolloutState.COMPLETE:
            groups.setdefault((claim.device.endpoint, claim.target), []).append(claim)
    out = []
    for group in groups.values():
        owners = [c for c in group
                  if c.device.status not in (DeviceStatus.INCOMPATIBLE, DeviceStatus.SUPERSEDED)]
        if not owners:
            continue
        newest = max(owners, key=lambda c: (c.rollout.created_at, c.rollout.id)).rollout
        out += [(c, newest) for c in group
                if c.rollout.id != newest.id and c.rollout.state in ACTIVE and not c.device.final
                and (c.rollout.created_at, c.rollout.id) < (newest.created_at, newest.id)]
    return out
