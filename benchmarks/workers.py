"""Scale-out benchmark (issue 15, item 5): the daemon with ``coap.workers: 1`` and ``2``
registering the same devices, 100,000 devices registered against 2 workers, and a
model rolled out with 1 and with 2 workers.

    python benchmarks/workers.py                    # defaults: 6 x (20,000 devices with 1 worker, 20,000 with 2),
                                                    # then 100,000 with 2, then 3 x (rollout to 200, 1 vs 2 workers)
    python benchmarks/workers.py --quick            # CI smoke run (< 60 s); figures only roughly meaningful
    python benchmarks/workers.py --devices 0 --rollout-devices 0                          # phase 1 only
    python benchmarks/workers.py --runs 0 --devices 0 --rollout-devices 400              # phase 3 only
    python benchmarks/workers.py --store postgresql --devices 200000 --timeout 900

Each phase starts FRESH daemons (``tinymlaas serve --config FILE``, i.e. module
``lwm2m_server.cli``), each in a temporary folder: plain CoAP on a free loopback port, no
CoAPS, no bootstrap, per-peer rate limiting off (thousands of devices share a source
address), log level ``--log-level``, and the store ``--store``: SQLite by default (the
daemon's shipped store, the file the workers of one machine share), or PostgreSQL on
127.0.0.1:5432 (database ``test``, a fresh schema per daemon, dropped after; it runs on
the same cores as the workers, and the report prints what that leaves them). With 2 workers the daemon also gets
``cluster: {bus: nats://127.0.0.1:4222, name: <unique per daemon>}``; with 1 it runs as
shipped, without a bus.

The devices are ``register_load.c`` (beside this file), compiled with gcc into a
temporary folder at every run: each device its own UDP socket and source port on
127.0.77.x (``--per-addr`` devices an address), over as many processes as the
open-files limit needs; CON Register with RFC 7252 retransmission, ``--window`` devices
in flight (1,000 by default: with 100, two workers left 7-9 % of the machine idle, bound
by the window rather than the cores, while one worker's rate is the same from 50 to 1,000).
The server's capability discovery reads are answered 4.04 at once (as
``speed.py``'s "notfound" mode), so a Register's cost includes one failed discovery read
and storing the (empty) profile; a device holds its place in the window until it
answered that read, and a burst ends when the store holds every profile.

Figures, per phase:

* registrations/s: new profiles in the store / (last profile stored - go); the client's
  own rate of 2.01 answers beside it;
* CPU ms per Register (``/proc/<pid>/stat`` utime + stime, before and after): the server
  (leader and every descendant: workers, multiprocessing's resource tracker), the
  client (all its processes), the NATS server (shared: other clients' traffic counts
  too), the PostgreSQL backends serving this daemon's connections, and every other
  process on the machine (``/proc/stat`` busy time minus all of the above: other work
  on a shared machine shows here, and takes cores the 2 workers would use);
* losses: Registers with no answer after 4 retransmissions (timeouts), other codes,
  retransmissions, devices never read by the server (``noread``).

Phase 1: a daemon with 1 worker and one with 2 run side by side (each idle while the
other works), and ``--runs`` times a burst of ``--count`` new devices registers with
each in turn (which goes first alternates). This machine's speed changes by up to 2x
from one second to the next (other tenants; a fixed loop of Python takes 100 to 190 ms):
bursts of a few seconds taken in turn meet the same slow and fast spells, where fresh
daemons measured one after the other, with their starts between, gave ratios from x1.29
to x2.20 for the same tree. Each burst comes from source addresses of its own (a new
device on an address and port an earlier burst used would have its Register taken for
that device's retransmission, same message ID, within EXCHANGE_LIFETIME, and answered
from the server's cache). The table gives every figure over all the bursts of a daemon
(devices / seconds, CPU / devices) and the ratio (issue 15's target: >= 1.7), then the
ratio of each pair of bursts, and the most 2 workers could do with every core to
themselves at their measured CPU cost per Register (server + client + NATS +
PostgreSQL), less sensitive to other work.
Phase 2 (``--big-runs``, default once): ``--devices`` against 2 workers, bounded by
``--timeout`` (no Register started after it, those in flight given 30 s more; the
output says when it was hit): time,
rate, the server's RSS after (VmRSS of every process, total and per process), and how
many landed on each worker, counted from the endpoints each worker claims on the bus
(``<cluster name>.claims``, one message per batch of its registrations; a worker's
``{"op": "directory"}`` answer would pass NATS's 1 MB message limit at this size).

Phase 3 (``--rollout-runs`` times, 1 and 2 workers alternating; ``--rollout-devices``, 0 skips
it): rollout time. A fresh daemon as above (plain CoAP; with 2 workers the bus), and
``--rollout-devices`` simulated devices that really install the module:
``simulators.client.SimulatedDevice`` s (profile ``--device-profile``, default
``linux-gateway``), run by ``rollout_speed.py``'s ``_fleet`` over
``--rollout-processes`` processes (:class:`processes.Child`), each device its own UDP
port on 127.0.0.1, with the daemon's public signing key
(``data/keys/signing-es256.pub.pem``, made at its start) as SUIT trust anchor. They
register (``--register-concurrency`` at once per process) and are discovered (every
profile in the store); through the management API (bearer token from
``data/api-token``) the model is added (``rollout_speed.py``'s ~100 KB MLP,
``POST /models``) and compiled for the devices' class (``POST /compile``: the one-time
compile is kept out of the measurement, it lands in the compile cache the rollout uses);
then, measured, ``POST /rollouts`` (push, ``--rollout-max-in-flight`` 64, canary
fraction 0, every device), polling ``GET /rollouts`` (per-status counts only) every
``--rollout-poll`` s until every enrolled device is final (done, failed, ...), the
rollout paused, or ``--rollout-timeout``. Figures, medians over the runs, side by side
with the ratio (2 workers / 1):

* wall time from just before ``POST /rollouts`` to the first poll that sees every device
  final (so up to one poll interval late), and devices done per second;
* devices done and not done (a device not done, a paused rollout, a timeout or a device
  that did not register are printed with the statuses and reasons, never hidden);
* CPU ms per device over the rollout, as in phase 1: the server (every daemon process),
  the device processes, NATS, the PostgreSQL backends, the other processes, the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from process_cpu import CpuMeter, children, cmdline, cpu, named, postgres_backends
from processes import vm_rss

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOAD_SOURCE = HERE / "register_load.c"
NATS_URL = "nats://127.0.0.1:4222"
PG_URL = "postgresql://127.0.0.1:5432/test"
ADDR_BASE = 77 << 8 | 1  # devices' source addresses: 127.0.77.1, 127.0.77.2, ...
PORT_ATTEMPTS = 3  # daemon starts on fresh free ports when the chosen one was taken meanwhile
ROLLOUT_SPEED = HERE / "rollout_speed.py"  # its ``_fleet`` runs the simulated devices of the rollout phase
FINAL_STATUSES = ("done", "failed", "incompatible", "rolled_back", "superseded")  # lwm2m_server.ota.rollouts.FINAL


# --------------------------------------------------------------------------- stores


class Store:
    """Where a daemon keeps its state, and how the benchmark counts what is in it."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.schema = f"wb_{uuid.uuid4().hex[:12]}"
        self.path = folder / "data" / "store.sqlite3"
        self._connection = None

    def config(self) -> str:
        if self.kind == "postgresql":
            return f"store: {{kind: postgresql, url: '{PG_URL}?options=-csearch_path%3D{self.schema}'}}\n"
        return f"store: {{kind: sqlite, path: '{self.path}'}}\n"

    def _connect(self):
        if self._connection is None:
            if self.kind == "postgresql":
                import psycopg

                self._connection = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
            else:
                import sqlite3

                self._connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        return self._connection

    def count(self, what: str) -> int:
        table = "documents WHERE kind = 'profile'" if what == "profiles" else "registrations"
        prefix = f"{self.schema}." if self.kind == "postgresql" else ""
        try:
            return int(self._connect().execute(f"SELECT count(*) FROM {prefix}{table}").fetchone()[0])
        except Exception:  # noqa: BLE001 - not created yet, or busy: counted at the next poll
            if self.kind == "postgresql" and self._connection is not None:
                self._connection.close()
                self._connection = None
            return 0

    def drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self.kind == "postgresql":
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def postgresql_answers() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - not installed, not running, not reachable
        return False


