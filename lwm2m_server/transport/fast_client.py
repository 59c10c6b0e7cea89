"""Requests to devices over plain UDP without aiocoap's request path.

Reads, writes, executes and each block of a push are one confirmable request and one
response. Through aiocoap each costs a request object, a pipe, tasks and a token
manager's and message manager's bookkeeping; here it is one datagram out, a timer for
RFC 7252 retransmission (§4.2: ACK_TIMEOUT 2 s × a random factor up to 1.5, doubled,
MAX_RETRANSMIT 4), and the answer matched by Message ID (a piggybacked response, an
empty ACK, a Reset) or by token (a separate response, acknowledged when confirmable).

Tokens come from aiocoap's allocator; Message IDs from per-peer counters
(:class:`MessageIds`). aiocoap replaces an ID set on a message it sends with one from its
own counter, shared by every peer, so the adapter sends every request to a plain-UDP device
here but Observe and Cancel Observation, and :func:`share_message_ids` makes aiocoap take
the IDs of those from the same per-peer counters: two counters to one device would collide
(an Observe given the ID of a block of the push that follows it, or the reverse, is to the
device a repeat of the other, RFC 7252 §4.5: answered with the other's response, so the
request goes unanswered until its retransmissions run out; ~1 device in 600 per rollout).
A datagram that matches nothing here goes on to aiocoap.
The rest of a Block2 answer is fetched here too (:func:`.blockwise.receive_in_blocks`).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

from aiocoap import CON, Message

from .fast_requests import Exchanges, option_bytes, uint_bytes

ACK_TIMEOUT_S, ACK_RANDOM_FACTOR, MAX_RETRANSMIT = 2.0, 1.5, 4
_CON, _NON, _ACK, _RST = 0, 1, 2, 3
_URI_PATH, _CONTENT_FORMAT, _URI_QUERY, _ACCEPT, _BLOCK1, _SIZE1 = 11, 12, 15, 17, 27, 60


class EncodedRequest:
    """A request's options but for Block1 and Size1, encoded once: the blocks of a push
    differ only in those (aiocoap would build and encode a message for each of a hundred
    blocks), and a fleet's devices are sent the same few requests."""

    __slots__ = ("code", "_options", "_last")

    def __init__(self, code: int, uri_path: tuple[str, ...], query: tuple[str, ...],
                 content_format: int | None, accept: int | None) -> None:
        self.code = code
        options, last = bytearray(), 0
        for number, values in ((_URI_PATH, [segment.encode() for segment in uri_path]),
                               (_CONTENT_FORMAT, [] if content_format is None else [uint_bytes(content_format)]),
                               (_URI_QUERY, [item.encode() for item in query]),
                               (_ACCEPT, [] if accept is None else [uint_bytes(accept)])):
            for value in values:
                options += option_bytes(number, last, value)
                last = number
        self._options, self._last = bytes(options), last

    @property
    def whole(self) -> bytes:
        """The options of the request sent in one message."""
        return self._options

    def options(self, number: int, more: bool, exp: int, size1: int | None) -> bytes:
        """The options of block ``number`` (``size1``: the whole payload's size, or None)."""
        block1 = option_bytes(_BLOCK1, self._last, uint_bytes(number << 4 | more << 3 | exp))
        return self._options + block1 + (b"" if size1 is None else option_bytes(_SIZE1, _BLOCK1, uint_bytes(size1)))


class MessageIds:
    """Message IDs counted per peer, from a random start (RFC 7252 §4.4: an ID is not used
    again with the same endpoint within EXCHANGE_LIFETIME, 247 s). One counter for every
    peer, as aiocoap keeps, comes round after 65,536 messages: at 265 messages a second,
    within the 247 s a device remembers an ID, and a device given an ID it remembers
    answers the request as a repeat of the old one (its old response, or nothing), so the
    request hangs until it times out. Counted per peer it takes 65,536 messages to one device.
    The peers least recently sent to are forgotten beyond ``limit``."""

    def __init__(self, limit: int = 200_000, rng: random.Random | None = None) -> None:
        self._next: dict[Any, int] = {}  # in order of last use
        self._limit = limit
        self._random = rng or random.Random()

    def __len__(self) -> int:
        return len(self._next)

    def next(self, peer: Any) -> int:
        mid = self._next.pop(peer, None)
        if mid is None:
            mid = self._random.randrange(0x10000)
            if len(self._next) >= self._limit:
                del self._next[next(iter(self._next))]
        self._next[peer] = (mid + 1) & 0xFFFF
        return mid


