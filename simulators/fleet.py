"""Many simulated devices at once: bounded-concurrency registration, progress
reports, an orderly De-register at the end.

Each device keeps its own UDP port and timers (:class:`SimulatedDevice`); the
fleet only schedules starts and stops so that at most ``concurrency``
Register (or De-register) exchanges are in flight, which keeps a server's
receive buffer from overflowing when thousands of devices come up together.

Key files: a factory hands an operator each device's DTLS PSK as a CSV file
(header ``endpoint,identity,key,scope``; scope ``server`` or ``bootstrap``, key in
hex), which ``tinymlaas credentials import`` loads into the server's store.
:func:`generate_keys` and :func:`format_key_file` make one for a simulated fleet,
:func:`parse_key_file` reads one back, and :func:`psks_for` picks each device's PSK
of one scope for :class:`Fleet`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import structlog

from ipso_objects import ObjectRegistry
from lwm2m_server.transport.dtls import MAX_IDENTITY_BYTES, MAX_KEY_BYTES  # tinydtls' PSK buffers

from .client import RegistrationFailed, SimulatedDevice
from .profiles import ConfigError, DeviceProfile

log = structlog.get_logger(__name__)

KEY_FILE_COLUMNS = ("endpoint", "identity", "key", "scope")
"""The header of a key file; ``scope`` may be left out (``server``)."""
SCOPES = ("server", "bootstrap")
PSK = tuple[bytes, bytes]
"""``(identity, key)`` as :class:`SimulatedDevice` takes it."""


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """One row of a key file: a device's DTLS PSK for one scope."""

    endpoint: str
    """The device's endpoint client name."""
    identity: str
    """PSK identity (1..32 bytes of UTF-8)."""
    key: bytes = field(repr=False)
    """The key (1..16 bytes); never in repr or errors."""
    scope: str = "server"
    """``server`` (the LwM2M server account) or ``bootstrap`` (the Bootstrap-Server's)."""

    @property
    def psk(self) -> PSK:
        """``(identity, key)`` for :class:`SimulatedDevice`'s ``psk``/``bootstrap_psk``."""
        return self.identity.encode("utf-8"), self.key


def generate_keys(endpoints: Iterable[str], scope: str = "bootstrap") -> list[DeviceKey]:
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
        keys.append(DeviceKey(endpoint, identity, secrets.token_bytes(MAX_KEY_BYTES), scope))
    return keys


def format_key_file(keys: Iterable[DeviceKey]) -> str:
    """The CSV text of a key file (header first, one line per key)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(KEY_FILE_COLUMNS)
    writer.writerows((k.endpoint, k.identity, k.key.hex(), k.scope) for k in keys)
    return out.getvalue()


def parse_key_file(text: str, source: str = "key file") -> list[DeviceKey]:
    """The rows of a key file. A problem raises :class:`ConfigError` (``source``, then
    the line and what is wrong; never a key)."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    header: list[str] | None = None
    keys: list[DeviceKey] = []
    seen: dict[tuple[str, str], int] = {}

    def bad(problem: str) -> ConfigError:
        return ConfigError(source, f"line {reader.line_num}: {problem}")

    try:
        for fields in reader:
            cells = [cell.strip() for cell in fields]
            if not any(cells):
                continue
            if header is None:  # not echoed: a file without a header starts with a key
                header = [cell.lower() for cell in cells]
                if set(header) - set(KEY_FILE_COLUMNS) or len(set(header)) != len(header) \
                        or not {"endpoint", "identity", "key"} <= set(header):
                    raise bad(f"the first line must be the header {','.join(KEY_FILE_COLUMNS)}")
                continue
            if len(cells) == len(header) - 1 and header[-1] == "scope":
                cells.append("")
            if len(cells) != len(header):
                raise bad(f"{len(cells)} fields, the header has {len(header)}")
            key = _key_row(dict(zip(header, cells)), bad)
            first = seen.setdefault((key.endpoint, key.scope), reader.line_num)
            if first != reader.line_num:
                raise bad(f"a second {key.scope} PSK of endpoint {key.endpoint!r} (line {first})")
            keys.append(key)
    except csv.Error as error:
        raise bad(f"not CSV: {error}") from None
    if header is None:
        raise ConfigError(source, f"empty; expected the header {','.join(KEY_FILE_COLUMNS)}")
    return keys


def _key_row(row: dict[str, str], bad: Callable[[str], ConfigError]) -> DeviceKey:
    scope = row.get("scope") or "server"
    if scope not in SCOPES:
        raise bad(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not row["endpoint"]:
        raise bad("endpoint is empty")
    size = len(row["identity"].encode("utf-8", "replace"))
    if not 0 < size <= MAX_IDENTITY_BYTES:
        raise bad(f"identity is {size} bytes, must be 1..{MAX_IDENTITY_BYTES}")
    digits = "".join(row["key"].split()).replace(":", "")
    try:
        key = bytes.fromhex(digits[2:] if digits[:2] in ("0x", "0X") else digits)
    except ValueError:
        raise bad("key is not hexadecimal") from None
    if not 0 < len(key) <= MAX_KEY_BYTES:
        raise bad(f"key is {len(key)} bytes, must be 1..{MAX_KEY_BYTES}")
    return DeviceKey(row["endpoint"], row["identity"], key, scope)


def psks_for(keys: Iterable[DeviceKey], endpoints: Sequence[str], scope: str,
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