def nats_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the daemon


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortTaken(RuntimeError):
    """The daemon could not bind a port chosen free a moment before: other work took it."""


class Daemon:
    """``tinymlaas serve --config server.yaml`` in ``folder``, ``workers`` processes."""

    def __init__(self, folder: Path, workers: int, store: Store, cluster: str, log_level: str) -> None:
        self.folder, self.workers, self.store = folder, workers, store
        self.coap_port, self.api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        bus = f"cluster: {{bus: '{NATS_URL}', name: {cluster}}}\n" if workers > 1 else ""
        (folder / "server.yaml").write_text(
            f'coap: {{host: "127.0.0.1", port: {self.coap_port}, secure_port: null, workers: {workers}, '
            f"rate_limit_per_peer: 0}}\n"
            f"bootstrap: {{enabled: false}}\napi: {{port: {self.api_port}}}\n"
            f"logging: {{level: {log_level}, format: json}}\n{store.config()}{bus}")
        self.process: subprocess.Popen | None = None

    async def start(self, timeout: float = 120.0) -> None:
        self.log = open(self.folder / "daemon.log", "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "lwm2m_server.cli", "serve", "--config", "server.yaml"],
                                        cwd=self.folder, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + timeout
        while True:  # the API starts last, after every worker answered on the bus
            if self.process.poll() is not None:
                failure = PortTaken if "is in use by another process" in self.tail() else RuntimeError
                self.log.close()
                raise failure(f"daemon exited with {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.api_port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon not ready within {timeout:g} s: {self.tail()}")
            await asyncio.sleep(0.1)
        while len(self.processes()) < self.workers:  # the leader and its workers 1..N-1
            await asyncio.sleep(0.1)

    def tail(self) -> str:
        return (self.folder / "daemon.log").read_text(errors="replace")[-2000:]

    def pids(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)]

    def processes(self) -> dict[str, int]:
        """``leader``, ``worker 1``, ... (in the order they started), and any other child."""
        named_pids, worker = {"leader": self.process.pid}, 0
        for pid in sorted(children(self.process.pid)):
            line = cmdline(pid)
            if "resource_tracker" in line:
                named_pids["resource tracker"] = pid
            elif "multiprocessing" in line:
                worker += 1
                named_pids[f"worker {worker}"] = pid
            else:
                named_pids[f"pid {pid}"] = pid
        return named_pids

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        for _ in range(600):
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            for pid in reversed(self.pids()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


# --------------------------------------------------------------------------- the devices


def compile_load(folder: Path) -> Path:
    binary = folder / "register_load"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(LOAD_SOURCE)], check=True)
    return binary


