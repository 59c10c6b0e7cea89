"""Register, Update, De-register and Send over plain UDP, answered without aiocoap's request path.

These are nearly all a fleet sends. Through aiocoap each one costs message objects, a
pipe, a render task and a blockwise lookup; under load, once an answer takes longer than
aiocoap's empty-ACK delay, it is an empty ACK plus a separate confirmable response the
device must acknowledge: two datagrams more per request. Here a request is parsed from
its bytes, handed to the same handler, and always answered piggybacked (RFC 7252
§5.2.1); a duplicate (same peer and Message ID, §4.5) is answered with the same bytes,
or ignored while its answer is still being made (the device retransmits until it comes).

A pull's block GETs of a module download take it too: the block is read from the file
and sent, nothing kept (a block GET is idempotent: a repeat is served again).

Only a datagram that is a confirmable POST or DELETE to ``rd`` or ``dp``, or a GET the
adapter says is a download, with no option but Uri-Host, Uri-Port, Uri-Path,
Content-Format, Uri-Query, Accept, Size1 (and for a GET Block2 and Size2), takes this
path; anything else (Block1, Observe, OSCORE, No-Response, Echo, ETag, a NON or a
malformed message) goes to aiocoap exactly as before.

:func:`parse_request`, :func:`encode_response` and :class:`Exchanges` are sans-I/O;
:class:`FastRequests` is the thin driver the CoAP adapter feeds datagrams to.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog

from .blockwise import BlockAnswer
from .messages import IncomingRequest, OutgoingResponse

EXCHANGE_LIFETIME_S = 247.0
"""RFC 7252 §4.8.2: how long a Message ID is remembered for duplicate detection."""

_CON, _ACK = 0, 2
_METHODS = {1: "GET", 2: "POST", 4: "DELETE"}
_TAKEN_PATHS = frozenset({"rd", "dp"})
_URI_HOST, _URI_PORT, _URI_PATH, _CONTENT_FORMAT, _URI_QUERY, _ACCEPT, _SIZE1 = 3, 7, 11, 12, 15, 17, 60
_BLOCK2, _SIZE2 = 23, 28
_ALLOWED_OPTIONS = frozenset({_URI_HOST, _URI_PORT, _URI_PATH, _CONTENT_FORMAT, _URI_QUERY, _ACCEPT, _SIZE1})
_ALLOWED_IN_GET = _ALLOWED_OPTIONS | {_BLOCK2, _SIZE2}
_ETAG, _LOCATION_PATH, _RESPONSE_CONTENT_FORMAT, _MAX_AGE = 4, 8, 12, 14


@dataclass(frozen=True, slots=True)
class FastRequest:
    """A confirmable request this path takes, as parsed from its datagram."""

    message_id: int
    """Message ID, echoed by the piggybacked ACK."""
    token: bytes
    """Token, echoed by the response."""
    method: str
    """``POST`` or ``DELETE``."""
    uri_path: tuple[str, ...]
    """Uri-Path segments."""
    query: tuple[str, ...]
    """Uri-Query options in order."""
    content_format: int | None
    """Content-Format, None when absent."""
    payload: bytes
    """The payload after the marker."""
    block2: tuple[int, int] | None = None
    """A GET's Block2 option: (block number, size exponent); None without one."""
    size2: bool = False
    """A GET asked for Size2."""


def _uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _extended(nibble: int, data: bytes, position: int) -> tuple[int | None, int]:
    """An option delta or length nibble with its extended bytes (RFC 7252 §3.1); None for
    the reserved 15."""
    if nibble < 13:
        return nibble, position
    if nibble == 13:
        return data[position] + 13, position + 1
    if nibble == 14:
        return _uint(data[position:position + 2]) + 269, position + 2
    return None, position


def parse_request(data: bytes) -> FastRequest | None:
    """The request in ``data`` when this path takes it, else None (aiocoap will, and answers
    a malformed one as it does)."""
    try:
        return _parse_request(data)
    except IndexError:  # an option header cut short
        return None


