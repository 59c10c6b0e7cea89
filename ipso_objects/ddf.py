"""Loader for OMA object definition (DDF) XML files, ``LWM2M.xsd`` and ``LWM2M-v1_1.xsd``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .errors import DdfError, NotADdfError
from .model import ObjectDef, Operations, ResourceDef, ResourceType
from .path import MAX_ID

_TYPES = {t.value.lower(): t for t in ResourceType if t is not ResourceType.NONE}
_TYPES[""] = ResourceType.NONE
_TYPES["unsignedinteger"] = ResourceType.UNSIGNED_INTEGER  # seen in vendor DDFs
_OPERATIONS = {op.value: op for op in Operations}
_MAX_DDF_BYTES = 4 * 1024 * 1024


def load_ddf_file(path: str | Path) -> list[ObjectDef]:
    """Load every object defined in one DDF file; :class:`DdfError` names file and element."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DdfError(f"cannot read: {error.strerror or error}", source=str(path)) from None
    return load_ddf(data, source=str(path))


def load_ddf(data: bytes | str, *, source: str = "<bytes>") -> list[ObjectDef]:
    """Parse DDF XML text; ``source`` names it in errors."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > _MAX_DDF_BYTES:
        raise DdfError(f"file is larger than {_MAX_DDF_BYTES} bytes", source=source)
    # DDFs never need a DTD; refusing one rules out entity-expansion bombs. The check reads
    # bytes, so only ASCII-compatible encodings pass: in UTF-16 or UTF-32 "<!DOCTYPE" hides.
    if b"\x00" in data or data.startswith((b"\xfe\xff", b"\xff\xfe")):
        raise DdfError("not UTF-8 text (UTF-16 and UTF-32 DDFs are not accepted)", source=source)
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DdfError("DTDs and entity declarations are not allowed", source=source)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise DdfError(f"not well-formed XML ({error})", source=source) from None
    except (LookupError, ValueError) as error:  # encoding="..." unknown, or multi-byte
        raise DdfError(f"unusable XML encoding declaration ({error})", source=source) from None
    if _local(root.tag) != "LWM2M":
        raise NotADdfError(f"root element is <{_local(root.tag)}>, expected <LWM2M>", source=source)
    elements = [element for element in root if _local(element.tag) == "Object"]
    if elements and all(_child(e, "ObjectID") is None and _child(e, "Name") is None for e in elements):
        # The registry's Common.xml: a catalogue of reusable resources, no object.
        raise NotADdfError("no object definition, only reusable resources", source=source)
    objects = [_object(element, source) for element in elements]
    if not objects:
        raise DdfError("no <Object> element", source=source, element="LWM2M")
    return objects


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(parent: ET.Element, name: str) -> ET.Element | None:
    for element in parent:
        if _local(element.tag) == name:
            return element
    return None


def _text(parent: ET.Element, name: str, source: str, *, required: bool = True) -> str:
    element = _child(parent, name)
    if element is None:
        if required:
            raise DdfError("missing", source=source, element=f"{_local(parent.tag)}/{name}")
        return ""
    return (element.text or "").strip()


def _id(text: str, source: str, element: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise DdfError(f"id {text!r} is not a decimal integer", source=source, element=element)
    value = int(text)
    if value > MAX_ID:
        raise DdfError(f"id {value} out of range 0..{MAX_ID}", source=source, element=element)
    return value


def _choice(text: str, yes: str, no: str, source: str, element: str) -> bool:
    if text.lower() == yes.lower():
        return True
    if text.lower() == no.lower():
        return False
    raise DdfError(f"{text!r} is neither {yes!r} nor {no!r}", source=source, element=element)


def _object(element: ET.Element, source: str) -> ObjectDef:
    object_id = _id(_text(element, "ObjectID", source), source, "ObjectID")
    where = f"Object {object_id}"
    version = _text(element, "ObjectVersion", source, required=False) or "1.0"
    urn = _text(element, "ObjectURN", source, required=False)
    if not urn:
        urn = f"urn:oma:lwm2m:{_urn_kind(object_id)}:{object_id}"
        if version != "1.0":
            urn += f":{version}"
    resources_element = _child(element, "Resources")
    if resources_element is None:
        raise DdfError("missing", source=source, element=f"{where}/Resources")
    resources: dict[int, ResourceDef] = {}
    for item in resources_element:
        if _local(item.tag) != "Item":
            continue
        resource = _resource(item, source, where)
        if resource.id in resources:
            raise DdfError(
                f"resource id {resource.id} defined twice", source=source, element=f"{where}/Item"
            )
        resources[resource.id] = resource
    return ObjectDef(
        id=object_id,
        name=_text(element, "Name", source),
        urn=urn,
        multiple=_choice(
            _text(element, "MultipleInstances", source),
            "Multiple", "Single", source, f"{where}/MultipleInstances",
        ),
        mandatory=_choice(
            _text(element, "Mandatory", source),
            "Mandatory", "Optional", source, f"{where}/Mandatory",
        ),
        resources=resources,
        version=version,
        lwm2m_version=_text(element, "LWM2MVersion", source, required=False) or "1.0",
        description=_text(element, "Description1", source, required=False),
    )


def _urn_kind(object_id: int) -> str:
    """URN namespace by id range (Core spec §7.1.1): oma, ext(ended) or x (vendor)."""
    if object_id < 1024:
        return "oma"
    if 10241 <= object_id <= 42768:  # vendor and private ranges (OMNA)
        return "x"
    return "ext"


def _resource(item: ET.Element, source: str, where: str) -> ResourceDef:
    raw_id = item.get("ID")
    if raw_id is None:
        raise DdfError("missing ID attribute", source=source, element=f"{where}/Item")
    resource_id = _id(raw_id.strip(), source, f"{where}/Item")
    here = f"{where}/Item {resource_id}"
    operations_text = _text(item, "Operations", source).upper()
    operations = _OPERATIONS.get(operations_text)
    if operations is None:
        raise DdfError(
            f"{operations_text!r} is not one of R, W, RW, E or empty",
            source=source, element=f"{here}/Operations",
        )
    type_text = _text(item, "Type", source, required=False)
    rtype = _TYPES.get(type_text.lower())
    if rtype is None:
        raise DdfError(f"unknown type {type_text!r}", source=source, element=f"{here}/Type")
    return ResourceDef(
        id=resource_id,
        name=_text(item, "Name", source),
        operations=operations,
        multiple=_choice(
            _text(item, "MultipleInstances", source),
            "Multiple", "Single", source, f"{here}/MultipleInstances",
        ),
        mandatory=_choice(
            _text(item, "Mandatory", source),
            "Mandatory", "Optional", source, f"{here}/Mandatory",
        ),
        type=rtype,
        range_enumeration=_text(item, "RangeEnumeration", source, required=False),
        units=_text(item, "Units", source, required=False),
        description=_text(item, "Description", source, required=False),
    )
