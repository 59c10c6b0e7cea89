"""Who may fetch a module download ``/fw/<token>`` (pull delivery), sans-I/O.

A module goes only to a device with a pull delivery of it in progress. The
rollouts grant a token to an endpoint when they save the job that names its
URI, and take the grant back when the delivery ends (done, failed, superseded,
cancelled); :class:`DownloadGrants` holds what they granted. A GET of a granted
token is matched against each granted endpoint's current registration:

- registered with an authenticated identity (a DTLS PSK identity, or
  ``oscore:<hex>``): the GET must prove that same identity; where it comes from
  does not matter;
- registered without one (NoSec): the GET must be unprotected too and come from
  the registration's **host**, from any port. Many clients fetch from a socket of
  their own (Zephyr's pull context, Anjay's downloader), lwm2m-node-lib sends
  from a new port every time, and a NAT may rebind ports; a UDP answer goes to
  the host asked from, so the module is sent to the registered host only. Peers
  behind that same host (a NAT, one machine) are not told apart: binding a
  download to one device takes DTLS or OSCORE.

Anything else is 4.03; a token nobody is being delivered is 4.04, as for a token
that does not exist. Refusals are reported at most once per
:data:`REPORT_INTERVAL_S`, with how many there were. Time is passed in (``now``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable

from .registration import Registration

REPORT_INTERVAL_S = 10.0
"""A 4.03 refusal is reported (logged) at most once per this many seconds."""
MAX_REMEMBERED = 10_000
"""Peers remembered as the device they fetched for (each block after the first is
then one check, not a search of every device the module goes to)."""
NOT_DELIVERING = "no delivery of this module is in progress"
NOT_YOURS = "this module is not being delivered to you: fetch it as the device registered (same identity or host)"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`DownloadGrants.check` says about one GET of ``/fw/<token>``."""

    endpoint: str | None = None
    """The device the module is delivered to, when the GET came from it; None when refused."""
    code: str = ""
    """``4.03`` or ``4.04`` when refused; empty when allowed."""
    reason: str = ""
    """Short diagnostic for the peer when refused."""
    report: bool = False
    """True for the first 4.03 in a report interval: log this one."""
    refused: int = 0
    """With ``report``: 4.03 refusals since the previous report, this one included."""

    @property
    def allowed(self) -> bool:
        return self.endpoint is not None


@functools.lru_cache(maxsize=MAX_REMEMBERED)
def host_of(address: str) -> str:
    """The host of an address as the CoAP adapter writes it (``host:port``,
    ``[v6]:port``, ``coaps://host:port``, ``oscore://<hex>@host:port``), lower-case."""
    rest = address.partition("://")[2] if "://" in address else address
    rest = rest.rpartition("@")[2].lower()
    if rest.startswith("["):
        end = rest.find("]")
        return rest[1:end] if end > 0 else rest
    host, colon, port = rest.rpartition(":")
    return host if colon and port.isdigit() and ":" not in host else rest


def may_fetch(registration: Registration, address: str, identity: str | None) -> bool:
    """Whether a GET from ``address`` that proved ``identity`` (None: unprotected)
    comes from the device of ``registration`` (the rules in the module docstring)."""
    if registration.identity != identity:
        return False
    return identity is not None or host_of(address) == host_of(registration.address)


class DownloadGrants:
    """Token → the endpoints that may fetch it, and the refusals' report throttle."""

    def __init__(self, report_interval_s: float = REPORT_INTERVAL_S) -> None:
        self._endpoints: dict[str, set[str]] = {}
        self._tokens: dict[str, frozenset[str]] = {}
        self._report_interval = report_interval_s
        self._reported_at = -math.inf
        self._refused = 0
        self._fetching: dict[tuple[str, str, str | None], str] = {}  # (token, address, identity) → endpoint

    def set(self, endpoint: str, tokens: Iterable[str]) -> None:
        """``endpoint`` may fetch exactly ``tokens`` from now on (none: nothing)."""
        tokens = frozenset(tokens)
        for token in self._tokens.pop(endpoint, frozenset()) - tokens:
            holders = self._endpoints[token]
            holders.discard(endpoint)
            if not holders:
                del self._endpoints[token]
        for token in tokens:
            self._endpoints.setdefault(token, set()).add(endpoint)
        if tokens:
            self._tokens[endpoint] = tokens

    def tokens(self, endpoint: str) -> frozenset[str]:
        """What ``endpoint`` may fetch."""
        return self._tokens.get(endpoint, frozenset())

    def by_endpoint(self) -> dict[str, frozenset[str]]:
        """Every endpoint that may fetch something, with what."""
        return dict(self._tokens)

    def check(self, token: str, address: str, identity: str | None,
              registration_of: Callable[[str], Registration | None], now: float) -> Verdict:
        """May the peer at ``address`` with ``identity`` fetch ``token`` now?
        ``registration_of`` gives an endpoint's current registration (None: not registered)."""
        holders = self._endpoints.get(token)
        if not holders:
            return Verdict(code="4.04", reason=NOT_DELIVERING)

        def fetches_for(endpoint: str) -> bool:
            registration = registration_of(endpoint)
            return registration is not None and may_fetch(registration, address, identity)

        peer = (token, address, identity)
        known = self._fetching.pop(peer, None)  # the device it fetched for last time: one check, no search
        endpoint = known if known in holders and fetches_for(known) else next(filter(fetches_for, holders), None)
        if endpoint is not None:
            if len(self._fetching) >= MAX_REMEMBERED:
                self._fetching.clear()
            self._fetching[peer] = endpoint
            return Verdict(endpoint)
        self._refused += 1
        if now - self._reported_at < self._report_interval:
            return Verdict(code="4.03", reason=NOT_YOURS)
        refused, self._refused, self._reported_at = self._refused, 0, now
        return Verdict(code="4.03", reason=NOT_YOURS, report=True, refused=refused)
