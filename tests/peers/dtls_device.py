"""A minimal LwM2M 1.0 device over DTLS 1.2 PSK that uses tinydtls (the DTLSSocket
package) directly, the way Wakaama's tinydtls connection layer does, and imports
nothing of this project.

It keeps ONE UDP socket (one source address and port) for its whole life, and
:meth:`DtlsDevice.rehandshake` starts a fresh handshake from it without a
close_notify, as Wakaama does after 40 s idle (``connection_rehandshake(conn,
false)``: the old peer state is dropped silently, then ``dtls_connect``).
It answers the server's GETs: ``/3/0/0`` (Manufacturer) in text/plain, anything
else 4.04. aiocoap only encodes and decodes CoAP messages here.
"""
from __future__ import annotations

import asyncio
import socket

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from DTLSSocket import dtls

EVENT_CONNECTED = 0x01DE
TEXT, LINK = 0, 40


class DtlsDevice(asyncio.DatagramProtocol):
    """One device: an endpoint name, a PSK identity and key, one fixed local port."""

    def __init__(self, endpoint: str, identity: bytes, key: bytes, server: tuple[str, int],
                 manufacturer: str = "Peer Devices Inc") -> None:
        self.endpoint = endpoint
        self.server = ("::ffff:" + server[0], server[1])
        self.manufacturer = manufacturer
        self.identity, self.key = identity, key
        self.requests: list[str] = []
        """Uri-Paths of the server's requests this device answered."""
        self.alerts: list[tuple[int, int]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._context = None
        self._session = None
        self._retired: list = []
        """Replaced tinydtls contexts and sessions, kept: freeing one sends close_notify."""
        self._connected: asyncio.Future | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._mid = 0x4000

    async def open(self) -> int:
        """Bind the socket; the local port it keeps."""
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::ffff:127.0.0.1", 0))
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        return self.port

    @property
    def port(self) -> int:
        return self._transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- DTLS -------------------------------------------------------------------------------

    async def handshake(self, timeout: float = 5.0) -> None:
        """A full handshake from a fresh tinydtls context (epoch 0 ClientHello, no
        close_notify for the previous session): the server must take it as new."""
        if self._context is not None:
            self._retired.append((self._context, self._session))
        self._context = dtls.DTLS(read=self._read, write=self._write, event=self._event,
                                  pskId=self.identity, pskStore={self.identity: self.key})
        self._connected = asyncio.get_running_loop().create_future()
        self._session = self._context.connect(*self.server)
        retransmit = asyncio.create_task(self._retransmit(self._context))
        try:
            async with asyncio.timeout(timeout):
                await self._connected
        finally:
            retransmit.cancel()

    @staticmethod
    async def _retransmit(context) -> None:
        """Let tinydtls resend its last flight when its timer says (1 s, 2 s, ...)."""
        while True:
            await asyncio.sleep(0.1)
            context.checkRetransmit()

    rehandshake = handshake

    def connection_made(self, transport) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        if self._context is not None:
            self._context.handleMessage(self._session, data)

    def _write(self, recipient, data: bytes) -> int:
        if self._transport is None or self._transport.is_closing():
            return 0
        self._transport.sendto(data, (*self.server, 0, 0))
        return len(data)

    def _event(self, level: int, code: int) -> int:
        if level == 0 and code == EVENT_CONNECTED:
            if self._connected is not None and not self._connected.done():
                self._connected.set_result(None)
        elif level:
            self.alerts.append((level, code))
            if self._connected is not None and not self._connected.done():
                self._connected.set_exception(ConnectionError(f"DTLS alert {level}/{code}"))
        return 0

    def _read(self, sender, data: bytes) -> int:
        try:
            message = Message.decode(data)
        except Exception:  # noqa: BLE001 - a peer ignores what it cannot parse
            return len(data)
        if message.code.is_request():
            self._answer(message)
        elif message.mtype in (Type.ACK, Type.RST) and message.mid in self._waiting:
            future = self._waiting.pop(message.mid)
            if not future.done():
                future.set_result(message)
        return len(data)

    def _send(self, message: Message) -> None:
        self._context.write(self._session, message.encode())

    # -- CoAP ---------------------------------------------------------------------------------

    def _answer(self, request: Message) -> None:
        path = "/" + "/".join(request.opt.uri_path)
        self.requests.append(path)
        if request.code == Code.GET and path == "/3/0/0":
            reply = Message(code=Code.CONTENT, payload=self.manufacturer.encode(), content_format=TEXT)
        else:
            reply = Message(code=Code.NOT_FOUND)
        reply.mtype = Type.ACK if request.mtype == Type.CON else Type.NON
        reply.mid = request.mid if request.mtype == Type.CON else self._next_mid()
        reply.token = request.token
        self._send(reply)

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    async def _request(self, message: Message, timeout: float = 5.0) -> Message:
        message.mtype = Type.CON
        message.mid = self._next_mid()
        message.token = message.mid.to_bytes(2, "big")
        future = self._waiting[message.mid] = asyncio.get_running_loop().create_future()
        self._send(message)
        async with asyncio.timeout(timeout):
            return await future

    async def register(self, lifetime: int = 300) -> str:
        """Register (LwM2M 1.0, binding U); the registration's location."""
        request = Message(code=Code.POST, uri_path=("rd",), payload=b"</3/0>", content_format=LINK)
        request.opt.uri_query = (f"ep={self.endpoint}", f"lt={lifetime}", "lwm2m=1.0", "b=U")
        response = await self._request(request)
        if response.code != Code.CREATED:
            raise ConnectionError(f"Register answered {response.code}: {response.payload!r}")
        return "/" + "/".join(response.opt.location_path)
