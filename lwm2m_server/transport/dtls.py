"""CoAPS: DTLS 1.2 with pre-shared keys, as an aiocoap message interface. Part of the
CoAP adapter.

The DTLS protocol itself is ours and has no I/O (:mod:`.dtls_records`,
:mod:`.dtls_handshake`): TLS_PSK_WITH_AES_128_CCM_8, the cipher suite LwM2M mandates
for PSK, with extended_master_secret and Connection IDs when the client offers them.
This module is the socket around it. A ClientHello without a valid cookie is answered
statelessly, so spoofed handshakes cost no state; a bounded table of **peers still
handshaking** follows (the oldest dropped when full, each dropped when it stalls), then
a bounded table of **authenticated sessions**, each an aiocoap remote that requests
can be sent to. A session knows the PSK identity the peer proved, which the server
checks against the endpoint's credentials.

Sessions end on a fatal alert or close_notify, when idle past ``idle_timeout``, when
the table is full and a new peer needs room (least recently used first), and at
shutdown. A request to an ended session fails at once; the device handshakes again on
its next message. A new handshake from the address of a session replaces it once it
completes (many clients handshake again after some idle time, from the same port):
requests for that address go over the newest session at once, which
:meth:`DtlsServerEndpoint.session_at` names. A session with a Connection ID is found
by its CID wherever its records come from, and follows the peer to a new address
once a record from there authenticates and is the newest yet (RFC 9146 §6).

With a ``session_file``, a graceful shutdown writes the sessions there (mode 0600)
instead of ending them with close_notify, and the next start reads the file **and
deletes it before serving**: a session resumes once at most, so after a crash no key
is ever used again with a write sequence number it already used (AES-CCM would then
reuse a nonce). Sessions of a credential removed or re-keyed meanwhile are not resumed.

A handshake that fails (an unknown identity, a wrong key, an alert, a stall) is
logged as ``dtls_handshake_failed`` with the peer, the identity it offered (never a
key) and the reason, at most once per host per ten seconds (the rest are counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import secrets
import socket
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from aiocoap import error, interfaces
from aiocoap.numbers import constants
from aiocoap.transports.generic_udp import GenericMessageInterface
from aiocoap.util import hostportjoin

from . import dtls_session_file
from .dtls_handshake import (
    CLIENT_HELLO, FINISHED, CookieJar, HandshakeFailure, ServerHandshake, client_hello_in, parse_fragments,
    screen_client_hello,
)
from .dtls_records import (
    ALERT, APPLICATION_DATA, CID_LENGTH, CLOSE_NOTIFY, FATAL, HANDSHAKE, NO_RENEGOTIATION, TLS12_CID, WARNING,
    Connection, Record, alert, parse_records,
)
from .ratelimit import LogThrottle

PskLookup = Callable[[bytes], "bytes | None"]
"""PSK identity → key, or None when the identity is unknown."""

SockAddr = tuple[str, int]
"""An IPv6 (IPv4-mapped for IPv4) address and port."""


class DtlsUnavailable(RuntimeError):
    """The DTLSSocket package (tinydtls) is not installed: the simulator's CoAPS client
    needs it (the server does not)."""


def tinydtls():
    """The DTLSSocket ``dtls`` module, or :class:`DtlsUnavailable` saying how to get it."""
    try:
        from DTLSSocket import dtls
    except ImportError as cause:
        raise DtlsUnavailable(
            "CoAPS clients need the DTLSSocket package (pip install DTLSSocket; its build runs "
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
    """``host`` as the dual-stack socket names it (an IPv6 address, IPv4 mapped)."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv4Address):
        address = ipaddress.IPv6Address(f"::ffff:{address}")
    return socket.inet_ntop(socket.AF_INET6, address.packed)


def _peer_bytes(sockaddr: SockAddr) -> bytes:
    """The address and port a cookie is bound to."""
    return socket.inet_pton(socket.AF_INET6, sockaddr[0]) + sockaddr[1].to_bytes(2, "big")


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


