"""Block1 flood against the daemon: memory stays bounded and other devices still get in.

    python benchmarks/block1_flood.py                      # 200 uploads × 250 blocks × 1 KiB, both modes
    python benchmarks/block1_flood.py --uploads 50 --blocks 40 --modes mixed   # a quick run

For each security mode (``mixed``, ``secure-only``) a fresh daemon
(``python -m lwm2m_server.cli serve``) runs on ephemeral loopback ports with a
temporary configuration. One UDP socket (one peer, plain CoAP) then starts
``--uploads`` Block1 POSTs to ``/rd`` at once, each of ``--blocks`` blocks of
``--block-size`` bytes, each upload going on with its next block whenever the
server answers 2.31 Continue and ending at any other answer (as a client does) or
after ``--block-timeout`` seconds without one. While the flood runs, a device
Registers from another port (plain CoAP in ``mixed``; CoAPS with a PSK in
``secure-only``, where plain CoAP is refused) and must get 2.01.

Printed per mode, each beside the baseline measured in the same run: the daemon's
RSS (VmRSS of /proc/PID/status) idle before the flood, at its peak during the
flood and after it, with the growth (MB) and the ratio to idle; the answers the
flood got (by code, first non-2.31 answer of each upload) and the blocks sent;
the Register's code and time against the same Register on the idle daemon; lines
of the daemon's log at level error or with a traceback. The exit status is 1 when
the peak grows more than ``--max-growth-mb`` over idle in any mode, or the Register
does not get 2.01, or the daemon logged an error.

Loopback only; bounded by ``--uploads`` × ``--blocks`` datagrams and ``--duration``
seconds per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiocoap
from aiocoap import Code, Message, optiontypes

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
PSK_IDENTITY = "bench-dev"
PSK_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class DaemonProcess:
    """``tinymlaas serve`` in a subprocess on ephemeral loopback ports, in its own folder."""

    def __init__(self, folder: Path, mode: str, rate_limit: bool = True) -> None:
        self.folder = folder
        self.coap_port = free_port(socket.SOCK_DGRAM)
        self.coaps_port = free_port(socket.SOCK_DGRAM)
        self.api_port = free_port(socket.SOCK_STREAM)
        (folder / "server.yaml").write_text(
            f'coap: {{host: "127.0.0.1", port: {self.coap_port}, secure_port: {self.coaps_port}'
            f'{"" if rate_limit else ", rate_limit_per_peer: 0"}}}\n'
            f"api: {{port: {self.api_port}}}\n"
            f"security: {{mode: {mode}}}\n"
            "logging: {format: json, level: info}\n"
        )
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []

    def add_psk(self) -> None:
        from lwm2m_server.security.credentials import CredentialStore, PskCredential

        (self.folder / "data").mkdir(exist_ok=True)
        store = CredentialStore(self.folder / "data" / "credentials.sqlite3")
        try:
            store.add(PskCredential(PSK_IDENTITY, PSK_IDENTITY, PSK_KEY, "server"), now=time.time())
        finally:
            store.close()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
            cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 60
        for line in self.process.stdout:
            self.lines.append(line)
            if '"event": "ready"' in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return
            if time.monotonic() > deadline:
                break
        raise SystemExit(f"the daemon did not start:\n{''.join(self.lines)[-3000:]}")

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def errors(self) -> list[str]:
        """Log lines at level error or above, or mentioning a traceback."""
        found = []
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    found.append(line.strip())
                continue
            if not isinstance(record, dict):
                continue
            if record.get("level") in ("error", "critical") or "Traceback" in line:
                found.append(line.strip()[:300])
        return found


class Flood(asyncio.DatagramProtocol):
    """``uploads`` Block1 POSTs from one UDP socket, each block sent when the previous got 2.31."""

    def __init__(self, port: int, uploads: int, blocks: int, block_size: int, block_timeout: float,
                 persistent_until: float | None = None) -> None:
        self.port = port
        self.uploads = uploads
        self.blocks = blocks
        self.szx = block_size.bit_length() - 5
        self.block_size = block_size
        self.block_timeout = block_timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[bytes, asyncio.Future] = {}
        self.sent = 0
        self.answers: collections.Counter[str] = collections.Counter()
        """Each upload's first answer other than 2.31 (``timeout`` when none came)."""
        self.continues = 0
        self.persistent_until = persistent_until
        """With a deadline (time.monotonic()): a refused upload starts again at once, ignoring Max-Age."""
        self._mid = random.randrange(0x10000)

    def datagram_received(self, data: bytes, address) -> None:
        try:
            message = Message.decode(data)
        except Exception:  # noqa: BLE001 - count it as a garbled answer
            self.answers["undecodable"] += 1
            return
        if message.mtype == aiocoap.CON:  # a separate response: acknowledged, or the next one waits for it
            self.transport.sendto(bytes((0x60, 0, data[2], data[3])))
        waiter = self.waiting.get(bytes(message.token))
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def _block(self, upload: int, number: int) -> bytes:
        self._mid = (self._mid + 1) & 0xFFFF
        more = number + 1 < self.blocks
        message = Message(code=Code.POST, payload=bytes([0x61 + upload % 26]) * self.block_size)
        message.mtype, message.mid, message.token = aiocoap.CON, self._mid, upload.to_bytes(4, "big")
        message.opt.uri_path = ("rd",)
        message.opt.uri_query = (f"ep=flood-{upload:04d}", "lt=60")
        message.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(number, more, self.szx)
        return message.encode()

    async def upload(self, upload: int) -> None:
        while True:
            answer = await self._upload_once(upload)
            if self.persistent_until is None or answer in ("timeout", "all blocks 2.31") \
                    or time.monotonic() > self.persistent_until:
                return

    async def _upload_once(self, upload: int) -> str:
        token = upload.to_bytes(4, "big")
        for number in range(self.blocks):
            waiter = asyncio.get_running_loop().create_future()
            self.waiting[token] = waiter
            self.transport.sendto(self._block(upload, number))
            self.sent += 1
            try:
                async with asyncio.timeout(self.block_timeout):
                    answer = await waiter
            except TimeoutError:
                self.answers["timeout"] += 1
                return "timeout"
            finally:
                self.waiting.pop(token, None)
            if answer.code != Code.CONTINUE:
                self.answers[answer.code.dotted] += 1
                return answer.code.dotted
            self.continues += 1
        self.answers["all blocks 2.31"] += 1
        return "all blocks 2.31"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, remote_addr=("127.0.0.1", self.port))
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
        try:
            await asyncio.gather(*(self.upload(i) for i in range(self.uploads)))
        finally:
            self.transport.close()