class Devices:
    """The C load generator: ``ready`` once every socket is open, then ``go`` and ``stop``."""

    def __init__(self, process: asyncio.subprocess.Process, first: dict) -> None:
        self.process, self.first = process, first

    @classmethod
    async def start(cls, binary: Path, port: int, count: int, prefix: str, args: argparse.Namespace,
                    addr_base: int = ADDR_BASE) -> Devices:
        process = await asyncio.create_subprocess_exec(
            str(binary), "--server", f"127.0.0.1:{port}", "--devices", str(count), "--window", str(args.window),
            "--per-addr", str(args.per_addr), "--addr-base", str(addr_base), "--prefix", prefix,
            "--timeout", str(args.timeout), "--read-wait", "20",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        devices = cls(process, {})
        devices.first = await devices._answer(300)
        return devices

    @property
    def pids(self) -> list[int]:
        return [self.process.pid, *self.first.get("pids", [])]

    async def _answer(self, timeout: float) -> dict:
        import json

        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"register_load ended (status {await self.process.wait()})")
        return json.loads(line)

    async def go(self, timeout: float) -> dict:
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()
        return await self._answer(timeout)

    async def stop(self) -> dict:
        with contextlib.suppress(Exception):
            self.process.stdin.write(b"stop\n")
            await self.process.stdin.drain()
            answer = await self._answer(60)
            await self.process.wait()
            return answer
        self.process.kill()
        await self.process.wait()
        return {}


