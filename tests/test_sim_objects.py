"""The simulated device's object tree: every Device Management operation and format,
checked by decoding the answers with the ipso_objects codecs; profiles validation."""

from __future__ import annotations

import json

import pytest
import yaml

from ipso_objects import LwM2MPath, MultiResource, Object, ObjectInstance, Resource, codecs
from ipso_objects.codecs import link_format
from ipso_objects.nodes import flatten
from simulators.objects import MISSING, DeviceObjects, ExecuteRefused
from simulators.profiles import ConfigError, builtin_profiles, load_config, parse_config

P = LwM2MPath.parse
PROFILES = builtin_profiles()


@pytest.fixture
def m4f(registry) -> DeviceObjects:
    return DeviceObjects(registry, PROFILES["cortex-m4f"], endpoint="m4f-0001", seed=1, now=1_700_000_000)


@pytest.fixture
def m0(registry) -> DeviceObjects:
    return DeviceObjects(registry, PROFILES["cortex-m0plus"], endpoint="m0p-0001", seed=1, now=1_700_000_000)


@pytest.fixture
def gateway(registry) -> DeviceObjects:
    return DeviceObjects(registry, PROFILES["linux-gateway"], endpoint="gw-0001", seed=1, now=1_700_000_000)


def read(device: DeviceObjects, path: str, accept: int | None = None):
    """Read ``path`` and decode the answer with the codec of its Content-Format."""
    response = device.handle("GET", path.strip("/").split("/"), accept=accept)
    assert response.code == "2.05", response.payload
    node = codecs.decode(response.content_format, response.payload, P(path), device.registry)
    return response, node


# -- initial values ------------------------------------------------------------------------------


def test_initial_values_come_from_the_profile(m4f):
    assert m4f.get("/3/0/0") == "STMicroelectronics"
    assert m4f.get("/3/0/21") == 1024 and m4f.get("/3/0/10") == 512  # KB
    assert m4f.get("/3/0/6") == {0: 5}  # USB
    assert m4f.get("/1/0/1") == 300 and m4f.get("/1/0/7") == "U"
    assert (m4f.get("/5/0/3"), m4f.get("/5/0/5")) == (0, 0)
    assert m4f.instances(9) == [0] and m4f.get("/9/0/7") == 0  # an empty software slot
    assert m4f.get("/26241/0/0") == "tflite-micro"
    assert m4f.get("/26241/0/6") == "cortex-m4f" and m4f.get("/26241/0/7") == 168_000_000
    assert m4f.get("/26241/0/8") == {0: "cmsis-nn"}
    assert "CONV_2D" in m4f.get("/26241/0/2").values()
    assert m4f.instances(3303) == [0] and m4f.instances(3313) == [0]


def test_m0plus_is_a_queue_mode_battery_device(m0):
    assert m0.get("/1/0/7") == "UQ" and m0.get("/3/0/16") == "UQ"
    assert m0.get("/3/0/9") == 92 and m0.get("/3/0/6") == {0: 1}
    assert m0.get("/26241/0/5") == 16384 and m0.get("/26241/0/7") == 48_000_000
    assert m0.get("/26241/0/8") == {}


def test_registration_links(m4f, m0):
    links = m4f.registration_links()
    assert link_format.encode(links[:1]) == b'</>;rt="oma.lwm2m";ct="110 112 11542"'
    by_target = {link.target: link for link in links}
    assert by_target["/3"].ver == "1.2" and "/3/0" in by_target
    assert "/9/0" in by_target and "/0/0" not in by_target
    assert all(link.ver is None for link in m0.registration_links())


# -- Read --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [11542, 110, 112])
@pytest.mark.parametrize("path", ["/3", "/3/0", "/3/0/0", "/3/0/6", "/3/0/6/0", "/26241/0"])
def test_read_every_level_in_every_multi_value_format(m4f, path, accept):
    response, node = read(m4f, path, accept)
    assert response.content_format == accept
    assert flatten(node, P(path)) == m4f.leaves(path)


def test_read_lwm2m_cbor_on_a_12_device(gateway):
    response, node = read(gateway, "/26241/0", 11544)
    assert response.content_format == 11544
    assert node.resources[0].value == "litert"


