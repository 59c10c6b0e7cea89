"""Prometheus metrics of one server, served at ``GET /metrics`` by the API.

Each :class:`LwM2MServer` has its own :class:`Metrics` with its own registry (never
prometheus_client's global one), so several servers in one process keep apart.

Two kinds of figures:

- **kept on the hot path** — requests to devices (by operation and response code,
  with a latency histogram) and from devices (by kind and response code): plain
  integers in dicts keyed by small fixed label sets (never by endpoint), one
  increment per request;
- **read at scrape time** — registrations, rollout devices, DTLS sessions,
  block-wise transfers, rate-limited requests (the adapter's own counters,
  :class:`~.transport.messages.AdapterStats`) and the queue depth (one COUNT
  query). Nothing is copied or hooked for them.

Access (``api.metrics``): ``token`` always wants the API's bearer token;
``loopback`` (the default) serves requests from 127.0.0.1 / ::1 without it;
``open`` serves anyone. :func:`needs_token` is the rule.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import TYPE_CHECKING, Iterator, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .config_values import is_loopback
from .ota.rollouts import DeviceStatus, RolloutState
from .security.oscore import is_oscore_identity
from .store.base import StoreError

if TYPE_CHECKING:
    from .core.registration import Registration
    from .ota.orchestrator import Orchestrator
    from .store.base import Store
    from .transport.messages import AdapterStats

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Prometheus text format (``text/plain; version=...``)."""
PREFIX = "tinymlaas_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds (seconds) of the request latency histogram; a lost request takes up
to ``coap.request_timeout_s`` (93 s by default)."""


def needs_token(access: str, remote: str | None) -> bool:
    """Whether a scrape from ``remote`` (an IP address; None if unknown) must carry the
    API token under ``api.metrics`` = ``access`` (``token``, ``loopback`` or ``open``)."""
    if access == "open":
        return False
    if access == "loopback":
        return remote is None or not is_loopback(remote)
    return True


def request_kind(method: str, uri_path: tuple[str, ...]) -> str:
    """What a device's request is, as a label: ``register``, ``update``,
    ``deregister``, ``bootstrap``, ``send`` or ``other``."""
    if uri_path and uri_path[0] == "rd":
        if len(uri_path) == 1:
            return "register" if method == "POST" else "other"
        if len(uri_path) == 2:
            return "update" if method == "POST" else "deregister" if method == "DELETE" else "other"
    elif uri_path == ("bs",) and method == "POST":
        return "bootstrap"
    elif uri_path == ("dp",) and method in ("POST", "iPATCH"):
        return "send"
    return "other"


def security_of(identity: str | None) -> str:
    """``plain`` (NoSec), ``oscore`` or ``dtls`` (a PSK identity)."""
    if identity is None:
        return "plain"
    return "oscore" if is_oscore_identity(identity) else "dtls"


class _Server(Protocol):
    """What the metrics read of the server at scrape time."""

    store: Store

    def registrations(self) -> list[Registration]: ...

    @property
    def transport_stats(self) -> AdapterStats: ...


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: +Inf
        self.sum = 0.0


class Metrics:
    """The counters kept per request, and the registry a scrape renders."""

    def __init__(self, server: _Server | None = None) -> None:
        self.server = server
        """Where registrations, the adapter's counters and the queue come from."""
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        self.to_devices: dict[tuple[str, str], int] = {}
        """(operation, response code) → requests the server sent to devices."""
        self.from_devices: dict[tuple[str, str], int] = {}
        """(kind, response code) → requests devices sent to the server."""
        self._latency: dict[str, _Histogram] = {}
        self._operations: dict[object, str] = {}  # Operation → its label
        self._orchestrator: Orchestrator | None = None
        self._queue_depth: int | None = None

    # -- the hot path ------------------------------------------------------------------

    def request_to_device(self, operation, code: str, seconds: float) -> None:
        """One request the server sent (``operation``: an ``Operation`` or its label)
        and what came back (a CoAP code, or ``unreachable``), after ``seconds``."""
        label = self._operations.get(operation)
        if label is None:
            label = self._operations[operation] = str(getattr(operation, "value", operation)).lower()
        key = (label, code)
        self.to_devices[key] = self.to_devices.get(key, 0) + 1
        histogram = self._latency.get(label)
        if histogram is None:
            histogram = self._latency[label] = _Histogram()
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram.sum += seconds

    def request_from_device(self, method: str, uri_path: tuple[str, ...], code: str) -> None:
        """One request a device sent, and the code it was answered with."""
        key = (request_kind(method, uri_path), code)
        self.from_devices[key] = self.from_devices.get(key, 0) + 1

    # -- a scrape ----------------------------------------------------------------------------

    async def render(self, orchestrator: Orchestrator | None = None) -> bytes:
        """The exposition text of every family; ``orchestrator`` adds the rollouts."""
        depth = None
        if self.server is not None:
            try:
                depth = await self.server.store.count_pending()
            except StoreError:  # a scrape must not fail for it: the family is left out
                depth = None
        self._queue_depth, self._orchestrator = depth, orchestrator
        try:
            return generate_latest(self.registry)
        finally:
            self._orchestrator = None


