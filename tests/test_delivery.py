"""SOTA/FOTA delivery state machine, driven by scripted device answers (no sockets)."""

import pytest

from ipso_objects import LwM2MPath, Resource
from lwm2m_server.ota.delivery import DeliveryJob, Expected, Mode, Phase, StepKind, Target
from lwm2m_server.core.responses import Result

P = LwM2MPath.parse
OK = Result(True, "2.04")
DIGEST = bytes(range(32))


def reads(values):
    return {P(path): Result(True, "2.05", node=Resource(P(path).ids[2], value)) for path, value in values.items()}


def sota(mode=Mode.PUSH, **kwargs):
    return DeliveryJob(Target.SOFTWARE, mode, Expected("kws", "1.0.0", DIGEST), uri="coap://s/fw/abc",
                       poll_interval_s=1.0, **kwargs)


def drive(job, answers, now=0.0):
    """Feed ``answers`` (per step kind) until the job stops asking; return the steps seen."""
    seen = []
    for answer in answers:
        step = job.next_step(now)
        while step.kind is StepKind.WAIT:
            now = step.at
            step = job.next_step(now)
        seen.append((step.kind, step.path or step.paths))
        job.on_result(step, answer, now)
    return seen, job.next_step(now)


def test_sota_push_happy_path():
    job = sota()
    steps, last = drive(job, [
        OK,
        reads({"/9/0/7": 1, "/9/0/9": 1}),            # downloading
        reads({"/9/0/7": 3, "/9/0/9": 3}),            # delivered (verified)
        Result(True, "2.04"),                          # Install
        reads({"/9/0/7": 4, "/9/0/9": 2}),            # installed
        Result(True, "2.04"),                          # Activate
        reads({"/9/0/12": True, "/26241/0/10": "kws", "/26241/0/11": "1.0.0", "/26241/0/12": DIGEST}),
    ])
    assert [kind for kind, _ in steps] == [
        StepKind.WRITE_PACKAGE, StepKind.READ, StepKind.READ, StepKind.EXECUTE, StepKind.READ,
        StepKind.EXECUTE, StepKind.READ,
    ]
    assert steps[0][1] == P("/9/0/2") and steps[3][1] == P("/9/0/4") and steps[5][1] == P("/9/0/10")
    assert last.kind is StepKind.DONE and job.phase is Phase.DONE


def test_sota_pull_writes_the_uri_and_reports_integrity_failure():
    job = sota(Mode.PULL)
    steps, last = drive(job, [OK, reads({"/9/0/7": 0, "/9/0/9": 53})])
    assert steps[0] == (StepKind.WRITE_URI, P("/9/0/3"))
    assert last.kind is StepKind.FAILED and "53: integrity check failed" in last.reason


def test_verification_compares_exactly():
    job = sota()
    _, last = drive(job, [
        OK, reads({"/9/0/7": 3, "/9/0/9": 3}), OK, reads({"/9/0/7": 4, "/9/0/9": 2}), OK,
        reads({"/9/0/12": True, "/26241/0/10": "kws", "/26241/0/11": "1.0.0-rc1", "/26241/0/12": DIGEST}),
    ])
    assert last.kind is StepKind.FAILED and "'1.0.0-rc1'" in last.reason


def test_fota_push():
    job = DeliveryJob(Target.FIRMWARE, Mode.PUSH, Expected(firmware_version="2.1.1"), poll_interval_s=1.0)
    steps, last = drive(job, [
        OK, reads({"/5/0/3": 2, "/5/0/5": 0}), OK, reads({"/5/0/3": 3, "/5/0/5": 0}),
        reads({"/5/0/3": 0, "/5/0/5": 1}), reads({"/3/0/3": "2.1.1"}),
    ])
    assert steps[0][1] == P("/5/0/0") and steps[2] == (StepKind.EXECUTE, P("/5/0/2"))
    assert last.kind is StepKind.DONE
    wrong = DeliveryJob(Target.FIRMWARE, Mode.PUSH, Expected(firmware_version="2.1"), poll_interval_s=1.0)
    _, last = drive(wrong, [OK, reads({"/5/0/3": 2, "/5/0/5": 0}), OK, reads({"/5/0/3": 0, "/5/0/5": 1}),
                            reads({"/3/0/3": "2.1.1"})])
    assert last.kind is StepKind.FAILED and "expected '2.1'" in last.reason  # no substring match


def test_refused_write_and_timeout():
    job = sota()
    _, last = drive(job, [Result(False, "4.13", diagnostic="too big")])
    assert last.kind is StepKind.FAILED and "package write refused: 4.13 too big" in last.reason
    job = sota(phase_timeout_s=5)
    job.next_step(0.0)
    job.on_result(job.next_step(0.0), OK, 0.0)
    for t in range(1, 5):
        job.on_result(job.next_step(float(t)), reads({"/9/0/7": 1, "/9/0/9": 1}), float(t))
    assert job.next_step(6.0).kind is StepKind.FAILED and "no progress" in job.reason


def test_lost_poll_is_retried_and_state_round_trips():
    job = sota()
    job.on_result(job.next_step(0.0), OK, 0.0)
    step = job.next_step(0.0)
    job.on_result(step, {P("/9/0/7"): Result(False, "unreachable"), P("/9/0/9"): Result(False, "unreachable")}, 0.0)
    assert job.phase is Phase.AWAIT_DOWNLOAD and job.next_step(0.5).kind is StepKind.WAIT
    copy = DeliveryJob.from_dict(job.to_dict())
    assert copy.to_dict() == job.to_dict()


@pytest.mark.parametrize("phase, state, expected_next", [
    (Phase.INSTALL, 4, StepKind.EXECUTE),       # installed before the crash: straight to Activate
    (Phase.INSTALL, 3, StepKind.EXECUTE),       # delivered: Install again
])
def test_resume_after_restart_rechecks_before_executing(phase, state, expected_next):
    job = sota()
    job.phase = phase
    job.resume(100.0)
    step = job.next_step(100.0)
    assert step.kind is StepKind.READ
    job.on_result(step, reads({"/9/0/7": state, "/9/0/9": 0}), 100.0)
    following = job.next_step(100.0)
    assert following.kind is expected_next
    assert following.path == (P("/9/0/10") if state == 4 else P("/9/0/4"))


def test_installed_state_counts_only_after_a_restart():
    """A device still showing INSTALLED from its previous package must not be taken
    as having installed the new one; after a restart it may really have."""
    job = sota()
    job.on_result(job.next_step(0.0), OK, 0.0)
    job.on_result(job.next_step(0.0), reads({"/9/0/7": 4, "/9/0/9": 2}), 0.0)
    step = job.next_step(0.0)
    assert step.kind is StepKind.EXECUTE and step.path == P("/9/0/4")  # install, not activate


def test_a_state_notification_ends_the_wait():
    job = sota()
    job.on_result(job.next_step(0.0), OK, 0.0)
    job.on_result(job.next_step(0.0), reads({"/9/0/7": 1, "/9/0/9": 1}), 0.0)
    assert job.next_step(0.1).kind is StepKind.WAIT and job.state_path == P("/9/0/7")
    job.state_changed(0.1)
    assert job.next_step(0.1).kind is StepKind.READ
