"""The DDFs we ship: they load, agree with the OMA registry, and the TinyML
Capability object matches docs/tinyml-object.md."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from importlib import resources as package_files

import pytest

from conftest import TESTS, shared_folder
from ipso_objects import TINYML_OBJECT_ID, ObjectRegistry, Operations, ResourceType
from ipso_objects.ddf import load_ddf, load_ddf_file
from ipso_objects.model import ObjectDef

SHIPPED_IDS = {0, 1, 2, 3, 4, 5, 9, 21, 3300, 3303, 3304, 3313, TINYML_OBJECT_ID}
REGISTRY_IDS = sorted(SHIPPED_IDS - {TINYML_OBJECT_ID})
TINYML_DOC = TESTS.parent / "docs" / "tinyml-object.md"

# Where our DDF deliberately differs from the registry file, and why.
RANGE_DEVIATIONS = {
    # The registry puts a sentence ("The possible values are those listed in the
    # LwM2M Core Specification") in RangeEnumeration; ours says it in the description.
    (1, 22): "",
}

# Element order of LWM2M-v1_1.xsd (we have no schema validator among the dependencies).
OBJECT_LAYOUT = [
    "Name", "Description1", "ObjectID", "ObjectURN", "LWM2MVersion", "ObjectVersion",
    "MultipleInstances", "Mandatory", "Resources", "Description2",
]
ITEM_LAYOUT = [
    "Name", "Operations", "MultipleInstances", "Mandatory", "Type",
    "RangeEnumeration", "Units", "Description",
]


def shipped_files():
    folder = package_files.files("ipso_objects").joinpath("definitions")
    return sorted((e for e in folder.iterdir() if e.name.endswith(".xml")), key=lambda e: e.name)


def shipped(object_id: int) -> ObjectDef:
    definition = ObjectRegistry.default().get(object_id)
    assert definition is not None, f"object {object_id} is not shipped"
    return definition


def same_words(text: str) -> str:
    """Names compared word for word: registry 0.xml spells ``LWM2M  Server URI`` with two spaces."""
    return " ".join(text.split())


# --- every shipped file ----------------------------------------------------------


def test_every_shipped_file_loads_and_is_named_after_its_object():
    files = shipped_files()
    assert len(files) == len(SHIPPED_IDS)
    for entry in files:
        definitions = load_ddf(entry.read_bytes(), source=entry.name)
        assert len(definitions) == 1, entry.name
        definition = definitions[0]
        assert re.fullmatch(rf"{definition.id}-[a-z0-9]+(-[a-z0-9]+)*\.xml", entry.name)
        assert definition.resources, entry.name
        assert all(r.description for r in definition.resources.values()), entry.name


def test_default_registry_holds_exactly_the_shipped_objects():
    registry = ObjectRegistry.default()
    assert {definition.id for definition in registry} == SHIPPED_IDS
    assert registry.get(3).name == "Device"
    assert registry.get(TINYML_OBJECT_ID).name == "TinyML Capability"


@pytest.mark.parametrize("entry", shipped_files(), ids=lambda e: e.name)
def test_shipped_file_follows_the_xsd_layout_and_names_its_version(entry):
    data = entry.read_bytes()
    root = ET.fromstring(data, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    assert root.tag == "LWM2M"
    (obj,) = [child for child in root if child.tag == "Object"]
    assert obj.get("ObjectType") == "MODefinition"
    assert [child.tag for child in obj] == OBJECT_LAYOUT
    for item in obj.find("Resources"):
        assert item.tag == "Item" and item.get("ID", "").isdigit()
        assert [child.tag for child in item] == ITEM_LAYOUT, f"{entry.name} item {item.get('ID')}"
    # A one-line comment up front says where the facts come from and which version they are.
    comment = data.decode("utf-8").split("\n")[1]
    assert comment.startswith("<!--") and comment.endswith("-->")
    version = obj.findtext("ObjectVersion")
    assert f"object {obj.findtext('ObjectID')} version {version}" in comment
    if int(obj.findtext("ObjectID")) != TINYML_OBJECT_ID:
        assert "OMA LwM2M" in comment and "registry" in comment


# --- agreement with the OMA registry -----------------------------------------------


@pytest.mark.parametrize("object_id", REGISTRY_IDS)
def test_shipped_object_agrees_with_the_oma_registry(object_id):
    (reference,) = load_ddf_file(shared_folder("lwm2m-registry") / f"{object_id}.xml")
    ours = shipped(object_id)
    assert (ours.id, ours.name, ours.multiple, ours.mandatory) == (
        reference.id, reference.name, reference.multiple, reference.mandatory
    )
    assert (ours.version, ours.urn, ours.lwm2m_version) == (
        reference.version, reference.urn, reference.lwm2m_version
    )
    assert set(ours.resources) == set(reference.resources)
    for rid, expected in reference.resources.items():
        actual = ours.resources[rid]
        where = f"/{object_id}/x/{rid}"
        assert same_words(actual.name) == same_words(expected.name), where
        assert actual.type is expected.type, where
        assert actual.operations is expected.operations, where
        assert actual.multiple == expected.multiple, where
        assert actual.mandatory == expected.mandatory, where
        assert actual.units == expected.units, where
        expected_range = RANGE_DEVIATIONS.get((object_id, rid), expected.range_enumeration)
        assert actual.range_enumeration == expected_range, where


def test_descriptions_are_our_own_words():
    """The project writes its own DDFs: no description is the registry's text."""
    folder = shared_folder("lwm2m-registry")
    for object_id in REGISTRY_IDS:
        (reference,) = load_ddf_file(folder / f"{object_id}.xml")
        ours = shipped(object_id)
        assert same_words(ours.description) != same_words(reference.description)
        for rid, resource in ours.resources.items():
            theirs = same_words(reference.resources[rid].description)
            assert same_words(resource.description) != theirs, f"/{object_id}/x/{rid}"