def test_default_formats(m4f, m0):
    assert m4f.handle("GET", ["3", "0"]).content_format == 112
    assert m0.handle("GET", ["3", "0"]).content_format == 11542
    single = m4f.handle("GET", ["3", "0", "0"])
    assert (single.content_format, single.payload) == (0, b"STMicroelectronics")
    assert m4f.handle("GET", ["26241", "0", "12"]).content_format == 42  # Opaque in 1.1
    assert m0.handle("GET", ["26241", "0", "12"]).content_format == 0  # base64 text in 1.0


def test_single_value_formats(m4f):
    assert m4f.handle("GET", ["1", "0", "1"], accept=0).payload == b"300"
    assert m4f.handle("GET", ["3", "0", "6", "0"], accept=0).payload == b"5"
    assert m4f.handle("GET", ["26241", "0", "12"], accept=42).payload == b""


def test_unacceptable_formats_are_406(m4f, m0):
    assert m4f.handle("GET", ["3", "0"], accept=0).code == "4.06"
    assert m4f.handle("GET", ["3", "0", "6"], accept=0).code == "4.06"
    assert m4f.handle("GET", ["3", "0", "0"], accept=42).code == "4.06"
    assert m4f.handle("GET", ["3", "0"], accept=11543).code == "4.06"
    assert m4f.handle("GET", ["3", "0"], accept=11544).code == "4.06"  # LwM2M CBOR is 1.2
    assert m0.handle("GET", ["3", "0"], accept=110).code == "4.06"  # SenML is 1.1


def test_read_permissions_and_missing_paths(m4f):
    assert m4f.handle("GET", ["5", "0", "0"]).code == "4.05"  # Package is write-only
    assert m4f.handle("GET", ["3", "0", "4"]).code == "4.05"  # Reboot is executable
    _, node = read(m4f, "/5/0", 11542)
    assert 0 not in node.resources and 2 not in node.resources and 3 in node.resources
    _, device = read(m4f, "/3/0", 11542)
    assert not {4, 5, 12} & set(device.resources)
    for path in (["3", "1"], ["77"], ["3", "0", "99"], ["3", "0", "6", "5"], ["0", "0"], ["0"], ["x"]):
        assert m4f.handle("GET", path).code == "4.04", path


# -- Discover ----------------------------------------------------------------------------------------


def test_discover_object_instance_and_resource(m4f):
    assert m4f.handle("PUT", ["3303"], query=["pmin=10"]).code == "2.04"
    assert m4f.handle("PUT", ["3303", "0", "5700"], query=["gt=30", "pmax=60"]).code == "2.04"
    response = m4f.handle("GET", ["3303"], accept=40)
    assert response.code == "2.05" and response.content_format == 40
    links = {link.target: link for link in link_format.decode(response.payload)}
    assert links["/3303"].get("pmin") == "10"
    assert "/3303/0" in links and links["/3303/0/5700"].get("gt") == "30"
    assert links["/3303/0/5605"].params == ()  # executable resources are listed too
    device = {link.target: link for link in link_format.decode(m4f.handle("GET", ["3", "0"], accept=40).payload)}
    assert device["/3/0/6"].dim == 1 and "/3/0/4" in device
    resource = link_format.decode(m4f.handle("GET", ["3303", "0", "5700"], accept=40).payload)
    assert [link.target for link in resource] == ["/3303/0/5700"]
    assert (resource[0].get("pmin"), resource[0].get("pmax"), resource[0].get("gt")) == ("10", "60", "30")
    assert m4f.handle("GET", ["3", "9"], accept=40).code == "4.04"


# -- Write -------------------------------------------------------------------------------------------


def test_write_single_resource_in_text_and_senml(m4f, registry):
    assert m4f.handle("PUT", ["1", "0", "1"], content_format=0, payload=b"120").code == "2.04"
    assert m4f.get("/1/0/1") == 120
    assert LwM2MPath.of(1, 0, 1) in m4f.take_changed()
    body = codecs.encode(110, Resource(19, 30), P("/26241/0/19"), registry)
    assert m4f.handle("PUT", ["26241", "0", "19"], content_format=110, payload=body).code == "2.04"
    assert m4f.get("/26241/0/19") == 30


