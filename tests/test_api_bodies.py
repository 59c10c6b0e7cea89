"""Bad request bodies on every POST/PUT route of the management API: not JSON,
not a JSON object, a field of the wrong type, a field the route does not know.
Each is a 400 whose message names the field and what it must be, never a Python
error (no traceback in the answer or in the daemon's output), and nothing is
created."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import aiohttp
import pytest

from lwm2m_server.api.http import ManagementApi
from lwm2m_server.security.credentials import CredentialStore
from test_daemon import Daemon
from test_orchestrator import MODEL, Stack

TOKEN = "t0ken"
MODEL_KEY = "dense@1.0"

CASES = [
    # POST /rollouts
    ("POST", "/rollouts", b"{not json",
     "body is not JSON: Expecting property name enclosed in double quotes at character 1"),
    ("POST", "/rollouts", b"\xff\xfe{", "body is not UTF-8 JSON"),
    ("POST", "/rollouts", b"", "body is not JSON: Expecting value at character 0"),
    ("POST", "/rollouts", b'["dense@1.0"]', "body must be a JSON object, got a list"),
    ("POST", "/rollouts", {"model": 5}, 'model: give the model as "name@version", got the number 5'),
    ("POST", "/rollouts", {"model": MODEL_KEY, "speed": 3}, "body: unknown field(s) 'speed'; known: model, "),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"speed": 3}},
     "strategy: unknown field(s) 'speed'; known: max_in_flight, canary_fraction, "),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"max_in_flight": "ten"}},
     'strategy.max_in_flight: must be an integer, got the string "ten"'),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"max_in_flight": 2.5}},
     "strategy.max_in_flight: must be an integer, got the number 2.5"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"canary_fraction": True}},
     "strategy.canary_fraction: must be a finite number, got true"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"mode": 1}},
     "strategy.mode: must be a string, got the number 1"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"follow": "yes"}},
     'strategy.follow: must be true or false, got the string "yes"'),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"max_in_flight": 0}},
     "strategy.max_in_flight: must be > 0, got 0"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": {"mode": "fast"}},
     "strategy.mode: must be push, pull or auto, got 'fast'"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "strategy": [1]}, "strategy: must be an object, got a list"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "follow": 1}, "follow: must be true or false, got the number 1"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "id": "a/b"}, "id: use 1..64 letters, digits"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "id": 7}, "id: must be a string, got the number 7"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "selector": "m4f-*"}, 'selector: must be an object, got the string'),
    ("POST", "/rollouts", {"model": MODEL_KEY, "selector": {"class": ["x"]}},
     "selector: unknown field(s) 'class'; known: device_classes, endpoints, labels"),
    ("POST", "/rollouts", {"model": MODEL_KEY, "selector": {"endpoints": "m4f-*"}},
     'selector.endpoints: must be a list of strings, got the string "m4f-*"'),
    ("POST", "/rollouts", {"model": MODEL_KEY, "selector": {"labels": {"model": 3}}},
     "selector.labels: must be an object of strings, got an object"),
    # rollout actions take no fields
    ("POST", "/rollouts/r-1/pause", b"[", "body is not JSON"),
    ("POST", "/rollouts/r-1/cancel", {"now": True}, "body: unknown field(s) 'now'; known: none"),
    # device operations
    ("POST", "/devices/dev/read", b"{", "body is not JSON"),
    ("POST", "/devices/dev/read", b'"/3/0"', 'body must be a JSON object, got the string "/3/0"'),
    ("POST", "/devices/dev/read", {"path": "/3/0", "timeout": 5}, "body: unknown field(s) 'timeout'; known: path"),
    ("POST", "/devices/dev/read", {"path": 3}, 'path must be a string such as "/3/0"'),
    ("POST", "/devices/dev/write", {"path": "/1/0/1", "value": {"s": 60}},
     "value: must be a string, number or boolean, got an object"),
    ("POST", "/devices/dev/write", {"path": "/1/0/1", "value": 60, "replace": "no"},
     'replace: must be true or false, got the string "no"'),
    ("POST", "/devices/dev/execute", {"path": "/3/0/4", "args": 1}, "args must be a string"),
    ("POST", "/devices/dev/write-attributes", {"path": "/3/0", "attributes": {"pmin": [1]}},
     "attributes must be an object"),
    ("POST", "/devices/dev/create", {"path": "/3303", "values": {"5701": {"x": 1}}},
     "values.5701: must be a string, number or boolean, got an object"),
    ("POST", "/devices/dev/observe", {"paths": ["/3/0"], "timeout": "soon"},
     "timeout: must be a number of seconds > 0, got 'soon'"),
    ("POST", "/devices/dev/cancel-observe", {"paths": "/3/0"}, 'give "path" or a non-empty list "paths"'),
    # models: the body is the file, the fields are in the query
    ("POST", "/models?name=dense&version=1.0&fmt=tflite", MODEL.read_bytes(),
     "query: unknown field(s) 'fmt'; known: name, version, format"),
    ("POST", "/models?name=dense&version=1.0", b"", "the body must be the model file"),
    # credentials
    ("PUT", "/credentials/dev", b"{", "body is not JSON"),
    ("PUT", "/credentials/dev", {"mechanism": 5, "key": "00"}, 'mechanism: must be "psk" or "oscore"'),
    ("PUT", "/credentials/dev", {"mechanism": "oscore", "secret": 5, "sender_id": "01", "recipient_id": "0a"},
     "secret: give it as a hex string"),
]


def body_bytes(body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def looks_internal(text: str) -> bool:
    """Python showing through: a traceback, an exception's repr, a keyword-argument error."""
    return any(sign in text for sign in ("Traceback", "Error(", "__init__", "unexpected keyword", "NoneType",
                                         "object has no attribute", "Internal Server Error"))


