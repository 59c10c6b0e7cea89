"""Observation state of a simulated client, sans-I/O: when is a notification due?

LwM2M Core 1.1 §5.1.2 / 1.2 §7.3 notification attributes, as a client applies them:

- ``pmin``: at least ``pmin`` seconds between two notifications; a change seen
  earlier is sent as soon as ``pmin`` expires.
- ``pmax``: a notification at least every ``pmax`` seconds, changed or not;
  ignored when ``pmax <= pmin``.
- ``gt`` / ``lt``: for a numeric resource, notify when the value crosses the
  threshold (either direction). ``st``: notify when the value moved by at least
  ``st`` since the last notification. When any of the three is set, only they
  count as a change (any one suffices); without them any change counts.
- ``epmin`` / ``epmax``: evaluate (sample) the value at most every ``epmin`` and
  at least every ``epmax`` seconds; ``epmax <= epmin`` is ignored.

Attributes are inherited: resource instance over resource over object instance
over object; ``pmin``/``pmax`` not set anywhere fall back to the Server object's
Default Minimum/Maximum Period (/1/x/2, /1/x/3). ``gt``/``lt``/``st`` only count
at resource (or resource instance) level.

Time is passed in (``now``, seconds on any monotonic clock). An observation is a
token and its paths (one path for Observe, several for Observe-Composite); each
path is watched with its own attributes and one notification carries them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ipso_objects import LwM2MPath
from ipso_objects.codecs.link_format import NotificationAttributes


@dataclass(frozen=True, slots=True)
class EffectiveAttributes:
    """The attributes that govern one observed path after inheritance and defaults."""

    pmin: float = 0.0
    """Minimum seconds between notifications."""
    pmax: float | None = None
    """Maximum seconds between notifications; None for no maximum."""
    gt: float | None = None
    """Upper threshold, or None."""
    lt: float | None = None
    """Lower threshold, or None."""
    st: float | None = None
    """Step, or None."""
    epmin: float | None = None
    """Minimum evaluation period, or None."""
    epmax: float | None = None
    """Maximum evaluation period, or None."""

    @property
    def has_change_conditions(self) -> bool:
        """True when ``gt``, ``lt`` or ``st`` decides what counts as a change."""
        return self.gt is not None or self.lt is not None or self.st is not None


def _value(attribute: object) -> float | int | None:
    return attribute if isinstance(attribute, (int, float)) and not isinstance(attribute, bool) else None


def effective_attributes(
    path: LwM2MPath,
    assigned: Mapping[LwM2MPath, NotificationAttributes],
    *,
    default_pmin: int | None = None,
    default_pmax: int | None = None,
) -> EffectiveAttributes:
    """Merge the attributes assigned at ``path`` and its ancestors (deeper wins),
    then fill ``pmin``/``pmax`` from the Server object defaults."""
    merged: dict[str, float | int | None] = {}
    for depth in range(1, len(path) + 1):
        attributes = assigned.get(LwM2MPath(path.ids[:depth]))
        if attributes is None:
            continue
        for name in ("pmin", "pmax", "epmin", "epmax", "gt", "lt", "st"):
            if name in ("gt", "lt", "st") and depth < 3:
                continue  # change conditions exist at resource level only
            value = _value(getattr(attributes, name))
            if value is not None:
                merged[name] = value
    pmin = float(merged.get("pmin", default_pmin if default_pmin is not None else 0) or 0)
    pmax_value = merged.get("pmax", default_pmax)
    pmax = float(pmax_value) if pmax_value is not None and pmax_value > pmin else None
    epmin = merged.get("epmin")
    epmax = merged.get("epmax")
    if epmax is not None and epmin is not None and epmax <= epmin:
        epmax = None
    return EffectiveAttributes(
        pmin=pmin,
        pmax=pmax,
        gt=_float(merged.get("gt")),
        lt=_float(merged.get("lt")),
        st=_float(merged.get("st")),
        epmin=_float(epmin) or None,
        epmax=_float(epmax) or None,
    )


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def numeric(value: object) -> float | None:
    """The number an observed value stands for: a number itself, or the only
    value of a one-entry mapping (a resource read as leaves); else None."""
    if isinstance(value, Mapping) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class PathWatch:
    """Notification timing of one observed path."""

    def __init__(self, path: LwM2MPath, attributes: EffectiveAttributes, now: float, value: object) -> None:
        self.path = path
        self.attributes = attributes
        self.last_sent_at = now
        """When the last notification (or the Observe response) was sent."""
        self.last_sent_value = value
        """The value it carried."""
        self.last_sample = value
        """The value at the last evaluation (for threshold crossings)."""
        self.last_evaluated_at = now
        self.pending = False
        """A change was seen but ``pmin`` had not expired yet."""
        self.deferred = False
        """A change arrived inside ``epmin`` and waits for the next evaluation."""

    def evaluate(self, now: float, value: object) -> bool:
        """Look at ``value`` at time ``now``; True when a notification is due now."""
        attributes = self.attributes
        since = now - self.last_sent_at
        pmax_due = attributes.pmax is not None and since >= attributes.pmax
        if attributes.epmin is not None and now - self.last_evaluated_at < attributes.epmin:
            if value != self.last_sample:
                self.deferred = True
            return pmax_due or (self.pending and since >= attributes.pmin)
        self.last_evaluated_at = now
        self.deferred = False
        if self._changed(value):
            self.pending = True
        self.last_sample = value
        return pmax_due or (self.pending and since >= attributes.pmin)

    def _changed(self, value: object) -> bool:
        attributes = self.attributes
        number = numeric(value)
        if not attributes.has_change_conditions or number is None:
            return value != self.last_sample
        previous = numeric(self.last_sample)
        if previous is not None:
            if attributes.gt is not None and (previous > attributes.gt) != (number > attributes.gt):
                return True
            if attributes.lt is not None and (previous < attributes.lt) != (number < attributes.lt):
                return True
        sent = numeric(self.last_sent_value)
        return attributes.st is not None and sent is not None and abs(number - sent) >= attributes.st

    def sent(self, now: float, value: object) -> None:
        """Record that a notification carrying ``value`` went out at ``now``."""
        self.last_sent_at = now
        self.last_sent_value = value
        self.last_sample = value
        self.pending = False

    def next_deadline(self) -> float | None:
        """The next time :meth:`evaluate` must run even if nothing changes; None if never."""
        attributes = self.attributes
        times = []
        if attributes.pmax is not None:
            times.append(self.last_sent_at + attributes.pmax)
        if self.pending:
            times.append(self.last_sent_at + attributes.pmin)
        if self.deferred and attributes.epmin is not None:
            times.append(self.last_evaluated_at + attributes.epmin)
        if attributes.epmax is not None:
            times.append(self.last_evaluated_at + attributes.epmax)
        return min(times) if times else None


class Observation:
    """One Observe (one path) or Observe-Composite (several paths) of one token.

    Values passed in are whatever the owner reads at the observed path (a value,
    or a mapping of leaf values); for several paths, a mapping path → value.
    """

    def __init__(
        self,
        token: bytes,
        paths: Sequence[LwM2MPath],
        attributes: Mapping[LwM2MPath, EffectiveAttributes] | EffectiveAttributes,
        now: float,
        value: object,
    ) -> None:
        if not paths:
            raise ValueError("an observation needs at least one path")
        self.token = token
        self.paths = tuple(paths)
        values = self._split(value)
        self.watches = {
            path: PathWatch(path, self._attributes_of(attributes, path), now, values[path])
            for path in self.paths
        }

    @staticmethod
    def _attributes_of(
        attributes: Mapping[LwM2MPath, EffectiveAttributes] | EffectiveAttributes, path: LwM2MPath
    ) -> EffectiveAttributes:
        if isinstance(attributes, EffectiveAttributes):
            return attributes
        return attributes.get(path, EffectiveAttributes())

    def _split(self, value: object) -> dict[LwM2MPath, object]:
        if len(self.paths) == 1:
            return {self.paths[0]: value}
        if not isinstance(value, Mapping):
            raise TypeError("a composite observation takes a mapping path -> value")
        return {path: value.get(path) for path in self.paths}

    def set_attributes(self, attributes: Mapping[LwM2MPath, EffectiveAttributes] | EffectiveAttributes) -> None:
        """New attributes (after a Write-Attributes); timing state is kept."""
        for path, watch in self.watches.items():
            watch.attributes = self._attributes_of(attributes, path)

    def should_notify(self, now: float, value: object) -> bool:
        """Evaluate the observed ``value`` at ``now``. When a notification is due,
        record it as sent (the caller sends it) and return True."""
        values = self._split(value)
        due = [watch.evaluate(now, values[path]) for path, watch in self.watches.items()]
        if not any(due):
            return False
        for path, watch in self.watches.items():
            watch.sent(now, values[path])
        return True

    def next_deadline(self, now: float | None = None) -> float | None:
        """When :meth:`should_notify` must next be called without a value change
        (a pending ``pmin``, ``pmax``, ``epmax``); None when only changes matter.
        ``now`` is accepted for symmetry and not used: a past deadline means "now"."""
        deadlines = [d for d in (watch.next_deadline() for watch in self.watches.values()) if d is not None]
        return min(deadlines) if deadlines else None