def test_write_instance_tlv_partial_update_keeps_other_resources(m4f, registry):
    body = codecs.encode(11542, ObjectInstance(0, {1: Resource(1, 90)}), P("/1/0"), registry)
    assert m4f.handle("POST", ["1", "0"], content_format=11542, payload=body).code == "2.04"
    assert m4f.get("/1/0/1") == 90 and m4f.get("/1/0/7") == "U"


def test_write_errors(m4f, registry):
    assert m4f.handle("PUT", ["3", "0", "0"], content_format=0, payload=b"ACME").code == "4.05"
    assert m4f.handle("PUT", ["1", "0", "1"], content_format=0, payload=b"soon").code == "4.00"
    as_string = json.dumps([{"bn": "/1/0/1", "vs": "soon"}]).encode()
    assert m4f.handle("PUT", ["1", "0", "1"], content_format=110, payload=as_string).code == "4.00"
    assert m4f.handle("PUT", ["1", "0", "26"], content_format=0, payload=b"5").code == "4.00"  # range 0..1
    assert m4f.handle("PUT", ["1", "0", "1"], content_format=11543, payload=b"{}").code == "4.15"
    assert m4f.handle("PUT", ["1", "0"], payload=b"x").code == "4.00"  # no Content-Format
    assert m4f.handle("PUT", ["1", "7", "1"], content_format=0, payload=b"1").code == "4.04"
    assert m4f.handle("PUT", ["3"], content_format=0, payload=b"1").code == "4.05"
    body = codecs.encode(11542, ObjectInstance(0, {1: Resource(1, 90), 0: Resource(0, 7)}), P("/1/0"), registry)
    assert m4f.handle("PUT", ["1", "0"], content_format=11542, payload=body).code == "4.05"
    assert m4f.get("/1/0/1") == 300  # nothing applied when one resource is refused


def test_multiple_resource_replace_and_partial_update(m4f, registry):
    path = P("/1/0/25")
    versions = codecs.encode(110, MultiResource(25, {0: "1.1", 1: "1.2"}), path, registry)
    assert m4f.handle("PUT", ["1", "0", "25"], content_format=110, payload=versions).code == "2.04"
    more = codecs.encode(110, MultiResource(25, {2: "1.0"}), path, registry)
    assert m4f.handle("POST", ["1", "0", "25"], content_format=110, payload=more).code == "2.04"
    assert m4f.get(path) == {0: "1.1", 1: "1.2", 2: "1.0"}
    assert m4f.handle("PUT", ["1", "0", "25", "1"], content_format=0, payload=b"2.0").code == "2.04"
    assert m4f.get(path) == {0: "1.1", 1: "2.0", 2: "1.0"}
    assert m4f.handle("PUT", ["1", "0", "25"], content_format=110, payload=more).code == "2.04"
    assert m4f.get(path) == {2: "1.0"}  # replace drops the other instances


def test_write_hook_sees_server_writes(m4f):
    seen = []
    m4f.set_write_hook(5, 1, lambda objects, path, value: seen.append((str(path), value)))
    m4f.handle("PUT", ["5", "0", "1"], content_format=0, payload=b"coap://fw.example/1.bin")
    assert seen == [("/5/0/1", "coap://fw.example/1.bin")]


# -- composite ---------------------------------------------------------------------------------------


def test_read_composite(m4f, registry):
    request = codecs.encode_paths(110, [P("/3/0/0"), P("/3303/0/5700"), P("/9/9")])
    response = m4f.handle("FETCH", [], content_format=110, accept=112, payload=request)
    assert response.code == "2.05" and response.content_format == 112
    values = codecs.decode_composite(112, response.payload, registry)
    assert values == {P("/3/0/0"): "STMicroelectronics", P("/3303/0/5700"): m4f.get("/3303/0/5700")}
    only_missing = codecs.encode_paths(110, [P("/9/9")])
    assert m4f.handle("FETCH", [], content_format=110, payload=only_missing).code == "4.04"


