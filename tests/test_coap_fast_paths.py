"""The plain-UDP fast paths (transport/fast_requests.py, fast_client.py): bytes built by
hand from RFC 7252 §3, and the exchanges against raw sockets, so nothing here leans
on aiocoap's encoder or on our own.

- a Register is parsed from its bytes; what the path leaves to aiocoap (NON, Block1,
  an unknown option, a truncated option, a payload marker with nothing after it,
  another path) is None;
- the answer is a piggybacked ACK with exact bytes; a retransmission gets the same
  bytes and the handler runs once; a duplicate while the answer is being made is
  not answered twice;
- requests to a device: piggybacked answer; empty ACK then a confirmable separate
  response, which is acknowledged (again when the device repeats it); a Reset; a
  read answered with Block2 is still returned whole; a push goes block by block.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import dataclass

import pytest

from lwm2m_server.transport.coap import CoapAdapter, DeviceUnreachable, IncomingRequest, OutgoingResponse
from lwm2m_server.transport.fast_client import MessageIds
from lwm2m_server.transport.fast_requests import Exchanges, FastRequest, encode_response, parse_request

# POST /rd?ep=dev1&lt=60, CON, MID 0x1234, token 0xABCD, Content-Format 40, payload </3/0>
REGISTER = bytes.fromhex("42021234abcd") + bytes.fromhex("b2 7264 11 28 37 65703d64657631 05 6c743d3630".replace(" ", "")) \
    + b"\xff</3/0>"


def test_a_register_is_parsed_from_its_bytes():
    request = parse_request(REGISTER)
    assert request == FastRequest(0x1234, b"\xab\xcd", "POST", ("rd",), ("ep=dev1", "lt=60"), 40, b"</3/0>")


@pytest.mark.parametrize("data, why", [
    (bytes((0x52,)) + REGISTER[1:], "NON"),
    (REGISTER[:6] + bytes.fromhex("b2 7264 d1 03 06".replace(" ", "")) + b"\xffx", "Block1 (option 27)"),
    (REGISTER[:6] + bytes.fromhex("b2 7264 c1 06".replace(" ", "")), "Block2 (option 23)"),
    (REGISTER[:6] + bytes.fromhex("b2 7264 d0".replace(" ", "")), "an option header cut short"),
    (REGISTER[:6] + bytes.fromhex("b2 7264 ff".replace(" ", "")), "a payload marker with no payload"),
    (REGISTER[:6] + bytes.fromhex("b2 7878".replace(" ", "")), "a path other than rd or dp"),
    (REGISTER[:6] + bytes.fromhex("b2 ff72".replace(" ", "")), "a Uri-Path that is not UTF-8"),
    (bytes((0x49,)) + REGISTER[1:], "a token longer than 8 bytes"),
    (bytes((0x42, 0x03)) + REGISTER[2:], "a PUT"),
    (bytes((0x42, 0x01)) + REGISTER[2:6] + bytes.fromhex("b2 7264 c1 07".replace(" ", "")), "Block2 with SZX 7"),
    (REGISTER[:6] + bytes.fromhex("b2 7264 f0".replace(" ", "")), "option delta 15"),
])
def test_what_the_path_leaves_to_aiocoap(data, why):
    assert parse_request(data) is None, why


def test_the_answer_is_a_piggybacked_ack_with_exact_bytes():
    request = parse_request(REGISTER)
    assert encode_response(request, "2.01", location_path=("rd", "abc")) == bytes.fromhex(
        "6241" "1234" "abcd" "82" "7264" "03" "616263")
    # Content-Format 0 is an empty uint; Max-Age follows with delta 2; a payload after 0xFF
    assert encode_response(request, "4.29", b"slow", content_format=0, max_age=300) == bytes.fromhex(
        "629d" "1234" "abcd" "c0" "22" "012c" "ff") + b"slow"


def test_exchanges_forget_after_their_lifetime_and_beyond_their_limit():
    exchanges = Exchanges(limit=2, lifetime=10)
    exchanges.start(("a", 1, 7), now=0)
    assert exchanges.seen(("a", 1, 7), now=1) == b""  # being answered
    exchanges.finish(("a", 1, 7), b"answer")
    assert exchanges.seen(("a", 1, 7), now=9) == b"answer"
    assert exchanges.seen(("a", 1, 7), now=10) is None
    for mid in (1, 2, 3):
        exchanges.start(("a", 1, mid), now=20)
    assert exchanges.seen(("a", 1, 1), now=20) is None and len(exchanges) == 2


def test_message_ids_count_per_peer_from_a_random_start_and_forget_the_least_recent_peer():
    ids = MessageIds(limit=2, rng=random.Random(7))
    first = ids.next("a")
    assert [ids.next("a") for _ in range(3)] == [(first + n) & 0xFFFF for n in (1, 2, 3)]
    other = ids.next("b")
    assert ids.next("a") == (first + 4) & 0xFFFF  # b's messages take nothing from a's count
    assert ids.next("b") == (other + 1) & 0xFFFF
    ids.next("c")  # a third peer: "a", least recently used, is forgotten
    assert len(ids) == 2 and ids.next("b") == (other + 2) & 0xFFFF
    wrapped = MessageIds(rng=random.Random(1))
    start = wrapped.next("d")
    assert [wrapped.next("d") for _ in range(0xFFFF)][-1] == (start - 1) & 0xFFFF  # 65,536 before it repeats


@dataclass
class Answering:
    delay: float = 0.0
    calls: int = 0

    async def __call__(self, request: IncomingRequest) -> OutgoingResponse:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return OutgoingResponse("2.01", location_path=("rd", "abc"))


async def _raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _receive(sock: socket.socket, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 2048), timeout)


async def test_a_retransmitted_register_gets_the_same_bytes_and_is_handled_once():
    handler = Answering()
    adapter = CoapAdapter(handler, host="127.0.0.1", port=0)
    await adapter.start()
    sock = await _raw_socket()
    try:
        sock.sendto(REGISTER, ("127.0.0.1", adapter.port))
        first = await _receive(sock)
        assert first == bytes.fromhex("62411234abcd827264") + b"\x03abc"
        sock.sendto(REGISTER, ("127.0.0.1", adapter.port))
        assert await _receive(sock) == first and handler.calls == 1
    finally:
        sock.close()
        await adapter.stop()


async def test_a_duplicate_while_the_answer_is_made_is_not_answered_twice():
    handler = Answering(delay=0.3)
    adapter = CoapAdapter(handler, host="127.0.0.1", port=0)
    await adapter.start()
    sock = await _raw_socket()
    try:
        sock.sendto(REGISTER, ("127.0.0.1", adapter.port))
        await asyncio.sleep(0.05)
        sock.sendto(REGISTER, ("127.0.0.1", adapter.port))
        assert (await _receive(sock))[:4] == bytes.fromhex("62411234")
        with pytest.raises(TimeoutError):
            await _receive(sock, timeout=0.5)
        assert handler.calls == 1
    finally:
        sock.close()
        await adapter.stop()


@dataclass(frozen=True)
class Read:
    method: str = "GET"
    uri_path: tuple[str, ...] = ("3", "0", "0")
    query: tuple[str, ...] = ()
    content_format: int | None = None
    accept: int | None = None
    payload: bytes = b""
    observe: int | None = None


def _header(data: bytes) -> tuple[int, int, int, bytes]:
    """(type, code, message id, token) of a datagram."""
    return (data[0] >> 4) & 3, data[1], struct.unpack("!H", data[2:4])[0], data[4:4 + (data[0] & 0x0F)]


def _answer(kind: int, code: int, mid: int, token: bytes, options: bytes = b"", payload: bytes = b"") -> bytes:
    return bytes((0x40 | kind << 4 | len(token), code)) + struct.pack("!H", mid) + token + options \
        + (b"\xff" + payload if payload else b"")


@pytest.fixture
async def registered():
    """An adapter and a raw-socket device it has heard from (so requests take the fast path)."""
    adapter = CoapAdapter(Answering(), host="127.0.0.1", port=0)
    await adapter.start()
    sock = await _raw_socket()
    sock.sendto(REGISTER, ("127.0.0.1", adapter.port))
    await _receive(sock)
    yield adapter, sock, f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    await adapter.stop()


async def test_a_read_answered_piggybacked(registered):
    adapter, sock, address = registered
    asked = asyncio.ensure_future(adapter.request(address, Read(), timeout=5))
    kind, code, mid, token = _header(await _receive(sock))
    assert (kind, code) == (0, 1)  # CON GET
    sock.sendto(_answer(2, 0x45, mid, token, b"\xc0", b"Acme"), ("127.0.0.1", adapter.port))
    response = await asked
    assert (response.code, response.content_format, response.payload) == ("2.05", 0, b"Acme")


@pytest.mark.parametrize("request_, options", [
    # Uri-Path 3/0/0 (11), Uri-Query pmin=10 (delta 4)
    (Read(method="PUT", query=("pmin=10",)), bytes.fromhex("b133 0130 0130 47") + b"pmin=10"),
    # no Uri-Path (the root), Content-Format 112 (12), Accept 112 (delta 5)
    (Read(method="FETCH", uri_path=(), content_format=112, accept=112, payload=b"\x81\xa1\x00d/3/0"),
     bytes.fromhex("c170 5170")),
], ids=["write-attributes", "read-composite"])
async def test_a_request_goes_with_exact_bytes(registered, request_, options):
    """RFC 7252 §3.1: options in order of their numbers, each as a delta from the last."""
    adapter, sock, address = registered
    asked = asyncio.ensure_future(adapter.request(address, request_, timeout=5))
    data = await _receive(sock)
    kind, code, mid, token = _header(data)
    assert (kind, code) == (0, {"PUT": 3, "FETCH": 5}[request_.method])
    assert data[4 + len(token):] == options + (b"\xff" + request_.payload if request_.payload else b"")
    sock.sendto(_answer(2, 0x44, mid, token), ("127.0.0.1", adapter.port))
    assert (await asked).code == "2.04"


async def test_a_separate_response_is_acknowledged_also_when_the_device_repeats_it(registered):
    adapter, sock, address = registered
    asked = asyncio.ensure_future(adapter.request(address, Read(), timeout=5))
    _, _, mid, token = _header(await _receive(sock))
    sock.sendto(_answer(2, 0, mid, b""), ("127.0.0.1", adapter.port))  # empty ACK
    separate = _answer(0, 0x45, 0x7777, token, b"", b"late")
    sock.sendto(separate, ("127.0.0.1", adapter.port))
    assert await _receive(sock) == bytes.fromhex("60007777")  # its empty ACK
    assert (await asked).payload == b"late"
    sock.sendto(separate, ("127.0.0.1", adapter.port))  # our ACK was lost: acknowledged again
    assert await _receive(sock) == bytes.fromhex("60007777")


@pytest.mark.parametrize("request_", [Read(), Read(method="POST", uri_path=("5", "0", "2"))], ids=["read", "execute"])
async def test_a_device_is_not_sent_a_message_id_again_when_the_shared_counter_comes_round(registered, request_):
    """A device that deduplicates by Message ID (RFC 7252 §4.5) answers a request with a
    known ID as a repeat: its old response, whose token the new request does not have. The
    adapter's next request to it, after aiocoap's one counter came round (as after 65,536
    messages to other devices), still carries a new ID and is answered."""
    adapter, sock, address = registered
    answered: dict[int, bytes] = {}

    async def device() -> None:
        while True:
            data = await _receive(sock, timeout=10)
            kind, code, mid, token = _header(data)
            if mid not in answered:
                answered[mid] = _answer(2, 0x45, mid, token, b"\xc0", f"read {len(answered)}".encode())
            sock.sendto(answered[mid], ("127.0.0.1", adapter.port))

    serving = asyncio.ensure_future(device())
    try:
        assert (await adapter.request(address, request_, timeout=5)).payload == b"read 0"
        adapter._udp.token_interface.message_id = next(iter(answered))  # aiocoap's counter, come round
        assert (await adapter.request(address, request_, timeout=5)).payload == b"read 1"
        assert len(answered) == 2
    finally:
        serving.cancel()


async def test_a_reset_makes_the_device_unreachable(registered):
    adapter, sock, address = registered
    asked = asyncio.ensure_future(adapter.request(address, Read(), timeout=5))
    _, _, mid, _ = _header(await _receive(sock))
    sock.sendto(_answer(3, 0, mid, b""), ("127.0.0.1", adapter.port))
    with pytest.raises(DeviceUnreachable, match="reset"):
        await asked


async def test_a_read_answered_block_by_block_comes_back_whole(registered):
    adapter, sock, address = registered
    body = bytes(range(256)) * 5  # 1280 bytes: two 1024-byte blocks
    asked = asyncio.ensure_future(adapter.request(address, Read(), timeout=5))
    while not asked.done():
        try:
            data = await _receive(sock, timeout=1)
        except TimeoutError:
            continue
        kind, code, mid, token = _header(data)
        number = 1 if data.endswith(b"\xc1\x16") else 0  # Block2 option (23, after Uri-Path) asking block 1
        block = body[number * 1024:(number + 1) * 1024]
        more = number == 0
        block2 = bytes(((number << 4) | (more << 3) | 6,))
        sock.sendto(_answer(2, 0x45, mid, token, b"\xc1" + b"\x2a" + bytes((0xb1,)) + block2, block),
                    ("127.0.0.1", adapter.port))
    assert (await asked).payload == body


async def test_a_push_goes_block_by_block_with_exact_bytes(registered):
    """PUT /9/0/2 (Content-Format 42) of 2,100 bytes in 1,024-byte blocks, RFC 7959 §2.5:
    Uri-Path 9/0/2, Content-Format 42, Block1 (delta 15 after option 12), Size1 on block 0
    only (delta 33 after 27); the device answers 2.31 Continue, then 2.04 on the last block."""
    adapter, sock, address = registered
    package = bytes(range(256)) * 8 + b"x" * 52
    write = Read(method="PUT", uri_path=("9", "0", "2"), content_format=42, payload=package)
    asked = asyncio.ensure_future(adapter.request(address, write, timeout=5))
    path_and_format = bytes.fromhex("b139 0130 0132 112a")
    expected_options = [
        path_and_format + bytes.fromhex("d1020e" "d2140834"),  # block 0, more, SZX 6; Size1 2100
        path_and_format + bytes.fromhex("d1021e"),                # block 1, more
        path_and_format + bytes.fromhex("d10226"),                # block 2, last
    ]
    for number, options in enumerate(expected_options):
        data = await _receive(sock)
        kind, code, mid, token = _header(data)
        assert (kind, code) == (0, 3)  # CON PUT
        assert data[4 + len(token):] == options + b"\xff" + package[number * 1024:(number + 1) * 1024]
        last = number == len(expected_options) - 1
        block1 = bytes.fromhex("d10e") + bytes(((number << 4) | (0 if last else 8) | 6,))
        sock.sendto(_answer(2, 0x44 if last else 0x5F, mid, token, block1), ("127.0.0.1", adapter.port))
    assert (await asked).code == "2.04"


async def test_a_fetch_answered_block_by_block_repeats_its_body_and_refuses_a_changed_etag(registered):
    adapter, sock, address = registered
    body = b"\x81\xa1\x00d/3/0"  # SenML CBOR path list of a Read-Composite
    fetch = Read(method="FETCH", uri_path=(), content_format=112, accept=112, payload=body)
    asked = asyncio.ensure_future(adapter.request(address, fetch, timeout=5))
    requests = []
    while not asked.done():
        try:
            data = await _receive(sock, timeout=1)
        except TimeoutError:
            continue
        kind, code, mid, token = _header(data)
        requests.append(data)
        number = len(requests) - 1
        etag = bytes((number,))  # another ETag for the second block: the resource changed
        block2 = bytes(((number << 4) | (8 if number == 0 else 0) | 6,))
        options = b"\x41" + etag + b"\x81\x70" + b"\xb1" + block2  # ETag (4), Content-Format 112, Block2 (23)
        sock.sendto(_answer(2, 0x45, mid, token, options, b"x" * (1024 if number == 0 else 10)),
                    ("127.0.0.1", adapter.port))
    with pytest.raises(DeviceUnreachable, match="ETag"):
        await asked
    assert len(requests) == 2 and all(request.endswith(b"\xff" + body) for request in requests)


async def test_a_download_block_is_served_from_its_bytes(tmp_path):
    """GET /fw/m1 asking block 2 of 64 bytes (Block2 0x22) and Size2: the block, its ETag,
    Content-Format, Block2 with more set and Size2, in one piggybacked ACK."""
    from lwm2m_server.transport.messages import Download

    image = bytes(range(200))
    (tmp_path / "m1").write_bytes(image)
    download = Download(tmp_path / "m1", len(image), b"\x01\x02")
    adapter = CoapAdapter(Answering(), host="127.0.0.1", port=0,
                          downloads=lambda request: download if request.uri_path == ("fw", "m1") else None)
    await adapter.start()
    sock = await _raw_socket()
    try:
        get = bytes.fromhex("4101" "0042" "07" "b2" "6677" "02" "6d31" "c1" "22" "50")  # Block2 (23), Size2 (28)
        sock.sendto(get, ("127.0.0.1", adapter.port))
        assert await _receive(sock) == bytes.fromhex("6145" "0042" "07" "42" "0102" "81" "2a" "b1" "2a" "51" "c8") \
            + b"\xff" + image[128:192]
        assert adapter.stats.blocks_served == 1
    finally:
        sock.close()
        await adapter.stop()