class BusCount:
    """Counts the endpoints each worker claims on ``<cluster>.claims`` (its registrations,
    endpoints only: this process shares the cores with the server)."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self._nc = None

    async def start(self, cluster: str) -> None:
        import cbor2
        import nats

        self._nc = await nats.connect(NATS_URL, name=f"{cluster}-benchmark")

        async def heard(msg) -> None:
            with contextlib.suppress(Exception):
                message = cbor2.loads(msg.data)
                self.counts[str(message["worker"])] += len(message["endpoints"])

        await self._nc.subscribe(f"{cluster}.claims", cb=heard)

    def per_worker(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.drain()


# --------------------------------------------------------------------------- one phase


async def wait_profiles(store: Store, expected: int, interval: float, quiet: float,
                        deadline: float) -> tuple[int, float]:
    """Poll the store until it holds ``expected`` profiles (or none came for ``quiet`` s,
    or ``deadline``): how many, and when the last poll that saw more was (monotonic)."""
    seen, seen_at = -1, time.monotonic()
    while True:
        count = store.count("profiles")
        now = time.monotonic()
        if count != seen:
            seen, seen_at = count, now
        if count >= expected or now - seen_at > quiet or now > deadline:
            return count, seen_at
        await asyncio.sleep(interval)


def discard(store: Store, folder: Path, keep: bool) -> None:
    """Drop a phase's schema (PostgreSQL); remove its folder, unless ``keep`` (then it is named)."""
    with contextlib.suppress(Exception):
        store.drop()
    if keep:
        print(f"  kept {folder}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)


async def start_daemon(folder: Path, workers: int, store: Store, cluster: str, log_level: str) -> Daemon:
    """A started daemon; on fresh ports when the chosen ones were taken meanwhile."""
    for attempt in range(PORT_ATTEMPTS):
        daemon = Daemon(folder, workers, store, cluster, log_level)
        try:
            await daemon.start()
            return daemon
        except PortTaken as error:  # tests running beside the benchmark bind ephemeral ports too
            if attempt == PORT_ATTEMPTS - 1:
                raise
            print(f"  {error.args[0].splitlines()[-1]}: trying other ports", file=sys.stderr)
        except BaseException:
            await daemon.stop()
            raise
    raise AssertionError("unreachable")


class Setup:
    """A fresh daemon of ``workers`` processes in a temporary folder, with its own store
    (and, with 2 workers, its own cluster name on the bus); bursts of devices register
    with it one after the other (:func:`burst`)."""

    def __init__(self, workers: int, args: argparse.Namespace) -> None:
        self.workers, self.args = workers, args
        self.folder = Path(tempfile.mkdtemp(prefix="tinymlaas-workers-"))
        self.store = Store(args.store, self.folder)
        self.cluster = f"wb{uuid.uuid4().hex[:12]}"
        self.daemon: Daemon | None = None
        self.bursts = 0
        self.profiles = 0  # in the store after the last burst
        self.addr_base = ADDR_BASE  # the next burst's first source address

    async def __aenter__(self) -> Setup:
        try:
            self.daemon = await start_daemon(self.folder, self.workers, self.store, self.cluster, self.args.log_level)
        except BaseException:
            discard(self.store, self.folder, self.args.keep)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.daemon.stop()
        finally:
            discard(self.store, self.folder, self.args.keep)


async def burst(setup: Setup, count: int, big: bool = False) -> dict:
    """``count`` new devices register with ``setup``'s daemon; the figures of the burst."""
    args, daemon, store = setup.args, setup.daemon, setup.store
    setup.bursts += 1
    devices = bus = None
    try:
        # each burst from addresses of its own: a new device on an address and port an earlier one
        # used would have its Register taken for that one's retransmission (same message ID) within
        # EXCHANGE_LIFETIME, and answered from the server's cache
        devices = await Devices.start(args.binary, daemon.coap_port, count, f"{setup.cluster}b{setup.bursts}", args,
                                      setup.addr_base)
        setup.addr_base += -(-count // args.per_addr)
        if big and setup.workers > 1:
            bus = BusCount()
            await bus.start(setup.cluster)
        meter = CpuMeter({
            "server": daemon.pids, "client": lambda: devices.pids, "nats": lambda: named("nats-server"),
            "postgresql": lambda: postgres_backends(daemon.pids()) if store.kind == "postgresql" else [],
            "benchmark": lambda: [os.getpid()],
        })
        per_process_before = {name: cpu(pid) for name, pid in daemon.processes().items()}
        done = await devices.go(args.timeout + 200)
        t_go = done["t_go"]
        stored, t_profiles = await wait_profiles(store, setup.profiles + done["created"], 0.5 if big else 0.05,
                                                 30 if big else 10, time.monotonic() + args.timeout + 120)
        profiles, setup.profiles = stored - setup.profiles, stored
        used = meter.read()
        f = {"workers": setup.workers, "count": count, "store": store.kind, "timeout": args.timeout, "done": done,
             "profiles": profiles,
             "seconds": t_profiles - t_go, "rate": profiles / max(t_profiles - t_go, 1e-9),
             "created_rate": done["created"] / max(done["t_last_created"] - t_go, 1e-9),
             "cpu": used, "per_process_cpu": {name: cpu(pid) - per_process_before.get(name, 0.0)
                                              for name, pid in daemon.processes().items()}}
        f["cpu_ms"] = {k: v / max(profiles, 1) * 1e3 for k, v in used.items() if k not in ("wall",)}
        if big:
            f["rss"] = {name: vm_rss(pid) for name, pid in daemon.processes().items()}
            f["registrations"] = store.count("registrations")
            if bus is not None:
                await asyncio.sleep(1)  # the last events in flight
                f["landed"] = bus.per_worker()
        f["answered"] = (await devices.stop()).get("answered")
        devices = None
        return f
    finally:
        if bus is not None:
            await bus.close()
        if devices is not None:
            await devices.stop()


# --------------------------------------------------------------------------- the rollout phase


class Api:
    """The daemon's management API (``/api/v1``, the bearer token from its data folder)."""

    def __init__(self, daemon: Daemon) -> None:
        import aiohttp

        token = (daemon.folder / "data" / "api-token").read_text().strip()
        self.url = f"http://127.0.0.1:{daemon.api_port}/api/v1"
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                             timeout=aiohttp.ClientTimeout(total=300))

    async def call(self, method: str, path: str, json_body=None, data: bytes | None = None, params=None):
        async with self.session.request(method, self.url + path, json=json_body, data=data, params=params) as answer:
            body = await answer.json(content_type=None)
            if answer.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {answer.status} {str(body)[:400]}")
            return body

    async def close(self) -> None:
        await self.session.close()


async def start_fleets(port: int, anchor: Path, count: int, args: argparse.Namespace) -> list:
    """``count`` :class:`simulators.client.SimulatedDevice` s (``roll-00000``...) over
    ``--rollout-processes`` processes, as ``rollout_speed.py`` runs them (its ``_fleet``)."""
    from processes import Child

    processes = max(1, min(args.rollout_processes, count))
    shares = [count // processes + (1 if k < count % processes else 0) for k in range(processes)]
    starts = [sum(shares[:k]) for k in range(processes)]
    fleets = []
    try:
        for first, share in zip(starts, shares):
            fleets.append(await Child.start(ROLLOUT_SPEED, "_fleet", str(port), str(anchor), args.device_profile,
                                            str(first), str(share), args.log_level, timeout=args.rollout_timeout + 300,
                                            first_timeout=120, stop_timeout=60, cwd=ROOT))
    except BaseException:
        for fleet in fleets:
            await fleet.stop()
        raise
    return fleets


async def rollout_phase(workers: int, count: int, model: bytes, run: int, args: argparse.Namespace) -> dict:
    """A fresh daemon of ``workers`` processes; ``count`` simulated devices register and
    are discovered; the model is added and compiled for their class (outside the
    measurement); then, measured, a push rollout to every device through the API until
    every device is final."""
    folder = Path(tempfile.mkdtemp(prefix="tinymlaas-wroll-"))
    store = Store(args.store, folder)
    cluster = f"wr{uuid.uuid4().hex[:12]}"
    daemon = api = None
    fleets: list = []
    label = f"rollout run {run}, {workers} worker{'s' if workers > 1 else ''}"
    try:
        daemon = await start_daemon(folder, workers, store, cluster, args.log_level)
        anchor = folder / "data" / "keys" / "signing-es256.pub.pem"  # the daemon's own SUIT signing key, made at start
        if not anchor.is_file():
            raise RuntimeError(f"the daemon made no public signing key at {anchor}")
        api = Api(daemon)
        fleets = await start_fleets(daemon.coap_port, anchor, count, args)
        began = time.monotonic()
        started = await asyncio.gather(*(f.ask("start", args.register_concurrency) for f in fleets))
        registered = sum(s["registered"] for s in started)
        profiles, _ = await wait_profiles(store, count, 0.1, 30, time.monotonic() + args.rollout_timeout)
        print(f"  {label}: {registered}/{count} registered, {profiles} discovered in "
              f"{time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
        if registered != count or profiles != count:
            errors = [e for s in started for e in s["errors"]][:3]
            print(f"  WARNING {label}: {registered}/{count} registered, {profiles}/{count} discovered {errors}",
                  file=sys.stderr, flush=True)
        version = f"{run}.{workers}"
        added = await api.call("POST", "/models", data=model, params={"name": "wbench", "version": version})
        key = added.get("key", f"wbench@{version}")
        compiled = await api.call("POST", "/compile", {"model": key, "endpoint": "roll-00000"})
        await asyncio.sleep(0.5)  # the last discovery writes

        meter = CpuMeter({
            "server": daemon.pids, "devices": lambda: [f.pid for f in fleets], "nats": lambda: named("nats-server"),
            "postgresql": lambda: postgres_backends(daemon.pids()) if store.kind == "postgresql" else [],
            "benchmark": lambda: [os.getpid()],
        })
        per_process_before = {name: cpu(pid) for name, pid in daemon.processes().items()}
        t_create = time.monotonic()
        created = await api.call("POST", "/rollouts", {
            "model": key, "selector": {},
            "strategy": {"canary_fraction": 0, "mode": "push", "max_in_flight": args.rollout_max_in_flight}})
        rollout_id = created["id"]
        deadline = t_create + args.rollout_timeout
        reported = t_create
        while True:
            summaries = {r["id"]: r for r in await api.call("GET", "/rollouts")}  # counts, not every device
            current = summaries[rollout_id]
            now = time.monotonic()
            summary = current["summary"]
            if (summary["total"] >= count and summary["finished"] == summary["total"]) \
                    or current["state"] in ("paused", "complete", "cancelled") or now > deadline:
                break
            if now - reported > 10:
                reported = now
                print(f"  ... {label}: {now - t_create:.0f} s: {summary['counts']}", file=sys.stderr, flush=True)
            await asyncio.sleep(args.rollout_poll)
        t_final = now
        used = meter.read()
        per_process = {name: cpu(pid) - per_process_before.get(name, 0.0)
                       for name, pid in daemon.processes().items()}
        whole = await api.call("GET", f"/rollouts/{rollout_id}")  # each device's status, once, after the measurement
        counts = collections.Counter(d["status"] for d in whole["devices"])
        reasons = sorted({d["reason"][:160] for d in whole["devices"] if d["reason"] and d["status"] != "done"})[:5]
        not_final = [f"{d['endpoint']} {d['status']} phase={d['phase']}" for d in whole["devices"]
                     if d["status"] not in FINAL_STATUSES][:5]
        stats = await asyncio.gather(*(f.ask("stats") for f in fleets))
        f = {"workers": workers, "count": count, "store": store.kind, "registered": registered, "profiles": profiles,
             "seconds": t_final - t_create, "timed_out": t_final > deadline, "rollout_timeout": args.rollout_timeout,
             "state": whole["state"],
             "paused_reason": whole.get("paused_reason", ""), "enrolled": len(whole["devices"]),
             "counts": dict(counts), "done": counts.get("done", 0), "failed": count - counts.get("done", 0),
             "reasons": reasons, "not_final": not_final, "cpu": used, "per_process_cpu": per_process,
             "active": sum(s["active"] for s in stats), "processes": len(fleets),
             "plugin": compiled.get("plugin"), "payload_bytes": compiled["module"]["payload"]["size"],
             "cache_hit": compiled.get("cache_hit")}
        f["cpu_ms"] = {k: v / count * 1e3 for k, v in used.items() if k != "wall"}
        return f
    finally:
        if api is not None:
            await api.close()
        for fleet in fleets:
            await fleet.stop()
        if daemon is not None:
            await daemon.stop()
        discard(store, folder, args.keep)


def rollout_line(f: dict) -> str:
    ms = f["cpu_ms"]
    per = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in f["per_process_cpu"].items())
    problems = []
    if f["failed"]:
        problems.append(f"{f['failed']} NOT done: {f['counts']}, reasons {f['reasons']}, not final {f['not_final']}")
    if f["registered"] != f["count"] or f["profiles"] != f["count"]:
        problems.append(f"only {f['registered']} registered, {f['profiles']} discovered")
    if f["enrolled"] != f["count"]:
        problems.append(f"{f['enrolled']} enrolled in the rollout")
    if f["timed_out"]:
        problems.append(f"--rollout-timeout {f['rollout_timeout']:g} s HIT")
    if f["state"] in ("paused", "cancelled"):
        problems.append(f"rollout {f['state']} {f['paused_reason']}")
    return (f"{f['workers']} worker{'s' if f['workers'] > 1 else ''}: push rollout to {f['count']} devices in "
            f"{f['seconds']:.2f} s, {f['done']} done, {f['failed']} not ({f['active']} devices run the model); "
            f"CPU ms per device: server {ms['server']:.2f}, devices {ms['devices']:.2f}, nats {ms['nats']:.3f}, "
            f"postgresql {ms['postgresql']:.3f}, benchmark {ms['benchmark']:.3f}, others {ms['others']:.3f}; "
            f"machine busy {f['cpu']['machine'] / f['cpu']['wall'] / (os.cpu_count() or 1):.0%}; "
            f"server processes: {per}" + ("; " + "; ".join(problems) if problems else ""))


def rollout_report(runs: dict[int, list[dict]], model_bytes: int, args: argparse.Namespace) -> None:
    one, two = runs[1], runs[2]
    if not one or not two:
        return
    any_run = one[0]

    def med(fs, get) -> float:
        return median(get(f) for f in fs)

    rows = [("figure", "1 worker", "2 workers", "ratio")]

    def row(label: str, get, digits: int = 2, ratio: bool = True) -> None:
        a, b = med(one, get), med(two, get)
        # no ratio of a figure near nothing (NATS with 1 worker: other clients' traffic only)
        rows.append((label, f"{a:.{digits}f}", f"{b:.{digits}f}", f"x{b / a:.2f}" if ratio and a >= 0.1 else ""))

    row("rollout wall s (create -> last final)", lambda f: f["seconds"])
    row("devices done per s", lambda f: f["done"] / f["seconds"], 1)
    rows.append(("devices done / not done",
                 f"{med(one, lambda f: f['done']):.0f}/{med(one, lambda f: f['failed']):.0f}",
                 f"{med(two, lambda f: f['done']):.0f}/{med(two, lambda f: f['failed']):.0f}", ""))
    for key, label in (("server", "server CPU ms/device (all processes)"),
                       ("devices", "device processes CPU ms/device"),
                       ("nats", "nats-server CPU ms/device"), ("postgresql", "PostgreSQL CPU ms/device"),
                       ("others", "other processes CPU ms/device"), ("machine", "whole machine CPU ms/device")):
        row(label, lambda f, key=key: f["cpu_ms"][key], 3 if key in ("nats", "postgresql") else 2)
    row("machine busy (cores)", lambda f: f["cpu"]["machine"] / f["cpu"]["wall"], 2, ratio=False)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\nrollout time (phase 3), the median of {len(one)} run(s): push to {args.rollout_devices} "
          f"{args.device_profile} devices (simulated, {any_run['processes']} processes), max_in_flight "
          f"{args.rollout_max_in_flight}, canary 0, {model_bytes:,}-byte model, {any_run['payload_bytes']:,}-byte "
          f"compiled payload ({any_run['plugin']}; compiled before the measurement), store {args.store}; wall "
          f"time polled every {args.rollout_poll:g} s; ratio = 2 workers / 1:")
    for r in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip())
    bad = [f for f in one + two if f["failed"] or f["enrolled"] != f["count"] or f["timed_out"]
           or f["state"] in ("paused", "cancelled")]
    if bad:
        print(f"  WARNING: {len(bad)} of {len(one) + len(two)} rollout run(s) did not bring the model to every device: "
              + "; ".join(f"{f['workers']} worker(s): {f['counts']} {f['state']} {f['reasons']}" for f in bad))
    else:
        print(f"  every device of every rollout run done ({len(one) + len(two)} runs)")


