"""The LwM2M object model: DDF loading, paths, values, nodes and content-format codecs.

This package imports nothing from ``lwm2m_server`` or ``simulators``.
"""

from .errors import (
    CodecError,
    DdfError,
    DecodeError,
    EncodeError,
    IpsoError,
    ModelError,
    PathError,
    UnsupportedFormatError,
)
from .model import ObjectDef, Operations, ResourceDef, ResourceType
from .nodes import MultiResource, Node, Object, ObjectInstance, Resource, ResourceInstance
from .path import LwM2MPath
from .registry import TINYML_OBJECT_ID, ObjectRegistry
from .values import ObjLnk, Value

__all__ = [
    "CodecError", "DdfError", "DecodeError", "EncodeError", "IpsoError", "ModelError",
    "PathError", "UnsupportedFormatError",
    "ObjectDef", "Operations", "ResourceDef", "ResourceType",
    "MultiResource", "Node", "Object", "ObjectInstance", "Resource", "ResourceInstance",
    "LwM2MPath", "TINYML_OBJECT_ID", "ObjectRegistry", "ObjLnk", "Value",
]
