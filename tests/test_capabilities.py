"""Capability discovery: what is read, and the profile and device class it gives."""

from ipso_objects import LwM2MPath, MultiResource, ObjectInstance, Resource
from ipso_objects.nodes import Object
from lwm2m_server.core.capabilities import DeviceProfile, build_profile, discovery_paths, needs_discovery
from lwm2m_server.core.registration import RegistrationBook, parse_register

P = LwM2MPath.parse


def registration(payload: bytes):
    book = RegistrationBook()
    reg, _ = book.register(parse_register(["ep=d1"], payload), "127.0.0.1:1", 0.0)
    return reg


def tinyml(ops=("FULLY_CONNECTED", "SOFTMAX"), version="1.2.3", arena=16384):
    return ObjectInstance(0, {
        0: Resource(0, "tflite-micro"), 1: Resource(1, version),
        2: MultiResource(2, {i: op for i, op in enumerate(ops)}),
        3: Resource(3, 32768), 4: Resource(4, 262144), 5: Resource(5, arena),
        6: Resource(6, "cortex-m0plus"), 7: Resource(7, 48_000_000),
        8: MultiResource(8, {}), 9: MultiResource(9, {0: "tflite"}),
        10: Resource(10, ""), 11: Resource(11, ""), 12: Resource(12, b""),
    })


def test_discovery_reads_only_advertised_objects():
    assert discovery_paths(registration(b"</1/0>,</3/0>")) == [P("/3/0")]
    full = registration(b"</3/0>,</5/0>,</9>,</26241/0>")
    # /5/0 in one read: state, result, package name and version, protocols, delivery method
    assert discovery_paths(full) == [P("/3/0"), P("/5/0"), P("/9"), P("/26241/0")]


def test_profile_from_reads_and_problems():
    reads = {
        P("/3/0"): ObjectInstance(0, {0: Resource(0, "Acme"), 1: Resource(1, "M0"), 10: Resource(10, 12)}),
        P("/5/0/8"): MultiResource(8, {0: 0, 1: 1}),
        P("/5/0/9"): Resource(9, 2),
        P("/9"): Object(9, {0: ObjectInstance(0, {0: Resource(0, "model"), 1: Resource(1, "3"),
                                                  7: Resource(7, 4), 12: Resource(12, True)})}),
        P("/26241/0"): tinyml(),
    }
    profile = build_profile("d1", reads, 5.0)
    assert (profile.manufacturer, profile.model, profile.memory_free_kb) == ("Acme", "M0", 12)
    assert profile.firmware_protocols == (0, 1) and profile.firmware_delivery == 2
    assert profile.software_packages[0].name == "model" and profile.software_packages[0].activated
    assert profile.tinyml.runtime == "tflite-micro" and profile.tinyml.arena_budget_bytes == 16384
    assert profile.tinyml.operators == ("FULLY_CONNECTED", "SOFTMAX")
    assert DeviceProfile.from_dict(profile.to_dict()) == profile


def test_a_device_with_5_and_no_tinyml_object_has_a_firmware_class_from_3():
    reads = {
        P("/3/0"): ObjectInstance(0, {0: Resource(0, "Acme Corp."), 1: Resource(1, "Sensor X/2"),
                                      3: Resource(3, "zephyr-lwm2m 1.4"), 10: Resource(10, 300),
                                      18: Resource(18, "rev B")}),
        P("/5/0"): ObjectInstance(0, {3: Resource(3, 0), 5: Resource(5, 1), 6: Resource(6, "acme-fw"),
                                      7: Resource(7, "2.1.0"), 9: Resource(9, 1)}),
    }
    profile = build_profile("d2", reads, 5.0)
    assert profile.tinyml is None and profile.target_spec() is None and profile.firmware_object
    assert profile.device_class == profile.firmware_class == "fw-acme-corp.-sensor-x-2-rev-b"
    assert (profile.firmware_state, profile.firmware_result) == (0, 1)
    assert (profile.package_name, profile.package_version, profile.free_storage_bytes) == ("acme-fw", "2.1.0", 300 * 1024)
    assert DeviceProfile.from_dict(profile.to_dict()) == profile
    assert build_profile("d3", {P("/3/0"): reads[P("/3/0")]}, 5.0).device_class is None  # no /5: nothing to update

    failed = build_profile("d1", {P("/3/0"): "4.04 Not Found"}, 5.0)
    assert failed.problems == ("/3/0: 4.04 Not Found",) and failed.tinyml is None


def test_device_class_ignores_memory_and_patch_version_but_not_ops():
    def cls(**kwargs):
        return build_profile("d", {P("/26241/0"): tinyml(**kwargs)}, 0).device_class

    assert cls() == cls(arena=99999) == cls(version="1.2.9")
    assert cls() != cls(ops=("FULLY_CONNECTED",)) and cls() != cls(version="1.3.0")
    assert cls().startswith("tflite-micro-1.2-cortex-m0plus-")


def test_rediscovery_when_the_object_list_changes():
    before = registration(b"</3/0>")
    assert needs_discovery(None, before)
    assert not needs_discovery(before, registration(b"</3/0>"))
    assert needs_discovery(before, registration(b"</3/0>,</26241/0>"))


def test_a_read_composite_answer_is_taken_under_the_paths_asked_for():
    from lwm2m_server.core.capabilities import profile_from_composite
    P = LwM2MPath.parse
    values = {P("/3/0/0"): "Acme", P("/3/0/3"): "1.0", P("/26241/0/0"): "tflite-micro", P("/3/1/0"): "Other",
              P("/5/1/3"): 2}
    profile = profile_from_composite("dev", [P("/3/0"), P("/5/0"), P("/9"), P("/26241/0")], values, 1.0)
    assert profile.manufacturer == "Acme" and profile.firmware_version == "1.0"
    assert profile.tinyml.runtime == "tflite-micro"
    assert profile.software_packages == ()  # an object with no instances reads as empty
    assert not profile.firmware_object  # /5/1 was not asked for: not the device's to add
    assert profile.problems == ("/5/0: 4.04 not in the Read-Composite answer",)  # as a Read of it would fail