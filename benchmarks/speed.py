"""Single-node speed benchmark (issue 12): each figure beside its baseline, measured in
the same run, as a ratio, with the server's CPU time per operation.

    python benchmarks/speed.py                 # defaults: a few minutes
    python benchmarks/speed.py --quick         # CI smoke run (< 60 s); figures only roughly meaningful
    python benchmarks/speed.py --count 2000 --large 20000 --runs 5

Every phase runs against a FRESH server process (plain CoAP on an ephemeral loopback
port, SQLite store in a temporary folder, per-peer rate limiting off since every
device is on 127.0.0.1, log level ``--log-level``), driven by devices in ANOTHER
process. CPU per operation is the server process's utime + stime (all its threads,
from ``/proc/<pid>/stat``) before and after the phase, divided by the operations:
steadier than rates on a shared 2-core box. The device process's CPU is printed
too, so a saturated client (CPU ≈ wall time) shows.

The device process is this file (``_client``): raw UDP sockets with hand-built CoAP
messages, one connected socket (its own source port) per endpoint, so a device
costs a few microseconds of client CPU per message rather than an aiocoap context;
requests are CON with RFC 7252 retransmission; the server's requests are answered
piggybacked. Figures:

1. Register: ``--count`` distinct endpoints send Register (POST /rd?ep=..&lt=3600&
   lwm2m=1.1&b=U, ``</1/0>,</3/0>,</3303/0>``), ``--concurrency`` in flight. The
   server's capability discovery cannot be turned off in its configuration, so the
   devices answer its discovery read (/3/0) with 4.04 at once: the server's CPU per
   Register therefore includes one failed discovery read and storing the resulting
   (empty) profile; the phase ends when every profile is in. Baseline: a bare
   aiocoap server (one ``resource.Resource`` at /rd answering 2.01 with a
   Location-Path) in its own process, driven by the same client code.
2. Register + discovery: the same, but the devices answer the discovery reads
   properly, from the project's simulator object tree
   (:class:`simulators.objects.DeviceObjects`, profile ``cortex-m4f``: /3/0, /5/0, /9,
   /26241/0 in the format the server asks for, answers cached per path and Accept so
   the client stays cheap; the simulated devices of ``bench_fleet.py`` each run a
   full aiocoap context and the device process, not the server, would set the
   pace). The Register payload is the simulator's own link format. Figure: devices
   whose profile the server has stored, per second, from the first Register to the
   last profile (the server's ``profile`` events). Baseline: the bare aiocoap
   Register rate of phase 1 (issue 12's target: ≥ 0.5×).
3. Read and Send at ``--small`` and ``--large`` registrations (1k, 10k): with that
   many devices registered (and their discovery settled), ``--ops`` Reads of
   /3/0/0 by the server (``server.perform`` + ``operations.read``, spread over every
   device, ``--concurrency`` at once, answered 2.05 text/plain by the devices) and
   ``--ops`` Sends (POST /dp, SenML CBOR, two values of /3303/0) by the devices.
   Figures: server CPU ms per Read and per Send; large/small ratio (target ≤ 1.1).
4. RSS per registered device at ``--large``: the server's VmRSS (after a
   ``gc.collect()``) with every device registered and discovered, minus at start,
   divided by the devices.

Every figure is the median of ``--runs`` runs; the table at the end has them all.
``--profile FOLDER`` runs each server process under cProfile (slower: its figures
are then not comparable) and leaves one ``.prof`` file per phase and server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from processes import Child, commands, reply, vm_rss

HERE = Path(__file__).resolve()

# --------------------------------------------------------------------------- CoAP on the wire

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, FETCH = 1, 2, 5
CREATED, CHANGED, CONTENT, NOT_FOUND = 0x41, 0x44, 0x45, 0x84
LOCATION_PATH, URI_PATH, CONTENT_FORMAT, URI_QUERY, ACCEPT = 8, 11, 12, 15, 17
LINK_FORMAT, TEXT, SENML_CBOR = 40, 0, 112


def _option_nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, struct.pack("!H", value - 269)


def encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """``(number, value)`` pairs, in ascending number order."""
    out, last = bytearray(), 0
    for number, value in options:
        delta, delta_ext = _option_nibble(number - last)
        length, length_ext = _option_nibble(len(value))
        out.append(delta << 4 | length)
        out += delta_ext + length_ext + value
        last = number
    return bytes(out)


def uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def message(kind: int, code: int, mid: int, token: bytes, options: bytes = b"", payload: bytes = b"") -> bytes:
    head = bytes((0x40 | kind << 4 | len(token), code)) + struct.pack("!H", mid) + token + options
    return head + b"\xff" + payload if payload else head


def parse_options(data: bytes, at: int) -> tuple[list[tuple[int, bytes]], bytes]:
    """The options from ``at`` on, and the payload."""
    options, number, end = [], 0, len(data)
    while at < end:
        byte = data[at]
        if byte == 0xFF:
            return options, data[at + 1:]
        delta, length, at = byte >> 4, byte & 15, at + 1
        if delta == 13:
            delta, at = data[at] + 13, at + 1
        elif delta == 14:
            delta, at = struct.unpack_from("!H", data, at)[0] + 269, at + 2
        if length == 13:
            length, at = data[at] + 13, at + 1
        elif length == 14:
            length, at = struct.unpack_from("!H", data, at)[0] + 269, at + 2
        number += delta
        options.append((number, data[at:at + length]))
        at += length
    return options, b""


# --------------------------------------------------------------------------- the device process (_client)


class Answers:
    """What the devices answer to the server's requests."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.cache: dict[tuple[str, int | None], tuple[int, bytes]] = {}
        self.objects = None
        if mode == "notfound":
            self.links, self.version = b"</1/0>,</3/0>,</3303/0>", "1.1"
        else:  # "sim": the simulator's object tree
            from ipso_objects import ObjectRegistry
            from ipso_objects.codecs import link_format
            from simulators.objects import DeviceObjects

            self.objects = DeviceObjects(ObjectRegistry.default(), endpoint="speed-sim", seed=1)
            self.links = link_format.encode(self.objects.registration_links())
            self.version = self.objects.lwm2m_version

    def answer(self, method: str, path: str, accept: int | None, content_format: int | None = None,
               payload: bytes = b"") -> tuple[int, bytes]:
        """``(code, options + 0xFF + payload)`` of the answer to GET ``path`` (or a FETCH,
        i.e. Read-Composite, of the paths in ``payload``)."""
        key = (method, path, accept, content_format, payload)
        found = self.cache.get(key)
        if found is None:
            if self.objects is None:
                if path == "3/0/0" and method == "GET":
                    found = CONTENT, encode_options([(CONTENT_FORMAT, b"")]) + b"\xffspeed"
                else:
                    found = NOT_FOUND, b""
            else:
                response = self.objects.handle(method, path.split("/"), (), content_format, accept, payload, None)
                major, minor = (int(part) for part in response.code.split("."))
                options = encode_options([(CONTENT_FORMAT, uint(response.content_format))]) \
                    if response.content_format is not None else b""
                found = major << 5 | minor, options + (b"\xff" + response.payload if response.payload else b"")
            self.cache[key] = found
        return found


