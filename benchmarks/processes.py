"""The benchmarks' processes: a child reads one command a line on stdin and answers one
JSON line on stdout; the parent drives it (:class:`Child`) and reads its CPU time from
``/proc``, so each figure is the process's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def reply(**figures) -> None:
    print(json.dumps(figures), flush=True)


async def commands():
    """The lines of stdin, split, without a thread."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if words := line.decode().split():
            yield words


def vm_rss(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_of(stat: Path) -> float:
    """utime + stime, seconds, from a /proc stat file."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Child:
    """A benchmark script run as a child process: one command a line, one JSON answer.
    ``timeout`` bounds each answer unless a call says otherwise."""

    def __init__(self, process: asyncio.subprocess.Process, timeout: float, stop_timeout: float) -> None:
        self.process, self.timeout, self.stop_timeout = process, timeout, stop_timeout
        self.first: dict = {}

    @classmethod
    async def start(cls, script: Path, *arguments: str, timeout: float, first_timeout: float | None = None,
                    stop_timeout: float | None = None, cwd: Path | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(script), *arguments, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=None if cwd is None else str(cwd))
        child = cls(process, timeout, timeout if stop_timeout is None else stop_timeout)
        child.first = await child.answer(first_timeout)
        return child

    @property
    def pid(self) -> int:
        return self.process.pid

    async def answer(self, timeout: float | None = None) -> dict:
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"process {self.pid} ended (status {await self.process.wait()})")
        return json.loads(line)

    async def ask(self, *command, timeout: float | None = None) -> dict:
        self.process.stdin.write(" ".join(map(str, command)).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.answer(timeout)

    def cpu(self) -> float:
        """utime + stime of the process (all its threads), seconds."""
        return cpu_of(Path(f"/proc/{self.pid}/stat"))

    def loop_cpu(self) -> float:
        """utime + stime of the process's first thread (the event loop), seconds."""
        return cpu_of(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.ask("stop", timeout=self.stop_timeout)
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