async def register(daemon: DaemonProcess, mode: str, endpoint: str, devices: list) -> tuple[str, float]:
    """(code, seconds) of one Register from a port of its own: plain CoAP in ``mixed``,
    CoAPS with the bench PSK in ``secure-only``. The device's context goes into
    ``devices`` and stays open (it answers the server's discovery with 4.04) until
    the caller shuts it down."""
    from aiocoap import resource

    context = await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", 0),
                                                           transports=["udp6"])
    devices.append(context)
    if mode == "secure-only":
        from simulators.dtls import DtlsClientInterface

        await context._append_tokenmanaged_messagemanaged_transport(
            lambda mman: DtlsClientInterface.create(mman, log=None, loop=asyncio.get_running_loop()))
        base = f"coaps://127.0.0.1:{daemon.coaps_port}"
        context.client_credentials.load_from_dict(
            {f"{base}/*": {"dtls": {"psk": PSK_KEY, "client-identity": PSK_IDENTITY.encode()}}})
        ep = PSK_IDENTITY
    else:
        base = f"coap://127.0.0.1:{daemon.coap_port}"
        ep = endpoint
    request = Message(code=Code.POST, uri=f"{base}/rd?ep={ep}&lt=600", payload=b"</1/0>,</3/0>,</3303/0>")
    start = time.perf_counter()
    try:
        async with asyncio.timeout(30):
            response = await context.request(request).response
    except (TimeoutError, aiocoap.error.Error) as error:
        return f"failed ({type(error).__name__})", time.perf_counter() - start
    return response.code.dotted, time.perf_counter() - start


