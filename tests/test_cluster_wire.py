"""What crosses the cluster bus: each record back equal after its plain (CBOR) form."""

from __future__ import annotations

import cbor2

from ipso_objects import LwM2MPath, ObjectRegistry
from ipso_objects.codecs.base import TimestampedValues
from lwm2m_server.cluster import wire
from lwm2m_server.core import operations
from lwm2m_server.core.registration import ObjectLink, ObjectList, Registration
from lwm2m_server.core.responses import UNREACHABLE, Result, decode_response
from lwm2m_server.ota.deployment import Artifact
from lwm2m_server.store.base import QueueEntry

P = LwM2MPath.parse
REGISTRY = ObjectRegistry.default()
REGISTRATION = Registration(
    id="r1", endpoint="dev-1", address="[2001:db8::1]:5683", lifetime=300, lwm2m_version="1.1", binding="UQ",
    queue_mode=True, sms=None,
    object_list=ObjectList("/", (110, 112), (ObjectLink(P("/3/0"), None), ObjectLink(P("/5"), "1.1"))),
    registered_at=100.0, updated_at=150.5, extra={"apn": "iot"}, identity="dev-1-psk",
)


def through_cbor(value):
    return cbor2.loads(cbor2.dumps(value))


def test_a_registration_comes_back_equal():
    assert wire.registration_from_wire(through_cbor(wire.registration_to_wire(REGISTRATION))) == REGISTRATION


def test_a_request_and_its_result_come_back_and_decode_with_the_leaders_model():
    request = operations.read(REGISTRATION, P("/3/0/0"), registry=REGISTRY)
    assert wire.request_from_wire(through_cbor(wire.request_to_wire(request))) == request
    result = decode_response(request, "2.05", 0, b"Acme", REGISTRY)
    again = wire.result_from_wire(request, through_cbor(wire.result_to_wire(result)), REGISTRY)
    assert again.ok and again.node == result.node and again.code == "2.05"


def test_an_unreachable_device_keeps_the_workers_reason():
    request = operations.read(REGISTRATION, P("/3/0/0"), registry=REGISTRY)
    result = Result(ok=False, code=UNREACHABLE, diagnostic="device unreachable: no response within 93 s")
    again = wire.result_from_wire(request, through_cbor(wire.result_to_wire(result)), REGISTRY)
    assert (again.ok, again.code, again.diagnostic) == (False, UNREACHABLE, result.diagnostic)


def test_a_notification_decodes_as_observe_of_its_paths():
    request = wire.observed_request((P("/5/0/3"),))
    result = decode_response(request, "2.05", 0, b"1", REGISTRY)
    assert wire.result_from_wire(request, through_cbor(wire.result_to_wire(result)), REGISTRY).node.value == 1
    composite = wire.observed_request((P("/5/0/3"), P("/5/0/5")))
    assert composite.kind is operations.Operation.OBSERVE_COMPOSITE and composite.paths == (P("/5/0/3"), P("/5/0/5"))


def test_an_event_keeps_what_the_leaders_listeners_read():
    entry = QueueEntry("q1", "dev-1", 1.0, 2.0, request={"kind": "READ"})
    sent = [TimestampedValues(None, {P("/3303/0/5700"): 21.5})]
    message = through_cbor(wire.event_to_wire("send", "dev-1", {"registration": REGISTRATION, "entry": entry,
                                                                 "entries": sent, "reason": "r"}, 3, REGISTRY))
    assert (message["kind"], message["endpoint"], message["worker"], message["reason"]) == ("send", "dev-1", 3, "r")
    assert wire.registration_from_wire(message["registration"]) == REGISTRATION
    assert wire.entry_from_wire(message["entry"]) == entry
    assert wire.entries_from_wire(message["entries"], REGISTRY) == sent


def test_an_artifact_comes_back_equal():
    artifact = Artifact("/data/modules/abc.suit", "abc", 10, "00" * 32, "11" * 32, 7, "cls", "tflm", 2048)
    assert wire.artifact_from_wire(through_cbor(wire.artifact_to_wire(artifact))) == artifact
