"""Opaque (``application/octet-stream``, content format 42).

LwM2M Core 1.1 §7.4.2: the raw bytes of one Opaque resource (``/o/i/r``) or
resource instance (``/o/i/r/ri``), e.g. a firmware package written to /5/0/0.
Only Opaque resources, or resources the model does not know, can be carried.
"""

from __future__ import annotations

from ..errors import DecodeError, EncodeError
from ..model import ResourceType
from ..nodes import Node, Resource, ResourceInstance, check_node_path
from ..path import LwM2MPath
from ..registry import ObjectRegistry
from ..values import coerce
from .base import decode_errors, encode_errors
from .text import single_value_problem


def _opaque_problem(path: LwM2MPath, registry: ObjectRegistry) -> str | None:
    """Why ``path`` cannot be carried as raw bytes, or None when it can."""
    problem = single_value_problem(path, registry)
    if problem:
        return problem
    rtype = registry.value_type(path)
    if rtype not in (None, ResourceType.OPAQUE):
        return f"{path} is a {rtype.value} resource; application/octet-stream carries only Opaque"
    return None


def encode(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    """The raw bytes of one Opaque Resource or ResourceInstance."""
    with encode_errors():
        if not isinstance(node, (Resource, ResourceInstance)):
            kind = type(node).__name__
            raise EncodeError(f"application/octet-stream carries one value, not a {kind}")
        check_node_path(node, path)
        problem = _opaque_problem(path, registry)
        if problem:
            raise EncodeError(problem)
        return coerce(node.value, ResourceType.OPAQUE)  # type: ignore[return-value]


def decode(data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> Node:
    """The Opaque Resource or ResourceInstance at ``path`` holding ``data``."""
    with decode_errors():
        problem = _opaque_problem(path, registry)
        if problem:
            raise DecodeError(problem)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"an opaque payload is bytes, got {type(data).__name__}")
        if len(path) == 3:
            return Resource(path.ids[2], bytes(data))
        return ResourceInstance(path.ids[3], bytes(data))
