"""Server benchmarks on loopback; prints the figures.

    python benchmarks/server_bench.py --registrations 1000 --downloads 50 --download-kib 1024

- registrations: N distinct endpoints Register at once (bounded concurrency);
  reports registrations per second and the SQLite-backed state that results.
- downloads: M clients pull one module of S KiB over Block2 at the same time;
  reports the time, and the server's Python heap peak (tracemalloc) against the
  module size: a server that streams from disk stays far below M × S.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import aiocoap
from aiocoap import Code, Message, resource

from ipso_objects import ObjectRegistry
from lwm2m_server.coap import Download
from lwm2m_server.config import ServerConfig
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore


def config() -> ServerConfig:
    base = ServerConfig()
    # one client port sends every Register: per-peer rate limiting would refuse most of them
    return replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, rate_limit_per_peer=0))


async def registrations(server: LwM2MServer, count: int, concurrency: int) -> None:
    client = await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", 0), transports=["udp6"])
    gate = asyncio.Semaphore(concurrency)

    async def register(i: int) -> bool:
        async with gate:
            message = Message(code=Code.POST, uri=f"coap://127.0.0.1:{server.port}/rd?ep=bench-{i:06d}&lt=3600",
                              payload=b"</1/0>,</3/0>,</3303/0>")
            return (await client.request(message).response).code == Code.CREATED

    start = time.perf_counter()
    results = await asyncio.gather(*(register(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    await client.shutdown()
    print(f"registrations: {sum(results)}/{count} in {elapsed:.2f} s = {count / elapsed:.0f}/s "
          f"(concurrency {concurrency}); registered now: {len(server.registrations())}")


CLIENTS = """
import asyncio, sys, aiocoap
from aiocoap import Code, Message, resource
async def main(port, count, size):
    contexts = [await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", 0),
                                                            transports=["udp6"]) for _ in range(count)]
    responses = await asyncio.gather(*(
        c.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/fw/bench")).response for c in contexts))
    print(sum(1 for r in responses if len(r.payload) == size))
asyncio.run(main(*map(int, sys.argv[1:])))
"""


async def downloads(server: LwM2MServer, clients: int, size: int) -> None:
    """The clients run in another process, so the heap figure is the server's alone."""
    tracemalloc.start()
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENTS, str(server.port), str(clients), str(size),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ok = int(out or 0)
    print(f"downloads: {ok}/{clients} × {size // 1024} KiB in {elapsed:.2f} s "
          f"({clients * size / elapsed / 1e6:.2f} MB/s); server Python heap peak {peak / 1e6:.2f} MB "
          f"vs {clients * size / 1e6:.1f} MB if each download held the module")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        module = Path(folder) / "module.bin"
        module.write_bytes(os.urandom(args.download_kib * 1024))
        download = Download(module, module.stat().st_size, b"bench001")
        store = await SqliteStore.open(Path(folder) / "state.sqlite3")
        server = LwM2MServer(config(), ObjectRegistry.default(), store,
                             downloads=lambda path: download if path == ("fw", "bench") else None)
        await server.start()
        try:
            if args.registrations:
                await registrations(server, args.registrations, args.concurrency)
            if args.downloads:
                await downloads(server, args.downloads, download.size)
        finally:
            await server.stop()
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registrations", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--downloads", type=int, default=20)
    parser.add_argument("--download-kib", type=int, default=256)
    asyncio.run(main(parser.parse_args()))
