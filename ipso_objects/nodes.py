"""The node tree that codecs encode and decode, and its flat (path → value) view.

A payload addressed to ``/o`` is an :class:`Object`, to ``/o/i`` an
:class:`ObjectInstance`, to ``/o/i/r`` a :class:`Resource` or
:class:`MultiResource`, to ``/o/i/r/ri`` a :class:`ResourceInstance`. Every node
carries its own id; the ids above it come from the path it is addressed to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Union

from .errors import ModelError
from .path import LwM2MPath
from .values import Value

if TYPE_CHECKING:
    from .registry import ObjectRegistry


@dataclass(frozen=True, slots=True)
class ResourceInstance:
    """One instance of a multi-instance resource (``/o/i/r/ri``)."""

    id: int
    """Resource instance id."""
    value: Value
    """Its value."""


@dataclass(frozen=True, slots=True)
class Resource:
    """A single-instance resource (``/o/i/r``)."""

    id: int
    """Resource id."""
    value: Value
    """Its value."""


@dataclass(frozen=True, slots=True)
class MultiResource:
    """A multi-instance resource (``/o/i/r``); it may have no instances."""

    id: int
    """Resource id."""
    instances: Mapping[int, Value] = field(default_factory=dict)
    """Values by resource instance id."""


@dataclass(frozen=True, slots=True)
class ObjectInstance:
    """An object instance (``/o/i``)."""

    id: int
    """Object instance id."""
    resources: Mapping[int, Resource | MultiResource] = field(default_factory=dict)
    """Resources by resource id."""


@dataclass(frozen=True, slots=True)
class Object:
    """An object with its instances (``/o``)."""

    id: int
    """Object id."""
    instances: Mapping[int, ObjectInstance] = field(default_factory=dict)
    """Instances by instance id."""


Node = Union[Object, ObjectInstance, Resource, MultiResource, ResourceInstance]

_DEPTH: dict[type, tuple[int, ...]] = {
    Object: (1,),
    ObjectInstance: (2,),
    Resource: (3,),
    MultiResource: (3,),
    ResourceInstance: (4,),
}


def check_node_path(node: Node, path: LwM2MPath) -> None:
    """Raise :class:`ModelError` unless ``node`` is what ``path`` addresses."""
    depths = _DEPTH.get(type(node))
    if depths is None:
        raise ModelError(f"{type(node).__name__} is not an LwM2M node")
    if len(path) not in depths:
        raise ModelError(f"a {type(node).__name__} cannot be addressed by {path}")
    if path.ids[-1] != node.id:
        raise ModelError(f"{type(node).__name__} id {node.id} does not match path {path}")


def flatten(node: Node, path: LwM2MPath) -> dict[LwM2MPath, Value]:
    """All leaf values under ``node`` keyed by their full path, in id order."""
    check_node_path(node, path)
    leaves: dict[LwM2MPath, Value] = {}
    _flatten_into(node, path, leaves)
    return leaves


def _flatten_into(node: Node, path: LwM2MPath, leaves: dict[LwM2MPath, Value]) -> None:
    if isinstance(node, (Resource, ResourceInstance)):
        leaves[path] = node.value
    elif isinstance(node, MultiResource):
        for ri in sorted(node.instances):
            leaves[path.child(ri)] = node.instances[ri]
    elif isinstance(node, ObjectInstance):
        for rid in sorted(node.resources):
            _flatten_into(node.resources[rid], path.child(rid), leaves)
    elif isinstance(node, Object):
        for iid in sorted(node.instances):
            _flatten_into(node.instances[iid], path.child(iid), leaves)


def build(
    path: LwM2MPath,
    leaves: Mapping[LwM2MPath, Value],
    registry: ObjectRegistry | None = None,
) -> Node:
    """Rebuild the node at ``path`` from leaf values under it (the inverse of :func:`flatten`).

    A leaf at ``/o/i/r`` makes a single :class:`Resource`, leaves at ``/o/i/r/ri``
    a :class:`MultiResource`. When ``path`` names a resource that has no leaves,
    the model decides: a multi-instance resource yields an empty
    :class:`MultiResource`, anything else is a :class:`ModelError`.
    Leaves outside ``path`` or at paths shorter than a resource raise :class:`ModelError`.
    """
    if not 1 <= len(path) <= 4:
        raise ModelError(f"cannot build a node at {path}")
    resources: dict[tuple[int, int, int], dict[int, Value] | Value] = {}
    multiple: set[tuple[int, int, int]] = set()
    for leaf, value in leaves.items():
        if not leaf.startswith(path):
            raise ModelError(f"value at {leaf} is outside {path}")
        if len(leaf) < 3:
            raise ModelError(f"value at {leaf} is not at a resource path")
        key = (leaf.ids[0], leaf.ids[1], leaf.ids[2])
        if len(leaf) == 4:
            if key in resources and key not in multiple:
                raise ModelError(f"{leaf.parent} has both a single value and instances")
            multiple.add(key)
            resources.setdefault(key, {})[leaf.ids[3]] = value  # type: ignore[index]
        else:
            if key in resources:
                raise ModelError(f"{leaf} appears twice or also has instances")
            resources[key] = value

    def resource_node(key: tuple[int, int, int]) -> Resource | MultiResource:
        if key in multiple:
            return MultiResource(key[2], dict(resources[key]))  # type: ignore[arg-type]
        return Resource(key[2], resources[key])  # type: ignore[arg-type]

    if len(path) == 4:
        if path not in leaves:
            raise ModelError(f"no value for resource instance {path}")
        return ResourceInstance(path.ids[3], leaves[path])
    if len(path) == 3:
        key = (path.ids[0], path.ids[1], path.ids[2])
        if key in resources:
            return resource_node(key)
        definition = registry.resource_def(path) if registry is not None else None
        if definition is not None and definition.multiple:
            return MultiResource(path.ids[2], {})
        raise ModelError(f"no value for resource {path}")
    instances: dict[int, dict[int, Resource | MultiResource]] = {}
    for key in sorted(resources):
        instances.setdefault(key[1], {})[key[2]] = resource_node(key)
    if len(path) == 2:
        return ObjectInstance(path.ids[1], instances.get(path.ids[1], {}))
    return Object(path.ids[0], {iid: ObjectInstance(iid, res) for iid, res in instances.items()})
