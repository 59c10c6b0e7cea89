"""Per-message costs of aiocoap 0.4.17 removed without changing what it does (measured
with ``benchmarks/speed.py`` and a profile of 3,000 Registers; both belong upstream):

- ``UDP6EndpointAddress`` parses its address text with :mod:`ipaddress` every time its
  host is read (several times per datagram: hostinfo, repr, blockwise keys, and
  whether it is a multicast address, for each message sent). The parse is a pure
  function of the text, so it is cached.
- ``Context.render_to_pipe`` names each request's task with ``repr()`` of the request,
  which formats both of its addresses; :class:`ServerContext` names it cheaply.
"""

from __future__ import annotations

import functools
import ipaddress

import aiocoap
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