def test_composite_needs_11(m0, registry):
    request = codecs.encode_paths(110, [P("/3/0/0")])
    assert m0.handle("FETCH", [], content_format=110, payload=request).code == "4.05"


def test_write_composite_is_all_or_nothing(m4f, registry):
    good = codecs.encode_composite(110, {P("/1/0/1"): 60, P("/26241/0/19"): 5}, registry)
    assert m4f.handle("IPATCH", [], content_format=110, payload=good).code == "2.04"
    assert (m4f.get("/1/0/1"), m4f.get("/26241/0/19")) == (60, 5)
    bad = codecs.encode_composite(110, {P("/1/0/1"): 70, P("/3/0/0"): "ACME"}, registry)
    assert m4f.handle("IPATCH", [], content_format=110, payload=bad).code == "4.05"
    assert m4f.get("/1/0/1") == 60


# -- Execute -----------------------------------------------------------------------------------------


def test_execute_reboot_and_arguments(m4f):
    assert m4f.handle("POST", ["3", "0", "4"]).code == "2.04"
    assert m4f.handle("POST", ["3", "0", "4"], payload=b"0='now',1").code == "2.04"
    assert m4f.execute_counts[P("/3/0/4")] == 2
    assert m4f.handle("POST", ["3", "0", "4"], payload=b"now").code == "4.00"
    assert m4f.handle("POST", ["3", "0", "0"]).code == "4.05"
    assert m4f.handle("POST", ["3", "0", "99"]).code == "4.04"


def test_run_inference_without_a_model_is_405_and_reset_statistics_works(m4f):
    assert m4f.get("/26241/0/17") is None
    response = m4f.handle("POST", ["26241", "0", "18"], now=1_700_000_100)
    assert response.code == "4.05" and b"no model is active" in response.payload
    assert m4f.get("/26241/0/16") == 0
    assert m4f.handle("POST", ["26241", "0", "20"]).code == "2.04"
    assert m4f.get("/26241/0/16") == 0
    assert m4f.handle("GET", ["26241", "0", "17"]).code == "4.04"


def test_inference_hooks_can_be_replaced(m4f):
    calls = []

    def refuse(objects, path, arguments):
        calls.append(arguments)
        raise ExecuteRefused("4.05", "no active model")

    m4f.run_inference = refuse
    response = m4f.handle("POST", ["26241", "0", "18"], payload=b"1='x'")
    assert (response.code, response.payload, calls) == ("4.05", b"no active model", ["1='x'"])


# -- Create, Delete ----------------------------------------------------------------------------------


def test_create_software_package_instance(m4f, registry):
    instance = ObjectInstance(0, {0: Resource(0, "kws-model"), 1: Resource(1, "1.0.0")})
    body = codecs.encode(11542, instance, P("/9/0"), registry)  # bare resources: the client picks the id
    response = m4f.handle("POST", ["9"], content_format=11542, payload=body)
    assert (response.code, response.location_path) == ("2.01", ("9", "1"))  # 0 is the built-in slot
    assert m4f.get("/9/1/0") == "kws-model" and m4f.get("/9/1/7") == 0 and m4f.get("/9/1/12") is False
    install = m4f.handle("POST", ["9", "1", "4"])  # executables exist; Install needs a delivered package
    assert install.code == "4.05" and b"DELIVERED" in install.payload
    wrapped = codecs.encode(110, Object(9, {3: instance}), P("/9"), registry)
    assert m4f.handle("POST", ["9"], content_format=110, payload=wrapped).location_path == ("9", "3")
    assert m4f.instances(9) == [0, 1, 3]
    again = m4f.handle("POST", ["9"], content_format=110, payload=wrapped)
    assert again.code == "4.00"


def test_create_errors(m4f, registry):
    body = codecs.encode(11542, ObjectInstance(1, {0: Resource(0, "x")}), P("/3/1"), registry)
    assert m4f.handle("POST", ["3"], content_format=11542, payload=body).code == "4.00"  # single-instance
    assert m4f.handle("POST", ["77"], content_format=11542, payload=body).code == "4.04"
    assert m4f.handle("POST", ["9"], payload=body).code == "4.00"


