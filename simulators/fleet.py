"""Many simulated devices at once: bounded-concurrency registration, progress
reports, an orderly De-register at the end.

Each device keeps its own UDP port and timers (:class:`SimulatedDevice`); the
fleet only schedules starts and stops so that at most ``concurrency``
Register (or De-register) exchanges are in flight, which keeps a server's
receive buffer from overflowing when thousands of devices come up together.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import structlog

from ipso_objects import ObjectRegistry

from .client import RegistrationFailed, SimulatedDevice
from .profiles import DeviceProfile

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class FleetProgress:
    """Where a fleet is: how many devices registered, failed, left."""

    total: int
    """Devices in the fleet."""
    registered: int = 0
    """Devices that completed Register."""
    failed: int = 0
    """Devices whose start failed (no answer, error response, no port)."""
    deregistered: int = 0
    """Devices that completed De-register at shutdown."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """``(endpoint, reason)`` of each failure."""


class Fleet:
    """Start, run and stop a list of ``(endpoint, profile)`` devices against one server
    (or, with ``bootstrap_uri``, against the server a Bootstrap-Server gives each of them)."""

    def __init__(
        self,
        devices: Sequence[tuple[str, DeviceProfile]],
        server_uri: str,
        registry: ObjectRegistry | None = None,
        *,
        concurrency: int = 50,
        request_timeout: float = 30.0,
        host: str = "127.0.0.1",
        on_progress: Callable[[FleetProgress], None] | None = None,
        trust_anchors: Sequence[Any] = (),
        bootstrap_uri: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be > 0, got {concurrency}")
        registry = registry or ObjectRegistry.default()
        self.devices = [
            SimulatedDevice(endpoint, profile, server_uri, registry, host=host, request_timeout=request_timeout,
                            trust_anchors=trust_anchors, bootstrap_uri=bootstrap_uri)
            for endpoint, profile in devices
        ]
        self.concurrency = concurrency
        self.progress = FleetProgress(total=len(self.devices))
        self._on_progress = on_progress
        self._started: list[SimulatedDevice] = []

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.progress)

    async def _bounded(self, devices: Sequence[SimulatedDevice], action: Callable) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(device: SimulatedDevice) -> None:
            async with semaphore:
                await action(device)

        await asyncio.gather(*(one(device) for device in devices))

    async def start(self) -> FleetProgress:
        """Start every device (bind, Register, timers); failures are counted, not raised."""

        async def start_one(device: SimulatedDevice) -> None:
            try:
                await device.start()
            except (RegistrationFailed, OSError) as error:
                self.progress.failed += 1
                self.progress.failures.append((device.endpoint, str(error)))
                log.warning("register_failed", ep=device.endpoint, reason=str(error))
            else:
                self.progress.registered += 1
                self._started.append(device)
            self._report()

        self._report()
        await self._bounded(self.devices, start_one)
        return self.progress

    async def stop(self) -> FleetProgress:
        """De-register and close every started device."""

        async def stop_one(device: SimulatedDevice) -> None:
            was_registered = device.registered
            await device.stop()
            if was_registered and not device.registered:
                self.progress.deregistered += 1

        started, self._started = self._started, []
        await self._bounded(started, stop_one)
        self._report()
        return self.progress

    async def run(self, duration: float | None = None, stop: asyncio.Event | None = None) -> FleetProgress:
        """Start, keep running until ``stop`` is set or ``duration`` seconds pass, then stop."""
        stop = stop or asyncio.Event()
        try:
            await self.start()
            try:
                async with asyncio.timeout(duration):
                    await stop.wait()
            except TimeoutError:
                pass
        finally:
            await self.stop()
        return self.progress

    @property
    def running(self) -> list[SimulatedDevice]:
        """Devices started and not yet stopped."""
        return list(self._started)
