"""The aiocoap adapter: the only module that touches aiocoap.

It moves bytes and timers and nothing else. Incoming requests become
:class:`~.messages.IncomingRequest` values handed to one async handler; outgoing
requests are any object with the fields of :class:`~.messages.CoapRequest` (the
server passes its ``DeviceRequest``). Work-arounds for aiocoap limits measured in DESIGN.md live
here: a raised SO_RCVBUF, a cap on requests in flight, one request per device
at a time, and a retry with a smaller block size after 4.13 on Block1.
Observations (:mod:`.observe`): cancelled on the wire, orphan notifications reset,
CON or NON, and those made before a restart adopted by their token.

OSCORE (:mod:`.oscore`) runs on the plain UDP port: protected requests are
verified before the handler sees them (``identity`` ``oscore:<hex>``, address
``oscore://<hex>@host:port``), and requests to such an address are protected with
the endpoint's current context, also after a restart.

An adapter made with ``port=None`` has no plain UDP endpoint, only CoAPS (and so
no OSCORE): the Bootstrap-Server uses one for a CoAPS port of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiocoap
import aiocoap.error
import structlog
from aiocoap import Code, Message, optiontypes, resource
from aiocoap.transports.udp6 import UDP6EndpointAddress
from aiocoap.util import hostportsplit

from .messages import (
    AdapterStats, CoapRequest, CoapResponse, DeviceUnreachable, Download, IncomingRequest, OutgoingResponse,
)
from .observe import ObservationKeeper, WireObservation, response_of as _response
from .aiocoap_tuning import ServerContext
from .dtls import DtlsServerInterface, DtlsSession, PskLookup, set_receive_buffer
from .oscore import (
    OSCOREAddress, OscoreContexts, OscoreRequests, OscoreSite, address_of, authenticated_identity, refuse_reason,
    split_address,
)
from .sockets import naming_port, resend_after_stale_errors
from .fast_client import EncodedRequest, ExchangeFailed, FastClient, MessageIds, share_message_ids
from .fast_requests import FastRequest, FastRequests, Refusal
from .block1 import Block1Limits, Block1Refused, Block1Stats, BoundedBlock1Spool, smaller_block_exp
from .blockwise import (
    BlockAnswer, UnexpectedBlock1, UnexpectedBlock2, block_message, block_of, receive_in_blocks, send_in_blocks,
)
from .ratelimit import RateLimiter

_METHODS = {
    "GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE,
    "FETCH": Code.FETCH, "PATCH": Code.PATCH, "iPATCH": Code.iPATCH,
}
_PLAIN_REFUSED = b"plain CoAP refused: this server accepts only CoAPS (DTLS) or OSCORE"
_DOWNLOAD_COPY_KEPT_S = 1.0
"""How long aiocoap keeps a download block it sent (for a duplicate GET in flight)."""


class _Forgetful(dict):
    """aiocoap's table of recent messages, whose entries may be removed before its timer."""

    def pop(self, key, default=None):
        return super().pop(key, default)


def _code(dotted_code: str) -> Code:
    major, minor = dotted_code.split(".")
    return Code((int(major) << 5) | int(minor))


class _Root(resource.Resource):
    """Every incoming request goes to one handler; the server does the routing.

    Each datagram is screened (:meth:`CoapAdapter._screen`) before its Block1 block
    is put in the bounded spool (:mod:`.block1`). GETs of downloads skip aiocoap's
    Block2 cache, which would hold the whole file in memory, and are answered block
    by block from disk instead.
    """

    def __init__(self, adapter: CoapAdapter, spool: BoundedBlock1Spool) -> None:
        super().__init__()
        self._adapter = adapter
        self._block1 = spool

    async def render_to_pipe(self, pipe) -> None:
        # a refusal is not kept for aiocoap's 247 s duplicate window: a repeat is refused anew
        if (refusal := self._adapter._screen(pipe.request)) is not None:
            self._adapter._release_copy_later(pipe.request, after=0)
            pipe.add_response(refusal, is_last=True)
            return
        try:
            await super().render_to_pipe(pipe)
        except Block1Refused:
            self._adapter._release_copy_later(pipe.request, after=0)
            raise

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return self._adapter._download_for(request) is None

    async def render(self, request: Message) -> Message:
        download = self._adapter._download_for(request)
        if download is not None:
            self._adapter._release_copy_later(request)
            return self._adapter._serve_block(request, download)
        return await self._adapter._incoming(request)


