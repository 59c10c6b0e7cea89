"""One Message ID counter per device (the straggler of 1,000-device rollouts).

A push's delivery observes the update state (an Observe goes through aiocoap), then
writes the package block by block (the fast path). Each took its Message IDs from its
own counter: aiocoap's, shared by every peer, and the fast path's, per peer. When the
two stood close, a block got the ID of the Observe sent just before it, and the device
(which deduplicates by ID, RFC 7252 §4.5) answered the block with the Observe's stored
response: a token the block does not have, so the block went unanswered through all
its retransmissions (~93 s) before the delivery retried. The device is right; the
server broke §4.4 (an ID is not used again with the same endpoint within
EXCHANGE_LIFETIME). Here a raw-socket device deduplicates as the RFC says, and
aiocoap's counter is put where the device's per-peer counter stands.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from lwm2m_server.transport.coap import CoapAdapter, IncomingRequest, OutgoingResponse
from test_coap_fast_paths import REGISTER, Read

_OBSERVE = 6


async def _registered_handler(request: IncomingRequest) -> OutgoingResponse:
    return OutgoingResponse("2.01", location_path=("rd", "abc"))


def _option_numbers(data: bytes) -> set[int]:
    """The option numbers of a datagram (RFC 7252 §3.1)."""
    numbers, number, position = set(), 0, 4 + (data[0] & 0x0F)
    while position < len(data) and data[position] != 0xFF:
        delta, length = data[position] >> 4, data[position] & 0x0F
        position += 1
        extended = []
        for nibble in (delta, length):
            if nibble == 13:
                extended.append(data[position] + 13)
                position += 1
            elif nibble == 14:
                extended.append(int.from_bytes(data[position:position + 2], "big") + 269)
                position += 2
            else:
                extended.append(nibble)
        number += extended[0]
        numbers.add(number)
        position += extended[1]
    return numbers


class DedupDevice:
    """A device on a raw socket that answers each new (Message ID) request once and a
    repeat with the stored response, as aiocoap's message layer does (RFC 7252 §4.5)."""

    def __init__(self, sock: socket.socket, server: tuple[str, int]) -> None:
        self.sock, self.server = sock, server
        self.responses: dict[int, bytes] = {}
        self.tokens: dict[int, set[bytes]] = {}
        """Message ID -> the tokens of the requests that came with it."""
        self.answered = 0

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 2048)
            kind, code, mid = (data[0] >> 4) & 3, data[1], struct.unpack("!H", data[2:4])[0]
            token = data[4:4 + (data[0] & 0x0F)]
            if kind != 0 or not 1 <= code < 32:  # only confirmable requests
                continue
            self.tokens.setdefault(mid, set()).add(token)
            if mid not in self.responses:
                observe = b"\x61\x00" if _OBSERVE in _option_numbers(data) else b""  # Observe: 0 (one byte)
                self.responses[mid] = bytes((0x60 | len(token), 0x45)) + data[2:4] + token + observe \
                    + b"\xff" + f"answer {self.answered}".encode()
                self.answered += 1
            self.sock.sendto(self.responses[mid], self.server)


@pytest.fixture
async def device():
    adapter = CoapAdapter(_registered_handler, host="127.0.0.1", port=0)
    await adapter.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.sendto(REGISTER, ("127.0.0.1", adapter.port))  # heard from: reads take the fast path
    await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 2048), 2)
    fake = DedupDevice(sock, ("127.0.0.1", adapter.port))
    serving = asyncio.ensure_future(fake.serve())
    try:
        yield adapter, fake, f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        serving.cancel()
        sock.close()
        await adapter.stop()


async def test_an_observe_and_the_requests_after_it_never_share_a_message_id(device):
    """aiocoap's counter set to the ID the device's per-peer counter gives next: the
    Observe (aiocoap's path) and the read after it (the fast path) still get two IDs,
    and the read is answered (before: the read repeated the Observe's ID and got no
    answer it could take)."""
    adapter, fake, address = device
    assert (await adapter.request(address, Read(), timeout=5)).payload == b"answer 0"
    (first_mid,) = fake.responses
    adapter._udp.token_interface.message_id = (first_mid + 1) & 0xFFFF  # where the peer's counter stands
    first, observation = await adapter.observe(address, Read(uri_path=("9", "0", "7"), observe=0), timeout=5)
    assert first.payload == b"answer 1" and observation is not None
    read = await adapter.request(address, Read(uri_path=("9", "0", "2")), timeout=3)
    assert read.payload == b"answer 2"
    assert all(len(tokens) == 1 for tokens in fake.tokens.values()), fake.tokens
    assert sorted(fake.responses) == [(first_mid + k) & 0xFFFF for k in range(3)]  # one counter, in order
    adapter.release_observation(observation)


async def test_the_writes_after_an_observe_are_all_answered(device):
    """The delivery's order: Observe /9/0/7, then writes to /9/0/2 (as a push's blocks), aiocoap's
    counter standing where the device's counter stands."""
    adapter, fake, address = device
    await adapter.request(address, Read(), timeout=5)
    (first_mid,) = fake.responses
    adapter._udp.token_interface.message_id = (first_mid + 2) & 0xFFFF  # a block's ID, not the Observe's
    first, observation = await adapter.observe(address, Read(uri_path=("9", "0", "7"), observe=0), timeout=5)
    assert observation is not None
    for block in range(3):  # three one-block writes: each a new request and ID
        write = Read(method="PUT", uri_path=("9", "0", "2"), content_format=42, payload=bytes([block]) * 10)
        assert (await adapter.request(address, write, timeout=3)).code == "2.05"
    assert all(len(tokens) == 1 for tokens in fake.tokens.values()), fake.tokens
    adapter.release_observation(observation)
