"""Small pieces of the device's CoAP adapter: port binding without SO_REUSEPORT,
response codes, timed waits, request detection, observation and device counters."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field

from aiocoap import Code

from ipso_objects import LwM2MPath

from .observe import Observation

_REUSE_PORT = "AIOCOAP_REUSE_PORT"
_reuse_port_off = 0
_reuse_port_saved: str | None = None


@contextlib.contextmanager
def without_reuse_port():
    """Bind without SO_REUSEPORT. aiocoap sets it on server sockets, and with it
    Linux may hand the same ephemeral port to two sockets (measured: 3 duplicates
    in 400 binds), so two devices would share one address. aiocoap reads
    ``AIOCOAP_REUSE_PORT`` at bind time; it is set while any device binds."""
    global _reuse_port_off, _reuse_port_saved
    if _reuse_port_off == 0:
        _reuse_port_saved = os.environ.get(_REUSE_PORT)
        os.environ[_REUSE_PORT] = "0"
    _reuse_port_off += 1
    try:
        yield
    finally:
        _reuse_port_off -= 1
        if _reuse_port_off == 0:
            if _reuse_port_saved is None:
                os.environ.pop(_REUSE_PORT, None)
            else:
                os.environ[_REUSE_PORT] = _reuse_port_saved



@dataclass(slots=True)
class LiveObservation:
    observation: Observation
    paths: tuple[LwM2MPath, ...]
    task: asyncio.Task | None
    attributes_version: int
    due: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class DeviceStats:
    """Counters of what the device did."""

    requests: int = 0
    """Requests from the server answered."""
    notifications: int = 0
    """Observe notifications sent (the initial Observe responses not counted)."""
    updates: int = 0
    """Successful Registration Updates."""
    registrations: int = 0
    """Successful Registers."""
    dropped: int = 0
    """Requests dropped while asleep."""
    reboots: int = 0
    """Power cycles (:meth:`SimulatedDevice.reboot`)."""
    blocks_fetched: int = 0
    """Block2 blocks received by pull downloads."""



def coap_code(dotted: str) -> Code:
    major, minor = dotted.split(".")
    return Code(int(major) << 5 | int(minor))


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass (``asyncio.timeout``: unlike
    ``wait_for`` on Python 3.11 it never swallows a cancellation)."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    except TimeoutError:
        pass


def is_request(datagram: bytes) -> bool:
    """True when a CoAP datagram carries a request (code class 0, detail 1..31)."""
    return len(datagram) >= 4 and datagram[1] >> 5 == 0 and datagram[1] & 0x1F != 0
