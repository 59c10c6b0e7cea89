"""What crosses the cluster bus: each record back equal after its plain (CBOR) form."""

from __future__ import annotations

import json
import cbor2
import pytest

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


@pytest.mark.parametrize("objects", [[["/3/0", ["1.1"]]], [["/3/0", 1]], [["3/0", None]], "x"])
def test_a_malformed_object_list_is_refused_every_time(objects):
    """Object lists are decoded once per distinct text; a refusal is not remembered as an answer."""
    message = through_cbor(wire.registration_to_wire(REGISTRATION))
    message["object_list"] = json.dumps({"root_path": "/", "content_formats": [], "objects": objects})
    for _ in range(2):
        with pytest.raises((KeyError, ValueError, TypeError)):
            wire.registration_from_wire(message)


def test_registrations_of_one_object_list_share_it():
    first, second = (wire.registration_from_wire(through_cbor(wire.registration_to_wire(REGISTRATION)))
                     for _ in range(2))
    assert first.object_list is second.object_list == REGISTRATION.object_list


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


def events_of(count: int) -> list[dict]:
    """``count`` events of alternating kinds, each naming its place in the sequence."""
    kinds = ("registered", "profile", "updated", "deregistered")
    return [wire.event_to_wire(kinds[i % 4], f"dev-{i}", {"registration": REGISTRATION}, "n1-1", REGISTRY)
            for i in range(count)]


def test_a_batch_of_events_comes_back_in_one_message_in_order():
    events = events_of(40)
    messages = wire.encode_batches("events", "n1-1", events)
    assert len(messages) == 1
    worker, again = wire.batch_items(cbor2.loads(messages[0]), "events")
    assert worker == "n1-1" and again == events
    assert [wire.registration_from_wire(e["registration"]) for e in again] == [REGISTRATION] * 40


def test_a_batch_over_the_size_bound_is_split_in_order_and_every_part_fits():
    events = events_of(100)
    whole = len(wire.encode_batches("events", "n1-1", events)[0])
    bound = whole // 5
    messages = wire.encode_batches("events", "n1-1", events, max_bytes=bound)
    assert len(messages) >= 5 and all(len(message) <= bound for message in messages)
    parts = [wire.batch_items(cbor2.loads(message), "events") for message in messages]
    assert {worker for worker, _ in parts} == {"n1-1"}
    assert [event for _, items in parts for event in items] == events  # none lost, none twice, same order


def test_an_event_bigger_than_the_bound_travels_alone():
    small, big = events_of(2), {"kind": "send", "endpoint": "dev-big", "blob": b"x" * 5000}
    messages = wire.encode_batches("events", "n1-1", [small[0], big, small[1]], max_bytes=2000)
    items = [wire.batch_items(cbor2.loads(message), "events")[1] for message in messages]
    assert [big] in items and [event for part in items for event in part] == [small[0], big, small[1]]


def test_the_default_bound_stays_under_natss_default_max_payload():
    assert wire.MAX_MESSAGE_BYTES <= 1024 * 1024
    endpoints = [f"device-with-a-rather-long-endpoint-name-{i:07d}" for i in range(30_000)]
    messages = wire.encode_batches("endpoints", "n1-1", endpoints)
    assert len(messages) > 1 and all(len(message) <= wire.MAX_MESSAGE_BYTES for message in messages)
    assert [e for message in messages for e in wire.batch_items(cbor2.loads(message), "endpoints")[1]] == endpoints


@pytest.mark.parametrize("message", [{"events": []}, {"worker": 3, "events": []}, {"worker": "n1-1"},
                                     {"worker": "n1-1", "events": {"kind": "registered"}}])
def test_a_malformed_batch_is_refused_with_a_reason(message):
    with pytest.raises(wire.MalformedBatch, match="a batch needs a text 'worker' and a list 'events'"):
        wire.batch_items(message, "events")
