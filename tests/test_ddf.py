"""DDF loader: every OMA registry file loads; malformed files name file and element."""

import pytest

from conftest import shared_folder
from ipso_objects import DdfError, ObjectRegistry, Operations, ResourceType
from ipso_objects.ddf import load_ddf, load_ddf_file

MINIMAL = """<LWM2M><Object ObjectType="MODefinition">
<Name>Thing</Name><Description1></Description1><ObjectID>{oid}</ObjectID>
<ObjectURN>urn:oma:lwm2m:x:{oid}</ObjectURN>
<MultipleInstances>{multi}</MultipleInstances><Mandatory>Optional</Mandatory>
<Resources>{items}</Resources></Object></LWM2M>"""
ITEM = """<Item ID="{rid}"><Name>R</Name><Operations>{ops}</Operations>
<MultipleInstances>Single</MultipleInstances><Mandatory>Optional</Mandatory>
<Type>{type}</Type><RangeEnumeration/><Units/><Description/></Item>"""


def ddf(oid="10300", multi="Multiple", items=None):
    items = ITEM.format(rid=0, ops="R", type="Integer") if items is None else items
    return MINIMAL.format(oid=oid, multi=multi, items=items)


def test_every_registry_file_loads():
    folder = shared_folder("lwm2m-registry")
    files = sorted(f for f in folder.glob("*.xml") if f.stem.isdigit())
    assert len(files) == 327
    registry = ObjectRegistry()
    for file in files:
        definitions = load_ddf_file(file)
        assert [d.id for d in definitions] == [int(file.stem)], file.name
        for definition in definitions:
            registry.add(definition)
    assert len(registry) == 327
    # Both schema generations: 3 uses LWM2M-v1_1.xsd fields, 3200 the older LWM2M.xsd.
    device = registry.get(3)
    assert (device.name, device.version, device.lwm2m_version) == ("Device", "1.2", "1.1")
    assert device.resources[13].type is ResourceType.TIME
    assert device.resources[6].multiple and device.resources[4].operations is Operations.E
    assert device.resources[4].type is ResourceType.NONE
    sensor_value = registry.get(3303).resources[5700]
    assert (sensor_value.type, sensor_value.mandatory) == (ResourceType.FLOAT, True)
    assert registry.get(10482).resources  # a readable resource with an empty <Type> loads too


def test_registry_folder_loads_into_object_registry():
    """The index DDF.xml and Common.xml are not object definitions and are skipped."""
    registry = ObjectRegistry()
    registry.load_folder(shared_folder("lwm2m-registry"))
    assert len(registry) == 327


def test_a_malformed_file_in_a_folder_adds_nothing(tmp_path):
    (tmp_path / "a-good.xml").write_text(ddf(oid="10300"))
    (tmp_path / "b-bad.xml").write_text(ddf(oid="10301", multi="Many"))
    registry = ObjectRegistry()
    with pytest.raises(DdfError, match="b-bad.xml"):
        registry.load_folder(tmp_path)
    assert 10300 not in registry


def test_fields_of_a_minimal_ddf():
    (definition,) = load_ddf(ddf(items=ITEM.format(rid=7, ops="RW", type="Unsigned Integer")))
    assert definition.id == 10300 and definition.multiple and not definition.mandatory
    assert definition.version == "1.0" and definition.lwm2m_version == "1.0"
    resource = definition.resources[7]
    assert resource.type is ResourceType.UNSIGNED_INTEGER and resource.operations.writable


def test_missing_urn_is_derived_from_id_range():
    text = ddf(oid="3303").replace("<ObjectURN>urn:oma:lwm2m:x:3303</ObjectURN>", "")
    assert load_ddf(text)[0].urn == "urn:oma:lwm2m:ext:3303"


@pytest.mark.parametrize(
    "text, element, reason",
    [
        (ddf(oid="abc"), "ObjectID", "not a decimal integer"),
        (ddf(oid="65535"), "ObjectID", "out of range"),
        (ddf(multi="Several"), "Object 10300/MultipleInstances", "neither"),
        (ddf(items=ITEM.format(rid=0, ops="X", type="Integer")), "Object 10300/Item 0/Operations", "not one of"),
        (ddf(items=ITEM.format(rid=0, ops="R", type="Decimal")), "Object 10300/Item 0/Type", "unknown type"),
        (ddf(items=ITEM.format(rid=1, ops="R", type="Integer") * 2), "Object 10300/Item", "defined twice"),
        (ddf(items=ITEM.format(rid="x", ops="R", type="Integer")), "Object 10300/Item", "not a decimal"),
        (ddf().replace("<Name>R</Name>", ""), "Item/Name", "missing"),
        (ddf().replace("<Resources>", "<Stuff>").replace("</Resources>", "</Stuff>"),
         "Object 10300/Resources", "missing"),
        ("<LWM2M></LWM2M>", "LWM2M", "no <Object>"),
    ],
)
def test_malformed_ddf_names_file_and_element(tmp_path, text, element, reason):
    file = tmp_path / "vendor.xml"
    file.write_text(text)
    with pytest.raises(DdfError) as caught:
        load_ddf_file(file)
    message = str(caught.value)
    assert str(file) in message and f"<{element}>" in message and reason in message


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"<LWM2M><Object>", "not well-formed"),
        (b"<Root/>", "expected <LWM2M>"),
        (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><LWM2M/>', "DTDs"),
        (b"\xff\xfe garbage", "not UTF-8 text"),
        (b"\xc3\x28 garbage", "not well-formed"),
    ],
)
def test_broken_xml_is_a_ddf_error(data, reason):
    with pytest.raises(DdfError, match=reason):
        load_ddf(data, source="upload.xml")


def test_unreadable_file_and_folder(tmp_path):
    with pytest.raises(DdfError, match="cannot read"):
        load_ddf_file(tmp_path / "absent.xml")
    with pytest.raises(DdfError, match="not a directory"):
        ObjectRegistry().load_folder(tmp_path / "absent")
