"""The device's CoAPS client: DTLS 1.2 PSK sessions it opens to its servers, as an
aiocoap message interface.

As a real LwM2M client does, the device opens the session (one UDP socket per
server and identity) and then both sends its requests over it and answers the
server's requests that come back over it. Credentials come from the context's
``client_credentials`` (``{"coaps://host:port/*": {"dtls": {"psk": ..., "client-identity": ...}}}``).
aiocoap's own ``tinydtls`` client drops a session as soon as no message refers to
it, which would cut the server off; here sessions live until closed. The DTLS is
tinydtls' (DTLSSocket): a stack independent of the server's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
from typing import Callable

from aiocoap import error, interfaces
from aiocoap.credentials import CredentialsMissingError
from aiocoap.numbers import COAPS_PORT, constants
from aiocoap.transports.generic_udp import GenericMessageInterface
from aiocoap.util import hostportjoin, hostportsplit

from lwm2m_server.security.psk import MAX_IDENTITY_BYTES, MAX_KEY_BYTES  # tinydtls' buffers
from lwm2m_server.transport.dtls import SockAddr, as_v6, tinydtls

_EVENT_CONNECTED = 0x01DE
_TICKS_PER_SECOND = 1000
_LEVEL_WARNING, _LEVEL_FATAL = 1, 2
_CLOSE_NOTIFY = 0


def ends_session(level: int, code: int) -> bool:
    """A fatal alert, or close_notify (which tinydtls sends and reports as a warning)."""
    return level == _LEVEL_FATAL or (level == _LEVEL_WARNING and code == _CLOSE_NOTIFY)


_clock_offset = int(time.time())
"""tinydtls counts ticks from time(NULL) at the newest context's creation (dtls_init
resets its one global clock), in whole seconds."""


class PskView:
    """The dict-like key store DTLSSocket asks (``identity in store.keys()``, then
    ``store[identity]``); it reports each identity it has a key for to ``seen``, and
    each one it has none for to ``refused``."""

    def __init__(self, lookup: Callable[[bytes], "bytes | None"], seen: Callable[[bytes], None], log,
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


class DtlsConnection(interfaces.EndpointAddress, asyncio.DatagramProtocol):
    """One DTLS session from this device to a server."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False
    maximum_block_size_exp = constants.MAX_REGULAR_BLOCK_SIZE_EXP

    def __init__(self, interface: DtlsClientInterface, host: str, port: int, identity: bytes, key: bytes) -> None:
        self._interface = interface
        self._host, self._port = host, port
        self.identity = identity
        self._hostinfo = hostportjoin(host, None if port == COAPS_PORT else port)
        self._sockaddr: SockAddr | None = None
        self._context = TinyDtlsContext(
            read=self._read, write=self._write, event=self._event,
            psk=PskView(lambda wanted: key if wanted == identity else None, lambda _: None, interface._log),
            client_identity=identity,
        )
        self._connection = None
        self._transport: asyncio.DatagramTransport | None = None
        self._queue: list[bytes] | None = []
        self.closed = False
        self.connected = asyncio.get_running_loop().create_future()
        self._start = asyncio.create_task(self._open(), name=f"dtls-connect-{self.hostinfo}")

    hostinfo = property(lambda self: self._hostinfo)
    uri_base = property(lambda self: "coaps://" + self.hostinfo)
    blockwise_key = property(lambda self: (self._host, self._port, self.identity))

    @property
    def hostinfo_local(self) -> str:
        host, port, *_ = self._transport.get_extra_info("sockname")
        return hostportjoin(host, port)

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
            family, _, _, _, address = infos[0]
            self._sockaddr = (as_v6(address[0]), address[1])
            await loop.create_datagram_endpoint(lambda: self, remote_addr=address[:2], family=family)
            self._connection = self._context.connect(self._sockaddr)
            if self._connection is None:
                raise error.NetworkError("tinydtls refused to start a handshake")
        except Exception as cause:
            self._fail(cause if isinstance(cause, error.Error) else error.NetworkError(str(cause)))

    # -- asyncio ----------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        if self._sockaddr is not None and not self.closed:
            try:
                self._context.handle(self._sockaddr, data)
            except Exception:
                self._interface._log.exception("dtls_record_failed")

    def error_received(self, exc) -> None:
        self._fail(error.NetworkError(str(exc)))

    def connection_lost(self, exc) -> None:
        pass

    # -- tinydtls callbacks -----------------------------------------------------------------

    def _read(self, sender, data: bytes) -> int:
        if not self._interface.drop_plaintext(data):
            self._interface._received_datagram(self, data)
        return len(data)

    def _write(self, recipient, data: bytes) -> int:
        if self._transport is None or self._transport.is_closing():
            return 0
        self._transport.sendto(data)
        return len(data)

    def _event(self, level: int, code: int) -> int:
        if level == 0 and code == _EVENT_CONNECTED:
            queued, self._queue = self._queue or [], None
            if not self.connected.done():
                self.connected.set_result(True)
            for message in queued:
                self._context.write(self._connection, message)
        elif ends_session(level, code):
            asyncio.get_running_loop().call_soon(
                self._fail, error.NetworkError(f"DTLS alert {code} from {self.hostinfo}"))
        return 0

    # -- sending ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed:
            self._interface._received_exception(self, error.NetworkError("DTLS session closed"))
        elif self._queue is not None:
            self._queue.append(data)
        else:
            self._context.write(self._connection, data)

    def _fail(self, cause: Exception) -> None:
        if self.closed:
            return
        self._interface._received_exception(self, cause)
        if not self.connected.done():
            self.connected.set_exception(cause)
            self.connected.exception()  # retrieved: nobody need wait for it
        self.close(notify=False)

    def close(self, *, notify: bool = True) -> None:
        """End the session (with close_notify unless ``notify`` is False) and the socket."""
        if self.closed:
            return
        self.closed = True
        self._interface._forget(self)
        self._start.cancel()
        if self._connection is not None:
            if notify:
                self._context.close(self._connection)
            self._context.reset(self._connection)
            self._connection = None
        self._context.stop()
        if self._transport is not None:
            self._transport.close()

    def __repr__(self) -> str:
        return f"<DtlsConnection to {self.hostinfo} identity={self.identity!r}>"