# --------------------------------------------------------------------------- report


def losses(f: dict) -> str:
    d = f["done"]
    parts = [f"{d['created']}/{f['count']} 2.01", f"{f['profiles']} profiles"]
    for key in ("timeouts", "other_codes", "resets", "abandoned", "not_started", "noread", "retransmissions",
                "send_errors"):
        if d.get(key):
            parts.append(f"{key} {d[key]}")
    if d.get("timed_out"):
        parts.append(f"--timeout {f['timeout']:g} s HIT")
    return ", ".join(parts)


def run_line(f: dict) -> str:
    ms = f["cpu_ms"]
    per = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in f["per_process_cpu"].items())
    return (f"{f['workers']} worker{'s' if f['workers'] > 1 else ''}: {f['rate']:.0f} registrations/s "
            f"({f['profiles']} in {f['seconds']:.2f} s; 2.01 at {f['created_rate']:.0f}/s); CPU ms per Register: "
            f"server {ms['server']:.3f}, client {ms['client']:.3f}, nats {ms['nats']:.3f}, "
            f"postgresql {ms['postgresql']:.3f}, benchmark {ms['benchmark']:.3f}, others {ms['others']:.3f}; "
            f"machine busy {f['cpu']['machine'] / f['cpu']['wall'] / (os.cpu_count() or 1):.0%}; "
            f"server processes: {per}; {losses(f)}")


