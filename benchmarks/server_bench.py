"""Server benchmarks on loopback; prints the figures.

    python benchmarks/server_bench.py --registrations 1000 --downloads 50 --download-kib 1024
    python benchmarks/server_bench.py --dtls --count 200 --downloads 20 --download-kib 256
    python benchmarks/server_bench.py --dtls --count 20 --rounds 2 --downloads 2 --download-kib 64  # CI size

- registrations: N distinct endpoints Register at once (bounded concurrency);
  reports registrations per second and the SQLite-backed state that results.
- downloads: M clients pull one module of S KiB over Block2 at the same time;
  reports the time, and the server's Python heap peak (tracemalloc) against the
  module size: a server that streams from disk stays far below M × S.
- fleet (``--dtls``): the same scenario once over plain CoAP and once over CoAPS
  (DTLS 1.2 PSK), each against a fresh server process (credentials store, CoAPS on
  an ephemeral port) with ``--count`` simulated devices in another process
  (``bench_fleet.py``, one PSK identity each, ``--concurrency`` starting at once).
  Reports handshakes + Registers per second (2.01 at every device) and with
  capability discovery finished; the server's RSS (VmRSS: tinydtls allocates
  outside tracemalloc) per registered device; ``--rounds`` rounds of Read /3/0/0 to
  every device with ``perform()`` (server → device round trips per second); the
  ``--download-kib`` module pulled block by block by one device, then by
  ``--downloads`` at once, from their own context (the device's pull path); the
  datagrams the kernel dropped at the server's socket (full receive buffer); the
  DTLS sessions the server still holds after every device sent close_notify.
- bare DTLS sessions (also ``--dtls``): ``--count`` handshakes that carry no CoAP,
  against a third fresh server: handshakes per second, and the server's RSS per
  live session. Ends with the coaps / coap ratios.

Server logs go to stderr at ``--log-level`` (``warning`` by default; ``info`` logs
every request and costs time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import aiocoap
from aiocoap import Code, Message, resource

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations
from lwm2m_server.transport.coap import Download
from lwm2m_server.config import ServerConfig
from lwm2m_server.security.credentials import CredentialStore, PskCredential
from lwm2m_server.logging_setup import configure_logging
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


PULLER = "bench-pull-{:06d}"
"""Endpoint name of the i-th client of the downloads scenario (distinct from the
registrations scenario's ``bench-...``)."""
TOKEN = "bench"
"""The module token: /fw/bench."""

CLIENTS = """
import asyncio, sys, aiocoap
from aiocoap import Code, Message, resource
PULLER, TOKEN = %r, %r
async def main(port, count, size):
    contexts = [await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", 0),
                                                            transports=["udp6"]) for _ in range(count)]
    registered = await asyncio.gather(*(
        c.request(Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/rd?ep={PULLER.format(i)}&lt=3600",
                          payload=b"</1/0>,</3/0>")).response for i, c in enumerate(contexts)), return_exceptions=True)
    print(sum(1 for r in registered if getattr(r, "code", None) == Code.CREATED), flush=True)
    sys.stdin.readline()  # the server granted the module: pull
    responses = await asyncio.gather(*(
        c.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/fw/{TOKEN}")).response for c in contexts),
        return_exceptions=True)
    print(sum(1 for r in responses if not isinstance(r, BaseException) and len(r.payload) == size), flush=True)
    errors = sorted({f"{type(r).__name__}: {r}" if isinstance(r, BaseException)
                     else f"answered {r.code} {r.payload[:80].decode(errors='replace')}"
                     for r in responses if isinstance(r, BaseException) or len(r.payload) != size})
    for error in errors[:5]:
        print(error, flush=True)
    for c in contexts:
        await c.shutdown()
asyncio.run(main(*map(int, sys.argv[1:])))
""" % (PULLER, TOKEN)


async def downloads(server: LwM2MServer, clients: int, size: int) -> None:
    """The clients run in another process, so the heap figure is the server's alone.
    Each client first Registers from its own context (so its address is the
    registration's) and is granted the module, as a rollout's pull delivery would;
    the time and heap figures cover the pulls alone."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENTS, str(server.port), str(clients), str(size),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    registered = int(await process.stdout.readline() or 0)
    if registered < clients:
        print(f"    only {registered}/{clients} download clients registered", file=sys.stderr)
    for i in range(clients):
        await server.downloads.grant(PULLER.format(i), [TOKEN], time.time())
    tracemalloc.start()
    start = time.perf_counter()
    process.stdin.write(b"go\n")
    await process.stdin.drain()
    ok = int(await process.stdout.readline() or 0)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    errors, _ = await process.communicate()
    print(f"downloads: {ok}/{clients} × {size // 1024} KiB in {elapsed:.2f} s "
          f"({clients * size / elapsed / 1e6:.2f} MB/s); server Python heap peak {peak / 1e6:.2f} MB "
          f"vs {clients * size / 1e6:.1f} MB if each download held the module")
    for error in errors.decode().splitlines():
        print(f"    client error: {error}")


# -- fleet over coap and coaps (--dtls) -----------------------------------------------------

FLEET = Path(__file__).with_name("bench_fleet.py")
KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
SERIAL = LwM2MPath.parse("/3/0/0")


def rss() -> int:
    """This process's resident set (VmRSS), bytes."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def udp_drops(*ports: int) -> int:
    """Datagrams the kernel dropped at the sockets bound to ``ports`` (a full receive
    buffer: the last column of /proc/net/udp and udp6)."""
    dropped = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                    dropped += int(fields[-1])
    return dropped


class Fleet:
    """The device process (bench_fleet.py): one command, one JSON answer."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def open(cls, uri: str, args: argparse.Namespace, *options: str) -> Fleet:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(FLEET), uri, str(args.count), "--key", KEY.hex(),
            "--concurrency", str(args.concurrency), "--log-level", args.log_level, *options,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        fleet = cls(process)
        await fleet.answer()  # {"ready": N}: the devices are built
        return fleet

    async def answer(self) -> dict:
        async with asyncio.timeout(900):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the device process ended (status {await self.process.wait()})")
        return json.loads(line)

    async def ask(self, command: str) -> dict:
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.answer()

    async def close(self) -> dict:
        answer = await self.ask("stop")
        await self.process.wait()
        return answer


@contextlib.asynccontextmanager
async def bench_server(args: argparse.Namespace, endpoints: list[str], secure: bool):
    """A server with CoAP and CoAPS on ephemeral ports, credentials for ``endpoints``
    when ``secure`` (an endpoint with credentials may not register over plain CoAP),
    and the ``--download-kib`` module at /fw/bench."""
    with tempfile.TemporaryDirectory() as folder:
        module = Path(folder) / "module.bin"
        module.write_bytes(os.urandom(args.download_kib * 1024))
        download = Download(module, module.stat().st_size, b"bench001")
        credentials = CredentialStore(Path(folder) / "credentials.sqlite3")
        for endpoint in endpoints if secure else ():
            credentials.add(PskCredential(endpoint, endpoint, KEY), now=time.time())
        store = await SqliteStore.open(Path(folder) / "state.sqlite3")
        base = config()
        server = LwM2MServer(replace(base, coap=replace(base.coap, secure_port=0)), ObjectRegistry.default(),
                             store, credentials=credentials,
                             downloads=lambda path: download if path == ("fw", TOKEN) else None)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
            await store.close()
            credentials.close()


def sessions(server: LwM2MServer) -> int:
    """DTLS sessions in the server's table."""
    return len(server._adapter._dtls.endpoint.sessions)


async def sessions_after_close(server: LwM2MServer, fleet: Fleet) -> tuple[dict, int]:
    """Stop the device process (close_notify on every session); the sessions the server
    still holds a second later."""
    stopped = await fleet.close()
    await asyncio.sleep(1.0)
    return stopped, sessions(server)


async def discovered(server: LwM2MServer, endpoints: list[str], timeout: float) -> int:
    """Wait until every endpoint has a stored profile (or ``timeout``); how many have."""
    deadline = time.perf_counter() + timeout
    while (done := sum(1 for ep in endpoints if server.profile(ep) is not None)) < len(endpoints):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.005)
    return done


