"""Capability discovery, sans-I/O: which paths to read after a registration, and
the typed device profile those reads give.

The profile is what deployment decisions rest on: the TinyML Capability object
(26241, see docs/tinyml-object.md) says what the device can run, /3 what it is,
/5 and /9 how it accepts updates.

A device without the TinyML object can still take firmware through /5 (any
standard client can): its class then comes from /3, manufacturer, model number
and hardware version (:attr:`DeviceProfile.device_class`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, fields
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
    accelerator_system_config: str = ""
    """Accelerator System Config (26241/22), e.g. ``Ethos_U55_High_End_Embedded``; "" when absent."""
    accelerator_memory_mode: str = ""
    """Accelerator Memory Mode (26241/23), e.g. ``Shared_Sram``; "" when absent."""
    accelerator_sram_bytes: int | None = None
    """Accelerator SRAM Size (26241/24), bytes; None when absent."""

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
            accelerator_system_config=self.accelerator_system_config,
            accelerator_memory_mode=self.accelerator_memory_mode,
            accelerator_sram_bytes=self.accelerator_sram_bytes,
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
    firmware_object: bool = False
    """The device has the Firmware Update object (/5) and answered its read."""
    firmware_state: int | None = None
    """/5/0/3: 0 Idle, 1 Downloading, 2 Downloaded, 3 Updating."""
    firmware_result: int | None = None
    """/5/0/5: the last Update Result (1 success; see :data:`FIRMWARE_RESULTS`)."""
    package_name: str | None = None
    """/5/0/6 PkgName; None when the device does not have the resource."""
    package_version: str | None = None
    """/5/0/7 PkgVersion: what a firmware rollout checks by default, when present."""
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
        """Devices of one class share compiled modules (see :attr:`TargetSpec.device_class`).
        Without a TinyML object, a device with /5 is of the firmware class its /3 names."""
        try:
            target = self.target_spec()
        except InvalidTarget:
            return None
        if target is not None:
            return target.device_class
        return self.firmware_class

    @property
    def firmware_class(self) -> str | None:
        """``fw-<manufacturer>-<model>-<hardware version>`` (lower case, other characters
        as ``-``) for a device with /5; None without /5 or when /3 names nothing."""
        if not self.firmware_object:
            return None
        parts = [_slug(part) for part in (self.manufacturer, self.model, self.hardware_version)]
        if not any(parts):
            return None
        return "fw-" + "-".join(part or "unknown" for part in parts)

    @property
    def free_storage_bytes(self) -> int | None:
        """/3/0/10 Memory Free in bytes, when the device reports it."""
        return self.memory_free_kb * 1024 if isinstance(self.memory_free_kb, int) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (lists for tuples, hex for the digest)."""
        return _json_safe(self)

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


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


