"""The OpenAPI document of the management API (lwm2m_server/api/openapi.py):

- every route the aiohttp app registers under ``/api/v1`` is in the document with
  its method, and the document names no route the app lacks. Routes outside
  ``/api/v1`` (the dashboard's page, ``/static``, ``/dashboard/*``, ``/metrics``)
  are out of the document's scope and not compared;
- it is served at ``GET /api/v1/openapi.json`` without a token;
- ``docs/api.md`` is what the generator prints now;
- a device-side failure keeps its CoAP code and maps to HTTP as RFC 8075 §7 does (4.04 →
  404, …), 502 for an answer that does not decode, 504 for no answer; the CLI prints the
  device's code and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from ipso_objects import ObjectRegistry
from lwm2m_server.api import openapi
from lwm2m_server.api.http import API, ManagementApi
from lwm2m_server.cli.main import main as cli_main
from lwm2m_server.core.responses import UNREACHABLE, Result
from lwm2m_server.server import DeviceNotRegistered

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


class StubServer:
    """Enough of LwM2MServer for the API: each operation answers ``self.answer``."""

    def __init__(self) -> None:
        self.registry = ObjectRegistry.default()
        self.answer = Result(True, "2.05")
        self.events = SimpleNamespace(subscribe=None)

    def registrations(self):
        return []

    async def perform(self, endpoint, build):
        if endpoint == "nobody":
            raise DeviceNotRegistered(endpoint)
        return self.answer

    async def observe(self, endpoint, paths, *, timeout=None):
        return self.answer


def app_routes(app) -> set[tuple[str, str]]:
    """(METHOD, canonical path) of every route under /api/v1 (aiohttp's own HEAD for a GET left out)."""
    found = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or not (canonical == API or canonical.startswith(API + "/")):
            continue
        found.add((route.method, canonical))
    return found


def document_routes(document) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in METHODS}


def test_every_api_route_is_documented_and_nothing_else():
    api = ManagementApi(StubServer(), TOKEN, port=0)
    registered, documented = app_routes(api.app), document_routes(openapi.DOCUMENT)
    assert registered, "no routes found under /api/v1"
    assert registered - documented == set(), "routes missing from lwm2m_server/api/openapi.py"
    assert documented - registered == set(), "the document names routes the API does not have"


