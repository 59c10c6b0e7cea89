"""Rollouts against an unkind fleet, with real simulated devices in one process:
devices that do not answer, two rollouts for one device, rollouts that end or
follow, and a restart while a sleeping device's request waits in the queue."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from lwm2m_server.core.operations import DeviceRequest
from lwm2m_server.ota.orchestrator import Orchestrator
from lwm2m_server.ota.rollouts import DeviceStatus, RolloutState, Selector, Strategy
from simulators.profiles import get_profile
from test_orchestrator import MODEL, Stack


@pytest.fixture
async def stack(tmp_path):
    stack = await Stack().start(tmp_path)
    yield stack
    await stack.stop()


async def dead(stack: Stack, endpoint: str):
    """A device that registered and was discovered, then went silent without de-registering."""
    device = await stack.device(endpoint, "cortex-m4f")
    await device.stop(deregister=False)
    stack.devices.remove(device)
    return device


def by_endpoint(devices):
    return {d.endpoint: d for d in devices}


# -- unreachable devices -------------------------------------------------------------------------


async def test_unreachable_devices_give_their_slots_to_reachable_ones(stack):
    for endpoint in ("a-dead-0", "a-dead-1"):  # sorted first: they take both slots first
        await dead(stack, endpoint)
    live = [await stack.device(f"b-live-{i}", "cortex-m4f") for i in range(2)]
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    with capture_logs() as logs:
        started = time.monotonic()
        rollout = await stack.orchestrator.create(
            model.key, Selector(), Strategy(max_in_flight=2, canary_fraction=0, retry_backoff_s=30, mode="push"))
        await stack.wait(rollout.id, lambda r, ds: len(ds) == 4 and all(
            by_endpoint(ds)[d.endpoint].status is DeviceStatus.DONE for d in live), timeout=12)
        took = time.monotonic() - started
        # silence shows as an ICMP error at once, or (the kernel rate-limits those) as a 5 s timeout
        await stack.wait(rollout.id, lambda r, ds: all(d.status is not DeviceStatus.IN_FLIGHT for d in ds), 10)
        await asyncio.sleep(1.0)  # ten ticks: a device in backoff is not tried (or logged) again
    assert took < 10, took  # holding the slots until the phase timeout (20 s) would not do
    records = by_endpoint(stack.orchestrator.rollout(rollout.id)[1])
    for endpoint in ("a-dead-0", "a-dead-1"):
        record = records[endpoint]
        assert record.status is DeviceStatus.RETRY_WAIT and record.reason.startswith("unreachable:"), record
        assert record.unreachable == 1 and record.attempts == 1  # no attempt used up by the silence
        assert record.job is not None  # the same delivery goes on when the device is back
        said = [e for e in logs if e.get("ep") == endpoint and "unreachable" in e["event"]]
        assert [e["event"] for e in said if e["event"] == "delivery_unreachable"] == ["delivery_unreachable"]
        assert len(said) <= 2, said  # the rollout's line, and at most one from the request that failed
    assert rollout_state(stack, rollout.id) is RolloutState.RUNNING  # not complete, not paused
    assert all(d.objects.get("/26241/0/10") == "dense" for d in live)


async def test_a_resumed_delivery_to_a_silent_device_does_not_hold_its_slot(stack):
    """The restart case: deliveries in flight to devices that stopped answering."""
    doomed = [await stack.device(f"a-dead-{i}", "cortex-m4f") for i in range(2)]
    live = [await stack.device(f"b-live-{i}", "cortex-m4f") for i in range(2)]
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    strategy = Strategy(max_in_flight=2, canary_fraction=0, retry_backoff_s=30, mode="push")
    await stack.orchestrator.stop()  # created while the orchestrator is down: no device starts yet
    from lwm2m_server.ota.orchestrator import Orchestrator
    stack.orchestrator = Orchestrator(stack.server, stack.deployment, clock=time.time, interval=0.1)
    rollout = await stack.orchestrator.create(model.key, Selector(endpoints=("a-dead-*",)), strategy, "r-old")
    await stack.wait("r-old", lambda r, ds: len(ds) == 2 and all(
        d.job is not None and d.job["phase"] in ("await_install", "verify", "done") for d in ds), 15)
    await stack.orchestrator.stop()
    # the daemon died with both in flight, waiting for Update State 4; then the devices went silent
    for device in doomed:
        await device.stop(deregister=False)
        stack.devices.remove(device)
    for endpoint in ("a-dead-0", "a-dead-1"):
        record = by_endpoint(stack.orchestrator.rollout("r-old")[1])[endpoint]
        job = dict(record.job, phase="await_install", next_poll_at=0.0)
        await stack.store.put_document("rollout-device", f"r-old/{endpoint}",
                                       replace(record, status=DeviceStatus.IN_FLIGHT, job=job).to_dict(), time.time())
    rollout = replace(rollout, selector=Selector())
    await stack.store.put_document("rollout", "r-old", rollout.to_dict(), time.time())
    stack.orchestrator = Orchestrator(stack.server, stack.deployment, clock=time.time, interval=0.1)
    await stack.orchestrator.start()
    await stack.wait("r-old", lambda r, ds: len(ds) == 4 and all(
        by_endpoint(ds)[d.endpoint].status is DeviceStatus.DONE for d in live), timeout=12)  # phase timeout: 20 s
    _, records = await stack.wait("r-old", lambda r, ds: all(d.status is not DeviceStatus.IN_FLIGHT for d in ds), 10)
    records = by_endpoint(records)
    for endpoint in ("a-dead-0", "a-dead-1"):
        assert records[endpoint].status is DeviceStatus.RETRY_WAIT, records[endpoint]
        assert records[endpoint].job["phase"] == "await_install"  # kept: resumed, not restarted, later


async def test_a_silent_device_that_registers_again_is_retried_without_waiting_out_its_backoff(stack):
    device = await dead(stack, "m4f-away")
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    rollout = await stack.orchestrator.create(
        model.key, Selector(), Strategy(canary_fraction=0, retry_backoff_s=300, mode="push"))
    await stack.wait(rollout.id, lambda r, ds: ds and ds[0].unreachable == 1)
    await device.start()  # back, from a new port: a new Register
    stack.devices.append(device)
    rollout, devices = await stack.wait(rollout.id, lambda r, ds: ds[0].status is DeviceStatus.DONE, 15)
    assert devices[0].attempts == 1 and device.objects.get("/26241/0/10") == "dense"
    await stack.wait(rollout.id, lambda r, ds: r.state is RolloutState.COMPLETE, 5)  # at the next tick


# -- one delivery per device and target --------------------------------------------------------------


async def test_a_newer_rollout_supersedes_the_older_delivery_to_a_device(stack):
    device = await stack.device("m4f-1", "cortex-m4f")
    first = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    second = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "2.0")
    installs, held = [], asyncio.Event()
    perform = stack.server.perform

    async def slow_first_install(endpoint, build, **options):  # the device takes its time to install
        request = build(stack.server.registration(endpoint))
        if [str(p) for p in request.paths] == ["/9/0/4"]:
            installs.append(request)
            if len(installs) == 1:
                await held.wait()
        return await perform(endpoint, build, **options)

    stack.server.perform = slow_first_install
    strategy = Strategy(canary_fraction=0, mode="push", failure_threshold=0.5)
    older = await stack.orchestrator.create(first.key, Selector(), replace(strategy, follow=True), "r-older")
    async with asyncio.timeout(10):
        while not installs:  # the older delivery wrote its package and is about to install it
            await asyncio.sleep(0.02)
    newer = await stack.orchestrator.create(second.key, Selector(endpoints=("m4f-*",)), strategy, "r-newer")
    held.set()  # too late: the older delivery was stopped, its Install is never sent
    newer, devices = await stack.wait(newer.id, lambda r, ds: ds and ds[0].final, 30)
    assert devices[0].status is DeviceStatus.DONE, devices[0].reason
    assert device.objects.get("/26241/0/10") == "dense" and device.objects.get("/26241/0/11") == "2.0"
    older, old_devices = stack.orchestrator.rollout(older.id)
    assert old_devices[0].status is DeviceStatus.SUPERSEDED
    assert old_devices[0].reason == "superseded by rollout r-newer"
    assert old_devices[0].job["phase"] == "install" and len(installs) == 2  # the newer rollout's Install
    await asyncio.sleep(0.5)  # the older rollout follows and keeps ticking: it does not come back
    assert stack.orchestrator.rollout(older.id)[1] == old_devices
    assert older.state is RolloutState.RUNNING  # it follows
    await stack.wait(newer.id, lambda r, ds: r.state is RolloutState.COMPLETE, 5)
    assert device.objects.get("/26241/0/11") == "2.0"
    stored = await stack.store.get_document("rollout-device", "r-older/m4f-1")
    assert stored["status"] == "superseded"


async def test_a_device_a_newer_rollout_has_is_not_enrolled_for_delivery_by_an_older_one(stack):
    first = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    second = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "2.0")
    strategy = Strategy(canary_fraction=0, mode="push", follow=True)
    await stack.orchestrator.create(first.key, Selector(), strategy, "r-older")
    await stack.orchestrator.create(second.key, Selector(), strategy, "r-newer")
    device = await stack.device("m4f-late", "cortex-m4f")  # both match it when it arrives
    await stack.wait("r-newer", lambda r, ds: ds and ds[0].status is DeviceStatus.DONE)
    _, old_devices = stack.orchestrator.rollout("r-older")
    assert [(d.status, d.attempts, d.job) for d in old_devices] == [(DeviceStatus.SUPERSEDED, 0, None)]
    assert device.objects.get("/26241/0/11") == "2.0"


# -- complete, or follow ------------------------------------------------------------------------------


async def test_a_rollout_completes_unless_it_follows(stack):
    await stack.device("a-1", "cortex-m4f")
    await stack.device("f-1", "cortex-m4f")
    model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    strategy = Strategy(canary_fraction=0, mode="push")
    once = await stack.orchestrator.create(model.key, Selector(endpoints=("a-*",)), strategy)
    follows = await stack.orchestrator.create(model.key, Selector(endpoints=("f-*",)),
                                              replace(strategy, follow=True))
    once, _ = await stack.wait(once.id, lambda r, ds: r.state is RolloutState.COMPLETE)
    await stack.wait(follows.id, lambda r, ds: ds and ds[0].status is DeviceStatus.DONE)
    stored = await stack.store.get_document("rollout", once.id)
    assert stored["state"] == "complete"
    late_a = await stack.device("a-2", "cortex-m4f")
    late_f = await stack.device("f-2", "cortex-m4f")
    follows, devices = await stack.wait(follows.id, lambda r, ds: len(ds) == 2 and all(
        d.status is DeviceStatus.DONE for d in ds))
    assert follows.state is RolloutState.RUNNING and late_f.objects.get("/26241/0/10") == "dense"
    once, devices = stack.orchestrator.rollout(once.id)
    assert [d.endpoint for d in devices] == ["a-1"] and late_a.objects.get("/26241/0/10") == ""
    with pytest.raises(Exception, match="complete"):
        await stack.orchestrator.set_state(once.id, RolloutState.RUNNING)


async def test_a_device_heard_of_after_a_tick_took_the_noted_ones_is_noted_for_the_next(stack):
    """Enrolment looks at the devices noted since the last tick: one whose event comes while
    the watcher waits, after a tick took the set, must be in the new set (it once went into
    the taken one and its rollout never enrolled it, until the next full sweep a minute on)."""
    orchestrator = Orchestrator(stack.server, stack.deployment, clock=time.time, interval=3600)
    orchestrator._watch()
    try:
        await asyncio.sleep(0)  # the watcher waits for an event
        taken, orchestrator._arrived = orchestrator._arrived, set()  # what a tick does
        stack.server.events.publish("profile", endpoint="late-1")
        for _ in range(3):
            await asyncio.sleep(0)
        assert orchestrator._arrived == {"late-1"} and taken == set()
    finally:
        orchestrator._unwatch()


# -- a restart while a request waits for a sleeping device ---------------------------------------------


async def test_a_restart_does_not_queue_a_second_write_for_a_sleeping_device(tmp_path):
    stack = await Stack().start(tmp_path, awake_window_s=1.0)
    try:
        profile = replace(get_profile("cortex-m4f"), name="sleepy-m4f", queue_mode=True)
        device = await stack.device("m4f-sleepy", profile)
        await device.sleep()
        await asyncio.sleep(1.2)  # past its awake window: requests for it are queued
        model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
        rollout = await stack.orchestrator.create(model.key, Selector(), Strategy(canary_fraction=0, mode="push"))
        async with asyncio.timeout(10):
            while not (pending := await stack.server.pending_requests("m4f-sleepy")):
                await asyncio.sleep(0.05)
        for _ in range(2):
            await stack.restart()
            await asyncio.sleep(0.5)  # five ticks after the resume
            again = await stack.server.pending_requests("m4f-sleepy")
            assert [e.id for e in again] == [pending[0].id]
        await device.wake()
        _, devices = await stack.wait(rollout.id, lambda r, ds: ds[0].final, 30)
        assert devices[0].status is DeviceStatus.DONE, devices[0].reason
        writes = [e for e in await stack.store.entries("m4f-sleepy")
                  if [str(p) for p in DeviceRequest.from_dict(e.request).paths] == ["/9/0/2"]]
        assert [(e.id, e.state) for e in writes] == [(pending[0].id, "delivered")]
        assert device.objects.get("/26241/0/10") == "dense"
    finally:
        await stack.stop()


async def test_a_superseded_delivery_withdraws_what_it_queued_for_a_sleeping_device(tmp_path):
    stack = await Stack().start(tmp_path, awake_window_s=1.0)
    try:
        profile = replace(get_profile("cortex-m4f"), name="sleepy-m4f", queue_mode=True)
        device = await stack.device("m4f-sleepy", profile)
        await device.sleep()
        await asyncio.sleep(1.2)
        first = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
        second = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "2.0")
        strategy = Strategy(canary_fraction=0, mode="push")
        await stack.orchestrator.create(first.key, Selector(), strategy, "r-older")
        async with asyncio.timeout(10):
            while not (older_write := await stack.server.pending_requests("m4f-sleepy")):
                await asyncio.sleep(0.05)
        await stack.orchestrator.create(second.key, Selector(), strategy, "r-newer")
        async with asyncio.timeout(10):
            while [e.id for e in await stack.server.pending_requests("m4f-sleepy")] in ([], [older_write[0].id]):
                await asyncio.sleep(0.05)  # until the newer rollout's write waits in the queue
        assert (await stack.server.queue_entry(older_write[0].id)).state == "cancelled"
        await device.wake()
        _, devices = await stack.wait("r-newer", lambda r, ds: ds[0].final, 30)
        assert devices[0].status is DeviceStatus.DONE, devices[0].reason
        _, old_devices = stack.orchestrator.rollout("r-older")
        assert old_devices[0].status is DeviceStatus.SUPERSEDED and "r-newer" in old_devices[0].reason
        writes = [e.state for e in await stack.store.entries("m4f-sleepy")
                  if [str(p) for p in DeviceRequest.from_dict(e.request).paths] == ["/9/0/2"]]
        assert sorted(writes) == ["cancelled", "delivered"]  # the device got only the newer package
        assert device.objects.get("/26241/0/11") == "2.0"
    finally:
        await stack.stop()


# -- the command line and the API ---------------------------------------------------------------------


async def test_deploy_follow_from_the_command_line_and_the_api(stack):
    from lwm2m_server.api.http import ManagementApi
    from lwm2m_server.cli.main import main

    await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    api = ManagementApi(stack.server, "t0ken", port=0, deployment=stack.deployment, orchestrator=stack.orchestrator)
    await api.start()
    try:
        where = ["--api", f"http://127.0.0.1:{api.port}", "--token", "t0ken", "--canary", "0", "--endpoint", "x-*"]
        assert await asyncio.to_thread(main, ["deploy", "dense@1.0", "--id", "r-follows", "--follow", *where]) == 0
        assert await asyncio.to_thread(main, ["deploy", "dense@1.0", "--id", "r-once", *where]) == 0
        client_body = {"model": "dense@1.0", "id": "r-api", "follow": True, "strategy": {"canary_fraction": 0}}
        from lwm2m_server.cli.main import ApiClient
        status, body = await asyncio.to_thread(ApiClient(f"http://127.0.0.1:{api.port}", "t0ken").call,
                                               "POST", "/rollouts", client_body)
        assert status == 201 and body["strategy"]["follow"] is True
    finally:
        await api.stop()
    follows = {r.id: r.strategy.follow for r in stack.orchestrator.rollouts()}
    assert follows == {"r-follows": True, "r-once": False, "r-api": True}


def rollout_state(stack: Stack, rollout_id: str) -> RolloutState:
    return stack.orchestrator.rollout(rollout_id)[0].state