def _json_safe(value: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, bytes as hex (what ``asdict`` and a JSON round
    trip gave, at a fraction of the cost: a profile is stored at every discovery)."""
    if isinstance(value, tuple):  # mostly of strings (operators, formats): no call for those
        return [item if type(item) is str else _json_safe(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "__dataclass_fields__"):
        return {name: _json_safe(getattr(value, name)) for name in _field_names(type(value))}
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:32]


FIRMWARE_STATES = {0: "idle", 1: "downloading", 2: "downloaded", 3: "updating"}
"""Firmware Update State (/5/0/3) in words."""
FIRMWARE_RESULTS = {
    0: "initial value", 1: "firmware updated successfully", 2: "not enough flash memory",
    3: "out of RAM during download", 4: "connection lost during download", 5: "integrity check failure",
    6: "unsupported package type", 7: "invalid URI", 8: "firmware update failed", 9: "unsupported protocol",
    10: "firmware update cancelled", 11: "firmware update deferred",
}
"""Update Result (/5/0/5) in words (LwM2M Core 1.1 Appendix E.6; 10 and 11 since 1.1)."""


def discovery_paths(registration: Registration) -> list[LwM2MPath]:
    """What to read for a profile, limited to the objects the device advertised."""
    paths = [LwM2MPath.of(DEVICE, 0)]
    if registration.supports(FIRMWARE):
        paths.append(LwM2MPath.of(FIRMWARE, 0))  # one read: state, result, package name and version, methods
    if registration.supports(SOFTWARE):
        paths.append(LwM2MPath.of(SOFTWARE))
    if registration.supports(TINYML_OBJECT_ID):
        paths.append(LwM2MPath.of(TINYML_OBJECT_ID, 0))
    return paths


def profile_from_composite(endpoint: str, paths: list[LwM2MPath], values: Mapping[LwM2MPath, Value],
                           now: float) -> DeviceProfile:
    """The profile from one Read-Composite of ``paths``: the leaves under them (an instance
    left out reads as a 4.04 problem, as its Read would; an object without instances as
    empty); leaves under no path asked for are not the device's to add."""
    wanted = {path.ids for path in paths}
    lengths = sorted({len(path) for path in paths})
    by_ids: dict[tuple[int, ...], Value] = {}
    found = set()
    for leaf, value in values.items():  # one pass: an answer has dozens of leaves
        ids = leaf.ids
        for length in lengths:
            if ids[:length] in wanted:
                by_ids[ids] = value
                found.add(ids[:length])
                break
    problems = [f"{path}: 4.04 not in the Read-Composite answer"
                for path in paths if len(path) > 1 and path.ids not in found]
    return _profile(endpoint, by_ids, problems, now)


def needs_discovery(previous: Registration | None, current: Registration) -> bool:
    """A new registration, or an Update that changed the object list."""
    return previous is None or previous.object_list.objects != current.object_list.objects


def build_profile(
    endpoint: str, reads: Mapping[LwM2MPath, Node | Mapping[LwM2MPath, Value] | str], now: float
) -> DeviceProfile:
    """The profile from discovery reads: each path maps to the decoded node (or its
    leaves by path, as a Read-Composite gives them), or to a string saying why the
    read failed."""
    by_ids: dict[tuple[int, ...], Value] = {}
    problems = []
    for path, outcome in reads.items():
        if isinstance(outcome, str):
            problems.append(f"{path}: {outcome}")
            continue
        leaves = outcome if isinstance(outcome, Mapping) else flatten(outcome, path)
        for leaf, value in leaves.items():
            by_ids[leaf.ids] = value
    return _profile(endpoint, by_ids, problems, now)


def _profile(endpoint: str, by_ids: dict[tuple[int, ...], Value], problems: list[str], now: float) -> DeviceProfile:
    """The profile from the leaf values by ids (looked up ~40 times here)."""
    objects = {ids[0] for ids in by_ids}

    def get(*ids: int, default: Any = None) -> Any:
        return by_ids.get(ids, default)

    instances: dict[tuple[int, ...], list[Value]] = {}  # resource instance values by resource, in id order
    for ids in sorted(ids for ids in by_ids if len(ids) == 4):
        instances.setdefault(ids[:3], []).append(by_ids[ids])

    def multi(*ids: int) -> tuple:
        return tuple(instances.get(ids, ()))

    packages = sorted({ids[1] for ids in by_ids if ids[0] == SOFTWARE})
    tinyml = None
    if TINYML_OBJECT_ID in objects:
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
            accelerator_system_config=get(t, 0, 22, default=""),
            accelerator_memory_mode=get(t, 0, 23, default=""),
            accelerator_sram_bytes=get(t, 0, 24),
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
        firmware_object=FIRMWARE in objects,
        firmware_state=get(5, 0, 3),
        firmware_result=get(5, 0, 5),
        package_name=get(5, 0, 6),
        package_version=get(5, 0, 7),
        software_packages=tuple(
            SoftwarePackage(i, get(9, i, 0, default=""), get(9, i, 1, default=""), get(9, i, 7), get(9, i, 12))
            for i in packages
        ),
        tinyml=tinyml,
        problems=tuple(problems),
    )
