"""Socket guards of the adapters: a port that cannot be bound is named, and an ICMP
error is not charged to the next datagram sent.

The kernel's ``[Errno 98] Address already in use`` names neither the protocol nor
the port; an operator with four UDP ports and a TCP port configured needs both.

aiocoap's UDP socket asks for ICMP errors (``IP_RECVERR``). The kernel then also
leaves each one pending on the socket, and unless a read happens to clear it, the
*next* ``sendmsg`` fails with it, whichever peer that datagram is for: a device
whose port closed ("port unreachable") made the server lose its answer to another
device and fail that device's exchange (one lost answer in five, on loopback).
:func:`resend_after_stale_errors` sends such a datagram again: the failed attempt
has cleared the error.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Iterator

_BIND_ERRORS = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL}


class PortUnavailable(OSError):
    """A port could not be bound; ``str()`` names the protocol, address and port."""

    def __init__(self, protocol: str, host: str, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, os.strerror(cause.errno) if cause.errno else str(cause))
        self.protocol = protocol
        """``"UDP"`` or ``"TCP"``."""
        self.host = host
        """The bind address as configured."""
        self.port = port
        """The port as configured."""

    @property
    def in_use(self) -> bool:
        """True when another socket holds the port."""
        return self.errno == errno.EADDRINUSE

    @property
    def where(self) -> str:
        """``UDP 127.0.0.1:5683``, ``UDP [::]:5684``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol} {host}:{self.port}"

    def __str__(self) -> str:
        if self.in_use:
            return f"{self.where} is in use by another process"
        return f"cannot bind {self.where}: {self.strerror}"


@contextlib.contextmanager
def naming_port(protocol: str, host: str, port: int) -> Iterator[None]:
    """Turn a failure to bind (in use, not permitted, no such local address) inside
    the block into :class:`PortUnavailable`; other errors pass unchanged."""
    try:
        yield
    except PortUnavailable:
        raise
    except OSError as error:
        if error.errno not in _BIND_ERRORS:
            raise
        raise PortUnavailable(protocol, host, port, error) from error


def resend_after_stale_errors(transport: Any) -> None:
    """Make ``transport.sendmsg`` (aiocoap's recvmsg transport) try a datagram a second
    time when the first attempt fails: a pending ICMP error about an earlier datagram
    is cleared by that failure, and a real failure fails again and goes to aiocoap
    (``error_received``) as before. (That earlier error reached aiocoap, for the
    right peer, through the error queue.)"""
    sock = transport.get_extra_info("socket")
    send = transport.sendmsg

    def sendmsg(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        try:
            sock.sendmsg((data,), ancdata, flags, address)
        except OSError:
            send(data, ancdata, flags, address)

    transport.sendmsg = sendmsg
