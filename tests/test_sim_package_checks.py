"""What a simulated device checks of a package besides its signature, as a real one
must (simulators.package_checks): Install and Activate check the sequence number and
the class again across all /9 instances, and Update on /5; the manifest's command
sequences run (an Abort, an unknown command or a failed condition refuses the package
with its Update Result); and a management server cannot put its own trust anchor on
the device by deleting and re-creating /26241/0."""

from __future__ import annotations

import hashlib
import uuid

import cbor2
import pytest

from ipso_objects import LwM2MPath, MultiResource, Object, ObjectInstance, ObjectRegistry, Resource, codecs
from ipso_objects.codecs import ContentFormat as CF
from lwm2m_server.bootstrap_server import public_key_der
from lwm2m_server.core.bootstrap import TRUST_ANCHORS
from lwm2m_server.suit import generate_signing_key
from lwm2m_server.suit.cose import kid_for, sign1
from simulators.bootstrap import FINISHED, BootstrapInterface
from simulators.objects import DeviceObjects
from simulators.profiles import builtin_profiles
from test_sim_updates import (
    DENSE, KEY, active, deploy, device, execute, firmware, fota, module, push, state,
)

REGISTRY = ObjectRegistry.default()
P = LwM2MPath.parse


def create_instance(objects: DeviceObjects, instance: int = 1) -> None:
    payload = codecs.encode(CF.TLV, Object(9, {instance: ObjectInstance(instance, {})}), P("/9"), REGISTRY)
    assert objects.handle("POST", ["9"], content_format=CF.TLV, payload=payload).code == "2.01"


def resigned(envelope: bytes, **sequences: list | None) -> bytes:
    """``envelope`` with manifest members replaced (``validate=[...]``, ``install=...``;
    None removes one), signed again with the trusted key."""
    labels = {"validate": 7, "load": 8, "invoke": 9, "install": 20}
    members = dict(cbor2.loads(envelope).value)
    manifest = cbor2.loads(members[3])
    for name, sequence in sequences.items():
        if sequence is None:
            manifest.pop(labels[name], None)
        else:
            manifest[labels[name]] = cbor2.dumps(sequence)
    manifest_bytes = cbor2.dumps(manifest, canonical=True)
    digest = cbor2.dumps([-16, hashlib.sha256(cbor2.dumps(manifest_bytes)).digest()])
    members[2] = cbor2.dumps([digest, sign1(digest, KEY, detached=True, kid=kid_for(KEY))])
    members[3] = manifest_bytes
    return cbor2.dumps(cbor2.CBORTag(107, members))


# -- anti-rollback across /9 instances ---------------------------------------------------------


def test_an_older_module_staged_in_another_instance_is_refused_at_install():
    objects = device()
    create_instance(objects)
    assert push(objects, module(objects, version="0.3.0", sequence=3), instance=1).code == "2.04"
    assert state(objects, 1) == (3, 3)  # delivered: nothing newer was active yet
    deploy(objects, module(objects, version="0.5.0", sequence=5))  # into /9/0, now active
    assert execute(objects, "/9/1/4").code == "2.04"
    assert state(objects, 1) == (0, 57), objects.get("/9/1/16")
    assert "sequence number 3 is not greater than 5" in objects.get("/9/1/16")
    assert execute(objects, "/9/1/10").code == "4.05"  # nothing installed to activate
    assert active(objects)[:2] == ("dense", "0.5.0") and objects.get("/9/1/0") == ""
    assert execute(objects, "/26241/0/18").code == "2.04"  # the newer model keeps running


def test_an_older_module_installed_in_another_instance_is_refused_at_activate():
    objects = device()
    create_instance(objects)
    push(objects, module(objects, version="0.3.0", sequence=3), instance=1)
    assert execute(objects, "/9/1/4").code == "2.04" and state(objects, 1) == (4, 2)
    deploy(objects, module(objects, version="0.5.0", sequence=5))
    assert execute(objects, "/9/1/10").code == "2.04"
    assert objects.get("/9/1/12") is False and state(objects, 1) == (4, 57), objects.get("/9/1/16")
    assert "not greater than 5" in objects.get("/9/1/16") and "0.5.0 still active" in objects.get("/9/1/16")
    assert active(objects)[:2] == ("dense", "0.5.0") and objects.get("/9/0/12") is True
    assert objects.updates.trust.sequence["software"] == 5


