"""A simulated device's object tree: its values, hooks, sensors, model runtime and updates.

Sans-I/O: :meth:`DeviceObjects.handle` (from :mod:`simulators.management`) takes
one decoded CoAP request and returns a :class:`Response`; :meth:`DeviceObjects.step`
moves the sensors at a time passed in. Software and firmware updates
(:mod:`simulators.updates`) and inference (:mod:`simulators.inference`) run as
hooks on the tree. The CoAP adapter (:mod:`simulators.client`) moves the bytes,
runs the observations and fetches pull downloads.
"""

from __future__ import annotations

import random
import time
import zlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence
from uuid import UUID

import structlog

from ipso_objects import (
    LwM2MPath, ModelError, ObjectRegistry, ObjLnk, ResourceType, TINYML_OBJECT_ID,
)
from ipso_objects.codecs.link_format import Link, LinkParam, NotificationAttributes
from ipso_objects.values import EPOCH, Value, coerce
from lwm2m_server.suit import PublicKey, make_vendor_id

from .inference import InferenceService
from .management import (
    DeviceManagement, ExecuteHook, ExecuteRefused, Response, WriteHook, _Fail, _version_tuple,
    as_path, supported_formats,
)
from .profiles import DELIVERY_METHODS, POWER_SOURCES, SENSORS, DeviceProfile, builtin_profiles
from .runtime import ACCELERATED, ModelRuntime
from .runtime_ethosu import EthosUModel
from .updates import DeviceTrust, UpdateManager, load_anchors

__all__ = ["DeviceObjects", "ExecuteHook", "ExecuteRefused", "MISSING", "Response", "WriteHook",
           "supported_formats"]

log = structlog.get_logger(__name__)

TML = TINYML_OBJECT_ID
ACCELERATED.setdefault("ethos-u", EthosUModel)  # modules Vela compiled for an Ethos-U NPU
_DEFAULTS: dict[ResourceType, Value] = {
    ResourceType.STRING: "", ResourceType.CORELNK: "", ResourceType.INTEGER: 0,
    ResourceType.UNSIGNED_INTEGER: 0, ResourceType.FLOAT: 0.0, ResourceType.BOOLEAN: False,
    ResourceType.OPAQUE: b"", ResourceType.TIME: EPOCH, ResourceType.OBJLNK: ObjLnk(65535, 65535),
}
MISSING = object()
"""What :meth:`DeviceObjects.observed_value` returns for a path that no longer exists."""

# (object, value resources, units, centre, step deviation, low, high)
_SENSOR_MODELS: dict[int, tuple[tuple[int, ...], str, tuple[float, ...], float, float, float]] = {
    3303: ((5700,), "Cel", (22.0,), 0.2, -40.0, 85.0),
    3304: ((5700,), "%RH", (45.0,), 0.5, 0.0, 100.0),
    3313: ((5702, 5703, 5704), "m/s2", (0.0, 0.0, 9.81), 0.05, -39.2, 39.2),
    3300: ((5700,), "mm/s", (1.5,), 0.1, 0.0, 50.0),
}


