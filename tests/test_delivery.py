"""SOTA/FOTA delivery state machine, driven by scripted device answers (no sockets)."""

import pytest

from ipso_objects import LwM2MPath, Resource
from lwm2m_server.ota.delivery import DeliveryJob, Expected, Mode, Phase, Step, StepKind, Target
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


# -- resumed in SEND: the write may have reached the device before the job was saved ---------------

RUNNING_KWS = {"/9/0/12": True, "/26241/0/10": "kws", "/26241/0/11": "1.0.0", "/26241/0/12": DIGEST}
RUNNING_OLD = {"/9/0/12": True, "/26241/0/10": "kws", "/26241/0/11": "0.9.0", "/26241/0/12": bytes(32)}


def resumed_in_send(job, now=100.0):
    """``job`` as a restart finds it: saved before its package write was answered."""
    assert job.phase is Phase.SEND
    copy = DeliveryJob.from_dict(job.to_dict())
    copy.resume(now)
    return copy


def check_send(job, answers, now=100.0):
    """Answer the resumed job's first step, which must read the update state; its next step."""
    step = job.next_step(now)
    state_paths = (P("/9/0/7"), P("/9/0/9")) if job.target is Target.SOFTWARE else (P("/5/0/3"), P("/5/0/5"))
    assert step.kind is StepKind.READ and step.paths[:2] == state_paths, step
    job.on_result(step, answers, now)
    return job.next_step(now)


@pytest.mark.parametrize("mode, state, result, expected", [
    (Mode.PUSH, 3, 3, (StepKind.EXECUTE, "/9/0/4")),           # delivered before the crash: Install, no write
    (Mode.PULL, 3, 3, (StepKind.EXECUTE, "/9/0/4")),
    (Mode.PUSH, 2, 1, (StepKind.READ, None)),                  # DOWNLOADED, being checked: wait for DELIVERED
    (Mode.PULL, 1, 1, (StepKind.READ, None)),                  # fetching the URI it was given: wait, no 2nd URI
    (Mode.PUSH, 1, 1, (StepKind.WRITE_PACKAGE, "/9/0/2")),     # a push cut off mid-transfer: write
    (Mode.PUSH, 0, 0, (StepKind.WRITE_PACKAGE, "/9/0/2")),     # nothing arrived: write
    (Mode.PULL, 0, 0, (StepKind.WRITE_URI, "/9/0/3")),
    (Mode.PUSH, 0, 53, (StepKind.WRITE_PACKAGE, "/9/0/2")),    # refused (or an older refusal): write
])
def test_a_sota_job_resumed_in_send_writes_only_when_the_device_lacks_the_package(mode, state, result, expected):
    job = resumed_in_send(sota(mode))
    following = check_send(job, reads({"/9/0/7": state, "/9/0/9": result, **RUNNING_OLD}))
    assert (following.kind, str(following.path) if following.path else None) == expected
    assert job.resumed


def test_a_resumed_sota_job_that_waits_for_the_download_goes_on_to_install():
    job = resumed_in_send(sota(Mode.PULL))
    check_send(job, reads({"/9/0/7": 1, "/9/0/9": 1, **RUNNING_OLD}))
    steps, last = drive(job, [reads({"/9/0/7": 3, "/9/0/9": 3}), OK, reads({"/9/0/7": 4, "/9/0/9": 2}), OK,
                              reads(RUNNING_KWS)], now=100.0)
    assert [kind for kind, _ in steps] == [StepKind.READ, StepKind.EXECUTE, StepKind.READ, StepKind.EXECUTE,
                                           StepKind.READ]  # no second URI write
    assert steps[1][1] == P("/9/0/4") and last.kind is StepKind.DONE


def test_installed_counts_as_done_only_when_the_expected_module_runs():
    """INSTALLED may be an earlier package's: the module's identity decides."""
    done = resumed_in_send(sota())
    assert check_send(done, reads({"/9/0/7": 4, "/9/0/9": 2, **RUNNING_KWS})).kind is StepKind.DONE
    older = resumed_in_send(sota())
    following = check_send(older, reads({"/9/0/7": 4, "/9/0/9": 2, **RUNNING_OLD}))
    assert following.kind is StepKind.WRITE_PACKAGE
    unconfirmed = resumed_in_send(sota())  # the identity cannot be read: not known to run, so written
    answers = {**reads({"/9/0/7": 4, "/9/0/9": 2, **RUNNING_KWS}), P("/26241/0/12"): Result(False, "4.04")}
    assert check_send(unconfirmed, answers).kind is StepKind.WRITE_PACKAGE