def test_the_document_is_openapi_3_1_and_every_reference_resolves():
    document = openapi.DOCUMENT
    assert document["openapi"].startswith("3.1.")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    text = json.dumps(document)
    for name in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert name in document["components"]["schemas"], name
    for path, item in document["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert declared == names, (method, path)
            assert operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["$ref" if "$ref" in schema else "anyOf"] in (
                        "#/components/schemas/Error", "#/components/schemas/DeviceFailure",
                        "#/components/schemas/CompileRefused",  # an Error with every plugin's verdict
                        [{"$ref": "#/components/schemas/Error"}, {"$ref": "#/components/schemas/DeviceFailure"}],
                        # a rollout change at a node that does not lead rollouts: an Error naming the leader
                        [{"$ref": "#/components/schemas/NotLeader"}, {"$ref": "#/components/schemas/Error"}],
                    ), (method, path, status)
    refused = document["components"]["schemas"]["CompileRefused"]
    assert "error" in refused["required"] and refused["properties"]["error"]["type"] == "string"


def test_every_rollout_change_documents_the_503_of_a_node_that_does_not_lead():
    """Where nodes share a store, only the leading node changes rollouts; the others answer
    503 with the leader's name (``http.py``), and a client must be able to tell that 503
    from a plain one by the document."""
    document = openapi.DOCUMENT
    changes = [("post", "/api/v1/rollouts")] + [("post", f"/api/v1/rollouts/{{id}}/{action}")
                                                for action in ("pause", "resume", "cancel")]
    for method, path in changes:
        answer = document["paths"][path][method]["responses"]["503"]
        assert {"$ref": "#/components/schemas/NotLeader"} in answer["content"]["application/json"]["schema"]["anyOf"]
        assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer", path
    refused = document["components"]["schemas"]["NotLeader"]
    assert refused["required"] == ["error", "leader"]
    assert refused["properties"]["leader"]["anyOf"][1] == {"type": "null"}  # no node leads now
    reads = [(m, p) for p, item in document["paths"].items() if p.startswith("/api/v1/rollouts") for m in item
             if (m, p) not in changes]
    assert reads and all("NotLeader" not in json.dumps(document["paths"][p][m]) for m, p in reads)


def test_bodies_refuse_unknown_fields():
    """Every JSON request body is a closed object (as api/bodies.py and credentials.py check)."""
    schemas = openapi.DOCUMENT["components"]["schemas"]

    def closed(schema):
        if "$ref" in schema:
            return closed(schemas[schema["$ref"].rsplit("/", 1)[1]])
        if "oneOf" in schema:
            return all(closed(s) for s in schema["oneOf"])
        return schema.get("additionalProperties") is False

    for path, item in openapi.DOCUMENT["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                assert closed(content["application/json"]["schema"]), (method, path)


def test_docs_api_md_is_generated_from_the_document():
    generated = subprocess.run([sys.executable, "-m", "lwm2m_server.api.openapi", "--markdown"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == generated, ("docs/api.md is stale: run "
                                    "`python -m lwm2m_server.api.openapi --markdown > docs/api.md`")


@pytest.fixture
async def stub_api():
    server = StubServer()
    api = ManagementApi(server, TOKEN, host="127.0.0.1", port=0)
    await api.start()
    url = f"http://127.0.0.1:{api.port}"
    async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield SimpleNamespace(server=server, session=session, url=url)
    await api.stop()


async def test_the_document_is_served_without_a_token(stub_api):
    async with aiohttp.ClientSession(stub_api.url) as anonymous:
        async with anonymous.get(f"{API}/openapi.json") as response:
            assert response.status == 200 and response.content_type == "application/json"
            assert await response.json() == openapi.document()
        async with anonymous.get(f"{API}/devices") as response:
            assert response.status == 401


@pytest.mark.parametrize("answer, status, error", [
    (Result(False, "4.04", diagnostic="Not Found"), 404, "device answered 4.04 Not Found: Not Found"),
    (Result(False, "4.01", diagnostic="no access"), 403, "device answered 4.01 Unauthorized: no access"),
    (Result(False, "4.05", diagnostic="/3/0 cannot be deleted"), 400, "device answered 4.05 Method Not Allowed"),
    (Result(False, "4.99", diagnostic="odd"), 400, "device answered 4.99: odd"),
    (Result(False, "5.00", diagnostic="sensor fault"), 500, "device answered 5.00 Internal Server Error: "
                                                            "sensor fault"),
    (Result(False, "5.03", diagnostic="busy"), 503, "device answered 5.03 Service Unavailable: busy"),
    (Result(False, "2.05", content_format=11542, diagnostic="TLV payload for /3/0 could not be decoded: x"),
     502, "device answered 2.05 Content: TLV payload"),
    (Result(False, UNREACHABLE, diagnostic="device unreachable: no response within 5 s"), 504,
     "device unreachable: no response within 5 s"),
])
async def test_a_device_failure_maps_as_rfc_8075_and_keeps_its_coap_code(stub_api, answer, status, error):
    stub_api.server.answer = answer
    for operation, body in (("read", {"path": "/3/0"}), ("observe", {"path": "/3/0"})):
        async with stub_api.session.post(f"{API}/devices/dev/{operation}", json=body) as response:
            assert response.status == status, operation
            answered = await response.json()
        assert answered["error"].startswith(error)
        assert (answered["ok"], answered["code"], answered["diagnostic"]) == (False, answer.code, answer.diagnostic)


async def test_an_unknown_endpoint_is_a_404_without_a_coap_code(stub_api):
    async with stub_api.session.post(f"{API}/devices/nobody/read", json={"path": "/3/0"}) as response:
        assert response.status == 404
        assert "code" not in await response.json()


async def test_a_delivered_answer_stays_200(stub_api):
    stub_api.server.answer = Result(True, "2.04")
    async with stub_api.session.post(f"{API}/devices/dev/write", json={"path": "/1/0/1", "value": 60}) as response:
        assert response.status == 200
        assert (await response.json())["code"] == "2.04"


async def test_the_cli_prints_the_device_code_and_exits_1(stub_api, capsys):
    stub_api.server.answer = Result(False, "4.04", diagnostic="no such resource")
    run = lambda *args: cli_main([*args, "--api", stub_api.url, "--token", TOKEN])  # noqa: E731
    assert await asyncio.to_thread(run, "read", "dev", "/3/0/99") == 1
    assert capsys.readouterr().err == "tinymlaas: device answered 4.04: no such resource\n"
    assert await asyncio.to_thread(run, "read", "dev", "/3/0/99", "--json") == 1
    printed = json.loads(capsys.readouterr().out)
    assert (printed["ok"], printed["code"]) == (False, "4.04")
    stub_api.server.answer = Result(False, UNREACHABLE, diagnostic="device unreachable: no response within 5 s")
    assert await asyncio.to_thread(run, "exec", "dev", "/3/0/4") == 1
    assert capsys.readouterr().err == "tinymlaas: device unreachable: no response within 5 s\n"
    stub_api.server.answer = Result(True, "2.04")
    assert await asyncio.to_thread(run, "exec", "dev", "/3/0/4") == 0
    assert capsys.readouterr().out == "2.04 Changed\n"
