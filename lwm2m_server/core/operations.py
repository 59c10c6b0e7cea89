"""Device Management & Information Reporting operations, sans-I/O.

Each builder turns one LwM2M operation into a :class:`DeviceRequest` (method,
Uri-Path under the device's root path, Uri-Query, Content-Format, Accept,
Observe, payload); :mod:`.responses` decodes what the device answered. The
adapter only moves these through aiocoap. Builders take
``registry=`` (the object model; default: the shipped DDFs) and raise
:class:`OperationError` with a reason when the operation cannot be built.

Content format policy (:func:`choose_format`)
=============================================

*Multi-value* targets (object, object instance, multi-instance resource, and
composite operations) use the first format the device advertised with ``ct=``
in this order of preference, by the version it registered with:

====  ======================================================================
1.0   TLV 11542 > OMA JSON 11543
1.1   SenML CBOR 112 > SenML JSON 110 > TLV 11542
1.2   LwM2M CBOR 11544 > SenML CBOR 112 > SenML JSON 110 > TLV 11542
====  ======================================================================

When it advertised none of them: 1.0 → TLV, which Core 1.0 §6.4 makes
mandatory ("The LWM2M Client MUST support the TLV data format for all
requests"); 1.1+ → SenML CBOR. A Create on a 1.0 device is always TLV, the one
format every 1.0 client takes (OMA JSON has no standard form for an instance
without resources). Core 1.1.1 §7.4 (same text in 1.2): "The LwM2M
Client MUST support plain text, opaque, and CoRE Link data formats and it
SHOULD support at least one of SenML CBOR or SenML JSON data formats. [...]
LwM2M Clients supporting LwM2M TS 1.1 or newer SHOULD NOT use the legacy TLV or
JSON formats." So no multi-value format is guaranteed for 1.1+ (OMA issue
OMA_LwM2M_for_Developers#514); SenML CBOR is one of the two SHOULDs, the compact
one, and Zephyr's default. A caller may retry with ``content_format=``/``accept=``
after a 4.06/4.15.

*Single-value* targets (a single-instance resource, a resource instance):

- LwM2M 1.0: reads send **no Accept** (npm lwm2m-node-lib answers single
  resources only in text and drops requests with an Accept it does not know);
  writes use text/plain 0, or opaque 42 for Opaque values.
- LwM2M 1.1+: Opaque resources use opaque 42 both ways (raw bytes, no base64,
  mandatory per §7.4 above: the format of firmware and software packages);
  other values use the preferred advertised format, else text/plain 0 (mandatory).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

from ipso_objects import IpsoError, LwM2MPath, ObjectRegistry, Value
from ipso_objects.codecs import ContentFormat as CF
from ipso_objects import codecs
from ipso_objects.codecs.link_format import NotificationAttributes
from ipso_objects.model import ResourceType
from ipso_objects.nodes import (
    MultiResource, Node, Object, ObjectInstance, Resource, ResourceInstance, check_node_path,
)

from .registration import Registration
from .requests import COMPOSITE_READ_KINDS, READ_KINDS, DeviceRequest, Operation, OperationError


# --- content format policy ------------------------------------------------------------------

PREFERENCES: dict[str, tuple[int, ...]] = {
    "1.0": (CF.TLV, CF.OMA_JSON),
    "1.1": (CF.SENML_CBOR, CF.SENML_JSON, CF.TLV),
    "1.2": (CF.LWM2M_CBOR, CF.SENML_CBOR, CF.SENML_JSON, CF.TLV),
}
"""Multi-value formats by preference for each enabler version."""
_DEFAULT_MULTI = {"1.0": CF.TLV, "1.1": CF.SENML_CBOR, "1.2": CF.SENML_CBOR}
_COMPOSITE_FORMATS = (CF.LWM2M_CBOR, CF.SENML_CBOR, CF.SENML_JSON)
_PATH_LIST_FORMATS = (CF.SENML_CBOR, CF.SENML_JSON)
SEND_FORMATS = (CF.SENML_JSON, CF.SENML_CBOR, CF.LWM2M_CBOR)
"""Formats a Send (``/dp``) may carry."""


def _version(reg: Registration) -> str:
    """1.0, 1.1 or 1.2 (a newer minor version is treated as 1.2)."""
    return reg.lwm2m_version if reg.lwm2m_version in ("1.0", "1.1") else "1.2"


def _advertised(reg: Registration, ranked: Sequence[int]) -> int | None:
    offered = set(reg.object_list.content_formats)
    return next((fmt for fmt in ranked if fmt in offered), None)


def multi_value_format(reg: Registration) -> int:
    """The format for objects, instances and multi-instance resources of this device."""
    version = _version(reg)
    return _advertised(reg, PREFERENCES[version]) or _DEFAULT_MULTI[version]


def _composite_format(reg: Registration, allowed: Sequence[int]) -> int:
    ranked = [fmt for fmt in PREFERENCES[_version(reg)] if fmt in allowed]
    return _advertised(reg, ranked) or CF.SENML_CBOR


def _single_value(path: LwM2MPath, registry: ObjectRegistry, node: Node | None) -> bool | None:
    """True for one value, False for several, None when neither path nor model tells."""
    if len(path) == 4 or isinstance(node, (Resource, ResourceInstance)):
        definition = registry.resource_def(path)
        return not (definition is not None and definition.multiple and len(path) == 3)
    if len(path) < 3 or node is not None:
        return False
    definition = registry.resource_def(path)
    return None if definition is None else not definition.multiple


def choose_format(
    reg: Registration, kind: Operation, path: LwM2MPath, registry: ObjectRegistry,
    *, node: Node | None = None,
) -> tuple[int | None, int | None]:
    """``(Content-Format of the request payload, Accept)`` for ``kind`` on ``path``.

    ``node`` (the value of a Write or Create) refines the choice for resources
    the model does not know. See the module docstring for the policy.
    """
    if kind in (Operation.DELETE, Operation.WRITE_ATTRIBUTES):
        return None, None
    if kind is Operation.DISCOVER:
        return None, CF.LINK
    if kind is Operation.EXECUTE:
        return CF.TEXT, None
    if kind is Operation.CREATE and _version(reg) == "1.0":
        return CF.TLV, None
    if kind in COMPOSITE_READ_KINDS:
        return _composite_format(reg, _PATH_LIST_FORMATS), _composite_format(reg, _COMPOSITE_FORMATS)
    if kind is Operation.WRITE_COMPOSITE:
        return _composite_format(reg, _COMPOSITE_FORMATS), None
    reading = kind in READ_KINDS
    single = _single_value(path, registry, node)
    if not single:
        if reading and _version(reg) == "1.0" and (single is None or not reg.object_list.content_formats):
            # A 1.0 client answers in TLV when not asked otherwise; some (lwm2m-node-lib)
            # silently drop requests whose Accept they do not know, so ask only for
            # formats the device advertised.
            return None, None
        fmt = multi_value_format(reg)
        return (None, fmt) if reading else (fmt, None)
    rtype = registry.value_type(path)
    opaque = rtype is ResourceType.OPAQUE or (
        rtype is None and isinstance(node, (Resource, ResourceInstance))
        and isinstance(node.value, (bytes, bytearray)))
    if _version(reg) == "1.0":
        return (None, None) if reading else (CF.OPAQUE if opaque else CF.TEXT, None)
    fmt = CF.OPAQUE if opaque else (_advertised(reg, PREFERENCES[_version(reg)]) or CF.TEXT)
    return (None, fmt) if reading else (fmt, None)


# --- builders -----------------------------------------------------------------------------


def _registry(registry: ObjectRegistry | None) -> ObjectRegistry:
    """The caller's registry, else the shipped DDFs (loaded once)."""
    return registry if registry is not None else _shipped_registry()


