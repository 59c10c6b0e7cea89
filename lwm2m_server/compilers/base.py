"""The compiler plugin interface: standard parameters in, a standard module out.

TinyML-as-a-Service puts many vendors' ML compilers behind one interface. The
server describes a device by a :class:`TargetSpec` (read from the TinyML
Capability object 26241 and the Device object /3), the model by a
:class:`ModelInput`, and asks a :class:`CompilerPlugin` for a
:class:`CompiledModule`: payload bytes plus what the device needs to run it
(arena, operators, tensor layout). A plugin that cannot serve a device says
why — :meth:`CompilerPlugin.check` returns the reasons, :meth:`compile` raises
:class:`Incompatible` — and the server records ``incompatible: <reason>`` for
that device instead of pushing anything.

Plugins register under the entry-point group ``tinymlaas.compilers``
(:func:`discover_plugins`); :mod:`.selection` ranks the modules of those that fit.

Memory is a filter, not part of the device class: a module compiled once per
:attr:`TargetSpec.device_class` is sent to each device of that class whose
memory it fits (:func:`fit_reasons`). So a plugin's output must not depend on
the target's memory figures, only its verdict does.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from importlib import metadata
from importlib.metadata import EntryPoint
from typing import Any, Iterable, Mapping

import structlog

from ..suit.device_class import accelerator_settings, device_class_name
from ..suit.model_info import TensorSpec

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "tinymlaas.compilers"
"""Entry-point group compiler plugins register under (``pyproject.toml``)."""

_ARCHITECTURES = {
    "cortex-m0": "armv6-m", "cortex-m0plus": "armv6-m", "cortex-m1": "armv6-m",
    "cortex-m3": "armv7-m", "cortex-m4": "armv7e-m", "cortex-m4f": "armv7e-m",
    "cortex-m7": "armv7e-m", "cortex-m23": "armv8-m.base", "cortex-m33": "armv8-m.main",
    "cortex-m35p": "armv8-m.main", "cortex-m55": "armv8.1-m.main", "cortex-m85": "armv8.1-m.main",
    "x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
    "riscv32": "rv32", "riscv64": "rv64", "esp32": "xtensa-lx6", "esp32s3": "xtensa-lx7",
}
"""CPU core (26241 resource 6) → instruction-set architecture; unknown cores map to themselves."""


# ---- errors -----------------------------------------------------------------------------

class CompilerError(Exception):
    """Base of every error this package raises; ``reason`` says what went wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        """Human-readable cause, stored by the server as is."""


class ModelError(CompilerError):
    """The model bytes are not a valid model of their declared format."""


