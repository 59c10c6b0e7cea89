"""Device profiles (hardware classes) and the fleet section, YAML → typed dataclasses.

A profile says what a simulated device of one hardware class looks like: its
LwM2M version and binding, its Device object values, the sensors it carries and
its TinyML capability (object 26241). The three built-in classes
(``cortex-m0plus``, ``cortex-m4f``, ``linux-gateway``) are defined in
:data:`simulators.builtin.BUILTIN_PROFILES_YAML`; a config file (``config/fleet.yaml``) may
redefine them or add more under ``profiles:`` and lists the fleet to start::

    profiles:
      cortex-m4f: {...}          # optional: overrides / additions
    server: coap://127.0.0.1:5683  # optional default for --server
    concurrency: 50                # optional: registrations in flight
    trust_anchors: [keys/signing.pub.pem]  # optional: signers every device trusts
    fleet:
      - {profile: cortex-m4f, count: 10, endpoint_prefix: m4f}

Profile keys for deployments: ``trust_anchors`` (PEM files of signers),
``vendor_domain`` (SUIT vendor id), ``download_block_size`` (Block2 size of pull
downloads), ``delivery`` (``pull``, ``push`` or ``both``: /5/0/9, which the server
also follows for software) and, under ``tinyml``, ``fail_activation`` (fault injection: every
activation fails and rolls back). A device with an Ethos-U NPU (``accelerators:
[ethos-u55-128]``) may give its configuration under ``tinyml`` too:
``accelerator_system_config``, ``accelerator_memory_mode`` and ``accelerator_sram``
(26241/22–24). Relative file names are relative to the config file.

Every problem is a :class:`ConfigError` whose message names the key path,
e.g. ``fleet[1].count: must be > 0, got 0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .builtin import BUILTIN_PROFILES_YAML

LWM2M_VERSIONS = ("1.0", "1.1", "1.2")
POWER_SOURCES = {
    "dc": 0, "battery": 1, "external-battery": 2, "fuel-cell": 3,
    "poe": 4, "usb": 5, "ac": 6, "solar": 7,
}
"""Power source names → values of /3/0/6 (Available Power Sources)."""
SENSORS = {"temperature": 3303, "humidity": 3304, "accelerometer": 3313, "generic": 3300}
"""Sensor names a profile may list → the IPSO object each one instantiates."""
_ENDPOINT_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


class ConfigError(Exception):
    """A profile or fleet file is invalid; ``str()`` is ``"<key path>: <what is wrong>"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        """Key path of the offending value, e.g. ``fleet[1].count``."""
        self.reason = reason
        """What is wrong with it."""


@dataclass(frozen=True, slots=True)
class PowerSource:
    """One power source of the Device object (/3/0/6, 7, 8 share an instance id)."""

    kind: str
    """A key of :data:`POWER_SOURCES`."""
    voltage_mv: int
    """/3/0/7, millivolts."""
    current_ma: int
    """/3/0/8, milliamperes."""


@dataclass(frozen=True, slots=True)
class TinyMLProfile:
    """Values of the TinyML Capability object (26241) resources 0–9."""

    runtime: str
    """ML Runtime Name (0), e.g. ``tflite-micro``."""
    runtime_version: str
    """ML Runtime Version (1)."""
    operators: tuple[str, ...]
    """Supported Operators (2), TFLite BuiltinOperator names."""
    model_ram: int
    """Model RAM Available (3), bytes."""
    model_storage: int
    """Model Storage Available (4), bytes."""
    arena_budget: int
    """Tensor Arena Budget (5), bytes."""
    cpu_core: str
    """CPU Core (6), e.g. ``cortex-m4f``."""
    cpu_clock: int
    """CPU Clock (7), hertz."""
    accelerators: tuple[str, ...] = ()
    """Accelerators (8), e.g. ``cmsis-nn``; empty for reference kernels."""
    model_formats: tuple[str, ...] = ("tflite",)
    """Supported Model Formats (9)."""
    inference_period: int = 0
    """Inference Period (19), seconds; 0 runs only on Execute (18)."""
    fail_activation: bool = False
    """Fault injection: every model activation fails and rolls back (not a resource)."""
    accelerator_system_config: str = ""
    """Accelerator System Config (22), e.g. ``Ethos_U55_High_End_Embedded``; "" leaves it out."""
    accelerator_memory_mode: str = ""
    """Accelerator Memory Mode (23), e.g. ``Shared_Sram``; "" leaves it out."""
    accelerator_sram: int | None = None
    """Accelerator SRAM Size (24), bytes; None leaves it out."""