async def sample_rss(daemon: DaemonProcess, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(daemon.rss())
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass


async def run_mode(scenario: str, args: argparse.Namespace) -> dict:
    mode, _, variant = scenario.partition(":")
    with tempfile.TemporaryDirectory(prefix=f"block1-flood-{mode}-") as folder:
        daemon = DaemonProcess(Path(folder), mode, rate_limit=variant != "no-rate-limit")
        if mode == "secure-only":
            daemon.add_psk()
        daemon.start()
        devices: list = []
        try:
            # warm up (first Register imports and allocates what every later one reuses), then idle
            idle_register = await register(daemon, mode, "idle-dev", devices)
            await asyncio.sleep(1.0)
            idle = daemon.rss()
            flood = Flood(daemon.coap_port, args.uploads, args.blocks, args.block_size, args.block_timeout,
                          time.monotonic() + args.persistent if args.persistent else None)
            samples: list[int] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(daemon, samples, stop))
            started = time.perf_counter()
            flooding = asyncio.create_task(flood.run())
            await asyncio.sleep(0.5)
            during_register = await register(daemon, mode, "during-dev", devices)
            try:
                await asyncio.wait_for(asyncio.shield(flooding), args.duration)
            except TimeoutError:
                flooding.cancel()
            flood_s = time.perf_counter() - started
            await asyncio.sleep(2.0)
            stop.set()
            await sampler
            after = daemon.rss()
            return {
                "mode": scenario, "idle": idle, "peak": max(samples + [after]), "after": after,
                "flood_s": flood_s, "sent": flood.sent, "continues": flood.continues,
                "answers": dict(flood.answers), "idle_register": idle_register,
                "during_register": during_register, "errors": daemon.errors(),
                "alive": daemon.process.poll() is None,
            }
        finally:
            for context in devices:
                await context.shutdown()
            daemon.stop()


def report(result: dict, max_growth_mb: float) -> bool:
    idle, peak, after = result["idle"], result["peak"], result["after"]
    growth = (peak - idle) / MB
    print(f"\n== security.mode: {result['mode']} ==")
    print(f"  RSS idle (baseline)        {idle / MB:8.1f} MB")
    print(f"  RSS peak during flood      {peak / MB:8.1f} MB   growth {growth:+7.1f} MB   "
          f"ratio {peak / idle:5.2f}x idle   (limit +{max_growth_mb:g} MB)")
    print(f"  RSS 2 s after flood        {after / MB:8.1f} MB   growth {(after - idle) / MB:+7.1f} MB   "
          f"ratio {after / idle:5.2f}x idle")
    print(f"  flood: {result['sent']} blocks sent in {result['flood_s']:.1f} s, {result['continues']} answered 2.31; "
          f"final answers: {', '.join(f'{code}: {n}' for code, n in sorted(result['answers'].items()))}")
    code, seconds = result["during_register"]
    idle_code, idle_seconds = result["idle_register"]
    print(f"  Register from another port during the flood: {code} in {seconds * 1000:.0f} ms "
          f"(idle daemon: {idle_code} in {idle_seconds * 1000:.0f} ms)")
    print(f"  daemon log errors/tracebacks: {len(result['errors'])}; daemon alive: {result['alive']}")
    for line in result["errors"][:5]:
        print(f"    {line}")
    ok = growth <= max_growth_mb and code == "2.01" and not result["errors"] and result["alive"]
    print(f"  {'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=200, help="parallel Block1 uploads from one peer")
    parser.add_argument("--blocks", type=int, default=250, help="blocks per upload")
    parser.add_argument("--block-size", type=int, default=1024, choices=[16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--block-timeout", type=float, default=5.0, help="seconds to wait for each answer")
    parser.add_argument("--duration", type=float, default=120.0, help="longest flood per mode, seconds")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--modes", default="mixed,mixed:no-rate-limit,secure-only",
                        help="security.mode per run; ':no-rate-limit' sets coap.rate_limit_per_peer: 0")
    parser.add_argument("--persistent", type=float, default=0.0, metavar="S",
                        help="for S seconds a refused upload starts again at once (ignoring Max-Age)")
    args = parser.parse_args()
    if not (0 < args.uploads <= 1000 and 0 < args.blocks <= 4096 and 0 <= args.persistent <= 600):
        parser.error("--uploads must be in 1..1000, --blocks in 1..4096, --persistent in 0..600")
    print(f"Block1 flood: {args.uploads} parallel uploads × {args.blocks} blocks × {args.block_size} B "
          f"from one UDP port, loopback" + (f", refused uploads restarted for {args.persistent:g} s"
                                            if args.persistent else ""))
    ok = True
    for mode in args.modes.split(","):
        ok &= report(asyncio.run(run_mode(mode.strip(), args)), args.max_growth_mb)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
