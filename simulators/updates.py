"""Software Management (/9, SOTA) and Firmware Update (/5, FOTA) as the device runs
them, sans-I/O: the server's writes and executes arrive as object hooks, the
resources show the states, and pull downloads are handed to the adapter
(:attr:`UpdateManager.fetches`, fetched by :mod:`simulators.fetch`).

A package is a signed SUIT envelope with the payload integrated (an inference
module for /9, a firmware image for /5). The device checks it with
:func:`lwm2m_server.suit.verify_envelope` against its own trust anchors, vendor
id, class id and anti-rollback counter (:class:`DeviceTrust`, one counter per
object). The class id is ``make_class_id(vendor_id, device_class)`` where the
device class is computed from the device's own 26241 resources exactly as the
server's ``TargetSpec.device_class`` does (:func:`device_class`). The device then
runs the manifest's command sequences and, at Install, Activate and Update, checks
vendor, class and anti-rollback again across all /9 instances
(:mod:`simulators.package_checks`, which also says how each failure is classified).

/9 instance i::

    write Package (push) or Package URI (pull; the device fetches over Block2)
      → 1 DOWNLOAD STARTED (result 1) → 2 DOWNLOADED → verify
      → 3 DELIVERED (result 3)            or 0 INITIAL + failure result
    Install (E 4), only in DELIVERED: recheck, run the update sequences, load
      → 4 INSTALLED (result 2), PkgName/PkgVersion set, Activation State false
        or stays DELIVERED, result 58 (load) / 0 INITIAL + result (refused)
    Activate (E 10), only in INSTALLED: the module becomes the active model
      (the previous one stays loadable) → Activation State true, 26241/10–13 set,
      statistics reset, one inference run (after the recheck and the invocation
      sequences); on failure the previous model keeps running, Activation State
      false, result 58 (or the refusal's result, e.g. 57).
    Deactivate (E 11): the previous model runs again. Uninstall (E 6): without
      argument (or 0) removes the package; with argument 1 only returns to INITIAL.

/5: write Package or Package URI → 1 Downloading → verify → 2 Downloaded (or 0
Idle + failure result); Update (E 2), only when Downloaded → 3 Updating → the
firmware version from the manifest becomes /3/0/3, state 0 Idle, result 1, and
the device reboots (:attr:`UpdateManager.reboot_requested`). Cancel (E 10).

Why a package is refused, and the result each object reports (``kind`` of
:class:`Refused` / :class:`~simulators.download.DownloadError`):

=============  =====================================================  ====  ====
kind           cause                                                  /9    /5
=============  =====================================================  ====  ====
storage        envelope (or payload) larger than Model Storage         50    2
               Available 26241/4 (/9) or Memory Free /3/0/10 (/5)
connection     the package server does not answer, 5.xx, broken        52    4
               block-wise answers
integrity      bad or untrusted signature, manifest digest, payload    53    5
               digest or size (SignatureError, PayloadError)
unsupported    malformed envelope, unsupported SUIT feature, other      54    6
               vendor or class, no integrated payload, no model
               metadata, a runtime or model format the device lacks
uri            malformed URI, unknown host, 4.xx from the server        56    7
protocol       a scheme other than coap or coaps                        56    9
rollback       sequence number not greater than the installed one       57    8
               (at Install, Activate, Update: than any held)
install        the runtime cannot load (Install) or run (Activate),     58    8
               the manifest aborts or a directive cannot run
=============  =====================================================  ====  ====
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping
from uuid import UUID

import structlog

from ipso_objects import TINYML_OBJECT_ID, LwM2MPath
from lwm2m_server.suit.device_class import accelerator_settings, device_class_name
from lwm2m_server.suit import (
    INVOCATION, UPDATE, VENDOR_ID, DeviceFacts, PublicKey, SuitError, VerifiedModule,
    load_public_key, make_class_id, verify_envelope,
)
from lwm2m_server.suit.commands import ComponentId

from .download import BlockDownload, DownloadError, check_uri
from .management import DeviceAccess, ExecuteRefused
from .package_checks import Held, Refused, check_identity, check_newer, classify, installed_image, run
from .runtime import InstalledModule, ModelLoadError, ModelRuntime, installable

if TYPE_CHECKING:
    from .inference import InferenceService

log = structlog.get_logger(__name__)

TML = TINYML_OBJECT_ID
SOFTWARE, FIRMWARE = "software", "firmware"


class SotaState(enum.IntEnum):
    """/9/i/7 Update State."""

    INITIAL = 0
    DOWNLOAD_STARTED = 1
    DOWNLOADED = 2
    DELIVERED = 3
    INSTALLED = 4


class FotaState(enum.IntEnum):
    """/5/0/3 State."""

    IDLE = 0
    DOWNLOADING = 1
    DOWNLOADED = 2
    UPDATING = 3


SOTA_RESULTS = {"storage": 50, "memory": 51, "connection": 52, "server": 52, "integrity": 53,
                "unsupported": 54, "uri": 56, "protocol": 56, "rollback": 57, "install": 58}
"""Refusal kind → /9/i/9 Update Result (see the module docstring)."""
FOTA_RESULTS = {"storage": 2, "memory": 3, "connection": 4, "server": 4, "integrity": 5,
                "unsupported": 6, "uri": 7, "protocol": 9, "rollback": 8, "install": 8}
"""Refusal kind → /5/0/5 Update Result."""


# -- identity ----------------------------------------------------------------------------------


def device_class(resources: Mapping[int, Any]) -> str:
    """The device class from 26241 resource values (by resource id), named as the
    server names it (its ``TargetSpec.device_class`` uses the same function)."""

    def many(rid: int) -> list[str]:
        value = resources.get(rid)
        if value is None:
            return []
        if isinstance(value, Mapping):
            return [str(v) for _, v in sorted(value.items())]
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value]

    sram = resources.get(24)
    return device_class_name(
        str(resources.get(0, "")), str(resources.get(1, "")), str(resources.get(6, "")),
        many(8), many(9) or ["tflite"], many(2),
        accelerator_settings(str(resources.get(22) or ""), str(resources.get(23) or ""),
                             sram if isinstance(sram, int) and not isinstance(sram, bool) else None),
    )


@functools.lru_cache(maxsize=64)
def _key_from_file(path: str) -> PublicKey:
    return load_public_key(path)


def load_anchors(sources: Iterable[PublicKey | str | Path | bytes]) -> tuple[PublicKey, ...]:
    """Trust anchors from public keys, PEM file paths or PEM bytes (files read once)."""
    keys = []
    for source in sources:
        if isinstance(source, (str, Path)):
            keys.append(_key_from_file(str(source)))
        elif isinstance(source, (bytes, bytearray)):
            keys.append(load_public_key(bytes(source)))
        else:
            keys.append(source)
    return tuple(keys)


@dataclass(slots=True)
class DeviceTrust:
    """What the device trusts: signers, its vendor, and the anti-rollback counters."""

    anchors: tuple[PublicKey, ...] = ()
    """Public keys whose signatures the device accepts (none: every package is refused, 53)."""
    vendor_id: UUID = VENDOR_ID
    """The device's SUIT vendor id."""
    sequence: dict[str, int] = field(default_factory=dict)
    """Sequence number of the installed manifest, per object (``software``, ``firmware``)."""
    manifests: dict[str, bytes] = field(default_factory=dict)
    """Digest of the manifest that set each counter (it alone may carry the same number again)."""


