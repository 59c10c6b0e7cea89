"""CoAPS: DTLS 1.2 with pre-shared keys, on tinydtls (the DTLSSocket package), as an
aiocoap message interface. Part of the CoAP adapter.

aiocoap's own ``tinydtls_server`` cannot send requests to a DTLS peer, never evicts
a session, binds only to a single unicast address and shifts the port it is given
(DESIGN.md). This transport keeps **one tinydtls context for all peers** (so its
stateless cookie exchange guards against spoofed handshakes before any state is
kept) and a bounded table of **authenticated sessions**, each an aiocoap remote
that requests can be sent to. A session knows the PSK identity the peer proved,
which the server checks against the endpoint's credentials.

Sessions end on a fatal alert or close_notify, when idle past ``idle_timeout``,
when the table is full and a new peer needs room (least recently used first), when
tinydtls has dropped the peer's state, and at shutdown. A request to an ended
session fails at once; the device handshakes again on its next message (tinydtls
drops the old state when a new handshake from the same address completes its
cookie exchange). A new handshake from the address of a session replaces it (many
clients handshake again after some idle time, from the same port): requests for
that address go over the newest session at once, which :meth:`DtlsServerEndpoint.session_at`
names. Peers still handshaking are bounded and dropped when they stall.

A handshake that fails (an unknown identity, a wrong key, an alert, a stall) is
logged as ``dtls_handshake_failed`` with the peer, the identity it offered (never a
key) and the reason, at most once per host per ten seconds (the rest are counted).

tinydtls speaks TLS_PSK_WITH_AES_128_CCM_8, the cipher suite LwM2M mandates for
PSK; keys are at most 16 bytes and identities at most 32.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import ipaddress
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from aiocoap import error, interfaces
from aiocoap.numbers import constants
from aiocoap.transports.generic_udp import GenericMessageInterface
from aiocoap.util import hostportjoin

from ..security.psk import MAX_IDENTITY_BYTES, MAX_KEY_BYTES  # tinydtls' buffers
from .ratelimit import LogThrottle

_TICKS_PER_SECOND = 1000
_EVENT_CONNECT = 0x01DC
_EVENT_CONNECTED = 0x01DE
_LEVEL_WARNING, _LEVEL_FATAL = 1, 2
_CLOSE_NOTIFY = 0
_HANDSHAKE = 0x16  # DTLS record content type
_RECORD_HEADER = 13


def ends_session(level: int, code: int) -> bool:
    """A fatal alert, or close_notify (which tinydtls sends and reports as a warning)."""
    return level == _LEVEL_FATAL or (level == _LEVEL_WARNING and code == _CLOSE_NOTIFY)


_clock_offset = int(time.time())
"""tinydtls counts ticks from time(NULL) at the newest context's creation (dtls_init
resets its one global clock), in whole seconds."""

PskLookup = Callable[[bytes], "bytes | None"]
"""PSK identity → key, or None when the identity is unknown."""

SockAddr = tuple[str, int]
"""An IPv6 (IPv4-mapped for IPv4) address and port, as tinydtls names peers."""


class DtlsUnavailable(RuntimeError):
    """The DTLSSocket package (tinydtls) is not installed."""


def tinydtls():
    """The DTLSSocket ``dtls`` module, or :class:`DtlsUnavailable` saying how to get it."""
    try:
        from DTLSSocket import dtls
    except ImportError as cause:
        raise DtlsUnavailable(
            "CoAPS needs the DTLSSocket package (pip install DTLSSocket; its build runs "
            f"autoreconf: apt-get install autoconf automake libtool): {cause}"
        ) from None
    return dtls


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Raise SO_RCVBUF so bursts (fan-out answers, many handshakes) are not dropped by
    the kernel; as root SO_RCVBUFFORCE passes net.core.rmem_max (Python 3.11 lacks the
    constant: 33 on Linux)."""
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        if option is None:
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return


@functools.lru_cache(maxsize=4096)  # called for every datagram; peers repeat
def as_v6(host: str) -> str:
    """``host`` as tinydtls names it (inet_ntop of an IPv6 address, IPv4 mapped)."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv4Address):
        address = ipaddress.IPv6Address(f"::ffff:{address}")
    return socket.inet_ntop(socket.AF_INET6, address.packed)


def _encrypted_handshake(data: bytes) -> bool:
    """``data`` holds a handshake record of an epoch after 0: the peer's Finished."""
    offset = 0
    while offset + _RECORD_HEADER <= len(data):
        if data[offset] == _HANDSHAKE and data[offset + 3:offset + 5] != b"\0\0":
            return True
        offset += _RECORD_HEADER + int.from_bytes(data[offset + 11:offset + 13], "big")
    return False


