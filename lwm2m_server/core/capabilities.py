"""Capability discovery, sans-I/O: which paths to read after a registration, and
the typed device profile those reads give.

The profile is what deployment decisions rest on: the TinyML Capability object
(26241, see docs/tinyml-object.md) says what the device can run, /3 what it is,
/5 and /9 how it accepts updates.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ipso_objects import TINYML_OBJECT_ID, LwM2MPath, Value
from ipso_objects.nodes import Node, flatten

from ..compilers.base import InvalidTarget, TargetSpec
from .registration import Registration

DEVICE, FIRMWARE, SOFTWARE = 3, 5, 9


@dataclass(frozen=True, slots=True)
class SoftwarePackage:
    """One instance of /9 (LwM2M Software Management)."""

    instance: int
    """Object instance id."""
    name: str = ""
    """PkgName (/9/i/0)."""
    version: str = ""
    """PkgVersion (/9/i/1)."""
    update_state: int | None = None
    """Update State (/9/i/7): 0 initial .. 4 installed."""
    activated: bool | None = None
    """Activation State (/9/i/12)."""


@dataclass(frozen=True, slots=True)
class TinyMLCapability:
    """What the TinyML Capability object (26241) says."""

    runtime: str
    """ML runtime name, e.g. ``tflite-micro``."""
    runtime_version: str
    """ML runtime version."""
    operators: tuple[str, ...] = ()
    """Supported builtin operator names, sorted."""
    ram_bytes: int = 0
    """RAM available to models."""
    storage_bytes: int = 0
    """Flash/storage available to models."""
    arena_budget_bytes: int = 0
    """Largest tensor arena the runtime can allocate."""
    cpu_core: str = ""
    """CPU core, e.g. ``cortex-m4f``."""
    cpu_clock_hz: int | None = None
    """CPU clock."""
    accelerators: tuple[str, ...] = ()
    """Accelerators/kernels, sorted."""
    model_formats: tuple[str, ...] = ()
    """Accepted model formats, sorted."""
    active_model_id: str = ""
    """Installed model id; empty when none."""
    active_model_version: str = ""
    """Installed model version."""
    active_model_digest: bytes = b""
    """SHA-256 of the installed module payload."""

    def target_spec(self, memory_free_kb: int | None = None) -> TargetSpec:
        """The compiler plugins' view of this device (raises InvalidTarget when incoherent)."""
        storage = self.storage_bytes
        if memory_free_kb is not None:
            storage = min(storage, memory_free_kb * 1024)
        return TargetSpec(
            runtime=self.runtime, runtime_version=self.runtime_version, cpu_core=self.cpu_core,
            ram_bytes=self.ram_bytes, flash_bytes=storage, arena_budget_bytes=self.arena_budget_bytes,
            ops=frozenset(self.operators), accelerators=frozenset(self.accelerators),
            formats=frozenset(self.model_formats), cpu_clock_hz=self.cpu_clock_hz,
        )


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """Everything discovery learned about one device."""

    endpoint: str
    """Endpoint client name."""
    read_at: float
    """Unix time of the reads."""
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    firmware_version: str = ""
    software_version: str = ""
    hardware_version: str = ""
    memory_free_kb: int | None = None
    """/3/0/10."""
    memory_total_kb: int | None = None
    """/3/0/21."""
    firmware_protocols: tuple[int, ...] = ()
    """/5/0/8: 0 CoAP, 1 CoAPS, 2 HTTP 1.1, 3 HTTPS 1.1, 4 CoAP/TCP, 5 CoAP/TLS."""
    firmware_delivery: int | None = None
    """/5/0/9: 0 pull only, 1 push only, 2 both."""
    software_packages: tuple[SoftwarePackage, ...] = ()
    """/9 instances."""
    tinyml: TinyMLCapability | None = None
    """None when the device has no TinyML Capability object."""
    problems: tuple[str, ...] = ()
    """Reads that failed, e.g. ``/26241/0: 4.04 Not Found``."""

    def target_spec(self) -> TargetSpec | None:
        """What the device can run, for compiler selection; None without a TinyML object."""
        if self.tinyml is None:
            return None
        return self.tinyml.target_spec(self.memory_free_kb)

    @property
    def device_class(self) -> str | None:
        """Devices of one class share compiled modules (see :attr:`TargetSpec.device_class`)."""
        try:
            target = self.target_spec()
        except InvalidTarget:
            return None
        return target.device_class if target is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (lists for tuples, hex for the digest)."""
        data = asdict(self)
        if self.tinyml is not None:
            data["tinyml"]["active_model_digest"] = self.tinyml.active_model_digest.hex()
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        values = dict(data)
        values["firmware_protocols"] = tuple(values.get("firmware_protocols", ()))
        values["software_packages"] = tuple(SoftwarePackage(**p) for p in values.get("software_packages", ()))
        values["problems"] = tuple(values.get("problems", ()))
        tinyml = values.get("tinyml")
        if tinyml is not None:
            tinyml = dict(tinyml)
            for key in ("operators", "accelerators", "model_formats"):
                tinyml[key] = tuple(tinyml.get(key, ()))
            tinyml["active_model_digest"] = bytes.fromhex(tinyml.get("active_model_digest", ""))
            values["tinyml"] = TinyMLCapability(**tinyml)
        return cls(**values)


def discovery_paths(registration: Registration) -> list[LwM2MPath]:
    """What to read for a profile, limited to the objects the device advertised."""
    paths = [LwM2MPath.of(DEVICE, 0)]
    if registration.supports(FIRMWARE):
        paths += [LwM2MPath.of(FIRMWARE, 0, 8), LwM2MPath.of(FIRMWARE, 0, 9)]
    if registration.supports(SOFTWARE):
        paths.append(LwM2MPath.of(SOFTWARE))
    if registration.supports(TINYML_OBJECT_ID):
        paths.append(LwM2MPath.of(TINYML_OBJECT_ID, 0))
    return paths


def needs_discovery(previous: Registration | None, current: Registration) -> bool:
    """A new registration, or an Update that changed the object list."""
    return previous is None or previous.object_list.objects != current.object_list.objects


def build_profile(
    endpoint: str, reads: Mapping[LwM2MPath, Node | str], now: float
) -> DeviceProfile:
    """The profile from discovery reads: each path maps to the decoded node, or
    to a string saying why the read failed."""
    leaves: dict[LwM2MPath, Value] = {}
    problems = []
    for path, outcome in reads.items():
        if isinstance(outcome, str):
            problems.append(f"{path}: {outcome}")
        else:
            leaves.update(flatten(outcome, path))

    def get(*ids: int, default: Any = None) -> Any:
        return leaves.get(LwM2MPath(ids), default)

    def multi(*ids: int) -> tuple:
        prefix = LwM2MPath(ids)
        return tuple(v for p, v in sorted(leaves.items()) if len(p) == 4 and p.parent == prefix)

    packages = sorted({p.ids[1] for p in leaves if p.ids[0] == SOFTWARE})
    tinyml = None
    if any(p.ids[0] == TINYML_OBJECT_ID for p in leaves):
        t = TINYML_OBJECT_ID
        tinyml = TinyMLCapability(
            runtime=get(t, 0, 0, default=""),
            runtime_version=get(t, 0, 1, default=""),
            operators=tuple(sorted(set(multi(t, 0, 2)))),
            ram_bytes=get(t, 0, 3, default=0),
            storage_bytes=get(t, 0, 4, default=0),
            arena_budget_bytes=get(t, 0, 5, default=0),
            cpu_core=get(t, 0, 6, default=""),
            cpu_clock_hz=get(t, 0, 7),
            accelerators=tuple(sorted(multi(t, 0, 8))),
            model_formats=tuple(sorted(multi(t, 0, 9))),
            active_model_id=get(t, 0, 10, default=""),
            active_model_version=get(t, 0, 11, default=""),
            active_model_digest=get(t, 0, 12, default=b""),
        )
    return DeviceProfile(
        endpoint=endpoint,
        read_at=now,
        manufacturer=get(3, 0, 0, default=""),
        model=get(3, 0, 1, default=""),
        serial=get(3, 0, 2, default=""),
        firmware_version=get(3, 0, 3, default=""),
        memory_free_kb=get(3, 0, 10),
        hardware_version=get(3, 0, 18, default=""),
        software_version=get(3, 0, 19, default=""),
        memory_total_kb=get(3, 0, 21),
        firmware_protocols=tuple(multi(5, 0, 8)),
        firmware_delivery=get(5, 0, 9),
        software_packages=tuple(
            SoftwarePackage(i, get(9, i, 0, default=""), get(9, i, 1, default=""), get(9, i, 7), get(9, i, 12))
            for i in packages
        ),
        tinyml=tinyml,
        problems=tuple(problems),
    )
