"""Bootstrap that independent LwM2M 1.0/1.1 clients accept (issue 10, item 6).

What real clients taught us (DESIGN.md, "What independent LwM2M clients do"): some
decode SenML JSON ``vd`` as classic base64, so a key written as base64url breaks;
and when the Bootstrap-Server and the server account share one URI, some reuse the
bootstrap DTLS session for the server account. So: the writes are TLV first (the
exact bytes are checked here without our codecs), another format only after the
device refused TLV, every failed write is reported with its step, path and format,
the Bootstrap-Server can listen on ports of its own, and ``UQ`` survives bootstrap.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ipso_objects import LwM2MPath, ObjectRegistry, codecs
from ipso_objects.codecs import ContentFormat as CF
from lwm2m_server.bootstrap_server import BootstrapService
from lwm2m_server.config import BootstrapConfig, CoapConfig, ServerConfig
from lwm2m_server.core.bootstrap import (
    BootstrapSession, Outcome, Psk, ServerAccount, configuration, parse_bootstrap_request, plan,
)
from lwm2m_server.core.events import EventHub
from lwm2m_server.security.credentials import CredentialStore, PskCredential
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from lwm2m_server.transport.messages import CoapResponse, IncomingRequest
from simulators.client import RegistrationFailed, SimulatedDevice

P = LwM2MPath.parse
REGISTRY = ObjectRegistry.default()
# base64url of these bytes holds '-' and '_' (classic base64: '+' and '/'), and needs padding
AWKWARD_KEY = bytes.fromhex("fbffbffbffbf00112233445566778899")
BOOTSTRAP_KEY = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
TLV_ONLY = (int(CF.TEXT), int(CF.OPAQUE), int(CF.TLV))


def account(**changes) -> ServerAccount:
    base = ServerAccount("coaps://lwm2m.example.net:5684", psk=Psk("dev-1", AWKWARD_KEY))
    return replace(base, **changes)


def by_name(steps) -> dict:
    return {step.name: step for step in steps}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tlv(resource_id: int, value: bytes) -> bytes:
    """One TLV resource (LwM2M Core 1.1 §7.4.3), written out by hand: type byte 11 (resource
    with value), 8-bit id, length in the type byte below 8, else in one following byte."""
    assert resource_id < 256 and len(value) < 256
    if len(value) < 8:
        return bytes([0b11000000 | len(value), resource_id]) + value
    return bytes([0b11001000, resource_id, len(value)]) + value


# -- the format the writes take ---------------------------------------------------------------


def test_writes_are_tlv_even_when_the_client_prefers_senml_json():
    steps = plan(parse_bootstrap_request(["ep=dev-1", "pct=110"]), account())
    assert {s.request.content_format for s in steps if s.name.startswith("write")} == {CF.TLV}


def test_senml_json_carries_the_key_as_rfc8428_says_and_oma_json_as_classic_base64():
    """RFC 8428 §4.3: vd is base64url with padding omitted; LwM2M 1.0 JSON: classic Base64."""
    request = parse_bootstrap_request(["ep=dev-1"])
    senml = by_name(configuration(request, account(), content_format=CF.SENML_JSON))["write /0/1"]
    assert b'"vd":"-_-_-_-_ABEiM0RVZneImQ"' in senml.request.payload  # '-', '_', no '='
    oma = by_name(configuration(request, account(), content_format=CF.OMA_JSON))["write /0/1"]
    assert b'"sv":"+/+/+/+/ABEiM0RVZneImQ=="' in oma.request.payload  # '+', '/', padded


def answer_all(session: BootstrapSession, answers: dict[tuple[str, int | None], str]) -> list[tuple]:
    """Answer every step (2.xx unless ``answers`` names its (step, format)); what was sent."""
    sent = []
    while (step := session.next_step()) is not None:
        sent.append((step.name, step.content_format))
        default = {"delete": "2.02", "discover": "4.05", "write": "2.04", "finish": "2.04"}[step.kind.value]
        session.answered(answers.get((step.name, step.content_format), default), b"cannot take it")
    return sent


def test_a_client_without_tlv_gets_the_same_write_in_senml_cbor_and_the_rest_follow():
    session = BootstrapSession(parse_bootstrap_request(["ep=dev-1"]), account())
    sent = answer_all(session, {("write /0/1", CF.TLV): "4.15"})
    assert sent[-3:] == [("write /0/1", CF.SENML_CBOR), ("write /1/0", CF.SENML_CBOR), ("finish", None)]
    assert session.finished and session.write_format == CF.SENML_CBOR
    retried = [r for r in session.results if r.outcome is Outcome.RETRIED]
    assert [(r.step, r.path, r.content_format, r.code) for r in retried] == [("write /0/1", "/0/1", CF.TLV, "4.15")]
    written = next(s for s in session.steps if s.name == "write /0/1")
    node = codecs.decode(CF.SENML_CBOR, written.request.payload, P("/0/1"), REGISTRY)
    assert node.resources[5].value == AWKWARD_KEY  # the same key, re-encoded, not a new one


def test_a_json_write_answered_400_goes_on_and_every_format_is_tried_once():
    session = BootstrapSession(parse_bootstrap_request(["ep=dev-1", "pct=110"]), account())
    answers = {("write /0/1", CF.TLV): "4.15", ("write /0/1", CF.SENML_CBOR): "4.15",
               ("write /0/1", CF.SENML_JSON): "4.00"}  # base64 the client reads differently
    sent = answer_all(session, answers)
    assert [fmt for name, fmt in sent if name == "write /0/1"] == [CF.TLV, CF.SENML_CBOR, CF.SENML_JSON]
    assert not session.finished and ("finish", None) not in sent
    failure = session.failure
    assert (failure.step, failure.path, failure.content_format, failure.code) == (
        "write /0/1", "/0/1", CF.SENML_JSON, "4.00")
    assert failure.describe() == "write /0/1 in SENML_JSON (110): 4.00 cannot take it"


def test_a_400_to_tlv_refuses_the_values_and_ends_the_bootstrap_at_once():
    session = BootstrapSession(parse_bootstrap_request(["ep=dev-1"]), account())
    sent = answer_all(session, {("write /0/1", CF.TLV): "4.00"})
    assert [fmt for name, fmt in sent if name == "write /0/1"] == [CF.TLV]
    assert (session.failure.path, session.failure.content_format) == ("/0/1", CF.TLV)


# -- the service: what the operator sees of a failed write ---------------------------------------


class FormatDevice:
    """Answers the plan like a client that reads only some formats: a write in another
    one gets 4.15; a bootstrap Delete 2.02, Discover 4.05 (1.0), Finish 2.04."""

    def __init__(self, formats: set[int]) -> None:
        self.formats = formats
        self.writes: list[tuple[str, int, bytes]] = []

    async def send(self, address, request, *, timeout):
        if request.method == "PUT":
            self.writes.append(("/" + "/".join(request.uri_path), request.content_format, request.payload))
            code = "2.04" if request.content_format in self.formats else "4.15"
        else:
            code = {"DELETE": "2.02", "GET": "4.05", "POST": "2.04"}[request.method]
        return CoapResponse(code, None, b"" if code.startswith("2.") else b"unsupported content format")


class Provider:
    def __init__(self) -> None:
        self.handed_out: list[tuple[str, bytes]] = []

    def bootstrap_credential(self, endpoint):
        return (f"{endpoint}-bs", BOOTSTRAP_KEY)

    def server_credential(self, endpoint, now):
        credential = (endpoint, AWKWARD_KEY)
        self.handed_out.append(credential)
        return credential


def coaps_request(endpoint: str = "dev-1") -> IncomingRequest:
    return IncomingRequest("POST", ("bs",), (f"ep={endpoint}",), None, b"", "coaps://192.0.2.50:40000",
                           identity=f"{endpoint}-bs")


async def test_a_failed_write_is_logged_published_and_kept_with_step_path_and_format():
    device, hub, provider = FormatDevice(set()), EventHub(), Provider()  # reads no instance format at all
    svc = BootstrapService(BootstrapConfig(), CoapConfig(port=5683, secure_port=5684), device.send,
                           credentials=provider, events=hub, local_base=lambda address: "coaps://192.0.2.7:5684")
    with capture_logs() as logs, hub.subscribe() as queue:
        assert (await svc.handle(coaps_request())).code == "2.04"
        session = await svc.wait("dev-1")
        events = [queue.get_nowait() for _ in range(queue.qsize())]
    # each format once, then the bootstrap ends: no Finish, no endless retry
    assert [(path, fmt) for path, fmt, _ in device.writes] == [
        ("/0/1", CF.TLV), ("/0/1", CF.SENML_CBOR), ("/0/1", CF.SENML_JSON)]
    assert (session.failure.path, session.failure.content_format, session.failure.code) == (
        "/0/1", CF.SENML_JSON, "4.15")
    retried = [e for e in logs if e["event"] == "bootstrap_write_retried"]
    assert [(e["path"], e["content_format"], e["next_format"]) for e in retried] == [
        ("/0/1", "TLV (11542)", "SENML_CBOR (112)"), ("/0/1", "SENML_CBOR (112)", "SENML_JSON (110)")]
    failed = next(e for e in logs if e["event"] == "bootstrap_failed")
    assert (failed["step"], failed["path"], failed["content_format"], failed["code"]) == (
        "write /0/1", "/0/1", "SENML_JSON (110)", "4.15")
    assert failed["attempts"] == [
        "write /0/1 in TLV (11542): 4.15 unsupported content format",
        "write /0/1 in SENML_CBOR (112): 4.15 unsupported content format",
        "write /0/1 in SENML_JSON (110): 4.15 unsupported content format"]
    published = events[-1].data
    assert (published["state"], published["step"], published["path"], published["content_format"]) == (
        "failed", "write /0/1", "/0/1", "SENML_JSON (110)")
    assert published["attempts"] == failed["attempts"]
    assert AWKWARD_KEY.hex() not in repr(logs) and "+/+/" not in repr(logs) and "-_-_" not in repr(logs)


async def test_a_new_bootstrap_after_a_failure_sends_the_same_key_again_in_tlv():
    device, provider = FormatDevice({int(CF.SENML_CBOR)}), Provider()  # no TLV: 4.15, then SenML CBOR
    svc = BootstrapService(BootstrapConfig(), CoapConfig(port=5683, secure_port=5684), device.send,
                           credentials=provider, local_base=lambda address: "coaps://192.0.2.7:5684")
    for _ in range(2):
        assert (await svc.handle(coaps_request())).code == "2.04"
        assert (await svc.wait("dev-1")).finished
    formats = [fmt for path, fmt, _ in device.writes if path == "/0/1"]
    assert formats == [CF.TLV, CF.SENML_CBOR, CF.TLV, CF.SENML_CBOR]
    assert provider.handed_out == [("dev-1", AWKWARD_KEY)] * 2  # nothing regenerated
    keys = {codecs.decode(fmt, payload, P(path), REGISTRY).resources[5].value
            for path, fmt, payload in device.writes if path == "/0/1" and fmt == CF.SENML_CBOR}
    assert keys == {AWKWARD_KEY}


# -- real servers and simulated clients --------------------------------------------------------


class Recorder:
    """Keeps each request the Bootstrap-Server sent the device (method, path, format, bytes)
    as the device received them, then lets the device answer it."""

    def __init__(self, device: SimulatedDevice) -> None:
        self.requests: list[tuple[str, str, int | None, bytes]] = []
        self._handle = device.bootstrap.handle
        device.bootstrap.handle = self

    def __call__(self, method, uri_path, query=(), content_format=None, accept=None, payload=b""):
        self.requests.append((method, "/" + "/".join(uri_path), content_format, bytes(payload or b"")))
        return self._handle(method, uri_path, query, content_format, accept, payload)

    def write(self, path: str) -> tuple[int | None, bytes]:
        return next((fmt, payload) for method, where, fmt, payload in self.requests
                    if method == "PUT" and where == path)


def tlv_only(device: SimulatedDevice) -> SimulatedDevice:
    device.objects.content_formats = TLV_ONLY  # reads and writes text, opaque and TLV: nothing else
    device.objects.composite_formats = ()
    return device


class SecureServer:
    """A server in secure-only mode with a credential store, its Bootstrap-Server on
    the shared ports or on a CoAPS port of its own."""

    async def start(self, tmp_path: Path, bootstrap_secure_port: int = 0) -> SecureServer:
        self.store = await SqliteStore.open(tmp_path / "state.sqlite3")
        self.credentials = CredentialStore(tmp_path / "credentials.sqlite3")
        base = ServerConfig()
        config = replace(base, coap=replace(base.coap, host="127.0.0.1", port=0, secure_port=0, request_timeout_s=5),
                         security=replace(base.security, mode="secure-only"),
                         bootstrap=replace(base.bootstrap, secure_port=bootstrap_secure_port))
        self.server = LwM2MServer(config, ObjectRegistry.default(), self.store, credentials=self.credentials,
                                  trust_anchors=[])
        await self.server.start()
        self.devices: list[SimulatedDevice] = []
        return self

    def factory_device(self, endpoint: str, bootstrap_port: int, **options) -> SimulatedDevice:
        self.credentials.add(PskCredential(endpoint, f"{endpoint}-bs", BOOTSTRAP_KEY, "bootstrap"), now=1.0)
        options = {"profile": "cortex-m4f", "seed": 1, "sensor_interval": 3600, "request_timeout": 5,
                   "bootstrap_timeout": 20, **options}
        device = SimulatedDevice(endpoint, bootstrap_uri=f"coaps://127.0.0.1:{bootstrap_port}",
                                 bootstrap_psk=(f"{endpoint}-bs", BOOTSTRAP_KEY), **options)
        self.devices.append(device)
        return device

    def sessions(self, adapter) -> list[str]:
        """PSK identities of the DTLS sessions open on ``adapter``'s CoAPS port."""
        return sorted(s.identity.decode() for s in adapter._dtls.endpoint.sessions.values() if not s.closed)

    async def stop(self) -> None:
        for device in self.devices:
            await device.stop(deregister=False)
        await self.server.stop()
        await self.store.close()
        self.credentials.close()