def _shown(identity: bytes | None) -> str | None:
    """A PSK identity as a log shows it: text, or its repr when not printable."""
    if identity is None:
        return None
    text = identity[:64].decode("utf-8", "backslashreplace")
    return text if text.isprintable() else repr(identity[:64])


def _display_host(host: str) -> str:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host


class PskView:
    """The dict-like key store DTLSSocket asks (``identity in store.keys()``, then
    ``store[identity]``); it reports each identity it has a key for to ``seen``, and
    each one it has none for to ``refused``."""

    def __init__(self, lookup: PskLookup, seen: Callable[[bytes], None], log,
                 refused: Callable[[bytes], None] | None = None) -> None:
        self._lookup = lookup
        self._seen = seen
        self._refused = refused
        self._log = log
        self._last: tuple[bytes, bytes | None] | None = None

    def keys(self) -> PskView:
        return self

    def __contains__(self, identity: object) -> bool:
        return self._key(identity) is not None

    def __getitem__(self, identity: bytes) -> bytes:
        key = self._key(identity)
        if key is None:
            raise KeyError(identity)
        return key

    def _key(self, identity: object) -> bytes | None:
        # Exceptions must not cross into tinydtls: an unusable answer is "unknown".
        if not isinstance(identity, bytes) or not 0 < len(identity) <= MAX_IDENTITY_BYTES:
            if isinstance(identity, bytes) and self._refused is not None:
                self._refused(identity)
            return None
        if self._last is not None and self._last[0] == identity:
            return self._last[1]
        try:
            key = self._lookup(identity)
        except Exception:
            self._log.exception("dtls_psk_lookup_failed")
            key = None
        if key is not None and not 0 < len(key) <= MAX_KEY_BYTES:
            self._log.error("dtls_psk_unusable", reason=f"key longer than {MAX_KEY_BYTES} bytes")
            key = None
        self._last = (identity, key)
        if key is not None:
            self._seen(identity)
        elif self._refused is not None:
            self._refused(identity)
        return key

    def forget(self) -> None:
        self._last = None


class TinyDtlsContext:
    """One tinydtls context and its retransmission timer."""

    def __init__(self, *, read, write, event, psk: PskView, client_identity: bytes = b"-") -> None:
        global _clock_offset
        dtls = tinydtls()
        self.dtls = dtls
        _clock_offset = int(time.time())
        self._context = dtls.DTLS(read=read, write=write, event=event, pskId=client_identity, pskStore=psk)
        self._psk = psk
        self._timer: asyncio.TimerHandle | None = None

    def handle(self, sockaddr: SockAddr, data: bytes) -> None:
        self._psk.forget()
        self._context.handleMessageAddr(sockaddr[0], sockaddr[1], data)
        self.schedule()

    def session(self, sockaddr: SockAddr):
        return self.dtls.Session(sockaddr[0], sockaddr[1])

    def write(self, session, data: bytes) -> int:
        written = self._context.write(session, data)
        self.schedule()
        return written

    def connect(self, sockaddr: SockAddr):
        with contextlib.redirect_stdout(io.StringIO()):  # DTLSSocket prints its errors
            connection = self._context.connect(sockaddr[0], sockaddr[1])
        self.schedule()
        return connection

    def close(self, session) -> None:
        """Send close_notify, if tinydtls still has the peer."""
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self._context.close(session)
        except Exception:  # no such peer (any more)
            pass

    def reset(self, session) -> None:
        self._context.resetPeer(session)

    def schedule(self) -> None:
        """Run tinydtls' handshake retransmissions when they are due."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._context.checkRetransmit()
        if due:
            delay = max(0.0, _clock_offset + due / _TICKS_PER_SECOND - time.time())
            self._timer = asyncio.get_running_loop().call_later(delay + 0.001, self.schedule)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class DtlsSession(interfaces.EndpointAddress):
    """A peer that completed a handshake: an aiocoap remote requests can be sent to."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    maximum_block_size_exp = constants.MAX_REGULAR_BLOCK_SIZE_EXP
    """Settable per session (the adapter lowers it after a 4.13)."""

    def __init__(self, endpoint: DtlsServerEndpoint, sockaddr: SockAddr, identity: bytes, now: float) -> None:
        self._endpoint = endpoint
        self.sockaddr = sockaddr
        self.identity = identity
        """The PSK identity the peer proved it holds the key of."""
        self.last_seen = now
        self.closed = False
        self._local: str | None = None
        self._session = endpoint.context.session(sockaddr)

    @property
    def endpoint(self) -> DtlsServerEndpoint:
        return self._endpoint

    @property
    def hostinfo(self) -> str:
        return hostportjoin(_display_host(self.sockaddr[0]), self.sockaddr[1])

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def hostinfo_local(self) -> str:
        """This server as the peer reaches it (for URIs it is told to fetch)."""
        if self._local is None:
            self._local = hostportjoin(_display_host(self._endpoint.local_host_for(self.sockaddr)),
                                       self._endpoint.bound_port)
        return self._local

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    @property
    def blockwise_key(self):
        return (self.sockaddr, self.identity)

    @property
    def authenticated_claims(self) -> list[bytes]:
        return [self.identity]

    def send(self, data: bytes) -> None:
        if self.closed:
            if self._endpoint.interface._mman is not None:
                self._endpoint.interface._received_exception(
                    self, error.NetworkError("the DTLS session has ended; the device must handshake again"))
            return
        self._endpoint._writing = self.sockaddr
        try:
            self._endpoint.context.write(self._session, data)
        finally:
            self._endpoint._writing = None

    def __repr__(self) -> str:
        return f"<DtlsSession {self.hostinfo} identity={self.identity!r}{' closed' if self.closed else ''}>"