def test_install_refuses_a_module_not_newer_than_one_installed_elsewhere():
    objects = device()
    create_instance(objects)
    push(objects, module(objects, version="0.5.0", sequence=5))
    execute(objects, "/9/0/4")  # installed in /9/0, never activated: the counter is still unset
    for sequence in (4, 5):  # older, and the same number in another manifest
        push(objects, module(objects, version=f"0.{sequence}.9", sequence=sequence), instance=1)
        assert state(objects, 1) == (3, 3)
        execute(objects, "/9/1/4")
        assert state(objects, 1) == (0, 57) and "installed in /9/0 (dense 0.5.0)" in objects.get("/9/1/16")
    push(objects, module(objects, version="0.6.0", sequence=6), instance=1)
    execute(objects, "/9/1/4")
    assert state(objects, 1) == (4, 2)


def test_the_same_manifest_may_be_installed_and_activated_again():
    objects = device()
    envelope = module(objects, version="2.0.0", sequence=2)
    push(objects, envelope)
    execute(objects, "/9/0/4")
    push(objects, envelope)  # a server that restarted sends the package again
    assert execute(objects, "/9/0/4").code == "2.04" and state(objects) == (4, 2), objects.get("/9/0/16")
    execute(objects, "/9/0/10")
    assert active(objects)[1] == "2.0.0"
    execute(objects, "/9/0/11")  # deactivate, then activate the same module again
    assert execute(objects, "/9/0/10").code == "2.04" and objects.get("/9/0/12") is True


def test_a_class_change_after_delivery_is_refused_at_install_and_activate():
    objects = device()
    push(objects, module(objects, version="1.0.0", sequence=1))
    objects.set("/26241/0/1", "2026-06-01")  # a new ML runtime, as a firmware update brings it
    execute(objects, "/9/0/4")
    assert state(objects) == (0, 54) and "this device's class is now" in objects.get("/9/0/16")
    objects = device()
    push(objects, module(objects, version="1.0.0", sequence=1))
    execute(objects, "/9/0/4")
    objects.set("/26241/0/1", "2026-06-01")
    execute(objects, "/9/0/10")
    assert state(objects) == (4, 54) and objects.get("/9/0/12") is False and active(objects)[0] == ""


def test_firmware_update_checks_counter_and_class_again():
    objects = device("linux-gateway")
    objects.handle("PUT", ["5", "0", "0"], content_format=42, payload=firmware(objects, "6.7.0", sequence=3))
    assert fota(objects) == (2, 0)
    objects.updates.trust.sequence["firmware"] = 5  # a newer image was installed meanwhile (e.g. by a bootloader)
    assert execute(objects, "/5/0/2").code == "2.04"
    assert fota(objects) == (0, 8)  # firmware update failed
    assert objects.get("/3/0/3") == "6.6.31" and not objects.updates.reboot_requested
    objects.handle("PUT", ["5", "0", "0"], content_format=42, payload=firmware(objects, "6.8.0", sequence=6))
    objects.set("/26241/0/1", "9.9.9")  # the class the image was signed for is gone
    execute(objects, "/5/0/2")
    assert fota(objects) == (0, 6) and objects.get("/3/0/3") == "6.6.31"


# -- the manifest's command sequences ----------------------------------------------------------


def test_a_signed_validate_sequence_that_aborts_refuses_the_module():
    objects = device()
    envelope = resigned(module(objects), validate=[3, 15, 14, 15])
    assert push(objects, envelope).code == "2.04"
    assert state(objects) == (0, 58), objects.get("/9/0/16")
    assert "validate: condition abort failed" in objects.get("/9/0/16")
    assert execute(objects, "/9/0/4").code == "4.05" and active(objects) == ("", "", b"")


def test_an_invoke_sequence_that_aborts_keeps_the_previous_model():
    objects = device()
    deploy(objects, module(objects, version="1.0.0", sequence=1))
    envelope = resigned(module(objects, version="2.0.0", sequence=2), invoke=[14, 15])
    push(objects, envelope)
    assert execute(objects, "/9/0/4").code == "2.04" and state(objects) == (4, 2)
    execute(objects, "/9/0/10")
    assert state(objects) == (4, 58) and "invoke: condition abort" in objects.get("/9/0/16")
    assert active(objects)[1] == "1.0.0" and objects.updates.trust.sequence["software"] == 1


@pytest.mark.parametrize(("sequences", "result", "reason"), [
    ({"install": [20, {21: "#model"}, 21, 2, -300, b"x", 3, 15]}, 54, "custom command -300 is not supported"),
    ({"install": [20, {21: "#model"}, 21, 2, 11, 15]}, 54, "command 11 is not supported"),
    ({"validate": [20, {18: b"other"}, 6, 15]}, 53, "check content failed"),
    ({"validate": [20, {24: uuid.uuid4().bytes}, 24, 15]}, 54, "device identifier"),
    ({"install": [20, {21: "#model", 5: 1}, 5, 15, 21, 2, 3, 15]}, 54, "component slot"),
    ({"validate": [22, 2]}, 58, "source component is not set"),
    ({"install": [20, {21: "#model", 18: b"junk"}, 21, 2, 18, 2], "validate": None}, 53, "does not hold the image"),
])
def test_a_failing_command_sequence_refuses_the_module(sequences, result, reason):
    objects = device()
    push(objects, resigned(module(objects), **sequences))
    assert state(objects) == (0, result), objects.get("/9/0/16")
    assert reason in objects.get("/9/0/16")


