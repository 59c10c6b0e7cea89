"""Rollout planning: selection, canaries, in-flight cap, retries, pausing (no I/O)."""

from dataclasses import replace

import pytest

from lwm2m_server.core.capabilities import DeviceProfile, TinyMLCapability
from lwm2m_server.ota.rollouts import (
    DeviceRollout, DeviceStatus as S, Rollout, RolloutError, RolloutState, Selector, Strategy,
    after_failure, assign_canaries, next_devices, should_pause, summarize,
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
    ("mode", "carrier-pigeon"),
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
