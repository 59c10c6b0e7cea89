"""Hypothesis strategies for values and nodes of the all-types test object (32000)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import strategies as st

from ipso_objects import (
    LwM2MPath,
    MultiResource,
    Object,
    ObjectInstance,
    ObjLnk,
    Resource,
    ResourceInstance,
    ResourceType,
)
from ipso_objects.values import EPOCH, INT_MAX, INT_MIN, UINT_MAX

ALL_TYPES_OBJECT = 32000
TYPE_ORDER = [
    ResourceType.STRING,
    ResourceType.INTEGER,
    ResourceType.UNSIGNED_INTEGER,
    ResourceType.FLOAT,
    ResourceType.BOOLEAN,
    ResourceType.OPAQUE,
    ResourceType.TIME,
    ResourceType.OBJLNK,
    ResourceType.CORELNK,
]
SINGLE_RESOURCE = {t: i for i, t in enumerate(TYPE_ORDER)}
"""Resource id of the single-instance resource of each type in object 32000."""
MULTIPLE_RESOURCE = {t: i + len(TYPE_ORDER) for i, t in enumerate(TYPE_ORDER)}
"""Resource id of the multi-instance resource of each type in object 32000."""

ids = st.integers(min_value=0, max_value=65534)

times = st.integers(min_value=-(2**35), max_value=2**35).map(
    lambda s: EPOCH + timedelta(seconds=s)
)


def values_of(rtype: ResourceType, *, finite: bool = True) -> st.SearchStrategy:
    """Every value a resource of ``rtype`` may hold (floats finite unless asked)."""
    return {
        ResourceType.STRING: st.text(),
        ResourceType.INTEGER: st.integers(min_value=INT_MIN, max_value=INT_MAX),
        ResourceType.UNSIGNED_INTEGER: st.integers(min_value=0, max_value=UINT_MAX),
        ResourceType.FLOAT: st.floats(allow_nan=not finite, allow_infinity=not finite),
        ResourceType.BOOLEAN: st.booleans(),
        ResourceType.OPAQUE: st.binary(max_size=300),
        ResourceType.TIME: times,
        ResourceType.OBJLNK: st.builds(
            ObjLnk,
            st.integers(min_value=0, max_value=0xFFFF),
            st.integers(min_value=0, max_value=0xFFFF),
        ),
        ResourceType.CORELNK: st.text(),
    }[rtype]


@st.composite
def resources(draw, rtype: ResourceType | None = None, multiple: bool | None = None):
    """A Resource or MultiResource of object 32000 (type and multiplicity drawn if not given)."""
    rtype = rtype or draw(st.sampled_from(TYPE_ORDER))
    multiple = draw(st.booleans()) if multiple is None else multiple
    if multiple:
        instances = draw(st.dictionaries(ids, values_of(rtype), max_size=4))
        return MultiResource(MULTIPLE_RESOURCE[rtype], instances)
    return Resource(SINGLE_RESOURCE[rtype], draw(values_of(rtype)))


@st.composite
def object_instances(draw, *, allow_empty_multi: bool = True, instance_id=None):
    """An instance of object 32000 with a random subset of resources."""
    chosen = draw(
        st.lists(
            st.tuples(st.sampled_from(TYPE_ORDER), st.booleans()),
            unique=True,
            max_size=6,
        )
    )
    resource_nodes = {}
    for rtype, multiple in chosen:
        node = draw(resources(rtype, multiple))
        if isinstance(node, MultiResource) and not node.instances and not allow_empty_multi:
            continue
        resource_nodes[node.id] = node
    iid = draw(ids) if instance_id is None else instance_id
    return ObjectInstance(iid, resource_nodes)


@st.composite
def objects(draw, *, allow_empty_multi: bool = True, allow_empty_instance: bool = True):
    """Object 32000 with up to three instances."""
    instance_ids = draw(st.lists(ids, unique=True, max_size=3))
    instances = {}
    for iid in instance_ids:
        instance = draw(object_instances(allow_empty_multi=allow_empty_multi, instance_id=iid))
        if not instance.resources and not allow_empty_instance:
            continue
        instances[iid] = instance
    return Object(ALL_TYPES_OBJECT, instances)


@st.composite
def addressed_nodes(draw, *, allow_empty: bool = True):
    """A (node, path) pair at any depth: object, instance, resource or resource instance."""
    depth = draw(st.sampled_from([1, 2, 3, 4]))
    if depth == 1:
        node = draw(objects(allow_empty_multi=allow_empty, allow_empty_instance=allow_empty))
        return node, LwM2MPath.of(ALL_TYPES_OBJECT)
    iid = draw(ids)
    if depth == 2:
        node = draw(object_instances(allow_empty_multi=allow_empty, instance_id=iid))
        return node, LwM2MPath.of(ALL_TYPES_OBJECT, iid)
    if depth == 3:
        node = draw(resources())
        if isinstance(node, MultiResource) and not node.instances and not allow_empty:
            node = MultiResource(node.id, {0: draw(values_of(TYPE_ORDER[node.id - 9]))})
        return node, LwM2MPath.of(ALL_TYPES_OBJECT, iid, node.id)
    rtype = draw(st.sampled_from(TYPE_ORDER))
    riid = draw(ids)
    node = ResourceInstance(riid, draw(values_of(rtype)))
    return node, LwM2MPath.of(ALL_TYPES_OBJECT, iid, MULTIPLE_RESOURCE[rtype], riid)


def single_value_nodes(rtype: ResourceType) -> st.SearchStrategy:
    """(Resource, path) pairs for the single resource of ``rtype`` in /32000/0."""
    rid = SINGLE_RESOURCE[rtype]
    return values_of(rtype).map(
        lambda v: (Resource(rid, v), LwM2MPath.of(ALL_TYPES_OBJECT, 0, rid))
    )