def median(values) -> float:
    return statistics.median(list(values))


def report(runs: dict[int, list[dict]], big: list[dict], args: argparse.Namespace) -> None:
    if runs[1] and runs[2]:
        one, two = runs[1], runs[2]

        def rate(fs):  # over all of a daemon's bursts
            return sum(f["profiles"] for f in fs) / max(sum(f["seconds"] for f in fs), 1e-9)

        def ms(fs, key):
            return sum(f["cpu"][key] for f in fs) / max(sum(f["profiles"] for f in fs), 1) * 1e3

        rate1, rate2 = rate(one), rate(two)
        ratios = [b["rate"] / a["rate"] for a, b in zip(one, two)]
        rows = [("figure", "1 worker", "2 workers", "ratio", "target")]
        rows.append(("registrations/s (profile stored)", f"{rate1:.0f}", f"{rate2:.0f}", f"x{rate2 / rate1:.2f}",
                     ">= 1.7"))
        c1, c2 = (sum(f["done"]["created"] for f in fs) / sum(f["done"]["t_last_created"] - f["done"]["t_go"]
                                                              for f in fs) for fs in (one, two))
        rows.append(("2.01 answers/s (client)", f"{c1:.0f}", f"{c2:.0f}", f"x{c2 / c1:.2f}", ""))
        for key, label in (("server", "server CPU ms/Register"), ("client", "client CPU ms/Register"),
                           ("nats", "nats-server CPU ms/Register"), ("postgresql", "PostgreSQL CPU ms/Register"),
                           ("benchmark", "benchmark process CPU ms/Register"),
                           ("others", "other processes CPU ms/Register"), ("machine", "whole machine CPU ms/Register")):
            a, b = ms(one, key), ms(two, key)
            rows.append((label, f"{a:.3f}", f"{b:.3f}", f"x{b / a:.2f}" if a > 0.0005 else "", ""))
        busy1, busy2 = (sum(f["cpu"]["machine"] for f in fs) / sum(f["cpu"]["wall"] for f in fs) for fs in (one, two))
        rows.append(("machine busy (cores)", f"{busy1:.2f}", f"{busy2:.2f}", "", f"of {os.cpu_count()}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        print(f"\nover {len(one)} interleaved bursts of {args.count} devices with each daemon, "
              f"{args.window} in flight, store {args.store}:")
        for row in rows:
            print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        met = "met" if rate2 / rate1 >= 1.7 else "NOT met"
        print(f"  ratio per pair of bursts: {', '.join(f'x{r:.2f}' for r in ratios)} (median x{median(ratios):.2f}); "
              f"over all bursts x{rate2 / rate1:.2f}: target x1.7 {met}")
        ours = sum(ms(two, key) for key in ("server", "client", "nats", "postgresql"))
        cores = os.cpu_count() or 1
        print(f"  with all {cores} cores to themselves, 2 workers could do at most {cores}000 / {ours:.3f} ms "
              f"(server + client + nats + postgresql CPU per Register) = {cores * 1000 / ours:.0f}/s: "
              f"x{cores * 1000 / ours / rate1:.2f} of the 1 worker's measured rate")
        if busy2 < 0.95 * cores:
            print(f"  the machine was only {busy2:.2f} of {cores} cores busy with 2 workers: the {args.window} devices "
                  "in flight, not the cores, may have bounded them (try a larger --window)")
    for f in big:
        rss = f["rss"]
        total = sum(rss.values())
        landed = f.get("landed", {})
        spread = ", ".join(f"worker {w}: {n} ({n / max(sum(landed.values()), 1):.1%})" for w, n in landed.items())
        print(f"\n{f['count']} devices against {f['workers']} workers (store {f['store']}): "
              f"{f['profiles']} registered and discovered in {f['seconds']:.1f} s, {f['rate']:.0f}/s "
              f"(2.01 at {f['created_rate']:.0f}/s); {f['registrations']} registrations in the store")
        print(f"  server RSS after: {total / 2**20:.0f} MB total ("
              + ", ".join(f"{name} {value / 2**20:.0f} MB" for name, value in rss.items()) + ")")
        print(f"  landed on each worker (the endpoints each claimed on the bus): {spread or 'unknown'}")
        ms = f["cpu_ms"]
        print(f"  CPU ms per Register: server {ms['server']:.3f}, client {ms['client']:.3f}, nats {ms['nats']:.3f}, "
              f"postgresql {ms['postgresql']:.3f}, benchmark {ms['benchmark']:.3f}, others {ms['others']:.3f}; "
              f"server processes: " + ", ".join(f"{n} {s:.1f} s" for n, s in f["per_process_cpu"].items()))
        print(f"  {losses(f)}; Register round trip p50 <= {f['done']['latency_p50_ms_le']:.1f} ms, "
              f"p99 <= {f['done']['latency_p99_ms_le']:.1f} ms")
    print("  devices answer the server's discovery reads 4.04 at once; a Register's CPU includes that read and "
          "storing the (empty) profile")


# --------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="tinymlaas-load-"))
    try:
        args.binary = compile_load(folder)
        print(f"workers: store {args.store}; "
              f"phase 1: {args.runs} x (a burst of {args.count} devices with 1 worker, one with 2), "
              f"{args.window} in flight; "
              f"phase 2: {args.devices} devices against 2 workers x{args.big_runs} (--timeout {args.timeout:g} s); "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        runs: dict[int, list[dict]] = {1: [], 2: []}
        if args.runs:
            async with Setup(1, args) as one, Setup(2, args) as two:
                for run in range(1, args.runs + 1):
                    for setup in ((one, two) if run % 2 else (two, one)):
                        f = await burst(setup, args.count)
                        runs[setup.workers].append(f)
                        print(f"run {run}: {run_line(f)}", flush=True)
        big = []
        for run in range(1, args.big_runs + 1 if args.devices else 1):
            async with Setup(2, args) as setup:
                f = await burst(setup, args.devices, big=True)
            big.append(f)
            print(f"big run {run}: {run_line(f)}", flush=True)
        report(runs, big, args)
        if args.rollout_devices:
            await rollouts(args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def rollouts(args: argparse.Namespace) -> None:
    """Phase 3: ``--rollout-runs`` x (a push rollout to ``--rollout-devices`` with 1 and with 2 workers)."""
    from rollout_speed import MODEL_SIZES, build_model

    model = build_model()
    print(f"\nphase 3: {args.rollout_runs} x (push rollout of a {len(model):,}-byte model "
          f"(mlp_float(1, {MODEL_SIZES})) "
          f"to {args.rollout_devices} {args.device_profile} devices with 1 and with 2 workers)", flush=True)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for run in range(1, args.rollout_runs + 1):
        for workers in ((1, 2) if run % 2 else (2, 1)):
            f = await rollout_phase(workers, args.rollout_devices, model, run, args)
            runs[workers].append(f)
            print(f"rollout run {run}: {rollout_line(f)}", flush=True)
    rollout_report(runs, len(model), args)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="devices of each phase-1 burst")
    parser.add_argument("--runs", type=int, default=6, help="phase-1 rounds (a burst with 1 worker, one with 2)")
    parser.add_argument("--devices", type=int, default=100_000, help="devices of phase 2 (0: no phase 2)")
    parser.add_argument("--big-runs", type=int, default=1, help="phase-2 runs")
    parser.add_argument("--window", type=int, default=1000, help="devices in flight (Register until discovery read)")
    parser.add_argument("--per-addr", type=int, default=10_000, help="devices per loopback source address")
    parser.add_argument("--timeout", type=float, default=1200, help="no Register is started later than this (s)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the daemon's store (postgresql: on 127.0.0.1:5432, database test)")
    parser.add_argument("--log-level", default="warning", help="server log level (info logs every registration)")
    parser.add_argument("--keep", action="store_true", help="keep each daemon's folder (its daemon.log)")
    parser.add_argument("--rollout-devices", type=int, default=200,
                        help="simulated devices of each phase-3 rollout measurement (0: no phase 3)")
    parser.add_argument("--rollout-runs", type=int, default=3, help="phase-3 runs (1 and 2 workers each); medians")
    parser.add_argument("--rollout-processes", type=int, default=4, help="processes the phase-3 devices run in")
    parser.add_argument("--rollout-max-in-flight", type=int, default=64, help="phase 3: the rollout's max_in_flight")
    parser.add_argument("--rollout-timeout", type=float, default=300,
                        help="phase 3: longest wait for the registrations and for the rollout, seconds each")
    parser.add_argument("--rollout-poll", type=float, default=0.1,
                        help="phase 3: interval of the rollout's status polls (GET /rollouts), seconds")
    parser.add_argument("--device-profile", default="linux-gateway", help="phase 3: simulator profile of the devices")
    parser.add_argument("--register-concurrency", type=int, default=32,
                        help="phase 3: devices of one process registering at once")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke size: --count 300 --runs 1 --devices 2000 --timeout 40 --rollout-devices 30 "
                             "--rollout-processes 2 --rollout-timeout 120")
    args = parser.parse_args()
    if args.quick:
        args.count, args.runs, args.rollout_runs, args.devices, args.timeout = 300, 1, 1, 2000, 40
        args.rollout_devices, args.rollout_timeout = 30, 120
        args.rollout_processes = min(args.rollout_processes, 2)
    return args


if __name__ == "__main__":
    arguments = parse_arguments()
    if shutil.which("gcc") is None:
        sys.exit("workers.py: gcc is needed to build the load generator (benchmarks/register_load.c)")
    if not nats_answers():
        sys.exit("workers.py: no NATS server on 127.0.0.1:4222 (apt-get install nats-server; see README)")
    if arguments.store == "postgresql" and not postgresql_answers():
        sys.exit(f"workers.py: --store postgresql, but no PostgreSQL answers at {PG_URL} (or psycopg is missing)")
    asyncio.run(main(arguments))
