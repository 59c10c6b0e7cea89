"""CPU cost of the CoAPS server's own DTLS 1.2 PSK beside tinydtls, for the same client.

    python benchmarks/dtls_server.py                        # 300 handshakes, 5000 records each way
    python benchmarks/dtls_server.py --handshakes 50 --records 500   # a quick run

One tinydtls client (DTLSSocket) talks, in memory (no sockets, no network time), to
two servers in turn: the server's ``DtlsServerEndpoint`` (its datagram handler, cookie
exchange, handshake and record layer: what the daemon runs) and a tinydtls server
context (DTLSSocket, what the daemon ran before). Only the server's side is timed
(``time.process_time`` around each call into it); both do the cookie exchange and
TLS_PSK_WITH_AES_128_CCM_8, and the client offers extended_master_secret to both.

Printed: CPU ms per complete handshake (from the first ClientHello to the server's
Finished), and CPU µs per application record received (decrypt, replay check,
delivery) and sent (encrypt), for each server, with the ratio ours / tinydtls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from DTLSSocket import dtls  # noqa: E402

from lwm2m_server.transport.dtls import DtlsServerEndpoint  # noqa: E402

KEY = b"benchmark-key-16"
IDENTITY = b"bench-device"
SERVER = ("::ffff:127.0.0.1", 5684)
PAYLOAD = bytes(range(64)) * 2  # a 128-byte CoAP message, about what a Read answer is


class Quiet:
    """A logger that drops everything: tinydtls logs nothing either."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Interface:
    _mman = object()

    def __init__(self) -> None:
        self.delivered = 0

    def _received_datagram(self, session, data: bytes) -> None:
        self.delivered += 1

    def _received_exception(self, session, exception) -> None:
        pass


class Wire:
    """The server's socket: what it sends is kept for the client."""

    def __init__(self) -> None:
        self.out: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, address) -> None:
        self.out.append((data, address))

    def is_closing(self) -> bool:
        return False


class Client:
    """A tinydtls client context at one source port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outbox: list[bytes] = []
        self.connected = False
        self.received: list[bytes] = []
        self.context = dtls.DTLS(read=self._read, write=self._write, event=self._event,
                                 pskId=IDENTITY, pskStore={IDENTITY: KEY})
        self.connection = None

    def _read(self, sender, data: bytes) -> int:
        self.received.append(data)
        return len(data)

    def _write(self, recipient, data: bytes) -> int:
        self.outbox.append(data)
        return len(data)

    def _event(self, level: int, code: int) -> int:
        if level == 0 and code == 0x01DE:
            self.connected = True
        return 0

    def connect(self) -> None:
        self.connection = self.context.connect(*SERVER)

    def hear(self, datagram: bytes) -> None:
        self.context.handleMessageAddr(SERVER[0], SERVER[1], datagram)

    def take(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out


class OurServer:
    name = "ours (DtlsServerEndpoint)"

    def __init__(self) -> None:
        self.interface = Interface()
        self.endpoint = DtlsServerEndpoint(self.interface, lambda identity: KEY if identity == IDENTITY else None,
                                           max_sessions=100_000, idle_timeout=3600, log=Quiet())
        self.endpoint._transport = self.wire = Wire()

    def handle(self, port: int, datagram: bytes) -> None:
        self.endpoint.datagram_received(datagram, ("127.0.0.1", port))

    def replies(self) -> list[bytes]:
        out, self.wire.out = [d for d, _ in self.wire.out], []
        return out

    def send(self, port: int, payload: bytes) -> None:
        self.endpoint.sessions[(SERVER[0], port)].send(payload)

    def established(self, port: int) -> bool:
        return (SERVER[0], port) in self.endpoint.sessions


class TinyDtlsServer:
    name = "tinydtls (DTLSSocket)"

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.connected: set[int] = set()
        self._current = 0
        self.delivered = 0
        self.context = dtls.DTLS(read=self._read, write=self._write, event=self._event,
                                 pskId=b"-", pskStore={IDENTITY: KEY})

    def _read(self, sender, data: bytes) -> int:
        self.delivered += 1
        return len(data)

    def _write(self, recipient, data: bytes) -> int:
        self.out.append(data)
        return len(data)

    def _event(self, level: int, code: int) -> int:
        if level == 0 and code == 0x01DE:
            self.connected.add(self._current)
        return 0

    def handle(self, port: int, datagram: bytes) -> None:
        self._current = port
        self.context.handleMessageAddr(SERVER[0], port, datagram)

    def replies(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def send(self, port: int, payload: bytes) -> None:
        self.context.write(dtls.Session(SERVER[0], port), payload)

    def established(self, port: int) -> bool:
        return port in self.connected


def handshake(server, client: Client) -> float:
    """Server CPU seconds for one handshake."""
    spent = 0.0
    client.connect()
    for _ in range(20):
        for datagram in client.take():
            started = time.process_time()
            server.handle(client.port, datagram)
            spent += time.process_time() - started
        replies = server.replies()
        if not replies and server.established(client.port) and client.connected:
            return spent
        for datagram in replies:
            client.hear(datagram)
    raise RuntimeError(f"{server.name}: the handshake did not complete")


def measure(server, handshakes: int, records: int, first_port: int) -> dict[str, float]:
    costs = [handshake(server, Client(first_port + number)) for number in range(handshakes)]
    client = Client(first_port + handshakes)
    handshake(server, client)
    for _ in range(records):  # the client's records, made before the timing
        client.context.write(client.connection, PAYLOAD)
    incoming = client.take()
    started = time.process_time()
    for datagram in incoming:
        server.handle(client.port, datagram)
    received = time.process_time() - started
    started = time.process_time()
    for _ in range(records):
        server.send(client.port, PAYLOAD)
    sent = time.process_time() - started
    replies = server.replies()
    for datagram in replies[:50]:  # the client can read what was sent
        client.hear(datagram)
    assert client.received[-1] == PAYLOAD, f"{server.name}: the client could not read the server's records"
    return {"handshake_ms": statistics.mean(costs) * 1000, "handshake_median_ms": statistics.median(costs) * 1000,
            "received_us": received / records * 1e6, "sent_us": sent / records * 1e6}


async def main(arguments) -> None:
    ours = measure(OurServer(), arguments.handshakes, arguments.records, 20000)
    tiny = measure(TinyDtlsServer(), arguments.handshakes, arguments.records, 40000)
    print(f"DTLS 1.2 PSK server CPU, TLS_PSK_WITH_AES_128_CCM_8, tinydtls client; "
          f"{arguments.handshakes} handshakes, {arguments.records} records of {len(PAYLOAD)} bytes each way")
    print(f"{'':34}{'ours':>12}{'tinydtls':>12}{'ours/tinydtls':>15}")
    rows = [("handshake, mean (ms)", "handshake_ms"), ("handshake, median (ms)", "handshake_median_ms"),
            ("application record received (µs)", "received_us"), ("application record sent (µs)", "sent_us")]
    for label, key in rows:
        print(f"{label:34}{ours[key]:12.3f}{tiny[key]:12.3f}{ours[key] / tiny[key]:15.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--records", type=int, default=5000)
    asyncio.run(main(parser.parse_args()))
