"""Block1 reassembly of incoming request bodies, bounded per peer and in all.

The ledger without sockets (time passed in), then the CoAP adapter over loopback
driven by raw datagrams: a flood of parallel uploads from one peer, gaps, repeats,
the rate limit paid per block and plain CoAP refused at block 0 in secure-only mode.
The limits are checked with the adapter's own counters (``block1_stats``), not with
wall time. ``benchmarks/block1_flood.py`` runs the full-size flood against the daemon.
"""

from __future__ import annotations

import asyncio
import logging

import aiocoap
import pytest
from aiocoap import Code, Message, optiontypes

from lwm2m_server.transport.block1 import Block1Ledger, Block1Limits
from lwm2m_server.transport.coap import CoapAdapter, IncomingRequest, OutgoingResponse
from lwm2m_server.transport.ratelimit import RateLimiter

KIB = 1024


# --------------------------------------------------------------------------- the ledger, sans-I/O


def ledger(**limits) -> Block1Ledger:
    return Block1Ledger(Block1Limits(**{"bodies_per_peer": 2, "bytes_per_peer": 4 * KIB, "bodies": 3,
                                        "bytes": 6 * KIB, "idle_timeout_s": 10.0, **limits}), max_body=3 * KIB)


def test_a_peer_past_its_bodies_gets_429_until_its_stalest_body_expires():
    book = ledger()
    assert book.start("a", "p:1", KIB, now=0.0) is None
    assert book.start("b", "p:1", KIB, now=4.0) is None
    refusal = book.start("c", "p:1", KIB, now=5.0)
    assert (refusal.code, refusal.max_age) == ("4.29", 5)  # body "a" goes at 10 s
    assert book.start("c", "p:2", KIB, now=5.0) is None  # another peer is not held back
    assert book.start("d", "p:1", KIB, now=10.0) is None  # "a" expired: room again
    assert (len(book), book.expired, book.peer_bodies("p:1")) == (3, 1, 2)


def test_a_peer_past_its_bytes_gets_429_and_the_body_is_dropped():
    book = ledger()
    assert book.start("a", "p:1", 2 * KIB, now=0.0) is None
    assert book.start("b", "p:1", 2 * KIB, now=0.0) is None
    refusal = book.add("a", KIB, now=1.0)  # 3 KiB fits one body, but 5 KiB for this peer: over its 4 KiB
    assert refusal.code == "4.29" and "a" not in book
    assert (book.peer_bytes("p:1"), book.bytes) == (2 * KIB, 2 * KIB)


def test_the_server_past_its_bodies_or_bytes_answers_503_with_max_age():
    book = ledger()
    for key, peer in (("a", "p:1"), ("b", "p:2"), ("c", "p:3")):
        assert book.start(key, peer, KIB, now=0.0) is None
    refusal = book.start("d", "p:4", KIB, now=2.0)
    assert (refusal.code, refusal.max_age) == ("5.03", 8)
    book = ledger(bodies=10)
    assert book.start("a", "p:1", 3 * KIB, now=0.0) is None
    assert book.start("b", "p:2", 3 * KIB, now=0.0) is None
    assert book.start("c", "p:3", 16, now=0.0).code == "5.03"  # 6 KiB held in all


def test_a_body_over_the_limit_gets_413_with_size1_and_nothing_is_held():
    book = ledger()
    assert book.start("a", "p:1", 2 * KIB, now=0.0) is None
    refusal = book.add("a", 2 * KIB, now=1.0)
    assert (refusal.code, refusal.size1) == ("4.13", 3 * KIB)
    assert (len(book), book.bytes, book.peer_bodies("p:1")) == (0, 0, 0)