class DtlsClientInterface(GenericMessageInterface):
    """aiocoap message interface for ``coaps://`` requests of a device."""

    def __init__(self, mman: interfaces.MessageManager, log, loop) -> None:
        super().__init__(mman, log, loop)
        self._connections: dict[tuple[str, int, bytes], DtlsConnection] = {}
        self.drop_plaintext: Callable[[bytes], bool] = lambda data: False
        """Says which decrypted CoAP messages never arrive (a sleeping device's radio)."""

    @classmethod
    async def create(cls, mman: interfaces.MessageManager, *, log, loop) -> DtlsClientInterface:
        return cls(mman, log, loop)

    async def recognize_remote(self, remote) -> bool:
        return isinstance(remote, DtlsConnection) and not remote.closed and remote._interface is self

    async def determine_remote(self, request):
        if request.requested_scheme != "coaps":
            return None
        if self._mman is None:
            raise error.LibraryShutdown
        if request.unresolved_remote is not None:
            host, port = hostportsplit(request.unresolved_remote)
        else:
            host, port = request.opt.uri_host, request.opt.uri_port
        port = port or COAPS_PORT
        try:
            identity, key = self._mman.client_credentials.credentials_from_request(request).as_dtls_psk()
        except (KeyError, AttributeError):
            raise CredentialsMissingError(f"no DTLS PSK credentials for coaps://{hostportjoin(host, port)}") from None
        return self.connection(host, port, identity, key)

    def connection(self, host: str, port: int, identity: bytes, key: bytes) -> DtlsConnection:
        """The open session to ``host:port`` as ``identity``, opened if there is none."""
        wanted = (host, port, identity)
        connection = self._connections.get(wanted)
        if connection is None or connection.closed:
            connection = self._connections[wanted] = DtlsConnection(self, host, port, identity, key)
        return connection

    def _forget(self, connection: DtlsConnection) -> None:
        for wanted, known in list(self._connections.items()):
            if known is connection:
                del self._connections[wanted]

    def close_all(self) -> None:
        """End every session (a reboot, or a device switching servers)."""
        for connection in list(self._connections.values()):
            connection.close()

    async def connect(self, sockaddr):  # GenericMessageInterface's pool protocol
        raise error.NetworkError("coaps needs credentials; use a coaps:// URI")

    async def shutdown(self) -> None:
        self.close_all()
        self._mman = None