async def run_fleet(scheme: str, args: argparse.Namespace) -> dict:
    """``args.count`` simulated devices over ``scheme``: cold start, reads, pulls."""
    configure_logging(args.log_level, "console", sys.stderr)
    endpoints = [f"bench-{i:06d}" for i in range(args.count)]
    f: dict = {"scheme": scheme}
    async with bench_server(args, endpoints, secure=scheme == "coaps") as server:
        ports = (server.secure_port if scheme == "coaps" else server.port,)
        drops = udp_drops(*ports)
        f["rss_start"] = rss()
        devices = await Fleet.open(f"{scheme}://127.0.0.1:{ports[0]}", args)
        began, cpu = time.perf_counter(), time.process_time()
        waiting = asyncio.create_task(discovered(server, endpoints, timeout=120))
        started = await devices.ask("start")
        f["register_s"] = time.perf_counter() - began
        f["registered"], f["register_errors"] = started["registered"], started["errors"]
        f["discovered"] = await waiting
        f["discover_s"], f["discover_cpu"] = time.perf_counter() - began, time.process_time() - cpu
        f["drops_start"] = udp_drops(*ports) - drops
        f["rss_fleet"], f["sessions"] = rss(), sessions(server)

        read = lambda registration: operations.read(registration, SERIAL, registry=server.registry)
        began, cpu, f["reads"] = time.perf_counter(), time.process_time(), 0
        for _ in range(args.rounds):
            results = await asyncio.gather(*(server.perform(ep, read) for ep in endpoints), return_exceptions=True)
            f["reads"] += sum(1 for r in results if getattr(r, "ok", False))
        f["reads_s"], f["reads_cpu"] = time.perf_counter() - began, time.process_time() - cpu

        # the devices that pull (the first --downloads: bench_fleet.py's "pull M") are granted the
        # module, as a rollout's pull delivery would grant it to the device it is delivered to
        for ep in endpoints[:max(1, args.downloads)]:
            await server.downloads.grant(ep, [TOKEN], time.time())
        for clients in (1, args.downloads):
            f[f"pull_{clients}"] = await devices.ask(f"pull {clients} fw/bench {args.download_kib * 1024}")
        f["rss_end"] = rss()
        f["drops"] = udp_drops(*ports) - drops
        f["stop"], f["sessions_after_stop"] = await sessions_after_close(server, devices)
    return f