# --- the TinyML Capability object ------------------------------------------------


def test_tinyml_object_id_is_in_the_vendor_reuse_range_and_single_instance():
    tinyml = shipped(TINYML_OBJECT_ID)
    assert 26241 <= tinyml.id <= 32768
    assert tinyml.urn == f"urn:oma:lwm2m:x:{TINYML_OBJECT_ID}:1.1"  # 1.1 added resource 21
    assert (tinyml.version, tinyml.multiple, tinyml.mandatory) == ("1.1", False, False)
    assert sorted(tinyml.resources) == list(range(len(tinyml.resources)))


def test_tinyml_key_resources():
    r = shipped(TINYML_OBJECT_ID).resources
    S, UINT, R = ResourceType.STRING, ResourceType.UNSIGNED_INTEGER, Operations.R
    expected = {
        # id: (name, type, operations, multiple, mandatory)
        0: ("ML Runtime Name", S, R, False, True),
        1: ("ML Runtime Version", S, R, False, True),
        2: ("Supported Operators", S, R, True, True),
        3: ("Model RAM Available", UINT, R, False, True),
        4: ("Model Storage Available", UINT, R, False, True),
        5: ("Tensor Arena Budget", UINT, R, False, True),
        9: ("Supported Model Formats", S, R, True, True),
        12: ("Active Model Digest", ResourceType.OPAQUE, R, False, True),
        14: ("Last Inference Result", S, R, False, False),
        15: ("Last Inference Latency", ResourceType.FLOAT, R, False, False),
        18: ("Run Inference", ResourceType.NONE, Operations.E, False, False),
        19: ("Inference Period", UINT, Operations.RW, False, False),
        20: ("Reset Statistics", ResourceType.NONE, Operations.E, False, False),
        # Written by the Bootstrap-Server only: no operation for a management server.
        21: ("Module Trust Anchors", ResourceType.OPAQUE, Operations.NONE, True, False),
    }
    for rid, facts in expected.items():
        resource = r[rid]
        assert (resource.name, resource.type, resource.operations,
                resource.multiple, resource.mandatory) == facts
    assert (r[7].units, r[15].units, r[19].units) == ("Hz", "us", "s")
    assert r[3].units == r[4].units == r[5].units == "B"
    # The server writes only the inference period; everything else is the device's.
    assert [rid for rid, res in r.items() if res.operations.writable] == [19]


