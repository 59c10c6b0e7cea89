"""The Device Management interface of a simulated device: one decoded request in,
one :class:`Response` out (sans-I/O).

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
Other resources without operations (Module Trust Anchors, /26241/0/21) are
written by the Bootstrap-Server only (:mod:`simulators.bootstrap`): Read, Write and
Discover of them answer 4.05, Discover of their instance omits them, a Create that
gives one a value 4.01 and a Delete of an instance holding one 4.05 (Core 1.1 §5.4).

:class:`DeviceManagement` is a mixin of :class:`simulators.objects.DeviceObjects`,
which owns the tree, the hooks and the device-side accessors it uses.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from ipso_objects import (
    DecodeError, EncodeError, IpsoError, LwM2MPath, ModelError, MultiResource, Object,
    ObjectInstance, ObjectRegistry, PathError, Resource, ResourceDef, ResourceInstance,
    ResourceType, UnsupportedFormatError, codecs,
)
from ipso_objects.codecs import ContentFormat, link_format
from ipso_objects.codecs.link_format import Link, LinkParam, NotificationAttributes
from ipso_objects.values import Value, coerce

_NUMERIC = (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.FLOAT)
_RANGE = re.compile(r"\s*(-?[0-9]+(?:\.[0-9]+)?)\s*\.\.\s*(-?[0-9]+(?:\.[0-9]+)?)\s*")
_EXECUTE_ARGS = re.compile(r"[0-9](='[\x21\x23-\x26\x28-\x7e]*')?(,[0-9](='[\x21\x23-\x26\x28-\x7e]*')?)*")


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
    """Raised by an execute (or write) hook to answer with ``code`` (e.g. ``"4.05"``)
    instead of 2.04."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class _Fail(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


ExecuteHook = Callable[[Any, LwM2MPath, str], None]
"""``hook(objects, path, arguments)``; raise :class:`ExecuteRefused` to refuse. ``objects``
is a :class:`DeviceAccess` (typed ``Any``: a hook may take the concrete DeviceObjects)."""
WriteHook = Callable[[Any, LwM2MPath, Any], None]
"""``hook(objects, resource_path, new_value)`` after a server wrote the resource."""


class DeviceAccess(Protocol):
    """What the device's services (:mod:`simulators.updates`, :mod:`simulators.inference`)
    use of its objects, as :class:`~simulators.objects.DeviceObjects` provides it."""

    endpoint: str
    now: float

    def get(self, path: LwM2MPath | str, default: Any = None) -> Any: ...
    def set(self, path: LwM2MPath | str, value: Any) -> None: ...
    def remove(self, path: LwM2MPath | str) -> None: ...
    def instances(self, object_id: int) -> list[int]: ...
    def set_execute_hook(self, object_id: int, resource_id: int, hook: ExecuteHook | None) -> None: ...
    def set_write_hook(self, object_id: int, resource_id: int, hook: WriteHook | None) -> None: ...


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


def as_path(path: LwM2MPath | str) -> LwM2MPath:
    """``path`` as an :class:`LwM2MPath` (parsing a string)."""
    return path if isinstance(path, LwM2MPath) else LwM2MPath.parse(path)


class DeviceManagement:
    """Answers to Device Management requests over the tree of a :class:`DeviceObjects`."""

    registry: ObjectRegistry
    lwm2m_version: str
    content_formats: tuple[int, ...]
    composite_formats: tuple[int, ...]
    now: float
    attributes: dict[LwM2MPath, NotificationAttributes]
    attributes_version: int
    execute_counts: Counter[LwM2MPath]
    _tree: dict[int, dict[int, dict[int, Any]]]
    _changed: set[LwM2MPath]
    _execute_hooks: dict[tuple[int, int], ExecuteHook]
    _write_hooks: dict[tuple[int, int], WriteHook]

    # provided by DeviceObjects
    def get(self, path: LwM2MPath | str, default: Any = None) -> Any:
        raise NotImplementedError

    def leaves(self, path: LwM2MPath | str) -> dict[LwM2MPath, Value]:
        raise NotImplementedError

    def _with_defaults(self, object_id: int, values: dict[int, Any]) -> dict[int, Any]:
        raise NotImplementedError

    def _forget_instance(self, path: LwM2MPath) -> None:
        """Called after ``path`` (an object instance) was deleted."""

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

    def _bootstrap_only(self, object_id: int, resource_id: int) -> bool:
        """A resource with no operations (e.g. /26241/x/21 Module Trust Anchors): only the
        Bootstrap-Server touches it, so a management server does not even discover it."""
        rdef = self.registry.resource_def(LwM2MPath.of(object_id, 0, resource_id))
        return rdef is not None and rdef.operations.value == ""

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
        if len(path) >= 3 and self._bootstrap_only(path.ids[0], path.ids[2]):
            raise _Fail("4.05", f"{LwM2MPath(path.ids[:3])} is not open to a management server")

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
                    for rid in sorted(instance) if not self._bootstrap_only(instance_path.ids[0], rid)]

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
                try:
                    hook(self, base.child(rid), self.get(base.child(rid)))
                except ExecuteRefused as refused:
                    raise _Fail(refused.code, refused.reason) from None

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
                if self._bootstrap_only(object_id, item.id):
                    raise _Fail("4.01", f"{target} is written by the Bootstrap-Server only")
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
        if any(self._bootstrap_only(path.ids[0], rid) for rid in self._tree[path.ids[0]][path.ids[1]]):
            raise _Fail("4.05", f"{path} holds resources only the Bootstrap-Server may change")
        del self._tree[path.ids[0]][path.ids[1]]
        for attributed in [p for p in self.attributes if p.startswith(path)]:
            del self.attributes[attributed]
            self.attributes_version += 1
        self._forget_instance(path)
        self._changed.add(path)
        return Response("2.02")
