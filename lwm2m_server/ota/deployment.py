"""Models and inference modules: the files a rollout delivers.

A registered model is a file under ``<data_dir>/models``. For a device, every
installed compiler plugin that fits compiles it for the device's class (cached
on disk by model digest, plugin, plugin version and class), the modules are
ranked (:mod:`lwm2m_server.compilers.selection`; a rollout may pin one plugin
instead), and the first is signed into a SUIT envelope under
``<data_dir>/modules``. The envelope carries the compiled model
integrated, so push (write the envelope) and pull (the device fetches the same
file over Block2) deliver identical bytes. One envelope serves a whole class.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import structlog

from ..transport.messages import Download
from ..compilers import (
    CompileCache, CompiledModule, CompilerError, CompilerPlugin, Incompatible, ModelInput, Ranking, TargetSpec,
    discover_plugins, rank_plugins,
)
from ..core.capabilities import DeviceProfile
from ..store.base import Store
from ..suit import (
    ModelMetadata, build_envelope, generate_key_files, key_id,
    load_private_key, make_class_id, make_vendor_id,
)

_RANKINGS_KEPT = 256
"""Rankings kept in memory (one per model, device figures and pin in use)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class DeploymentError(Exception):
    """A model or module operation that cannot be done; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A registered model."""

    name: str
    version: str
    format: str
    digest: str
    """SHA-256 hex of the file."""
    size: int
    file: str
    """Path of the stored copy."""
    added_at: float

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class Artifact:
    """A signed inference module for one device class."""

    file: str
    """The envelope file."""
    token: str
    """Its download name: ``/fw/<token>``."""
    size: int
    sha256: str
    """SHA-256 hex of the envelope."""
    payload_sha256: str
    """SHA-256 hex of the compiled model inside (what the device reports once active)."""
    sequence_number: int
    device_class: str
    plugin: str
    arena_bytes: int
    package: str = "suit"
    """``suit`` (a signed envelope) or ``raw`` (a firmware image as it is, for
    standard clients that verify their own image format)."""


