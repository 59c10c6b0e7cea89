"""Shared fixtures: the object registry (shipped DDFs + the all-types test object)
and the location of ``../shared`` reference data."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from ipso_objects import ObjectRegistry
from ipso_objects.ddf import load_ddf_file

TESTS = Path(__file__).parent
DATA = TESTS / "data"
SHARED = TESTS.parent.parent / "shared"
ALL_TYPES_OBJECT = 32000


def make_registry() -> ObjectRegistry:
    """Shipped DDFs plus the test-only object 32000 with every resource type."""
    registry = ObjectRegistry.default()
    for definition in load_ddf_file(DATA / "all_types.xml"):
        registry.add(definition)
    return registry


@pytest.fixture(scope="session")
def registry() -> ObjectRegistry:
    return make_registry()


def shared_folder(name: str) -> Path:
    """A folder of ``../shared``, or skip the test with the reason when it is absent."""
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(f"reference data {folder} is absent (clone the project beside ../shared)")
    return folder


@pytest.fixture(autouse=True)
def _structlog_as_it_was():
    """A command run in-process (``cli_main([...])``) may point structlog at the stderr
    pytest captured for that test, a stream closed after it: later logging would fail."""
    config = structlog.get_config()
    yield
    structlog.configure(**config)


@pytest.fixture
def pg_schema():
    """A fresh PostgreSQL schema name (the store creates it), dropped after the test;
    the test is skipped (or fails, see test_store_contract) without a server."""
    import uuid

    from test_store_contract import drop_schema, require_postgresql

    require_postgresql()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    yield schema
    drop_schema(schema)
