"""LwM2MPath: parsing, validation, navigation."""

import pytest
from hypothesis import given, strategies as st

from ipso_objects import LwM2MPath, PathError


@pytest.mark.parametrize(
    "text, ids",
    [("/", ()), ("/3", (3,)), ("/3/0", (3, 0)), ("/3/0/1", (3, 0, 1)),
     ("/3/0/6/1", (3, 0, 6, 1)), ("/3/0/", (3, 0)), ("/65534/0", (65534, 0))],
)
def test_parse_valid_paths(text, ids):
    assert LwM2MPath.parse(text).ids == ids


@pytest.mark.parametrize(
    "text, reason",
    [
        ("3/0", "must start with '/'"),
        ("/65535", "out of range"),  # 65535 is reserved by the Core spec
        ("/3/0/1/2/3", "at most 4 ids"),
        ("/3//1", "not a decimal id"),
        ("/3/a", "not a decimal id"),
        ("/-1", "not a decimal id"),
        ("/03", "leading zero"),
        ("/３", "not a decimal id"),  # full-width digit
        ("", "must start with '/'"),
    ],
)
def test_parse_rejects_with_reason(text, reason):
    with pytest.raises(PathError, match=reason):
        LwM2MPath.parse(text)


def test_constructor_validates_ids():
    with pytest.raises(PathError, match="out of range"):
        LwM2MPath.of(3, 65535)
    with pytest.raises(PathError, match="must be an int"):
        LwM2MPath.of(3, True)
    with pytest.raises(PathError, match="must be a tuple"):
        LwM2MPath([3, 0])


def test_navigation_and_kinds():
    path = LwM2MPath.parse("/3/0/6/1")
    assert (path.object_id, path.instance_id, path.resource_id, path.resource_instance_id) == (3, 0, 6, 1)
    assert path.is_resource_instance and path.parent.is_resource
    assert path.parent.parent.is_object_instance and LwM2MPath.of(3).is_object
    assert LwM2MPath().is_root and LwM2MPath().parent.is_root
    assert LwM2MPath.of(3, 0).child(1) == LwM2MPath.of(3, 0, 1)
    assert path.startswith(LwM2MPath.of(3, 0)) and path.startswith(LwM2MPath())
    assert not LwM2MPath.of(3, 1).startswith(LwM2MPath.of(3, 0))
    assert LwM2MPath.of(3, 0) < LwM2MPath.of(3, 0, 0) < LwM2MPath.of(3, 1)


@given(st.lists(st.integers(0, 65534), max_size=4))
def test_str_parse_round_trip(ids):
    path = LwM2MPath(tuple(ids))
    assert LwM2MPath.parse(str(path)) == path


@given(st.text(max_size=30))
def test_parse_arbitrary_text_raises_only_path_error(text):
    try:
        LwM2MPath.parse(text)
    except PathError:
        pass
