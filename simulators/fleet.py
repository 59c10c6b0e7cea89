"""Many simulated devices at once: bounded-concurrency registration, progress
reports, an orderly De-register at the end.

Each device keeps its own UDP port and timers (:class:`SimulatedDevice`); the
fleet only schedules starts and stops so that at most ``concurrency``
Register (or De-register) exchanges are in flight, which keeps a server's
receive buffer from overflowing when thousands of devices come up together.

Key files: a factory hands an operator each device's DTLS PSK as a CSV file
(header ``endpoint,identity,key,scope``; scope ``server`` or ``bootstrap``, key in
hex), which ``tinymlaas credentials import`` loads into the server's store.
:func:`generate_keys` makes the keys of a simulated fleet (written with
:func:`lwm2m_server.security.keyfile.format_key_file`), :func:`parse_key_file` reads
a file back with the server's reader, and :func:`psks_for` picks each device's PSK
of one scope for :class:`Fleet`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import structlog

from ipso_objects import ObjectRegistry
from lwm2m_server.security.keyfile import KeyFileError
from lwm2m_server.security.keyfile import parse_key_file as read_key_file
from lwm2m_server.security.psk import MAX_IDENTITY_BYTES, SCOPES, PskCredential, generate_key

from .client import RegistrationFailed, SimulatedDevice
from .profiles import ConfigError, DeviceProfile

log = structlog.get_logger(__name__)

PSK = tuple[bytes, bytes]
"""``(identity, key)`` as :class:`SimulatedDevice` takes it."""


def generate_keys(endpoints: Iterable[str], scope: str = "bootstrap") -> list[PskCredential]:
    """A fresh random 16-byte key per endpoint, identity ``<endpoint>-bs`` for the
    bootstrap scope and ``<endpoint>`` for the server scope."""
    if scope not in SCOPES:
        raise ConfigError("--scope", f"must be one of {', '.join(SCOPES)}, got {scope!r}")
    keys = []
    for endpoint in endpoints:
        identity = f"{endpoint}-bs" if scope == "bootstrap" else endpoint
        size = len(identity.encode("utf-8"))
        if size > MAX_IDENTITY_BYTES:
            raise ConfigError("fleet", f"identity {identity!r} of endpoint {endpoint!r} is {size} bytes, "
                                       f"a PSK identity at most {MAX_IDENTITY_BYTES}: shorten its endpoint_prefix")
        keys.append(PskCredential(endpoint, identity, generate_key(), scope))
    return keys


def parse_key_file(text: str, source: str = "key file") -> list[PskCredential]:
    """The rows of a key file. A problem raises :class:`ConfigError` (``source``, then
    the line and what is wrong; never a key)."""
    try:
        return [credential for _, credential in read_key_file(text)]
    except KeyFileError as error:
        raise ConfigError(source, str(error)) from None


def psks_for(keys: Iterable[PskCredential], endpoints: Sequence[str], scope: str,
             source: str = "key file") -> dict[str, PSK]:
    """Each endpoint's PSK of ``scope``; ConfigError naming up to 5 endpoints that have
    none (and saying so when the file has rows of the other scope for them)."""
    keys = list(keys)
    found = {k.endpoint: k.psk for k in keys if k.scope == scope}
    missing = [endpoint for endpoint in endpoints if endpoint not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        other = {k.endpoint for k in keys if k.scope != scope}
        hint = ""
        if all(endpoint in other for endpoint in missing):
            hint = (f" (it has {'server' if scope == 'bootstrap' else 'bootstrap'}-scope rows for them: "
                    f"write it with --scope {scope})")
        raise ConfigError(source, f"no {scope} PSK for {len(missing)} of {len(endpoints)} device(s): "
                                  f"{shown}{hint}")
    return {endpoint: found[endpoint] for endpoint in endpoints}


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
        psks: Mapping[str, PSK] | None = None,
        bootstrap_psks: Mapping[str, PSK] | None = None,
    ) -> None:
        """``psks`` and ``bootstrap_psks`` give each endpoint its DTLS PSK for a
        ``coaps://`` server_uri or bootstrap_uri (see :func:`psks_for`); ValueError if
        one is given and lacks a device's endpoint."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be > 0, got {concurrency}")
        for name, table in (("psks", psks), ("bootstrap_psks", bootstrap_psks)):
            missing = [endpoint for endpoint, _ in devices if table is not None and endpoint not in table]
            if missing:
                raise ValueError(f"{name}: no PSK for {len(missing)} device(s): {', '.join(missing[:5])}"
                                 + (" …" if len(missing) > 5 else ""))
        registry = registry or ObjectRegistry.default()
        self.devices = [
            SimulatedDevice(endpoint, profile, server_uri, registry, host=host, request_timeout=request_timeout,
                            trust_anchors=trust_anchors, bootstrap_uri=bootstrap_uri,
                            psk=psks[endpoint] if psks is not None else None,
                            bootstrap_psk=bootstrap_psks[endpoint] if bootstrap_psks is not None else None)
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