def share_message_ids(manager: Any, next_mid: Callable[[Any], int]) -> None:
    """Make aiocoap's message manager ``manager`` (the udp6 transport's) number each new
    message it sends to a ``(host, port)`` with ``next_mid(peer)``, the counter the fast
    path numbers its requests to that peer with (RFC 7252 §4.4: one endpoint never gives
    another the same ID within EXCHANGE_LIFETIME). Acknowledgements, Resets and
    piggybacked responses keep the ID they answer; a message without a peer address
    takes aiocoap's own counter."""
    send_message, own_counter = manager.send_message, manager._next_message_id
    sending_to: list[Any] = [None]  # the peer of the message being sent (aiocoap asks synchronously)

    def next_message_id() -> int:
        peer = sending_to[0]
        return own_counter() if peer is None else next_mid(peer)

    def send(message: Message, messageerror_monitor: Any) -> Any:
        sockaddr = getattr(message.remote, "sockaddr", None)
        sending_to[0] = (sockaddr[0], sockaddr[1]) if sockaddr else None
        try:
            return send_message(message, messageerror_monitor)
        finally:
            sending_to[0] = None

    manager._next_message_id = next_message_id
    manager.send_message = send


class ExchangeFailed(Exception):
    """The device reset the request, or never acknowledged it; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Exchange:
    __slots__ = ("future", "data", "pktinfo", "sockaddr", "token", "mid", "timer", "attempts", "interval")

    def __init__(self, future: asyncio.Future, data: bytes, pktinfo: bytes | None, sockaddr: Any,
                 token: bytes, mid: int, interval: float) -> None:
        self.future, self.data, self.pktinfo, self.sockaddr = future, data, pktinfo, sockaddr
        self.token, self.mid, self.interval = token, mid, interval
        self.timer: asyncio.TimerHandle | None = None
        self.attempts = 0


class FastClient:
    """Confirmable requests and their answers, on the adapter's UDP socket.

    ``send(data, pktinfo, sockaddr)`` sends one datagram; ``next_mid(peer)`` gives a
    Message ID for ``(host, port)`` (:meth:`MessageIds.next`), ``next_token()`` is aiocoap's
    token allocator; ``decode(data, sockaddr, pktinfo)`` makes
    the aiocoap :class:`Message` the adapter's callers take (with its remote).
    """

    def __init__(self, *, send: Callable[[bytes, bytes | None, Any], None], next_mid: Callable[[Any], int],
                 next_token: Callable[[], bytes], decode: Callable[[bytes, Any, bytes | None], Message],
                 rng: random.Random | None = None) -> None:
        self._send = send
        self._next_mid = next_mid
        self._next_token = next_token
        self._decode = decode
        self._random = rng or random.Random()
        self._by_mid: dict[tuple[Any, ...], _Exchange] = {}
        self._by_token: dict[tuple[Any, ...], _Exchange] = {}
        self._acknowledged = Exchanges(limit=100_000)  # separate responses ACKed, for their repeats
        self.exchanges = 0
        """Requests sent on this path."""

    async def exchange(self, message: Message, sockaddr: Any, pktinfo: bytes | None) -> Message:
        """Send ``message`` (a request) confirmable to ``sockaddr``; its response. The caller
        bounds the wait; :class:`ExchangeFailed` on a Reset or when retransmissions run out."""
        message.mid = self._next_mid((sockaddr[0], sockaddr[1]))
        message.token = self._next_token()
        message.mtype = CON
        return await self._exchange(message.encode(), message.mid, message.token, sockaddr, pktinfo)

    async def exchange_encoded(self, code: int, options: bytes, payload: bytes, sockaddr: Any,
                               pktinfo: bytes | None) -> Message:
        """As :meth:`exchange`, for a request given as its code and encoded options."""
        mid, token = self._next_mid((sockaddr[0], sockaddr[1])), self._next_token()
        data = bytes((0x40 | len(token), code)) + mid.to_bytes(2, "big") + token + options
        return await self._exchange(data + b"\xff" + payload if payload else data, mid, token, sockaddr, pktinfo)

    async def _exchange(self, data: bytes, mid: int, token: bytes, sockaddr: Any, pktinfo: bytes | None) -> Message:
        loop = asyncio.get_running_loop()
        peer = (sockaddr[0], sockaddr[1])
        exchange = _Exchange(loop.create_future(), data, pktinfo, sockaddr, token, mid,
                             ACK_TIMEOUT_S * self._random.uniform(1.0, ACK_RANDOM_FACTOR))
        self._by_mid[(peer, exchange.mid)] = exchange
        self._by_token[(peer, exchange.token)] = exchange
        self.exchanges += 1
        try:
            self._transmit(exchange, loop)
            return await exchange.future
        finally:
            if exchange.timer is not None:
                exchange.timer.cancel()
            self._by_mid.pop((peer, exchange.mid), None)
            self._by_token.pop((peer, exchange.token), None)

    def _transmit(self, exchange: _Exchange, loop: asyncio.AbstractEventLoop) -> None:
        if exchange.future.done():
            return
        if exchange.attempts > MAX_RETRANSMIT:
            exchange.future.set_exception(ExchangeFailed(f"no acknowledgement after {MAX_RETRANSMIT} retransmissions"))
            return
        self._send(exchange.data, exchange.pktinfo, exchange.sockaddr)
        exchange.timer = loop.call_later(exchange.interval, self._transmit, exchange, loop)
        exchange.attempts += 1
        exchange.interval *= 2

    def take(self, data: bytes, pktinfo: bytes | None, address: Any) -> bool:
        """Handle ``data`` if it answers an exchange of ours; False leaves it to aiocoap."""
        if len(data) < 4 or data[0] >> 6 != 1:
            return False
        kind, token_length, code = (data[0] >> 4) & 3, data[0] & 0x0F, data[1]
        peer, mid = (address[0], address[1]), int.from_bytes(data[2:4], "big")
        if kind == _ACK or kind == _RST:
            exchange = self._by_mid.get((peer, mid))
            if exchange is None:
                return False
            if kind == _RST:
                self._fail(exchange, "the device reset the request")
            elif code == 0:  # an empty ACK: the response comes separately, stop retransmitting
                self._acknowledged_by_device(exchange, peer)
            elif data[4:4 + token_length] == exchange.token:
                self._resolve(exchange, data, address, pktinfo)
            else:
                return False
            return True
        if code < 64:  # a request (or an empty CON/NON ping): not an answer
            return False
        exchange = self._by_token.get((peer, bytes(data[4:4 + token_length])))
        if exchange is None:
            now = asyncio.get_running_loop().time()
            if kind != _CON or self._acknowledged.seen((peer, mid), now) is None:
                return False
            self._send(bytes((0x60, 0)) + data[2:4], pktinfo, address)  # our ACK was lost: the device repeats
            return True
        if kind == _CON:
            self._send(bytes((0x60, 0)) + data[2:4], pktinfo, address)
            self._acknowledged.start((peer, mid), asyncio.get_running_loop().time())
        self._resolve(exchange, data, address, pktinfo)
        return True

    def _acknowledged_by_device(self, exchange: _Exchange, peer: tuple[Any, ...]) -> None:
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        self._by_mid.pop((peer, exchange.mid), None)

    def _resolve(self, exchange: _Exchange, data: bytes, address: Any, pktinfo: bytes | None) -> None:
        if exchange.future.done():
            return
        try:
            response = self._decode(data, address, pktinfo)
        except Exception:  # noqa: BLE001 - an unparsable answer is dropped, as aiocoap drops it
            return
        exchange.future.set_result(response)

    def _fail(self, exchange: _Exchange, reason: str) -> None:
        if not exchange.future.done():
            exchange.future.set_exception(ExchangeFailed(reason))
