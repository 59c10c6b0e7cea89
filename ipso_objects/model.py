"""Object and resource definitions: what a DDF file says about an object."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping


class ResourceType(enum.Enum):
    """LwM2M data types (Core spec, Appendix C), named as in DDF ``<Type>``."""

    STRING = "String"
    INTEGER = "Integer"
    UNSIGNED_INTEGER = "Unsigned Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    OPAQUE = "Opaque"
    TIME = "Time"
    OBJLNK = "Objlnk"
    CORELNK = "Corelnk"
    NONE = "none"
    """Executable resources carry no value."""


class Operations(enum.Enum):
    """Operations a resource supports, as in DDF ``<Operations>``."""

    NONE = ""
    R = "R"
    W = "W"
    RW = "RW"
    E = "E"

    @property
    def readable(self) -> bool:
        return self in (Operations.R, Operations.RW)

    @property
    def writable(self) -> bool:
        return self in (Operations.W, Operations.RW)

    @property
    def executable(self) -> bool:
        return self is Operations.E


@dataclass(frozen=True, slots=True)
class ResourceDef:
    """One ``<Item>`` of a DDF."""

    id: int
    """Resource id, 0..65534."""
    name: str
    """Human-readable name, e.g. ``Manufacturer``."""
    operations: Operations
    """Which operations a server may perform on the resource."""
    multiple: bool
    """True when the resource has resource instances (``MultipleInstances=Multiple``)."""
    mandatory: bool
    """True when a client implementing the object must implement the resource."""
    type: ResourceType
    """Data type of the resource's values."""
    range_enumeration: str = ""
    """The ``<RangeEnumeration>`` text as written (e.g. ``0..100``, ``1-6``), empty if none."""
    units: str = ""
    """The ``<Units>`` text as written, empty if none."""
    description: str = ""
    """Free text from the DDF."""


@dataclass(frozen=True, slots=True)
class ObjectDef:
    """One ``<Object>`` of a DDF."""

    id: int
    """Object id, 0..65534."""
    name: str
    """Human-readable name, e.g. ``Device``."""
    urn: str
    """The object URN, e.g. ``urn:oma:lwm2m:oma:3:1.2``."""
    multiple: bool
    """True when the object may have several instances."""
    mandatory: bool
    """True when every client must implement the object."""
    resources: Mapping[int, ResourceDef] = field(default_factory=dict)
    """Resource definitions by resource id."""
    version: str = "1.0"
    """Object version (``<ObjectVersion>``); 1.0 when the DDF has none."""
    lwm2m_version: str = "1.0"
    """Minimum LwM2M enabler version (``<LWM2MVersion>``); 1.0 when the DDF has none."""
    description: str = ""
    """Free text from the DDF."""

    def resource(self, resource_id: int) -> ResourceDef | None:
        """The definition of ``resource_id``, or None when the object has no such resource."""
        return self.resources.get(resource_id)
