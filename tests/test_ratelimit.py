"""Per-peer rate limiting: token buckets with explicit times, then the real server over
loopback, where one flooding peer must not keep another peer's Register from being
answered promptly (4.29 Too Many Requests with Max-Age for the flooder, RFC 8516)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import aiocoap
import pytest
from aiocoap import Code, Message, resource
from structlog.testing import capture_logs

from ipso_objects import ObjectRegistry
from lwm2m_server.config import ServerConfig
from lwm2m_server.transport.ratelimit import LogThrottle, RateLimiter, host_key, rate_limiter, split_peer
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore

A = "192.0.2.7:5683"
B = "198.51.100.9:5683"


# --------------------------------------------------------------------------- sans-I/O


def test_a_burst_passes_then_one_request_per_token():
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.allow(A, 0.0) for _ in range(4)] == [True, True, True, False]
    refused = limiter.check(A, 0.0)
    assert not refused.allowed and refused.limited_by == "peer" and refused.key == A
    assert refused.retry_after == pytest.approx(0.5) and refused.max_age == 1
    assert not limiter.allow(A, 0.49)
    assert limiter.allow(A, 0.5)  # one token after 1 / rate seconds
    assert not limiter.allow(A, 0.5)
    assert [limiter.allow(A, 100.0) for _ in range(4)] == [True, True, True, False]  # refills to burst only


def test_max_age_is_whole_seconds_rounded_up():
    limiter = RateLimiter(rate=0.1, burst=1)
    assert limiter.allow(A, 0.0)
    decision = limiter.check(A, 2.5)
    assert decision.retry_after == pytest.approx(7.5) and decision.max_age == 8


def test_refused_requests_cost_nothing_so_a_flooder_still_gets_the_rate():
    limiter = RateLimiter(rate=10, burst=5)
    allowed = sum(limiter.allow(A, step / 1000) for step in range(10_000))  # 1,000 requests/s for 10 s
    assert 5 + 99 <= allowed <= 5 + 100  # the burst, then the rate


def test_one_peer_flooding_does_not_touch_another_peers_bucket():
    limiter = RateLimiter(rate=1, burst=2)
    for _ in range(100):
        limiter.allow(A, 0.0)
    assert limiter.allow(B, 0.0) and limiter.allow(B, 0.0)


def test_hopping_ports_meets_the_host_limit_and_other_hosts_still_pass():
    limiter = RateLimiter(rate=1, burst=2, host_share=10)
    allowed = sum(limiter.allow(f"192.0.2.7:{port}", 0.0) for port in range(1000, 1100))
    assert allowed == 20  # the host's burst: ten peers' worth
    refused = limiter.check("192.0.2.7:4000", 0.0)
    assert refused.limited_by == "host" and refused.key == "192.0.2.7"
    assert refused.retry_after == pytest.approx(0.1)  # the host refills at 10/s
    assert limiter.allow("192.0.2.8:1000", 0.0)
    assert limiter.allow(B, 0.0)


def test_a_host_refusal_does_not_spend_the_peers_token():
    limiter = RateLimiter(rate=1, burst=1, host_share=1)
    assert limiter.allow("192.0.2.7:1", 0.0)
    assert not limiter.allow("192.0.2.7:2", 0.0)  # host empty; peer 2 keeps its token
    assert limiter.allow("192.0.2.7:2", 1.0)


def test_ipv6_hosts_are_their_64_prefix_and_mapped_ipv4_is_ipv4():
    limiter = RateLimiter(rate=1, burst=1, host_share=3)
    hopping = [limiter.allow(f"[2001:db8:0:1::{i:x}]:5683", 0.0) for i in range(1, 10)]
    assert hopping == [True] * 3 + [False] * 6
    assert limiter.allow("[2001:db8:0:2::1]:5683", 0.0)  # another /64
    assert host_key("[2001:db8:0:1:aaaa::1]:1") == "2001:db8:0:1::/64"
    assert host_key("[::ffff:192.0.2.7]:1") == host_key("192.0.2.7:2") == "192.0.2.7"
    assert host_key("[fe80::1%eth0]:1") == "fe80::/64"


def test_loopback_peers_are_limited_per_port_only_unless_asked():
    default = RateLimiter(rate=1, burst=1, host_share=2)
    assert all(default.allow(f"127.0.0.1:{port}", 0.0) for port in range(1000, 1100))
    assert all(default.allow(f"[::1]:{port}", 0.0) for port in range(1000, 1100))
    assert not default.allow("127.0.0.1:1000", 0.0)  # each port still has its own bucket
    strict = RateLimiter(rate=1, burst=1, host_share=2, limit_loopback_hosts=True)
    assert sum(strict.allow(f"127.0.0.1:{port}", 0.0) for port in range(1000, 1100)) == 2


def test_split_peer_forms():
    assert split_peer("192.0.2.7:5683") == ("192.0.2.7", "5683")
    assert split_peer("[2001:db8::1]:5683") == ("2001:db8::1", "5683")
    assert split_peer("2001:db8::1") == ("2001:db8::1", "")
    assert split_peer("device.example") == ("device.example", "")
    assert host_key("device.example:5683") == "device.example"
    assert host_key("") is None


def test_memory_is_bounded_by_max_tracked_whatever_the_number_of_peers():
    limiter = RateLimiter(rate=1, burst=5, max_tracked=100)
    for i in range(100_000):  # a spoofed flood: every request from a new host and port
        limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:{i % 60000 + 1}", i * 1e-6)
    assert len(limiter) <= 200


def test_idle_peers_are_forgotten_once_their_bucket_is_full_again():
    limiter = RateLimiter(rate=1, burst=2)
    for port in range(10):
        limiter.allow(f"127.0.0.1:{port}", 0.0)
    limiter.allow(A, 0.0), limiter.allow(A, 0.0)  # A's peer and host buckets
    assert len(limiter) == 12
    limiter.allow("127.0.0.1:99", 1.5)  # the loopback peers are full again, A is not yet
    assert len(limiter) == 12 - 10 + 1
    assert limiter.check(A, 1.5).allowed and not limiter.check(A, 1.5).allowed


def test_evicted_busy_peer_restarts_with_a_full_bucket():
    limiter = RateLimiter(rate=0.001, burst=2, max_tracked=2)
    limiter.allow(A, 0.0), limiter.allow(A, 0.0)
    assert not limiter.allow(A, 0.0)
    limiter.allow("127.0.0.1:1", 0.0)
    limiter.allow("127.0.0.1:2", 0.0)  # cap reached: A, least recently used, is dropped
    assert limiter.allow(A, 0.0)


def test_a_refused_peer_is_reported_once_per_interval_with_its_count():
    limiter = RateLimiter(rate=1, burst=1, report_interval_s=10)
    limiter.allow(A, 0.0)
    decisions = [limiter.check(A, 0.1 * i) for i in range(1, 9)]  # refused until t=1
    reports = [d for d in decisions if d.report]
    assert len(reports) == 1 and reports[0].refused == 1
    for i in range(1, 50):
        limiter.check(A, 2.0 + i * 0.01)  # each refused after one allowed at 2.0
    later = limiter.check(A, 12.5)  # allowed: tokens came back
    assert later.allowed
    again = limiter.check(A, 12.5)
    assert again.report and again.refused > 40  # everything since the previous report
    assert limiter.refused_total >= 50


def test_a_clock_that_steps_back_refills_nothing():
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allow(A, 100.0)
    assert not limiter.allow(A, 50.0)
    assert not limiter.allow(A, 100.5)
    assert limiter.allow(A, 101.0)


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (float("inf"), 1), (1, 0), (1, float("nan"))])
def test_nonsense_limits_are_refused(rate, burst):
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_rate_zero_means_no_limiter():
    assert rate_limiter(0, 20) is None
    assert isinstance(rate_limiter(10, 20), RateLimiter)


# --------------------------------------------------------------------------- over loopback


@pytest.fixture
async def server(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    base = ServerConfig()
    config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, request_timeout_s=2,
                                        rate_limit_per_peer=2, rate_limit_burst=4))
    server = LwM2MServer(config, ObjectRegistry.default(), store)
    await server.start()
    yield server
    await server.stop()
    await store.close()


async def peer():
    return await aiocoap.Context.create_server_context(resource.Site(), bind=("127.0.0.1", 0), transports=["udp6"])


def register(server, endpoint: str, tuning=aiocoap.Reliable) -> Message:
    return Message(code=Code.POST, transport_tuning=tuning, uri=f"coap://127.0.0.1:{server.port}/rd?ep={endpoint}&lt=300",
                   payload=b"</1/0>,</3/0>")


async def test_a_flooding_peer_gets_429_and_another_peer_still_registers_promptly(server):
    flooder, device = await peer(), await peer()
    try:
        stop = asyncio.Event()
        codes: list[Code] = []
        max_ages: list[int] = []

        async def one(i: int) -> None:
            response = await flooder.request(register(server, f"flood-{i}")).response
            codes.append(response.code)
            if response.code == Code.TOO_MANY_REQUESTS:
                max_ages.append(response.opt.max_age)

        async def flood() -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                await asyncio.gather(*(one(i + k) for k in range(20)))
                i += 20

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.3)  # the flooder has spent its burst by now
        assert Code.TOO_MANY_REQUESTS in codes
        started = time.perf_counter()
        async with asyncio.timeout(5):
            response = await device.request(register(server, "good")).response
        elapsed = time.perf_counter() - started
        stop.set()
        await flooding
        assert response.code == Code.CREATED and server.registration("good") is not None
        assert elapsed < 1.0, f"Register took {elapsed:.2f} s under a flood"
        created = codes.count(Code.CREATED)
        assert created <= 4 + 2 * 5  # burst + rate × (generous) duration
        assert codes.count(Code.TOO_MANY_REQUESTS) > 10 * created
        assert max_ages and all(age >= 1 for age in max_ages)
    finally:
        await flooder.shutdown()
        await device.shutdown()


async def test_a_non_request_over_the_limit_is_dropped_silently(server):
    client = await peer()
    try:
        for i in range(4):
            response = await client.request(register(server, f"non-{i}")).response
            assert response.code == Code.CREATED
        refused = await client.request(register(server, "non-x")).response
        assert refused.code == Code.TOO_MANY_REQUESTS
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await client.request(register(server, "non-y", tuning=aiocoap.Unreliable)).response
        assert server.registration("non-y") is None
        await asyncio.sleep(0.6)  # a token is back: the same NON request is answered
        async with asyncio.timeout(2):
            allowed = await client.request(register(server, "non-y", tuning=aiocoap.Unreliable)).response
        assert allowed.code == Code.CREATED
    finally:
        await client.shutdown()


async def test_refusals_are_logged_once_per_peer_per_interval(server):
    client = await peer()
    try:
        with capture_logs() as logs:
            codes = [(await client.request(register(server, f"log-{i}")).response).code for i in range(30)]
        assert codes.count(Code.TOO_MANY_REQUESTS) >= 20
        limited = [entry for entry in logs if entry["event"] == "rate_limited"]
        assert len(limited) == 1
        assert limited[0]["limited_by"] == "peer" and limited[0]["refused"] == 1
        assert limited[0]["address"].startswith("127.0.0.1:") or "::ffff:127.0.0.1" in limited[0]["address"]
    finally:
        await client.shutdown()


def test_log_throttle_lets_one_line_per_host_per_interval_and_counts_the_rest():
    throttle = LogThrottle(interval=10, max_lines=3)
    assert throttle.check("192.0.2.7:1000", 0.0) == 0
    assert [throttle.check(f"192.0.2.7:{port}", 1.0) for port in range(1001, 1005)] == [None] * 4  # one host
    assert throttle.check("[2001:db8::1]:5", 1.0) == 0
    assert throttle.check("[2001:db8::2]:5", 1.0) is None  # the same /64
    assert throttle.check("198.51.100.1:5", 2.0) == 0
    assert throttle.check("198.51.100.2:5", 3.0) is None  # at most 3 lines per 10 s in all
    assert throttle.check("192.0.2.7:1000", 10.5) == 4  # its next line says how many were held back
    assert throttle.check("198.51.100.2:5", 10.6) == 1
    assert throttle.suppressed_total == 6
