"""Rollout planning: selection, canaries, in-flight cap, retries, pausing (no I/O)."""

from dataclasses import replace

import pytest

from lwm2m_server.core.capabilities import DeviceProfile, TinyMLCapability
from lwm2m_server.ota.rollouts import (
    UNREACHABLE_BACKOFF_CAP_S, Claim, DeviceRollout, DeviceStatus as S, Rollout, RolloutError, RolloutState,
    DeviceTable, Selector, Strategy, after_failure, after_unreachable, assign_canaries, is_complete, next_devices,
    should_pause, summarize, superseded,
)


def profile(runtime="tflite-micro", cpu="cortex-m4f", manufacturer="Acme"):
    return DeviceProfile("x", 0.0, manufacturer=manufacturer,
                         tinyml=TinyMLCapability(runtime, "1.2.0", ("FULLY_CONNECTED",), cpu_core=cpu))


def test_selector_by_class_endpoint_and_label():
    m4f = profile()
    assert Selector().matches("anything", None)
    assert Selector(endpoints=("m4f-*",)).matches("m4f-0001", m4f)
    assert not Selector(endpoints=("m4f-*",)).matches("m0p-0001", m4f)
    assert Selector(device_classes=("tflite-micro-*",)).matches("a", m4f)
    assert not Selector(device_classes=("litert-*",)).matches("a", m4f)
    assert not Selector(device_classes=("tflite-micro-*",)).matches("a", None)  # not discovered yet
    assert Selector(labels={"cpu_core": "cortex-m4f", "manufacturer": "Acme"}).matches("a", m4f)
    assert not Selector(labels={"runtime": "litert"}).matches("a", m4f)


@pytest.mark.parametrize("field, value", [
    ("max_in_flight", 0), ("canary_fraction", 1.5), ("failure_threshold", 0), ("max_attempts", 0),
    ("mode", "carrier-pigeon"), ("follow", "yes"),
])
def test_strategy_validation(field, value):
    with pytest.raises(RolloutError, match=field):
        Strategy(**{field: value})


def devices(n):
    return [DeviceRollout(f"d{i:02d}") for i in range(n)]


def test_canaries_go_first_and_alone():
    rollout = Rollout("r1", "kws@1", strategy=Strategy(max_in_flight=5, canary_fraction=0.2))
    fleet = assign_canaries(devices(10), 0.2)
    assert [d.endpoint for d in fleet if d.canary] == ["d00", "d01"]
    assert next_devices(rollout, fleet, 0.0) == ["d00", "d01"]
    fleet = [replace(d, status=S.DONE) if d.canary else d for d in fleet]
    assert next_devices(rollout, fleet, 0.0) == ["d02", "d03", "d04", "d05", "d06"]


def test_in_flight_cap_and_paused_rollouts_start_nothing():
    rollout = Rollout("r1", "kws@1", strategy=Strategy(max_in_flight=3, canary_fraction=0))
    fleet = [replace(d, status=S.IN_FLIGHT) if i < 2 else d for i, d in enumerate(devices(6))]
    assert next_devices(rollout, fleet, 0.0) == ["d02"]
    assert next_devices(replace(rollout, state=RolloutState.PAUSED), fleet, 0.0) == []


def test_retry_with_doubling_backoff_then_failure():
    strategy = Strategy(max_attempts=3, retry_backoff_s=10)
    device = replace(DeviceRollout("d"), attempts=1, status=S.IN_FLIGHT)
    device = after_failure(device, strategy, "timeout", 100.0)
    assert device.status is S.RETRY_WAIT and device.next_attempt_at == 110.0
    rollout = Rollout("r", "m", strategy=replace(strategy, canary_fraction=0))
    assert next_devices(rollout, [device], 105.0) == [] and next_devices(rollout, [device], 110.0) == ["d"]
    device = after_failure(replace(device, attempts=2), strategy, "timeout", 200.0)
    assert device.next_attempt_at == 220.0
    device = after_failure(replace(device, attempts=3), strategy, "integrity check failed", 300.0)
    assert device.status is S.FAILED and device.reason == "integrity check failed"


