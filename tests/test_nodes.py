"""Node tree ↔ flat leaf values."""

import pytest
from hypothesis import given, settings

from ipso_objects import (
    LwM2MPath, ModelError, MultiResource, Object, ObjectInstance, Resource, ResourceInstance,
)
from ipso_objects.nodes import build, check_node_path, flatten
from strategies import addressed_nodes

P = LwM2MPath.parse


def test_flatten_orders_leaves_and_uses_full_paths():
    instance = ObjectInstance(0, {6: MultiResource(6, {1: 5, 0: 1}), 0: Resource(0, "Acme")})
    assert list(flatten(instance, P("/3/0")).items()) == [
        (P("/3/0/0"), "Acme"), (P("/3/0/6/0"), 1), (P("/3/0/6/1"), 5),
    ]


def test_build_makes_single_and_multiple_resources():
    leaves = {P("/3/0/0"): "Acme", P("/3/0/6/0"): 1, P("/3/1/0"): "Other"}
    node = build(P("/3"), leaves)
    assert node == Object(3, {
        0: ObjectInstance(0, {0: Resource(0, "Acme"), 6: MultiResource(6, {0: 1})}),
        1: ObjectInstance(1, {0: Resource(0, "Other")}),
    })
    assert build(P("/3/0/6/0"), {P("/3/0/6/0"): 1}) == ResourceInstance(0, 1)
    assert build(P("/3/5"), {}) == ObjectInstance(5, {})


def test_build_empty_multi_resource_needs_the_model(registry):
    assert build(P("/3/0/6"), {}, registry) == MultiResource(6, {})
    with pytest.raises(ModelError, match="no value for resource /3/0/0"):
        build(P("/3/0/0"), {}, registry)


@pytest.mark.parametrize(
    "path, leaves, reason",
    [
        ("/3/0", {P("/4/0/0"): 1}, "outside"),
        ("/3", {P("/3/0"): 1}, "not at a resource path"),
        ("/3/0", {P("/3/0/6"): 1, P("/3/0/6/0"): 2}, "both a single value and instances"),
        ("/3/0", {P("/3/0/6/0"): 2, P("/3/0/6"): 1}, "also has instances"),
        ("/", {}, "cannot build"),
    ],
)
def test_build_rejects_inconsistent_leaves(path, leaves, reason):
    with pytest.raises(ModelError, match=reason):
        build(P(path), leaves)


def test_check_node_path():
    check_node_path(Resource(1, "x"), P("/3/0/1"))
    with pytest.raises(ModelError, match="cannot be addressed"):
        check_node_path(Resource(1, "x"), P("/3/0"))
    with pytest.raises(ModelError, match="does not match"):
        check_node_path(ObjectInstance(1), P("/3/0"))


@settings(max_examples=200)
@given(addressed_nodes(allow_empty=False))
def test_build_inverts_flatten(pair):
    node, path = pair
    rebuilt = build(path, flatten(node, path))
    if isinstance(node, Object):  # instances without resources vanish when flattened
        node = Object(node.id, {i: inst for i, inst in node.instances.items() if inst.resources})
    assert rebuilt == node
