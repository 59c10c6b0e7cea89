"""Per-peer request rate limiting, sans-I/O: token buckets by peer and by host.

Every request a device sends (Register, Update, De-register, Send) costs one
token from two buckets:

- its **peer** bucket, keyed by the source ``host:port``: ``rate`` tokens a
  second, at most ``burst`` saved up;
- its **host** bucket, keyed by the IPv4 address or the IPv6 /64 prefix (one
  device owns a whole /64): :data:`HOST_SHARE` times the peer's rate and burst.
  A device that hops source ports, or addresses inside its /64, still meets a
  limit, while a few devices behind one NAT still fit. Loopback hosts have no
  host bucket: behind loopback are processes of this machine (simulated fleets,
  a local DTLS terminator or proxy) whose many ports are many devices.

A request is allowed when both buckets hold a whole token; then both pay one. A
refused request pays nothing, so a peer that keeps trying still gets a request
through every ``1 / rate`` seconds and never starves itself for longer.

Memory is bounded: each table keeps at most ``max_tracked`` buckets, in least-
recently-used order. A bucket that has refilled completely is no different from
a new one, so it is forgotten first; past the cap the least recently used
bucket goes anyway (its peer then starts again from a full bucket).

Time is passed in (``now``, seconds of any monotonic clock).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

HOST_SHARE = 10
"""A host (IPv4 address, IPv6 /64) may send as much as this many peers together."""
MAX_TRACKED = 10_000
"""Buckets kept per table (peers, hosts) before the least recently used are dropped."""
REPORT_INTERVAL_S = 10.0
"""A refused peer or host is reported (logged) at most once per this many seconds."""
PEER = "peer"
HOST = "host"


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`RateLimiter.check` says about one request."""

    allowed: bool
    """True when the request may be served."""
    retry_after: float = 0.0
    """Seconds until a request from this peer would be allowed (0 when allowed)."""
    limited_by: str | None = None
    """``"peer"`` or ``"host"``: the bucket that was empty; None when allowed."""
    key: str = ""
    """The peer (``host:port``) or host key (``192.0.2.7``, ``2001:db8::/64``) limited."""
    report: bool = False
    """True for the first refusal of ``key`` in a report interval: log this one."""
    refused: int = 0
    """With ``report``: refusals of ``key`` since its previous report, this one included."""

    @property
    def max_age(self) -> int:
        """``retry_after`` as a CoAP Max-Age (whole seconds, at least 1)."""
        return max(1, math.ceil(self.retry_after))


class _Bucket:
    __slots__ = ("tokens", "stamp", "refused", "reported_at")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.stamp = now
        self.refused = 0
        self.reported_at = -math.inf