_UNKNOWN = object()


@functools.lru_cache(maxsize=1024)
def _encoded(method: str, uri_path: tuple[str, ...], query: tuple[str, ...], content_format: int | None,
             accept: int | None) -> EncodedRequest:
    """(A fleet's devices are sent the same few requests: each is encoded once.)"""
    return EncodedRequest(int(_METHODS[method]), uri_path, query, content_format, accept)


class CoapAdapter:
    """One UDP endpoint serving devices and sending requests to them."""

    def __init__(
        self,
        handler: Callable[[IncomingRequest], Awaitable[OutgoingResponse]],
        *,
        host: str = "::",
        port: int | None = 5683,
        receive_buffer_bytes: int = 4 * 1024 * 1024,
        max_in_flight: int = 200,
        block_size: int = 1024,
        downloads: Callable[[IncomingRequest], Download | OutgoingResponse | None] = lambda request: None,
        rate_limiter: RateLimiter | None = None,
        secure_port: int | None = None,
        psk_lookup: PskLookup | None = None,
        max_sessions: int = 10000,
        session_idle_timeout: float = 86400.0,
        plain_allowed: bool = True,
        max_request_body: int = 256 * 1024,
        block1_limits: Block1Limits | None = None,
        max_remotes: int = 100_000,
        oscore: OscoreContexts | None = None,
        log=None,
        dtls_session_file: Path | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._handler = handler
        self._reuse_port = reuse_port
        """Bind with SO_REUSEPORT: the workers of one server share its ports (coap.workers)."""
        self._rate_limiter = rate_limiter
        self._bind = (host, port)
        self._receive_buffer_bytes = receive_buffer_bytes
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._message_ids = MessageIds()
        """Message IDs of requests to devices, per peer (aiocoap's one counter comes round under load)."""
        self._per_device: dict[str, list] = {}  # address → [lock, requests using it]
        self._remotes: OrderedDict[str, object] = OrderedDict()  # least recently heard from first
        self._max_remotes = max_remotes
        self._block_limits: dict[str, int] = {}
        self._block_exp = block_size.bit_length() - 5
        self._downloads = downloads
        self._context: aiocoap.Context | None = None
        self._log = log
        self._secure = (secure_port, psk_lookup, max_sessions, session_idle_timeout)
        self._dtls: DtlsServerInterface | None = None
        self.dtls_session_file = dtls_session_file
        """Where DTLS sessions are kept over a graceful restart (read and deleted at start); None: nowhere."""
        self._plain_allowed = plain_allowed
        self._block1 = BoundedBlock1Spool(max_request_body, block1_limits,
                                          log=log or structlog.get_logger("lwm2m_server.coap"))
        self._oscore = oscore
        self._udp = None  # aiocoap's udp6 token manager (OSCORE requests go first, not through it)
        self._fast: FastRequests | None = None  # Register, Update, Send on plain UDP, past aiocoap
        self._fast_client: FastClient | None = None  # reads and pushed blocks on plain UDP, past aiocoap
        self._observations = ObservationKeeper(self._message, lambda: self._context, self._address_of_remote, log)
        self._moved = [0, 0, 0, 0]  # Block2 blocks and bytes served, Block1 blocks and bytes sent

    async def start(self) -> None:
        # aiocoap sets SO_REUSEPORT by default: a second daemon on the same port would
        # then silently share its traffic, and two port-0 binds may get one port. Only
        # the workers of one server share on purpose.
        os.environ["AIOCOAP_REUSE_PORT"] = "1" if self._reuse_port else "0"
        site = _Root(self, self._block1)
        secure_port, lookup, max_sessions, idle_timeout = self._secure
        if self._bind[1] is None:  # CoAPS only
            if secure_port is None or lookup is None:
                raise ValueError("an adapter without a plain UDP port needs a CoAPS port and a PSK lookup")
            self._context = ServerContext(loop=asyncio.get_running_loop(), serversite=site,
                                          loggername="coap-server")
        else:
            with naming_port("UDP", *self._bind):
                self._context = await ServerContext.create_server_context(
                    site if self._oscore is None else OscoreSite(site, self._oscore), bind=self._bind,
                    transports=["udp6"]
                )
            self._udp = self._context.request_interfaces[0]
            self._observations.screen.install(self._udp, self._udp.token_interface)
            if self._oscore is not None:
                # First: udp6 would take an OSCOREAddress's host and send the request unprotected.
                self._context.request_interfaces.insert(0, OscoreRequests(self._context))
            interface = self._udp.token_interface.message_interface

            def send(data: bytes, pktinfo: bytes | None, address) -> None:
                ancdata = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)] if pktinfo else []
                interface.transport.sendmsg(data, ancdata, 0, address)

            self._fast = FastRequests(
                self._handler, peer=lambda address, pktinfo: self._remembered_peer(interface, address, pktinfo),
                refusal=self._fast_refusal, download=self._fast_download, send=send, clock=time.monotonic,
                log=self._logger())
            self._fast_client = FastClient(
                send=send, next_mid=self._message_ids.next, next_token=self._udp.next_token,
                decode=lambda data, address, pktinfo: Message.decode(
                    data, UDP6EndpointAddress(address, interface, pktinfo=pktinfo)))
            # Observe and Cancel Observation go through aiocoap: numbered by the same per-peer counters
            share_message_ids(self._udp.token_interface, self._message_ids.next)
            self._route_datagrams()
            resend_after_stale_errors(self._udp.token_interface.message_interface.transport)
            set_receive_buffer(self._socket(), self._receive_buffer_bytes)
        if secure_port is not None and lookup is not None:
            try:
                with naming_port("UDP", self._bind[0], secure_port):
                    await self._context._append_tokenmanaged_messagemanaged_transport(
                        lambda mman: DtlsServerInterface.create(
                            mman, host=self._bind[0], port=secure_port, lookup=lookup, max_sessions=max_sessions,
                            receive_buffer_bytes=self._receive_buffer_bytes,
                            idle_timeout=idle_timeout, log=self._logger(), loop=asyncio.get_running_loop(),
                            session_file=self.dtls_session_file, reuse_port=self._reuse_port))
            except BaseException:
                await self.stop()
                raise
            dtls_tokens = self._context.request_interfaces[-1]
            self._observations.screen.install(dtls_tokens, dtls_tokens.token_interface)
            self._dtls = dtls_tokens.token_interface.message_interface
        self._forgetful_deduplication()

    def _route_datagrams(self) -> None:
        """Each datagram on the plain UDP port goes to the fast paths first (answers to
        :mod:`.fast_client` exchanges, then :mod:`.fast_requests`), then to aiocoap.
        aiocoap lets some malformed datagrams raise out of its receive callback (a
        non-UTF-8 Uri-Path: an asyncio ERROR traceback per datagram, aiocoap #176/#417).
        Such a datagram is dropped here, and a confirmable one answered with a Reset
        (RFC 7252 §4.2: a CON that cannot be processed is rejected)."""
        interface = self._udp.token_interface.message_interface
        receive = interface.datagram_msg_received
        answers, requests = self._fast_client, self._fast

        def guarded(data: bytes, ancdata, flags, address) -> None:
            try:
                pktinfo = next((item[2] for item in ancdata if item[1] == socket.IPV6_PKTINFO), None)
                if answers.take(data, pktinfo, address) or requests.take(data, pktinfo, address):
                    return
                receive(data, ancdata, flags, address)
            except Exception as error:  # noqa: BLE001 - any decoding failure of one datagram
                self._logger().info("undecodable_datagram", peer=str(address[:2]), reason=repr(error)[:200])
                if len(data) >= 4 and data[0] >> 4 == 0x4:  # version 1, confirmable
                    pktinfo = [item for item in ancdata if item[1] == socket.IPV6_PKTINFO]
                    interface.transport.sendmsg(bytes((0x70, 0, data[2], data[3])), pktinfo, 0, address)

        interface.datagram_msg_received = guarded

    async def stop(self) -> None:
        await self._observations.stop()  # nothing goes to the devices: the next start adopts them
        if self._fast is not None:
            await self._fast.stop()
        self._block1.close()
        if self._context is not None:
            await self._context.shutdown()
            self._context = None

    def _socket(self) -> socket.socket:
        interface = self._udp.token_interface.message_interface
        return interface.transport.get_extra_info("socket")

    @property
    def port(self) -> int | None:
        """The plain CoAP port, None without one."""
        if self._udp is None:
            return None
        return self._socket().getsockname()[1]

    @property
    def secure_port(self) -> int | None:
        """The CoAPS port, None without CoAPS."""
        if self._dtls is None:
            return None
        return self._dtls.endpoint.bound_port

    def _logger(self):
        return self._log or structlog.get_logger("lwm2m_server.coap")

    @property
    def stats(self) -> AdapterStats:
        """Blocks and bytes moved, requests rate-limited, DTLS sessions open."""
        served_blocks, served_bytes, sent_blocks, sent_bytes = self._moved
        return AdapterStats(
            served_blocks, served_bytes, self._block1.blocks_received, self._block1.bytes_received,
            sent_blocks, sent_bytes, self._rate_limiter.refused_total if self._rate_limiter is not None else 0,
            len(self._dtls.endpoint.sessions) if self._dtls is not None else 0)

    @property
    def block1_stats(self) -> Block1Stats:
        """Request bodies in Block1 assembly now, their peaks and the blocks refused."""
        return self._block1.stats()

    def _screen(self, message: Message) -> Message | None:
        """The refusal of one incoming datagram, decided before its Block1 block is kept:
        plain CoAP in secure-only mode (4.03 at block 0, never 2.31 first), an OSCORE
        request that cannot be taken, then the rate limit, which each Block1 block pays.
        A GET pays in :meth:`_incoming`, a download's block GETs not at all (a pull is
        paced by the device's own requests)."""
        if (refusal := self._refuse_plain(message)) is not None:
            return refusal
        if (reason := refuse_reason(message.remote)) is not None:
            return Message(code=Code.FORBIDDEN, payload=reason.encode())
        if (refusal := self._refuse_unknown_context(message)) is not None:
            return refusal
        if self._rate_limiter is not None and message.code != Code.GET:
            return self._over_limit(message.remote.hostinfo, message)
        return None

    def _refuse_plain(self, message: Message) -> Message | None:
        if self._plain_allowed or isinstance(message.remote, (DtlsSession, OSCOREAddress)):
            return None
        return Message(code=Code.FORBIDDEN, payload=_PLAIN_REFUSED)

    def _refuse_unknown_context(self, message: Message) -> Message | None:
        """A request verified under a context that is not the server's (cannot happen
        unless aiocoap changes how it picks contexts) is refused, never trusted."""
        if isinstance(message.remote, OSCOREAddress) and authenticated_identity(message.remote) is None:
            return Message(code=Code.FORBIDDEN, payload=b"unknown OSCORE context")
        return None

    @property
    def receive_buffer_bytes(self) -> int:
        """SO_RCVBUF of the plain UDP socket (0 without one)."""
        if self._udp is None:
            return 0
        return self._socket().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    async def _incoming(self, message: Message) -> Message:
        peer = message.remote.hostinfo
        if self._rate_limiter is not None and message.code == Code.GET and \
                (refusal := self._over_limit(peer, message)) is not None:
            return refusal
        address, identity = self._peer_of(message.remote)
        self._remember(address, message.remote)
        incoming = IncomingRequest(
            method=message.code.name,
            uri_path=tuple(message.opt.uri_path),
            query=tuple(message.opt.uri_query),
            content_format=int(message.opt.content_format) if message.opt.content_format is not None else None,
            payload=bytes(message.payload),
            address=address,
            identity=identity,
        )
        answer = await self._handler(incoming)
        reply = Message(code=_code(answer.code), payload=answer.payload)
        if answer.location_path:
            reply.opt.location_path = answer.location_path
        if answer.content_format is not None:
            reply.opt.content_format = answer.content_format
        return reply

    def _rate_refusal(self, address: str) -> Refusal | None:
        """None when ``address`` is within its rate limit; else 4.29 Too Many Requests with
        Max-Age = seconds until it may retry (RFC 8516 §3)."""
        decision = self._rate_limiter.check(address, time.monotonic())
        if decision.allowed:
            return None
        if decision.report:
            self._logger().warning(
                "rate_limited", address=address, limited_by=decision.limited_by, key=decision.key,
                refused=decision.refused, retry_after=round(decision.retry_after, 3),
                refused_total=self._rate_limiter.refused_total,
            )
        return Refusal("4.29", b"too many requests", decision.max_age)

    def _fast_refusal(self, address: str) -> Refusal | None:
        """:meth:`_screen` for a request on the fast path (plain CoAP, no OSCORE, not a GET)."""
        if not self._plain_allowed:
            return Refusal("4.03", _PLAIN_REFUSED)
        return self._rate_refusal(address) if self._rate_limiter is not None else None

    def _fast_download(self, address: str, request: FastRequest) -> BlockAnswer | OutgoingResponse | None:
        """A block GET on the fast path: as :meth:`_download_for` and :meth:`_block`
        (never rate-limited: a pull is paced by the device's own requests)."""
        if not self._plain_allowed:
            return OutgoingResponse("4.03", _PLAIN_REFUSED)
        found = self._downloads(IncomingRequest("GET", request.uri_path, request.query, None, b"", address, None))
        if not isinstance(found, Download):
            return found
        return self._block(found, request.block2, request.size2)

    def _remembered_peer(self, interface, address, pktinfo: bytes | None) -> str:
        remote = UDP6EndpointAddress(address, interface, pktinfo=pktinfo)
        hostinfo = remote.hostinfo
        self._remember(hostinfo, remote)
        return hostinfo

    def _over_limit(self, address: str, message: Message) -> Message | None:
        """:meth:`_rate_refusal` as aiocoap's answer, suppressed for a NON request."""
        refusal = self._rate_refusal(address)
        if refusal is None:
            return None
        reply = Message(code=Code.TOO_MANY_REQUESTS, payload=refusal.payload, max_age=refusal.max_age)
        if message.mtype == aiocoap.NON:
            reply.opt.no_response = 26  # no response of any class: the request is dropped
        return reply

    def local_base(self, address: str) -> str:
        """``coap://host:port`` of this server as the device at ``address`` reaches it."""
        remote = self._remotes.get(address)
        if remote is not None:
            try:
                return remote.uri_base_local
            except (ValueError, AttributeError):  # no packet info for this remote
                pass
        if (address.startswith("coaps://") or self.port is None) and self.secure_port is not None:
            return f"coaps://127.0.0.1:{self.secure_port}"
        return f"coap://127.0.0.1:{self.port}"

    def _release_copy_later(self, request: Message, after: float = _DOWNLOAD_COPY_KEPT_S) -> None:
        """aiocoap keeps each response EXCHANGE_LIFETIME (247 s) to answer a duplicate
        request: for downloads that is every block sent in the last four minutes (about
        90 MB after 20 pulls of 1 MiB). A block GET is idempotent: once the block is
        sent its copy and its duplicate marker go, and a retransmitted request is simply
        served again from the file. A refusal (``after=0``) is not kept at all: a repeat is
        refused anew, and a flood of refused requests holds no copies."""
        if isinstance(request.remote, DtlsSession):
            manager = self._dtls._mman if self._dtls is not None else None
        else:
            manager = self._udp.token_interface if self._udp is not None else None
        recent = getattr(manager, "_recent_messages", None)
        if isinstance(recent, _Forgetful) and after <= 0:
            recent.pop((request.remote, request.mid))
        elif isinstance(recent, _Forgetful):
            asyncio.get_running_loop().call_later(after, recent.pop, (request.remote, request.mid))

    def _forgetful_deduplication(self) -> None:
        """Let entries of aiocoap's deduplication table go early (its own timer then finds
        them gone; a plain dict would raise KeyError there)."""
        for interface in (self._udp.token_interface if self._udp is not None else None,
                          self._dtls._mman if self._dtls is not None else None):
            if interface is not None and type(interface._recent_messages) is dict:
                interface._recent_messages = _Forgetful(interface._recent_messages)

    def _download_for(self, request: Message) -> Download | None:
        """The file a GET fetches, None for no download; the resolver is told who asks,
        and its refusal (4.03 to a peer the module is not delivered to, 4.04) is raised."""
        if request.code != Code.GET or request.opt.observe is not None:
            return None
        if (known := request.__dict__.get("_tinymlaas_download", _UNKNOWN)) is not _UNKNOWN:
            return known  # asked once by aiocoap (assemble blocks?) and once to render
        address, identity = self._peer_of(request.remote)
        found = self._downloads(IncomingRequest("GET", tuple(request.opt.uri_path), tuple(request.opt.uri_query),
                                                None, b"", address, identity))
        if isinstance(found, OutgoingResponse):
            refusal = aiocoap.error.ConstructionRenderableError(found.payload.decode("utf-8", "replace"))
            refusal.code = _code(found.code)
            raise refusal
        request._tinymlaas_download = found
        return found

    def _serve_block(self, request: Message, download: Download) -> Message:
        wanted = request.opt.block2
        return block_message(self._block(download, None if wanted is None else (wanted.block_number,
                                                                                wanted.size_exponent),
                                         request.opt.size2 is not None))

    def _block(self, download: Download, wanted: tuple[int, int] | None, size2_asked: bool) -> BlockAnswer:
        """One block of ``download`` (either path), counted when served."""
        answer = block_of(download, wanted, size2_asked, self._block_exp)
        if answer.code == "2.05":
            self._moved[0] += 1
            self._moved[1] += len(answer.payload)
        return answer

    async def _message(self, address: str, request: CoapRequest, identity: str | None = None) -> Message:
        message = Message(code=_METHODS[request.method], payload=request.payload)
        remote = self._remotes.get(address)
        if address.startswith("coaps://"):
            remote = self._dtls_session(address, remote, identity)
        if (oscore_peer := split_address(address)) is not None:
            message.remote = await self._oscore_remote(address, *oscore_peer, remote)
        elif remote is None:
            message.set_request_uri(f"coap://{address}/")
        else:
            message.remote = remote
        message.opt.uri_path = request.uri_path
        if request.query:
            message.opt.uri_query = request.query
        if request.content_format is not None:
            message.opt.content_format = request.content_format
        if request.accept is not None:
            message.opt.accept = request.accept
        if request.observe is not None:
            message.opt.observe = request.observe
        return message

    def _dtls_session(self, address: str, remembered: object, identity: str | None) -> DtlsSession:
        """The newest DTLS session at ``address``: a device may handshake again from the
        same port at any time, and is reachable over the new session at once. It must have
        proved ``identity`` (the registration's; by default the one last heard from that
        address): another identity's session at the same address is never used."""
        session = None
        if self._dtls is not None:
            with contextlib.suppress(ValueError):  # a malformed stored address reaches nobody
                session = self._dtls.endpoint.session_at(*hostportsplit(address.removeprefix("coaps://")))
        if session is None:  # only the device opens a DTLS session; until it does, it cannot be reached
            raise DeviceUnreachable(address, "no DTLS session with the device (it must handshake again)")
        if identity is None and isinstance(remembered, DtlsSession):
            identity = remembered.identity.decode("utf-8", "replace")
        proved = session.identity.decode("utf-8", "replace")
        if identity is not None and proved != identity:
            raise DeviceUnreachable(address, f"the DTLS session at this address proved identity {proved!r}, "
                                             f"not {identity!r} (the device must handshake again as {identity!r})")
        if session is not remembered:
            self._remember(address, session)
        return session

    async def _oscore_remote(self, address: str, identity: str, hostinfo: str, remote) -> OSCOREAddress:
        """Where to send a request for an OSCORE device: its current context (the
        credential may have been replaced) over the UDP remote it was heard from, or,
        after a restart, the one its address names."""
        context = self._oscore.for_identity(identity) if self._oscore is not None else None
        if context is None:
            raise DeviceUnreachable(address, f"no OSCORE credential for {identity} any more")
        if isinstance(remote, OSCOREAddress):
            underlying = remote.underlying_address
        else:
            probe = Message(code=Code.GET)
            probe.set_request_uri(f"coap://{hostinfo}/")
            try:
                await self._udp.fill_or_recognize_remote(probe)
            except (ValueError, OSError) as error:
                raise DeviceUnreachable(address, f"cannot resolve {hostinfo}: {error}") from None
            underlying = probe.remote
        target = OSCOREAddress(context, underlying)
        limit = min(self._block_exp, self._block_limits.get(address, self._block_exp),
                    getattr(remote, "maximum_block_size_exp", self._block_exp))
        if target.maximum_block_size_exp > limit:
            target.maximum_block_size_exp = limit
        return target

    @contextlib.asynccontextmanager
    async def _turn(self, address: str) -> AsyncIterator[None]:
        """One request per device at a time; the lock goes when nobody needs it."""
        entry = self._per_device.setdefault(address, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._per_device[address]

    def forget(self, address: str) -> None:
        """Drop what is kept about ``address`` (the device moved or left)."""
        self._remotes.pop(address, None)
        self._block_limits.pop(address, None)

    async def request(self, address: str, request: CoapRequest, *, timeout: float,
                      identity: str | None = None) -> CoapResponse:
        """Send one request and wait for its (block-wise reassembled) response.

        ``timeout`` applies per block: a large Block1 transfer fails when one block
        goes unanswered that long, however many blocks went before.
        ``identity``: the PSK identity the device registered with; over CoAPS only a
        session that proved it carries the request.
        """
        async with self._in_flight, self._turn(address):
            while True:
                remote_exp = getattr(self._remotes.get(address), "maximum_block_size_exp", self._block_exp)
                exp = min(remote_exp, self._block_exp, self._block_limits.get(address, self._block_exp))
                if len(request.payload) <= 1 << (exp + 4):
                    raw = await self._send_whole(address, request, identity, timeout)
                else:
                    raw = await self._send_blocks(address, request, identity, exp, timeout)
                if raw.code != Code.REQUEST_ENTITY_TOO_LARGE or len(request.payload) <= 16:
                    return _response(raw)
                current = getattr(raw.remote, "maximum_block_size_exp", self._block_exp)
                retry_exp = smaller_block_exp(raw, min(current, self._block_exp))
                if retry_exp is None:
                    return _response(raw)
                self._block_limits[address] = retry_exp
                self._remember(address, raw.remote)

    def _fast_remote(self, address: str, request: CoapRequest) -> UDP6EndpointAddress | None:
        """The device's plain-UDP address where the request may go the fast client's way:
        a device heard from, no Observe (aiocoap keeps observations), no OSCORE."""
        known = self._remotes.get(address)
        if self._fast_client is not None and type(known) is UDP6EndpointAddress and request.observe is None \
                and split_address(address) is None:
            return known
        return None

    async def _send_whole(self, address: str, request: CoapRequest, identity: str | None, timeout: float) -> Message:
        known = self._fast_remote(address, request)
        if known is None:
            return (await self._exchange(address, await self._message(address, request, identity), timeout))[1]
        encoded = _encoded(request.method, request.uri_path, request.query, request.content_format, request.accept)
        raw = await self._bounded(address, self._fast_client.exchange_encoded(
            encoded.code, encoded.whole, request.payload, known.sockaddr, known.pktinfo), timeout)
        if raw.opt.block2 is None:
            return raw
        # the request as a message: what the follow-ups for the other blocks are made from
        return await self._rest_of(address, await self._message(address, request, identity), raw, timeout)

    async def _send_blocks(self, address: str, request: CoapRequest, identity: str | None, exp: int,
                           timeout: float) -> Message:
        known = self._fast_remote(address, request)
        if known is not None:
            encoded = _encoded(request.method, request.uri_path, request.query, request.content_format,
                               request.accept)
            size = len(request.payload)

            async def block(number: int, more: bool, exp: int, chunk: bytes, remote) -> Message:
                remote = remote or known  # the same source address for every block
                options = encoded.options(number, more, exp, size if number == 0 else None)
                return await self._bounded(address, self._fast_client.exchange_encoded(
                    encoded.code, options, chunk, remote.sockaddr, remote.pktinfo), timeout)
        else:
            block = self._block_message_sender(address, request, identity, timeout)
        try:
            raw, blocks, sent = await send_in_blocks(block, request.payload, exp)
        except UnexpectedBlock1 as error:
            raise DeviceUnreachable(address, str(error)) from None
        if raw.code != Code.REQUEST_ENTITY_TOO_LARGE:
            self._moved[2] += blocks
            self._moved[3] += sent
        return raw

    def _block_message_sender(self, address: str, request: CoapRequest, identity: str | None, timeout: float):
        """Blocks as aiocoap messages: over DTLS or OSCORE, or to a device not heard from yet."""
        async def block(number: int, more: bool, exp: int, chunk: bytes, remote) -> Message:
            message = await self._message(address, request, identity)
            message.payload = chunk
            message.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(number, more, exp)
            if number == 0:
                message.opt.size1 = len(request.payload)
            if remote is not None:
                message.remote = remote  # the same source address for every block
            return (await self._exchange(address, message, timeout, whole=False))[1]
        return block

    async def _exchange(self, address: str, message: Message, timeout: float, *, whole: bool = True):
        """Send ``message``; the pending request and its first response (``whole``:
        aiocoap reassembles a Block2 response; else ``message`` is one block)."""
        assert self._context is not None, "adapter not started"
        # every request to a plain-UDP device but Observe: its Message IDs then come from one
        # per-peer counter (aiocoap's request path would take them from its own, shared one)
        if self._fast_client is not None and type(message.remote) is UDP6EndpointAddress \
                and message.opt.observe is None:
            raw = await self._fast_exchange(address, message, timeout)
            return None, await self._rest_of(address, message, raw, timeout) if whole else raw
        pending = self._context.request(message, handle_blockwise=whole)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            async with asyncio.timeout(timeout):
                raw = await pending.response
        except TimeoutError:
            pending.response.cancel()
            if message.opt.observe is not None:
                pending.observation.cancel()
            raise DeviceUnreachable(address, f"no response within {timeout:g} s") from None
        except aiocoap.error.Error as error:
            raise DeviceUnreachable(address, str(error) or type(error).__name__) from None
        if address not in self._remotes:
            self._remember(address, raw.remote)
        return pending, raw

    async def _rest_of(self, address: str, message: Message, first: Message, timeout: float) -> Message:
        """``first`` (the fast path's answer to ``message``) with the rest of a Block2
        answer fetched the same way and joined."""
        if first.opt.block2 is None:
            return first
        try:
            return await receive_in_blocks(lambda follow: self._fast_exchange(address, follow, timeout),
                                           message, first)
        except UnexpectedBlock2 as error:
            raise DeviceUnreachable(address, str(error)) from None

    async def _fast_exchange(self, address: str, message: Message, timeout: float) -> Message:
        remote = message.remote
        return await self._bounded(address, self._fast_client.exchange(message, remote.sockaddr, remote.pktinfo),
                                   timeout)

    @staticmethod
    async def _bounded(address: str, exchange: Awaitable[Message], timeout: float) -> Message:
        """A fast client's exchange, its failures as DeviceUnreachable."""
        try:
            async with asyncio.timeout(timeout):
                return await exchange
        except TimeoutError:
            raise DeviceUnreachable(address, f"no response within {timeout:g} s") from None
        except ExchangeFailed as error:
            raise DeviceUnreachable(address, error.reason) from None

    def _remember(self, address: str, remote) -> None:
        """Keep the newest remote of ``address``, its block size capped at ours and at
        what the device asked for with a 4.13 (aiocoap makes a new remote per message)."""
        limit = min(self._block_exp, self._block_limits.get(address, self._block_exp))
        if remote.maximum_block_size_exp > limit:
            remote.maximum_block_size_exp = limit
        self._remotes[address] = remote
        self._remotes.move_to_end(address)
        while len(self._remotes) > self._max_remotes:  # a peer hopping ports must not grow it forever
            self.forget(next(iter(self._remotes)))

    async def observe(
        self, address: str, request: CoapRequest, *, timeout: float, identity: str | None = None
    ) -> tuple[CoapResponse, WireObservation | None]:
        """Start an observation: the first response and, when the device took it, the
        observation: iterate it for notifications, end it with :meth:`cancel_observation`
        or :meth:`release_observation`. ``identity`` as for :meth:`request`."""
        async with self._in_flight, self._turn(address):
            pending, raw = await self._exchange(address, await self._message(address, request, identity), timeout)
        first = _response(raw)
        observation = pending.observation
        if raw.opt.observe is None or not first.ok:
            if not observation.cancelled:
                observation.cancel()
            return first, None
        return first, self._observations.follow(address, request, raw, observation)

    def adopt_observation(self, address: str, token: bytes, request: CoapRequest) -> WireObservation | None:
        """Take over an observation made before a restart by its token, so its
        notifications are delivered, not reset; may be called before :meth:`start`.
        Over plain CoAP only (None otherwise): a DTLS session and an OSCORE request's
        context end with the process, and those devices are observed anew."""
        if not token or address.startswith("coaps://") or split_address(address) is not None:
            return None
        return self._observations.adopt(address, token, request)

    def cancel_observation(self, observation: WireObservation) -> None:
        """End an observation and tell the device (Cancel Observation, sent in the background)."""
        self._observations.cancel(observation)

    def release_observation(self, observation: WireObservation) -> None:
        """End an observation without telling the device (it left, or registered anew):
        its next notification is answered with a Reset."""
        self._observations.release(observation)

    @staticmethod
    def _peer_of(remote) -> tuple[str, str | None]:
        """Who sent a request: the address registrations hold for it and the identity it
        proved (OSCORE ``oscore:<hex>``, a DTLS PSK identity, None over plain CoAP)."""
        identity = authenticated_identity(remote)
        if identity is not None:
            return address_of(identity, remote.hostinfo), identity
        if isinstance(remote, DtlsSession):
            return f"coaps://{remote.hostinfo}", remote.identity.decode("utf-8", "replace")
        return remote.hostinfo, None

    @staticmethod
    def _address_of_remote(remote) -> str:
        """The address string registrations hold for a remote (plain UDP or DTLS)."""
        return f"coaps://{remote.hostinfo}" if isinstance(remote, DtlsSession) else remote.hostinfo