def test_try_each_and_run_sequence_in_a_module_the_device_installs():
    objects = device()
    validate = [15, [cbor2.dumps([14, 15]), cbor2.dumps([3, 15])],  # the abort alternative fails softly
                32, cbor2.dumps([20, {13: True}, 14, 15])]  # a soft run-sequence just ends
    deploy(objects, resigned(module(objects), validate=validate))
    assert active(objects)[0] == "dense"


def test_a_module_the_server_builds_runs_every_sequence():
    objects = device("cortex-m4f")
    envelope = module(objects, sequence=9)
    deploy(objects, envelope)
    package = objects.updates.packages[0]
    assert package.contents == {(b"tinymlaas", b"model"): DENSE}
    assert active(objects)[2] == hashlib.sha256(DENSE).digest()


# -- bootstrap-only resources ------------------------------------------------------------------


def bootstrapped(anchor: bytes | None) -> BootstrapInterface:
    objects = DeviceObjects(REGISTRY, builtin_profiles()["cortex-m4f"], endpoint="dev-1", seed=1, now=1_700_000_000)
    interface = BootstrapInterface(objects, "coap://bs.example:5683", None)
    interface.begin()

    def write(path: str, node) -> None:
        payload = codecs.encode(CF.TLV, node, P(path), REGISTRY)
        assert interface.handle("PUT", path.strip("/").split("/"), content_format=CF.TLV, payload=payload).ok

    security = {0: "coap://lwm2m.example:5683", 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: 1}
    write("/0/1", ObjectInstance(1, {rid: Resource(rid, v) for rid, v in security.items()}))
    write("/1/0", ObjectInstance(0, {rid: Resource(rid, v) for rid, v in {0: 1, 1: 60, 6: False, 7: "U"}.items()}))
    if anchor is not None:
        write(str(TRUST_ANCHORS), MultiResource(21, {0: anchor}))
    assert interface.handle("POST", ["bs"]).code == "2.04" and interface.state == FINISHED
    return interface


def tinyml_instance(objects: DeviceObjects, anchor: bytes) -> bytes:
    values = {rid: objects.get(f"/26241/0/{rid}") for rid in (0, 1, 3, 4, 5, 6, 7)}
    resources = {rid: Resource(rid, value) for rid, value in values.items()}
    resources[21] = MultiResource(21, {0: anchor})
    return codecs.encode(CF.TLV, Object(26241, {0: ObjectInstance(0, resources)}), P("/26241"), REGISTRY)


def test_a_management_server_cannot_replace_the_trust_anchor_by_delete_and_create():
    signer, attacker = generate_signing_key(), generate_signing_key()
    interface = bootstrapped(public_key_der(signer))
    objects = interface.objects
    trusted = objects.updates.trust.anchors
    response = objects.handle("DELETE", ["26241", "0"])
    assert response.code == "4.05" and b"Bootstrap-Server" in response.payload
    created = objects.handle("POST", ["26241"], content_format=CF.TLV,
                             payload=tinyml_instance(objects, public_key_der(attacker)))
    assert created.code == "4.00"  # the instance is still there
    assert objects.get(TRUST_ANCHORS) == {0: public_key_der(signer)}
    assert objects.updates.trust.anchors == trusted
    push(objects, module(objects, key=attacker))
    assert state(objects) == (0, 53)


def test_a_re_created_instance_cannot_carry_a_trust_anchor():
    attacker = generate_signing_key()
    interface = bootstrapped(None)  # no anchor written: the instance holds nothing bootstrap-only
    objects = interface.objects
    payload = tinyml_instance(objects, public_key_der(attacker))
    assert objects.handle("DELETE", ["26241", "0"]).code == "2.02"
    response = objects.handle("POST", ["26241"], content_format=CF.TLV, payload=payload)
    assert response.code == "4.01" and b"/26241/0/21" in response.payload
    assert objects.instances(26241) == [] and objects.get(TRUST_ANCHORS) is None
    interface.begin()  # a later bootstrap that writes no anchors does not pick one up either
    assert interface.handle("POST", ["bs"]).code == "2.04"
    assert objects.updates.trust.anchors == interface.factory_anchors
    numbers = attacker.public_key().public_numbers()
    assert all(a.public_numbers() != numbers for a in objects.updates.trust.anchors)