@dataclass(slots=True)
class _Package:
    """Device-side state of one /9 instance beyond its resources."""

    delivered: VerifiedModule | None = None
    """Verified, waiting for Install."""
    installed: InstalledModule | None = None
    """Installed (active or not)."""
    source: VerifiedModule | None = None
    """The package :attr:`installed` came from."""
    contents: dict[ComponentId, bytes] = field(default_factory=dict)
    """This instance's components, as its last Install left them."""


class UpdateManager:
    """The /9 and /5 state machines of one device, wired into its objects as hooks."""

    def __init__(self, objects: DeviceAccess, runtime: ModelRuntime, inference: InferenceService,
                 trust: DeviceTrust, *, block_size: int = 1024) -> None:
        self.objects = objects
        self.runtime = runtime
        self.inference = inference
        self.trust = trust
        self.block_exp = max(0, min(6, block_size.bit_length() - 5))
        """SZX of pull downloads."""
        self.packages: dict[int, _Package] = {}
        self.firmware: VerifiedModule | None = None
        """The verified firmware envelope waiting for Update."""
        self.firmware_contents: dict[ComponentId, bytes] = {}
        """The firmware components, as the last Update left them."""
        self.fetches: dict[tuple[str, int], BlockDownload] = {}
        """Downloads the adapter should be running, by (object, instance)."""
        self.partial: dict[str, BlockDownload] = {}
        """Interrupted downloads by URI: writing the same URI again resumes them."""
        self.transitions: list[tuple[str, int, int]] = []
        """(object instance, state, result) after every change, oldest first."""
        self.reboot_requested = False
        """Set by a firmware update; the adapter reboots and clears it."""
        for rid, hook in ((2, self._sota_package), (3, self._sota_uri)):
            objects.set_write_hook(9, rid, hook)
        for rid, hook in ((4, self._install), (6, self._uninstall), (10, self._activate),
                          (11, self._deactivate)):
            objects.set_execute_hook(9, rid, hook)
        objects.set_write_hook(5, 0, self._fota_package)
        objects.set_write_hook(5, 1, self._fota_uri)
        objects.set_execute_hook(5, 2, self._fota_update)
        objects.set_execute_hook(5, 10, self._fota_cancel)

    # -- identity and verification ------------------------------------------------------------

    def class_id(self) -> UUID:
        """The SUIT class id this device accepts."""
        resources = {rid: self.objects.get(LwM2MPath.of(TML, 0, rid)) for rid in (0, 1, 2, 6, 8, 9, 22, 23, 24)}
        return make_class_id(self.trust.vendor_id, device_class(resources))

    def _verify(self, data: bytes, target: str) -> VerifiedModule:
        try:
            module = verify_envelope(
                data, trust_anchors=self.trust.anchors, expected_vendor_id=self.trust.vendor_id,
                expected_class_id=self.class_id(), min_sequence_number=self.trust.sequence.get(target),
            )
        except SuitError as error:
            raise Refused(classify(error), error.reason) from None
        if module.payload is None:
            raise Refused("unsupported", "the envelope carries no integrated payload")
        return module

    def _facts(self) -> DeviceFacts:
        return DeviceFacts(self.trust.vendor_id, self.class_id())

    def _recheck(self, module: VerifiedModule, target: str) -> None:
        """Before Install, Activate, Update: still this device's vendor and class, and newer
        than the counter and (/9) than the package installed in any instance."""
        check_identity(module, self.trust.vendor_id, self.class_id())
        held = []
        if target in self.trust.sequence:
            held.append(Held(self.trust.sequence[target], self.trust.manifests.get(target),
                             f"the last one activated ({target})"))
        for instance, package in sorted(self.packages.items()) if target == SOFTWARE else ():
            if package.source is not None and package.installed is not None:
                held.append(Held(package.source.sequence_number, package.source.manifest_digest,
                                 f"installed in /9/{instance} ({package.installed.name} {package.installed.version})"))
        check_newer(module, held)

    def _model_storage(self) -> int:
        return int(self.objects.get(f"/{TML}/0/4") or 0)

    def _verify_software(self, data: bytes) -> VerifiedModule:
        storage = self._model_storage()
        if len(data) > storage:
            raise Refused("storage", f"the module is {len(data)} B, Model Storage Available is {storage} B")
        module = self._verify(data, SOFTWARE)
        meta = module.metadata
        if meta is None:
            raise Refused("unsupported", "the manifest carries no model metadata")
        runtime = str(self.objects.get(f"/{TML}/0/0") or "")
        if meta.runtime_name.strip().lower() != runtime.strip().lower():
            raise Refused("unsupported", f"the module is for runtime {meta.runtime_name!r}, "
                                         f"this device runs {runtime!r}")
        formats = {str(v).lower() for v in (self.objects.get(f"/{TML}/0/9") or {}).values()}
        payload = module.payload or b""
        if not installable(payload, formats):
            raise Refused("unsupported", f"the payload is not a model format this device installs "
                                         f"({', '.join(sorted(formats)) or 'none'})")
        return module

    # -- /9 resources ---------------------------------------------------------------------------

    def _sota(self, instance: int, state: int, result: int, reason: str | None = None) -> None:
        base = LwM2MPath.of(9, instance)
        if instance not in self.objects.instances(9):
            return  # deleted meanwhile
        for rid, value in ((7, state), (9, result)):
            if self.objects.get(base.child(rid)) != value:
                self.objects.set(base.child(rid), value)
        if reason is not None:
            self.objects.set(base.child(16), reason[:255])
        self.transitions.append((str(base), int(state), int(result)))
        if result >= 50:
            log.warning("sota_failed", ep=self.objects.endpoint, instance=instance, result=result, reason=reason)
        else:
            log.info("sota_state", ep=self.objects.endpoint, instance=instance, state=int(state), result=result)

    def _package(self, instance: int) -> _Package:
        return self.packages.setdefault(instance, _Package())

    def _sync_activation(self) -> None:
        active = self.runtime.active
        for instance in self.objects.instances(9):
            package = self.packages.get(instance)
            installed = package.installed if package else None
            on = active is not None and installed == active
            if installed is not None or package is not None:
                if self.objects.get(LwM2MPath.of(9, instance, 12)) != on:
                    self.objects.set(LwM2MPath.of(9, instance, 12), on)

    def _sota_package(self, objects: DeviceAccess, path: LwM2MPath, value: Any) -> None:
        instance = path.ids[1]
        self._stop_fetch((SOFTWARE, instance))
        objects.set(path, b"")  # write-only: nothing to keep once handled
        data = bytes(value or b"")
        if not data:
            self._package(instance).delivered = None
            self._sota(instance, SotaState.INITIAL, 0, "package cleared")
            return
        self._sota(instance, SotaState.DOWNLOAD_STARTED, 1)
        self._deliver_software(instance, data)

    def _sota_uri(self, objects: DeviceAccess, path: LwM2MPath, value: Any) -> None:
        instance = path.ids[1]
        self._stop_fetch((SOFTWARE, instance))
        uri = str(value or "").strip()
        if not uri:
            self._sota(instance, SotaState.INITIAL, 0, "package URI cleared")
            return
        try:
            check_uri(uri)
        except DownloadError as error:
            self._sota(instance, SotaState.INITIAL, SOTA_RESULTS[error.kind], error.reason)
            return
        download = self._start_fetch((SOFTWARE, instance), uri, self._model_storage())
        resumed = f" from byte {len(download.data)}" if download.data else ""
        self._sota(instance, SotaState.DOWNLOAD_STARTED, 1, f"downloading {uri}{resumed}")

    def _deliver_software(self, instance: int, data: bytes) -> None:
        self._sota(instance, SotaState.DOWNLOADED, 1)
        try:
            module = self._verify_software(data)
            installed_image(module, run(module, self._facts(), UPDATE, self._package(instance).contents))
        except Refused as refused:
            self._package(instance).delivered = None
            self._sota(instance, SotaState.INITIAL, SOTA_RESULTS[refused.kind], refused.reason)
            return
        self._package(instance).delivered = module
        meta = module.metadata
        assert meta is not None
        self._sota(instance, SotaState.DELIVERED, 3, f"verified {meta.name} {meta.version} "
                                                     f"(sequence {module.sequence_number}, key {module.key_id})")

    def _state(self, instance: int) -> int:
        return int(self.objects.get(LwM2MPath.of(9, instance, 7)) or 0)

    def _install(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        instance = path.ids[1]
        package = self._package(instance)
        state = self._state(instance)
        if state != SotaState.DELIVERED or package.delivered is None:
            raise ExecuteRefused("4.05", f"Install needs Update State 3 (DELIVERED), the state is {state}")
        verified = package.delivered
        meta = verified.metadata
        assert meta is not None
        try:
            self._recheck(verified, SOFTWARE)
            outcome = run(verified, self._facts(), UPDATE, package.contents)
            payload = installed_image(verified, outcome)
        except Refused as refused:
            package.delivered = None
            self._sota(instance, SotaState.INITIAL, SOTA_RESULTS[refused.kind], f"Install refused: {refused.reason}")
            return
        module = InstalledModule(meta.name, meta.version, hashlib.sha256(payload).digest(), payload,
                                 verified.sequence_number, meta)
        try:
            self.runtime.load(module)
        except ModelLoadError as error:
            self._sota(instance, SotaState.DELIVERED, 58, error.reason)
            return
        package.installed, package.source, package.delivered = module, verified, None
        package.contents = outcome.contents
        base = LwM2MPath.of(9, instance)
        objects.set(base.child(0), meta.name)
        objects.set(base.child(1), meta.version)
        self._sync_activation()
        self._sota(instance, SotaState.INSTALLED, 2, f"installed {meta.name} {meta.version}")

    def _activate(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        instance = path.ids[1]
        package = self._package(instance)
        state = self._state(instance)
        if state != SotaState.INSTALLED or package.installed is None:
            raise ExecuteRefused("4.05", f"Activate needs Update State 4 (INSTALLED), the state is {state}")
        module = package.installed
        running = self.runtime.active
        kept = f"{running.name} {running.version} still active" if running else "no model active"
        try:
            assert package.source is not None
            self._recheck(package.source, SOFTWARE)
            run(package.source, self._facts(), INVOCATION, package.contents)
        except Refused as refused:
            self._sync_activation()
            self._sota(instance, SotaState.INSTALLED, SOTA_RESULTS[refused.kind],
                       f"Activate refused: {refused.reason}; {kept}")
            return
        try:
            self.runtime.activate(module)
        except ModelLoadError as error:
            self._sync_activation()
            objects.set(LwM2MPath.of(9, instance, 12), False)
            self._sota(instance, SotaState.INSTALLED, 58, f"{error.reason}; rolled back, {kept}")
            return
        self.trust.sequence[SOFTWARE] = module.sequence_number  # not below the counter: rechecked above
        self.trust.manifests[SOFTWARE] = package.source.manifest_digest
        self._sync_activation()
        self._sota(instance, SotaState.INSTALLED, 2, f"active: {module.name} {module.version}")
        self.inference.activated(module, objects.now)

    def _deactivate(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        package = self._package(path.ids[1])
        active = self.runtime.active
        if package.installed is not None and active == package.installed:
            self.runtime.deactivate()
            self.inference.show_active()
        self._sync_activation()

    def _uninstall(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        instance = path.ids[1]
        for_update = "1" in {part.split("=")[0] for part in arguments.split(",") if part}
        self._stop_fetch((SOFTWARE, instance))
        package = self._package(instance)
        package.delivered = None
        if for_update:
            self._sota(instance, SotaState.INITIAL, 0, "ready for an update")
            return
        if package.installed is not None:
            self.runtime.remove(package.installed)
            package.installed, package.source, package.contents = None, None, {}
            self.inference.show_active()
        base = LwM2MPath.of(9, instance)
        objects.set(base.child(0), "")
        objects.set(base.child(1), "")
        objects.set(base.child(12), False)
        self._sync_activation()
        self._sota(instance, SotaState.INITIAL, 0, "uninstalled")

    # -- /5 ----------------------------------------------------------------------------------

    def _fota(self, state: int, result: int, reason: str | None = None) -> None:
        for rid, value in ((3, state), (5, result)):
            if self.objects.get(LwM2MPath.of(5, 0, rid)) != value:
                self.objects.set(LwM2MPath.of(5, 0, rid), value)
        self.transitions.append(("/5/0", int(state), int(result)))
        if result >= 2:
            log.warning("fota_failed", ep=self.objects.endpoint, state=int(state), result=result, reason=reason)
        else:
            log.info("fota_state", ep=self.objects.endpoint, state=int(state), result=result, reason=reason)

    def _flash_free(self) -> int:
        return int(self.objects.get("/3/0/10") or 0) * 1024

    def _fota_package(self, objects: DeviceAccess, path: LwM2MPath, value: Any) -> None:
        self._stop_fetch((FIRMWARE, 0))
        objects.set(path, b"")
        data = bytes(value or b"")
        self.firmware = None
        if not data:
            self._fota(FotaState.IDLE, 0, "package cleared")
            return
        self._fota(FotaState.DOWNLOADING, 0)
        self._deliver_firmware(data)

    def _fota_uri(self, objects: DeviceAccess, path: LwM2MPath, value: Any) -> None:
        self._stop_fetch((FIRMWARE, 0))
        self.firmware = None
        uri = str(value or "").strip()
        if not uri:
            self._fota(FotaState.IDLE, 0, "package URI cleared")
            return
        try:
            check_uri(uri)
        except DownloadError as error:
            self._fota(FotaState.IDLE, FOTA_RESULTS[error.kind], error.reason)
            return
        self._start_fetch((FIRMWARE, 0), uri, self._flash_free())
        self._fota(FotaState.DOWNLOADING, 0, f"downloading {uri}")

    def _deliver_firmware(self, data: bytes) -> None:
        try:
            if len(data) > self._flash_free():
                raise Refused("storage", f"the image is {len(data)} B, {self._flash_free()} B of flash are free")
            module = self._verify(data, FIRMWARE)
            name, version = firmware_identity(module)
            outcome = run(module, self._facts(), UPDATE, self.firmware_contents)
            run(module, self._facts(), INVOCATION, outcome.contents)
            installed_image(module, outcome)
        except Refused as refused:
            self._fota(FotaState.IDLE, FOTA_RESULTS[refused.kind], refused.reason)
            return
        self.firmware = module
        self.objects.set("/5/0/6", name)
        self.objects.set("/5/0/7", version)
        self._fota(FotaState.DOWNLOADED, 0, f"verified firmware {name} {version}")

    def _fota_update(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        state = int(objects.get("/5/0/3") or 0)
        if state != FotaState.DOWNLOADED or self.firmware is None:
            raise ExecuteRefused("4.05", f"Update needs State 2 (Downloaded), the state is {state}")
        module, self.firmware = self.firmware, None
        self._fota(FotaState.UPDATING, 0)
        try:
            self._recheck(module, FIRMWARE)
            outcome = run(module, self._facts(), UPDATE, self.firmware_contents)
            installed_image(module, outcome)
            outcome = run(module, self._facts(), INVOCATION, outcome.contents)
        except Refused as refused:
            self._fota(FotaState.IDLE, FOTA_RESULTS[refused.kind], f"Update refused: {refused.reason}")
            return
        _, version = firmware_identity(module)
        objects.set("/3/0/3", version)
        self.firmware_contents = outcome.contents
        self.trust.sequence[FIRMWARE] = module.sequence_number
        self.trust.manifests[FIRMWARE] = module.manifest_digest
        self.reboot_requested = True
        self._fota(FotaState.IDLE, 1, f"firmware {version} installed, rebooting")

    def _fota_cancel(self, objects: DeviceAccess, path: LwM2MPath, arguments: str) -> None:
        state = int(objects.get("/5/0/3") or 0)
        if state not in (FotaState.DOWNLOADING, FotaState.DOWNLOADED):
            raise ExecuteRefused("4.05", f"nothing to cancel in State {state}")
        self._stop_fetch((FIRMWARE, 0))
        self.firmware = None
        self._fota(FotaState.IDLE, 10, "cancelled")

    # -- pull downloads (driven by the adapter) -----------------------------------------------

    def _start_fetch(self, key: tuple[str, int], uri: str, limit: int) -> BlockDownload:
        download = self.partial.pop(uri, None) or BlockDownload(uri, self.block_exp)
        download.limit = limit
        self.fetches[key] = download
        return download

    def _stop_fetch(self, key: tuple[str, int]) -> None:
        download = self.fetches.pop(key, None)
        if download is not None and download.data and not download.complete:
            self.partial[download.uri] = download

    def fetch_done(self, key: tuple[str, int], download: BlockDownload) -> None:
        """The adapter fetched ``download`` completely: verify and deliver it."""
        if self.fetches.get(key) is not download:
            return  # superseded by another write meanwhile
        del self.fetches[key]
        data = bytes(download.data)
        if key[0] == SOFTWARE:
            self._deliver_software(key[1], data)
        else:
            self._deliver_firmware(data)

    def fetch_failed(self, key: tuple[str, int], download: BlockDownload, error: DownloadError) -> None:
        """The adapter gave up on ``download``; bytes received are kept for a resume."""
        if self.fetches.get(key) is not download:
            return
        self._stop_fetch(key)
        if error.kind == "storage":
            self.partial.pop(download.uri, None)
        if key[0] == SOFTWARE:
            self._sota(key[1], SotaState.INITIAL, SOTA_RESULTS[error.kind], error.reason)
        else:
            self._fota(FotaState.IDLE, FOTA_RESULTS[error.kind], error.reason)


def firmware_identity(module: VerifiedModule) -> tuple[str, str]:
    """(package name, version) of a firmware envelope: from the model metadata, else from
    the component name and version of its suit-text; :class:`Refused` when it has neither."""
    meta = module.metadata
    if meta is not None:
        return meta.name, meta.version
    text = module.envelope.manifest.text
    if isinstance(text, dict):
        for language in text.values():
            for labels in language.components.values():
                version = labels.get(6)
                if version:
                    return str(labels.get(5) or labels.get(1) or "firmware"), str(version)
    raise Refused("unsupported", "the manifest names no firmware version (no model metadata, no suit-text)")