def _parse_request(data: bytes) -> FastRequest | None:
    if len(data) < 4 or data[0] >> 6 != 1 or (data[0] >> 4) & 3 != _CON:
        return None
    method = _METHODS.get(data[1])
    token_length = data[0] & 0x0F
    if method is None or token_length > 8 or len(data) < 4 + token_length:
        return None
    allowed = _ALLOWED_IN_GET if method == "GET" else _ALLOWED_OPTIONS
    position, option, end = 4 + token_length, 0, len(data)
    path: list[str] = []
    query: list[str] = []
    content_format = block2 = None
    size2 = False
    while position < end:
        head = data[position]
        if head == 0xFF:
            if position + 1 == end:
                return None  # a payload marker with no payload is a format error (§3)
            break
        delta, position = _extended(head >> 4, data, position + 1)
        length, position = _extended(head & 0x0F, data, position)
        if delta is None or length is None:
            return None
        option += delta
        value = data[position:position + length]
        position += length
        if position > end or option not in allowed:
            return None
        if option == _URI_PATH or option == _URI_QUERY:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return None
            (path if option == _URI_PATH else query).append(text)
        elif option == _CONTENT_FORMAT:
            if length > 2:
                return None
            content_format = _uint(value)
        elif option == _BLOCK2:
            if length > 3 or block2 is not None or value[-1:] and value[-1] & 0x07 == 7:  # SZX 7 is reserved
                return None
            number = _uint(value)
            block2 = (number >> 4, number & 0x07)
        elif option == _SIZE2:
            size2 = True
    if not path or (method != "GET" and path[0] not in _TAKEN_PATHS):
        return None
    return FastRequest(_uint(data[2:4]), bytes(data[4:4 + token_length]), method, tuple(path), tuple(query),
                       content_format, bytes(data[position + 1:]) if position < end else b"", block2, size2)


def option_bytes(number: int, previous: int, value: bytes) -> bytes:
    """One option, delta-encoded after option number ``previous`` (RFC 7252 §3.1)."""
    def nibble(n: int) -> tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes((n - 13,))
        return 14, (n - 269).to_bytes(2, "big")

    delta, delta_extra = nibble(number - previous)
    length, length_extra = nibble(len(value))
    return bytes(((delta << 4) | length,)) + delta_extra + length_extra + value


def uint_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def encode_response(request: FastRequest, code: str, payload: bytes = b"", *, location_path: tuple[str, ...] = (),
                    content_format: int | None = None, max_age: int | None = None, etag: bytes = b"",
                    block2: tuple[int, bool, int] | None = None, size2: int | None = None) -> bytes:
    """The piggybacked ACK answering ``request`` with dotted ``code`` (e.g. ``"2.01"``);
    ``block2`` is (number, more, size exponent)."""
    major, minor = code.split(".")
    out = bytearray((0x40 | (_ACK << 4) | len(request.token), (int(major) << 5) | int(minor)))
    out += request.message_id.to_bytes(2, "big") + request.token
    previous = 0
    if etag:
        out += option_bytes(_ETAG, previous, etag)
        previous = _ETAG
    for segment in location_path:
        out += option_bytes(_LOCATION_PATH, previous, segment.encode())
        previous = _LOCATION_PATH
    if content_format is not None:
        out += option_bytes(_RESPONSE_CONTENT_FORMAT, previous, uint_bytes(content_format))
        previous = _RESPONSE_CONTENT_FORMAT
    if max_age is not None:
        out += option_bytes(_MAX_AGE, previous, uint_bytes(max_age))
        previous = _MAX_AGE
    if block2 is not None:
        number, more, exponent = block2
        out += option_bytes(_BLOCK2, previous, uint_bytes(number << 4 | more << 3 | exponent))
        previous = _BLOCK2
    if size2 is not None:
        out += option_bytes(_SIZE2, previous, uint_bytes(size2))
    if payload:
        out += b"\xff" + payload
    return bytes(out)


_PENDING = b""
"""An exchange whose answer is still being made (an answer always has at least 4 bytes)."""


