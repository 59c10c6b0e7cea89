"""Queue mode rules, sans-I/O: when a sleeping device is reachable, which queued
request goes out on wake, and the life of a queued request."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ipso_objects import LwM2MPath
from lwm2m_server.core import operations as ops
from lwm2m_server.core.queue_mode import (
    MAX_TRANSMIT_WAIT, TRANSITIONS, DeviceQueue, QueuedRequest, QueueError, QueueModePolicy,
    QueueState, check_transition, plan_delivery,
)
from lwm2m_server.core.registration import ObjectList, Registration

S = QueueState


def device(queue_mode: bool, updated_at: float = 1000.0, lifetime: int = 3600) -> Registration:
    return Registration(
        id="r1", endpoint="sleepy", address="127.0.0.1:40000", lifetime=lifetime,
        lwm2m_version="1.1", binding="U", queue_mode=queue_mode, sms=None,
        object_list=ObjectList(), registered_at=updated_at, updated_at=updated_at,
    )


def entry(entry_id: str, created_at: float, expires_at: float | None = None,
          state: QueueState | str = S.PENDING) -> QueuedRequest:
    request = ops.read(device(True), LwM2MPath.parse("/3/0/9")).to_dict()
    return QueuedRequest(entry_id, "sleepy", created_at, expires_at, request, state)


# --- the awake window ------------------------------------------------------------------------

def test_default_window_is_max_transmit_wait():
    assert QueueModePolicy().awake_window_s == MAX_TRANSMIT_WAIT == 93.0


def test_device_without_queue_mode_is_always_reachable():
    policy = QueueModePolicy(awake_window_s=10)
    reg = device(queue_mode=False)
    assert policy.is_awake(reg, last_seen=1000, now=1000 + 3000)
    assert policy.awake_until(reg, 1000) is None


@pytest.mark.parametrize("now, awake", [
    (1000.0, True), (1005.0, True), (1030.0, True), (1030.001, False), (2000.0, False),
    (999.0, False),  # before the message that woke it: not evidence of being awake
])
def test_queue_mode_device_is_reachable_within_the_window(now, awake):
    policy = QueueModePolicy(awake_window_s=30)
    reg = device(queue_mode=True)
    assert policy.is_awake(reg, last_seen=1000.0, now=now) is awake
    assert policy.awake_until(reg, 1000.0) == 1030.0


def test_any_later_message_extends_the_window():
    policy = QueueModePolicy(awake_window_s=30)
    reg = device(queue_mode=True, updated_at=1000.0)
    # A notification, Send or response at 1025 counts, not only the Update at 1000.
    assert policy.is_awake(reg, last_seen=1025.0, now=1050.0)


def test_expired_registration_is_not_reachable():
    policy = QueueModePolicy()
    assert not policy.is_awake(device(False, updated_at=0, lifetime=60), last_seen=0, now=61)
    assert not policy.is_awake(device(True, updated_at=0, lifetime=60), last_seen=59, now=61)


@pytest.mark.parametrize("window", [0, -1])
def test_window_must_be_positive(window):
    with pytest.raises(QueueError, match="awake_window_s must be > 0"):
        QueueModePolicy(window)


# --- state transitions --------------------------------------------------------------------

@pytest.mark.parametrize("target", [S.DELIVERED, S.EXPIRED, S.FAILED, S.CANCELLED])
def test_pending_may_end_any_way(target):
    assert check_transition(S.PENDING, target) is target
    assert check_transition("pending", target.value) is target  # a store's strings work too


@pytest.mark.parametrize("current", [S.DELIVERED, S.EXPIRED, S.FAILED, S.CANCELLED])
@pytest.mark.parametrize("target", list(S))
def test_final_states_are_final(current, target):
    with pytest.raises(QueueError, match=f"a {current.value} request is final"):
        check_transition(current, target)


def test_pending_cannot_become_pending_and_unknown_states_are_refused():
    with pytest.raises(QueueError, match="a pending request cannot become pending"):
        check_transition(S.PENDING, S.PENDING)
    with pytest.raises(QueueError, match="'sent' is not a queue state"):
        check_transition(S.PENDING, "sent")
    assert set(TRANSITIONS) == set(S)


def test_entry_moves_and_keeps_its_result():
    done = entry("a", 1.0).moved_to(S.DELIVERED, {"ok": True, "code": "2.05"})
    assert (done.state, done.result) == (S.DELIVERED, {"ok": True, "code": "2.05"})
    with pytest.raises(QueueError):
        done.moved_to(S.CANCELLED)


def test_entry_dict_round_trip_with_the_request():
    original = entry("a", 10.0, 70.0)
    data = json.loads(json.dumps(original.to_dict()))
    assert data["state"] == "pending" and data["request"]["kind"] == "READ"
    assert QueuedRequest.from_dict(data) == original
    assert ops.DeviceRequest.from_dict(data["request"]).uri_path == ("3", "0", "9")
    with pytest.raises(QueueError, match="lacks 'endpoint'"):
        QueuedRequest.from_dict({"id": "x"})
    with pytest.raises(QueueError, match="not a queue state"):
        QueuedRequest.from_dict({**data, "state": "lost"})


# --- which request goes out -----------------------------------------------------------------

def test_oldest_unexpired_pending_goes_first():
    items = [entry("c", 30.0), entry("a", 10.0, expires_at=50.0), entry("b", 20.0),
             entry("z", 5.0, state=S.DELIVERED)]
    plan = plan_delivery(items, now=40.0)
    assert plan.deliver.id == "a" and plan.expire == () and plan.waiting == 2
    later = plan_delivery(items, now=50.0)  # "a" expires at 50
    assert later.deliver.id == "b" and [i.id for i in later.expire] == ["a"]


def test_ties_on_creation_time_go_by_id():
    plan = plan_delivery([entry("b", 1.0), entry("a", 1.0)], now=2.0)
    assert plan.deliver.id == "a"


def test_nothing_goes_out_while_busy_or_asleep():
    items = [entry("a", 1.0), entry("old", 0.0, expires_at=1.0)]
    for plan in (plan_delivery(items, 5.0, in_flight=True), plan_delivery(items, 5.0, awake=False)):
        assert plan.deliver is None and [i.id for i in plan.expire] == ["old"] and plan.waiting == 1


def test_store_entries_with_string_states_are_planned():
    rows = [SimpleNamespace(id="1", created_at=5.0, expires_at=None, state="pending"),
            SimpleNamespace(id="2", created_at=1.0, expires_at=None, state="cancelled")]
    assert plan_delivery(rows, now=10.0).deliver.id == "1"


# --- a device's queue ---------------------------------------------------------------------

def test_wake_delivers_one_at_a_time_in_order():
    queue = DeviceQueue("sleepy")
    for item in (entry("b", 2.0), entry("a", 1.0), entry("c", 3.0, expires_at=4.0)):
        queue.add(item)
    sent, expired = queue.next(now=3.5)
    assert sent.id == "a" and expired == [] and queue.in_flight == "a"
    assert queue.next(now=3.6) == (None, [])  # "a" is still unanswered
    queue.delivered("a", {"ok": True, "code": "2.05"})
    sent, expired = queue.next(now=3.7)
    assert sent.id == "b"
    queue.failed("b", "no response within 93 s")
    assert queue.entries["b"].state is S.FAILED
    assert queue.entries["b"].result == {"ok": False, "diagnostic": "no response within 93 s"}
    sent, expired = queue.next(now=4.0)  # "c" expired at 4.0
    assert sent is None and [e.id for e in expired] == ["c"]
    assert queue.entries["c"].state is S.EXPIRED and queue.pending() == []


def test_request_in_flight_does_not_expire_under_it():
    queue = DeviceQueue("sleepy")
    queue.add(entry("a", 1.0, expires_at=5.0))
    assert queue.next(now=2.0)[0].id == "a"
    assert queue.next(now=9.0) == (None, [])
    assert queue.delivered("a", {"ok": True}).state is S.DELIVERED


def test_asleep_device_gets_nothing_but_expiries():
    queue = DeviceQueue("sleepy")
    queue.add(entry("a", 1.0))
    assert queue.next(now=2.0, awake=False) == (None, [])
    assert queue.in_flight is None


def test_requeue_when_the_device_fell_asleep_before_sending():
    queue = DeviceQueue("sleepy")
    queue.add(entry("a", 1.0))
    queue.next(now=2.0)
    assert queue.requeue("a").state is S.PENDING and queue.in_flight is None
    assert queue.next(now=3.0)[0].id == "a"


def test_cancel_rules():
    queue = DeviceQueue("sleepy")
    queue.add(entry("a", 1.0))
    queue.add(entry("b", 2.0))
    queue.next(now=3.0)
    with pytest.raises(QueueError, match="entry a is being delivered"):
        queue.cancel("a")
    assert queue.cancel("b").state is S.CANCELLED
    with pytest.raises(QueueError, match="a cancelled request is final"):
        queue.cancel("b")
    with pytest.raises(QueueError, match="no entry nope"):
        queue.cancel("nope")


def test_only_the_request_in_flight_can_be_answered():
    queue = DeviceQueue("sleepy")
    queue.add(entry("a", 1.0))
    queue.add(entry("b", 2.0))
    with pytest.raises(QueueError, match=r"entry a is not the request in flight \(None\)"):
        queue.delivered("a", {"ok": True})
    queue.next(now=3.0)
    with pytest.raises(QueueError, match="entry b is not the request in flight"):
        queue.failed("b", "timeout")


def test_queue_refuses_foreign_and_duplicate_entries():
    queue = DeviceQueue("other")
    with pytest.raises(QueueError, match="is for sleepy, not other"):
        queue.add(entry("a", 1.0))
    queue = DeviceQueue("sleepy")
    queue.add(entry("a", 1.0))
    with pytest.raises(QueueError, match="already queued"):
        queue.add(entry("a", 2.0))