@dataclass(frozen=True, slots=True)
class SoftwarePackage:
    """A package already installed at start (one instance of object 9)."""

    name: str
    """PkgName (/9/0/0)."""
    version: str
    """PkgVersion (/9/0/1)."""


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One hardware class: everything a simulated device needs besides its endpoint name."""

    name: str
    """Profile name, e.g. ``cortex-m4f``."""
    tinyml: TinyMLProfile
    """TinyML capability values."""
    manufacturer: str = "TinyMLaaS"
    """/3/0/0."""
    model: str = "simulated device"
    """/3/0/1 Model Number."""
    firmware_version: str = "1.0.0"
    """/3/0/3 (and /5/0/7 PkgVersion of the running firmware)."""
    hardware_version: str = "1.0"
    """/3/0/18."""
    device_type: str = "sensor"
    """/3/0/17."""
    lwm2m_version: str = "1.1"
    """Enabler version sent as ``lwm2m=`` on Register."""
    binding: str = "U"
    """Transport binding; the simulator speaks CoAP over UDP only."""
    queue_mode: bool = False
    """Register in queue mode (``Q`` flag in 1.1+, ``b=UQ`` in 1.0)."""
    lifetime: int = 300
    """Registration lifetime, seconds (/1/0/1)."""
    ram: int = 262144
    """Total RAM, bytes (informational; object 26241 carries what models may use)."""
    flash: int = 1048576
    """Total storage, bytes (/3/0/21 Memory Total, in KB)."""
    flash_free: int = 524288
    """Free storage, bytes (/3/0/10 Memory Free, in KB)."""
    battery_level: int | None = None
    """/3/0/9 in percent; None when the device has no battery (resource absent)."""
    power_sources: tuple[PowerSource, ...] = (PowerSource("usb", 5000, 50),)
    """/3/0/6–8, one resource instance each."""
    sensors: tuple[str, ...] = ()
    """Keys of :data:`SENSORS`, one object instance each (repeat a name for two)."""
    sensor_interval: float = 5.0
    """Seconds between sensor random-walk steps."""
    short_server_id: int = 1
    """/1/0/0 and /0/0/10."""
    default_pmin: int | None = None
    """/1/0/2 Default Minimum Period; None leaves the resource out."""
    default_pmax: int | None = None
    """/1/0/3 Default Maximum Period; None leaves the resource out."""
    software_package: SoftwarePackage | None = None
    """A package shown as installed at start in /9/0 (without a model); None: /9/0 is empty."""
    trust_anchors: tuple[str, ...] = ()
    """PEM files of the public keys whose signed packages the device accepts."""
    vendor_domain: str | None = None
    """Domain the SUIT vendor id is made from; None: the TinyMLaaS vendor id."""
    download_block_size: int = 1024
    """Block2 size the device asks for when it fetches a package (16..1024, a power of 2)."""
    delivery: str = "both"
    """Update delivery it supports (/5/0/9): ``pull``, ``push`` or ``both``."""


DELIVERY_METHODS = {"pull": 0, "push": 1, "both": 2}
"""/5/0/9 Firmware Update Delivery Method values."""


@dataclass(frozen=True, slots=True)
class FleetGroup:
    """One entry of the ``fleet`` list."""

    profile: str
    """Name of the profile its devices use."""
    count: int
    """How many devices."""
    endpoint_prefix: str
    """Endpoints are ``<prefix>-0001``, ``<prefix>-0002``, …"""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """A loaded config file: profiles by name and the fleet to start."""

    profiles: Mapping[str, DeviceProfile]
    """Built-in profiles merged with the file's ``profiles:``."""
    fleet: tuple[FleetGroup, ...] = ()
    """Groups of devices in file order."""
    server: str | None = None
    """Default server URI (``--server`` wins)."""
    concurrency: int = 50
    """Registrations (and de-registrations) in flight at once."""
    trust_anchors: tuple[str, ...] = ()
    """PEM files every device trusts (the file's top-level ``trust_anchors``), besides
    its profile's own."""

    def total(self) -> int:
        """Number of devices the fleet section asks for."""
        return sum(group.count for group in self.fleet)

    def endpoints(self, count: int | None = None) -> list[tuple[str, DeviceProfile]]:
        """``(endpoint, profile)`` for every device, group by group.

        With ``count``, that many devices are spread over the groups in
        proportion to their counts (largest remainder, ties to earlier groups).
        """
        counts = [group.count for group in self.fleet]
        if count is not None:
            counts = _apportion(count, counts)
        devices = []
        for group, number in zip(self.fleet, counts):
            profile = self.profiles[group.profile]
            devices.extend(
                (f"{group.endpoint_prefix}-{index:04d}", profile) for index in range(1, number + 1)
            )
        return devices