class DeviceObjects(DeviceManagement):
    """Instances and values of one device's objects, and its answers to requests."""

    def __init__(
        self,
        registry: ObjectRegistry | None = None,
        profile: DeviceProfile | None = None,
        *,
        endpoint: str = "sim-0001",
        server_uri: str = "coap://127.0.0.1:5683",
        seed: int | None = None,
        now: float | None = None,
        trust_anchors: Sequence[PublicKey | str | Path | bytes] = (),
        vendor_id: UUID | None = None,
    ) -> None:
        self.registry = registry or ObjectRegistry.default()
        self.profile = profile or builtin_profiles()["cortex-m4f"]
        self.endpoint = endpoint
        self.lwm2m_version = self.profile.lwm2m_version
        self.content_formats = supported_formats(self.lwm2m_version)
        """Formats this device reads and writes."""
        self.composite_formats = tuple(f for f in self.content_formats if f in (110, 112, 11544))
        self.seed = zlib.crc32(endpoint.encode()) if seed is None else seed
        """Seed of the sensors' random walk and of the synthetic inference inputs."""
        self.rng = random.Random(self.seed)
        self.now = time.time() if now is None else now
        """Unix time of the last :meth:`step` or request (the device's clock)."""
        self.attributes: dict[LwM2MPath, NotificationAttributes] = {}
        """Notification attributes by path, as written by Write-Attributes."""
        self.attributes_version = 0
        """Increases on every change to :attr:`attributes`."""
        self.execute_counts: Counter[LwM2MPath] = Counter()
        """Successful Executes by resource path."""
        self.reboots = 0
        """Times :meth:`power_cycle` ran."""
        self._tree: dict[int, dict[int, dict[int, Any]]] = {}
        self._changed: set[LwM2MPath] = set()
        self._execute_hooks: dict[tuple[int, int], ExecuteHook] = {}
        self._write_hooks: dict[tuple[int, int], WriteHook] = {}
        self._sensor_centres: dict[tuple[int, int, int], float] = {}
        self._clock_offset = 0.0
        self._build(server_uri)
        tinyml = self.profile.tinyml
        self.runtime = ModelRuntime(tinyml.runtime, tinyml.arena_budget, fail_activation=tinyml.fail_activation,
                                    accelerators=tinyml.accelerators)
        """The ML runtime: active and previous model, interpreters."""
        self.inference = InferenceService(self, self.runtime, seed=self.seed, now=self.now)
        """Run Inference, Inference Period, Reset Statistics and the results (26241/10–20)."""
        if vendor_id is None:
            vendor_id = make_vendor_id(self.profile.vendor_domain) if self.profile.vendor_domain else None
        trust = DeviceTrust(load_anchors([*self.profile.trust_anchors, *trust_anchors]))
        if vendor_id is not None:
            trust.vendor_id = vendor_id
        self.updates = UpdateManager(self, self.runtime, self.inference, trust,
                                     block_size=self.profile.download_block_size)
        """Software Management (/9) and Firmware Update (/5) state machines."""
        self.set_execute_hook(3, 4, lambda o, p, a: log.info("reboot", ep=o.endpoint))
        self.set_execute_hook(3, 5, lambda o, p, a: log.info("factory_reset", ep=o.endpoint))
        self.set_execute_hook(TML, 18, self.inference.execute_run)
        self.set_execute_hook(TML, 20, self.inference.execute_reset)
        self.set_write_hook(TML, 19, self.inference.period_written)
        self.set_write_hook(3, 13, _write_current_time)
        for object_id in _SENSOR_MODELS:
            self.set_execute_hook(object_id, 5605, _reset_min_max)


    # -- building ---------------------------------------------------------------------------

    def _build(self, server_uri: str) -> None:
        p = self.profile
        queue = "UQ" if p.queue_mode and self.lwm2m_version == "1.0" else p.binding
        self._tree[0] = {0: {0: server_uri, 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: p.short_server_id}}
        server = {0: p.short_server_id, 1: p.lifetime, 6: False, 7: queue, 8: None}
        if p.default_pmin is not None:
            server[2] = p.default_pmin
        if p.default_pmax is not None:
            server[3] = p.default_pmax
        self._tree[1] = {0: server}
        sources = p.power_sources
        device = {
            0: p.manufacturer, 1: p.model, 2: f"SN{zlib.crc32(self.endpoint.encode()):08X}",
            3: p.firmware_version, 4: None, 5: None,
            6: {i: POWER_SOURCES[s.kind] for i, s in enumerate(sources)},
            7: {i: s.voltage_mv for i, s in enumerate(sources)},
            8: {i: s.current_ma for i, s in enumerate(sources)},
            10: p.flash_free // 1024, 11: {0: 0}, 12: None, 13: int(self.now),
            14: "+00:00", 15: "Etc/UTC", 16: queue, 17: p.device_type, 18: p.hardware_version,
            19: p.firmware_version, 20: 0 if p.battery_level is not None else 5, 21: p.flash // 1024,
        }
        if p.battery_level is not None:
            device[9] = p.battery_level
        self._tree[3] = {0: device}
        bearer = 41 if p.device_type == "gateway" else 21
        self._tree[4] = {0: {0: bearer, 1: {0: bearer}, 2: -55 - self.rng.randint(0, 30),
                             3: 80, 4: {0: "127.0.0.1"}, 6: 5}}
        delivery = DELIVERY_METHODS[p.delivery]
        self._tree[5] = {0: {0: b"", 1: "", 2: None, 3: 0, 5: 0, 6: "", 7: "", 8: {0: 0, 1: 1}, 9: delivery, 10: None}}
        package = p.software_package
        self._tree[9] = {0: self._with_defaults(9, (
            {0: "", 1: "", 2: b"", 3: "", 7: 0, 9: 0, 12: False, 16: ""} if package is None else
            {0: package.name, 1: package.version, 2: b"", 3: "", 7: 4, 9: 2, 12: True, 16: ""}
        ))}
        t = p.tinyml
        self._tree[TML] = {0: {
            0: t.runtime, 1: t.runtime_version, 2: dict(enumerate(t.operators)), 3: t.model_ram,
            4: t.model_storage, 5: t.arena_budget, 6: t.cpu_core, 7: t.cpu_clock,
            8: dict(enumerate(t.accelerators)), 9: dict(enumerate(t.model_formats)),
            10: "", 11: "", 12: b"", 13: 0, 14: "", 15: 0.0, 16: 0, 18: None, 19: t.inference_period, 20: None,
        }}
        for rid, setting in ((22, t.accelerator_system_config), (23, t.accelerator_memory_mode),
                             (24, t.accelerator_sram)):
            if setting not in (None, ""):  # the NPU configuration (26241/22-24), where the profile has one
                self._tree[TML][0][rid] = setting
        for name in p.sensors:
            object_id = SENSORS[name]
            instances = self._tree.setdefault(object_id, {})
            self._add_sensor(object_id, len(instances))
        for object_id, instances in self._tree.items():
            for instance in instances.values():
                self._coerce_instance(object_id, instance)

    def _add_sensor(self, object_id: int, instance_id: int) -> None:
        resources, units, centres, deviation, low, high = _SENSOR_MODELS[object_id]
        instance: dict[int, Any] = {5701: units, 5603: low, 5604: high, 5605: None}
        for rid, centre in zip(resources, centres):
            centre = round(centre + self.rng.uniform(-3, 3) * deviation * 5, 2)
            self._sensor_centres[(object_id, instance_id, rid)] = centre
            instance[rid] = centre
        if object_id != 3313:
            instance.update({5601: instance[5700], 5602: instance[5700]})
        if object_id == 3300:
            instance[5751] = "vibration"
        instance[5518] = int(self.now)
        definition = self.registry.get(object_id)
        self._tree[object_id][instance_id] = {
            rid: value for rid, value in instance.items()
            if definition is None or definition.resource(rid) is not None
        }

    def _with_defaults(self, object_id: int, values: dict[int, Any]) -> dict[int, Any]:
        """``values`` plus a default for every mandatory readable resource and every
        executable resource of the object."""
        definition = self.registry.get(object_id)
        instance = dict(values)
        if definition is not None:
            for rdef in definition.resources.values():
                if rdef.id in instance:
                    continue
                if rdef.operations.executable:
                    instance[rdef.id] = None
                elif rdef.mandatory and rdef.operations.readable:
                    instance[rdef.id] = {} if rdef.multiple else _DEFAULTS.get(rdef.type, "")
        return instance

    def _coerce_instance(self, object_id: int, instance: dict[int, Any]) -> None:
        for rid, value in instance.items():
            rtype = self.registry.value_type(LwM2MPath.of(object_id, 0, rid))
            if isinstance(value, dict):
                instance[rid] = {ri: coerce(v, rtype) for ri, v in value.items()}
            elif value is not None:
                instance[rid] = coerce(value, rtype)

    # -- device-side access -----------------------------------------------------------------

    def instances(self, object_id: int) -> list[int]:
        """Instance ids of an object (empty when absent)."""
        return sorted(self._tree.get(object_id, {}))

    def objects(self) -> list[int]:
        """Ids of the objects the device implements (Security included)."""
        return sorted(self._tree)

    def get(self, path: LwM2MPath | str, default: Any = None) -> Any:
        """The value at a resource (a dict ri → value for a multiple one) or resource instance."""
        path = as_path(path)
        try:
            instance = self._tree[path.ids[0]][path.ids[1]]
            value = instance[path.ids[2]]
            if len(path) == 4:
                return value[path.ids[3]]
        except (KeyError, IndexError, TypeError):
            return default
        return dict(value) if isinstance(value, dict) else value

    def set(self, path: LwM2MPath | str, value: Any) -> None:
        """Set a resource or resource instance from the device side (no permission
        checks; a multiple resource takes a mapping or a list). Marks it changed."""
        path = as_path(path)
        if len(path) not in (3, 4):
            raise ModelError(f"{path} is not a resource or resource instance")
        instance = self._tree[path.ids[0]][path.ids[1]]
        rtype = self.registry.value_type(path)
        if len(path) == 4:
            instance.setdefault(path.ids[2], {})[path.ids[3]] = coerce(value, rtype)
        elif isinstance(value, (list, tuple)):
            instance[path.ids[2]] = {i: coerce(v, rtype) for i, v in enumerate(value)}
        elif isinstance(value, Mapping):
            instance[path.ids[2]] = {i: coerce(v, rtype) for i, v in value.items()}
        else:
            instance[path.ids[2]] = None if value is None else coerce(value, rtype)
        self._changed.add(LwM2MPath(path.ids[:3]))

    def remove(self, path: LwM2MPath | str) -> None:
        """Remove an optional resource (it then reads as 4.04)."""
        path = as_path(path)
        if self._tree.get(path.ids[0], {}).get(path.ids[1], {}).pop(path.ids[2], MISSING) is not MISSING:
            self._changed.add(path)

    def set_execute_hook(self, object_id: int, resource_id: int, hook: ExecuteHook | None) -> None:
        """Run ``hook`` when the server executes ``/object_id/*/resource_id``."""
        if hook is None:
            self._execute_hooks.pop((object_id, resource_id), None)
        else:
            self._execute_hooks[(object_id, resource_id)] = hook

    def set_write_hook(self, object_id: int, resource_id: int, hook: WriteHook | None) -> None:
        """Run ``hook`` after the server wrote ``/object_id/*/resource_id``."""
        if hook is None:
            self._write_hooks.pop((object_id, resource_id), None)
        else:
            self._write_hooks[(object_id, resource_id)] = hook

    @property
    def run_inference(self) -> ExecuteHook | None:
        """Hook of TinyML Run Inference (/26241/0/18)."""
        return self._execute_hooks.get((TML, 18))

    @run_inference.setter
    def run_inference(self, hook: ExecuteHook | None) -> None:
        self.set_execute_hook(TML, 18, hook)

    @property
    def reset_statistics(self) -> ExecuteHook | None:
        """Hook of TinyML Reset Statistics (/26241/0/20)."""
        return self._execute_hooks.get((TML, 20))

    @reset_statistics.setter
    def reset_statistics(self, hook: ExecuteHook | None) -> None:
        self.set_execute_hook(TML, 20, hook)

    def take_changed(self) -> set[LwM2MPath]:
        """Paths changed since the last call (by requests, :meth:`step` or :meth:`set`)."""
        changed, self._changed = self._changed, set()
        return changed

    def server_defaults(self) -> tuple[int | None, int | None]:
        """Default Minimum and Maximum Period of the Server object (/1/0/2, /1/0/3)."""
        return self.get("/1/0/2"), self.get("/1/0/3")

    def leaves(self, path: LwM2MPath | str) -> dict[LwM2MPath, Value]:
        """Readable leaf values under ``path`` (``/`` for all but Security)."""
        path = as_path(path)
        leaves: dict[LwM2MPath, Value] = {}
        for object_id in ([path.ids[0]] if path.ids else [o for o in sorted(self._tree) if o != 0]):
            for instance_id, instance in sorted(self._tree.get(object_id, {}).items()):
                for rid, value in sorted(instance.items()):
                    base = LwM2MPath.of(object_id, instance_id, rid)
                    if not base.startswith(path) and not path.startswith(base):
                        continue
                    if value is None or not self._readable(object_id, rid):
                        continue
                    if isinstance(value, dict):
                        for ri, item in sorted(value.items()):
                            if base.child(ri).startswith(path):
                                leaves[base.child(ri)] = item
                    else:
                        leaves[base] = value
        return leaves

    def observed_value(self, path: LwM2MPath | str) -> Any:
        """What an observation of ``path`` compares: the value of a single resource
        or resource instance, the readable leaves otherwise, :data:`MISSING` when gone."""
        path = as_path(path)
        try:
            self._check(path)
        except _Fail:
            return MISSING
        rdef = self._rdef(path)
        if len(path) == 4 or (len(path) == 3 and rdef is not None and not rdef.multiple):
            return self.get(path)
        return self.leaves(path)

    def registration_links(self) -> list[Link]:
        """The Register/Update payload: root link, then objects and instances (ver for 1.1+)."""
        root = [LinkParam("rt", "oma.lwm2m")]
        if _version_tuple(self.lwm2m_version) >= (1, 1):
            formats = sorted(f for f in self.content_formats if f not in (0, 42))
            root.append(LinkParam("ct", " ".join(str(f) for f in formats), quoted=True))
        links = [Link("/", tuple(root))]
        for object_id in sorted(self._tree):
            if object_id == 0:
                continue
            definition = self.registry.get(object_id)
            version = definition.version if definition is not None else "1.0"
            instances = sorted(self._tree[object_id])
            with_version = version != "1.0" and _version_tuple(self.lwm2m_version) >= (1, 1)
            if with_version or not instances:
                params = (LinkParam("ver", version),) if with_version else ()
                links.append(Link(f"/{object_id}", params))
            links.extend(Link(f"/{object_id}/{iid}") for iid in instances)
        return links

    # -- sensors ----------------------------------------------------------------------------

    def step(self, now: float) -> set[LwM2MPath]:
        """Advance to ``now`` (Unix seconds): random-walk every sensor, tick the clock,
        run inferences due by Inference Period. Returns the changed paths."""
        self.now = now
        earlier, self._changed = self._changed, set()
        for (object_id, instance_id, rid), centre in self._sensor_centres.items():
            instance = self._tree.get(object_id, {}).get(instance_id)
            if instance is None or rid not in instance:
                continue
            _, _, _, deviation, low, high = _SENSOR_MODELS[object_id]
            value = instance[rid] + self.rng.gauss(0.0, deviation) + 0.05 * (centre - instance[rid])
            value = round(min(high, max(low, value)), 2)
            if value == instance[rid]:
                continue
            self.set(LwM2MPath.of(object_id, instance_id, rid), value)
            if rid == 5700 and 5601 in instance and value < instance[5601]:
                self.set(LwM2MPath.of(object_id, instance_id, 5601), value)
            if rid == 5700 and 5602 in instance and value > instance[5602]:
                self.set(LwM2MPath.of(object_id, instance_id, 5602), value)
            if 5518 in instance:
                self.set(LwM2MPath.of(object_id, instance_id, 5518), int(now))
        clock = int(now + self._clock_offset)
        if 13 in self._tree[3][0] and self.get("/3/0/13") != coerce(clock, ResourceType.TIME):
            self.set("/3/0/13", clock)
        self.inference.tick(now)
        changed = self._changed
        self._changed = earlier | changed
        return set(changed)

    def sensor_features(self) -> list[float]:
        """Every sensor value, centred on its resting value and scaled to about ±1
        (the features synthetic inference inputs are made from), in a fixed order."""
        features = []
        for (object_id, instance_id, rid), centre in sorted(self._sensor_centres.items()):
            value = self._tree.get(object_id, {}).get(instance_id, {}).get(rid)
            if isinstance(value, (int, float)):
                deviation = _SENSOR_MODELS[object_id][3]
                features.append((float(value) - centre) / (5.0 * deviation))
        return features

    def power_cycle(self, now: float | None = None) -> None:
        """A reboot as the objects see it: interpreters (RAM) are lost and the active
        model is loaded again from flash; values, installed modules and partial
        downloads stay."""
        if now is not None:
            self.now = now
        self.reboots += 1
        self.updates.reboot_requested = False
        self.runtime.power_cycle()
        self.inference.show_active()
        log.info("power_cycle", ep=self.endpoint, reboots=self.reboots)

    def _forget_instance(self, path: LwM2MPath) -> None:
        self._sensor_centres = {k: v for k, v in self._sensor_centres.items() if k[:2] != path.ids}
        if path.ids[0] == 9:
            self.updates.packages.pop(path.ids[1], None)


# -- default hooks ------------------------------------------------------------------------------


def _reset_min_max(objects: DeviceObjects, path: LwM2MPath, arguments: str) -> None:
    base = LwM2MPath.of(path.ids[0], path.ids[1])
    current = objects.get(base.child(5700))
    if current is not None and objects.get(base.child(5601)) is not None:
        objects.set(base.child(5601), current)
        objects.set(base.child(5602), current)


def _write_current_time(objects: DeviceObjects, path: LwM2MPath, value: datetime) -> None:
    objects._clock_offset = (value - datetime.fromtimestamp(objects.now, timezone.utc)).total_seconds()