@pytest.fixture
async def api(tmp_path):
    stack = await Stack().start(tmp_path)
    credentials = CredentialStore(tmp_path / "credentials.sqlite3")
    api = ManagementApi(stack.server, TOKEN, port=0, deployment=stack.deployment, orchestrator=stack.orchestrator,
                        credentials=credentials)
    await api.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session, stack, credentials
    await api.stop()
    await stack.stop()
    credentials.close()


@pytest.mark.parametrize("method, path, body, message", CASES,
                         ids=[f"{method} {path.split('?')[0]} {number}" for number, (method, path, _, _) in enumerate(CASES)])
async def test_a_bad_body_is_400_naming_the_field(api, method, path, body, message):
    session, stack, credentials = api
    async with session.request(method, f"/api/v1{path}", data=body_bytes(body)) as response:
        text = await response.text()
        assert (response.status, response.content_type) == (400, "application/json"), text
    error = json.loads(text)["error"]
    assert error.startswith(message), error
    assert not looks_internal(error)
    assert stack.orchestrator.rollouts() == [] and await stack.deployment.models() == []
    assert credentials.list() == []


async def test_good_bodies_still_work(api):
    session, stack, _ = api
    await stack.deployment.add_model(MODEL.read_bytes(), "dense", "1.0")
    body = {"model": MODEL_KEY, "id": "r-good", "follow": True, "selector": {"endpoints": ["x-*"], "labels": {}},
            "strategy": {"canary_fraction": 0, "max_in_flight": 2, "retry_backoff_s": 1, "mode": None}}
    async with session.post("/api/v1/rollouts", json=body) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    assert created["strategy"]["follow"] is True and created["strategy"]["max_in_flight"] == 2
    async with session.post("/api/v1/rollouts/r-good/pause") as response:  # no body at all
        assert response.status == 200 and (await response.json())["state"] == "paused"
    async with session.post("/api/v1/rollouts/r-good/resume", json={}) as response:
        assert response.status == 200 and (await response.json())["state"] == "running"


def _post(daemon: Daemon, path: str, data: bytes) -> tuple[int, dict]:
    token = (daemon.folder / "data" / "api-token").read_text().strip()
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.api_port}/api/v1{path}", data=data, method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_bad_rollout_bodies_leave_no_traceback_in_the_daemon_output(tmp_path):
    daemon = Daemon(tmp_path)
    await asyncio.to_thread(daemon.start)
    try:
        answers = [await asyncio.to_thread(_post, daemon, "/rollouts", data) for data in (
            b'{"model": "dense@1.0", "strategy": {"max_in_flight": 3',  # cut off
            json.dumps({"model": "dense@1.0", "strategy": {"speed": "fast"}}).encode(),
            json.dumps({"model": "dense@1.0", "strategy": {"max_in_flight": "3"}}).encode(),
            json.dumps({"model": ["dense@1.0"]}).encode(),
        )]
        assert [status for status, _ in answers] == [400] * 4
        errors = [body["error"] for _, body in answers]
        assert errors[0].startswith("body is not JSON: ")
        assert errors[1].startswith("strategy: unknown field(s) 'speed'")
        assert errors[2] == 'strategy.max_in_flight: must be an integer, got the string "3"'
        assert errors[3] == 'model: give the model as "name@version", got a list'
        status, body = await asyncio.to_thread(_post, daemon, "/rollouts", json.dumps({"model": "dense@1.0"}).encode())
        assert (status, body) == (400, {"error": "model dense@1.0 is not registered (tinymlaas models add)"})
    finally:
        daemon.kill()
    output = "".join(daemon.lines)
    assert not looks_internal(output), output[-3000:]
