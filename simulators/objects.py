"""A simulated device's object tree and its side of the Device Management interface.

Sans-I/O: :meth:`DeviceObjects.handle` takes one decoded CoAP request (method,
path segments, query, formats, payload) and returns a :class:`Response`;
:meth:`DeviceObjects.step` moves the sensors at a time passed in. The CoAP
adapter (:mod:`simulators.client`) moves the bytes and runs the observations.

Operations (LwM2M Core 1.1 §6.3/§6.4, as a client answers them)::

    GET  /o[/i[/r[/ri]]]         Read (Accept picks the format, 4.06 if unsupported)
    GET  + Accept 40             Discover (link format with dim and attributes)
    PUT  /o/i[/r[/ri]] + body    Write, replace
    PUT  + query, no body        Write-Attributes
    POST /o/i[/r] + body         Write, partial update (a multiple resource at /o/i/r)
    POST /o/i/r (E resource)     Execute (arguments in the body)
    POST /o + body               Create → 2.01, Location-Path o/i
    DELETE /o/i                  Delete → 2.02
    FETCH /  + path list         Read-Composite (LwM2M 1.1+)
    iPATCH / + values            Write-Composite (LwM2M 1.1+)

The Security object (0) exists but, as for any Device Management server, is
invisible: every operation on it answers 4.04, and Register does not list it.
"""

from __future__ import annotations

import random
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import structlog

from ipso_objects import (
    DecodeError, EncodeError, IpsoError, LwM2MPath, ModelError, MultiResource, Object,
    ObjectInstance, ObjectRegistry, ObjLnk, PathError, Resource, ResourceDef,
    ResourceInstance, ResourceType, TINYML_OBJECT_ID, UnsupportedFormatError, codecs,
)
from ipso_objects.codecs import ContentFormat, link_format
from ipso_objects.codecs.link_format import Link, LinkParam, NotificationAttributes
from ipso_objects.values import EPOCH, Value, coerce

from .profiles import POWER_SOURCES, SENSORS, DeviceProfile, builtin_profiles

log = structlog.get_logger(__name__)

TML = TINYML_OBJECT_ID
_NUMERIC = (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.FLOAT)
_RANGE = re.compile(r"\s*(-?[0-9]+(?:\.[0-9]+)?)\s*\.\.\s*(-?[0-9]+(?:\.[0-9]+)?)\s*")
_EXECUTE_ARGS = re.compile(r"[0-9](='[\x21\x23-\x26\x28-\x7e]*')?(,[0-9](='[\x21\x23-\x26\x28-\x7e]*')?)*")
_DEFAULTS: dict[ResourceType, Value] = {
    ResourceType.STRING: "", ResourceType.CORELNK: "", ResourceType.INTEGER: 0,
    ResourceType.UNSIGNED_INTEGER: 0, ResourceType.FLOAT: 0.0, ResourceType.BOOLEAN: False,
    ResourceType.OPAQUE: b"", ResourceType.TIME: EPOCH, ResourceType.OBJLNK: ObjLnk(65535, 65535),
}
MISSING = object()
"""What :meth:`DeviceObjects.observed_value` returns for a path that no longer exists."""


@dataclass(frozen=True, slots=True)
class Response:
    """What the device answers to one request."""

    code: str
    """CoAP response code in dotted form, e.g. ``"2.05"``."""
    content_format: int | None = None
    """Content-Format of ``payload``; None for none (errors carry a diagnostic text)."""
    payload: bytes = b""
    """Body, or the diagnostic message of an error."""
    location_path: tuple[str, ...] = ()
    """Location-Path segments of a 2.01 Created."""

    @property
    def ok(self) -> bool:
        """True for a 2.xx code."""
        return self.code.startswith("2.")