def test_failure_threshold_pauses():
    rollout = Rollout("r", "m", strategy=Strategy(failure_threshold=0.5))
    fleet = [replace(d, status=S.DONE) for d in devices(3)] + [replace(DeviceRollout("x"), status=S.FAILED)]
    assert should_pause(rollout, fleet) is None
    fleet += [replace(DeviceRollout("y"), status=S.FAILED), replace(DeviceRollout("z"), status=S.ROLLED_BACK)]
    assert "3 of 6 finished devices failed" in should_pause(rollout, fleet)


def test_round_trips_and_summary():
    rollout = Rollout("r", "kws@1.0", Selector(("tflite-micro-*",), ("m4f-*",), {"cpu_core": "x"}),
                      Strategy(mode="pull"), created_at=5.0)
    assert Rollout.from_dict(rollout.to_dict()) == rollout
    device = DeviceRollout("d", S.INCOMPATIBLE, reason="op CONV_2D unsupported")
    assert DeviceRollout.from_dict(device.to_dict()) == device
    summary = summarize([device, DeviceRollout("e", S.DONE), DeviceRollout("f")])
    assert summary.total == 3 and summary.finished == 2 and summary.counts["pending"] == 1


def test_an_unreachable_device_keeps_its_delivery_uses_no_attempt_and_backs_off():
    strategy = Strategy(max_attempts=1, retry_backoff_s=10)
    job = {"phase": "await_install"}
    device = DeviceRollout("d", S.IN_FLIGHT, attempts=1, job=job)
    device = after_unreachable(device, strategy, "no response within 5 s", 100.0)
    assert (device.status, device.attempts, device.job, device.unreachable) == (S.RETRY_WAIT, 1, job, 1)
    assert device.reason == "unreachable: no response within 5 s" and device.next_attempt_at == 110.0
    device = after_unreachable(replace(device, status=S.IN_FLIGHT), strategy, "again", 200.0)
    assert device.next_attempt_at == 220.0 and device.status is S.RETRY_WAIT  # max_attempts 1: still not failed
    for _ in range(20):
        device = after_unreachable(device, strategy, "still", 300.0)
    assert device.next_attempt_at == 300.0 + UNREACHABLE_BACKOFF_CAP_S
    answered = after_failure(device, strategy, "integrity check failed", 400.0)  # the device spoke: counts
    assert (answered.status, answered.unreachable, answered.job) == (S.FAILED, 0, None)


def test_unreachable_devices_hold_no_slot_and_come_back_when_heard_from():
    rollout = Rollout("r", "m", strategy=Strategy(max_in_flight=2, canary_fraction=0))
    away = [after_unreachable(DeviceRollout(f"a{i}", S.IN_FLIGHT, attempts=1), rollout.strategy, "x", 100.0)
            for i in range(2)]
    fleet = away + [DeviceRollout("b0"), DeviceRollout("b1")]
    assert next_devices(rollout, fleet, 101.0) == ["b0", "b1"]
    # a0 sent an Update after it was given up on; a1's last Update is older
    assert next_devices(rollout, fleet, 101.0, {"a0": 100.5, "a1": 99.0}.get) == ["a0", "b0"]
    failed = after_failure(DeviceRollout("c", S.IN_FLIGHT, attempts=1), Strategy(retry_backoff_s=10), "refused", 100.0)
    assert next_devices(rollout, [failed], 101.0, {"c": 100.5}.get) == []  # a refusal waits its backoff out


def test_a_rollout_completes_when_every_device_is_final_unless_it_follows():
    rollout = Rollout("r", "m")
    assert not is_complete(rollout, [])  # nothing matched yet: it waits for a first device
    final = [DeviceRollout("a", S.DONE), DeviceRollout("b", S.INCOMPATIBLE), DeviceRollout("c", S.SUPERSEDED),
             DeviceRollout("d", S.FAILED), DeviceRollout("e", S.ROLLED_BACK)]
    assert is_complete(rollout, final)
    assert not is_complete(rollout, final + [DeviceRollout("f", S.RETRY_WAIT, unreachable=3)])
    assert not is_complete(replace(rollout, strategy=Strategy(follow=True)), final)
    assert not is_complete(replace(rollout, state=RolloutState.PAUSED), final)
    assert summarize(final).finished == 5


