"""The leader's worker processes: started after the leader bound the ports, watched,
restarted when one dies, stopped with the leader."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing

import structlog

from lwm2m_server.config import ServerConfig

from .bus import BusError
from .follower import follower_config, run_follower
from .gateway import ClusterGateway
from .worker import worker_id

READY_TIMEOUT_S = 60.0
WATCH_INTERVAL_S = 1.0


class WorkerStartFailed(Exception):
    """A worker process did not come up."""


class WorkerPool:
    """Workers 1..count-1 (the leader is worker 0)."""

    def __init__(self, config: ServerConfig, gateway: ClusterGateway, *, port: int | None,
                 secure_port: int | None) -> None:
        self._config = follower_config(config, port, secure_port)
        self._gateway = gateway
        self._count = config.coap.workers
        self._context = multiprocessing.get_context("spawn")  # no inherited event loop or sockets
        self._processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self._watch: asyncio.Task | None = None
        self._log = structlog.get_logger("lwm2m_server.cluster")
        self.restarts = 0
        """Workers started again after they died."""

    async def start(self) -> None:
        await asyncio.gather(*(self._start(index) for index in range(1, self._count)))
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _start(self, index: int) -> None:
        worker = worker_id(self._config.cluster.node_id, index)
        process = self._context.Process(target=run_follower, args=(self._config, worker),
                                        name=f"tinymlaas-{worker}", daemon=True)
        process.start()
        self._processes[index] = process
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while True:  # ready once it answers on the bus
            if not process.is_alive():
                raise WorkerStartFailed(f"worker {worker} exited with status {process.exitcode} while starting")
            try:
                devices = await self._gateway.add_worker(worker, timeout=1.0)
                break
            except BusError:
                if loop.time() > deadline:
                    process.kill()
                    raise WorkerStartFailed(f"worker {worker} did not answer within {READY_TIMEOUT_S:g} s") from None
                await asyncio.sleep(0.2)
        self._log.info("worker_started", worker=worker, pid=process.pid, devices=devices)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for index, process in list(self._processes.items()):
                if process.is_alive():
                    continue
                worker = worker_id(self._config.cluster.node_id, index)
                lost = self._gateway.forget_worker(worker)
                self._log.error("worker_died", worker=worker, status=process.exitcode, devices_lost=lost)
                self.restarts += 1
                try:  # its devices come back when they next talk to it (an Update is refused: they register)
                    await self._start(index)
                except WorkerStartFailed as error:
                    self._log.error("worker_restart_failed", worker=worker, error=str(error))

    def pids(self) -> dict[str, int | None]:
        return {worker_id(self._config.cluster.node_id, index): process.pid
                for index, process in self._processes.items()}

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()
        loop = asyncio.get_running_loop()
        for process in self._processes.values():
            await loop.run_in_executor(None, process.join, 15)
            if process.is_alive():
                process.kill()
                await loop.run_in_executor(None, process.join, 5)