def test_delete(m4f):
    assert m4f.handle("DELETE", ["3303", "0"]).code == "2.02"
    assert m4f.instances(3303) == [] and m4f.observed_value(P("/3303/0/5700")) is MISSING
    assert m4f.handle("DELETE", ["3303", "0"]).code == "4.04"
    assert m4f.handle("DELETE", ["3", "0"]).code == "4.05"
    assert m4f.handle("DELETE", ["3304"]).code == "4.05"
    m4f.step(1_700_000_010)  # a deleted sensor no longer moves


# -- Write-Attributes --------------------------------------------------------------------------------


def test_write_attributes_merge_and_unset(m4f):
    assert m4f.handle("PUT", ["3303", "0", "5700"], query=["pmin=10", "gt=30"]).code == "2.04"
    assert m4f.handle("PUT", ["3303", "0", "5700"], query=["pmax=60"]).code == "2.04"
    attributes = m4f.attributes[P("/3303/0/5700")]
    assert (attributes.pmin, attributes.pmax, attributes.gt) == (10, 60, 30.0)
    assert m4f.handle("PUT", ["3303", "0", "5700"], query=["pmin", "pmax", "gt"]).code == "2.04"
    assert P("/3303/0/5700") not in m4f.attributes


def test_write_attributes_errors(m4f):
    assert m4f.handle("PUT", ["3303", "0"], query=["gt=30"]).code == "4.00"  # not a resource
    assert m4f.handle("PUT", ["3", "0", "0"], query=["st=1"]).code == "4.00"  # not numeric
    assert m4f.handle("PUT", ["3303", "0", "5700"], query=["gt=10", "lt=20"]).code == "4.00"
    assert m4f.handle("PUT", ["3303", "0", "5700"], query=["foo=1"]).code == "4.00"
    assert m4f.handle("PUT", ["3303", "0", "5700"], query=["pmin=-1"]).code == "4.00"
    assert m4f.handle("PUT", ["3303", "7"], query=["pmin=1"]).code == "4.04"


# -- sensors -----------------------------------------------------------------------------------------


def test_step_is_deterministic_per_seed_and_stays_in_range(registry):
    one = DeviceObjects(registry, PROFILES["cortex-m4f"], endpoint="a", seed=42, now=0)
    two = DeviceObjects(registry, PROFILES["cortex-m4f"], endpoint="a", seed=42, now=0)
    other = DeviceObjects(registry, PROFILES["cortex-m4f"], endpoint="b", now=0)
    changed = set()
    for second in range(1, 200):
        changed |= one.step(second)
        two.step(second)
        other.step(second)
    assert one.leaves("/3303") == two.leaves("/3303")
    assert one.get("/3303/0/5700") != other.get("/3303/0/5700")
    assert P("/3303/0/5700") in changed
    assert 0 <= one.get("/3304/0/5700") <= 100
    assert one.get("/3303/0/5601") <= one.get("/3303/0/5700") <= one.get("/3303/0/5602")


# -- profiles ----------------------------------------------------------------------------------------


def test_shipped_fleet_config_loads():
    config = load_config("config/fleet.yaml")
    assert {"cortex-m0plus", "cortex-m4f", "linux-gateway"} <= set(config.profiles)
    endpoints = [endpoint for endpoint, _ in config.endpoints()]
    assert len(endpoints) == len(set(endpoints)) == config.total()
    assert "m4f-0001" in endpoints


def test_count_spreads_over_groups():
    config = parse_config({"fleet": [
        {"profile": "cortex-m4f", "count": 30, "endpoint_prefix": "m4f"},
        {"profile": "cortex-m0plus", "count": 10, "endpoint_prefix": "m0"},
    ]})
    endpoints = [endpoint for endpoint, _ in config.endpoints(8)]
    assert endpoints == [f"m4f-000{i}" for i in range(1, 7)] + ["m0-0001", "m0-0002"]


