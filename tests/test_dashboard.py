"""The web dashboard without a browser: the page and its headers, login with the API
token, the session cookie's flags, CSRF on every change, logout, the SSE stream
and the routes the pages use (fleet, modules per class, object definitions)."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from lwm2m_server.api.dashboard import COOKIE, CSRF_HEADER
from lwm2m_server.api.http import ManagementApi
from lwm2m_server.security.credentials import CredentialStore
from test_orchestrator import MODEL, Stack

TOKEN = "dashboard-test-token-0123456789"


@pytest.fixture
async def served(tmp_path):
    stack = await Stack().start(tmp_path)
    credentials = CredentialStore(tmp_path / "credentials.sqlite3")
    api = ManagementApi(stack.server, TOKEN, port=0, deployment=stack.deployment, orchestrator=stack.orchestrator,
                        credentials=credentials)
    await api.start()
    # a cookie jar that keeps cookies for an IP address (aiohttp's default refuses them)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}", cookie_jar=jar) as session:
        yield session, api, stack
    await api.stop()
    await stack.stop()
    credentials.close()


async def login(session: aiohttp.ClientSession) -> str:
    async with session.post("/dashboard/login", json={"token": TOKEN}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["csrf"]


async def test_the_page_is_served_with_a_csp_and_needs_no_login(served):
    session, _, _ = served
    async with session.get("/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert "/static/app.js" in page and "<script>" not in page and not re.search(r"\son[a-z]+=", page)
    for asset in ("app.js", "app.css"):
        async with session.get(f"/static/{asset}") as response:
            assert response.status == 200 and response.headers["X-Content-Type-Options"] == "nosniff"
    async with session.get("/static/..%2Fdashboard.py") as response:
        assert response.status == 404
    async with session.get("/static/index.html") as response:  # only the listed assets
        assert response.status == 404


async def test_a_wrong_token_is_refused_and_sets_no_cookie(served):
    session, _, _ = served
    for body in ({"token": "wrong"}, {"token": TOKEN[:-1]}, {}, ["x"]):
        async with session.post("/dashboard/login", json=body) as response:
            assert response.status == 401
            assert "Set-Cookie" not in response.headers
    async with session.post("/dashboard/login", data={"token": "nope"}) as response:  # a plain form too
        assert response.status == 401
    async with session.get("/dashboard/session") as response:
        assert response.status == 401
    async with session.get("/api/v1/devices") as response:
        assert response.status == 401


async def test_login_sets_an_httponly_strict_cookie_and_the_api_takes_it(served):
    session, _, _ = served
    async with session.post("/dashboard/login", json={"token": TOKEN}) as response:
        assert response.status == 200
        csrf = (await response.json())["csrf"]
        cookie = response.cookies[COOKIE]
        raw = response.headers["Set-Cookie"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain http here; https sets Secure
    assert "HttpOnly" in raw and "SameSite=Strict" in raw and int(cookie["max-age"]) > 0
    assert len(cookie.value) >= 32 and TOKEN not in raw and csrf != cookie.value
    async with session.get("/api/v1/devices") as response:  # GET: the cookie is enough
        assert response.status == 200 and await response.json() == []
    async with session.get("/dashboard/session") as response:  # a reload finds its CSRF token again
        assert (await response.json())["csrf"] == csrf


async def test_a_change_without_the_csrf_header_is_403(served):
    session, api, stack = served
    csrf = await login(session)
    body = {"key": "00112233445566778899aabbccddeeff"}
    async with session.put("/api/v1/credentials/dev-1", json=body) as response:
        assert response.status == 403
        assert CSRF_HEADER in (await response.json())["error"]
    async with session.put("/api/v1/credentials/dev-1", json=body, headers={CSRF_HEADER: "forged"}) as response:
        assert response.status == 403
    async with session.post("/api/v1/models?name=dense&version=1.0", data=MODEL.read_bytes()) as response:
        assert response.status == 403
    assert await stack.deployment.models() == [] and api.credentials.list() == []
    async with session.put("/api/v1/credentials/dev-1", json=body, headers={CSRF_HEADER: csrf}) as response:
        assert response.status == 201
        assert "key" not in await response.json()
    async with session.post("/api/v1/models?name=dense&version=1.0", data=MODEL.read_bytes(),
                            headers={CSRF_HEADER: csrf}) as response:
        assert response.status == 201


async def test_the_bearer_token_still_works_without_csrf(served):
    session, _, _ = served
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.put("/api/v1/credentials/dev-2", json={"key": "0011"}, headers=headers) as response:
        assert response.status == 201
    async with session.put("/api/v1/credentials/dev-3", json={"key": "0011"},
                           headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401


async def test_logout_ends_the_session(served):
    session, _, _ = served
    csrf = await login(session)
    async with session.post("/dashboard/logout") as response:  # logout is a change: CSRF too
        assert response.status == 403
    async with session.post("/dashboard/logout", headers={CSRF_HEADER: csrf}) as response:
        assert response.status == 200
    async with session.get("/api/v1/devices") as response:
        assert response.status == 401
    async with session.get("/dashboard/session") as response:
        assert response.status == 401


async def test_an_old_cookie_is_refused_after_logout_and_expiry(served):
    session, api, _ = served
    csrf = await login(session)
    sid = next(c.value for c in session.cookie_jar if c.key == COOKIE)
    for stored in api.dashboard._sessions.values():
        stored.expires_at = 0  # expired
    async with session.get("/api/v1/devices") as response:
        assert response.status == 401
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as other:  # a replayed cookie
        async with other.get("/api/v1/devices", headers={"Cookie": f"{COOKIE}={sid}"}) as response:
            assert response.status == 401
    assert csrf


async def test_a_cross_origin_login_is_refused(served):
    session, _, _ = served
    async with session.post("/dashboard/login", json={"token": TOKEN},
                            headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 403 and "Set-Cookie" not in response.headers


async def test_sse_streams_events_and_a_client_leaving_logs_nothing(served, capsys):
    session, api, stack = served
    await login(session)
    async with session.get("/api/v1/events/sse") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        assert await response.content.readuntil(b"\n\n") == b"retry: 3000\n\n"
        await asyncio.sleep(0.05)
        stack.server.events.publish("rollout", endpoint="dev-9", rollout="r-1", status="done",
                                    counts={"done": 1}, total=1)
        block = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    lines = block.decode().splitlines()
    assert lines[0] == "event: rollout" and lines[1].startswith("data: ")
    data = json.loads(lines[1][6:])
    assert data["endpoint"] == "dev-9" and data["rollout"] == "r-1" and data["counts"] == {"done": 1}
    await asyncio.sleep(0.1)
    stack.server.events.publish("rollout", endpoint="dev-9", rollout="r-1", status="done", counts={}, total=1)
    await asyncio.sleep(0.2)  # the handler writes to a closed connection and ends quietly
    assert stack.server.events.subscribers() == 0
    assert "Traceback" not in capsys.readouterr().err


async def test_fleet_modules_and_objects_routes(served):
    session, api, stack = served
    headers = {"Authorization": f"Bearer {TOKEN}"}
    await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    async with session.get("/api/v1/fleet", headers=headers) as response:
        assert response.status == 200 and await response.json() == []
    async with session.get("/api/v1/models/dense@1.0/modules", headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {"model": "dense@1.0", "modules": [], "incompatible": []}
    async with session.get("/api/v1/models/nope@1/modules", headers=headers) as response:
        assert response.status == 404
    async with session.get("/api/v1/objects/3", headers=headers) as response:
        device = await response.json()
    assert device["name"] == "Device" and any(r["id"] == 4 and r["operations"] == "E" for r in device["resources"])
    async with session.get("/api/v1/objects/x", headers=headers) as response:
        assert response.status == 400


async def test_logout_ends_the_sessions_event_stream(served):
    session, api, stack = served
    csrf = await login(session)
    async with session.get("/api/v1/events/sse") as response:
        assert await response.content.readuntil(b"\n\n") == b"retry: 3000\n\n"
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}", cookie_jar=session.cookie_jar) as other:
            async with other.post("/dashboard/logout", headers={CSRF_HEADER: csrf}) as answer:
                assert answer.status == 200
        assert await asyncio.wait_for(response.content.read(), 5) == b""  # the stream ended
    assert stack.server.events.subscribers() == 0