def doc_table() -> dict[int, tuple[str, ...]]:
    """Rows ``| id | name | type | ops | instances | mandatory | units |`` of the doc."""
    rows = {}
    for line in TINYML_DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows[int(cells[0])] = tuple(cells[1:])
    return rows


def test_tinyml_doc_table_matches_the_ddf():
    rows = doc_table()
    resources = shipped(TINYML_OBJECT_ID).resources
    assert set(rows) == set(resources)
    for rid, resource in resources.items():
        name, rtype, ops, instances, mandatory, units = rows[rid]
        shown_type = "" if resource.type is ResourceType.NONE else resource.type.value
        assert (name, rtype, ops, units) == (
            resource.name, shown_type, resource.operations.value, resource.units
        ), rid
        assert instances == ("Multiple" if resource.multiple else "Single"), rid
        assert mandatory == ("Mandatory" if resource.mandatory else "Optional"), rid


# --- a user's folder merged over the shipped DDFs ---------------------------------

VENDOR_DDF = """<?xml version="1.0" encoding="UTF-8"?>
<LWM2M>
  <Object ObjectType="MODefinition">
    <Name>{name}</Name>
    <Description1>Test object.</Description1>
    <ObjectID>{oid}</ObjectID>
    <ObjectURN>{urn}</ObjectURN>
    <LWM2MVersion>1.1</LWM2MVersion>
    <ObjectVersion>{version}</ObjectVersion>
    <MultipleInstances>Single</MultipleInstances>
    <Mandatory>Optional</Mandatory>
    <Resources>
      <Item ID="0">
        <Name>{resource}</Name>
        <Operations>R</Operations>
        <MultipleInstances>Single</MultipleInstances>
        <Mandatory>Mandatory</Mandatory>
        <Type>String</Type>
        <RangeEnumeration></RangeEnumeration>
        <Units></Units>
        <Description>Test resource.</Description>
      </Item>
    </Resources>
    <Description2></Description2>
  </Object>
</LWM2M>
"""


def test_a_users_folder_adds_vendor_objects_and_overrides_shipped_ones(tmp_path):
    (tmp_path / "10300-vibration.xml").write_text(VENDOR_DDF.format(
        name="Vibration Monitor", oid=10300, urn="urn:oma:lwm2m:x:10300",
        version="1.0", resource="Spectrum",
    ))
    (tmp_path / "3-device-1_1.xml").write_text(VENDOR_DDF.format(
        name="Device (vendor)", oid=3, urn="urn:oma:lwm2m:oma:3:1.1",
        version="1.1", resource="Vendor Manufacturer",
    ))
    registry = ObjectRegistry.default(folders=[tmp_path])

    assert {d.id for d in registry} == SHIPPED_IDS | {10300}
    assert registry.get(10300).name == "Vibration Monitor"
    # Without a version, the folder's Device wins ...
    assert registry.get(3).name == "Device (vendor)"
    assert registry.get(3).resources[0].name == "Vendor Manufacturer"
    # ... but the shipped one is still there when asked for by version.
    assert registry.versions(3) == ["1.1", "1.2"]
    shipped_device = registry.get(3, "1.2")
    assert shipped_device.name == "Device" and len(shipped_device.resources) == 23
    assert registry.get(3, "1.1").name == "Device (vendor)"
    # Objects the folder does not mention stay as shipped.
    assert registry.get(TINYML_OBJECT_ID).name == "TinyML Capability"


def test_a_folder_ddf_with_the_shipped_version_replaces_it(tmp_path):
    (tmp_path / "26241-tinyml.xml").write_text(VENDOR_DDF.format(
        name="Other Vendor Object", oid=TINYML_OBJECT_ID,
        urn=f"urn:oma:lwm2m:x:{TINYML_OBJECT_ID}:1.1", version="1.1", resource="Something Else",
    ))
    registry = ObjectRegistry.default(folders=[tmp_path])
    assert registry.versions(TINYML_OBJECT_ID) == ["1.1"]
    assert registry.get(TINYML_OBJECT_ID, "1.1").name == "Other Vendor Object"
    assert ObjectRegistry.default().get(TINYML_OBJECT_ID).name == "TinyML Capability"