async def run_bare_sessions(args: argparse.Namespace) -> dict:
    """``args.count`` DTLS sessions that carry no CoAP: handshakes/s and RSS per session."""
    configure_logging(args.log_level, "console", sys.stderr)
    endpoints = [f"bench-{i:06d}" for i in range(args.count)]
    f: dict = {}
    async with bench_server(args, endpoints, secure=True) as server:
        drops = udp_drops(server.secure_port)
        devices = await Fleet.open(f"coaps://127.0.0.1:{server.secure_port}", args, "--sessions-only")
        f["rss_start"], cpu = rss(), time.process_time()
        f["handshake"] = await devices.ask("handshake")
        f["handshake_cpu"] = time.process_time() - cpu
        f["rss_sessions"], f["sessions"] = rss(), sessions(server)
        f["drops"] = udp_drops(server.secure_port) - drops
        f["stop"], f["sessions_after_stop"] = await sessions_after_close(server, devices)
    return f


def in_fresh_process(function, *arguments) -> dict:
    """Run ``function`` in a new interpreter, so RSS figures start from the same point."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_async, function, *arguments).result()


def run_async(function, *arguments) -> dict:
    return asyncio.run(function(*arguments))


def report_fleet(f: dict, args: argparse.Namespace) -> None:
    n, mb, secure = args.count, 1e6, f["scheme"] == "coaps"
    print(f"fleet over {f['scheme']}: {n} simulated devices, {args.concurrency} starting at once")
    print(f"  {'DTLS handshake + ' if secure else ''}Register: {f['registered']}/{n} in {f['register_s']:.2f} s "
          f"= {f['registered'] / f['register_s']:.0f}/s; with capability discovery done: "
          f"{f['discovered']}/{n} in {f['discover_s']:.2f} s = {f['discovered'] / f['discover_s']:.0f}/s "
          f"(server CPU {f['discover_cpu'] / n * 1e3:.1f} ms a device); datagrams dropped at the server's "
          f"{f['scheme']} socket: {f['drops_start']}")
    for error in f["register_errors"]:
        print(f"    device error: {error}")
    held = f" ({f['sessions']} DTLS sessions)" if secure else ""
    print(f"  server RSS {f['rss_start'] / mb:.1f} MB at start, {f['rss_fleet'] / mb:.1f} MB with every device "
          f"registered{held} = {(f['rss_fleet'] - f['rss_start']) / n / 1e3:.1f} KB per device; "
          f"{f['rss_end'] / mb:.1f} MB after the reads and pulls")
    reads = n * args.rounds
    print(f"  Read /3/0/0 to every device × {args.rounds}: {f['reads']}/{reads} in {f['reads_s']:.2f} s "
          f"= {f['reads'] / f['reads_s']:.0f} round trips/s (server CPU {f['reads_cpu'] / reads * 1e3:.2f} ms a read)")
    for clients in (1, args.downloads):
        pulled = f[f"pull_{clients}"]
        print(f"  pull of {args.download_kib} KiB by {clients} device{'s at once' if clients > 1 else ''}: "
              f"{pulled['complete']}/{clients} in {pulled['seconds']:.2f} s "
              f"({clients * args.download_kib * 1024 / pulled['seconds'] / mb:.2f} MB/s)")
        for error in pulled["errors"]:
            print(f"    device error: {error}")
    print(f"  datagrams dropped at the server's socket in all: {f['drops']}"
          + (f"; DTLS sessions the server holds 1 s after every device sent close_notify: "
             f"{f['sessions_after_stop']}" if secure else ""))


def report_bare(f: dict, args: argparse.Namespace) -> None:
    done = f["handshake"]
    grown = f["rss_sessions"] - f["rss_start"]
    print(f"bare DTLS sessions (no CoAP), {args.concurrency} handshaking at once: {done['sessions']}/{args.count} "
          f"in {done['seconds']:.2f} s = {done['sessions'] / done['seconds']:.0f} handshakes/s (server CPU "
          f"{f['handshake_cpu'] / args.count * 1e3:.2f} ms a handshake); datagrams dropped at the server's "
          f"coaps socket: {f['drops']}")
    for error in done["errors"]:
        print(f"    client error: {error}")
    print(f"  server RSS {f['rss_start'] / 1e6:.1f} MB → {f['rss_sessions'] / 1e6:.1f} MB with {f['sessions']} "
          f"sessions = {grown / max(1, f['sessions']) / 1e3:.2f} KB per session; sessions held 1 s after every "
          f"client sent close_notify: {f['sessions_after_stop']}")


def compare(plain: dict, secure: dict, args: argparse.Namespace) -> None:
    def ratio(count: str, seconds: str) -> float:
        return (secure[count] / secure[seconds]) / (plain[count] / plain[seconds])

    def pulls(clients: int) -> float:
        return secure[f"pull_{clients}"]["seconds"] / plain[f"pull_{clients}"]["seconds"]

    print(f"coaps / coap: Register rate ×{ratio('registered', 'register_s'):.2f}, with discovery "
          f"×{ratio('discovered', 'discover_s'):.2f}; Read round trips/s ×{ratio('reads', 'reads_s'):.2f}; "
          f"pull time ×{pulls(1):.2f} (1 device), ×{pulls(args.downloads):.2f} ({args.downloads} at once)")


def dtls_scenario(args: argparse.Namespace) -> None:
    results = {}
    for scheme in ("coap", "coaps"):
        results[scheme] = in_fresh_process(run_fleet, scheme, args)
        report_fleet(results[scheme], args)
    report_bare(in_fresh_process(run_bare_sessions, args), args)
    compare(results["coap"], results["coaps"], args)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        module = Path(folder) / "module.bin"
        module.write_bytes(os.urandom(args.download_kib * 1024))
        download = Download(module, module.stat().st_size, b"bench001")
        store = await SqliteStore.open(Path(folder) / "state.sqlite3")
        server = LwM2MServer(config(), ObjectRegistry.default(), store,
                             downloads=lambda path: download if path == ("fw", TOKEN) else None)
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
    parser.add_argument("--dtls", action="store_true", help="run the fleet scenario over coap and coaps instead")
    parser.add_argument("--count", type=int, default=200, help="--dtls: simulated devices")
    parser.add_argument("--rounds", type=int, default=5, help="--dtls: rounds of Read /3/0/0 to every device")
    parser.add_argument("--log-level", default="warning", help="server log level (info logs every request)")
    arguments = parser.parse_args()
    configure_logging(arguments.log_level, "console", sys.stderr)
    if arguments.dtls:
        dtls_scenario(arguments)
    else:
        asyncio.run(main(arguments))