def test_the_newest_rollout_for_a_target_supersedes_older_unfinished_deliveries():
    old = Rollout("r-old", "kws@1", created_at=1.0)
    mid = Rollout("r-mid", "kws@2", created_at=2.0)
    new = Rollout("r-new", "kws@3", created_at=3.0)
    claims = [
        Claim(old, DeviceRollout("d1", S.IN_FLIGHT), "/9/0"),
        Claim(mid, DeviceRollout("d1", S.PENDING), "/9/0"),
        Claim(new, DeviceRollout("d1", S.RETRY_WAIT), "/9/0"),
        Claim(old, DeviceRollout("d2", S.IN_FLIGHT), "/9/0"),
        Claim(new, DeviceRollout("d2", S.INCOMPATIBLE), "/9/0"),  # cannot take it: the older goes on
        Claim(old, DeviceRollout("d3", S.IN_FLIGHT), "/5/0"),  # firmware and software do not collide
        Claim(new, DeviceRollout("d3", S.PENDING), "/9/0"),
        Claim(old, DeviceRollout("d4", S.DONE), "/9/0"),  # finished: left as it is
        Claim(new, DeviceRollout("d4", S.PENDING), "/9/0"),
        Claim(mid, DeviceRollout("d5", S.PENDING), "/9/0"),  # a newer rollout already decided d5
        Claim(replace(new, state=RolloutState.COMPLETE), DeviceRollout("d5", S.DONE), "/9/0"),
        Claim(mid, DeviceRollout("d6", S.PENDING), "/9/0"),  # a cancelled rollout claims nothing
        Claim(replace(new, state=RolloutState.CANCELLED), DeviceRollout("d6", S.IN_FLIGHT), "/9/0"),
    ]
    got = sorted((c.rollout.id, c.device.endpoint, by.id) for c, by in superseded(claims))
    assert got == [("r-mid", "d1", "r-new"), ("r-mid", "d5", "r-new"), ("r-old", "d1", "r-new")]


def test_follow_and_unreachable_round_trip_and_old_records_load():
    rollout = Rollout("r", "kws@1.0", strategy=Strategy(follow=True))
    assert Rollout.from_dict(rollout.to_dict()) == rollout
    assert Rollout.from_dict(replace(rollout, strategy=Strategy()).to_dict()).strategy.follow is False
    saved_before_follow = rollout.to_dict()
    del saved_before_follow["strategy"]["follow"]
    assert Rollout.from_dict(saved_before_follow).strategy.follow is True  # such rollouts always enrolled newcomers
    device = DeviceRollout("d", S.SUPERSEDED, reason="superseded by rollout r2", unreachable=2)
    assert DeviceRollout.from_dict(device.to_dict()) == device
    old = device.to_dict()
    del old["unreachable"]
    assert DeviceRollout.from_dict(old).unreachable == 0


def test_a_device_table_counts_statuses_as_they_change():
    table = DeviceTable(devices(4))
    table["d00"] = replace(table["d00"], status=S.IN_FLIGHT)
    table["d01"] = replace(table["d01"], status=S.DONE)
    table["d00"] = replace(table["d00"], status=S.DONE)
    table["d09"] = replace(DeviceRollout("d09"), status=S.INCOMPATIBLE)
    assert table.summary() == summarize(table.values())
    assert dict(table.summary().counts) == {"pending": 2, "done": 2, "incompatible": 1}
    table["d02"] = replace(table["d02"], canary=True)
    table["d03"] = replace(table["d03"], status=S.RETRY_WAIT)
    assert {status: sorted(table.endpoints_with(status)) for status in S if table.endpoints_with(status)} == {
        S.PENDING: ["d02"], S.RETRY_WAIT: ["d03"], S.DONE: ["d00", "d01"], S.INCOMPATIBLE: ["d09"]}
    assert [d.endpoint for d in table.canaries()] == ["d02"]
    table["d02"] = replace(table["d02"], canary=False)
    assert table.canaries() == []
