"""Rollout speed benchmark (issue 12): a 100 KB model to a small and a large simulated
fleet, push and pull, with the server's CPU per device and the large/small ratio.

    python benchmarks/rollout_speed.py                    # 100 and 1000 devices, push and pull (several minutes)
    python benchmarks/rollout_speed.py --quick            # CI smoke run (< 60 s); figures only roughly meaningful
    python benchmarks/rollout_speed.py --small 200 --large 2000 --runs 3 --max-in-flight 128
    python benchmarks/rollout_speed.py --modes push --small 1000 --large 1000 --profile /tmp/prof

The model: a float32 MLP [1,32] → FULLY_CONNECTED(640, RELU) → FULLY_CONNECTED(8) →
SOFTMAX built at run time by ``tests/fixtures/models/make_models.py`` (``mlp_float``,
numpy only, deterministic): 105,888 bytes of .tflite; the signed module the devices
get (the litert plugin's output in a SUIT envelope) is printed with the results.
``--model FILE`` rolls out a ``.tflite`` of your own instead.

Every phase (fleet size × mode × run) runs against a FRESH server process: a
:class:`~lwm2m_server.server.LwM2MServer` with its :class:`Deployment` and
:class:`Orchestrator` (tick ``--tick`` s) wired as the daemon does, plain CoAP on an
ephemeral loopback port, per-peer rate limiting off (every device is on 127.0.0.1),
SQLite store, data folder and signing key in a temporary folder, log level
``--log-level``. The devices are :class:`simulators.client.SimulatedDevice` s (profile
``--device-profile``, default ``linux-gateway``: LiteRT, /5/0/9 "both", so push and
pull are both what it declares; ``sensor_interval=3600``; the server's public key as
SUIT trust anchor), each with its own aiocoap context and UDP port, split over
``--fleet-processes`` processes so that the simulator is not the bottleneck on its own.

A phase: the devices register and the server discovers them (every profile in);
the model is added and its module built once for the device class (the compile is a
one-time cost, kept out of the measurement); then, measured, a rollout to every
device, ``Strategy(canary_fraction=0, mode=..., max_in_flight=--max-in-flight)``,
until every device is final (done, failed, ...) or ``--timeout``. Figures:

* wall time from ``Orchestrator.create`` to the last device final (server clock);
* server CPU ms per device: utime + stime of the server process, all its threads
  (``/proc/<pid>/stat``), over the rollout, divided by the devices; split into the
  event-loop thread and the others (the SQLite worker, ``asyncio.to_thread``);
* device CPU: the same for the device processes, summed, with their busy fraction
  (CPU / wall / processes; near 100 % means the simulator, not the server, sets the pace);
* large/small ratio of server CPU per device (issue 12's target: ≤ 1.2) and whether
  push to the large fleet took ≤ 30 s (issue 12's target, at 1,000 devices).

Each run prints its phases; the table at the end has the medians of ``--runs``.
``--profile FOLDER`` profiles the server's rollout (not registration) under cProfile:
``FOLDER/rollout-<mode>-<devices>-run<r>.prof`` for the event-loop thread and
``...-sqlite.prof`` for the SQLite worker thread (``python -m pstats``; timer: the
thread's CPU time, so waiting costs nothing), and prints
where the time goes (our code, aiocoap, SQLite, asyncio, ...) and the top functions. Each
device process leaves ``FOLDER/fleet-<pid>.prof`` (its whole life, wall-clock timer).
CPU figures of a profiled run are inflated and not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from processes import Child, commands, reply, vm_rss

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
CHILD = dict(timeout=1800, first_timeout=120, stop_timeout=60, cwd=ROOT)
"""How long a child may take to answer: a 1,000-device phase is slow; to start; to stop."""
MODEL_SIZES = (32, 640, 8)
"""Inputs, hidden units, outputs of the built MLP: ~100 KB of float32 weights."""


def build_model() -> bytes:
    sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "models"))
    from make_models import mlp_float

    return mlp_float(1, MODEL_SIZES, 12, "rollout_speed benchmark MLP")


# --------------------------------------------------------------------------- the device processes (_fleet)


async def fleet_main(port: int, anchor: str, profile: str, first: int, count: int, log_level: str) -> None:
    """``count`` simulated devices (``roll-<first>``...). Commands on stdin, one JSON
    answer a line: ``start CONCURRENCY`` (every device registers), ``stats``, ``stop``."""
    from ipso_objects import ObjectRegistry
    from lwm2m_server.logging_setup import configure_logging
    from simulators.client import SimulatedDevice

    configure_logging(log_level, "console", sys.stderr)
    registry = ObjectRegistry.default()
    devices = [SimulatedDevice(f"roll-{i:05d}", profile, f"coap://127.0.0.1:{port}", registry, seed=i,
                               sensor_interval=3600, trust_anchors=[Path(anchor)])
               for i in range(first, first + count)]
    reply(ready=count, pid=os.getpid(), rss=vm_rss())

    def stats() -> dict:
        return {"rss": vm_rss(), "blocks_fetched": sum(d.stats.blocks_fetched for d in devices),
                "requests": sum(d.stats.requests for d in devices),
                "active": sum(1 for d in devices if d.objects.get("/26241/0/10"))}

    async for command in commands():
        if command[0] == "start":
            gate = asyncio.Semaphore(int(command[1]))

            async def one(device: SimulatedDevice) -> None:
                async with gate:
                    await device.start()

            began = time.perf_counter()
            results = await asyncio.gather(*(one(d) for d in devices), return_exceptions=True)
            failures = sorted({f"{type(r).__name__}: {r}"[:160] for r in results if isinstance(r, BaseException)})
            reply(registered=sum(1 for r in results if r is None), seconds=time.perf_counter() - began,
                  errors=failures[:5], **stats())
        elif command[0] == "stats":
            reply(**stats())
        elif command[0] == "stop":
            break
    await asyncio.gather(*(d.stop(deregister=False) for d in devices), return_exceptions=True)
    reply(stopped=True)


# --------------------------------------------------------------------------- the server process (_server)


class ThreadProfile:
    """cProfile on the event-loop thread and, where the store has one, its worker thread."""

    def __init__(self, store) -> None:
        import cProfile

        # per-thread CPU time, not wall time: waiting in epoll or for the next batch costs nothing
        self.loop = cProfile.Profile(time.thread_time)
        executor = getattr(store, "_executor", None)  # SqliteStore: one worker thread runs every sqlite3 call
        self.executor = executor if hasattr(executor, "submit") else None
        self.worker = cProfile.Profile(time.thread_time) if self.executor is not None else None

    def enable(self) -> None:
        if self.worker is not None:
            self.executor.submit(self.worker.enable).result()  # enable() hooks the thread it runs on
        self.loop.enable()

    def disable(self, stem: Path) -> None:
        self.loop.disable()
        self.loop.dump_stats(f"{stem}.prof")
        if self.worker is not None:
            self.executor.submit(self.worker.disable).result()
            self.worker.dump_stats(f"{stem}-sqlite.prof")


async def wait_for_profiles(server, count: int, timeout: float) -> dict:
    """Until ``count`` registered devices have a profile (discovery done)."""
    began = time.perf_counter()
    deadline = time.monotonic() + timeout
    while True:
        registrations = server.registrations()
        profiled = sum(1 for r in registrations if server.profile(r.endpoint) is not None)
        if profiled >= count or time.monotonic() > deadline:
            return {"registered": len(registrations), "profiles": profiled, "seconds": time.perf_counter() - began}
        await asyncio.sleep(0.1)


async def prepare(server, deployment, model_file: str, version: str) -> dict:
    """Add the model and build its module for the fleet's device class (one compile,
    outside the measurement)."""
    data = Path(model_file).read_bytes()
    model = await deployment.add_model(data, "bench-mlp", version)
    profile = next(p for r in server.registrations() if (p := server.profile(r.endpoint)) is not None)
    artifact = await deployment.artifact_for(model, profile.target_spec())
    return {"model": model.key, "model_bytes": len(data), "module_bytes": artifact.size, "plugin": artifact.plugin,
            "device_class": artifact.device_class}


async def rollout(server, orchestrator, model: str, mode: str, max_in_flight: int, expected: int,
                  timeout: float, profile_stem: str | None) -> dict:
    """A rollout of ``model`` to every device; until every device is final (or paused, or timeout).

    When each device became final comes from the server's ``rollout`` events (published
    on a status change), so watching costs the server O(1) per change; the whole table is
    read once a second (and every 10 s for the progress line), not every few ms: a poll
    that scans every device would itself grow with the fleet and count as server CPU."""
    from lwm2m_server.ota.rollouts import FINAL, RolloutState, Selector, Strategy

    final_statuses = {status.value for status in FINAL}
    profiler = ThreadProfile(server.store) if profile_stem else None
    gc.collect()
    if profiler is not None:
        profiler.enable()
    first_done = None
    finished: dict[str, float] = {}  # endpoint -> seconds until it was final
    with server.events.subscribe(kinds=("rollout",)) as events:
        began = time.perf_counter()
        created = await orchestrator.create(model, Selector(),
                                            Strategy(canary_fraction=0, mode=mode, max_in_flight=max_in_flight))
        reported = checked = began
        deadline = time.monotonic() + timeout

        def note(event, now: float) -> None:
            nonlocal first_done
            if event.data.get("rollout") != created.id:
                return
            status = event.data.get("status")
            if status == "done" and first_done is None:
                first_done = now - began
            if status in final_statuses:
                finished.setdefault(event.endpoint, now - began)
            else:
                finished.pop(event.endpoint, None)  # retried: not final after all

        while True:
            try:
                event = await asyncio.wait_for(events.get(), 0.2)
            except TimeoutError:
                event = None
            now = time.perf_counter()
            if event is not None:
                note(event, now)
            if now - checked < 1 and len(finished) < expected:
                continue
            checked = now
            current, summary = orchestrator.summary(created.id)  # counts, not a scan of the devices
            if (summary.total >= expected and summary.finished == summary.total) \
                    or current.state is RolloutState.PAUSED \
                    or current.state is RolloutState.COMPLETE or time.monotonic() > deadline:
                current, devices = orchestrator.rollout(created.id)
                while not events.empty():  # the table showed them final before these were read
                    note(events.get_nowait(), now)
                for device in devices:  # an event the hub's bounded queue dropped: final by now
                    if device.final:
                        finished.setdefault(device.endpoint, now - began)
                break
            if now - reported > 10:  # progress on stderr, for long runs
                reported = now
                statuses: dict[str, int] = {}
                for device in orchestrator.rollout(created.id)[1]:
                    key = device.status.value + (f"/{device.job.get('phase')}" if device.job and not device.final else "")
                    statuses[key] = statuses.get(key, 0) + 1
                print(f"  ... {reported - began:.0f} s: {dict(sorted(statuses.items()))}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - began
    if profiler is not None:
        profiler.disable(Path(profile_stem))
    counts: dict[str, int] = {}
    for device in devices:
        counts[device.status.value] = counts.get(device.status.value, 0) + 1
    reasons = sorted({d.reason[:160] for d in devices if d.reason})[:5]
    stuck = [f"{d.endpoint} {d.status.value} phase={(d.job or {}).get('phase')} attempts={d.attempts} "
             f"unreachable={d.unreachable} {d.reason[:80]}" for d in devices if not d.final][:8]
    times = sorted(finished.values())
    last = max(finished, key=finished.get, default=None)
    slowest = None
    if last is not None and len(times) >= 10 and finished[last] > 2 * times[len(times) // 2]:
        # a straggler: how its job went, to tell a lost block from a slow device
        job = next((d.job for d in devices if d.endpoint == last), None) or {}
        slowest = f"{last} final after {finished[last]:.1f} s: " + "; ".join(job.get("log", []))[-600:]

    def until(share: float) -> float | None:  # seconds until ``share`` of the devices were final
        needed = max(1, round(share * expected))
        return times[needed - 1] if len(times) >= needed else None
    return {"seconds": seconds, "first_done": first_done, "state": current.state.value, "counts": counts,
            "enrolled": len(devices), "reasons": reasons, "paused_reason": current.paused_reason, "stuck": stuck,
            "slowest": slowest,
            "t50": until(0.5), "t90": until(0.9), "t99": until(0.99)}


async def server_main(log_level: str, tick: float, poll_interval: float) -> None:
    from ipso_objects import ObjectRegistry
    from lwm2m_server.config import ServerConfig
    from lwm2m_server.logging_setup import configure_logging
    from lwm2m_server.ota.deployment import Deployment
    from lwm2m_server.ota.orchestrator import Orchestrator
    from lwm2m_server.server import LwM2MServer
    from lwm2m_server.store.sqlite import SqliteStore

    configure_logging(log_level, "console", sys.stderr)
    profile_dir = os.environ.get("ROLLOUT_SPEED_PROFILE_DIR")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        base = ServerConfig()
        deployment_config = replace(base.deployment, data_dir=tmp / "data", signing_key=tmp / "keys" / "signing.pem",
                                    poll_interval_s=poll_interval)
        # every device is on 127.0.0.1: a host's rate limit would refuse most of them
        config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, rate_limit_per_peer=0,
                                            secure_port=None), deployment=deployment_config)
        store = await SqliteStore.open(tmp / "state.sqlite3")
        deployment = Deployment(deployment_config, store, clock=time.time)
        await deployment.start()
        server = LwM2MServer(config, ObjectRegistry.default(), store, downloads=deployment.download)
        await server.start()
        orchestrator = Orchestrator(server, deployment, clock=time.time, interval=tick)
        await orchestrator.start()
        reply(port=server.port, pid=os.getpid(), rss=vm_rss(), anchor=str(tmp / "keys" / "signing.pub.pem"))
        model = ""
        try:
            async for command in commands():
                if command[0] == "profiles":  # profiles COUNT TIMEOUT
                    reply(**await wait_for_profiles(server, int(command[1]), float(command[2])))
                elif command[0] == "prepare":  # prepare MODEL_FILE VERSION
                    prepared = await prepare(server, deployment, command[1], command[2])
                    model = prepared["model"]
                    reply(**prepared)
                elif command[0] == "rollout":  # rollout MODE MAX_IN_FLIGHT EXPECTED TIMEOUT LABEL
                    stem = str(Path(profile_dir) / command[5]) if profile_dir else None
                    reply(**await rollout(server, orchestrator, model, command[1], int(command[2]), int(command[3]),
                                          float(command[4]), stem), rss=vm_rss())
                elif command[0] == "stop":
                    break
        finally:
            await orchestrator.stop()
            await server.stop()
            await store.close()
    reply(stopped=True)


# --------------------------------------------------------------------------- the benchmark


async def phase(devices: int, mode: str, run: int, model_file: Path, args: argparse.Namespace) -> dict:
    """One fresh server and fleet; a measured rollout to every device."""
    label = f"rollout-{mode}-{devices}-run{run}"
    server = await Child.start(HERE, "_server", args.log_level, str(args.tick), str(args.poll_interval), **CHILD)
    fleets: list[Child] = []
    try:
        processes = max(1, min(args.fleet_processes, devices))
        shares = [devices // processes + (1 if k < devices % processes else 0) for k in range(processes)]
        starts = [sum(shares[:k]) for k in range(processes)]
        fleets = list(await asyncio.gather(*(
            Child.start(HERE, "_fleet", str(server.first["port"]), server.first["anchor"], args.device_profile,
                        str(first), str(count), args.log_level, **CHILD)
            for first, count in zip(starts, shares))))
        began = time.perf_counter()
        started = await asyncio.gather(*(f.ask("start", args.register_concurrency) for f in fleets))
        registered = sum(s["registered"] for s in started)
        discovered = await server.ask("profiles", devices, args.register_timeout)
        register_seconds = time.perf_counter() - began
        print(f"  {label}: {registered} registered in {max(st['seconds'] for st in started):.1f} s, "
              f"{discovered['profiles']} discovered {register_seconds:.1f} s after the first Register",
              file=sys.stderr, flush=True)
        if registered != devices or discovered["profiles"] != devices:
            errors = [e for s in started for e in s["errors"]][:3]
            print(f"  warning: {label}: {registered}/{devices} registered, {discovered['profiles']} discovered "
                  f"{errors}", file=sys.stderr)
        prepared = await server.ask("prepare", model_file, f"{run}.{devices}.{mode}")
        await asyncio.sleep(0.5)  # let the last discovery writes settle

        server_cpu, server_loop, fleet_cpu = server.cpu(), server.loop_cpu(), [f.cpu() for f in fleets]
        done = await server.ask("rollout", mode, args.max_in_flight, devices, args.timeout, label)
        server_cpu, server_loop = server.cpu() - server_cpu, server.loop_cpu() - server_loop
        fleet_cpu = sum(f.cpu() - before for f, before in zip(fleets, fleet_cpu))
        stats = await asyncio.gather(*(f.ask("stats") for f in fleets))
    finally:
        for fleet in fleets:
            await fleet.stop()
        await server.stop()
    counts = done["counts"]
    if counts.get("done", 0) != devices:
        print(f"  warning: {label}: {counts} of {devices}, rollout {done['state']} {done['paused_reason']} "
              f"{done['reasons']}; not final: {done['stuck']}", file=sys.stderr)
    if done["slowest"]:
        print(f"  straggler: {done['slowest']}", file=sys.stderr)
    never = float("nan")
    return {
        "seconds": done["seconds"], "first_done": done["first_done"] or 0.0,
        "t50": done["t50"] or never, "t90": done["t90"] or never, "t99": done["t99"] or never, "done": counts.get("done", 0),
        "failed": devices - counts.get("done", 0), "counts": counts, "state": done["state"],
        "server_cpu_ms": server_cpu / devices * 1e3, "server_loop_ms": server_loop / devices * 1e3,
        "server_other_ms": (server_cpu - server_loop) / devices * 1e3, "server_busy": server_cpu / done["seconds"],
        "fleet_cpu_s": fleet_cpu, "fleet_cpu_ms": fleet_cpu / devices * 1e3,
        "fleet_busy": fleet_cpu / done["seconds"] / len(fleets), "processes": len(fleets),
        "register_seconds": register_seconds, "server_rss_mb": done["rss"] / 1e6,
        "fleet_rss_mb": sum(s["rss"] for s in stats) / 1e6, "active": sum(s["active"] for s in stats),
        "module_bytes": prepared["module_bytes"], "model_bytes": prepared["model_bytes"],
        "plugin": prepared["plugin"],
    }


def show(run: int, mode: str, devices: int, f: dict) -> None:
    print(f"run {run}: {mode} to {devices}: {f['seconds']:.2f} s ({f['done']} done, {f['failed']} not: {f['counts']}; "
          f"first done {f['first_done']:.2f} s, 50/90/99 % final {f['t50']:.2f}/{f['t90']:.2f}/{f['t99']:.2f} s); server CPU {f['server_cpu_ms']:.2f} ms/device "
          f"(loop {f['server_loop_ms']:.2f} + other threads {f['server_other_ms']:.2f}; busy {f['server_busy']:.0%}); "
          f"devices CPU {f['fleet_cpu_s']:.1f} s = {f['fleet_cpu_ms']:.2f} ms/device over {f['processes']} processes "
          f"(busy {f['fleet_busy']:.0%} each); register+discovery {f['register_seconds']:.1f} s; "
          f"RSS server {f['server_rss_mb']:.0f} MB, devices {f['fleet_rss_mb']:.0f} MB", flush=True)


async def main(args: argparse.Namespace) -> None:
    model = Path(args.model).read_bytes() if args.model else build_model()
    print(f"rollout_speed: {args.runs} run(s); {len(model):,}-byte model "
          f"({args.model or 'mlp_float(1, %s)' % (MODEL_SIZES,)}) to {args.small} and {args.large} "
          f"{args.device_profile} devices in {args.fleet_processes} processes; modes {','.join(args.modes)}; "
          f"max_in_flight {args.max_in_flight}; tick {args.tick} s; {os.cpu_count()} CPUs; "
          f"server log level {args.log_level}", flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        model_file = Path(folder) / "model.tflite"
        model_file.write_bytes(model)
        for run in range(1, args.runs + 1):
            for mode in args.modes:
                for size, devices in (("small", args.small), ("large", args.large)):
                    figures = await phase(devices, mode, run, model_file, args)
                    show(run, mode, devices, figures)
                    results.setdefault((mode, size), []).append(figures)
    report(results, args)
    if args.profile is not None:
        for path in sorted(args.profile.glob("rollout-*.prof")):
            summarize_profile(path)


def report(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> None:
    m = {key: {k: statistics.median(run[k] for run in runs) for k, v in runs[0].items()
               if isinstance(v, (int, float))} for key, runs in results.items()}
    any_run = next(iter(results.values()))[0]
    print(f"\nmedians of {args.runs} run(s); module {any_run['module_bytes']:,} bytes ({any_run['plugin']}); "
          f"ratio = large ({args.large}) / small ({args.small}):")
    rows = [("figure", f"@{args.small}", f"@{args.large}", "ratio", "target")]
    for mode in args.modes:
        s, l = m[(mode, "small")], m[(mode, "large")]
        rows += [
            (f"{mode} wall s", f"{s['seconds']:.2f}", f"{l['seconds']:.2f}", f"x{l['seconds'] / s['seconds']:.2f}",
             "<= 30 s @1000" if mode == "push" else ""),
            (f"{mode} 99 % final s", f"{s['t99']:.2f}", f"{l['t99']:.2f}", f"x{l['t99'] / s['t99']:.2f}", ""),
            (f"{mode} devices/s", f"{s['done'] / s['seconds']:.1f}", f"{l['done'] / l['seconds']:.1f}",
             f"x{(l['done'] / l['seconds']) / (s['done'] / s['seconds']):.2f}" if s["done"] and l["done"] else "x-",
             ""),
            (f"{mode} server CPU ms/device", f"{s['server_cpu_ms']:.2f}", f"{l['server_cpu_ms']:.2f}",
             f"x{l['server_cpu_ms'] / s['server_cpu_ms']:.2f}", "<= 1.2"),
            (f"{mode}   event-loop thread", f"{s['server_loop_ms']:.2f}", f"{l['server_loop_ms']:.2f}",
             f"x{l['server_loop_ms'] / s['server_loop_ms']:.2f}", ""),
            (f"{mode}   other threads", f"{s['server_other_ms']:.2f}", f"{l['server_other_ms']:.2f}",
             f"x{l['server_other_ms'] / max(s['server_other_ms'], 1e-9):.2f}", ""),
            (f"{mode} device CPU ms/device", f"{s['fleet_cpu_ms']:.2f}", f"{l['fleet_cpu_ms']:.2f}",
             f"x{l['fleet_cpu_ms'] / s['fleet_cpu_ms']:.2f}", ""),
            (f"{mode} done/failed", f"{s['done']:.0f}/{s['failed']:.0f}", f"{l['done']:.0f}/{l['failed']:.0f}", "", ""),
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for mode in args.modes:
        s, l = m[(mode, "small")], m[(mode, "large")]
        print(f"  {mode}: server busy {s['server_busy']:.0%} / {l['server_busy']:.0%} of one core; device processes "
              f"busy {s['fleet_busy']:.0%} / {l['fleet_busy']:.0%} each ({l['processes']:.0f} processes, "
              f"{l['fleet_cpu_s']:.1f} s CPU @{args.large}); RSS server {l['server_rss_mb']:.0f} MB, devices "
              f"{l['fleet_rss_mb']:.0f} MB @{args.large}")
    if "push" in args.modes:
        seconds = m[("push", "large")]["seconds"]
        verdict = "yes" if seconds <= 30 else "no"
        print(f"  push to {args.large} devices in <= 30 s: {verdict} ({seconds:.1f} s)"
              + ("" if args.large == 1000 else " (issue 12's target is at 1000 devices)"))


GROUPS = (("our code", ("lwm2m_server", "ipso_objects")), ("aiocoap", ("aiocoap",)),
          ("SQLite", ("sqlite3",)), ("asyncio", ("asyncio", "selectors", "_asyncio", "select.epoll")),
          ("structlog", ("structlog",)), ("socket", ("_socket.socket", "socket.py")),
          ("benchmark", ("rollout_speed",)))


def group_of(filename: str, name: str) -> str:
    where = f"{filename} {name}"
    for group, needles in GROUPS:
        if any(needle in where for needle in needles):
            return group
    return "builtins" if filename == "~" else "other"


def summarize_profile(path: Path, top: int = 15) -> None:
    """Shares of the profiled time by package, and the functions that take most."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    total = sum(entry[2] for entry in stats.values()) or 1e-9
    groups: dict[str, float] = {}
    for (filename, _, name), entry in stats.items():
        group = group_of(filename, name)
        groups[group] = groups.get(group, 0.0) + entry[2]
    print(f"\n{path.name}: {total:.2f} s profiled; own time by package: "
          + ", ".join(f"{g} {t / total:.1%}" for g, t in sorted(groups.items(), key=lambda item: -item[1])))

    def where(key) -> str:
        filename, line, name = key
        if filename == "~":
            return name
        short = filename.split("site-packages/")[-1].split("/work/main/")[-1].split("/lib/python3")[-1]
        return f"{short}:{line}({name})"

    print(f"  top {top} by own time:")
    for key, entry in sorted(stats.items(), key=lambda item: -item[1][2])[:top]:
        print(f"    {entry[2] / total:6.1%} own {entry[3] / total:6.1%} cum {entry[1]:>9} calls  {where(key)}")
    ours = [(key, entry) for key, entry in stats.items() if group_of(key[0], key[2]) == "our code"]
    print(f"  top {top} of our code by cumulative time:")
    for key, entry in sorted(ours, key=lambda item: -item[1][3])[:top]:
        print(f"    {entry[3] / total:6.1%} cum {entry[2] / total:6.1%} own {entry[1]:>9} calls  {where(key)}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100, help="devices of the small fleet")
    parser.add_argument("--large", type=int, default=1000, help="devices of the large fleet")
    parser.add_argument("--modes", type=lambda text: text.split(","), default=None,
                        help="comma-separated: push, pull (default both)")
    parser.add_argument("--runs", type=int, default=1, help="runs; every figure is their median")
    parser.add_argument("--max-in-flight", type=int, default=64, help="the rollout's Strategy.max_in_flight")
    parser.add_argument("--fleet-processes", type=int, default=4, help="processes the simulated devices run in")
    parser.add_argument("--device-profile", default="linux-gateway",
                        help="simulator profile of every device (linux-gateway: LiteRT; cortex-m4f: TFLM)")
    parser.add_argument("--register-concurrency", type=int, default=32,
                        help="devices of one process registering at once")
    parser.add_argument("--tick", type=float, default=0.1, help="orchestrator tick interval, seconds")
    parser.add_argument("--poll-interval", type=float, default=2.0,
                        help="deployment.poll_interval_s (update state reads where a device does not notify)")
    parser.add_argument("--timeout", type=float, default=180,
                        help="longest wait for one rollout, seconds; devices not final by then are reported")
    parser.add_argument("--register-timeout", type=float, default=120,
                        help="longest wait for every device's profile after the Registers, seconds")
    parser.add_argument("--model", help="a .tflite to roll out instead of the built 100 KB MLP")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke size (~20 s): --small 20 --large 60 --runs 1 --fleet-processes 2, one "
                             "rollout per mode and size")
    parser.add_argument("--log-level", default="warning", help="server and device log level")
    parser.add_argument("--profile", metavar="FOLDER", type=Path,
                        help="profile the server's rollouts under cProfile (which inflates its CPU figures): "
                             "FOLDER/rollout-<mode>-<devices>-run<r>[-sqlite].prof, summarized at the end")
    args = parser.parse_args()
    if args.quick:
        args.small, args.large, args.runs = 20, 60, 1
        args.fleet_processes = min(args.fleet_processes, 2)
    args.modes = args.modes or ["push", "pull"]
    if bad := [mode for mode in args.modes if mode not in ("push", "pull")]:
        parser.error(f"--modes: {bad} is not push or pull")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["ROLLOUT_SPEED_PROFILE_DIR"] = str(args.profile.resolve())
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_server":  # _server LOG_LEVEL TICK POLL_INTERVAL
        asyncio.run(server_main(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
    elif len(sys.argv) > 1 and sys.argv[1] == "_fleet":  # _fleet PORT ANCHOR PROFILE FIRST COUNT LOG_LEVEL
        port, anchor, profile, first, count, level = sys.argv[2:8]
        fleet = fleet_main(int(port), anchor, profile, int(first), int(count), level)
        if profile_dir := os.environ.get("ROLLOUT_SPEED_PROFILE_DIR"):  # the devices' side, whole life
            import cProfile
            cProfile.run("asyncio.run(fleet)", str(Path(profile_dir) / f"fleet-{os.getpid()}.prof"))
        else:
            asyncio.run(fleet)
    else:
        asyncio.run(main(parse_arguments()))