class Device(asyncio.DatagramProtocol):
    """One endpoint: a connected UDP socket, one request of its own in flight at a time."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet, self.index = fleet, index
        self.endpoint = f"speed-{index:06d}"
        self.transport: asyncio.DatagramTransport | None = None
        self.mid = index * 7 & 0xFFFF
        self.token = b""
        self.waiting: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.location: list[bytes] = []  # Location-Path of the last 2.01 (the registration)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def error_received(self, exc) -> None:
        pass

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 4 or data[0] >> 6 != 1:
            return
        kind, tkl, code = data[0] >> 4 & 3, data[0] & 15, data[1]
        token = data[4:4 + tkl]
        if code == 0:  # empty: the ACK of a separate response, or a ping
            if kind == ACK and token == b"" and self.timer is not None and data[2:4] == struct.pack("!H", self.mid):
                self.timer.cancel()  # the response comes separately; the overall timeout stays
                self.timer = asyncio.get_running_loop().call_later(60, self._fail, self.waiting)
            elif kind == CON:
                self.transport.sendto(message(RST, 0, struct.unpack_from("!H", data, 2)[0], b""))
            return
        if code < 32:  # a request from the server
            options, body = parse_options(data, 4 + tkl)
            path = "/".join(value.decode() for number, value in options if number == URI_PATH)
            accept = next((int.from_bytes(v, "big") for n, v in options if n == ACCEPT), None)
            content_format = next((int.from_bytes(v, "big") for n, v in options if n == CONTENT_FORMAT), None)
            method = {GET: "GET", FETCH: "FETCH"}.get(code, "?")
            answer_code, rest = self.fleet.answers.answer(method, path, accept, content_format, body)
            self.fleet.answered += 1
            if kind == CON:
                self.transport.sendto(bytes((0x60 | tkl, answer_code)) + data[2:4] + token + rest)
            else:
                self.mid = self.mid + 1 & 0xFFFF
                self.transport.sendto(bytes((0x50 | tkl, answer_code)) + struct.pack("!H", self.mid) + token + rest)
            return
        if kind == CON:  # a separate response: acknowledge it
            self.transport.sendto(message(ACK, 0, struct.unpack_from("!H", data, 2)[0], b""))
        waiting = self.waiting
        if token == self.token and waiting is not None and not waiting.done():
            if code == CREATED:
                self.location = [value for number, value in parse_options(data, 4 + tkl)[0] if number == LOCATION_PATH]
            waiting.set_result(code)

    def _retransmit(self, datagram: bytes, left: int, timeout: float, waiting: asyncio.Future) -> None:
        if waiting.done():
            return
        if left == 0:
            self._fail(waiting)
            return
        if left < 5:
            self.fleet.retransmissions += 1
        self.transport.sendto(datagram)
        self.timer = asyncio.get_running_loop().call_later(
            timeout, self._retransmit, datagram, left - 1, timeout * 2, waiting)

    @staticmethod
    def _fail(waiting: asyncio.Future | None) -> None:
        if waiting is not None and not waiting.done():
            waiting.set_exception(TimeoutError("no answer after 4 retransmissions"))

    async def request(self, code: int, options: bytes, payload: bytes) -> int:
        """A CON request; its response code (RFC 7252 retransmission: 2 s, doubling, 4 times)."""
        self.mid = self.mid + 1 & 0xFFFF
        self.token = token = self.fleet.next_token()
        datagram = message(CON, code, self.mid, token, options, payload)
        self.waiting = waiting = asyncio.get_running_loop().create_future()
        self._retransmit(datagram, 5, 2.0, waiting)
        try:
            return await waiting
        finally:
            if self.timer is not None:
                self.timer.cancel()
            self.waiting = None

    def register_options(self) -> bytes:
        return encode_options([
            (URI_PATH, b"rd"), (CONTENT_FORMAT, bytes((LINK_FORMAT,))),
            (URI_QUERY, f"ep={self.endpoint}".encode()), (URI_QUERY, b"lt=3600"),
            (URI_QUERY, f"lwm2m={self.fleet.answers.version}".encode()), (URI_QUERY, b"b=U"),
        ])


SEND_OPTIONS = encode_options([(URI_PATH, b"dp"), (CONTENT_FORMAT, bytes((SENML_CBOR,)))])


def send_payload() -> bytes:
    """SenML CBOR (RFC 8428 labels: bn -2, bt -3, n 0, v 2): two values of /3303/0."""
    import cbor2

    return cbor2.dumps([{-2: "/3303/0/", -3: time.time(), 0: "5700", 2: 21.5}, {0: "5701", 3: "Cel"}])


class Fleet:
    def __init__(self, port: int, mode: str) -> None:
        self.port = port
        self.answers = Answers(mode)
        self.devices: list[Device] = []
        self.answered = 0
        self.retransmissions = 0
        self._token = 0

    def next_token(self) -> bytes:
        self._token = self._token + 1 & 0xFFFFFFFF
        return struct.pack("!I", self._token)

    async def open(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for index in range(len(self.devices), count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.connect(("127.0.0.1", self.port))
            sock.setblocking(False)
            device = Device(self, index)
            await loop.create_datagram_endpoint(lambda: device, sock=sock)
            self.devices.append(device)

    async def run(self, jobs_per_worker: list[list], operation) -> dict:
        """``operation(device)`` for each device of each worker's list, one worker at a time
        per list: ``len(jobs_per_worker)`` in flight."""
        codes: dict[str, int] = {}
        errors: set[str] = set()

        async def worker(devices: list[Device]) -> None:
            for device in devices:
                try:
                    code = await operation(device)
                    name = f"{code >> 5}.{code & 31:02d}"
                    codes[name] = codes.get(name, 0) + 1
                except Exception as error:  # noqa: BLE001 - counted and reported
                    errors.add(f"{type(error).__name__}: {error}"[:160])
                    codes["error"] = codes.get("error", 0) + 1

        began = time.time()
        start = time.perf_counter()
        await asyncio.gather(*(worker(devices) for devices in jobs_per_worker))
        return {"began": began, "seconds": time.perf_counter() - start, "codes": codes, "errors": sorted(errors)[:5],
                "retransmissions": self.retransmissions}

    async def register(self, concurrency: int) -> dict:
        links = self.answers.links
        lanes = [self.devices[w::concurrency] for w in range(min(concurrency, len(self.devices)))]
        return await self.run(lanes, lambda device: device.request(POST, device.register_options(), links))

    async def send(self, ops: int, concurrency: int) -> dict:
        """``ops`` Sends, ``concurrency`` at once; each worker cycles over devices of its own."""
        payload = send_payload()
        concurrency = min(concurrency, len(self.devices))
        lanes = []
        for w in range(concurrency):
            mine = self.devices[w::concurrency]
            share = ops // concurrency + (1 if w < ops % concurrency else 0)
            lanes.append([mine[i % len(mine)] for i in range(share)])
        return await self.run(lanes, lambda device: device.request(POST, SEND_OPTIONS, payload))

    async def soak(self, seconds: float, interval: float, concurrency: int) -> dict:
        """Every device sends an Update (POST /rd/<id>, nothing else) every ``interval`` s,
        spread evenly, for ``seconds``; at most ``concurrency`` in flight."""
        loop, gate = asyncio.get_running_loop(), asyncio.Semaphore(concurrency)
        codes: dict[str, int] = {}
        pending: set[asyncio.Task] = set()

        async def update(device: Device) -> None:
            async with gate:
                try:
                    code = await device.request(POST, encode_options([(URI_PATH, part) for part in device.location]),
                                                b"")
                    name = f"{code >> 5}.{code & 31:02d}"
                except TimeoutError:
                    name = "timeout"
                codes[name] = codes.get(name, 0) + 1

        start, sent, skipped, devices = loop.time(), 0, 0, self.devices
        while (elapsed := loop.time() - start) < seconds:
            due = int(elapsed / interval * len(devices))
            for index in range(sent, due):
                device = devices[index % len(devices)]
                if device.waiting is None and device.location:  # one request of its own at a time
                    task = loop.create_task(update(device))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                else:
                    skipped += 1
            sent = max(sent, due)
            await asyncio.sleep(0.05)
        if pending:
            await asyncio.wait(pending)
        return {"seconds": loop.time() - start, "codes": codes, "skipped": skipped,
                "retransmissions": self.retransmissions}

    def close(self) -> None:
        for device in self.devices:
            device.transport.close()


async def client_main(port: int, mode: str) -> None:
    """Commands on stdin, one JSON answer a line on stdout:
    ``open N``, ``register C``, ``send OPS C``, ``soak SECONDS INTERVAL C``, ``stop``."""
    fleet = Fleet(port, mode)
    reply(ready=True, pid=os.getpid())
    async for command in commands():
        if command[0] == "open":
            await fleet.open(int(command[1]))
            reply(devices=len(fleet.devices))
        elif command[0] == "register":
            reply(**await fleet.register(int(command[1])), answered=fleet.answered)
        elif command[0] == "send":
            reply(**await fleet.send(int(command[1]), int(command[2])))
        elif command[0] == "soak":
            reply(**await fleet.soak(float(command[1]), float(command[2]), int(command[3])))
        elif command[0] == "stop":
            break
    fleet.close()
    reply(stopped=True, answered=fleet.answered)


# --------------------------------------------------------------------------- the server process (_server)


class Profiles:
    """Counts the endpoints whose profile the server stored, from its events."""

    def __init__(self, server) -> None:
        self.server = server
        self.seen: set[str] = set()
        self.last = 0.0
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._follow())

    def _subscribe(self):
        try:  # only the profile events, where the hub can filter by kind
            return self.server.events.subscribe(kinds=("profile",))
        except TypeError:
            return self.server.events.subscribe()

    async def _follow(self) -> None:
        with self._subscribe() as events:
            while True:
                event = await events.get()
                if event.kind == "profile" and event.endpoint not in self.seen:
                    self.seen.add(event.endpoint)
                    self.last = event.time
                    self.changed.set()

    async def wait(self, count: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.changed.wait()
            if not self.changed.is_set():  # quiet for a second: events lost? ask the server
                for registration in self.server.registrations():
                    if registration.endpoint not in self.seen and self.server.profile(registration.endpoint):
                        self.seen.add(registration.endpoint)
        if len(self.seen) >= count:  # no subscriber left to cost the server anything in later phases
            self.task.cancel()
        return {"profiles": len(self.seen), "last": self.last}


async def reads(server, ops: int, concurrency: int) -> dict:
    """``ops`` Reads of /3/0/0, spread over every registered device, ``concurrency`` at once."""
    from ipso_objects import LwM2MPath
    from lwm2m_server.core import operations

    path = LwM2MPath.parse("/3/0/0")
    endpoints = [registration.endpoint for registration in server.registrations()]
    concurrency = min(concurrency, len(endpoints))
    codes: dict[str, int] = {}

    def read(registration):
        return operations.read(registration, path, registry=server.registry)

    async def worker(w: int) -> None:
        mine = endpoints[w::concurrency]
        share = ops // concurrency + (1 if w < ops % concurrency else 0)
        for i in range(share):
            result = await server.perform(mine[i % len(mine)], read)
            code = getattr(result, "code", "queued")
            codes[code] = codes.get(code, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"seconds": time.perf_counter() - start, "codes": codes}


async def lwm2m_server_main(log_level: str) -> None:
    from ipso_objects import ObjectRegistry
    from lwm2m_server.config import ServerConfig
    from lwm2m_server.heap import tune_for_serving
    from lwm2m_server.logging_setup import configure_logging
    from lwm2m_server.server import LwM2MServer
    from lwm2m_server.store.sqlite import SqliteStore

    configure_logging(log_level, "console", sys.stderr)
    base = ServerConfig()
    # every device is on 127.0.0.1: a host's rate limit would refuse most of them
    config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, rate_limit_per_peer=0, secure_port=None))
    with tempfile.TemporaryDirectory() as folder:
        store = await SqliteStore.open(Path(folder) / "state.sqlite3")
        server = LwM2MServer(config, ObjectRegistry.default(), store)
        await server.start()
        profiles = Profiles(server)
        tune_for_serving()  # as the daemon does once started (it collects first, for the RSS below)
        reply(port=server.port, pid=os.getpid(), rss=vm_rss())
        try:
            async for command in commands():
                if command[0] == "profiles":
                    reply(**await profiles.wait(int(command[1]), float(command[2])))
                elif command[0] == "read":
                    reply(**await reads(server, int(command[1]), int(command[2])))
                elif command[0] == "rss":
                    gc.collect()
                    reply(rss=vm_rss(), registrations=len(server.registrations()))
                elif command[0] == "stop":
                    break
        finally:
            profiles.task.cancel()
            await server.stop()
            await store.close()
    reply(stopped=True)


async def bare_server_main(log_level: str) -> None:
    """The baseline: aiocoap and one resource at /rd, nothing else."""
    import aiocoap
    from aiocoap import Code, Message, resource

    class Directory(resource.Resource):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        async def render_post(self, request: Message) -> Message:
            self.count += 1
            return Message(code=Code.CREATED, location_path=("rd", f"{self.count:x}"))

    site = resource.Site()
    directory = Directory()
    site.add_resource(["rd"], directory)
    context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
    port = context.request_interfaces[0].token_interface.message_interface._local_port()
    gc.collect()
    reply(port=port, pid=os.getpid(), rss=vm_rss())
    async for command in commands():
        if command[0] == "rss":
            gc.collect()
            reply(rss=vm_rss(), registrations=directory.count)
        elif command[0] == "stop":
            break
    await context.shutdown()
    reply(stopped=True)


# --------------------------------------------------------------------------- the benchmark


@contextlib.asynccontextmanager
async def server_and_fleet(kind: str, mode: str, devices: int, args: argparse.Namespace, label: str):
    server = await Child.start(HERE, "_server", kind, args.log_level, label, timeout=900)
    fleet = None
    try:
        fleet = await Child.start(HERE, "_client", str(server.first["port"]), mode, timeout=900)
        await fleet.ask("open", devices)
        yield server, fleet
    finally:
        if fleet is not None:
            await fleet.stop()
        await server.stop()


def check(answer: dict, expected: int, what: str, code: str) -> None:
    """Say so on stderr when not every operation got ``code``."""
    got = answer.get("codes", {}).get(code, 0)
    if got != expected:
        print(f"  warning: {what}: {got}/{expected} answered {code}; {answer.get('codes')} "
              f"{answer.get('errors', '')}", file=sys.stderr)


async def register_phase(kind: str, args: argparse.Namespace) -> dict:
    """Phase 1: ``args.count`` Registers (discovery reads answered 4.04)."""
    n = args.count
    async with server_and_fleet(kind, "notfound", n, args, "register") as (server, fleet):
        cpu_server, cpu_loop, cpu_fleet = server.cpu(), server.loop_cpu(), fleet.cpu()
        done = await fleet.ask("register", args.concurrency)
        if kind == "lwm2m":  # discovery (one read, answered 4.04) belongs to the Register's cost
            await server.ask("profiles", n, 60)
        cpu_server, cpu_loop = server.cpu() - cpu_server, server.loop_cpu() - cpu_loop
        cpu_fleet = fleet.cpu() - cpu_fleet
    check(done, n, f"{kind} Register", "2.01")
    ok = done["codes"].get("2.01", 0)
    return {"rate": ok / done["seconds"], "cpu_ms": cpu_server / n * 1e3, "loop_cpu_ms": cpu_loop / n * 1e3,
            "client_cpu_ms": cpu_fleet / n * 1e3, "client_busy": cpu_fleet / done["seconds"]}


async def discovery_phase(args: argparse.Namespace) -> dict:
    """Phase 2: ``args.count`` Registers whose discovery reads are answered properly."""
    n = args.count
    async with server_and_fleet("lwm2m", "sim", n, args, "discovery") as (server, fleet):
        cpu_server, cpu_fleet = server.cpu(), fleet.cpu()
        done = await fleet.ask("register", args.concurrency)
        profiles = await server.ask("profiles", n, 120)
        cpu_server, cpu_fleet = server.cpu() - cpu_server, fleet.cpu() - cpu_fleet
    check(done, n, "Register (with discovery)", "2.01")
    if profiles["profiles"] != n:
        print(f"  warning: discovery: {profiles['profiles']}/{n} profiles", file=sys.stderr)
    seconds = profiles["last"] - done["began"]
    return {"rate": profiles["profiles"] / seconds, "cpu_ms": cpu_server / n * 1e3,
            "client_cpu_ms": cpu_fleet / n * 1e3, "client_busy": cpu_fleet / seconds}


async def operations_phase(registered: int, args: argparse.Namespace) -> dict:
    """Phase 3 (and 4): Reads and Sends with ``registered`` devices registered."""
    f: dict = {}
    async with server_and_fleet("lwm2m", "notfound", registered, args, f"ops{registered}") as (server, fleet):
        rss_start = server.first["rss"]
        check(await fleet.ask("register", args.concurrency), registered, f"Register ×{registered}", "2.01")
        await server.ask("profiles", registered, 300)  # discovery settled: nothing else runs
        rss = await server.ask("rss")
        f["rss_per_device"] = (rss["rss"] - rss_start) / registered

        before = server.cpu()
        done = await server.ask("read", args.ops, args.concurrency)
        f["read_cpu_ms"] = (server.cpu() - before) / args.ops * 1e3
        f["read_rate"] = args.ops / done["seconds"]
        check(done, args.ops, f"Read at {registered}", "2.05")

        before = server.cpu()
        done = await fleet.ask("send", args.ops, args.concurrency)
        f["send_cpu_ms"] = (server.cpu() - before) / args.ops * 1e3
        f["send_rate"] = args.ops / done["seconds"]
        check(done, args.ops, f"Send at {registered}", "2.04")
    return f


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


async def main(args: argparse.Namespace) -> None:
    print(f"speed: {args.runs} run(s), {args.count} Registers ({args.concurrency} in flight), "
          f"Read/Send ×{args.ops} at {args.small} and {args.large} registrations; "
          f"{os.cpu_count()} CPUs; server log level {args.log_level}", flush=True)
    results: dict[str, list[dict]] = {k: [] for k in ("lwm2m", "bare", "discovery", "small", "large")}
    for run in range(1, args.runs + 1):
        bare = await register_phase("bare", args)
        lwm2m = await register_phase("lwm2m", args)
        print(f"run {run}: Register {lwm2m['rate']:.0f}/s ({lwm2m['cpu_ms']:.2f} ms CPU, event loop "
              f"{lwm2m['loop_cpu_ms']:.2f}) vs bare aiocoap "
              f"{bare['rate']:.0f}/s ({bare['cpu_ms']:.2f} ms CPU): x{lwm2m['rate'] / bare['rate']:.2f}", flush=True)
        discovery = await discovery_phase(args)
        print(f"run {run}: Register+discovery {discovery['rate']:.0f} devices/s ({discovery['cpu_ms']:.2f} ms CPU) "
              f"vs bare Register {bare['rate']:.0f}/s: x{discovery['rate'] / bare['rate']:.2f}", flush=True)
        small = await operations_phase(args.small, args)
        large = await operations_phase(args.large, args)
        print(f"run {run}: CPU per Read {small['read_cpu_ms']:.3f} ms at {args.small}, {large['read_cpu_ms']:.3f} ms "
              f"at {args.large}: x{large['read_cpu_ms'] / small['read_cpu_ms']:.2f}; per Send "
              f"{small['send_cpu_ms']:.3f} / {large['send_cpu_ms']:.3f} ms: "
              f"x{large['send_cpu_ms'] / small['send_cpu_ms']:.2f}; RSS {large['rss_per_device'] / 1e3:.2f} KB "
              f"per device at {args.large}", flush=True)
        for key, value in (("lwm2m", lwm2m), ("bare", bare), ("discovery", discovery), ("small", small),
                           ("large", large)):
            results[key].append(value)
    report(results, args)


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    m = {key: {k: median(runs, k) for k in runs[0]} for key, runs in results.items()}
    lw, bare, disc, small, large = (m[k] for k in ("lwm2m", "bare", "discovery", "small", "large"))
    k = lambda n: f"{n // 1000}k" if n % 1000 == 0 else str(n)  # noqa: E731
    rows = [
        ("figure", "server", "baseline", "ratio", "target", "server CPU ms/op", "baseline CPU ms/op"),
        ("Register /s", f"{lw['rate']:.0f}", f"{bare['rate']:.0f} bare", f"x{lw['rate'] / bare['rate']:.2f}", "",
         f"{lw['cpu_ms']:.3f}", f"{bare['cpu_ms']:.3f}"),
        ("Register+discovery /s", f"{disc['rate']:.0f}", f"{bare['rate']:.0f} bare Reg",
         f"x{disc['rate'] / bare['rate']:.2f}", ">= 0.5", f"{disc['cpu_ms']:.3f}", f"{bare['cpu_ms']:.3f}"),
        (f"Read CPU @{k(args.large)} vs @{k(args.small)}", f"{large['read_cpu_ms']:.3f} ms",
         f"{small['read_cpu_ms']:.3f} ms", f"x{large['read_cpu_ms'] / small['read_cpu_ms']:.2f}", "<= 1.1",
         f"{large['read_cpu_ms']:.3f}", f"{small['read_cpu_ms']:.3f}"),
        (f"Send CPU @{k(args.large)} vs @{k(args.small)}", f"{large['send_cpu_ms']:.3f} ms",
         f"{small['send_cpu_ms']:.3f} ms", f"x{large['send_cpu_ms'] / small['send_cpu_ms']:.2f}", "<= 1.1",
         f"{large['send_cpu_ms']:.3f}", f"{small['send_cpu_ms']:.3f}"),
        (f"RSS per device @{k(args.large)}", f"{large['rss_per_device'] / 1e3:.2f} KB",
         f"{small['rss_per_device'] / 1e3:.2f} KB @{k(args.small)}",
         f"x{large['rss_per_device'] / small['rss_per_device']:.2f}", "", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\nmedians of {args.runs} run(s):")
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"  rates: Read {small['read_rate']:.0f}/s @{k(args.small)}, {large['read_rate']:.0f}/s @{k(args.large)}; "
          f"Send {small['send_rate']:.0f}/s @{k(args.small)}, {large['send_rate']:.0f}/s @{k(args.large)}")
    print(f"  device process CPU per op (busy fraction): Register {lw['client_cpu_ms']:.3f} ms ({lw['client_busy']:.0%}), "
          f"bare {bare['client_cpu_ms']:.3f} ms ({bare['client_busy']:.0%}), Register+discovery "
          f"{disc['client_cpu_ms']:.3f} ms ({disc['client_busy']:.0%})")
    print("  Register CPU includes the server's discovery read (answered 4.04) and its stored profile")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="Registers in phases 1 and 2")
    parser.add_argument("--concurrency", type=int, default=100, help="operations in flight")
    parser.add_argument("--small", type=int, default=1000, help="registrations of the first Read/Send point")
    parser.add_argument("--large", type=int, default=10000, help="registrations of the second Read/Send point")
    parser.add_argument("--ops", type=int, default=5000, help="Reads and Sends at each point")
    parser.add_argument("--runs", type=int, default=3, help="runs; every figure is their median")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke size: --count 200 --small 200 --large 2000 --ops 500 --runs 1")
    parser.add_argument("--log-level", default="warning", help="server log level (info logs every request)")
    parser.add_argument("--profile", metavar="FOLDER", type=Path,
                        help="run every server process under cProfile (which inflates its CPU figures) and write "
                             "FOLDER/<phase>-<kind>-<pid>.prof (python -m pstats to read)")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["SPEED_PROFILE_DIR"] = str(args.profile.resolve())
    if args.quick:
        args.count, args.small, args.large, args.ops, args.runs = 200, 200, 2000, 500, 1
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_server":  # _server KIND LOG_LEVEL LABEL
        kind, level, label = sys.argv[2:5]
        running = lwm2m_server_main(level) if kind == "lwm2m" else bare_server_main(level)
        if folder := os.environ.get("SPEED_PROFILE_DIR"):
            import cProfile

            with cProfile.Profile() as profiler:
                asyncio.run(running)
            profiler.dump_stats(Path(folder) / f"{label}-{kind}-{os.getpid()}.prof")
        else:
            asyncio.run(running)
    elif len(sys.argv) > 1 and sys.argv[1] == "_client":
        asyncio.run(client_main(int(sys.argv[2]), sys.argv[3]))
    else:
        asyncio.run(main(parse_arguments()))
