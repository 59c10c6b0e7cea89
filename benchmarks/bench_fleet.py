"""Simulated devices for ``server_bench.py --dtls``, in a process of their own, so the
server's process holds only the server (its RSS is the server's alone) and the devices'
work runs on the other core.

    python benchmarks/bench_fleet.py coaps://127.0.0.1:5684 200 --key 000102030405060708090a0b0c0d0e0f

Each device is a :class:`simulators.client.SimulatedDevice` on its own UDP port, with
the PSK identity of its endpoint name (``bench-000000``...) when the URI is
``coaps://``. The process prints ``{"ready": ...}`` once the devices are built, then
reads one command a line on stdin and answers one JSON line on stdout:

    start             every device Registers (after its DTLS handshake), --concurrency at a time
    pull M PATH SIZE  the first M devices fetch <server URI>/PATH (SIZE bytes) at once, one GET
                      per block from their own context: the device's pull path (simulators.fetch)
    handshake         (--sessions-only) COUNT bare DTLS sessions, the same identities, each
                      from its own port, and no CoAP message: --concurrency at a time
    stop              every device closes its port, or bare session, close_notify first
                      over DTLS; then the process exits
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import aiocoap
import structlog

from ipso_objects import ObjectRegistry
from lwm2m_server.logging_setup import configure_logging
from simulators.client import SimulatedDevice
from simulators.download import BlockDownload
from simulators.dtls import DtlsClientInterface
from simulators.fetch import fetch


def endpoint(i: int) -> str:
    return f"bench-{i:06d}"


def reply(**figures) -> None:
    print(json.dumps(figures), flush=True)


def errors(results: list) -> list[str]:
    """The first few distinct failures, for the report."""
    return sorted({f"{type(r).__name__}: {r}"[:160] for r in results if isinstance(r, BaseException)})[:5]


async def gathered(jobs, concurrency: int) -> tuple[list, float]:
    """Run the coroutines ``concurrency`` at a time; their results and the seconds it took."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job):
        async with gate:
            return await job

    began = time.perf_counter()
    results = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
    return results, time.perf_counter() - began


async def start(devices: list[SimulatedDevice], concurrency: int) -> None:
    results, seconds = await gathered((d.start() for d in devices), concurrency)
    reply(registered=sum(1 for r in results if r is None), seconds=seconds, errors=errors(results))


async def pull(devices: list[SimulatedDevice], uri: str, size: int) -> None:
    jobs = (fetch(d._context, BlockDownload(uri), timeout=10.0, attempts=3) for d in devices)
    results, seconds = await gathered(jobs, len(devices))
    reply(complete=sum(1 for r in results if isinstance(r, bytes) and len(r) == size),
          seconds=seconds, errors=errors(results))


class BareSessions:
    """DTLS sessions that carry nothing: the server's cost of a session alone."""

    def __init__(self, uri: str, count: int, key: bytes) -> None:
        parts = urlsplit(uri)
        self.host, self.port, self.count, self.key = parts.hostname, parts.port, count, key
        self.context: aiocoap.Context | None = None

    async def handshake(self, concurrency: int, timeout: float) -> None:
        self.context = await aiocoap.Context.create_client_context(transports=["udp6"])
        await self.context._append_tokenmanaged_messagemanaged_transport(
            lambda mman: DtlsClientInterface.create(mman, log=structlog.get_logger("bench"),
                                                    loop=asyncio.get_running_loop()))
        interface = self.context.request_interfaces[-1].token_interface.message_interface

        async def one(i: int) -> None:
            connection = interface.connection(self.host, self.port, endpoint(i).encode(), self.key)
            async with asyncio.timeout(timeout):
                await connection.connected

        results, seconds = await gathered((one(i) for i in range(self.count)), concurrency)
        reply(sessions=sum(1 for r in results if r is None), seconds=seconds, errors=errors(results))

    async def close(self) -> None:
        if self.context is not None:
            await self.context.shutdown()  # close_notify on every session


async def main(args: argparse.Namespace) -> None:
    key = bytes.fromhex(args.key)
    if args.sessions_only:
        bare, devices = BareSessions(args.server_uri, args.count, key), []
    else:
        registry = ObjectRegistry.default()
        psk = args.server_uri.startswith("coaps://")
        bare, devices = None, [
            SimulatedDevice(endpoint(i), "cortex-m4f", args.server_uri, registry, seed=i, sensor_interval=3600,
                            request_timeout=args.timeout, psk=(endpoint(i), key) if psk else None)
            for i in range(args.count)
        ]
    reply(ready=args.count)
    loop = asyncio.get_running_loop()
    while command := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        if command[0] == "start":
            await start(devices, args.concurrency)
        elif command[0] == "pull":
            await pull(devices[:int(command[1])], f"{args.server_uri}/{command[2]}", int(command[3]))
        elif command[0] == "handshake":
            await bare.handshake(args.concurrency, args.timeout)
        elif command[0] == "stop":
            break
    began = time.perf_counter()
    results = await asyncio.gather(*(d.stop(deregister=False) for d in devices), return_exceptions=True)
    if bare is not None:
        await bare.close()
    reply(stopped=args.count, seconds=time.perf_counter() - began, errors=errors(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server_uri")
    parser.add_argument("count", type=int)
    parser.add_argument("--key", default="000102030405060708090a0b0c0d0e0f", help="PSK of every device, hex")
    parser.add_argument("--concurrency", type=int, default=100, help="devices starting (or handshaking) at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="device request timeout, seconds")
    parser.add_argument("--sessions-only", action="store_true", help="bare DTLS sessions instead of devices")
    parser.add_argument("--log-level", default="warning")
    arguments = parser.parse_args()
    configure_logging(arguments.log_level, "console", sys.stderr)  # stdout carries the JSON answers
    asyncio.run(main(arguments))
