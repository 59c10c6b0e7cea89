"""CPU time and memory of groups of processes, from ``/proc`` (Linux): a benchmark's
server with every process it started, its load generator, shared services (the NATS
server, the PostgreSQL backends serving given processes), and the whole machine, so
that other work on a shared machine shows as such (the memory: ``processes.vm_rss``)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from processes import CLOCK_TICKS, cpu_of


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *children(int(child))]
    return found


def cpu(pid: int) -> float:
    try:
        return cpu_of(Path(f"/proc/{pid}/stat"))
    except (OSError, IndexError, ValueError):
        return 0.0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def named(comm: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    found.append(int(entry.name))
    return found


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS  # minus idle and iowait


def postgres_backends(pids: list[int]) -> list[int]:
    """The PostgreSQL backends serving TCP connections of ``pids``."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[2].endswith(":1538") and cols[9] in inodes:  # remote port 5432
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return [pid for pid in named("postgres") if any(f"({port})" in cmdline(pid) for port in ports)]


class CpuMeter:
    """CPU seconds of groups of processes between ``__init__`` and :meth:`read`."""

    def __init__(self, groups) -> None:
        self.groups = groups  # name -> () -> pids (asked again at the end: processes may appear)
        self.start = {name: {pid: cpu(pid) for pid in pids()} for name, pids in groups.items()}
        self.busy = machine_busy()
        self.began = time.monotonic()

    def read(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, pids in self.groups.items():
            before = self.start[name]
            now = {pid: cpu(pid) for pid in set(pids()) | set(before)}
            # a process that ended meanwhile is not counted (its time is gone from /proc)
            used[name] = sum(seconds - before.get(pid, 0.0) for pid, seconds in now.items()
                             if Path(f"/proc/{pid}").exists())
        used["machine"] = machine_busy() - self.busy
        used["others"] = max(0.0, used["machine"] - sum(v for k, v in used.items() if k != "machine"))
        used["wall"] = time.monotonic() - self.began
        return used