class Exchanges:
    """Answers by (peer, Message ID) for :data:`EXCHANGE_LIFETIME_S`, oldest first, at most
    ``limit`` of them (a peer cycling Message IDs evicts the oldest, not memory)."""

    def __init__(self, limit: int = 200_000, lifetime: float = EXCHANGE_LIFETIME_S) -> None:
        self._answers: OrderedDict[tuple[Any, ...], tuple[float, bytes]] = OrderedDict()
        self._limit = limit
        self._lifetime = lifetime

    def __len__(self) -> int:
        return len(self._answers)

    def seen(self, key: tuple[Any, ...], now: float) -> bytes | None:
        """The answer given to ``key`` (b"" while it is being made), None for a new exchange."""
        self._expire(now)
        found = self._answers.get(key)
        return None if found is None else found[1]

    def start(self, key: tuple[Any, ...], now: float) -> None:
        self._answers[key] = (now + self._lifetime, _PENDING)
        while len(self._answers) > self._limit:
            self._answers.popitem(last=False)

    def finish(self, key: tuple[Any, ...], answer: bytes) -> None:
        """Keep ``answer`` for duplicates, until the exchange started expires."""
        found = self._answers.get(key)
        if found is not None:
            self._answers[key] = (found[0], answer)

    def forget(self, key: tuple[Any, ...]) -> None:
        self._answers.pop(key, None)

    def _expire(self, now: float) -> None:
        answers = self._answers
        while answers:
            key, (expires, _) = next(iter(answers.items()))
            if expires > now:
                return
            del answers[key]


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the adapter answers instead of handling a request (rate limit, plain CoAP refused)."""

    code: str
    payload: bytes
    max_age: int | None = None


class FastRequests:
    """Feeds taken datagrams to the handler and sends the answers back.

    ``peer(address, pktinfo)`` gives the registration address (``host:port``) of a
    sender; ``refusal(address)`` a :class:`Refusal` or None (checked once per exchange,
    never for a duplicate); ``download(address, request)`` the block a GET fetches (a
    :class:`~.blockwise.BlockAnswer`, or the resolver's refusal), None for a GET that
    is no download; ``send(data, pktinfo, address)`` sends one datagram.
    """

    def __init__(self, handler: Callable[[IncomingRequest], Awaitable[OutgoingResponse]], *,
                 peer: Callable[[Any, bytes | None], str], refusal: Callable[[str], Refusal | None],
                 download: Callable[[str, FastRequest], BlockAnswer | OutgoingResponse | None],
                 send: Callable[[bytes, bytes | None, Any], None], clock: Callable[[], float], log=None) -> None:
        self._handler = handler
        self._download = download
        self._peer = peer
        self._refusal = refusal
        self._send = send
        self._clock = clock
        self._log = log or structlog.get_logger(__name__)
        self.exchanges = Exchanges()
        """Answers kept for duplicates."""
        self._tasks: set[asyncio.Task] = set()
        self.taken = 0
        """Requests answered on this path (duplicates not counted)."""

    def take(self, data: bytes, pktinfo: bytes | None, address: Any) -> bool:
        """Handle ``data`` from ``address`` if this path takes it; False leaves it to aiocoap."""
        if pktinfo is not None and _multicast(pktinfo):
            return False
        request = parse_request(data)
        if request is None:
            return False
        if request.method == "GET":
            return self._serve(request, pktinfo, address)
        key = (address[0], address[1], request.message_id)
        now = self._clock()
        answer = self.exchanges.seen(key, now)
        if answer is not None:
            if answer:
                self._send(answer, pktinfo, address)
            return True
        peer = self._peer(address, pktinfo)
        refusal = self._refusal(peer)
        if refusal is not None:  # not kept: a repeat is decided anew, as on aiocoap's path
            self._send(encode_response(request, refusal.code, refusal.payload, max_age=refusal.max_age),
                       pktinfo, address)
            return True
        self.exchanges.start(key, now)
        task = asyncio.get_running_loop().create_task(self._answer(key, request, peer, pktinfo, address),
                                                      name="coap-fast-request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.taken += 1
        return True

    def _serve(self, request: FastRequest, pktinfo: bytes | None, address: Any) -> bool:
        answer = self._download(self._peer(address, pktinfo), request)
        if answer is None:
            return False
        if isinstance(answer, OutgoingResponse):
            data = encode_response(request, answer.code, answer.payload)
        else:
            data = encode_response(request, answer.code, answer.payload, content_format=answer.content_format,
                                   etag=answer.etag, block2=answer.block2, size2=answer.size2)
        self._send(data, pktinfo, address)
        return True

    async def _answer(self, key: tuple[Any, ...], request: FastRequest, peer: str, pktinfo: bytes | None,
                      address: Any) -> None:
        incoming = IncomingRequest(method=request.method, uri_path=request.uri_path, query=request.query,
                                   content_format=request.content_format, payload=request.payload, address=peer)
        try:
            response = await self._handler(incoming)
            data = encode_response(request, response.code, response.payload, location_path=response.location_path,
                                   content_format=response.content_format)
        except Exception:  # the handler answers its own errors; this is a bug, and must not end the exchange silently
            self._log.exception("fast_request_failed", path="/".join(request.uri_path))
            data = encode_response(request, "5.00", b"internal server error")
        self.exchanges.finish(key, data)
        self._send(data, pktinfo, address)

    async def stop(self) -> None:
        """Wait for answers being made (the handler is still there)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _multicast(pktinfo: bytes) -> bool:
    """Whether an IPV6_PKTINFO destination is multicast (ff00::/8, or v4-mapped 224.0.0.0/4)."""
    if pktinfo[0] == 0xFF:
        return True
    return pktinfo[:12] == b"\x00" * 10 + b"\xff\xff" and pktinfo[12] & 0xF0 == 0xE0