def test_idle_bodies_are_dropped_and_their_next_block_gets_408():
    book = ledger()
    assert book.start("a", "p:1", KIB, now=0.0) is None
    assert book.add("a", KIB, now=9.0) is None  # activity keeps it
    assert book.next_expiry() == 19.0
    assert book.expire(18.9) == 0 and book.expire(19.0) == 1
    assert book.add("a", KIB, now=19.5).code == "4.08"
    assert (len(book), book.bytes) == (0, 0)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="bodies_per_peer"):
        Block1Limits(bodies_per_peer=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        Block1Limits(idle_timeout_s=float("inf"))


# --------------------------------------------------------------------------- the adapter over loopback


class RawPeer(asyncio.DatagramProtocol):
    """A CoAP peer on one UDP port that sends what it is told, blocks included, and
    pairs each answer with its request by token."""

    def __init__(self) -> None:
        self.transport = None
        self.waiting: dict[bytes, asyncio.Future] = {}
        self.mid = 0

    @classmethod
    async def open(cls, port: int) -> RawPeer:
        peer = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: peer, remote_addr=("127.0.0.1", port))
        return peer

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        answer = Message.decode(data)
        if answer.mtype == aiocoap.CON:  # a separate response: acknowledged, or the next one waits for it
            self.transport.sendto(bytes((0x60, 0, data[2], data[3])))
        waiter = self.waiting.pop(bytes(answer.token), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    async def send(self, token: bytes, number: int | None, more: bool, payload: bytes, *, path=("dp",),
                   query=(), szx: int = 6, mtype=aiocoap.CON) -> Message:
        self.mid = (self.mid + 1) & 0xFFFF
        message = Message(code=Code.POST, payload=payload)
        message.mtype, message.mid, message.token = mtype, self.mid, token
        message.opt.uri_path = path
        if query:
            message.opt.uri_query = query
        if number is not None:  # None: no Block1 option
            message.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(number, more, szx)
        self.waiting[token] = asyncio.get_running_loop().create_future()
        self.transport.sendto(message.encode())
        async with asyncio.timeout(5):
            return await self.waiting[token]

    async def upload(self, token: bytes, body: bytes, block: int = KIB, **options) -> Message:
        """Block by block while the answer is 2.31; the first other answer."""
        szx = block.bit_length() - 5
        chunks = [body[i:i + block] for i in range(0, len(body), block)] or [b""]
        for number, chunk in enumerate(chunks):
            answer = await self.send(token, number, number + 1 < len(chunks), chunk, szx=szx, **options)
            if answer.code != Code.CONTINUE:
                return answer
        return answer

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
async def make_adapter():
    made: list[CoapAdapter] = []

    async def make(**options) -> CoapAdapter:
        seen: list[IncomingRequest] = []

        async def handler(request: IncomingRequest) -> OutgoingResponse:
            seen.append(request)
            if request.uri_path == ("rd",):
                return OutgoingResponse("2.01", location_path=("rd", "r1"))
            return OutgoingResponse("2.04")

        adapter = CoapAdapter(handler, host="127.0.0.1", port=0, **options)
        await adapter.start()
        adapter.seen = seen
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.stop()


async def test_a_flood_of_parallel_uploads_from_one_peer_stays_within_its_limits(make_adapter, caplog):
    """40 uploads of 8 KiB in 1 KiB blocks at once from one port, the rate limit off: the
    peer never has more than its 3 bodies and 12 KiB in assembly, every other upload
    gets a prompt 4.29 with Max-Age, a Register from another port meanwhile gets 2.01,
    and bodies left idle are dropped without any further block."""
    limits = Block1Limits(bodies_per_peer=3, bytes_per_peer=12 * KIB, bodies=50, bytes=64 * KIB, idle_timeout_s=0.5)
    adapter = await make_adapter(block1_limits=limits, max_request_body=8 * KIB)
    flood, device = await RawPeer.open(adapter.port), await RawPeer.open(adapter.port)
    try:
        uploads = [flood.upload(i.to_bytes(2, "big"), bytes([i]) * 8 * KIB, query=(f"ep=flood-{i}",))
                   for i in range(40)]
        register = device.upload(b"reg", b"</3/0>," * 300, path=("rd",), query=("ep=device-1",))
        *answers, registered = await asyncio.gather(*uploads, register)
        codes = [answer.code.dotted for answer in answers]
        stats = adapter.block1_stats
        assert registered.code == Code.CREATED
        assert b"</3/0>," * 300 in [request.payload for request in adapter.seen]
        assert set(codes) <= {"2.04", "4.29"} and codes.count("4.29") >= 37 and "2.04" in codes
        assert all(a.opt.max_age >= 1 for a in answers if a.code == Code.TOO_MANY_REQUESTS)
        assert stats.peak_bodies_per_peer <= 3 and stats.peak_bytes_per_peer <= 12 * KIB
        assert stats.peak_bytes <= 12 * KIB + 3 * KIB  # the flood's bodies and the Register's
        assert stats.refused["4.29"] >= 37 and (stats.bodies, stats.bytes) == (0, 0)

        for token in (b"s1", b"s2"):  # two bodies left after their first block
            assert (await flood.send(token, 0, True, bytes(KIB), query=(token.decode(),))).code == Code.CONTINUE
        assert adapter.block1_stats.bodies == 2
        await asyncio.sleep(1.2)  # idle past the timeout: dropped with no further block to notice
        stats = adapter.block1_stats
        assert (stats.bodies, stats.bytes, stats.expired) == (0, 0, 2)
        late = await flood.send(b"s1", 1, True, bytes(KIB), query=("s1",))
        assert late.code == Code.REQUEST_ENTITY_INCOMPLETE  # its body is gone
    finally:
        flood.close()
        device.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_every_block_pays_the_rate_limit_and_a_refused_block_can_be_sent_again(make_adapter):
    adapter = await make_adapter(rate_limiter=RateLimiter(rate=20, burst=4))
    peer = await RawPeer.open(adapter.port)
    try:
        answers = [await peer.send(b"t", n, True, bytes([n]) * 64, szx=2) for n in range(5)]
        assert [a.code for a in answers] == [Code.CONTINUE] * 4 + [Code.TOO_MANY_REQUESTS]
        assert answers[-1].opt.max_age == 1
        assert adapter.block1_stats.bodies == 1  # the body waits for the refused block
        await asyncio.sleep(0.1)  # 20 tokens a second: one is back
        final = await peer.send(b"t", 4, False, bytes([4]) * 10, szx=2)
        assert final.code == Code.CHANGED
        assert adapter.seen[-1].payload == b"".join(bytes([n]) * 64 for n in range(4)) + bytes([4]) * 10
    finally:
        peer.close()


async def test_a_gap_gets_408_without_a_traceback_and_the_server_goes_on(make_adapter, caplog):
    adapter = await make_adapter()
    peer = await RawPeer.open(adapter.port)
    try:
        assert (await peer.send(b"g", 0, True, bytes(KIB))).code == Code.CONTINUE
        gap = await peer.send(b"g", 2, True, bytes(KIB))
        assert gap.code == Code.REQUEST_ENTITY_INCOMPLETE and b"byte 1024" in gap.payload
        orphan = await peer.send(b"o", 5, False, b"end")  # no block 0 ever
        assert orphan.code == Code.REQUEST_ENTITY_INCOMPLETE
        short = await peer.send(b"s", 0, True, bytes(100))  # "more" blocks must be full size
        assert short.code == Code.BAD_REQUEST
        assert (await peer.upload(b"ok", bytes(range(256)) * 10)).code == Code.CHANGED
        assert adapter.seen[-1].payload == bytes(range(256)) * 10
        assert adapter.block1_stats.bodies == 0
    finally:
        peer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_block_sent_again_with_a_new_message_id_is_answered_again_and_added_once(make_adapter):
    adapter = await make_adapter()
    peer = await RawPeer.open(adapter.port)
    try:
        assert (await peer.send(b"d", 0, True, b"a" * 16, szx=0)).code == Code.CONTINUE
        assert (await peer.send(b"d", 1, True, b"b" * 16, szx=0)).code == Code.CONTINUE
        assert (await peer.send(b"d", 1, True, b"b" * 16, szx=0)).code == Code.CONTINUE  # its 2.31 was lost
        assert (await peer.send(b"d", 2, False, b"c", szx=0)).code == Code.CHANGED
        assert adapter.seen[-1].payload == b"a" * 16 + b"b" * 16 + b"c"
    finally:
        peer.close()


async def test_bodies_from_many_ports_meet_the_server_wide_limits_with_503(make_adapter):
    limits = Block1Limits(bodies_per_peer=2, bytes_per_peer=4 * KIB, bodies=4, bytes=8 * KIB, idle_timeout_s=60)
    adapter = await make_adapter(block1_limits=limits)
    peers = [await RawPeer.open(adapter.port) for _ in range(6)]
    try:
        answers = [await peer.send(b"m", 0, True, bytes(KIB)) for peer in peers]
        assert [a.code for a in answers] == [Code.CONTINUE] * 4 + [Code.SERVICE_UNAVAILABLE] * 2
        assert 55 <= answers[-1].opt.max_age <= 60  # when the stalest body would be dropped
        assert adapter.block1_stats.peak_bodies == 4
        # requests in one datagram are not held, so they still go through, with Block1 or without
        for number in (None, 0):
            whole = await peers[5].send(b"p", number, False, b"</3/0>", path=("rd",), query=("ep=x",))
            assert whole.code == Code.CREATED
    finally:
        for peer in peers:
            peer.close()


async def test_secure_only_refuses_plain_coap_at_block_0_and_holds_nothing(make_adapter):
    adapter = await make_adapter(plain_allowed=False)
    peer = await RawPeer.open(adapter.port)
    try:
        first = await peer.send(b"s", 0, True, bytes(KIB), path=("rd",), query=("ep=x",))
        assert first.code == Code.FORBIDDEN and b"plain CoAP refused" in first.payload
        assert adapter.block1_stats.peak_bodies == 0
    finally:
        peer.close()
