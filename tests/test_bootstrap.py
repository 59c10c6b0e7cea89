"""Client-initiated bootstrap, server side: the Bootstrap-Request parser and the plan
(sans-I/O, payloads decoded back through the codecs), the Bootstrap-Server's
authorisation and plan runner against a scripted device, and a real LwM2MServer
bootstrapping simulated devices over plain CoAP."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiocoap
import pytest
from aiocoap import Code, Message
from structlog.testing import capture_logs

from ipso_objects import LwM2MPath, MultiResource, ObjectInstance, ObjectRegistry, codecs
from ipso_objects.codecs import ContentFormat as CF
from lwm2m_server.core import operations as ops
from lwm2m_server.core.bootstrap import (
    BootstrapError, BootstrapSession, Outcome, Psk, ServerAccount, TRUST_ANCHORS, configuration,
    parse_bootstrap_request, parse_discovery, plan,
)
from lwm2m_server.bootstrap_server import BootstrapService, StoreCredentials, public_key_der
from lwm2m_server.transport.coap import CoapResponse, DeviceUnreachable, IncomingRequest
from lwm2m_server.config import BootstrapConfig, CoapConfig
from lwm2m_server.security.credentials import CredentialStore, PskCredential
from lwm2m_server.server import LwM2MServer, Queued
from lwm2m_server.store.sqlite import SqliteStore
from lwm2m_server.suit import generate_signing_key
from simulators.client import RegistrationFailed, SimulatedDevice
from test_server import config_for_tests
from test_sim_updates import module

P = LwM2MPath.parse
REGISTRY = ObjectRegistry.default()
KEY = bytes(range(16))
ANCHOR = public_key_der(generate_signing_key())


def psk_account(**changes) -> ServerAccount:
    base = ServerAccount("coaps://lwm2m.example.net:5684", short_server_id=7, lifetime=300, binding="UQ",
                         psk=Psk("dev-1-psk", KEY))
    return replace(base, **changes)


def steps_by_name(steps) -> dict:
    return {step.name: step for step in steps}


# -- Bootstrap-Request --------------------------------------------------------------------------


def test_bootstrap_request_carries_endpoint_and_preferred_format():
    assert parse_bootstrap_request(["ep=dev-1"]).endpoint == "dev-1"
    request = parse_bootstrap_request(["ep=dev-1", "pct=110"])
    # TLV first whatever the preference: pct is where the writes go when TLV is refused
    assert (request.preferred_format, request.write_format) == (110, CF.TLV)
    # binary formats before JSON ones: base64 is what clients disagree on
    assert request.write_formats == (CF.TLV, CF.SENML_CBOR, CF.SENML_JSON)
    assert parse_bootstrap_request(["ep=dev-1", "pct=11543"]).write_formats == (
        CF.TLV, CF.SENML_CBOR, CF.OMA_JSON, CF.SENML_JSON)
    assert parse_bootstrap_request(["ep=dev-1"]).write_formats == (CF.TLV, CF.SENML_CBOR, CF.SENML_JSON)
    assert parse_bootstrap_request(["ep=dev-1", "pct=11544"]).write_formats == (
        CF.TLV, CF.LWM2M_CBOR, CF.SENML_CBOR, CF.SENML_JSON)
    # text/plain cannot carry an object instance: not a write format
    assert parse_bootstrap_request(["ep=dev-1", "pct=0"]).write_formats == (CF.TLV, CF.SENML_CBOR, CF.SENML_JSON)


@pytest.mark.parametrize("query, reason", [
    ([], "missing endpoint"),
    (["ep="], "missing endpoint"),
    (["ep=a", "ep=b"], "given twice"),
    (["ep=bad\x00name"], "printable"),
    (["ep=" + "x" * 256], "printable"),
    (["ep=a", "pct=json"], "pct must be"),
    (["ep=a", "pct"], "pct must be"),
    (["ep=a", "pct=70000"], "pct must be"),
])
def test_bad_bootstrap_request_is_400(query, reason):
    with pytest.raises(BootstrapError, match=reason) as caught:
        parse_bootstrap_request(query)
    assert caught.value.code == "4.00"


# -- the plan -----------------------------------------------------------------------------------


def test_plan_deletes_accounts_discovers_writes_and_finishes_in_order():
    steps = plan(parse_bootstrap_request(["ep=dev-1"]), psk_account(), [ANCHOR])
    assert [(s.name, s.request.method, "/" + "/".join(s.request.uri_path)) for s in steps] == [
        ("delete /0", "DELETE", "/0"),     # not "/": that would wipe /9, /26241 and the sensors
        ("delete /1", "DELETE", "/1"),
        ("delete /21", "DELETE", "/21"),   # no OSCORE context of an earlier bootstrap stays
        ("discover /", "GET", "/"),
        ("write /0/1", "PUT", "/0/1"),     # /0/0 is where clients keep the bootstrap account
        ("write /1/0", "PUT", "/1/0"),
        ("write /26241/0/21", "PUT", "/26241/0/21"),
        ("finish", "POST", "/bs"),
    ]
    by_name = steps_by_name(steps)
    assert by_name["discover /"].request.accept == CF.LINK
    assert {s.request.content_format for s in steps if s.name.startswith("write")} == {CF.TLV}


def test_server_instance_is_exact_tlv():
    steps = plan(parse_bootstrap_request(["ep=a"]), ServerAccount("coap://h:5683"))
    # /1/0: SSID 1 (c1 00 01), lifetime 86400 in 4 bytes (c4 01 00015180),
    # notification storing true (c1 06 01), binding "U" (c1 07 55)
    assert steps_by_name(steps)["write /1/0"].request.payload == bytes.fromhex("c10001c40100015180c10601c10755")


@pytest.mark.parametrize("fmt", [CF.TLV, CF.SENML_CBOR, CF.SENML_JSON, CF.OMA_JSON, CF.LWM2M_CBOR])
def test_security_instance_decodes_back_resource_by_resource(fmt):
    request = parse_bootstrap_request(["ep=dev-1"])
    write = steps_by_name(configuration(request, psk_account(), content_format=fmt))["write /0/1"]
    assert write.request.content_format == fmt
    node = codecs.decode(fmt, write.request.payload, P("/0/1"), REGISTRY)
    assert isinstance(node, ObjectInstance) and node.id == 1
    values = {rid: resource.value for rid, resource in node.resources.items()}
    assert values == {
        0: "coaps://lwm2m.example.net:5684",  # LwM2M Server URI
        1: False,                             # not a Bootstrap-Server
        2: 0,                                 # Security Mode: PSK
        3: b"dev-1-psk",                      # PSK identity
        4: b"",                               # Server Public Key: none with PSK
        5: KEY,                               # Secret Key
        10: 7,                                # Short Server ID
    }
    server = steps_by_name(configuration(request, psk_account(), content_format=fmt))["write /1/0"]
    node = codecs.decode(fmt, server.request.payload, P("/1/0"), REGISTRY)
    assert {rid: r.value for rid, r in node.resources.items()} == {0: 7, 1: 300, 6: True, 7: "UQ"}


def test_nosec_account_writes_mode_3_without_keys():
    write = steps_by_name(plan(parse_bootstrap_request(["ep=a"]), ServerAccount("coap://10.0.0.1:5683")))["write /0/1"]
    node = codecs.decode(CF.TLV, write.request.payload, P("/0/1"), REGISTRY)
    values = {rid: r.value for rid, r in node.resources.items()}
    assert (values[0], values[2], values[3], values[5]) == ("coap://10.0.0.1:5683", 3, b"", b"")


def test_trust_anchors_are_one_opaque_instance_each():
    other = public_key_der(generate_signing_key("EdDSA"))
    write = steps_by_name(plan(parse_bootstrap_request(["ep=a"]), psk_account(), [ANCHOR, other]))[
        "write /26241/0/21"]
    node = codecs.decode(CF.TLV, write.request.payload, TRUST_ANCHORS, REGISTRY)
    assert node == MultiResource(21, {0: ANCHOR, 1: other})
    assert "write /26241/0/21" not in steps_by_name(plan(parse_bootstrap_request(["ep=a"]), psk_account()))


def test_account_uri_and_security_must_agree():
    with pytest.raises(BootstrapError, match="coaps:// server URI needs a PSK"):
        ServerAccount("coaps://h:5684")
    with pytest.raises(BootstrapError, match="coaps:// server URI needs a PSK"):
        ServerAccount("coap://h:5683", psk=Psk("i", KEY))
    assert KEY.hex() not in repr(psk_account()) and repr(KEY) not in repr(psk_account())


def test_discovery_picks_free_instance_and_skips_anchors_without_tinyml_object():
    session = BootstrapSession(parse_bootstrap_request(["ep=a"]), psk_account(), [ANCHOR])
    for code in ("2.02", "2.02", "2.02"):
        session.answered(code)
    discovered = b'</>;lwm2m=1.1,</0/0>,</0/1>;ssid=9;uri="coap://x",</1>,</3/0>,</9/0>'
    assert session.answered("2.05", discovered, CF.LINK).outcome is Outcome.DONE
    assert session.discovery.lwm2m_version == "1.1"
    remaining = []
    while (step := session.next_step()) is not None:
        remaining.append(step.name)
        session.answered("2.04")
    assert remaining == ["write /0/2", "write /1/0", "finish"]  # no /26241/0 on this device
    assert session.finished


def test_parse_discovery_of_a_spec_style_answer():
    found = parse_discovery(b'</>;lwm2m=1.1,</0/0>;ssid=101;uri="coaps://s1",</0/1>,</1/0>;ssid=101,'
                            b'</3/0>,</26241>;ver=1.1,</26241/0>')
    assert found.instance_ids(0) == {0, 1} and found.instance_ids(1) == {0}
    assert P("/26241/0") in found.instances and 26241 in found.objects
    with pytest.raises(BootstrapError):
        parse_discovery(b"</0/0")


@pytest.mark.parametrize("step, code, outcome", [
    ("delete /0", "2.02", Outcome.DONE),
    ("delete /0", "4.04", Outcome.TOLERATED),   # nothing to delete
    ("delete /1", "4.05", Outcome.FAILED),
    ("delete /21", "4.04", Outcome.TOLERATED),
    ("delete /21", "4.05", Outcome.TOLERATED),  # a device without the OSCORE object
    ("delete /21", "5.00", Outcome.FAILED),
    ("discover /", "4.04", Outcome.TOLERATED),  # a 1.0 client
    ("discover /", "5.00", Outcome.TOLERATED),
    ("write /0/1", "4.00", Outcome.FAILED),
    ("write /1/0", "4.15", Outcome.FAILED),
    ("write /26241/0/21", "4.04", Outcome.TOLERATED),  # no TinyML object on this device
    ("write /26241/0/21", "4.00", Outcome.FAILED),
    ("finish", "4.06", Outcome.FAILED),
    ("finish", "2.04", Outcome.DONE),
])
def test_each_answer_is_judged(step, code, outcome):
    steps = steps_by_name(plan(parse_bootstrap_request(["ep=a"]), psk_account(), [ANCHOR]))
    assert steps[step].judge(code) is outcome


def test_a_refused_write_stops_the_session_before_finish():
    session = BootstrapSession(parse_bootstrap_request(["ep=a"]), psk_account())
    for code in ("2.02", "4.04", "4.04", "4.05"):  # deletes, then a 1.0 client refusing Discover
        session.answered(code)
    result = session.answered("4.00", b"Security Mode 0 not supported")
    assert result.outcome is Outcome.FAILED and session.next_step() is None
    assert (session.failure.step, session.failure.code) == ("write /0/1", "4.00")
    assert session.failure.diagnostic == "Security Mode 0 not supported"
    assert not session.finished


# -- the service against a scripted device ---------------------------------------------------------


class Provider:
    """Credentials in memory; records server credentials handed out."""

    def __init__(self, bootstrap: dict[str, tuple[str, bytes]] | None = None) -> None:
        self.bootstrap = bootstrap or {}
        self.server: dict[str, tuple[str, bytes]] = {}

    def bootstrap_credential(self, endpoint):
        return self.bootstrap.get(endpoint)

    def server_credential(self, endpoint, now):
        return self.server.setdefault(endpoint, (f"{endpoint}-srv", bytes([7]) * 16))


class Device:
    """Answers the plan: 2.xx everywhere unless ``answers`` says otherwise (by step path)."""

    def __init__(self, answers: dict[tuple[str, str], str] | None = None, hold: asyncio.Event | None = None):
        self.answers = answers or {}
        self.hold = hold
        self.requests = []

    async def send(self, address, request, *, timeout):
        self.requests.append((address, request))
        if self.hold is not None:
            await self.hold.wait()
        key = (request.method, "/" + "/".join(request.uri_path))
        code = self.answers.get(key) or {"DELETE": "2.02", "PUT": "2.04", "POST": "2.04", "GET": "4.05"}[request.method]
        if code == "unreachable":
            raise DeviceUnreachable(address, "no response within 5 s")
        return CoapResponse(code, None, b"refused" if not code.startswith("2.") else b"")


def service(device: Device, *, provider=None, enabled=True, mode="mixed", secure_port: int | None = 5684,
            events=None) -> BootstrapService:
    coap = CoapConfig(port=5683, secure_port=secure_port)
    return BootstrapService(BootstrapConfig(enabled=enabled), coap, device.send, credentials=provider,
                            trust_anchors=[ANCHOR], security_mode=mode, events=events,
                            local_base=lambda address: "coap://[::ffff:192.0.2.7]:5683", clock=lambda: 1000.0)


def bs_request(query=("ep=dev-1",), identity=None, address="192.0.2.50:40000") -> IncomingRequest:
    return IncomingRequest("POST", ("bs",), tuple(query), None, b"", address, identity=identity)


async def run(svc: BootstrapService, request: IncomingRequest):
    response = await svc.handle(request)
    endpoint = parse_bootstrap_request(request.query).endpoint if response.code == "2.04" else None
    session = await svc.wait(endpoint) if endpoint else None
    return response, session


def written_security(device: Device) -> dict[int, object]:
    address, request = next((a, r) for a, r in device.requests if r.uri_path[:1] == ("0",) and r.method == "PUT")
    node = codecs.decode(request.content_format, request.payload, P("/" + "/".join(request.uri_path)), REGISTRY)
    return {rid: resource.value for rid, resource in node.resources.items()}


async def test_coaps_bootstrap_with_the_bootstrap_identity_writes_a_psk_account():
    provider = Provider({"dev-1": ("dev-1-bs", b"b" * 16)})
    device = Device()
    svc = service(device, provider=provider)
    with capture_logs() as logs:
        response, session = await run(svc, bs_request(identity="dev-1-bs", address="coaps://192.0.2.50:40000"))
    assert response.code == "2.04" and session.finished
    identity, key = provider.server["dev-1"]  # created for this endpoint
    security = written_security(device)
    assert security[0] == "coaps://192.0.2.7:5684"  # the address the device reached, IPv4 unmapped
    assert (security[2], security[3], security[5]) == (0, identity.encode(), key)
    assert {address for address, _ in device.requests} == {"coaps://192.0.2.50:40000"}
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == [
        "bootstrap_started", "bootstrap_step_tolerated", "bootstrap_finished"]  # Discover: 4.05
    flat = repr(logs)
    assert key.hex() not in flat and repr(key) not in flat and repr(b"b" * 16) not in flat


@pytest.mark.parametrize("identity, bootstrap, mode, reason", [
    ("dev-1-srv", {"dev-1": ("dev-1-bs", b"b" * 16)}, "mixed",
     "identity 'dev-1-srv' is not the bootstrap credential of endpoint 'dev-1'"),
    ("someone", {}, "mixed", "identity 'someone' is not the bootstrap credential of endpoint 'dev-1'"),
    (None, {"dev-1": ("dev-1-bs", b"b" * 16)}, "mixed", "has a bootstrap credential: bootstrap over CoAPS"),
    (None, {}, "secure-only", "plain CoAP bootstrap is refused"),
])
async def test_who_may_not_bootstrap_gets_403(identity, bootstrap, mode, reason):
    device = Device()
    response = await service(device, provider=Provider(bootstrap), mode=mode).handle(bs_request(identity=identity))
    assert response.code == "4.03" and reason in response.payload.decode()
    assert device.requests == []  # nothing was sent to the device


async def test_plain_bootstrap_writes_nosec_and_hands_out_no_key():
    provider = Provider()
    device = Device()
    response, session = await run(service(device, provider=provider), bs_request())
    assert response.code == "2.04" and session.finished
    security = written_security(device)
    assert (security[0], security[2], security[5]) == ("coap://192.0.2.7:5683", 3, b"")
    assert provider.server == {}  # no server PSK was created over an unauthenticated exchange


async def test_without_coaps_the_account_is_nosec_at_the_coap_port():
    device = Device()
    response, session = await run(service(device, provider=Provider(), secure_port=None), bs_request())
    assert written_security(device)[0] == "coap://192.0.2.7:5683" and session.finished


async def test_bad_ep_disabled_and_wrong_method():
    device = Device()
    response = await service(device).handle(bs_request(query=("pct=112",)))
    assert (response.code, response.payload) == ("4.00", b"missing endpoint client name (ep)")
    response = await service(device, enabled=False).handle(bs_request())
    assert response.code == "4.04"
    response = await service(device).handle(replace(bs_request(), method="GET"))
    assert response.code == "4.05"
    assert device.requests == []


@pytest.mark.parametrize("answer, step, code", [
    ({("PUT", "/0/1"): "4.00"}, "write /0/1", "4.00"),
    ({("POST", "/bs"): "4.06"}, "finish", "4.06"),
    ({("PUT", "/1/0"): "unreachable"}, "write /1/0", "unreachable"),
])
async def test_a_failed_step_is_logged_with_step_and_code(answer, step, code):
    device = Device(answer)
    with capture_logs() as logs:
        response, session = await run(service(device), bs_request())
    assert response.code == "2.04" and not session.finished
    failed = [e for e in logs if e["event"] == "bootstrap_failed"]
    assert [(e["ep"], e["step"], e["code"]) for e in failed] == [("dev-1", step, code)]
    if step != "finish":
        assert ("POST", ("bs",)) not in [(r.method, r.uri_path) for _, r in device.requests]


async def test_a_second_request_restarts_the_running_bootstrap():
    hold = asyncio.Event()
    device = Device(hold=hold)
    svc = service(device)
    assert (await svc.handle(bs_request(address="192.0.2.50:1"))).code == "2.04"
    await asyncio.sleep(0.01)
    first = svc.session("dev-1")
    assert svc.running("dev-1")
    assert (await svc.handle(bs_request(address="192.0.2.50:2"))).code == "2.04"
    hold.set()
    second = await svc.wait("dev-1")
    assert second is not first and second.finished and not first.finished
    # after the restart everything went to the device's new address
    assert [address for address, _ in device.requests].count("192.0.2.50:1") == 1
    await svc.close()


async def test_events_tell_subscribers_how_the_bootstrap_ended():
    from lwm2m_server.core.events import EventHub

    hub = EventHub()
    with hub.subscribe() as queue:
        await run(service(Device({("PUT", "/0/1"): "4.00"}), events=hub), bs_request())
        events = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [(e.kind, e.data["state"]) for e in events] == [("bootstrap", "started"), ("bootstrap", "failed")]
    assert events[-1].data["step"] == "write /0/1"


def test_store_credentials_over_the_security_store(tmp_path):
    store = CredentialStore(tmp_path / "credentials.sqlite3")
    try:
        provider = StoreCredentials(store)
        assert provider.bootstrap_credential("dev-1") is None
        store.add(PskCredential("dev-1", "dev-1-bs", b"k" * 16, "bootstrap", 1.0))
        assert provider.bootstrap_credential("dev-1") == ("dev-1-bs", b"k" * 16)
        identity, key = provider.server_credential("dev-1", 2.0)
        assert len(key) == 16 and identity != "dev-1-bs"
        assert provider.server_credential("dev-1", 3.0) == (identity, key)  # kept, not rotated
        assert store.for_endpoint("dev-1", "server").key == key
    finally:
        store.close()


# -- a real server and simulated devices over loopback -------------------------------------------


@pytest.fixture
async def bootstrap_server(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    key = generate_signing_key()
    config = config_for_tests()
    config = replace(config, coap=replace(config.coap, secure_port=None))  # plain CoAP: NoSec accounts
    server = LwM2MServer(config, ObjectRegistry.default(), store, trust_anchors=[public_key_der(key)])
    await server.start()
    server.signing_key = key
    devices: list[SimulatedDevice] = []
    yield server, devices
    for device in devices:
        await device.stop(deregister=False)
    await server.stop()
    await store.close()


async def perform(server: LwM2MServer, endpoint: str, build):
    outcome = await server.perform(endpoint, build)
    assert not isinstance(outcome, Queued)
    return outcome


@pytest.mark.parametrize("profile", ["cortex-m0plus", "cortex-m4f"])  # LwM2M 1.0 (TLV) and 1.1 (SenML CBOR)
async def test_device_bootstraps_registers_and_trusts_the_servers_signing_key(bootstrap_server, profile):
    server, devices = bootstrap_server
    device = SimulatedDevice(f"bs-{profile}", profile, "coap://127.0.0.1:9", seed=1, sensor_interval=3600,
                             request_timeout=5, bootstrap_uri=f"coap://127.0.0.1:{server.port}",
                             bootstrap_timeout=10)
    devices.append(device)
    assert device.bootstrap.account() is None  # only the Bootstrap-Server account to begin with
    await device.start()
    # it registered at the URI the Bootstrap-Server wrote, not at the one it was made with
    assert device.server_uri == f"coap://127.0.0.1:{server.port}"
    assert server.registration(device.endpoint) is not None
    account = device.bootstrap.account()
    assert (account.security_mode, account.short_server_id) == (3, 1)
    assert device.objects.get("/1/0/1") == 86400
    assert server._bootstrap.session(device.endpoint).finished
    # the server's module-signing key is a trust anchor now: a module it signed installs
    assert device.objects.get("/26241/0/21") == {0: public_key_der(server.signing_key)}
    envelope = module(device.objects, key=server.signing_key)
    result = await perform(server, device.endpoint, lambda reg: ops.write(reg, P("/9/0/2"), envelope))
    assert result.ok, result
    assert device.objects.get("/9/0/7") == 3 and device.objects.get("/9/0/9") == 3  # delivered: verified
    # a device that was not bootstrapped refuses the same module (53: untrusted signature)
    stranger = SimulatedDevice("no-bs", profile, f"coap://127.0.0.1:{server.port}", seed=1)
    assert stranger.objects.handle("PUT", ["9", "0", "2"], content_format=42, payload=envelope).code == "2.04"
    assert stranger.objects.get("/9/0/9") == 53


async def test_management_server_cannot_see_security_or_trust_anchors(bootstrap_server):
    server, devices = bootstrap_server
    device = SimulatedDevice("bs-dm", "cortex-m4f", "coap://127.0.0.1:9", seed=1, sensor_interval=3600,
                             request_timeout=5, bootstrap_uri=f"coap://127.0.0.1:{server.port}")
    devices.append(device)
    await device.start()
    ep = device.endpoint
    read = await perform(server, ep, lambda reg: ops.read(reg, P("/26241/0/21")))
    assert read.code == "4.05" and read.node is None
    assert (await perform(server, ep, lambda reg: ops.read(reg, P("/0")))).code == "4.04"
    whole = await perform(server, ep, lambda reg: ops.read(reg, P("/26241/0")))
    assert whole.ok and 21 not in whole.node.resources
    found = await perform(server, ep, lambda reg: ops.discover(reg, P("/26241/0")))
    assert found.ok and P("/26241/0/21") not in {link.path for link in found.links}
    forged = public_key_der(generate_signing_key())
    payload = codecs.encode(CF.TLV, MultiResource(21, {0: forged}), TRUST_ANCHORS, REGISTRY)
    attack = ops.DeviceRequest(ops.Operation.WRITE_REPLACE, "PUT", ("26241", "0", "21"),
                               content_format=CF.TLV, payload=payload, paths=(TRUST_ANCHORS,))
    assert (await perform(server, ep, lambda reg: attack)).code == "4.05"
    assert device.objects.get("/26241/0/21") == {0: public_key_der(server.signing_key)}


async def raw_post(port: int, query: tuple[str, ...]) -> Message:
    context = await aiocoap.Context.create_client_context()
    try:
        message = Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/bs")
        message.opt.uri_query = query
        async with asyncio.timeout(5):
            return await context.request(message).response
    finally:
        await context.shutdown()


async def test_bootstrap_request_over_the_wire_bad_ep_is_400(bootstrap_server):
    server, _ = bootstrap_server
    response = await raw_post(server.port, ("pct=112",))
    assert response.code == Code.BAD_REQUEST and b"ep" in response.payload


async def test_bootstrap_disabled_is_404_and_the_device_says_so(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    config = config_for_tests()
    config = replace(config, bootstrap=replace(config.bootstrap, enabled=False))
    server = LwM2MServer(config, ObjectRegistry.default(), store, trust_anchors=[])
    await server.start()
    try:
        response = await raw_post(server.port, ("ep=dev-1",))
        assert response.code == Code.NOT_FOUND
        device = SimulatedDevice("bs-off", "cortex-m4f", "coap://127.0.0.1:9", request_timeout=5,
                                 bootstrap_uri=f"coap://127.0.0.1:{server.port}")
        with pytest.raises(RegistrationFailed, match="Bootstrap-Request answered 4.04"):
            await device.start()
        assert not device.registered and server.registration("bs-off") is None
    finally:
        await server.stop()
        await store.close()