class Incompatible(CompilerError):
    """The model cannot run on the target; ``reason`` says why (missing ops, byte counts, …)."""

    def __init__(self, reason: str, reasons_by_plugin: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(reason)
        self.reasons_by_plugin: dict[str, list[str]] = dict(reasons_by_plugin or {})
        """From a ranking (:mod:`.selection`): every asked plugin's reasons (empty when it fitted)."""


class CompileFailed(CompilerError):
    """The backend failed on a model it had accepted (a bug or a resource limit)."""


class InvalidTarget(CompilerError):
    """A target description is incomplete or inconsistent (e.g. a mandatory resource missing)."""


# ---- values -----------------------------------------------------------------------------

def _names(values: Iterable[str] | str | None, *, lower: bool) -> frozenset[str]:
    if values is None:
        return frozenset()
    if isinstance(values, str):
        values = [values]
    cleaned = (str(v).strip() for v in values)
    return frozenset((v.lower() if lower else v) for v in cleaned if v)


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What a device can run, from TinyML Capability (/26241) and Device (/3) resources."""

    runtime: str
    """ML Runtime Name (26241/0), lower case, e.g. ``tflite-micro``, ``litert``."""
    runtime_version: str
    """ML Runtime Version (26241/1)."""
    cpu_core: str
    """CPU Core (26241/6), lower case, e.g. ``cortex-m0plus``."""
    ram_bytes: int
    """Model RAM Available (26241/3): RAM a model may use outside the tensor arena."""
    flash_bytes: int
    """Model Storage Available (26241/4), capped by /3/0/10 Memory Free when known."""
    arena_budget_bytes: int
    """Tensor Arena Budget (26241/5)."""
    ops: frozenset[str] = frozenset()
    """Supported Operators (26241/2): TFLite builtin names, custom op names, or model kinds."""
    accelerators: frozenset[str] = frozenset()
    """Accelerators (26241/8), lower case; empty for reference kernels."""
    formats: frozenset[str] = frozenset({"tflite"})
    """Supported Model Formats (26241/9), lower case."""
    cpu_clock_hz: int | None = None
    """CPU Clock (26241/7), or None when the device does not say."""
    architecture: str = ""
    """Instruction set; derived from ``cpu_core`` when left empty (``armv6-m`` for an M0+)."""
    accelerator_system_config: str = ""
    """Accelerator System Config (26241/22), e.g. ``Ethos_U55_High_End_Embedded`` (Vela's
    ``--system-config``); "" when the device does not say. Part of the device class when set."""
    accelerator_memory_mode: str = ""
    """Accelerator Memory Mode (26241/23), e.g. ``Shared_Sram`` (Vela's ``--memory-mode``); ""
    when the device does not say. Part of the device class when set."""
    accelerator_sram_bytes: int | None = None
    """Accelerator SRAM Size (26241/24): SRAM the NPU may use for its arena or cache, bytes; None
    when the device does not say. Part of the device class when set (it shapes the NPU schedule)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "runtime", self.runtime.strip().lower())
        set_(self, "runtime_version", self.runtime_version.strip())
        set_(self, "cpu_core", self.cpu_core.strip().lower())
        set_(self, "ops", _names(self.ops, lower=False))
        set_(self, "accelerators", _names(self.accelerators, lower=True))
        set_(self, "formats", _names(self.formats, lower=True))
        set_(self, "accelerator_system_config", self.accelerator_system_config.strip())
        set_(self, "accelerator_memory_mode", self.accelerator_memory_mode.strip())
        if not self.architecture:
            set_(self, "architecture", _ARCHITECTURES.get(self.cpu_core, self.cpu_core))
        if not self.runtime:
            raise InvalidTarget("runtime name is empty")
        for name in ("ram_bytes", "flash_bytes", "arena_budget_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidTarget(f"{name}: must be an integer >= 0, got {value!r}")
        sram = self.accelerator_sram_bytes
        if sram is not None and (isinstance(sram, bool) or not isinstance(sram, int) or sram < 0):
            raise InvalidTarget(f"accelerator_sram_bytes: must be an integer >= 0 or None, got {sram!r}")

    @property
    def device_class(self) -> str:
        """Stable class id: devices with the same id get the same compiled module
        (see :func:`~lwm2m_server.suit.device_class.device_class_name`)."""
        return device_class_name(self.runtime, self.runtime_version, self.cpu_core,
                                 self.accelerators, self.formats, self.ops,
                                 accelerator_settings(self.accelerator_system_config,
                                                      self.accelerator_memory_mode, self.accelerator_sram_bytes))

    @classmethod
    def from_resources(cls, resources: Mapping[int, Any], *,
                       memory_free_kb: int | None = None) -> TargetSpec:
        """Build from the resource values of ``/26241/0`` keyed by resource id.

        Multiple-instance resources (2, 8, 9) may be a list or an
        ``{instance: value}`` mapping. ``memory_free_kb`` is /3/0/10 Memory Free
        (KB): when given, the storage figure is the smaller of it and 26241/4.
        A missing mandatory resource raises :class:`InvalidTarget` naming it.
        """
        def need(rid: int, name: str) -> Any:
            if resources.get(rid) is None:
                raise InvalidTarget(f"/26241/0/{rid} ({name}) is missing")
            return resources[rid]

        def many(rid: int) -> list[str]:
            value = resources.get(rid)
            if value is None:
                return []
            if isinstance(value, Mapping):
                return [str(v) for _, v in sorted(value.items())]
            if isinstance(value, (str, bytes)):
                return [value.decode() if isinstance(value, bytes) else value]
            return [str(v) for v in value]

        def integer(rid: int, name: str) -> int:
            value = need(rid, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidTarget(f"/26241/0/{rid} ({name}) must be an integer, got {value!r}")
            return value

        flash = integer(4, "Model Storage Available")
        if memory_free_kb is not None:
            flash = min(flash, int(memory_free_kb) * 1024)
        if resources.get(2) is None:
            raise InvalidTarget("/26241/0/2 (Supported Operators) is missing")
        clock = resources.get(7)
        sram = resources.get(24)
        if sram is not None and (isinstance(sram, bool) or not isinstance(sram, int)):
            raise InvalidTarget(f"/26241/0/24 (Accelerator SRAM Size) must be an integer, got {sram!r}")
        return cls(
            runtime=str(need(0, "ML Runtime Name")),
            runtime_version=str(need(1, "ML Runtime Version")),
            cpu_core=str(need(6, "CPU Core")),
            ram_bytes=integer(3, "Model RAM Available"),
            flash_bytes=flash,
            arena_budget_bytes=integer(5, "Tensor Arena Budget"),
            ops=frozenset(many(2)),
            accelerators=frozenset(many(8)),
            formats=frozenset(many(9)) or frozenset({"tflite"}),
            cpu_clock_hz=int(clock) if isinstance(clock, int) and not isinstance(clock, bool) else None,
            accelerator_system_config=str(resources.get(22) or ""),
            accelerator_memory_mode=str(resources.get(23) or ""),
            accelerator_sram_bytes=sram,
        )


@dataclass(frozen=True, slots=True)
class ModelInput:
    """A model as uploaded by an operator, before compilation."""

    data: bytes
    """The model file's bytes."""
    format: str = "tflite"
    """Input format, lower case: ``tflite`` (a TFLite flatbuffer), …"""
    name: str = ""
    """Model id, copied into the inference module's manifest (26241/10)."""
    version: str = ""
    """Model version (26241/11)."""
    digest: str = field(init=False, default="")
    """SHA-256 of ``data``, hex; computed on creation."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "format", self.format.strip().lower())
        object.__setattr__(self, "digest", hashlib.sha256(self.data).hexdigest())


@dataclass(frozen=True, slots=True)
class CompiledModule:
    """A compiler's output: what goes into an inference module, and what it needs."""

    payload: bytes
    """Bytes to install on the device."""
    payload_format: str
    """Format of ``payload``; one of the target's :attr:`TargetSpec.formats`."""
    runtime: str
    """Runtime the payload is for (26241/0)."""
    required_arena_bytes: int
    """Tensor arena the payload needs (compared with 26241/5)."""
    required_ram_bytes: int
    """RAM needed outside the arena (compared with 26241/3)."""
    required_ops: frozenset[str]
    """Operators the payload uses (a subset of 26241/2)."""
    inputs: tuple[TensorSpec, ...]
    """Model inputs in order."""
    outputs: tuple[TensorSpec, ...]
    """Model outputs in order; outputs[0] feeds Last Inference Result (26241/14)."""
    compiler: str
    """Plugin name."""
    compiler_version: str
    """Plugin version (includes the backend's version)."""
    source_digest: str = ""
    """SHA-256 hex of the :class:`ModelInput` compiled."""
    log: tuple[str, ...] = ()
    """What the compiler did, one line each."""
    accelerator: str = ""
    """Accelerator the payload needs (one of 26241/8, lower case, e.g. ``ethos-u55-128``); "" for none."""
    accelerator_ops: tuple[str, ...] = ()
    """Source-model operators placed on ``accelerator`` (empty when there is none)."""
    cpu_ops: tuple[str, ...] = ()
    """Source-model operators left to the CPU; with an accelerator, the fallback part."""
    required_flash_bytes: int = 0
    """Storage needed besides the payload bytes (e.g. weights placed off-chip); 0 for none."""
    estimated_cycles: int | None = None
    """The compiler's own estimate of cycles per inference, or None; an estimate, never a measurement."""
    estimated_latency_s: float | None = None
    """The compiler's estimate of seconds per inference, or None."""
    estimate_source: str = ""
    """What made the estimate (e.g. ``vela 5.2.0 performance model``); "" when there is none."""
    report: Mapping[str, Any] = field(default_factory=dict)
    """The compiler's own figures (JSON values only), shown to operators as they are."""
    payload_digest: str = field(init=False, default="")
    """SHA-256 of ``payload``, hex (the device reports it as 26241/12)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", bytes(self.payload))
        object.__setattr__(self, "required_ops", frozenset(self.required_ops))
        object.__setattr__(self, "accelerator", self.accelerator.strip().lower())
        object.__setattr__(self, "accelerator_ops", tuple(self.accelerator_ops))
        object.__setattr__(self, "cpu_ops", tuple(self.cpu_ops))
        object.__setattr__(self, "report", dict(self.report))
        object.__setattr__(self, "payload_digest", hashlib.sha256(self.payload).hexdigest())

    @property
    def storage_bytes(self) -> int:
        """Bytes of device storage the module takes (payload plus ``required_flash_bytes``)."""
        return len(self.payload) + self.required_flash_bytes


@dataclass(frozen=True, slots=True)
class ConformanceSample:
    """A model and a target it fits: what the conformance kit (``tinymlaas plugins check``) compiles."""

    model: ModelInput
    """A valid model of a format the plugin accepts."""
    target: TargetSpec
    """A target the plugin compiles ``model`` for (check returns no reason)."""


def fit_reasons(module: CompiledModule, target: TargetSpec) -> list[str]:
    """Why an already compiled module cannot go to ``target``; empty when it can.

    The server calls it per device on a module compiled (or cached) for the
    device's class, since memory figures differ within a class.
    """
    reasons = []
    if module.runtime != target.runtime:
        reasons.append(f"module is for runtime {module.runtime!r}, device runs {target.runtime!r}")
    if module.payload_format not in target.formats:
        reasons.append(f"device does not install {module.payload_format!r} payloads "
                       f"(supports: {', '.join(sorted(target.formats)) or 'none'})")
    missing = sorted(module.required_ops - target.ops)
    if missing:
        reasons.append(f"operators not supported by the device: {', '.join(missing)}")
    if module.required_arena_bytes > target.arena_budget_bytes:
        reasons.append(f"needs {module.required_arena_bytes} B of tensor arena, "
                       f"device arena budget is {target.arena_budget_bytes} B")
    if module.accelerator and module.accelerator not in target.accelerators:
        reasons.append(f"module needs accelerator {module.accelerator!r}, device has "
                       f"{', '.join(sorted(target.accelerators)) or 'none'}")
    if module.storage_bytes > target.flash_bytes:
        extra = f" + {module.required_flash_bytes} B more storage" if module.required_flash_bytes else ""
        reasons.append(f"payload is {len(module.payload)} B{extra}, device model storage is {target.flash_bytes} B")
    if module.required_ram_bytes > target.ram_bytes:
        reasons.append(f"needs {module.required_ram_bytes} B of RAM outside the arena, "
                       f"device has {target.ram_bytes} B")
    return reasons


def options_digest(options: Mapping[str, Any] | None) -> str:
    """Stable SHA-256 hex of compile options (numpy arrays by dtype, shape and bytes); "" for none."""
    if not options:
        return ""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if hasattr(value, "tobytes") and hasattr(value, "dtype"):
            digest.update(f"array:{value.dtype}:{getattr(value, 'shape', ())}:".encode())
            digest.update(value.tobytes())
        elif isinstance(value, Mapping):
            digest.update(b"{")
            for k in sorted(value, key=str):
                digest.update(repr(k).encode() + b":")
                feed(value[k])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
                digest.update(b",")
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed(options)
    return digest.hexdigest()


# ---- plugins ----------------------------------------------------------------------------

class CompilerPlugin(abc.ABC):
    """One compiler backend behind the standard interface.

    Subclasses set ``name``, ``version``, ``accepts`` and ``targets`` (class
    attributes or properties) and implement :meth:`check` and :meth:`compile`.
    ``compile`` must give the same payload for every device of one device class.
    """

    name: str = ""
    """Unique plugin name, e.g. ``tflm``."""
    version: str = "0"
    """Plugin version; part of the compile-cache key, so include the backend's version."""
    accepts: frozenset[str] = frozenset()
    """Input model formats (:attr:`ModelInput.format`)."""
    targets: frozenset[str] = frozenset()
    """Runtime names (26241/0) the output runs on."""
    output_format: str = "tflite"
    """Payload format produced (must be in the target's formats)."""
    lossy: bool = False
    """True when the output may compute different numbers than the input model (quantization)."""
    priority: int = 0
    """Late tie-breaker in the ranking (:mod:`.selection`): higher wins among modules alike in
    accelerator, lossiness, latency estimate and storage."""

    @abc.abstractmethod
    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        """Reasons ``model`` cannot run on ``target``; empty when it fits.

        Raises :class:`ModelError` when the model bytes are malformed (that is
        the model's fault, not the device's).
        """

    @abc.abstractmethod
    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        """Compile for ``target``; raises :class:`Incompatible` with the reasons of :meth:`check`."""

    def validate(self, model: ModelInput) -> None:
        """Raise :class:`ModelError` naming the problem when ``model`` is not a valid model of a
        format this plugin accepts; called when an operator uploads a model. Plugins whose
        format has a checker override this; the default accepts the bytes."""

    def conformance_samples(self) -> list[ConformanceSample]:
        """Small models with a target each fits, for the conformance kit; a plugin ships at
        least one (the kit derives the targets that must not fit from them)."""
        return []

    def basic_reasons(self, model: ModelInput, target: TargetSpec) -> list[str]:
        """The checks every plugin shares: input format, runtime name, output format."""
        reasons = []
        if model.format not in self.accepts:
            reasons.append(f"{self.name} does not accept {model.format!r} models "
                           f"(accepts: {', '.join(sorted(self.accepts))})")
        if target.runtime not in self.targets:
            reasons.append(f"{self.name} does not compile for runtime {target.runtime!r} "
                           f"(targets: {', '.join(sorted(self.targets))})")
        if self.output_format not in target.formats:
            reasons.append(f"device does not install {self.output_format!r} payloads "
                           f"(supports: {', '.join(sorted(target.formats)) or 'none'})")
        return reasons

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.version}>"


def _instantiate(obj: Any) -> CompilerPlugin:
    plugin = obj() if isinstance(obj, type) or (callable(obj) and not isinstance(obj, CompilerPlugin)) else obj
    for attribute in ("name", "version", "accepts", "targets", "check", "compile"):
        if not hasattr(plugin, attribute):
            raise TypeError(f"{plugin!r} has no {attribute!r}: not a compiler plugin")
    return plugin


def discover_plugins(plugins: Iterable[CompilerPlugin] = (), *,
                     entry_points: Iterable[EntryPoint] | None = None) -> list[CompilerPlugin]:
    """Compiler plugins: ``plugins`` given directly, then those registered as entry points.

    An entry point (group :data:`ENTRY_POINT_GROUP`) may name a plugin class
    (instantiated without arguments), a factory function or an instance.
    ``entry_points`` replaces the installed entry points (tests inject a list).
    A plugin that fails to load is logged and skipped, so one broken package
    does not stop the server; a name already taken (directly given plugins come
    first) is skipped the same way. Returns plugins sorted by name.
    """
    found: dict[str, CompilerPlugin] = {}
    for plugin in plugins:
        found.setdefault(plugin.name, plugin)
    points = metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    for point in points:
        try:
            plugin = _instantiate(point.load())
        except Exception as exc:  # a third-party plugin may fail in any way
            log.warning("compiler_plugin_failed", entry_point=point.name, error=repr(exc))
            continue
        if plugin.name in found:
            log.warning("compiler_plugin_duplicate", entry_point=point.name, name=plugin.name)
            continue
        found[plugin.name] = plugin
    return [found[name] for name in sorted(found)]