def _apportion(total: int, weights: list[int]) -> list[int]:
    whole = sum(weights)
    if whole == 0 or total <= 0:
        return [0] * len(weights)
    exact = [total * weight / whole for weight in weights]
    shares = [int(value) for value in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


# -- validation helpers ---------------------------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value) if isinstance(value, str) else str(value)


class _Section:
    """A mapping being read, remembering its key path and which keys were used."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a mapping, got {_show(data)}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str, default: Any = ...) -> Any:
        """The value of ``name``; ``default`` when absent or null (required when ``...``)."""
        self.used.add(name)
        value = self.data.get(name)
        if value is None:
            if default is ...:
                raise ConfigError(self.key(name), "is required")
            return default
        return value

    def text(self, name: str, default: Any = ..., *, choices: tuple[str, ...] = ()) -> str:
        value = self.raw(name, default)
        if value is default and default is not ...:
            return value
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), f"must be a non-empty string, got {_show(value)}")
        if choices and value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, name: str, default: Any = ..., *, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.raw(name, default)
        if value is default and default is not ...:
            return value
        if type(value) is not int:
            raise ConfigError(self.key(name), f"must be an integer, got {_show(value)}")
        if value < minimum:
            relation = f"> {minimum - 1}" if minimum > 0 else f">= {minimum}"
            raise ConfigError(self.key(name), f"must be {relation}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(self.key(name), f"must be <= {maximum}, got {value}")
        return value

    def number(self, name: str, default: Any = ..., *, positive: bool = True) -> float:
        value = self.raw(name, default)
        if value is default and default is not ...:
            return value
        if type(value) not in (int, float) or (positive and not value > 0):
            raise ConfigError(self.key(name), f"must be a number > 0, got {_show(value)}")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if type(value) is not bool:
            raise ConfigError(self.key(name), f"must be true or false, got {_show(value)}")
        return value

    def strings(self, name: str, default: Any = ..., *, non_empty: bool = False,
                choices: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.raw(name, default)
        if value is default and default is not ...:
            return tuple(value)
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"must be a list of strings, got {_show(value)}")
        if non_empty and not value:
            raise ConfigError(self.key(name), "must not be empty")
        for index, item in enumerate(value):
            where = f"{self.key(name)}[{index}]"
            if not isinstance(item, str) or not item:
                raise ConfigError(where, f"must be a non-empty string, got {_show(item)}")
            if choices and item not in choices:
                raise ConfigError(where, f"must be one of {', '.join(choices)}, got {item!r}")
        return tuple(value)

    def section(self, name: str) -> _Section | None:
        value = self.raw(name, None)
        return None if value is None else _Section(value, self.key(name))

    def done(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise ConfigError(self.key(str(name)), "unknown key")


def _version(section: _Section) -> str:
    value = section.raw("lwm2m_version", "1.1")
    if isinstance(value, float):  # YAML reads 1.1 as a float
        value = repr(value)
    if value not in LWM2M_VERSIONS:
        raise ConfigError(section.key("lwm2m_version"),
                          f"must be one of {', '.join(LWM2M_VERSIONS)}, got {_show(value)}")
    return value


def _paths(section: _Section, name: str, base_dir: Path | None) -> tuple[str, ...]:
    """A list of file names, made absolute against ``base_dir`` (the config file's folder)."""
    paths = section.strings(name, ())
    if base_dir is None:
        return paths
    return tuple(str(base_dir / path) if not Path(path).is_absolute() else path for path in paths)


def parse_profile(name: str, data: object, path: str, base_dir: Path | None = None) -> DeviceProfile:
    """One profile mapping; ``path`` is its key path (``profiles.cortex-m4f``); relative
    file names in it are taken from ``base_dir``."""
    section = _Section(data, path)
    tinyml_section = section.section("tinyml")
    if tinyml_section is None:
        raise ConfigError(section.key("tinyml"), "is required")
    tinyml = TinyMLProfile(
        runtime=tinyml_section.text("runtime"),
        runtime_version=tinyml_section.text("runtime_version"),
        operators=tinyml_section.strings("operators", non_empty=True),
        model_ram=tinyml_section.integer("model_ram", minimum=1),
        model_storage=tinyml_section.integer("model_storage", minimum=1),
        arena_budget=tinyml_section.integer("arena_budget", minimum=1),
        cpu_core=tinyml_section.text("cpu_core"),
        cpu_clock=tinyml_section.integer("cpu_clock", minimum=1),
        accelerators=tinyml_section.strings("accelerators", ()),
        model_formats=tinyml_section.strings("model_formats", ("tflite",), non_empty=True),
        inference_period=tinyml_section.integer("inference_period", 0),
        fail_activation=tinyml_section.flag("fail_activation", False),
        accelerator_system_config=tinyml_section.text("accelerator_system_config", ""),
        accelerator_memory_mode=tinyml_section.text("accelerator_memory_mode", ""),
        accelerator_sram=tinyml_section.integer("accelerator_sram", None, minimum=1),
    )
    tinyml_section.done()
    sources = section.raw("power_sources", [{"type": "usb", "voltage_mv": 5000, "current_ma": 50}])
    if not isinstance(sources, list) or not sources:
        raise ConfigError(section.key("power_sources"), f"must be a non-empty list, got {_show(sources)}")
    power = []
    for index, item in enumerate(sources):
        source = _Section(item, f"{section.key('power_sources')}[{index}]")
        power.append(PowerSource(
            source.text("type", choices=tuple(POWER_SOURCES)),
            source.integer("voltage_mv"),
            source.integer("current_ma"),
        ))
        source.done()
    package = None
    package_section = section.section("software_package")
    if package_section is not None:
        package = SoftwarePackage(package_section.text("name"), package_section.text("version"))
        package_section.done()
    battery = section.raw("battery_level", None)
    if battery is not None:
        battery = section.integer("battery_level", maximum=100)
    pmin = section.integer("default_pmin", None)
    pmax = section.integer("default_pmax", None)
    binding = section.text("binding", "U")
    if binding != "U":
        raise ConfigError(section.key("binding"),
                          f"must be 'U' (the simulator speaks CoAP over UDP only), got {binding!r}")
    flash = section.integer("flash", minimum=1)
    block = section.integer("download_block_size", 1024, minimum=16, maximum=1024)
    if block & (block - 1):
        raise ConfigError(section.key("download_block_size"), f"must be a power of 2, got {block}")
    flash_free = section.integer("flash_free", flash // 2)
    if flash_free > flash:
        raise ConfigError(section.key("flash_free"), f"must be <= flash ({flash}), got {flash_free}")
    profile = DeviceProfile(
        name=name,
        tinyml=tinyml,
        manufacturer=section.text("manufacturer"),
        model=section.text("model"),
        firmware_version=section.text("firmware_version"),
        hardware_version=section.text("hardware_version", "1.0"),
        device_type=section.text("device_type", "sensor"),
        lwm2m_version=_version(section),
        binding=binding,
        queue_mode=section.flag("queue_mode", False),
        lifetime=section.integer("lifetime", 300, minimum=1),
        ram=section.integer("ram", minimum=1),
        flash=flash,
        flash_free=flash_free,
        battery_level=battery,
        power_sources=tuple(power),
        sensors=section.strings("sensors", (), choices=tuple(SENSORS)),
        sensor_interval=section.number("sensor_interval", 5.0),
        short_server_id=section.integer("short_server_id", 1, minimum=1, maximum=65534),
        default_pmin=pmin,
        default_pmax=pmax,
        software_package=package,
        trust_anchors=_paths(section, "trust_anchors", base_dir),
        vendor_domain=section.text("vendor_domain", None),
        download_block_size=block,
        delivery=section.text("delivery", "both"),
    )
    if profile.delivery not in DELIVERY_METHODS:
        raise ConfigError(section.key("delivery"), f"must be pull, push or both, got {profile.delivery!r}")
    section.done()
    return profile


def parse_config(data: object, *, base: Mapping[str, DeviceProfile] | None = None,
                 base_dir: Path | None = None) -> FleetConfig:
    """A whole config document (already parsed from YAML); profiles merge over ``base``
    (the built-in profiles by default); relative file names are taken from ``base_dir``."""
    if data is None:
        data = {}
    top = _Section(data, "")
    profiles = dict(builtin_profiles() if base is None else base)
    profile_section = top.section("profiles")
    if profile_section is not None:
        for name, body in profile_section.data.items():
            profile_section.used.add(name)
            if not isinstance(name, str) or not name:
                raise ConfigError(profile_section.key(str(name)), "a profile name must be a non-empty string")
            profiles[name] = parse_profile(name, body, profile_section.key(name), base_dir)
    server = top.text("server", None)
    concurrency = top.integer("concurrency", 50, minimum=1)
    anchors = _paths(top, "trust_anchors", base_dir)
    groups_data = top.raw("fleet", [])
    if not isinstance(groups_data, list):
        raise ConfigError("fleet", f"must be a list, got {_show(groups_data)}")
    groups: list[FleetGroup] = []
    prefixes: dict[str, int] = {}
    for index, item in enumerate(groups_data):
        entry = _Section(item, f"fleet[{index}]")
        name = entry.text("profile")
        if name not in profiles:
            raise ConfigError(entry.key("profile"),
                              f"unknown profile {name!r}, known: {', '.join(sorted(profiles))}")
        count = entry.integer("count", minimum=1)
        prefix = entry.text("endpoint_prefix")
        if not _ENDPOINT_PREFIX.fullmatch(prefix):
            raise ConfigError(entry.key("endpoint_prefix"),
                              f"must be letters, digits, '.', '_' or '-', got {prefix!r}")
        if prefix in prefixes:
            raise ConfigError(entry.key("endpoint_prefix"),
                              f"{prefix!r} is already used by fleet[{prefixes[prefix]}]")
        prefixes[prefix] = index
        entry.done()
        groups.append(FleetGroup(name, count, prefix))
    top.done()
    return FleetConfig(profiles=profiles, fleet=tuple(groups), server=server, concurrency=concurrency,
                       trust_anchors=anchors)


def load_config(path: str | Path) -> FleetConfig:
    """Read and validate a YAML config file; every problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), f"cannot read: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "malformed YAML"
        raise ConfigError(str(path), f"invalid YAML{where}: {problem}") from None
    return parse_config(data, base_dir=path.parent)


_BUILTIN: dict[str, DeviceProfile] | None = None


def builtin_profiles() -> dict[str, DeviceProfile]:
    """The shipped hardware classes, by name."""
    global _BUILTIN
    if _BUILTIN is None:
        data = yaml.safe_load(BUILTIN_PROFILES_YAML)
        _BUILTIN = {name: parse_profile(name, body, f"builtin.{name}") for name, body in data.items()}
    return dict(_BUILTIN)


def get_profile(name: str, profiles: Mapping[str, DeviceProfile] | None = None) -> DeviceProfile:
    """A profile by name; :class:`ConfigError` naming the known ones when absent."""
    profiles = builtin_profiles() if profiles is None else profiles
    if name not in profiles:
        raise ConfigError("profile", f"unknown profile {name!r}, known: {', '.join(sorted(profiles))}")
    return profiles[name]
