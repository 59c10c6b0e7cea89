"""Prometheus metrics at ``GET /metrics``: the families an operator scrapes, values
that move while devices register, are read and take a rollout, and who may scrape."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import replace
from unittest import mock

import aiohttp
import aiocoap
import pytest
from aiocoap import Code, Message, resource
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from ipso_objects import LwM2MPath
from lwm2m_server.api.http import ManagementApi
from lwm2m_server.config import parse_config
from lwm2m_server.config_values import ConfigError
from lwm2m_server.core import operations
from lwm2m_server.core.queue_mode import Queued
from lwm2m_server.metrics import needs_token, request_kind
from lwm2m_server.ota.rollouts import DeviceStatus, Selector, Strategy
from simulators.profiles import get_profile
from test_daemon import Daemon
from test_orchestrator import MODEL, Stack

TOKEN = "m3tr1cs-t0ken-0123456789"
FAMILIES = {
    "tinymlaas_registrations", "tinymlaas_requests_to_devices", "tinymlaas_request_to_device_duration_seconds",
    "tinymlaas_requests_from_devices", "tinymlaas_blockwise_blocks", "tinymlaas_blockwise_bytes",
    "tinymlaas_rollout_devices", "tinymlaas_rollouts", "tinymlaas_dtls_sessions", "tinymlaas_queue_depth",
    "tinymlaas_rate_limited_requests",
}
"""Family names as the parser gives them (a counter's without ``_total``)."""


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """Sample name → {sorted label items: value}."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def value(samples, name: str, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(samples, name: str, **labels) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels``."""
    return sum(v for key, v in samples.get(name, {}).items() if set(labels.items()) <= set(key))


@pytest.fixture
async def stack(tmp_path):
    stack = await Stack().start(tmp_path)
    yield stack
    await stack.stop()


async def scrape(session: aiohttp.ClientSession, port: int, token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


# -- values that move ------------------------------------------------------------------------------------


async def test_metrics_move_as_devices_register_are_read_and_take_a_rollout(stack):
    api = ManagementApi(stack.server, TOKEN, port=0, deployment=stack.deployment, orchestrator=stack.orchestrator)
    await api.start()
    try:
        async with aiohttp.ClientSession() as session:
            status, content_type, text = await scrape(session, api.port)  # loopback: no token needed
            assert status == 200 and content_type.startswith("text/plain"), (status, text)
            assert families(text) >= FAMILIES - {"tinymlaas_rollout_devices"}
            before = parse(text)
            assert total(before, "tinymlaas_registrations") == 0
            assert value(before, "tinymlaas_queue_depth") == 0
            assert value(before, "tinymlaas_dtls_sessions") == 0

            await stack.device("m4f-0", "cortex-m4f")  # push: Block1 to the device
            await stack.device("gw-0", "linux-gateway")  # pull: Block2 downloads from the server
            await stack.device("m0p-0", "cortex-m0plus")
            async with session.post(f"http://127.0.0.1:{api.port}/api/v1/devices/m4f-0/read",
                                    json={"path": "/3/0"}, headers={"Authorization": f"Bearer {TOKEN}"}) as read:
                assert read.status == 200, await read.text()
            middle = parse((await scrape(session, api.port))[2])
            assert total(middle, "tinymlaas_registrations", security="plain") == 3
            assert {dict(key)["lwm2m_version"] for key in middle["tinymlaas_registrations"]} <= {"1.0", "1.1", "1.2"}
            assert {dict(key)["binding"] for key in middle["tinymlaas_registrations"]} <= {"U", "UQ"}
            assert {dict(key)["queue_mode"] for key in middle["tinymlaas_registrations"]} <= {"true", "false"}
            assert value(middle, "tinymlaas_requests_from_devices_total", kind="register", code="2.01") == 3
            reads = total(middle, "tinymlaas_requests_to_devices_total", code="2.05")
            assert reads >= 4  # discovery of three devices, and the read
            assert total(middle, "tinymlaas_request_to_device_duration_seconds_count") == \
                total(middle, "tinymlaas_requests_to_devices_total")
            assert total(middle, "tinymlaas_request_to_device_duration_seconds_sum") > 0

            model = await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
            rollout = await stack.orchestrator.create(
                model.key, Selector(), Strategy(canary_fraction=0, mode="auto"), "r-metrics")
            await stack.wait(rollout.id, lambda r, ds: len(ds) == 3 and all(d.final for d in ds), 60)
            after_text = (await scrape(session, api.port))[2]
    finally:
        await api.stop()
    assert families(after_text) >= FAMILIES
    after = parse(after_text)
    _, devices = stack.orchestrator.rollout("r-metrics")
    assert {d.endpoint: d.status for d in devices if d.endpoint != "m0p-0"} == {
        "m4f-0": DeviceStatus.DONE, "gw-0": DeviceStatus.DONE}
    for status in DeviceStatus:  # every state has its sample, zero or not
        assert value(after, "tinymlaas_rollout_devices", rollout="r-metrics", state=status.value) == \
            sum(d.status is status for d in devices), status
    assert value(after, "tinymlaas_rollout_devices", rollout="r-metrics", state="done") >= 2
    assert value(after, "tinymlaas_rollouts", state="complete") + value(after, "tinymlaas_rollouts", state="running") == 1
    for direction in ("sent", "served"):  # the push's Block1 writes, the pull's Block2 downloads
        assert value(after, "tinymlaas_blockwise_blocks_total", direction=direction) > 1, direction
        assert value(after, "tinymlaas_blockwise_bytes_total", direction=direction) > 1024, direction
    assert total(after, "tinymlaas_requests_to_devices_total", operation="execute") >= 2  # Install, Activate
    assert total(after, "tinymlaas_requests_to_devices_total", code="2.05") > reads  # update-state polls
    assert total(after, "tinymlaas_request_to_device_duration_seconds_count") == \
        total(after, "tinymlaas_requests_to_devices_total")
    read_buckets = {dict(k)["le"]: v for k, v in after["tinymlaas_request_to_device_duration_seconds_bucket"].items()
                    if dict(k)["operation"] == "read"}
    assert read_buckets["+Inf"] == value(after, "tinymlaas_request_to_device_duration_seconds_count",
                                         operation="read") > 0
    assert list(read_buckets.values()) == sorted(read_buckets.values())  # cumulative


async def test_each_server_has_its_own_registry(stack, tmp_path):
    other = await Stack().start(tmp_path / "other")
    try:
        await stack.device("only-here", "cortex-m4f")
        mine = parse((await stack.server.metrics.render()).decode())
        theirs = parse((await other.server.metrics.render()).decode())
        assert total(mine, "tinymlaas_registrations") == 1
        assert total(theirs, "tinymlaas_registrations") == 0
        assert total(theirs, "tinymlaas_requests_to_devices_total") == 0
    finally:
        await other.stop()


async def test_queue_depth_counts_requests_waiting_for_a_sleeping_device(tmp_path):
    stack = await Stack().start(tmp_path, awake_window_s=1.0)
    try:
        device = await stack.device("m4f-sleepy", replace(get_profile("cortex-m4f"), name="sleepy", queue_mode=True))
        await device.sleep()
        await asyncio.sleep(1.2)  # past its awake window: requests for it are queued
        before = parse((await stack.server.metrics.render()).decode())
        assert total(before, "tinymlaas_registrations", queue_mode="true", security="plain") == 1
        for path in ("/3/0", "/5/0"):
            outcome = await stack.server.perform(
                "m4f-sleepy", lambda reg, p=path: operations.read(reg, LwM2MPath.parse(p), registry=stack.server.registry))
            assert isinstance(outcome, Queued)
        queued = parse((await stack.server.metrics.render()).decode())
        assert value(queued, "tinymlaas_queue_depth") == value(before, "tinymlaas_queue_depth") + 2
        await device.wake()  # an Update: the queue goes out
        async with asyncio.timeout(10):
            while await stack.server.pending_requests("m4f-sleepy"):
                await asyncio.sleep(0.05)
        after = parse((await stack.server.metrics.render()).decode())
        assert value(after, "tinymlaas_queue_depth") == 0
        assert value(after, "tinymlaas_requests_from_devices_total", kind="update", code="2.04") >= 1
    finally:
        await stack.stop()


# -- who may scrape --------------------------------------------------------------------------------------


def test_the_access_rule() -> None:
    for remote in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.9"):
        assert not needs_token("loopback", remote), remote
        assert needs_token("token", remote), remote
    for remote in ("192.0.2.7", "2001:db8::1", "::ffff:192.0.2.7", None):
        assert needs_token("loopback", remote), remote
        assert needs_token("token", remote), remote
        assert not needs_token("open", remote), remote


async def test_a_scrape_from_another_machine_without_the_token_is_refused(stack):
    """The API's own check, given a request from a non-loopback address."""
    api = ManagementApi(stack.server, TOKEN, port=0, orchestrator=stack.orchestrator)

    async def served(request):
        return await api.metrics(request)

    def request_from(address: str, token: str | None = None):
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: (address, 40000) if name == "peername" \
            else default
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return make_mocked_request("GET", "/metrics", headers=headers, transport=transport, app=api.app)

    assert (await api._auth(request_from("192.0.2.7"), served)).status == 401
    assert (await api._auth(request_from("192.0.2.7", TOKEN), served)).status == 200
    assert (await api._auth(request_from("127.0.0.1"), served)).status == 200
    strict = ManagementApi(stack.server, TOKEN, port=0, metrics_access="token")
    assert (await strict._auth(request_from("127.0.0.1"), served)).status == 401
    assert (await strict._auth(request_from("127.0.0.1", TOKEN), served)).status == 200
    anyone = ManagementApi(stack.server, TOKEN, port=0, metrics_access="open")
    assert (await anyone._auth(request_from("192.0.2.7"), served)).status == 200


async def test_token_mode_refuses_a_local_scrape_without_the_token(stack):
    api = ManagementApi(stack.server, TOKEN, port=0, metrics_access="token")
    await api.start()
    try:
        async with aiohttp.ClientSession() as session:
            status, _, text = await scrape(session, api.port)
            assert status == 401 and "token" in text
            status, _, text = await scrape(session, api.port, TOKEN)
            assert status == 200 and "tinymlaas_registrations" in text
            assert "tinymlaas_rollout_devices" not in text  # no orchestrator given
    finally:
        await api.stop()


def test_the_config_key() -> None:
    assert parse_config(None).api.metrics == "loopback"
    assert parse_config({"api": {"metrics": "Token"}}).api.metrics == "token"
    with pytest.raises(ConfigError) as caught:
        parse_config({"api": {"metrics": "public"}}, "server.yaml")
    assert str(caught.value) == "server.yaml: api.metrics: must be one of 'token', 'loopback' or 'open', got 'public'"


def test_request_kinds() -> None:
    assert request_kind("POST", ("rd",)) == "register"
    assert request_kind("POST", ("rd", "x1")) == "update"
    assert request_kind("DELETE", ("rd", "x1")) == "deregister"
    assert request_kind("POST", ("bs",)) == "bootstrap"
    assert request_kind("POST", ("dp",)) == "send"
    assert request_kind("GET", ("rd", "x1")) == "other"
    assert request_kind("GET", ("fw", "token", "x")) == "other"


# -- the daemon -----------------------------------------------------------------------------------------


async def register_with_a_large_body(port: int, endpoint: str) -> None:
    """A Register whose link list (> 1 KiB) goes in Block1 blocks."""
    links = ",".join(f"</3303/{i}>" for i in range(200)).encode()
    context = await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", 0), transports=["udp6"])
    try:
        request = Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/rd?ep={endpoint}&lt=600", payload=links)
        request.remote.maximum_block_size_exp = 4  # 256-byte blocks
        response = await context.request(request).response
        assert response.code == Code.CREATED, response
    finally:
        await context.shutdown()


def get(url: str, token: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_daemon_serves_metrics_on_its_api_port(tmp_path):
    daemon = Daemon(tmp_path)
    daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.api_port}/metrics"
        status, content_type, text = get(url)
        assert status == 200 and content_type.startswith("text/plain"), (status, text)
        before = parse(text)
        assert families(text) >= FAMILIES
        asyncio.run(register_with_a_large_body(daemon.coap_port, "big-links"))
        status, _, text = get(url)
        after = parse(text)
        assert value(after, "tinymlaas_requests_from_devices_total", kind="register", code="2.01") == 1
        assert total(after, "tinymlaas_registrations", security="plain") == 1
        received = value(after, "tinymlaas_blockwise_blocks_total", direction="received")
        assert received > value(before, "tinymlaas_blockwise_blocks_total", direction="received")
        assert value(after, "tinymlaas_blockwise_bytes_total", direction="received") >= 200 * 8
        assert value(after, "tinymlaas_dtls_sessions") == 0  # CoAPS is on, no session yet
        assert value(after, "tinymlaas_rollouts", state="running") == 0
    finally:
        daemon.kill()