@pytest.mark.parametrize("document, message", [
    ({"fleet": [{"profile": "cortex-m4f", "count": 1, "endpoint_prefix": "a"},
                {"profile": "cortex-m4f", "count": 0, "endpoint_prefix": "b"}]},
     "fleet[1].count: must be > 0, got 0"),
    ({"fleet": [{"profile": "cortex-m7", "count": 1, "endpoint_prefix": "a"}]},
     "fleet[0].profile: unknown profile 'cortex-m7', known: cortex-m0plus, cortex-m4f, linux-gateway"),
    ({"fleet": [{"profile": "cortex-m4f", "count": True, "endpoint_prefix": "a"}]},
     "fleet[0].count: must be an integer, got true"),
    ({"fleet": [{"profile": "cortex-m4f", "count": 1}]}, "fleet[0].endpoint_prefix: is required"),
    ({"fleet": [{"profile": "cortex-m4f", "count": 1, "endpoint_prefix": "a"},
                {"profile": "cortex-m0plus", "count": 1, "endpoint_prefix": "a"}]},
     "fleet[1].endpoint_prefix: 'a' is already used by fleet[0]"),
    ({"fleet": {"profile": "x"}}, "fleet: must be a list, got a mapping"),
    ({"servers": "x"}, "servers: unknown key"),
    ({"concurrency": 0}, "concurrency: must be > 0, got 0"),
])
def test_config_errors_name_the_key_path(document, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert str(caught.value) == message


def _profile(**changes) -> dict:
    body = yaml.safe_load(yaml.safe_dump({"p": {
        "manufacturer": "ACME", "model": "x1", "firmware_version": "1", "ram": 1024, "flash": 4096,
        "tinyml": {"runtime": "tflite-micro", "runtime_version": "1", "operators": ["ADD"],
                   "model_ram": 1, "model_storage": 1, "arena_budget": 1, "cpu_core": "cortex-m0plus",
                   "cpu_clock": 1},
    }}))
    for dotted, value in changes.items():
        target = body["p"]
        *parents, last = dotted.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    return {"profiles": body}


@pytest.mark.parametrize("changes, message", [
    ({"tinyml__cpu_clock": 0}, "profiles.p.tinyml.cpu_clock: must be > 0, got 0"),
    ({"tinyml__operators": []}, "profiles.p.tinyml.operators: must not be empty"),
    ({"lwm2m_version": "2.0"}, "profiles.p.lwm2m_version: must be one of 1.0, 1.1, 1.2, got '2.0'"),
    ({"sensors": ["temperature", "sonar"]},
     "profiles.p.sensors[1]: must be one of temperature, humidity, accelerometer, generic, got 'sonar'"),
    ({"binding": "T"}, "profiles.p.binding: must be 'U' (the simulator speaks CoAP over UDP only), got 'T'"),
    ({"battery_level": 101}, "profiles.p.battery_level: must be <= 100, got 101"),
    ({"queue_mode": "yes"}, "profiles.p.queue_mode: must be true or false, got 'yes'"),
    ({"colour": "red"}, "profiles.p.colour: unknown key"),
    ({"power_sources": [{"type": "nuclear", "voltage_mv": 1, "current_ma": 1}]},
     "profiles.p.power_sources[0].type: must be one of dc, battery, external-battery, fuel-cell, poe, usb, ac, solar, got 'nuclear'"),
])
def test_profile_errors_name_the_key_path(changes, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(_profile(**changes))
    assert str(caught.value) == message


def test_profile_from_config_builds_a_device(registry):
    config = parse_config({**_profile(lwm2m_version=1.2, sensors=["generic", "generic"]),
                           "fleet": [{"profile": "p", "count": 2, "endpoint_prefix": "p"}]})
    profile = config.profiles["p"]
    assert profile.lwm2m_version == "1.2"
    device = DeviceObjects(registry, profile, endpoint="p-0001", now=0)
    assert device.instances(3300) == [0, 1] and device.get("/3300/1/5751") == "vibration"
    assert 11544 in device.content_formats


def test_unreadable_config_file_is_one_line(tmp_path):
    broken = tmp_path / "fleet.yaml"
    broken.write_text("fleet: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    assert "\n" not in str(caught.value) and "invalid YAML" in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