class _Table:
    """Buckets of one kind, least recently used first."""

    def __init__(self, rate: float, burst: float, max_tracked: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def get(self, key: str, now: float) -> _Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self.buckets[key] = _Bucket(self.burst, now)
        else:
            self.buckets.move_to_end(key)
            elapsed = now - bucket.stamp
            if elapsed > 0:  # a clock that steps back refills nothing
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
                bucket.stamp = now
        return bucket

    def _full(self, bucket: _Bucket, now: float) -> bool:
        return bucket.tokens + max(0.0, now - bucket.stamp) * self.rate >= self.burst

    def _make_room(self, now: float) -> None:
        buckets = self.buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if not self._full(oldest, now):
                break
            buckets.popitem(last=False)
        while len(buckets) >= self.max_tracked:
            buckets.popitem(last=False)

    def retry_after(self, bucket: _Bucket) -> float:
        return max(0.0, (1.0 - bucket.tokens) / self.rate)


class RateLimiter:
    """Token buckets per peer and per host; ask :meth:`allow` (or :meth:`check`) per request."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        host_share: float = HOST_SHARE,
        max_tracked: int = MAX_TRACKED,
        report_interval_s: float = REPORT_INTERVAL_S,
        limit_loopback_hosts: bool = False,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst must be at least 1 request, got {burst!r}")
        if host_share < 1 or max_tracked < 1:
            raise ValueError("host_share and max_tracked must be at least 1")
        self.rate = rate
        """Requests per second a peer may send in the long run."""
        self.burst = burst
        """Requests a peer may send at once after a quiet spell."""
        self._peers = _Table(rate, burst, max_tracked)
        self._hosts = _Table(rate * host_share, burst * host_share, max_tracked)
        self._report_interval = report_interval_s
        self._limit_loopback = limit_loopback_hosts
        self.refused_total = 0
        """Requests refused since the limiter was made (a counter for metrics)."""

    def __len__(self) -> int:
        """Buckets held now, peers and hosts together (bounded by twice ``max_tracked``)."""
        return len(self._peers.buckets) + len(self._hosts.buckets)

    def allow(self, peer: str, now: float) -> bool:
        """True when a request from ``peer`` (``host:port`` or ``[v6]:port``) at ``now`` may go on."""
        return self.check(peer, now).allowed

    def check(self, peer: str, now: float) -> Decision:
        """Take a token for a request from ``peer`` at ``now``, or say why not and for how long."""
        host = host_key(peer)
        peer_bucket = self._peers.get(peer, now)
        host_bucket = None
        if host is not None and (self._limit_loopback or not _is_loopback(host)):
            host_bucket = self._hosts.get(host, now)
        if peer_bucket.tokens < 1:
            return self._refuse(PEER, peer, peer_bucket, self._peers, now)
        if host_bucket is not None and host_bucket.tokens < 1:
            return self._refuse(HOST, host, host_bucket, self._hosts, now)
        peer_bucket.tokens -= 1
        if host_bucket is not None:
            host_bucket.tokens -= 1
        return Decision(True)

    def _refuse(self, kind: str, key: str, bucket: _Bucket, table: _Table, now: float) -> Decision:
        self.refused_total += 1
        bucket.refused += 1
        report = now - bucket.reported_at >= self._report_interval
        refused = bucket.refused
        if report:
            bucket.reported_at = now
            bucket.refused = 0
        return Decision(False, table.retry_after(bucket), kind, key, report, refused if report else 0)


def rate_limiter(rate: float, burst: float) -> RateLimiter | None:
    """The limiter for ``coap.rate_limit_per_peer`` / ``coap.rate_limit_burst``; None when
    ``rate`` is 0 (limiting off)."""
    return RateLimiter(rate, burst) if rate > 0 else None


def split_peer(peer: str) -> tuple[str, str]:
    """``"192.0.2.7:5683"`` → ``("192.0.2.7", "5683")``; ``"[2001:db8::1]:5683"`` →
    ``("2001:db8::1", "5683")``. A string without a port is all host."""
    if peer.startswith("["):
        host, _, rest = peer[1:].partition("]")
        return host, rest.removeprefix(":")
    if peer.count(":") == 1:
        host, _, port = peer.partition(":")
        return host, port
    return peer, ""  # a bare IPv6 address or a name


def host_key(peer: str) -> str | None:
    """The host bucket of ``peer``: its IPv4 address or its IPv6 /64 prefix (an IPv4-mapped
    IPv6 address counts as IPv4); the host text itself when it is no IP address."""
    host, _ = split_peer(peer)
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.is_loopback:
            return str(address)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LogThrottle:
    """At most one log line per host (IPv4 address, IPv6 /64) per ``interval`` seconds and
    at most ``max_lines`` lines per interval in all, so a flood of the same event (bad DTLS
    handshakes from one host or from many) cannot flood the log; what is held back is
    counted and reported with the host's next line. Memory is bounded like the buckets'."""

    def __init__(self, interval: float = REPORT_INTERVAL_S, max_lines: int = 50,
                 max_tracked: int = MAX_TRACKED) -> None:
        self.interval = interval
        self.max_lines = max_lines
        self.max_tracked = max_tracked
        self._hosts: OrderedDict[str, list] = OrderedDict()  # host → [logged at, held back since]
        self._window = (-math.inf, 0)  # (start, lines logged in it)
        self.suppressed_total = 0
        """Lines held back since the throttle was made."""

    def check(self, peer: str, now: float) -> int | None:
        """None: hold this line back; else log it, with the number of lines of the same
        host held back since its previous one."""
        host = host_key(peer) or peer
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = [-math.inf, 0]
            while len(self._hosts) > self.max_tracked:
                self._hosts.popitem(last=False)
        else:
            self._hosts.move_to_end(host)
        start, lines = self._window
        if now - start >= self.interval:
            start, lines = now, 0
        if now - entry[0] < self.interval or lines >= self.max_lines:
            entry[1] += 1
            self.suppressed_total += 1
            self._window = (start, lines)
            return None
        self._window = (start, lines + 1)
        held_back, entry[:] = entry[1], [now, 0]
        return held_back