@dataclass(slots=True)
class _Handshake:
    started: float
    identity: bytes | None = None
    """The PSK identity tinydtls asked the key of (before Finished completes it)."""
    offered: bytes | None = None
    """The PSK identity the peer offered, known or not (for the log of a failure)."""
    unverified: int = 0
    """The peer's Finished records that tinydtls dropped unanswered: the key is wrong."""


class DtlsServerEndpoint(asyncio.DatagramProtocol):
    """The CoAPS socket: tinydtls for every peer, and the tables of live sessions and of
    peers still handshaking. Both are bounded: tinydtls keeps a peer from the verified
    ClientHello on, so a host cycling source ports could otherwise grow its memory."""

    def __init__(self, interface: DtlsServerInterface, lookup: PskLookup, *, max_sessions: int,
                 idle_timeout: float, log, max_handshakes: int = 1000, handshake_timeout: float = 60.0) -> None:
        self.interface = interface
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self.log = log
        self.sessions: OrderedDict[SockAddr, DtlsSession] = OrderedDict()
        self.handshakes: OrderedDict[SockAddr, _Handshake] = OrderedDict()
        self._current: SockAddr | None = None
        self._writing: SockAddr | None = None
        self._peer_created = False
        self._wrote = False  # tinydtls wrote to the peer while handling its datagram
        self._alert_sent: int | None = None  # ... a fatal alert (its description)
        self.failures = LogThrottle()
        """Throttles ``dtls_handshake_failed`` lines."""
        self.context = TinyDtlsContext(read=self._read, write=self._write, event=self._event,
                                       psk=PskView(lookup, self._identity_seen, log, refused=self._identity_offered))
        self._transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task | None = None
        self.bound_host = "::"
        self.bound_port = 0

    # -- asyncio ----------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        self.bound_host, self.bound_port, *_ = transport.get_extra_info("socket").getsockname()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="dtls-session-sweeper")

    def datagram_received(self, data: bytes, address) -> None:
        sockaddr = (as_v6(address[0]), address[1])
        self._current = sockaddr
        self._peer_created = self._wrote = False
        self._alert_sent = None
        finished = data[:1] != b"\x17" and _encrypted_handshake(data)  # (0x17: application data)
        try:
            self.context.handle(sockaddr, data)
        except Exception:  # a malformed record must not stop the socket
            self.log.exception("dtls_record_failed", peer=hostportjoin(*sockaddr))
        finally:
            self._current = None
        now = time.monotonic()
        session = self.sessions.get(sockaddr)
        if session is not None:
            session.last_seen = now
            self.sessions.move_to_end(sockaddr)
        elif self._peer_created and sockaddr not in self.handshakes:
            self.handshakes[sockaddr] = _Handshake(now)
            while len(self.handshakes) > self.max_handshakes:
                self._abandon(next(iter(self.handshakes)), "too many handshakes at once")
        if sockaddr in self.handshakes:
            self._check_handshake(sockaddr, finished)

    def error_received(self, exc) -> None:
        self.log.debug("dtls_socket_error", error=str(exc))

    def local_host_for(self, sockaddr: SockAddr) -> str:
        """Our address as seen by ``sockaddr``: the bound one, or for a wildcard bind the
        source address the kernel picks toward the peer (our answers leave from it)."""
        if self.bound_host not in ("::", "::ffff:0.0.0.0"):
            return self.bound_host
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((sockaddr[0], sockaddr[1], 0, 0))  # no packet is sent
                return probe.getsockname()[0]
            except OSError:
                return "::1"

    # -- tinydtls callbacks (never raise into tinydtls) -------------------------------------

    def _identity_seen(self, identity: bytes) -> None:
        if self._current is not None:
            handshake = self.handshakes.setdefault(self._current, _Handshake(time.monotonic()))
            handshake.identity = handshake.offered = identity

    def _identity_offered(self, identity: bytes) -> None:
        if self._current is not None:
            self.handshakes.setdefault(self._current, _Handshake(time.monotonic())).offered = identity

    def _check_handshake(self, sockaddr: SockAddr, finished: bool) -> None:
        """Whether the datagram just handled failed the peer's handshake: tinydtls answered
        it with a fatal alert (an unknown identity), or dropped the peer's Finished
        unanswered (it did not decrypt: a wrong key) for the second time; once may be a
        Finished that overtook its ChangeCipherSpec."""
        handshake = self.handshakes[sockaddr]
        if self._alert_sent is not None:
            unknown = handshake.identity is None and handshake.offered is not None
            reason = "unknown identity" if unknown else f"fatal alert {self._alert_sent} sent"
        elif finished and not self._wrote and handshake.identity is not None:
            handshake.unverified += 1
            if handshake.unverified < 2:
                return
            reason = "bad key: its Finished did not decrypt"
        else:
            return
        self._abandon(sockaddr, reason)
        # a session the peer had before goes too: tinydtls gave its state to the new handshake
        self._end(sockaddr, "new handshake failed", notify=False, reset=False)

    def _abandon(self, sockaddr: SockAddr, reason: str) -> None:
        """Drop a handshake that did not finish, and tinydtls' state of that peer."""
        handshake = self.handshakes.pop(sockaddr)
        self.context.reset(self.context.session(sockaddr))
        if handshake.unverified and reason.startswith("unfinished"):
            reason = "bad key: its Finished did not decrypt"
        self._report_failure(sockaddr, reason, handshake)

    def _report_failure(self, sockaddr: SockAddr, reason: str, handshake: _Handshake) -> None:
        """One ``dtls_handshake_failed`` line, unless its host had one in the last seconds."""
        peer = hostportjoin(_display_host(sockaddr[0]), sockaddr[1])
        held_back = self.failures.check(peer, time.monotonic())
        if held_back is not None:  # the identity offered, never a key
            self.log.warning("dtls_handshake_failed", peer=peer, reason=reason,
                             identity=_shown(handshake.offered), suppressed=held_back)

    def _read(self, sender: SockAddr, data: bytes) -> int:
        session = self.sessions.get((sender[0], sender[1]))
        if session is not None and not session.closed:
            self.interface._received_datagram(session, data)
        return len(data)

    def _write(self, recipient: SockAddr, data: bytes) -> int:
        if data[:1] == b"\x16" and data[13:14] == b"\x02":  # a ServerHello: tinydtls now keeps a peer
            self._peer_created = True  # (a HelloVerifyRequest, type 3, keeps nothing)
        elif data[:1] == b"\x15" and data[3:5] == b"\0\0" and data[13:14] == b"\x02" and len(data) > 14:
            self._alert_sent = data[14]  # a fatal alert, in the clear: epoch 0, during a handshake
        self._wrote = True
        if self._transport is None or self._transport.is_closing():
            return 0
        self._transport.sendto(data, (recipient[0], recipient[1], 0, 0))
        return len(data)

    def _event(self, level: int, code: int) -> int:
        if self._writing is not None and level == 0 and code == _EVENT_CONNECT:
            # A write found no tinydtls peer (it dropped the state): tinydtls now starts a
            # client handshake toward the device. The server never does that; end the session.
            asyncio.get_running_loop().call_soon(
                functools.partial(self._end, self._writing, "peer state lost", notify=False))
            return 0
        sockaddr = self._current
        if sockaddr is None:
            return 0
        try:
            if code == _EVENT_CONNECTED and level == 0:
                self._connected(sockaddr)
            elif ends_session(level, code):
                reason = "close_notify" if code == _CLOSE_NOTIFY else f"fatal alert {code}"
                handshake = self.handshakes.pop(sockaddr, None)
                if handshake is not None and level == _LEVEL_FATAL:
                    self._report_failure(sockaddr, f"{reason} from the peer", handshake)
                self._end(sockaddr, reason, notify=False)
        except Exception:
            self.log.exception("dtls_event_failed", level=level, code=code)
        return 0

    # -- sessions ---------------------------------------------------------------------------

    def _connected(self, sockaddr: SockAddr) -> None:
        handshake = self.handshakes.pop(sockaddr, None)
        identity = handshake.identity if handshake is not None else None
        if identity is None:  # cannot happen with PSK: the key lookup precedes Finished
            self.log.error("dtls_session_without_identity", peer=hostportjoin(*sockaddr))
            return
        previous = self.sessions.get(sockaddr)
        changed = previous is not None and previous.identity != identity
        self._end(sockaddr, "new handshake with another identity" if changed else "new handshake",
                  notify=False, reset=False)
        while len(self.sessions) >= self.max_sessions:
            oldest = next(iter(self.sessions))
            self._end(oldest, "session table full")
        session = DtlsSession(self, sockaddr, identity, time.monotonic())
        self.sessions[sockaddr] = session
        self.log.info("dtls_session_started", peer=session.hostinfo, identity=_shown(identity),
                      replaced=previous is not None, sessions=len(self.sessions))

    def session_at(self, host: str, port: int) -> DtlsSession | None:
        """The live session of the peer at ``host``:``port`` (its newest handshake's), or None."""
        try:
            session = self.sessions.get((as_v6(host), port))
        except ValueError:  # not an IP address: no peer of ours
            return None
        return None if session is None or session.closed else session

    def _end(self, sockaddr: SockAddr, reason: str, *, notify: bool = True, reset: bool = True) -> None:
        """Forget the session of ``sockaddr``: requests waiting on it fail now."""
        session = self.sessions.pop(sockaddr, None)
        if session is None:
            return
        session.closed = True
        if notify:
            self.context.close(session._session)  # close_notify, so the peer knows to handshake
        if reset:
            self.context.reset(session._session)
        if self.interface._mman is not None:  # None: aiocoap is shutting down
            self.interface._received_exception(session, error.NetworkError(f"DTLS session ended: {reason}"))
        self.log.info("dtls_session_ended", peer=session.hostinfo, reason=reason, sessions=len(self.sessions))

    def end_idle(self, now: float) -> int:
        """End sessions silent for longer than ``idle_timeout`` and handshakes unfinished
        after ``handshake_timeout``; how many sessions ended."""
        for sockaddr in [s for s, h in self.handshakes.items() if now - h.started > self.handshake_timeout]:
            self._abandon(sockaddr, f"unfinished after {self.handshake_timeout:g} s")
        idle = [sockaddr for sockaddr, session in self.sessions.items()
                if now - session.last_seen > self.idle_timeout]
        for sockaddr in idle:
            self._end(sockaddr, "idle")
        return len(idle)

    async def _sweep(self) -> None:
        interval = min(60.0, max(0.05, min(self.idle_timeout, self.handshake_timeout) / 4))
        while True:
            await asyncio.sleep(interval)
            self.end_idle(time.monotonic())

    # -- GenericMessageInterface's pool -----------------------------------------------------

    async def connect(self, sockaddr):
        raise error.NetworkError(f"no DTLS session with {hostportjoin(*sockaddr[:2])}: the device must connect first")

    async def shutdown(self) -> None:
        for sockaddr in list(self.sessions):
            self._end(sockaddr, "server shutting down")
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.context.stop()
        if self._transport is not None:
            self._transport.close()