def test_a_resumed_job_never_writes_blindly_when_the_state_cannot_be_read():
    job = resumed_in_send(sota(phase_timeout_s=10))
    failed = {**reads(RUNNING_KWS), P("/9/0/7"): Result(False, "5.03"), P("/9/0/9"): Result(False, "5.03")}
    seen = []
    now = 100.0
    while not job.finished:
        step = job.next_step(now)
        seen.append(step.kind)
        if step.kind is StepKind.WAIT:
            now = step.at
        elif step.kind is StepKind.READ:
            job.on_result(step, failed, now)
    assert StepKind.WRITE_PACKAGE not in seen and seen.count(StepKind.READ) >= 5  # asked again each second
    assert job.phase is Phase.FAILED and "no progress in check_send" in job.reason


def test_a_job_resumed_again_while_checking_still_checks_first():
    job = resumed_in_send(sota())
    again = DeliveryJob.from_dict(job.to_dict())  # saved in check_send, then restarted once more
    again.resume(200.0)
    assert again.phase is Phase.CHECK_SEND and again.next_step(200.0).kind is StepKind.READ
    assert check_send(again, reads({"/9/0/7": 3, "/9/0/9": 3, **RUNNING_OLD}), 200.0).kind is StepKind.EXECUTE


def fota(expected=Expected(package_version="2.1.1"), mode=Mode.PUSH):
    return DeliveryJob(Target.FIRMWARE, mode, expected, uri="coap://s/fw/abc", poll_interval_s=1.0)


@pytest.mark.parametrize("job, values, expected", [
    (fota(), {"/5/0/3": 2, "/5/0/5": 0, "/5/0/7": "2.1.1"}, (StepKind.EXECUTE, "/5/0/2")),  # Downloaded: Update
    (fota(), {"/5/0/3": 0, "/5/0/5": 1, "/5/0/7": "2.1.1"}, (StepKind.DONE, None)),          # runs it already
    (fota(), {"/5/0/3": 0, "/5/0/5": 1, "/5/0/7": "2.0.0"}, (StepKind.WRITE_PACKAGE, "/5/0/0")),  # an older one
    (fota(Expected()), {"/5/0/3": 0, "/5/0/5": 1}, (StepKind.WRITE_PACKAGE, "/5/0/0")),      # cannot tell: write
    (fota(), {"/5/0/3": 0, "/5/0/5": 0, "/5/0/7": ""}, (StepKind.WRITE_PACKAGE, "/5/0/0")),
    (fota(mode=Mode.PULL), {"/5/0/3": 1, "/5/0/5": 0, "/5/0/7": ""}, (StepKind.READ, None)),  # downloading
    (fota(mode=Mode.PUSH), {"/5/0/3": 1, "/5/0/5": 0, "/5/0/7": ""}, (StepKind.WRITE_PACKAGE, "/5/0/0")),
])
def test_a_fota_job_resumed_in_send_writes_only_when_the_device_lacks_the_image(job, values, expected):
    job = resumed_in_send(job)
    following = check_send(job, reads(values))
    assert (following.kind, str(following.path) if following.path else None) == expected


def test_a_write_still_queued_for_a_sleeping_device_is_not_checked_first():
    """The caller found the package write unsent in the device's queue: nothing can have
    arrived, and the next step is that write (which the caller finds queued and waits for)."""
    job = resumed_in_send(sota())
    job.write_queued(100.0)
    assert job.next_step(100.0) == Step(StepKind.WRITE_PACKAGE, P("/9/0/2"))
    installing = sota()
    installing.phase = Phase.INSTALL
    installing.resume(100.0)
    installing.write_queued(100.0)  # only a job about to check what arrived is affected
    assert installing.phase is Phase.AWAIT_DOWNLOAD
