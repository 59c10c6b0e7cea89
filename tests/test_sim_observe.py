"""Observation timing with explicit times: pmin, pmax, gt, lt, st, epmin, epmax,
inheritance and Server object defaults."""

from __future__ import annotations

from ipso_objects import LwM2MPath
from ipso_objects.codecs.link_format import NotificationAttributes as NA
from simulators.observe import EffectiveAttributes, Observation, effective_attributes

TEMP = LwM2MPath.of(3303, 0, 5700)


def observe(value, **attributes) -> Observation:
    return Observation(b"\x01", [TEMP], EffectiveAttributes(**attributes), 0.0, value)


def test_inheritance_resource_over_instance_over_object():
    assigned = {
        LwM2MPath.of(3303): NA(pmin=10, pmax=100),
        LwM2MPath.of(3303, 0): NA(pmin=20),
        TEMP: NA(pmax=60, gt=30.0),
    }
    effective = effective_attributes(TEMP, assigned, default_pmin=1, default_pmax=500)
    assert (effective.pmin, effective.pmax, effective.gt) == (20, 60, 30.0)
    # the instance itself does not see the resource's attributes
    instance = effective_attributes(LwM2MPath.of(3303, 0), assigned)
    assert (instance.pmin, instance.pmax, instance.gt) == (20, 100, None)


def test_server_defaults_fill_pmin_pmax_and_pmax_not_above_pmin_is_ignored():
    assert effective_attributes(TEMP, {}, default_pmin=5, default_pmax=60) == EffectiveAttributes(pmin=5, pmax=60)
    assert effective_attributes(TEMP, {}) == EffectiveAttributes(pmin=0, pmax=None)
    assert effective_attributes(TEMP, {TEMP: NA(pmin=30, pmax=30)}).pmax is None
    assert effective_attributes(TEMP, {TEMP: NA(epmin=10, epmax=5)}).epmax is None


def test_change_conditions_only_count_at_resource_level():
    assigned = {LwM2MPath.of(3303, 0): NA(st=1.0)}
    assert effective_attributes(TEMP, assigned).st is None


def test_any_change_notifies_without_conditions():
    observation = observe(20.0)
    assert not observation.should_notify(1.0, 20.0)
    assert observation.should_notify(2.0, 20.5)
    assert not observation.should_notify(3.0, 20.5)
    assert observation.next_deadline(3.0) is None


def test_pmin_holds_a_change_until_it_expires():
    observation = observe(20.0, pmin=10)
    assert not observation.should_notify(3.0, 21.0)
    assert observation.next_deadline(3.0) == 10.0
    assert not observation.should_notify(9.9, 21.0)
    assert observation.should_notify(10.0, 21.0)  # sent as soon as pmin expires
    assert observation.next_deadline(10.0) is None
    assert not observation.should_notify(12.0, 22.0)
    assert observation.next_deadline(12.0) == 20.0


def test_pmax_notifies_without_change():
    observation = observe(20.0, pmin=1, pmax=30)
    assert observation.next_deadline(0.0) == 30.0
    assert not observation.should_notify(29.0, 20.0)
    assert observation.should_notify(30.0, 20.0)
    assert observation.next_deadline(30.0) == 60.0


def test_gt_notifies_on_crossing_in_either_direction_only():
    observation = observe(20.0, gt=30.0)
    assert not observation.should_notify(1.0, 25.0)
    assert observation.should_notify(2.0, 31.0)
    assert not observation.should_notify(3.0, 35.0)
    assert observation.should_notify(4.0, 29.0)


def test_lt_notifies_on_crossing():
    observation = observe(20.0, lt=10.0)
    assert not observation.should_notify(1.0, 12.0)
    assert observation.should_notify(2.0, 9.5)
    assert not observation.should_notify(3.0, 8.0)
    assert observation.should_notify(4.0, 10.5)


def test_st_measures_from_the_last_notified_value():
    observation = observe(20.0, st=0.5)
    assert not observation.should_notify(1.0, 20.3)
    assert observation.should_notify(2.0, 20.6)
    assert not observation.should_notify(3.0, 20.2)
    assert observation.should_notify(4.0, 20.0)


def test_thresholds_respect_pmin():
    observation = observe(20.0, pmin=5, gt=30.0)
    assert not observation.should_notify(1.0, 31.0)
    assert observation.next_deadline(1.0) == 5.0
    assert observation.should_notify(5.0, 31.0)


def test_resource_read_as_leaves_counts_as_its_number():
    observation = observe({TEMP: 20.0}, st=1.0)
    assert not observation.should_notify(1.0, {TEMP: 20.5})
    assert observation.should_notify(2.0, {TEMP: 21.0})


def test_non_numeric_value_with_step_notifies_on_any_change():
    observation = observe("idle", st=1.0)
    assert observation.should_notify(1.0, "busy")


def test_epmin_defers_evaluation_and_epmax_forces_one():
    observation = observe(20.0, epmin=5, epmax=20)
    assert observation.next_deadline(0.0) == 20.0
    assert not observation.should_notify(2.0, 21.0)  # inside epmin: not sampled yet
    assert observation.next_deadline(2.0) == 5.0
    assert observation.should_notify(5.0, 21.0)
    assert observation.next_deadline(5.0) == 25.0


def test_composite_observation_notifies_when_any_path_is_due():
    humidity = LwM2MPath.of(3304, 0, 5700)
    attributes = {TEMP: EffectiveAttributes(st=1.0), humidity: EffectiveAttributes()}
    observation = Observation(b"\x02", [TEMP, humidity], attributes, 0.0, {TEMP: 20.0, humidity: 40.0})
    assert not observation.should_notify(1.0, {TEMP: 20.5, humidity: 40.0})
    assert observation.should_notify(2.0, {TEMP: 20.5, humidity: 41.0})
    assert not observation.should_notify(3.0, {TEMP: 20.5, humidity: 41.0})


def test_new_attributes_apply_to_a_running_observation():
    observation = observe(20.0)
    observation.set_attributes(EffectiveAttributes(pmin=100))
    assert not observation.should_notify(1.0, 25.0)
    assert observation.next_deadline(1.0) == 100.0