class ExecuteRefused(Exception):
    """Raised by an execute hook to answer with ``code`` (e.g. ``"4.05"``) instead of 2.04."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class _Fail(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


ExecuteHook = Callable[["DeviceObjects", LwM2MPath, str], None]
"""``hook(objects, path, arguments)``; raise :class:`ExecuteRefused` to refuse."""
WriteHook = Callable[["DeviceObjects", LwM2MPath, Any], None]
"""``hook(objects, resource_path, new_value)`` after a server wrote the resource."""

# (object, value resources, units, centre, step deviation, low, high)
_SENSOR_MODELS: dict[int, tuple[tuple[int, ...], str, tuple[float, ...], float, float, float]] = {
    3303: ((5700,), "Cel", (22.0,), 0.2, -40.0, 85.0),
    3304: ((5700,), "%RH", (45.0,), 0.5, 0.0, 100.0),
    3313: ((5702, 5703, 5704), "m/s2", (0.0, 0.0, 9.81), 0.05, -39.2, 39.2),
    3300: ((5700,), "mm/s", (1.5,), 0.1, 0.0, 50.0),
}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def supported_formats(lwm2m_version: str) -> tuple[int, ...]:
    """Content formats a client of this enabler version reads and writes."""
    formats = [ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.TLV]
    if _version_tuple(lwm2m_version) < (1, 1):
        formats.append(ContentFormat.OMA_JSON)  # the 1.0 JSON format; 1.1 made it legacy
    else:
        formats += [ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR]
    if _version_tuple(lwm2m_version) >= (1, 2):
        formats.append(ContentFormat.LWM2M_CBOR)
    return tuple(int(f) for f in formats)


class DeviceObjects:
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
    ) -> None:
        self.registry = registry or ObjectRegistry.default()
        self.profile = profile or builtin_profiles()["cortex-m4f"]
        self.endpoint = endpoint
        self.lwm2m_version = self.profile.lwm2m_version
        self.content_formats = supported_formats(self.lwm2m_version)
        """Formats this device reads and writes."""
        self.composite_formats = tuple(f for f in self.content_formats if f in (110, 112, 11544))
        self.rng = random.Random(zlib.crc32(endpoint.encode()) if seed is None else seed)
        self.now = time.time() if now is None else now
        """Unix time of the last :meth:`step` or request (the device's clock)."""
        self.attributes: dict[LwM2MPath, NotificationAttributes] = {}
        """Notification attributes by path, as written by Write-Attributes."""
        self.attributes_version = 0
        """Increases on every change to :attr:`attributes`."""
        self.execute_counts: Counter[LwM2MPath] = Counter()
        """Successful Executes by resource path."""
        self._tree: dict[int, dict[int, dict[int, Any]]] = {}
        self._changed: set[LwM2MPath] = set()
        self._execute_hooks: dict[tuple[int, int], ExecuteHook] = {}
        self._write_hooks: dict[tuple[int, int], WriteHook] = {}
        self._sensor_centres: dict[tuple[int, int, int], float] = {}
        self._clock_offset = 0.0
        self._last_auto_inference = self.now
        self._build(server_uri)
        self.set_execute_hook(3, 4, lambda o, p, a: log.info("reboot", ep=o.endpoint))
        self.set_execute_hook(3, 5, lambda o, p, a: log.info("factory_reset", ep=o.endpoint))
        self.set_execute_hook(TML, 18, default_run_inference)
        self.set_execute_hook(TML, 20, default_reset_statistics)
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
        self._tree[5] = {0: {0: b"", 1: "", 2: None, 3: 0, 5: 0, 6: "", 7: "", 8: {0: 0}, 9: 2}}
        self._tree[9] = {}
        if p.software_package is not None:
            self._tree[9][0] = self._with_defaults(9, {
                0: p.software_package.name, 1: p.software_package.version, 7: 4, 9: 2, 12: True,
            })
        t = p.tinyml
        self._tree[TML] = {0: {
            0: t.runtime, 1: t.runtime_version, 2: dict(enumerate(t.operators)), 3: t.model_ram,
            4: t.model_storage, 5: t.arena_budget, 6: t.cpu_core, 7: t.cpu_clock,
            8: dict(enumerate(t.accelerators)), 9: dict(enumerate(t.model_formats)),
            10: "", 11: "", 12: b"", 13: 0, 14: "", 15: 0.0, 16: 0, 18: None, 19: 0, 20: None,
        }}
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
        path = _as_path(path)
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
        path = _as_path(path)
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
        path = _as_path(path)
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
        path = _as_path(path)
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
        path = _as_path(path)
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
        period = self.get(f"/{TML}/0/19") or 0
        hook = self.run_inference
        if period > 0 and hook is not None and now - self._last_auto_inference >= period:
            self._last_auto_inference = now
            try:
                hook(self, LwM2MPath.of(TML, 0, 18), "")
            except ExecuteRefused:
                pass
        changed = self._changed
        self._changed = earlier | changed
        return set(changed)

    # -- the Device Management interface ---------------------------------------------------

    def handle(
        self,
        method: str,
        uri_path: Sequence[str],
        query: Sequence[str] = (),
        content_format: int | None = None,
        accept: int | None = None,
        payload: bytes = b"",
        observe: int | None = None,
        *,
        now: float | None = None,
    ) -> Response:
        """Answer one request. ``observe`` is accepted for completeness: an Observe
        is answered like the Read (or Read-Composite) it starts; the caller keeps the
        observation."""
        if now is not None:
            self.now = now
        try:
            path = LwM2MPath.parse("/" + "/".join(segment for segment in uri_path if segment))
        except PathError as error:
            return Response("4.04", None, error.reason.encode())
        payload = bytes(payload or b"")
        try:
            method = method.upper()
            if method == "GET":
                if accept == ContentFormat.LINK:
                    return self._discover(path)
                return self._read(path, accept)
            if method == "FETCH":
                return self._read_composite(path, content_format, accept, payload)
            if method == "IPATCH":
                return self._write_composite(path, content_format, payload)
            if method == "PUT":
                if query and not payload and content_format is None:
                    return self._write_attributes(path, query)
                return self._write(path, content_format, payload, replace=True)
            if method == "POST":
                if len(path) == 1:
                    return self._create(path, content_format, payload)
                rdef = self._rdef(path)
                if len(path) == 3 and rdef is not None and rdef.operations.executable:
                    return self._execute(path, payload)
                if len(path) >= 3 and (len(path) == 4 or rdef is None or not rdef.multiple):
                    self._check(path)
                    raise _Fail("4.05", f"{path} is not executable")
                return self._write(path, content_format, payload, replace=False)
            if method == "DELETE":
                return self._delete(path)
            raise _Fail("4.05", f"{method} is not an LwM2M device management method")
        except _Fail as failure:
            return Response(failure.code, None, failure.reason.encode())

    # -- helpers ------------------------------------------------------------------------------

    def _rdef(self, path: LwM2MPath) -> ResourceDef | None:
        return self.registry.resource_def(path) if len(path) >= 3 else None

    def _readable(self, object_id: int, resource_id: int) -> bool:
        rdef = self.registry.resource_def(LwM2MPath.of(object_id, 0, resource_id))
        return rdef is not None and rdef.operations.readable

    def _check(self, path: LwM2MPath) -> None:
        """Raise 4.04 unless ``path`` exists (the Security object never does)."""
        if path.is_root:
            return
        object_id = path.ids[0]
        if object_id == 0 or object_id not in self._tree:
            raise _Fail("4.04", f"object {object_id} is not implemented")
        if len(path) >= 2 and path.ids[1] not in self._tree[object_id]:
            raise _Fail("4.04", f"{path.parent if len(path) > 2 else path} does not exist")
        if len(path) >= 3:
            instance = self._tree[object_id][path.ids[1]]
            if path.ids[2] not in instance:
                raise _Fail("4.04", f"{LwM2MPath(path.ids[:3])} does not exist")
            if len(path) == 4:
                value = instance[path.ids[2]]
                if not isinstance(value, dict) or path.ids[3] not in value:
                    raise _Fail("4.04", f"{path} does not exist")

    def _node(self, path: LwM2MPath):
        object_id = path.ids[0]

        def resource(iid: int, rid: int):
            value = self._tree[object_id][iid][rid]
            return MultiResource(rid, dict(value)) if isinstance(value, dict) else Resource(rid, value)

        def instance(iid: int) -> ObjectInstance:
            resources = self._tree[object_id][iid]
            return ObjectInstance(iid, {
                rid: resource(iid, rid) for rid in sorted(resources)
                if resources[rid] is not None and self._readable(object_id, rid)
            })

        if len(path) == 1:
            return Object(object_id, {iid: instance(iid) for iid in sorted(self._tree[object_id])})
        if len(path) == 2:
            return instance(path.ids[1])
        if len(path) == 3:
            return resource(path.ids[1], path.ids[2])
        return ResourceInstance(path.ids[3], self._tree[object_id][path.ids[1]][path.ids[2]][path.ids[3]])

    def _encode(self, content_format: int, node: Any, path: LwM2MPath) -> bytes:
        try:
            return codecs.encode(content_format, node, path, self.registry)
        except (EncodeError, UnsupportedFormatError, ImportError) as error:
            raise _Fail("4.06", f"cannot represent {path} as content format {content_format}: "
                                f"{getattr(error, 'reason', error)}") from None

    def _decode(self, content_format: int, payload: bytes, path: LwM2MPath):
        try:
            return codecs.decode(content_format, payload, path, self.registry)
        except (UnsupportedFormatError, ImportError) as error:
            raise _Fail("4.15", f"content format {content_format}: {getattr(error, 'reason', error)}") from None
        except IpsoError as error:
            raise _Fail("4.00", error.reason) from None

    def _single_value(self, path: LwM2MPath, rdef: ResourceDef | None) -> bool:
        return len(path) == 4 or (len(path) == 3 and rdef is not None and not rdef.multiple)

    def _value(self, path: LwM2MPath, rdef: ResourceDef, value: Any) -> Value:
        """A written value checked against the model: type (coerced) and numeric range."""
        try:
            value = coerce(value, rdef.type)
        except ModelError as error:
            raise _Fail("4.00", f"{path}: {error.reason}") from None
        found = _RANGE.fullmatch(rdef.range_enumeration) if rdef.type in _NUMERIC else None
        if found and not float(found.group(1)) <= value <= float(found.group(2)):  # type: ignore[operator]
            raise _Fail("4.00", f"{path}: {value} is outside {rdef.range_enumeration}")
        return value

    # -- Read, Discover -----------------------------------------------------------------------

    def _read(self, path: LwM2MPath, accept: int | None) -> Response:
        if path.is_root:
            raise _Fail("4.05", "Read on / is not allowed; use Read-Composite")
        self._check(path)
        rdef = self._rdef(path)
        if rdef is not None and not rdef.operations.readable:
            raise _Fail("4.05", f"{path} is not readable")
        if accept is not None:
            if accept not in self.content_formats:
                raise _Fail("4.06", f"content format {accept} is not supported")
            content_format = accept
        elif self._single_value(path, rdef):
            opaque = rdef is not None and rdef.type is ResourceType.OPAQUE
            content_format = 42 if opaque and _version_tuple(self.lwm2m_version) >= (1, 1) else 0
        else:
            content_format = 112 if _version_tuple(self.lwm2m_version) >= (1, 1) else 11542
        return Response("2.05", content_format, self._encode(content_format, self._node(path), path))

    def _merged_attributes(self, path: LwM2MPath) -> NotificationAttributes:
        merged = NotificationAttributes()
        for depth in range(1, len(path) + 1):
            assigned = self.attributes.get(LwM2MPath(path.ids[:depth]))
            if assigned is not None:
                merged = merged.updated_with(assigned)
        return merged

    def _discover(self, path: LwM2MPath) -> Response:
        if path.is_root:
            raise _Fail("4.05", "Discover on / is a Bootstrap-Discover")
        self._check(path)

        def link(target: LwM2MPath, attributes: NotificationAttributes | None) -> Link:
            params: list[LinkParam] = []
            if len(target) == 3:
                value = self._tree[target.ids[0]][target.ids[1]][target.ids[2]]
                if isinstance(value, dict):
                    params.append(LinkParam("dim", str(len(value))))
            if attributes is not None:
                params.extend(attributes.to_params())
            return Link(str(target), tuple(params))

        def resources(instance_path: LwM2MPath) -> list[Link]:
            instance = self._tree[instance_path.ids[0]][instance_path.ids[1]]
            return [link(instance_path.child(rid), self.attributes.get(instance_path.child(rid)))
                    for rid in sorted(instance)]

        links: list[Link] = []
        if len(path) == 1:
            links.append(link(path, self.attributes.get(path)))
            for iid in sorted(self._tree[path.ids[0]]):
                links.append(link(path.child(iid), self.attributes.get(path.child(iid))))
                links.extend(resources(path.child(iid)))
        elif len(path) == 2:
            links.append(link(path, self.attributes.get(path)))
            links.extend(resources(path))
        else:
            links.append(link(path, self._merged_attributes(path)))
        return Response("2.05", int(ContentFormat.LINK), link_format.encode(links))

    def _read_composite(self, path: LwM2MPath, content_format: int | None, accept: int | None,
                        payload: bytes) -> Response:
        self._composite_allowed(path, content_format)
        try:
            paths = codecs.decode_paths(content_format, payload)  # type: ignore[arg-type]
        except (UnsupportedFormatError, ImportError) as error:
            raise _Fail("4.15", str(error)) from None
        except IpsoError as error:
            raise _Fail("4.00", error.reason) from None
        out_format = content_format if accept is None else accept
        if out_format not in self.composite_formats:
            raise _Fail("4.06", f"content format {out_format} cannot carry a composite")
        values: dict[LwM2MPath, Value] = {}
        found = False
        for requested in paths:
            try:
                self._check(requested)
            except _Fail:
                continue
            found = True
            values.update(self.leaves(requested))
        if not found:
            raise _Fail("4.04", "none of the requested paths exists")
        try:
            body = codecs.encode_composite(out_format, values, self.registry)
        except (IpsoError, ImportError) as error:
            raise _Fail("4.06", str(error)) from None
        return Response("2.05", out_format, body)

    def _composite_allowed(self, path: LwM2MPath, content_format: int | None) -> None:
        if _version_tuple(self.lwm2m_version) < (1, 1):
            raise _Fail("4.05", "composite operations need LwM2M 1.1")
        if not path.is_root:
            raise _Fail("4.05", "composite operations target /")
        if content_format is None:
            raise _Fail("4.00", "a composite request needs a Content-Format")
        if content_format not in self.composite_formats:
            raise _Fail("4.15", f"content format {content_format} cannot carry a composite")

    # -- Write, Write-Composite, Write-Attributes -------------------------------------------

    def _write(self, path: LwM2MPath, content_format: int | None, payload: bytes, *, replace: bool) -> Response:
        if len(path) < 2:
            raise _Fail("4.05", f"Write on {path} is not allowed")
        self._check(LwM2MPath(path.ids[:2]))
        rdef = self._rdef(path)
        if len(path) >= 3:
            if rdef is None:
                raise _Fail("4.04", f"{LwM2MPath(path.ids[:3])} is not defined")
            if not rdef.operations.writable:
                raise _Fail("4.05", f"{LwM2MPath(path.ids[:3])} is not writable")
            if len(path) == 4 and not rdef.multiple:
                raise _Fail("4.04", f"{path.parent} has no resource instances")
        if content_format is None:
            if not self._single_value(path, rdef):
                raise _Fail("4.00", "a Write needs a Content-Format")
            content_format = ContentFormat.TEXT
        if content_format not in self.content_formats:
            raise _Fail("4.15", f"content format {content_format} is not supported")
        node = self._decode(content_format, payload, path)
        object_id, instance_id = path.ids[0], path.ids[1]
        base = LwM2MPath.of(object_id, instance_id)
        plan: list[tuple[int, Any, bool]] = []  # (resource id, value or {ri: value}, merge)
        if isinstance(node, ObjectInstance):
            resources = list(node.resources.values())
        elif isinstance(node, (Resource, MultiResource)):
            resources = [node]
        elif isinstance(node, ResourceInstance):
            resources = [MultiResource(path.ids[2], {node.id: node.value})]
        else:
            raise _Fail("4.00", f"a {type(node).__name__} cannot be written to {path}")
        for item in resources:
            target = base.child(item.id)
            definition = self._rdef(target)
            if definition is None:
                raise _Fail("4.04", f"{target} is not defined")
            if not definition.operations.writable:
                raise _Fail("4.05", f"{target} is not writable")
            if isinstance(item, MultiResource) != definition.multiple:
                kind = "multiple" if definition.multiple else "single"
                raise _Fail("4.00", f"{target} is a {kind}-instance resource")
            if isinstance(item, MultiResource):
                values = {ri: self._value(target.child(ri), definition, v) for ri, v in item.instances.items()}
                merge = not replace or len(path) == 4
                plan.append((item.id, values, merge))
            else:
                plan.append((item.id, self._value(target, definition, item.value), False))
        instance = self._tree[object_id][instance_id]
        for rid, value, merge in plan:
            if merge and isinstance(instance.get(rid), dict):
                instance[rid].update(value)
            else:
                instance[rid] = value
            self._changed.add(base.child(rid))
        self._run_write_hooks(base, [rid for rid, _, _ in plan])
        return Response("2.04")

    def _run_write_hooks(self, base: LwM2MPath, resource_ids: Sequence[int]) -> None:
        for rid in resource_ids:
            hook = self._write_hooks.get((base.ids[0], rid))
            if hook is not None:
                hook(self, base.child(rid), self.get(base.child(rid)))

    def _write_composite(self, path: LwM2MPath, content_format: int | None, payload: bytes) -> Response:
        self._composite_allowed(path, content_format)
        try:
            values = codecs.decode_composite(content_format, payload, self.registry)  # type: ignore[arg-type]
        except (UnsupportedFormatError, ImportError) as error:
            raise _Fail("4.15", str(error)) from None
        except IpsoError as error:
            raise _Fail("4.00", error.reason) from None
        plan = []
        for leaf, value in values.items():
            if len(leaf) < 3:
                raise _Fail("4.00", f"{leaf} is not a resource")
            self._check(LwM2MPath(leaf.ids[:2]))
            rdef = self._rdef(leaf)
            if rdef is None:
                raise _Fail("4.04", f"{leaf} is not defined")
            if not rdef.operations.writable:
                raise _Fail("4.05", f"{leaf} is not writable")
            if (len(leaf) == 4) != rdef.multiple:
                raise _Fail("4.00", f"{leaf}: wrong multiplicity for this resource")
            plan.append((leaf, self._value(leaf, rdef, value)))
        for leaf, value in plan:
            instance = self._tree[leaf.ids[0]][leaf.ids[1]]
            if len(leaf) == 4:
                current = instance.get(leaf.ids[2])
                instance[leaf.ids[2]] = current if isinstance(current, dict) else {}
                instance[leaf.ids[2]][leaf.ids[3]] = value
            else:
                instance[leaf.ids[2]] = value
            self._changed.add(LwM2MPath(leaf.ids[:3]))
        for leaf, _ in plan:
            self._run_write_hooks(LwM2MPath(leaf.ids[:2]), [leaf.ids[2]])
        return Response("2.04")

    def _write_attributes(self, path: LwM2MPath, query: Sequence[str]) -> Response:
        if path.is_root:
            raise _Fail("4.05", "Write-Attributes on / is not allowed")
        self._check(path)
        try:
            changes = NotificationAttributes.from_query(list(query))
        except DecodeError as error:
            raise _Fail("4.00", error.reason) from None
        for name in ("gt", "lt", "st"):
            value = getattr(changes, name)
            if value is None or value is link_format.UNSET:
                continue
            rdef = self._rdef(path)
            if rdef is None or rdef.type not in _NUMERIC:
                raise _Fail("4.00", f"{name} applies to numeric resources only, not {path}")
        try:
            merged = self.attributes.get(path, NotificationAttributes()).updated_with(changes)
        except DecodeError as error:
            raise _Fail("4.00", error.reason) from None
        if merged == NotificationAttributes():
            self.attributes.pop(path, None)
        else:
            self.attributes[path] = merged
        self.attributes_version += 1
        return Response("2.04")

    # -- Execute, Create, Delete --------------------------------------------------------------

    def _execute(self, path: LwM2MPath, payload: bytes) -> Response:
        self._check(path)
        try:
            arguments = payload.decode("ascii")
        except UnicodeDecodeError:
            raise _Fail("4.00", "execute arguments must be ASCII") from None
        if arguments and not _EXECUTE_ARGS.fullmatch(arguments):
            raise _Fail("4.00", f"malformed execute arguments {arguments!r}")
        hook = self._execute_hooks.get((path.ids[0], path.ids[2]))
        if hook is not None:
            try:
                hook(self, path, arguments)
            except ExecuteRefused as refused:
                raise _Fail(refused.code, refused.reason) from None
        self.execute_counts[path] += 1
        return Response("2.04")

    def _create(self, path: LwM2MPath, content_format: int | None, payload: bytes) -> Response:
        object_id = path.ids[0]
        if object_id == 0 or object_id not in self._tree:
            raise _Fail("4.04", f"object {object_id} is not implemented")
        definition = self.registry.get(object_id)
        existing = self._tree[object_id]
        if content_format is None:
            raise _Fail("4.00", "a Create needs a Content-Format")
        if content_format not in self.content_formats or content_format in (0, 42):
            raise _Fail("4.15", f"content format {content_format} cannot carry an object instance")
        try:
            node = codecs.decode(content_format, payload, path, self.registry)
            created = list(node.instances.values()) if isinstance(node, Object) else []
        except IpsoError as first:
            new_id = next(i for i in range(65535) if i not in existing)
            node = self._decode(content_format, payload, path.child(new_id))
            if not isinstance(node, ObjectInstance):
                raise _Fail("4.00", first.reason) from None
            created = [node]
        if not created:
            raise _Fail("4.00", "the Create payload holds no object instance")
        if definition is not None and not definition.multiple and (existing or len(created) > 1):
            raise _Fail("4.00", f"object {object_id} is single-instance and has its instance")
        new: dict[int, dict[int, Any]] = {}
        for instance in created:
            if instance.id in existing or instance.id in new:
                raise _Fail("4.00", f"/{object_id}/{instance.id} already exists")
            values: dict[int, Any] = {}
            for item in instance.resources.values():
                target = LwM2MPath.of(object_id, instance.id, item.id)
                rdef = self._rdef(target)
                if rdef is None or rdef.operations.executable:
                    raise _Fail("4.00", f"{target} cannot be given a value")
                if isinstance(item, MultiResource) != rdef.multiple:
                    raise _Fail("4.00", f"{target}: wrong multiplicity for this resource")
                if isinstance(item, MultiResource):
                    values[item.id] = {ri: self._value(target.child(ri), rdef, v) for ri, v in item.instances.items()}
                else:
                    values[item.id] = self._value(target, rdef, item.value)
            new[instance.id] = self._with_defaults(object_id, values)
        for instance_id, values in new.items():
            existing[instance_id] = values
            self._changed.add(LwM2MPath.of(object_id, instance_id))
        first_id = created[0].id
        return Response("2.01", location_path=(str(object_id), str(first_id)))

    def _delete(self, path: LwM2MPath) -> Response:
        if len(path) != 2:
            raise _Fail("4.05", f"Delete on {path} is not allowed")
        self._check(path)
        if path.ids[0] in (1, 3):
            raise _Fail("4.05", f"{path} cannot be deleted")
        del self._tree[path.ids[0]][path.ids[1]]
        for attributed in [p for p in self.attributes if p.startswith(path)]:
            del self.attributes[attributed]
            self.attributes_version += 1
        self._sensor_centres = {k: v for k, v in self._sensor_centres.items() if k[:2] != path.ids}
        self._changed.add(path)
        return Response("2.02")


def _as_path(path: LwM2MPath | str) -> LwM2MPath:
    return path if isinstance(path, LwM2MPath) else LwM2MPath.parse(path)


# -- default hooks ------------------------------------------------------------------------------


def default_run_inference(objects: DeviceObjects, path: LwM2MPath, arguments: str) -> None:
    """Stand-in for a real model: count one inference and record a plausible latency
    (about 3e9 / CPU clock microseconds, ±10 %) and the time."""
    base = LwM2MPath.of(path.ids[0], path.ids[1])
    clock = objects.get(base.child(7)) or 100_000_000
    latency = round(3e9 / clock * objects.rng.uniform(0.9, 1.1), 2)
    objects.set(base.child(16), (objects.get(base.child(16)) or 0) + 1)
    objects.set(base.child(15), latency)
    objects.set(base.child(17), int(objects.now))


def default_reset_statistics(objects: DeviceObjects, path: LwM2MPath, arguments: str) -> None:
    """Count back to 0; result, latency and time cleared (the active model stays)."""
    base = LwM2MPath.of(path.ids[0], path.ids[1])
    objects.set(base.child(16), 0)
    objects.set(base.child(14), "")
    objects.set(base.child(15), 0.0)
    objects.remove(base.child(17))


def _reset_min_max(objects: DeviceObjects, path: LwM2MPath, arguments: str) -> None:
    base = LwM2MPath.of(path.ids[0], path.ids[1])
    current = objects.get(base.child(5700))
    if current is not None and objects.get(base.child(5601)) is not None:
        objects.set(base.child(5601), current)
        objects.set(base.child(5602), current)


def _write_current_time(objects: DeviceObjects, path: LwM2MPath, value: datetime) -> None:
    objects._clock_offset = (value - datetime.fromtimestamp(objects.now, timezone.utc)).total_seconds()