class DeploymentSettings(Protocol):
    """What deployment needs of the configuration (``deployment`` in the YAML)."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def signing_key(self) -> Path: ...
    @property
    def vendor_domain(self) -> str: ...
    @property
    def poll_interval_s(self) -> float: ...
    @property
    def phase_timeout_s(self) -> float: ...
    @property
    def suit_device_classes(self) -> tuple[str, ...]: ...


class Deployment:
    """Model registry, compile cache, signing and download files."""

    def __init__(
        self, config: DeploymentSettings, store: Store, *,
        plugins: list[CompilerPlugin] | None = None, clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.plugins = plugins if plugins is not None else discover_plugins()
        self._clock = clock
        self._dir = Path(config.data_dir)
        self.cache = CompileCache(self._dir / "cache")
        self.vendor_id = make_vendor_id(config.vendor_domain)
        self._key = None
        self._lock = asyncio.Lock()
        self._artifacts: dict[str, Artifact] = {}
        self._rankings: OrderedDict[tuple, Ranking] = OrderedDict()  # by model, target and pin (see build)
        self._modules: dict[str, Artifact] = {}  # signed modules by model, payload and class
        self._downloads: dict[str, Download] = {}
        self._envelopes: dict[str, bytes] = {}
        self._log = structlog.get_logger("lwm2m_server.deployment")

    async def start(self) -> None:
        for sub in ("models", "modules", "cache"):
            (self._dir / sub).mkdir(parents=True, exist_ok=True)
        key_path = Path(self.config.signing_key)
        if not key_path.exists():
            generate_key_files(key_path, "ES256")
            self._log.info("signing_key_created", path=str(key_path))
        self._key = load_private_key(key_path)
        for data in (await self.store.list_documents("module")).values():
            artifact = Artifact(**data)
            if Path(artifact.file).is_file():
                self.remember(artifact)
        self._log.info("deployment_ready", key_id=key_id(self._key.public_key()), modules=len(self._downloads),
                       plugins=[p.name for p in self.plugins])

    # -- models ---------------------------------------------------------------------

    def formats(self) -> list[str]:
        """Model formats an operator may upload: what the installed plugins accept, and firmware."""
        return sorted({"firmware"}.union(*(plugin.accepts for plugin in self.plugins)))

    async def add_model(self, data: bytes, name: str, version: str, fmt: str = "tflite") -> ModelRecord:
        """Register a model; the same bytes again are fine, other bytes under a used
        name@version are refused."""
        for what, value in (("name", name), ("version", version)):
            if not _NAME.fullmatch(value):
                raise DeploymentError(f"model {what} {value!r}: use 1..64 letters, digits, '.', '_', '-'")
        if fmt not in self.formats():
            raise DeploymentError(f"format {fmt!r} is not supported ({', '.join(self.formats())})")
        if fmt == "firmware":
            if not data:
                raise DeploymentError(f"{name}@{version}: the firmware image is empty")
        else:
            source = ModelInput(data, fmt, name, version)
            try:
                for plugin in self.plugins:
                    if fmt in plugin.accepts:
                        await asyncio.to_thread(plugin.validate, source)
            except CompilerError as error:
                raise DeploymentError(f"{name}@{version} is not a valid {fmt} model: {error.reason}") from None
        digest = hashlib.sha256(data).hexdigest()
        existing = await self.model(f"{name}@{version}")
        if existing is not None:
            if existing.digest != digest:
                raise DeploymentError(f"{name}@{version} is registered with other content; use a new version")
            return existing
        path = self._dir / "models" / f"{digest}.{fmt}"
        _write_atomic(path, data)
        record = ModelRecord(name, version, fmt, digest, len(data), str(path), self._clock())
        await self.store.put_document("model", record.key, asdict(record), self._clock())
        self._log.info("model_added", model=record.key, size=record.size, digest=digest[:16])
        return record

    async def model(self, key: str) -> ModelRecord | None:
        data = await self.store.get_document("model", key)
        return ModelRecord(**data) if data is not None else None

    async def models(self) -> list[ModelRecord]:
        return [ModelRecord(**d) for d in (await self.store.list_documents("model")).values()]

    # -- modules ---------------------------------------------------------------------

    async def artifact_for(self, model: ModelRecord, target: TargetSpec, plugin: str = "") -> Artifact:
        """The signed module of ``model`` for ``target``'s class, by the plugin ranked first (or the
        pinned ``plugin``); :class:`Incompatible` (with every asked plugin's reasons) when nothing fits."""
        if model.format == "firmware":
            return await self._firmware_artifact(model, target.device_class, target.flash_bytes)
        return (await self.build(model, target, plugin))[0]

    async def ranking(self, model: ModelRecord, target: TargetSpec, plugin: str = "") -> Ranking:
        """Every installed plugin's verdict on ``model`` for ``target`` (only ``plugin``'s when given),
        the fitting modules ranked; modules come from the compile cache, compiled when missing."""
        source = self._source(model)
        async with self._lock:  # one compile at a time: plugins are CPU-bound
            return await self._rank(source, target, plugin)

    async def build(self, model: ModelRecord, target: TargetSpec, plugin: str = "") -> tuple[Artifact, Ranking]:
        """The signed module of a (non-firmware) ``model`` for ``target``, and the ranking that chose it.

        A rollout asks once per device, and the devices of a class mostly report the same
        figures: the ranking is kept per (model, target, pin), the signed module per key,
        so those devices cost a lookup, not every plugin's check and cached module again."""
        async with self._lock:
            ranking = await self._ranking_of(model, target, plugin)
            chosen = ranking.require()
            module = chosen.module
            assert module is not None  # a fitting candidate has its module
            # the envelope names the model (metadata): the same bytes as another version are another module
            key = f"{model.key}:{module.payload_digest}:{target.device_class}"
            known = self._modules.get(key)
            if known is not None and Path(known.file).is_file():
                return known, ranking
            stored = await self.store.get_document("module", key)
            if stored is not None and Path(stored["file"]).is_file():
                self._modules[key] = Artifact(**stored)
                return self._modules[key], ranking
            artifact = await self._sign(model, module, target, chosen.plugin)
            await self.store.put_document("module", key, asdict(artifact), self._clock())
            self._modules[key] = artifact
        self._log.info("module_built", model=model.key, device_class=target.device_class, plugin=chosen.plugin,
                       pinned=bool(plugin), cache_hit=chosen.cache_hit, arena=module.required_arena_bytes,
                       fitting=[c.plugin for c in ranking.candidates if c.fits], sequence=artifact.sequence_number)
        return artifact, ranking

    async def _ranking_of(self, model: ModelRecord, target: TargetSpec, plugin: str) -> Ranking:
        memo = (model.key, model.digest, target, plugin)
        ranking = self._rankings.get(memo)
        if ranking is None:
            ranking = await self._rank(self._source(model), target, plugin)
            self._rankings[memo] = ranking
            while len(self._rankings) > _RANKINGS_KEPT:
                self._rankings.popitem(last=False)
        else:
            self._rankings.move_to_end(memo)
        return ranking

    def _source(self, model: ModelRecord) -> ModelInput:
        if model.format == "firmware":
            raise DeploymentError(f"{model.key} is a firmware image: it is installed as it is, never compiled")
        return ModelInput(Path(model.file).read_bytes(), model.format, model.name, model.version)

    async def _rank(self, source: ModelInput, target: TargetSpec, plugin: str) -> Ranking:
        return await asyncio.to_thread(rank_plugins, self.plugins, source, target,
                                       compile=self.cache.get_or_compile, pin=plugin)

    async def firmware_for(self, model: ModelRecord, profile: DeviceProfile) -> tuple[Artifact, str]:
        """The package of firmware ``model`` for one device, and why it has that form:
        a SUIT envelope where the device's TinyML object (or ``suit_device_classes``)
        says it verifies SUIT, the raw image otherwise. :class:`Incompatible` without
        /5 or when the image does not fit the free storage the device reports."""
        target = profile.target_spec() if profile.tinyml is not None else None
        if target is not None:
            return (await self._firmware_artifact(model, target.device_class, target.flash_bytes),
                    "SUIT envelope: the device's TinyML object says it verifies SUIT")
        device_class = profile.firmware_class
        if device_class is None:
            raise Incompatible("device has no Firmware Update object (/5)" if not profile.firmware_object
                               else "device names no manufacturer, model or hardware version in /3")
        storage = profile.free_storage_bytes
        if any(fnmatch.fnmatchcase(device_class, p) for p in self.config.suit_device_classes):
            return (await self._firmware_artifact(model, device_class, storage),
                    f"SUIT envelope: class {device_class} is in deployment.suit_device_classes")
        self._check_fits(model, storage)
        artifact = Artifact(model.file, model.digest[:24], model.size, model.digest, model.digest, 0,
                            "", "", 0, package="raw")  # the same bytes for every class
        if artifact.token not in self._artifacts:  # kept, so a delivery resumed after a restart finds it
            await self.store.put_document("module", f"{model.key}:{model.digest}:raw", asdict(artifact), self._clock())
            self.remember(artifact)
        return artifact, "raw image: the device declares no SUIT support"

    @staticmethod
    def _check_fits(model: ModelRecord, storage: int | None) -> None:
        if storage is not None and model.size > storage:
            raise Incompatible(f"firmware image is {model.size} B, device has {storage} B of storage free")

    async def _firmware_artifact(self, model: ModelRecord, device_class: str, storage: int | None) -> Artifact:
        """A firmware image needs no compiling: signed as is for the class, named by suit-text."""
        self._check_fits(model, storage)
        key = f"{model.key}:{model.digest}:{device_class}"
        async with self._lock:
            stored = await self.store.get_document("module", key)
            if stored is not None and Path(stored["file"]).is_file():
                return Artifact(**stored)
            image = Path(model.file).read_bytes()
            sequence = await self._next_sequence()
            envelope = build_envelope(
                image, sequence_number=sequence, vendor_id=self.vendor_id,
                class_id=make_class_id(self.vendor_id, device_class), metadata=None,
                signing_key=self._key, component_text={5: model.name, 6: model.version},
            )
            artifact = self._store_envelope(envelope, model.digest, device_class, "firmware", 0, sequence)
            await self.store.put_document("module", key, asdict(artifact), self._clock())
        return artifact

    async def _sign(self, model: ModelRecord, module: CompiledModule, target: TargetSpec, plugin: str) -> Artifact:
        sequence = await self._next_sequence()
        metadata = ModelMetadata(
            name=model.name, version=model.version, arena_bytes=module.required_arena_bytes,
            inputs=module.inputs, outputs=module.outputs,
            runtime_name=target.runtime, runtime_version=target.runtime_version,
            compiler_name=module.compiler, compiler_version=module.compiler_version,
            accelerator=module.accelerator, estimated_cycles=module.estimated_cycles,
            estimated_latency_s=module.estimated_latency_s, estimate_source=module.estimate_source,
        )
        envelope = build_envelope(
            module.payload, sequence_number=sequence, vendor_id=self.vendor_id,
            class_id=make_class_id(self.vendor_id, target.device_class), metadata=metadata,
            signing_key=self._key,
        )
        return self._store_envelope(envelope, module.payload_digest, target.device_class, plugin,
                                    module.required_arena_bytes, sequence)

    def _store_envelope(self, envelope: bytes, payload_sha256: str, device_class: str, plugin: str,
                        arena_bytes: int, sequence: int) -> Artifact:
        sha = hashlib.sha256(envelope).hexdigest()
        token = sha[:24]
        path = self._dir / "modules" / f"{token}.suit"
        _write_atomic(path, envelope)
        artifact = Artifact(str(path), token, len(envelope), sha, payload_sha256, sequence,
                            device_class, plugin, arena_bytes)
        self.remember(artifact)
        return artifact

    def remember(self, artifact: Artifact) -> None:
        """Serve ``artifact`` (signed here, or by the cluster's leader into the shared folder)."""
        self._artifacts[artifact.token] = artifact
        self._downloads[artifact.token] = _download(artifact)

    async def artifact_by_token(self, token: str) -> Artifact:
        artifact = self._artifacts.get(token)
        if artifact is None:
            raise DeploymentError(f"module {token} is gone from {self._dir / 'modules'}")
        return artifact

    async def _next_sequence(self) -> int:
        """Monotonic across restarts, and never below the clock: anti-rollback on the
        devices needs every new envelope to carry a larger number."""
        stored = await self.store.get_document("suit", "sequence") or {"next": 0}
        sequence = max(int(stored["next"]), int(self._clock()))
        await self.store.put_document("suit", "sequence", {"next": sequence + 1}, self._clock())
        return sequence

    def envelope(self, artifact: Artifact) -> bytes:
        """The package bytes (envelope or raw image), read once and shared by every push."""
        data = self._envelopes.get(artifact.token)
        if data is None:
            data = self._envelopes[artifact.token] = Path(artifact.file).read_bytes()
        return data

    def download(self, uri_path: tuple[str, ...]) -> Download | None:
        """The file of ``GET /fw/<token>`` (:class:`.downloads.ModuleDownloads` decides who gets it)."""
        if len(uri_path) == 2 and uri_path[0] == "fw":
            return self._downloads.get(uri_path[1])
        return None


def _download(artifact: Artifact) -> Download:
    return Download(Path(artifact.file), artifact.size, bytes.fromhex(artifact.sha256)[:8])


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