_shipped_registry = lru_cache(maxsize=1)(ObjectRegistry.default)


def _uri(reg: Registration, path: LwM2MPath) -> tuple[str, ...]:
    root = tuple(part for part in reg.object_list.root_path.split("/") if part)
    return root + tuple(str(i) for i in path.ids)


def _check_path(reg: Registration, path: LwM2MPath, lengths: Sequence[int], operation: str) -> None:
    if not isinstance(path, LwM2MPath):
        raise OperationError(f"{operation}: {path!r} is not an LwM2MPath")
    if len(path) not in lengths:
        names = {0: "/", 1: "/o", 2: "/o/i", 3: "/o/i/r", 4: "/o/i/r/ri"}
        allowed = ", ".join(names[n] for n in lengths)
        raise OperationError(f"{operation} applies to {allowed}, not {path}")
    if len(path) == 4 and _version(reg) == "1.0":
        raise OperationError(
            f"{operation} on resource instance {path} needs LwM2M 1.1+ (device {reg.endpoint} is 1.0)")


def _check_composite(reg: Registration) -> None:
    if _version(reg) == "1.0":
        raise OperationError("composite operations need LwM2M 1.1+")


def _encode(fmt: int, node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    try:
        return codecs.encode(fmt, node, path, registry)
    except IpsoError as error:
        raise OperationError(f"cannot encode {path} as {format_name(fmt)}: {error.reason}") from None
    except ImportError:
        raise OperationError(f"{format_name(fmt)} is not available on this server") from None


def read(reg: Registration, path: LwM2MPath, *, registry: ObjectRegistry | None = None,
         accept: int | None = None) -> DeviceRequest:
    """Read ``/o``, ``/o/i``, ``/o/i/r`` or ``/o/i/r/ri`` (GET); ``accept`` overrides the policy."""
    return _get(reg, Operation.READ, path, None, _registry(registry), accept)


def observe(reg: Registration, path: LwM2MPath, *, registry: ObjectRegistry | None = None,
            accept: int | None = None) -> DeviceRequest:
    """Observe (GET with Observe=0)."""
    return _get(reg, Operation.OBSERVE, path, 0, _registry(registry), accept)


def cancel_observe(reg: Registration, path: LwM2MPath, *, registry: ObjectRegistry | None = None,
                   accept: int | None = None) -> DeviceRequest:
    """Cancel-Observe actively (GET with Observe=1)."""
    return _get(reg, Operation.CANCEL_OBSERVE, path, 1, _registry(registry), accept)


def _get(reg: Registration, kind: Operation, path: LwM2MPath, observe_option: int | None,
         registry: ObjectRegistry, accept: int | None) -> DeviceRequest:
    _check_path(reg, path, (1, 2, 3, 4), kind.value.replace("_", "-").title())
    chosen = choose_format(reg, kind, path, registry)[1] if accept is None else accept
    return DeviceRequest(kind, "GET", _uri(reg, path), accept=chosen, observe=observe_option,
                         paths=(path,))


def write(reg: Registration, path: LwM2MPath, node: Node | Value, replace: bool = True, *,
          registry: ObjectRegistry | None = None, content_format: int | None = None) -> DeviceRequest:
    """Write: replace (PUT on /o/i, /o/i/r, /o/i/r/ri) or partial update (POST on /o/i,
    or on a multi-instance /o/i/r for 1.1+). A bare value is wrapped as the
    Resource or ResourceInstance ``path`` names."""
    registry = _registry(registry)
    kind = Operation.WRITE_REPLACE if replace else Operation.WRITE_UPDATE
    if replace:
        _check_path(reg, path, (2, 3, 4), "Write")
    else:
        _check_path(reg, path, (2, 3), "Write (partial update)")
        definition = registry.resource_def(path)
        if len(path) == 3 and (_version(reg) == "1.0" or (definition and not definition.multiple)):
            raise OperationError(f"partial update of {path} needs a multi-instance resource "
                                 "and LwM2M 1.1+; use replace")
    node = _as_node(node, path)
    try:
        check_node_path(node, path)
    except IpsoError as error:
        raise OperationError(f"Write {path}: {error.reason}") from None
    _check_writable(node, path, registry)
    fmt = content_format if content_format is not None else (
        choose_format(reg, kind, path, registry, node=node)[0])
    assert fmt is not None
    try:
        payload = _encode(fmt, node, path, registry)
    except OperationError as problem:
        if content_format is not None or fmt not in (CF.TEXT, CF.OPAQUE):
            raise
        try:  # a value text cannot carry (a non-finite Float): the device's TLV/SenML
            fmt, payload = multi_value_format(reg), _encode(multi_value_format(reg), node, path, registry)
        except OperationError:
            raise problem from None
    return DeviceRequest(kind, "PUT" if replace else "POST", _uri(reg, path), content_format=fmt,
                         payload=payload, paths=(path,))


def _as_node(value: Node | Value, path: LwM2MPath) -> Node:
    if isinstance(value, (Object, ObjectInstance, Resource, MultiResource, ResourceInstance)):
        return value
    if len(path) == 3:
        return Resource(path.ids[2], value)
    if len(path) == 4:
        return ResourceInstance(path.ids[3], value)
    raise OperationError(f"a bare value cannot be written to {path}; give a node")


def _check_writable(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> None:
    if isinstance(node, ObjectInstance):
        resource_paths = [path.child(rid) for rid in node.resources]
    elif isinstance(node, (Resource, MultiResource)):
        resource_paths = [path]
    elif isinstance(node, ResourceInstance):
        resource_paths = [path.parent]
    else:
        return
    for resource_path in resource_paths:
        definition = registry.resource_def(resource_path)
        if definition is not None and not definition.operations.writable:
            raise OperationError(f"{resource_path} {definition.name} is not writable "
                                 f"(operations {definition.operations.value or 'none'})")


_ARGVAL = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "'", "\\"}


def parse_execute_arguments(text: str) -> dict[int, str | None]:
    """Check Execute arguments (Core 1.1 §5.4.5): ``0='v',1`` → ``{0: "v", 1: None}``.

    Grammar: ``arglist = argument *("," argument)``, ``argument = DIGIT ["=" "'" *argval "'"]``,
    ``argval = %x21 / %x23-26 / %x28-5B / %x5D-7E`` (printable, no space, ``"``, ``'``
    or backslash). A digit given twice is refused too.
    """
    if not isinstance(text, str):
        raise OperationError(f"Execute arguments must be a string, got {type(text).__name__}")

    def expected(what: str, at: int) -> OperationError:
        found = repr(text[at]) if at < len(text) else "the end"
        return OperationError(f"Execute arguments {text!r}: expected {what} at offset {at}, found {found}")

    arguments: dict[int, str | None] = {}
    i = 0
    while text:
        if i >= len(text) or text[i] not in "0123456789":
            raise expected("a digit 0-9", i)
        digit, value = int(text[i]), None
        i += 1
        if i < len(text) and text[i] == "=":
            if i + 1 >= len(text) or text[i + 1] != "'":
                raise expected("a quote (') opening the value", i + 1)
            end = text.find("'", i + 2)
            if end < 0:
                raise OperationError(f"Execute arguments {text!r}: the value at offset {i + 1} is never closed")
            value = text[i + 2:end]
            bad = next((k for k, char in enumerate(value) if char not in _ARGVAL), None)
            if bad is not None:
                raise OperationError(
                    f"Execute arguments {text!r}: {value[bad]!r} at offset {i + 2 + bad} is not allowed "
                    "in a value (printable ASCII without space, quotes or backslash)")
            i = end + 1
        if digit in arguments:
            raise OperationError(f"Execute arguments {text!r}: argument {digit} given twice")
        arguments[digit] = value
        if i == len(text):
            break
        if text[i] != ",":
            raise expected("',' between arguments", i)
        i += 1
    return arguments


def execute(reg: Registration, path: LwM2MPath, arguments: str = "", *,
            registry: ObjectRegistry | None = None) -> DeviceRequest:
    """Execute a resource (POST on /o/i/r); ``arguments`` as the Core spec writes them."""
    _check_path(reg, path, (3,), "Execute")
    parse_execute_arguments(arguments)
    definition = _registry(registry).resource_def(path)
    if definition is not None and not definition.operations.executable:
        raise OperationError(f"{path} {definition.name} is not executable "
                             f"(operations {definition.operations.value or 'none'})")
    payload = arguments.encode("ascii")
    return DeviceRequest(Operation.EXECUTE, "POST", _uri(reg, path),
                         content_format=CF.TEXT if payload else None, payload=payload, paths=(path,))


def create(reg: Registration, object_path: LwM2MPath,
           instance: ObjectInstance | Mapping[int, Resource | MultiResource], *,
           registry: ObjectRegistry | None = None, content_format: int | None = None) -> DeviceRequest:
    """Create an object instance (POST on /o; the device answers 2.01 with Location-Path /o/i).

    An :class:`ObjectInstance` names the new instance's id, and every format carries it,
    also when the instance has no resources: TLV an Object Instance TLV around the
    resource TLVs (empty: ``00 07``); SenML names ``/o/`` + ``i/r``, and a record without
    a value named ``/o/`` + ``i/`` when there are no resources; LwM2M CBOR
    ``{o: {i: {...}}}``; OMA JSON names ``i/r`` under ``/o/`` (no resources: base name
    ``/o/i/``, no entries).

    A mapping of resources (maybe empty) leaves the id to the device: Core 1.1 §6.3.6,
    "When there is no reference to Object Instance in the TLV/CBOR/JSON payload of the
    Create command, the LwM2M Client MUST assign the ID". Only TLV can leave it out
    (resource TLVs without an Object Instance TLV, OMA LwM2M_for_Developers issue #422);
    SenML, LwM2M CBOR and OMA JSON always name an instance (Leshan and Wakaama refuse or
    lack it). So such a Create goes as TLV when the device takes TLV (it advertised it, or
    it is 1.0, where TLV is mandatory); otherwise :class:`OperationError` asks for an id.
    """
    registry = _registry(registry)
    _check_path(reg, object_path, (1,), "Create")
    if isinstance(instance, ObjectInstance):
        node = Object(object_path.ids[0], {instance.id: instance})
        fmt = content_format if content_format is not None else (
            choose_format(reg, Operation.CREATE, object_path, registry, node=node)[0])
        assert fmt is not None
        payload = _encode(fmt, node, object_path, registry)
    elif isinstance(instance, Mapping):
        tlv_ok = _version(reg) == "1.0" or CF.TLV in reg.object_list.content_formats
        fmt = CF.TLV if content_format is None and tlv_ok else content_format
        if fmt != CF.TLV:
            given = f"as {format_name(fmt)}" if fmt is not None else (
                f"to {reg.endpoint}, which did not advertise TLV")
            raise OperationError(f"Create {object_path} without an instance id needs TLV (only TLV "
                                 f"can leave the id to the device); it cannot go {given}: give an id")
        # The resources as they sit in an instance; the id in this path never reaches the wire.
        placeholder = object_path.child(0)
        payload = _encode(fmt, ObjectInstance(0, dict(instance)), placeholder, registry)
    else:
        raise OperationError(
            f"Create needs an ObjectInstance or a mapping of resources, got {type(instance).__name__}")
    return DeviceRequest(Operation.CREATE, "POST", _uri(reg, object_path), content_format=fmt,
                         payload=payload, paths=(object_path,))


def delete(reg: Registration, path: LwM2MPath, *, registry: ObjectRegistry | None = None) -> DeviceRequest:
    """Delete an object instance (DELETE on /o/i)."""
    _check_path(reg, path, (2,), "Delete")
    return DeviceRequest(Operation.DELETE, "DELETE", _uri(reg, path), paths=(path,))


def discover(reg: Registration, path: LwM2MPath, *, registry: ObjectRegistry | None = None) -> DeviceRequest:
    """Discover attributes and children (GET with Accept: link format)."""
    _check_path(reg, path, (1, 2, 3), "Discover")
    return DeviceRequest(Operation.DISCOVER, "GET", _uri(reg, path), accept=CF.LINK, paths=(path,))


_ATTRIBUTE_VERSIONS = {"epmin": "1.1", "epmax": "1.1", "edge": "1.2", "con": "1.2", "hqmax": "1.2"}
_NUMERIC = (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.FLOAT)


def write_attributes(reg: Registration, path: LwM2MPath, attrs: NotificationAttributes, *,
                     registry: ObjectRegistry | None = None) -> DeviceRequest:
    """Write-Attributes (PUT with the attributes as Uri-Query, no payload)."""
    _check_path(reg, path, (1, 2, 3, 4), "Write-Attributes")
    query = tuple(attrs.to_query())
    if not query:
        raise OperationError("Write-Attributes needs at least one attribute")
    rtype = _registry(registry).value_type(path)
    for name in (item.partition("=")[0] for item in query):
        needed = _ATTRIBUTE_VERSIONS.get(name)
        if needed and _version(reg) < needed:
            raise OperationError(f"attribute {name} needs LwM2M {needed}+ "
                                 f"(device {reg.endpoint} is {reg.lwm2m_version})")
        if name in ("gt", "lt", "st", "edge") and len(path) < 3:
            raise OperationError(f"attribute {name} applies to a resource, not {path}")
        wanted = (ResourceType.BOOLEAN,) if name == "edge" else _NUMERIC
        if name in ("gt", "lt", "st", "edge") and rtype is not None and rtype not in wanted:
            raise OperationError(f"attribute {name} does not apply to {rtype.value} resource {path}")
    return DeviceRequest(Operation.WRITE_ATTRIBUTES, "PUT", _uri(reg, path), query=query, paths=(path,))


def read_composite(reg: Registration, paths: Sequence[LwM2MPath], *,
                   registry: ObjectRegistry | None = None) -> DeviceRequest:
    """Read-Composite (FETCH on the root path, payload = the list of paths)."""
    return _fetch(reg, Operation.READ_COMPOSITE, paths, None, registry)


def observe_composite(reg: Registration, paths: Sequence[LwM2MPath], *,
                      registry: ObjectRegistry | None = None) -> DeviceRequest:
    """Observe-Composite (FETCH with Observe=0)."""
    return _fetch(reg, Operation.OBSERVE_COMPOSITE, paths, 0, registry)


def cancel_observe_composite(reg: Registration, paths: Sequence[LwM2MPath], *,
                             registry: ObjectRegistry | None = None) -> DeviceRequest:
    """Cancel-Observe-Composite (FETCH with Observe=1 and the same paths)."""
    return _fetch(reg, Operation.CANCEL_OBSERVE_COMPOSITE, paths, 1, registry)


def _fetch(reg: Registration, kind: Operation, paths: Sequence[LwM2MPath],
           observe_option: int | None, registry: ObjectRegistry | None) -> DeviceRequest:
    _check_composite(reg)
    paths = tuple(paths)
    if not paths:
        raise OperationError(f"{kind.value} needs at least one path")
    for path in paths:
        _check_path(reg, path, (1, 2, 3, 4), kind.value)
    if len(set(paths)) != len(paths):
        raise OperationError(f"{kind.value}: a path is listed twice")
    fmt, accept = choose_format(reg, kind, LwM2MPath(), _registry(registry))
    assert fmt is not None
    try:
        payload = _encoded_paths(fmt, paths)
    except (IpsoError, ImportError) as error:
        raise OperationError(f"cannot encode the path list as {format_name(fmt)}: {error}") from None
    return DeviceRequest(kind, "FETCH", _uri(reg, LwM2MPath()), content_format=fmt, accept=accept,
                         payload=payload, observe=observe_option, paths=paths)


@lru_cache(maxsize=256)
def _encoded_paths(fmt: int, paths: tuple[LwM2MPath, ...]) -> bytes:
    """A fleet is asked for the same few path lists (discovery, rollout state) over and over."""
    return codecs.encode_paths(fmt, paths)


def write_composite(reg: Registration, values: Mapping[LwM2MPath, Value], *,
                    registry: ObjectRegistry | None = None,
                    content_format: int | None = None) -> DeviceRequest:
    """Write-Composite (iPATCH on the root path) of resource and resource instance values."""
    registry = _registry(registry)
    _check_composite(reg)
    if not values:
        raise OperationError("Write-Composite needs at least one value")
    for path in values:
        _check_path(reg, path, (3, 4), "Write-Composite")
        _check_writable(_as_node(values[path], path), path, registry)
    fmt = content_format if content_format is not None else (
        choose_format(reg, Operation.WRITE_COMPOSITE, LwM2MPath(), registry)[0])
    assert fmt is not None
    try:
        payload = codecs.encode_composite(fmt, dict(values), registry)
    except (IpsoError, ImportError) as error:
        raise OperationError(f"cannot encode the values as {format_name(fmt)}: {error}") from None
    return DeviceRequest(Operation.WRITE_COMPOSITE, "iPATCH", _uri(reg, LwM2MPath()),
                         content_format=fmt, payload=payload, paths=tuple(values))


def format_name(content_format: int | None) -> str:
    """``SENML_CBOR (112)``; ``no Content-Format (text/plain)`` for None."""
    if content_format is None:
        return "no Content-Format (text/plain)"
    try:
        return f"{CF(content_format).name} ({content_format})"
    except ValueError:
        return f"content format {content_format}"
