"""Per-message costs of aiocoap 0.4.17 removed without changing what it does (measured
with ``benchmarks/speed.py`` and a profile of 3,000 Registers; both belong upstream):

- ``UDP6EndpointAddress`` parses its address text with :mod:`ipaddress` every time its
  host is read (several times per datagram: hostinfo, repr, blockwise keys, and
  whether it is a multicast address, for each message sent). The parse is a pure
  function of the text, so it is cached.
- ``Context.render_to_pipe`` names each request's task with ``repr()`` of the request,
  which formats both of its addresses; :class:`ServerContext` names it cheaply.
- The UDP transport reads one datagram per readiness of its socket, and first asks the
  error queue (a system call and an exception when it is empty, as it nearly always
  is): a loop turn and two system calls per datagram. Here a readiness reads up to
  :data:`DATAGRAMS_PER_READ` datagrams, the error queue asked once.
"""

from __future__ import annotations

import functools
import ipaddress

import aiocoap
from aiocoap.util.asyncio import recvmsg
from aiocoap.pipe import error_to_message, run_driving_pipe
from aiocoap.transports.udp6 import UDP6EndpointAddress

_strip_v4mapped = UDP6EndpointAddress.__dict__["_strip_v4mapped"].__func__
UDP6EndpointAddress._strip_v4mapped = staticmethod(functools.lru_cache(maxsize=65536)(_strip_v4mapped))


@functools.lru_cache(maxsize=65536)
def _is_multicast(host: str) -> bool:
    return ipaddress.ip_address(host).is_multicast


UDP6EndpointAddress.is_multicast = property(lambda self: _is_multicast(self._plainaddress().split("%", 1)[0]))
UDP6EndpointAddress.is_multicast_locally = property(lambda self: _is_multicast(self._plainaddress_local()))


class ServerContext(aiocoap.Context):
    """aiocoap's context, with a request's task named without formatting the request."""

    def render_to_pipe(self, pipe) -> None:
        run_driving_pipe(error_to_message(pipe, self.log), self._render_to_pipe(pipe), name="coap-render")


DATAGRAMS_PER_READ = 32
"""At most this many datagrams read per readiness, so one busy socket cannot starve the loop."""
_read_one = recvmsg.RecvmsgSelectorDatagramTransport._read_ready


def _read_ready(self) -> None:
    _read_one(self)  # the error queue, then one datagram, as aiocoap does
    sock = self._RecvmsgSelectorDatagramTransport__sock
    for _ in range(DATAGRAMS_PER_READ - 1):
        if sock is None or self._protocol is None:  # closed by what the last datagram did
            return
        try:
            data, ancdata, flags, addr = sock.recvmsg(self.max_size, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        except Exception as exc:  # noqa: BLE001 - as aiocoap's own read
            self._fatal_error(exc, "Fatal read error on datagram transport")
            return
        self._protocol.datagram_msg_received(data, ancdata, flags, addr)
        sock = self._RecvmsgSelectorDatagramTransport__sock


recvmsg.RecvmsgSelectorDatagramTransport._read_ready = _read_ready