class DtlsSession(interfaces.EndpointAddress):
    """A peer that completed a handshake: an aiocoap remote requests can be sent to."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    maximum_block_size_exp = constants.MAX_REGULAR_BLOCK_SIZE_EXP
    """Settable per session (the adapter lowers it after a 4.13)."""

    def __init__(self, endpoint: DtlsServerEndpoint, sockaddr: SockAddr, connection: Connection, now: float) -> None:
        self._endpoint = endpoint
        self.sockaddr = sockaddr
        self.connection = connection
        self.identity = connection.identity
        """The PSK identity the peer proved it holds the key of."""
        self.last_seen = now
        self.closed = False
        self.handshake: ServerHandshake | None = None
        """Kept until the peer's first application data: its Finished may come again."""
        self._local: str | None = None

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
        self._endpoint._seal_and_send(self, APPLICATION_DATA, data)

    def __repr__(self) -> str:
        return f"<DtlsSession {self.hostinfo} identity={self.identity!r}{' closed' if self.closed else ''}>"


class DtlsServerEndpoint(asyncio.DatagramProtocol):
    """The CoAPS socket: the cookie exchange, the tables of peers still handshaking and of
    live sessions (both bounded), and the session file."""

    def __init__(self, interface: DtlsServerInterface, lookup: PskLookup, *, max_sessions: int,
                 idle_timeout: float, log, max_handshakes: int = 1000, handshake_timeout: float = 60.0,
                 session_file: Path | None = None) -> None:
        self.interface = interface
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self.session_file = session_file
        self.log = log
        self._lookup = lookup
        self.sessions: OrderedDict[SockAddr, DtlsSession] = OrderedDict()
        self.handshakes: OrderedDict[SockAddr, ServerHandshake] = OrderedDict()
        self._by_cid: dict[bytes, DtlsSession] = {}
        self._handshake_cids: dict[bytes, SockAddr] = {}
        self._timers: dict[SockAddr, asyncio.TimerHandle] = {}
        self.cookies = CookieJar()
        self.failures = LogThrottle()
        """Throttles ``dtls_handshake_failed`` lines."""
        self._transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task | None = None
        self._saved = False  # the sessions went to the session file: nothing may be sealed any more
        self.bound_host = "::"
        self.bound_port = 0

    # -- asyncio ----------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        self.bound_host, self.bound_port, *_ = transport.get_extra_info("socket").getsockname()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="dtls-session-sweeper")

    def datagram_received(self, data: bytes, address) -> None:
        sockaddr = (as_v6(address[0]), address[1])
        now = time.monotonic()
        try:
            for record in parse_records(data):
                self._record(sockaddr, record, now)
        except Exception:  # a malformed record must not stop the socket
            self.log.exception("dtls_record_failed", peer=hostportjoin(*sockaddr))

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

    def _send(self, sockaddr: SockAddr, datagram: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(datagram, (sockaddr[0], sockaddr[1], 0, 0))

    # -- records ----------------------------------------------------------------------------

    def _record(self, sockaddr: SockAddr, record: Record, now: float) -> None:
        if record.content_type == TLS12_CID:  # found by CID, from wherever it comes
            session = self._by_cid.get(record.cid)
            if session is not None:
                self._session_record(session, record, sockaddr, now)
            elif self._handshake_cids.get(record.cid) == sockaddr:
                handshake = self.handshakes[sockaddr]
                if not self._handshake_record(sockaddr, handshake, record, now):
                    self._undecryptable(sockaddr, handshake)
            return
        handshake = self.handshakes.get(sockaddr)
        hello = client_hello_in(record)
        if hello is not None and (handshake is None or not handshake.same_hello(hello)):
            session = self.sessions.get(sockaddr)
            if session is None or session.handshake is None or not session.handshake.same_hello(hello):
                self._client_hello(sockaddr, hello, now)  # (else a late copy of the hello that made the session)
            return
        if handshake is not None:
            if record.content_type == ALERT and record.epoch == 0:
                self._handshake_alert(sockaddr, handshake, record.fragment)
                return
            if self._handshake_record(sockaddr, handshake, record, now):
                return
        session = self.sessions.get(sockaddr)
        if session is not None and record.epoch > 0 and self._session_record(session, record, sockaddr, now):
            return
        if handshake is not None and record.epoch == 1 and record.content_type == HANDSHAKE:
            self._undecryptable(sockaddr, handshake)  # neither the new keys nor the old session's open it

    def _undecryptable(self, sockaddr: SockAddr, handshake: ServerHandshake) -> None:
        try:
            handshake.undecryptable_finished()
        except HandshakeFailure as failure:
            self._handshake_failed(sockaddr, handshake, failure)

    def _client_hello(self, sockaddr: SockAddr, hello, now: float) -> None:
        verify_request = screen_client_hello(hello, _peer_bytes(sockaddr), self.cookies, now)
        if verify_request is not None:  # no state yet: the peer must prove its address first
            self._send(sockaddr, verify_request)
            return
        if sockaddr in self.handshakes:  # the client started over
            self._drop_handshake(sockaddr)
        handshake = ServerHandshake(hello, self._psk, now, sockaddr, new_cid=self._new_cid)
        try:
            flight = handshake.start()
        except HandshakeFailure as failure:
            self._handshake_failed(sockaddr, handshake, failure)
            return
        self.handshakes[sockaddr] = handshake
        if handshake.local_cid:
            self._handshake_cids[handshake.local_cid] = sockaddr
        while len(self.handshakes) > self.max_handshakes:
            self._abandon(next(iter(self.handshakes)), "too many handshakes at once")
        for datagram in flight:
            self._send(sockaddr, datagram)
        self._schedule_retransmission(sockaddr, handshake)

    def _handshake_record(self, sockaddr: SockAddr, handshake: ServerHandshake, record: Record, now: float) -> bool:
        """Whether ``record`` was the handshake's (False: an epoch-1 record its keys do not open)."""
        try:
            answer = handshake.receive(record, now)
        except HandshakeFailure as failure:
            self._handshake_failed(sockaddr, handshake, failure)
            return True
        if answer is None:
            return False
        for datagram in answer:
            self._send(sockaddr, datagram)
        if handshake.connection is not None:
            self._established(sockaddr, handshake, now)
        return True

    def _handshake_alert(self, sockaddr: SockAddr, handshake: ServerHandshake, body: bytes) -> None:
        if len(body) == 2 and (body[0] == FATAL or body[1] == CLOSE_NOTIFY):
            reason = "close_notify" if body[1] == CLOSE_NOTIFY else f"fatal alert {body[1]}"
            self._handshake_failed(sockaddr, handshake, HandshakeFailure(f"{reason} from the peer", None))

    def _session_record(self, session: DtlsSession, record: Record, source: SockAddr, now: float) -> bool:
        """Whether ``record`` authenticated as the session's (it is then handled)."""
        opened = session.connection.open(record)
        if opened is None:
            return False
        content_type, plaintext, newest = opened
        if source != session.sockaddr and record.content_type == TLS12_CID and newest:
            self._move(session, source)
        session.last_seen = now
        session.connection.last_use = time.time()
        self.sessions.move_to_end(session.sockaddr)
        if content_type == APPLICATION_DATA:
            session.handshake = None
            self.interface._received_datagram(session, plaintext)
        elif content_type == ALERT and len(plaintext) == 2:
            if plaintext[0] == FATAL or plaintext[1] == CLOSE_NOTIFY:
                reason = "close_notify" if plaintext[1] == CLOSE_NOTIFY else f"fatal alert {plaintext[1]}"
                self._end(session.sockaddr, reason, notify=False)
        elif content_type == HANDSHAKE:
            kinds = {fragment.msg_type for fragment in parse_fragments(plaintext)}
            if FINISHED in kinds and session.handshake is not None:  # our Finished was lost
                for datagram in session.handshake.resend_final_flight(now):
                    self._send(session.sockaddr, datagram)
            if CLIENT_HELLO in kinds:  # renegotiation: refused (a new epoch-0 handshake is welcome)
                self._seal_and_send(session, ALERT, alert(WARNING, NO_RENEGOTIATION))
        return True

    def _seal_and_send(self, session: DtlsSession, content_type: int, data: bytes) -> None:
        if self._saved:
            return  # its write sequence belongs to the session file now
        try:
            record = session.connection.seal(content_type, data)
        except ConnectionError as cause:
            self._end(session.sockaddr, str(cause), notify=False)
            return
        self._send(session.sockaddr, record)

    def _psk(self, identity: bytes) -> bytes | None:
        try:
            return self._lookup(identity)
        except Exception:
            self.log.exception("dtls_psk_lookup_failed")
            raise

    def _new_cid(self) -> bytes:
        while True:
            cid = secrets.token_bytes(CID_LENGTH)
            if cid not in self._by_cid and cid not in self._handshake_cids:
                return cid

    # -- handshakes -------------------------------------------------------------------------

    def _schedule_retransmission(self, sockaddr: SockAddr, handshake: ServerHandshake) -> None:
        due = handshake.due()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._timers[sockaddr] = loop.call_later(max(0.0, due - time.monotonic()) + 0.001,
                                                 self._retransmit, sockaddr, handshake)

    def _retransmit(self, sockaddr: SockAddr, handshake: ServerHandshake) -> None:
        if self.handshakes.get(sockaddr) is not handshake:
            return
        for datagram in handshake.retransmit(time.monotonic()):
            self._send(sockaddr, datagram)
        self._schedule_retransmission(sockaddr, handshake)

    def _drop_handshake(self, sockaddr: SockAddr) -> ServerHandshake | None:
        handshake = self.handshakes.pop(sockaddr, None)
        timer = self._timers.pop(sockaddr, None)
        if timer is not None:
            timer.cancel()
        if handshake is not None and handshake.local_cid:
            self._handshake_cids.pop(handshake.local_cid, None)
        return handshake

    def _handshake_failed(self, sockaddr: SockAddr, handshake: ServerHandshake, failure: HandshakeFailure) -> None:
        for datagram in handshake.failure_datagrams:
            self._send(sockaddr, datagram)
        if self.handshakes.get(sockaddr) is handshake:
            self._drop_handshake(sockaddr)
        self._report_failure(sockaddr, failure.reason, handshake.offered_identity)
        # the peer gave up its session at this address to handshake again
        self._end(sockaddr, "new handshake failed", notify=False)

    def _abandon(self, sockaddr: SockAddr, reason: str) -> None:
        """Drop a handshake that did not finish."""
        handshake = self._drop_handshake(sockaddr)
        if handshake is not None:
            self._report_failure(sockaddr, reason, handshake.offered_identity)

    def _report_failure(self, sockaddr: SockAddr, reason: str, offered: bytes | None) -> None:
        """One ``dtls_handshake_failed`` line, unless its host had one in the last seconds."""
        peer = hostportjoin(_display_host(sockaddr[0]), sockaddr[1])
        held_back = self.failures.check(peer, time.monotonic())
        if held_back is not None:  # the identity offered, never a key
            self.log.warning("dtls_handshake_failed", peer=peer, reason=reason,
                             identity=_shown(offered), suppressed=held_back)

    # -- sessions ---------------------------------------------------------------------------

    def _established(self, sockaddr: SockAddr, handshake: ServerHandshake, now: float) -> None:
        self._drop_handshake(sockaddr)
        connection = handshake.connection
        connection.last_use = time.time()
        previous = self.sessions.get(sockaddr)
        changed = previous is not None and previous.identity != connection.identity
        self._end(sockaddr, "new handshake with another identity" if changed else "new handshake", notify=False)
        session = self._add(sockaddr, connection, now)
        session.handshake = handshake
        self.log.info("dtls_session_started", peer=session.hostinfo, identity=_shown(session.identity),
                      replaced=previous is not None, sessions=len(self.sessions))

    def _add(self, sockaddr: SockAddr, connection: Connection, last_seen: float) -> DtlsSession:
        while len(self.sessions) >= self.max_sessions:
            self._end(next(iter(self.sessions)), "session table full")
        session = DtlsSession(self, sockaddr, connection, last_seen)
        self.sessions[sockaddr] = session
        if connection.local_cid:
            self._by_cid[connection.local_cid] = session
        return session

    def _move(self, session: DtlsSession, sockaddr: SockAddr) -> None:
        """The peer of a CID session now sends from ``sockaddr`` (RFC 9146 §6)."""
        if sockaddr in self.sessions:
            self._end(sockaddr, "its address now belongs to a Connection ID session", notify=False)
        old = session.hostinfo
        del self.sessions[session.sockaddr]
        session.sockaddr = session.connection.peer = sockaddr
        session._local = None
        self.sessions[sockaddr] = session
        self.log.info("dtls_session_moved", peer=session.hostinfo, previous=old, identity=_shown(session.identity))

    def session_at(self, host: str, port: int) -> DtlsSession | None:
        """The live session of the peer at ``host``:``port`` (its newest handshake's), or None."""
        try:
            session = self.sessions.get((as_v6(host), port))
        except ValueError:  # not an IP address: no peer of ours
            return None
        return None if session is None or session.closed else session

    def _end(self, sockaddr: SockAddr, reason: str, *, notify: bool = True) -> None:
        """Forget the session of ``sockaddr``: requests waiting on it fail now."""
        session = self.sessions.pop(sockaddr, None)
        if session is None:
            return
        if notify:  # close_notify, so the peer knows to handshake
            self._seal_and_send(session, ALERT, alert(WARNING, CLOSE_NOTIFY))
        session.closed = True
        if self._by_cid.get(session.connection.local_cid) is session:
            del self._by_cid[session.connection.local_cid]
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

    # -- the session file -------------------------------------------------------------------

    def load_sessions(self) -> int:
        """Resume the sessions the last graceful shutdown saved; the file is deleted first
        (nothing is resumed if it cannot be). How many were resumed."""
        path = self.session_file
        if path is None:
            return 0
        saved = dtls_session_file.take_saved(path, self.log)
        if saved is None:
            return 0
        wall, now = time.time(), time.monotonic()
        connections, skipped = [], {"malformed": 0, "idle": 0, "credential removed or changed": 0}
        for item in saved:
            try:
                connection = Connection.from_export(item)
                sockaddr = (as_v6(connection.peer[0]), connection.peer[1])
            except (ValueError, KeyError, TypeError):
                skipped["malformed"] += 1
                continue
            if wall - connection.last_use > self.idle_timeout:
                skipped["idle"] += 1
                continue
            try:
                key = self._lookup(connection.identity)
            except Exception:
                key = None
            if not key or not connection.matches_psk(key):
                skipped["credential removed or changed"] += 1
                continue
            connection.peer = sockaddr
            connections.append(connection)
        connections.sort(key=lambda c: c.last_use)  # least recently used first, as the table keeps them
        for connection in connections[-self.max_sessions:]:
            if connection.local_cid in self._by_cid:
                continue
            self._end(connection.peer, "resumed again", notify=False)
            self._add(connection.peer, connection, now - max(0.0, wall - connection.last_use))
        self.log.info("dtls_sessions_resumed", path=str(path), sessions=len(self.sessions),
                      **{key.replace(" ", "_"): count for key, count in skipped.items() if count})
        return len(self.sessions)

    def save_sessions(self) -> bool:
        """Write every live session to the session file (atomically, mode 0600); from then
        on nothing is sealed here. Whether they were written."""
        path = self.session_file
        if path is None or not self.sessions:
            return False
        exports = [session.connection.export() for session in self.sessions.values()]
        if not dtls_session_file.write(path, exports, self.log):
            return False
        self._saved = True
        self.log.info("dtls_sessions_saved", path=str(path), sessions=len(exports))
        return True

    # -- GenericMessageInterface's pool -----------------------------------------------------

    async def connect(self, sockaddr):
        raise error.NetworkError(f"no DTLS session with {hostportjoin(*sockaddr[:2])}: the device must connect first")

    async def shutdown(self) -> None:
        saved = self.save_sessions()  # saved sessions go on after the restart: no close_notify
        for sockaddr in list(self.sessions):
            self._end(sockaddr, "server shutting down", notify=not saved)
        for sockaddr in list(self.handshakes):
            self._drop_handshake(sockaddr)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._transport is not None:
            self._transport.close()


class DtlsServerInterface(GenericMessageInterface):
    """aiocoap message interface serving CoAPS and sending requests over its sessions."""

    @classmethod
    async def create(cls, mman: interfaces.MessageManager, *, host: str, port: int, lookup: PskLookup,
                     max_sessions: int, idle_timeout: float, log, loop,
                     receive_buffer_bytes: int = 4 * 1024 * 1024,
                     session_file: Path | None = None, reuse_port: bool = False) -> DtlsServerInterface:
        self = cls(mman, log, loop)
        endpoint = DtlsServerEndpoint(self, lookup, max_sessions=max_sessions, idle_timeout=idle_timeout, log=log,
                                      session_file=session_file)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if reuse_port:  # the kernel keeps each peer's 4-tuple, and so its session, on one worker
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            set_receive_buffer(sock, receive_buffer_bytes)
            # "0.0.0.0" means every IPv4 address: ::ffff:0.0.0.0 on a dual-stack socket
            sock.bind((as_v6(host) if host != "::" else "::", port))
            endpoint.load_sessions()  # and the file is gone before the first datagram is read
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
