"""Hostile datagrams on the CoAPS port: mutated records of a real handshake, and noise.

The datagrams of a real device's handshake and Register are recorded, then sent
again mutated (bit flips, truncations, splices, repeats, random bytes) from many
source ports. Nothing may crash the endpoint, log a failure, open a session or
disturb a real device that registers afterwards. ``FUZZ_DTLS_DATAGRAMS`` sets the
number sent and ``FUZZ_DTLS_SEED`` the mutations (``benchmarks/fuzz_long.py`` sets both).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest
import structlog

from test_dtls import KEY, Secure, read_device

pytest.importorskip("DTLSSocket.dtls", reason="CoAPS needs DTLSSocket (tinydtls)")

DATAGRAMS = int(os.environ.get("FUZZ_DTLS_DATAGRAMS", "1500"))
SEED = int(os.environ.get("FUZZ_DTLS_SEED", "20261128"))


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    kind = rng.randrange(6)
    if kind == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == 2:  # splice two records
        other = rng.choice(seeds)
        data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
    elif kind == 3 and len(data) > 13:  # lie about the record length / epoch / sequence
        position = rng.choice([3, 4, 5, 11, 12, 13])
        data[position] = rng.randrange(256)
    elif kind == 4:  # records back to back
        data = data * rng.randint(2, 4)
    else:  # noise, sometimes with a plausible record header
        data = bytearray(rng.choice([b"", b"\x16\xfe\xfd", b"\x17\xfe\xfd", b"\x15\xfe\xfd"]))
        data += rng.randbytes(rng.randrange(200))
    return bytes(data[:1500])


async def test_mutated_handshakes_and_noise_leave_the_coaps_endpoint_working(tmp_path):
    async with Secure(tmp_path) as setup:
        await check_hostile_datagrams(setup)


async def check_hostile_datagrams(setup: Secure) -> None:
    endpoint = setup.server._adapter._dtls.endpoint
    recorded: list[bytes] = []
    receive = endpoint.datagram_received

    def recording(data, address):
        recorded.append(bytes(data))
        receive(data, address)

    endpoint.datagram_received = recording
    try:
        setup.add("dev-1")
        first = await setup.device("dev-1", psk=("dev-1", KEY))
        await first.stop(deregister=False)
        endpoint.datagram_received = receive
        assert len(recorded) >= 3  # ClientHello twice (cookie), the key exchange flight, the Register
        sessions_before = len(endpoint.sessions)

        rng = random.Random(SEED)
        loop = asyncio.get_running_loop()
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
        with structlog.testing.capture_logs() as logs:
            for number in range(DATAGRAMS):
                senders[number % len(senders)].sendto(mutate(rng, recorded), ("127.0.0.1", setup.server.secure_port))
                if number % 50 == 0:
                    await asyncio.sleep(0.01)  # let the endpoint keep up, as a real network would
            await asyncio.sleep(0.3)
            for sender in senders:
                sender.close()
            # a real device still gets in, and the server still reaches it
            setup.add("dev-2")
            await setup.device("dev-2", psk=("dev-2", KEY))
            assert (await read_device(setup.server, "dev-2")).code == "2.05"
        failures = [entry for entry in logs if entry["log_level"] in ("error", "critical")]
        assert not failures, failures[:3]
        assert len(endpoint.sessions) == sessions_before + 1  # garbage opened no session
        assert not loop.is_closed()
    finally:
        endpoint.datagram_received = receive