@pytest.fixture
async def secure(tmp_path):
    pytest.importorskip("DTLSSocket.dtls", reason="CoAPS needs DTLSSocket (tinydtls)")
    servers: list[SecureServer] = []

    async def start(**options) -> SecureServer:
        folder = tmp_path / str(len(servers))
        folder.mkdir()
        server = await SecureServer().start(folder, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.mark.parametrize("profile, only_tlv", [
    ("cortex-m4f", True),      # LwM2M 1.1 reading TLV only (pct=11542)
    ("cortex-m0plus", True),   # LwM2M 1.0 (no pct)
    ("cortex-m4f", False),     # LwM2M 1.1 preferring SenML CBOR (pct=112): TLV all the same
])
async def test_psk_bootstrap_of_a_tlv_only_client_writes_exact_tlv_and_it_registers_over_coaps(
        secure, profile, only_tlv):
    stack = await secure()
    server = stack.server
    device = stack.factory_device(f"tlv-{profile}-{only_tlv}", server.secure_port, profile=profile)
    if only_tlv:
        tlv_only(device)
    recorder = Recorder(device)
    await device.start()

    credential = stack.credentials.for_endpoint(device.endpoint, "server")
    fmt, payload = recorder.write("/0/1")
    assert fmt == CF.TLV
    uri = f"coaps://127.0.0.1:{server.secure_port}".encode()
    assert payload == (tlv(0, uri)                                  # LwM2M Server URI
                       + tlv(1, b"\x00")                            # Bootstrap-Server: false
                       + tlv(2, b"\x00")                            # Security Mode 0: PSK
                       + tlv(3, credential.identity.encode())       # PSK identity, as UTF-8 bytes
                       + tlv(4, b"")                                # no server public key with PSK
                       + tlv(5, credential.key)                     # the PSK itself, raw bytes
                       + tlv(10, b"\x01"))                          # Short Server ID 1
    assert {where: f for method, where, f, _ in recorder.requests if method == "PUT"} == {
        "/0/1": CF.TLV, "/1/0": CF.TLV}  # no /26241/0/21 write: no trust anchors on this server
    assert device.psk == (credential.identity.encode(), credential.key)
    registration = server.registration(device.endpoint)
    assert registration.identity == credential.identity and registration.address.startswith("coaps://")
    assert server._bootstrap.session(device.endpoint).write_format == CF.TLV


async def test_with_its_own_coaps_port_the_bootstrap_server_writes_the_servers_port_and_a_new_session_registers(
        secure):
    stack = await secure(bootstrap_secure_port=free_udp_port())
    server = stack.server
    assert server.bootstrap_secure_port not in (None, server.secure_port)
    device = tlv_only(stack.factory_device("own-port", server.bootstrap_secure_port))
    recorder = Recorder(device)
    await device.start()

    written = codecs.decode(CF.TLV, recorder.write("/0/1")[1], P("/0/1"), REGISTRY)
    assert written.resources[0].value == f"coaps://127.0.0.1:{server.secure_port}"  # the server's port
    assert device.server_uri == f"coaps://127.0.0.1:{server.secure_port}"
    registration = server.registration("own-port")
    credential = stack.credentials.for_endpoint("own-port", "server")
    assert registration is not None and registration.identity == credential.identity
    # the Register came over a session of its own, proved with the server PSK; the bootstrap
    # session lives on the Bootstrap-Server's port only
    assert stack.sessions(server._adapter) == [credential.identity]
    assert stack.sessions(server._bootstrap_listener.adapter) == ["own-port-bs"]
    assert server.port is not None and server._bootstrap_listener.port is None  # no extra plain port


async def test_with_its_own_coaps_port_bs_on_the_servers_coaps_port_is_404(secure):
    stack = await secure(bootstrap_secure_port=free_udp_port())
    device = stack.factory_device("wrong-port", stack.server.secure_port, bootstrap_timeout=5)
    with pytest.raises(RegistrationFailed, match="Bootstrap-Request answered 4.04"):
        await device.start()
    assert stack.server.registration("wrong-port") is None


# -- plain CoAP: a failed bootstrap as the operator sees it, and queue mode -----------------------


@pytest.fixture
async def plain_server(tmp_path):
    from test_server import config_for_tests

    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    servers, devices = [], []

    async def start(**bootstrap) -> LwM2MServer:
        config = config_for_tests()
        config = replace(config, coap=replace(config.coap, secure_port=None),
                         bootstrap=replace(config.bootstrap, **bootstrap))
        server = LwM2MServer(config, ObjectRegistry.default(), store, trust_anchors=[])
        await server.start()
        servers.append(server)
        return server

    yield start, devices
    for device in devices:
        await device.stop(deregister=False)
    for server in servers:
        await server.stop()
    await store.close()


async def test_a_client_that_takes_no_format_fails_its_bootstrap_and_the_server_says_where(plain_server):
    start, devices = plain_server
    server = await start()
    device = SimulatedDevice("no-formats", "cortex-m4f", "coap://127.0.0.1:9", seed=1, sensor_interval=3600,
                             request_timeout=5, bootstrap_uri=f"coap://127.0.0.1:{server.port}", bootstrap_timeout=3)
    device.objects.content_formats = (int(CF.TEXT), int(CF.OPAQUE))
    devices.append(device)
    with server.events.subscribe() as queue:
        with pytest.raises(RegistrationFailed, match="no Bootstrap-Finish"):
            await device.start()
        events = [queue.get_nowait().data for _ in range(queue.qsize())]
    failure = server._bootstrap.session("no-formats").failure
    assert (failure.step, failure.path, failure.code) == ("write /0/1", "/0/1", "4.15")
    failed = [e for e in events if e.get("state") == "failed"]
    assert [(e["step"], e["path"], e["content_format"]) for e in failed] == [
        ("write /0/1", "/0/1", "SENML_JSON (110)")]
    assert len(failed[0]["attempts"]) == 3 and failed[0]["attempts"][0].startswith("write /0/1 in TLV (11542): 4.15")
    assert server.registration("no-formats") is None


@pytest.mark.parametrize("profile", ["cortex-m4f", "cortex-m0plus"])
async def test_a_uq_binding_set_by_the_operator_survives_bootstrap(plain_server, profile):
    start, devices = plain_server
    server = await start(binding="UQ")
    device = SimulatedDevice(f"sleepy-{profile}", profile, "coap://127.0.0.1:9", seed=1, sensor_interval=3600,
                             request_timeout=5, bootstrap_uri=f"coap://127.0.0.1:{server.port}")
    devices.append(device)
    await device.start()
    assert device.objects.get("/1/0/7") == "UQ"
    registration = server.registration(device.endpoint)
    assert registration.queue_mode and registration.binding == "U"


async def test_without_the_setting_the_binding_is_u_and_the_device_is_not_in_queue_mode(plain_server):
    start, devices = plain_server
    server = await start()
    device = SimulatedDevice("awake", "cortex-m0plus", "coap://127.0.0.1:9", seed=1, sensor_interval=3600,
                             request_timeout=5, bootstrap_uri=f"coap://127.0.0.1:{server.port}")
    devices.append(device)
    await device.start()
    assert device.objects.get("/1/0/7") == "U" and not server.registration("awake").queue_mode


async def test_a_plain_bootstrap_port_of_its_own_serves_bs_and_nothing_else(plain_server):
    from test_bootstrap import raw_post

    start, devices = plain_server
    port = free_udp_port()
    server = await start(port=port)
    assert server.bootstrap_port == port != server.port and server.bootstrap_secure_port is None
    assert (await raw_post(server.port, ("ep=x",))).code.dotted == "4.04"  # /bs moved away from coap.port
    device = SimulatedDevice("bs-plain", "cortex-m4f", "coap://127.0.0.1:9", seed=1, sensor_interval=3600,
                             request_timeout=5, bootstrap_uri=f"coap://127.0.0.1:{port}")
    devices.append(device)
    await device.start()
    assert device.server_uri == f"coap://127.0.0.1:{server.port}"  # registered at the server's own port
    assert server.registration("bs-plain") is not None