class DtlsServerInterface(GenericMessageInterface):
    """aiocoap message interface serving CoAPS and sending requests over its sessions."""

    @classmethod
    async def create(cls, mman: interfaces.MessageManager, *, host: str, port: int, lookup: PskLookup,
                     max_sessions: int, idle_timeout: float, log, loop,
                     receive_buffer_bytes: int = 4 * 1024 * 1024) -> DtlsServerInterface:
        tinydtls()
        self = cls(mman, log, loop)
        endpoint = DtlsServerEndpoint(self, lookup, max_sessions=max_sessions, idle_timeout=idle_timeout, log=log)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            set_receive_buffer(sock, receive_buffer_bytes)
            # "0.0.0.0" means every IPv4 address: ::ffff:0.0.0.0 on a dual-stack socket
            sock.bind((as_v6(host) if host != "::" else "::", port))
            await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        except OSError as cause:
            sock.close()
            raise OSError(cause.errno, f"CoAPS on [{host}]:{port}: {cause.strerror}") from None
        except BaseException:
            sock.close()
            raise
        self._pool = endpoint
        return self

    @property
    def endpoint(self) -> DtlsServerEndpoint:
        return self._pool

    async def recognize_remote(self, remote) -> bool:
        return isinstance(remote, DtlsSession) and remote.endpoint is self._pool

    async def determine_remote(self, request):
        return None  # the server never opens a DTLS session itself; it answers and reuses one