class _Collector:
    """Yields every family at scrape time (prometheus_client's custom collector)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        yield from self._requests(metrics)
        if metrics.server is not None:
            yield from self._server(metrics.server, metrics._queue_depth)
        if metrics._orchestrator is not None:
            yield from self._rollouts(metrics._orchestrator)

    @staticmethod
    def _requests(metrics: Metrics) -> Iterator[Metric]:
        to_devices = CounterMetricFamily(
            PREFIX + "requests_to_devices_total",
            "Requests the server sent to devices, by LwM2M operation and the device's response code "
            "('unreachable': no answer)", labels=("operation", "code"))
        for (operation, code), count in sorted(metrics.to_devices.items()):
            to_devices.add_metric((operation, code), count)
        yield to_devices
        latency = HistogramMetricFamily(
            PREFIX + "request_to_device_duration_seconds",
            "Seconds from sending a request to a device until its answer (or giving up), by operation",
            labels=("operation",))
        for operation, histogram in sorted(metrics._latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, math.inf), histogram.counts):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            latency.add_metric((operation,), buckets, histogram.sum)
        yield latency
        from_devices = CounterMetricFamily(
            PREFIX + "requests_from_devices_total",
            "Requests devices sent to the server (register, update, deregister, bootstrap, send, other), "
            "by the response code they got; rate-limited ones are counted apart", labels=("kind", "code"))
        for (kind, code), count in sorted(metrics.from_devices.items()):
            from_devices.add_metric((kind, code), count)
        yield from_devices

    @staticmethod
    def _server(server: _Server, queue_depth: int | None) -> Iterator[Metric]:
        by_kind: dict[tuple[str, str, str, str], int] = {}
        for registration in server.registrations():
            key = (registration.lwm2m_version, registration.binding, security_of(registration.identity),
                   "true" if registration.queue_mode else "false")
            by_kind[key] = by_kind.get(key, 0) + 1
        registrations = GaugeMetricFamily(
            PREFIX + "registrations", "Devices registered now, by LwM2M version, binding, security "
            "(plain, dtls, oscore) and queue mode (b=UQ, or Q in LwM2M 1.1+)",
            labels=("lwm2m_version", "binding", "security", "queue_mode"))
        for labels, count in sorted(by_kind.items()):
            registrations.add_metric(labels, count)
        yield registrations
        stats = server.transport_stats
        blocks = CounterMetricFamily(
            PREFIX + "blockwise_blocks_total", "Block-wise transfer blocks: 'served' Block2 blocks of module "
            "downloads, 'received' Block1 blocks from devices, 'sent' Block1 blocks of pushes to devices",
            labels=("direction",))
        octets = CounterMetricFamily(
            PREFIX + "blockwise_bytes_total", "Payload bytes of those blocks, by direction", labels=("direction",))
        for direction, count, size in (("served", stats.blocks_served, stats.bytes_served),
                                       ("received", stats.blocks_received, stats.bytes_received),
                                       ("sent", stats.blocks_sent, stats.bytes_sent)):
            blocks.add_metric((direction,), count)
            octets.add_metric((direction,), size)
        yield blocks
        yield octets
        yield CounterMetricFamily(
            PREFIX + "rate_limited_requests_total", "Requests from devices refused by the rate limit (4.29)",
            value=stats.rate_limited)
        yield GaugeMetricFamily(PREFIX + "dtls_sessions", "DTLS sessions open now", value=stats.dtls_sessions)
        if queue_depth is not None:
            yield GaugeMetricFamily(
                PREFIX + "queue_depth", "Requests queued for sleeping (queue-mode) devices and not sent yet",
                value=queue_depth)

    @staticmethod
    def _rollouts(orchestrator: Orchestrator) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            PREFIX + "rollout_devices", "Devices of each rollout, by delivery state", labels=("rollout", "state"))
        rollouts: dict[str, int] = {state.value: 0 for state in RolloutState}
        for rollout in orchestrator.rollouts():
            rollouts[rollout.state.value] += 1
            found = orchestrator.rollout(rollout.id)
            counts = {status: 0 for status in DeviceStatus}
            for device in found[1] if found is not None else ():
                counts[device.status] += 1
            for status, count in counts.items():
                devices.add_metric((rollout.id, status.value), count)
        yield devices
        states = GaugeMetricFamily(PREFIX + "rollouts", "Rollouts by state", labels=("state",))
        for state, count in rollouts.items():
            states.add_metric((state,), count)
        yield states


def _bound(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))
