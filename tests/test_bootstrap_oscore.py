"""The Bootstrap-Server provisions OSCORE (LwM2M 1.1 object 21): the plan (payloads
decoded back resource by resource), the device's Bootstrap interface, the service's
policy against a scripted device, and end to end: a device that knows only its
bootstrap PSK bootstraps over CoAPS from a real server whose store holds an OSCORE
credential for it, then registers over coap:// protected with OSCORE and is read.
A plain-CoAP bootstrap never carries an OSCORE secret."""

from __future__ import annotations

from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from ipso_objects import LwM2MPath, ObjectInstance, ObjectRegistry, ObjLnk, Resource, codecs
from ipso_objects.codecs import ContentFormat as CF
from lwm2m_server.core import operations as ops
from lwm2m_server.core.bootstrap import (
    BootstrapError, BootstrapSession, Psk, ServerAccount, configuration, device_context, parse_bootstrap_request,
    parse_discovery, plan,
)
from lwm2m_server.bootstrap_server import StoreCredentials
from lwm2m_server.security.credentials import CredentialStore, PskCredential, oscore_credential
from lwm2m_server.security.oscore import OscoreContext, OscoreCredentialError
from simulators.bootstrap import FINISHED, BootstrapInterface
from simulators.client import RegistrationFailed, SimulatedDevice
from simulators.objects import DeviceObjects
from simulators.profiles import builtin_profiles
from test_bootstrap import Device, Provider, bs_request, run, service, steps_by_name

P = LwM2MPath.parse
REGISTRY = ObjectRegistry.default()
SECRET = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
SALT = bytes.fromhex("9e7ca92223786340")
SERVER_ID = b"\x01"  # the server's Sender ID: the device's Recipient ID
DEVICE_ID = b"\x0a"  # the server's Recipient ID: the device's Sender ID (kid of its requests)
BOOTSTRAP_KEY = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")


def credential(endpoint: str = "dev-1", **changes):
    """The server's view, as the security store holds it."""
    values = dict(sender_id=SERVER_ID, recipient_id=DEVICE_ID, master_secret=SECRET, master_salt=SALT)
    values.update(changes)
    return oscore_credential(endpoint, **values)


def oscore_account(**changes) -> ServerAccount:
    return ServerAccount("coap://lwm2m.example.net:5683", short_server_id=7, lifetime=300,
                         oscore=device_context(credential(**changes)))


def decoded(step) -> dict[int, object]:
    request = step.request
    node = codecs.decode(request.content_format, request.payload, P("/" + "/".join(request.uri_path)), REGISTRY)
    assert isinstance(node, ObjectInstance)
    return {rid: resource.value for rid, resource in node.resources.items()}


# -- the plan -----------------------------------------------------------------------------------


def test_oscore_plan_writes_the_context_before_the_account_that_links_it():
    steps = plan(parse_bootstrap_request(["ep=dev-1"]), oscore_account())
    assert [s.name for s in steps] == [
        "delete /0", "delete /1", "delete /21", "discover /",
        "write /21/1",  # no discovery: 1, as for Security (0 may be the Bootstrap-Server's)
        "write /0/1", "write /1/0", "finish"]


@pytest.mark.parametrize("fmt", [CF.TLV, CF.SENML_CBOR, CF.SENML_JSON])
def test_oscore_instance_and_security_instance_decode_back_resource_by_resource(fmt):
    by_name = steps_by_name(configuration(parse_bootstrap_request(["ep=dev-1"]), oscore_account(),
                                          content_format=fmt))
    assert by_name["write /21/1"].request.content_format == fmt
    assert decoded(by_name["write /21/1"]) == {
        0: SECRET,          # Master Secret
        1: DEVICE_ID,       # Sender ID: the device's, i.e. the server's Recipient ID
        2: SERVER_ID,       # Recipient ID: the device's, i.e. the server's Sender ID
        3: 10,              # AEAD: AES-CCM-16-64-128
        4: -10,             # HKDF SHA-256
        5: SALT,            # Master Salt
    }                       # no ID Context (6): the credential has none
    assert decoded(by_name["write /0/1"]) == {
        0: "coap://lwm2m.example.net:5683",  # coap://: OSCORE protects the messages, not DTLS
        1: False,
        2: 3,                                 # Security Mode: NoSec at the DTLS level
        3: b"", 4: b"", 5: b"",               # no PSK, no keys
        10: 7,
        17: ObjLnk(21, 1),                    # OSCORE Security Mode: the /21 instance written
    }
    assert decoded(by_name["write /1/0"]) == {0: 7, 1: 300, 6: True, 7: "U"}


def test_id_context_and_algorithms_are_written_when_the_credential_has_them():
    account = oscore_account(id_context=b"\x37\xcb", aead=11, hkdf=-11)
    values = decoded(steps_by_name(plan(parse_bootstrap_request(["ep=a"]), account))["write /21/1"])
    assert (values[3], values[4], values[6]) == (11, -11, b"\x37\xcb")
    empty = oscore_account(id_context=b"")  # an empty ID Context is not no ID Context (RFC 8613)
    values = decoded(steps_by_name(plan(parse_bootstrap_request(["ep=a"]), empty))["write /21/1"])
    assert values[6] == b""


def test_device_context_swaps_the_servers_ids():
    server_view = credential(sender_id=b"\x01\x02", recipient_id=b"\x0b")
    device_view = device_context(server_view)
    assert (device_view.sender_id, device_view.recipient_id) == (b"\x0b", b"\x01\x02")
    assert (device_view.master_secret, device_view.master_salt) == (SECRET, SALT)


def test_the_discovery_places_the_oscore_instance():
    session = BootstrapSession(parse_bootstrap_request(["ep=a", "pct=112"]), oscore_account())
    for code in ("2.02", "2.02", "2.02"):
        session.answered(code)
    # the Bootstrap-Server's own context survived the delete as /21/0
    session.answered("2.05", b'</>;lwm2m=1.1,</0/0>,</1>,</21>;ver=2.0,</21/0>,</3/0>', CF.LINK)
    remaining = []
    while (step := session.next_step()) is not None:
        remaining.append(step)
        session.answered("2.04")
    assert [s.name for s in remaining] == ["write /21/1", "write /0/1", "write /1/0", "finish"]
    assert decoded(remaining[1])[17] == ObjLnk(21, 1)
    nothing_there = parse_discovery(b'</>;lwm2m=1.1,</0/0>,</1>,</21>;ver=2.0,</3/0>')
    steps = plan(parse_bootstrap_request(["ep=a"]), oscore_account(), discovery=nothing_there)
    assert "write /21/0" in steps_by_name(steps)


def test_oscore_accounts_are_coap_and_keep_their_secret_out_of_repr():
    with pytest.raises(BootstrapError, match="OSCORE account needs a coap:// server URI"):
        replace(oscore_account(), uri="coaps://h:5684", psk=Psk("dev-1-psk", BOOTSTRAP_KEY))
    with pytest.raises(OscoreCredentialError, match="sender_id and recipient_id must differ"):
        OscoreContext(b"\x01", b"\x01", SECRET)
    with pytest.raises(OscoreCredentialError, match="master_secret"):
        OscoreContext(b"\x01", b"\x02", b"short")
    account = oscore_account()
    assert SECRET.hex() not in repr(account) and repr(SECRET) not in repr(account)
    assert (account.security, account.security_mode) == ("oscore", 3)


# -- the device's side --------------------------------------------------------------------------


def fresh(profile: str = "cortex-m4f") -> BootstrapInterface:
    objects = DeviceObjects(REGISTRY, builtin_profiles()[profile], endpoint="dev-1", seed=1, now=1_700_000_000)
    interface = BootstrapInterface(objects, "coaps://bootstrap.example:5684", ("dev-1-bs", BOOTSTRAP_KEY))
    interface.begin()
    return interface


def apply(interface: BootstrapInterface, steps) -> dict[str, str]:
    answers = {}
    for step in steps:
        request = step.request
        answers[step.name] = interface.handle(request.method, request.uri_path, request.query,
                                              request.content_format, request.accept, request.payload).code
    return answers


def test_the_device_takes_the_oscore_plan_and_keeps_the_context_from_management_servers():
    interface = fresh()
    steps = plan(parse_bootstrap_request(interface.request_query("dev-1")), oscore_account())
    assert set(apply(interface, steps).values()) <= {"2.02", "2.04", "2.05"}
    assert interface.state == FINISHED
    account = interface.account()
    assert (account.uri, account.security_mode) == ("coap://lwm2m.example.net:5683", 3)
    oscore = account.oscore
    assert (oscore.sender_id, oscore.recipient_id, oscore.master_secret, oscore.master_salt) == (
        DEVICE_ID, SERVER_ID, SECRET, SALT)
    assert (oscore.aead, oscore.hkdf, oscore.id_context, oscore.instance) == (10, -10, None, 1)
    assert SECRET.hex() not in repr(account)
    objects = interface.objects
    interface.abort()
    # a management server sees neither /0 nor /21, and Register does not list them
    assert objects.handle("GET", ["21"]).code == "4.04"
    assert objects.handle("GET", ["21", "0"]).code == "4.04"
    assert not any(link.target.startswith("/21") for link in objects.registration_links())


def test_bootstrap_delete_clears_21_except_the_bootstrap_servers_own_context():
    interface = fresh()
    context = ObjectInstance(5, {rid: Resource(rid, v) for rid, v in {0: SECRET, 1: b"\x05", 2: b"\x06"}.items()})
    for instance_id in (4, 5):
        payload = codecs.encode(CF.TLV, replace(context, id=instance_id), P(f"/21/{instance_id}"), REGISTRY)
        assert interface.handle("PUT", ["21", str(instance_id)], content_format=CF.TLV, payload=payload).code == "2.04"
    interface.objects._tree[0][0][17] = ObjLnk(21, 5)  # the Bootstrap-Server account uses /21/5
    found = interface.handle("GET", [], accept=CF.LINK)
    assert b"</21/4>" in found.payload and b"</21/5>" in found.payload
    assert interface.handle("DELETE", ["21", "5"]).code == "4.00"
    assert interface.handle("DELETE", ["21"]).code == "2.02"
    assert sorted(interface.oscore) == [5]
    assert fresh("cortex-m0plus").handle("DELETE", ["21"]).code == "4.04"  # LwM2M 1.0: no object 21


@pytest.mark.parametrize("security, oscore, reason", [
    ({17: ObjLnk(21, 9)}, None, b"links /21/9, which does not exist"),
    ({17: ObjLnk(3, 0)}, None, b"not an OSCORE (21) instance"),
    ({0: "coaps://x:5684", 2: 0, 3: b"id", 5: b"k" * 16}, {0: SECRET, 1: b"\x01", 2: b"\x02"},
     b"OSCORE needs a coap:// URI and Security Mode 3"),
    ({}, {0: SECRET, 1: b"\x01"}, b"lacks its Master Secret, Sender ID or Recipient ID"),
    ({}, {0: SECRET, 1: b"\x01", 2: b"\x02", 3: 99}, b"AEAD 99 or HKDF -10 is not supported"),
])
def test_finish_refuses_an_oscore_account_the_device_cannot_use(security, oscore, reason):
    interface = fresh()
    values = {0: "coap://x:5683", 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: 1, 17: ObjLnk(21, 0)}
    values.update(security)
    if oscore is not None:
        payload = codecs.encode(CF.TLV, ObjectInstance(0, {r: Resource(r, v) for r, v in oscore.items()}),
                                P("/21/0"), REGISTRY)
        assert interface.handle("PUT", ["21", "0"], content_format=CF.TLV, payload=payload).code == "2.04"
    for path, instance in (("/0/1", ObjectInstance(1, {r: Resource(r, v) for r, v in values.items()})),
                           ("/1/0", ObjectInstance(0, {r: Resource(r, v) for r, v in
                                                       {0: 1, 1: 60, 6: False, 7: "U"}.items()}))):
        payload = codecs.encode(CF.TLV, instance, P(path), REGISTRY)
        assert interface.handle("PUT", path.strip("/").split("/"), content_format=CF.TLV,
                                payload=payload).code == "2.04"
    response = interface.handle("POST", ["bs"])
    assert response.code == "4.06" and reason in response.payload, response.payload


# -- the service's policy -----------------------------------------------------------------------


class OscoreProvider(Provider):
    """Credentials in memory with OSCORE ones; renewals are recorded."""

    def __init__(self, bootstrap=None, oscore=None) -> None:
        super().__init__(bootstrap)
        self.oscore = dict(oscore or {})
        self.renewed: list[str] = []

    def renew_oscore(self, endpoint, now):
        current = self.oscore.get(endpoint)
        if current is None:
            return None
        self.renewed.append(endpoint)
        self.oscore[endpoint] = replace(current, master_secret=bytes([len(self.renewed)]) * 16, created=now)
        return self.oscore[endpoint]


def writes(device: Device) -> dict[str, dict[int, object]]:
    found = {}
    for _, request in device.requests:
        if request.method == "PUT" and request.uri_path[0] in ("0", "21"):
            path = "/" + "/".join(request.uri_path)
            node = codecs.decode(request.content_format, request.payload, P(path), REGISTRY)
            found[path] = {rid: resource.value for rid, resource in node.resources.items()}
    return found


async def test_coaps_bootstrap_of_an_oscore_endpoint_writes_the_renewed_context():
    provider = OscoreProvider({"dev-1": ("dev-1-bs", b"b" * 16)}, {"dev-1": credential()})
    device = Device()
    with capture_logs() as logs:
        response, session = await run(service(device, provider=provider),
                                      bs_request(identity="dev-1-bs", address="coaps://192.0.2.50:40000"))
    assert response.code == "2.04" and session.finished
    renewed = provider.oscore["dev-1"]
    assert provider.renewed == ["dev-1"] and renewed.master_secret != SECRET
    written = writes(device)
    assert written["/21/1"] == {0: renewed.master_secret, 1: DEVICE_ID, 2: SERVER_ID, 3: 10, 4: -10, 5: SALT}
    security = written["/0/1"]
    assert (security[0], security[2], security[5], security[17]) == ("coap://192.0.2.7:5683", 3, b"", ObjLnk(21, 1))
    assert provider.server == {}  # no server PSK was made for an OSCORE account
    assert [e.get("security") for e in logs if e["event"] in ("bootstrap_started", "bootstrap_finished")] == [
        "oscore", "oscore"]
    flat = repr(logs)
    assert renewed.master_secret.hex() not in flat and repr(renewed.master_secret) not in flat


async def test_a_plain_coap_bootstrap_never_carries_an_oscore_secret():
    provider = OscoreProvider(oscore={"dev-1": credential()})
    device = Device()
    response, session = await run(service(device, provider=provider), bs_request())
    assert response.code == "2.04" and session.finished
    assert list(writes(device)) == ["/0/1"]  # no /21 write
    assert writes(device)["/0/1"][2] == 3 and 17 not in writes(device)["/0/1"]
    assert provider.renewed == [] and provider.oscore["dev-1"].master_secret == SECRET
    for _, request in device.requests:
        assert SECRET not in request.payload and SALT not in request.payload


async def test_a_coaps_server_uri_keeps_psk_accounts_for_oscore_endpoints():
    provider = OscoreProvider({"dev-1": ("dev-1-bs", b"b" * 16)}, {"dev-1": credential()})
    device = Device()
    svc = service(device, provider=provider)
    svc.config = replace(svc.config, server_uri="coaps://lwm2m.example.net:5684")
    response, session = await run(svc, bs_request(identity="dev-1-bs", address="coaps://192.0.2.50:40000"))
    assert session.finished and session.account.security == "psk" and provider.renewed == []
    assert "/21/1" not in writes(device)


def test_store_credentials_renew_the_oscore_master_secret_only(tmp_path):
    store = CredentialStore(tmp_path / "credentials.sqlite3")
    try:
        provider = StoreCredentials(store)
        assert provider.renew_oscore("dev-1", 5.0) is None
        store.add_oscore(credential(id_context=b"\x01"), now=1.0)
        first = provider.renew_oscore("dev-1", 5.0)
        second = provider.renew_oscore("dev-1", 6.0)
        assert len({SECRET, first.master_secret, second.master_secret}) == 3
        stored = store.oscore_for_endpoint("dev-1")
        assert stored == second and stored.created == 6.0
        assert (stored.sender_id, stored.recipient_id, stored.master_salt, stored.id_context) == (
            SERVER_ID, DEVICE_ID, SALT, b"\x01")
    finally:
        store.close()


# -- end to end over loopback -------------------------------------------------------------------

@pytest.fixture
async def factory(tmp_path):
    """A server with CoAPS and a security store (test_dtls.Secure)."""
    pytest.importorskip("DTLSSocket.dtls", reason="CoAPS needs DTLSSocket (tinydtls)")
    from test_dtls import Secure

    async with Secure(tmp_path) as setup:
        yield setup


def device_for(setup, endpoint: str, **options) -> SimulatedDevice:
    """A device that knows only its bootstrap account (coaps:// and a bootstrap PSK by default)."""
    options.setdefault("oscore_storage", setup.tmp_path / "devices" / endpoint)
    device = SimulatedDevice(endpoint, "cortex-m4f", "coap://127.0.0.1:9", REGISTRY, seed=3,
                             sensor_interval=3600, request_timeout=5, bootstrap_timeout=20,
                             bootstrap_uri=options.pop("bootstrap_uri", setup.coaps_uri),
                             bootstrap_psk=options.pop("bootstrap_psk", (f"{endpoint}-bs", BOOTSTRAP_KEY)),
                             **options)
    setup.devices.append(device)
    return device


async def read_device(setup, endpoint: str):
    return await setup.server.perform(endpoint, lambda reg: ops.read(reg, P("/3/0"), registry=REGISTRY))


async def test_device_bootstraps_over_coaps_then_registers_and_is_read_over_oscore(factory, capsys):
    factory.add("osc-bs", "osc-bs-bs", BOOTSTRAP_KEY, scope="bootstrap")
    factory.credentials.add_oscore(credential("osc-bs"), now=1.0)
    device = device_for(factory, "osc-bs")
    await device.start()
    renewed = factory.credentials.oscore_for_endpoint("osc-bs")
    assert renewed.master_secret != SECRET  # a fresh secret: the fresh context starts at sequence number 0
    assert device.server_uri == f"coap://127.0.0.1:{factory.server.port}"
    assert device.psk is None and device.oscore_context is not None
    registration = factory.server.registration("osc-bs")
    assert registration.identity == "oscore:0a"
    assert registration.address.startswith("oscore://0a@127.0.0.1:")
    result = await read_device(factory, "osc-bs")
    assert result.ok, result
    assert result.node.resources[0].value == device.objects.get("/3/0/0")
    await device.update()
    # the context is kept on "flash" and outlives a reboot: the device registers again with it
    await device.reboot()
    assert factory.server.registration("osc-bs").identity == "oscore:0a"
    assert (await read_device(factory, "osc-bs")).ok
    assert len(list((factory.tmp_path / "devices" / "osc-bs").iterdir())) == 1  # provisioned once
    out, err = capsys.readouterr()
    assert renewed.master_secret.hex() not in out + err and SECRET.hex() not in out + err


async def test_a_factory_reset_device_bootstraps_again_and_registers_with_a_new_context(factory):
    factory.add("osc-again", "osc-again-bs", BOOTSTRAP_KEY, scope="bootstrap")
    factory.credentials.add_oscore(credential("osc-again"), now=1.0)
    first = device_for(factory, "osc-again")
    await first.start()
    await first.stop(deregister=False)
    # The same device after a factory reset: same bootstrap account, no context. With the
    # first secret its sequence numbers would start at 0 again, which the server's
    # replay window has seen; the renewed secret makes it a new context.
    again = device_for(factory, "osc-again", oscore_storage=factory.tmp_path / "devices" / "osc-again-reset")
    await again.start()
    assert factory.server.registration("osc-again").identity == "oscore:0a"
    assert (await read_device(factory, "osc-again")).ok


async def test_without_an_oscore_credential_the_coaps_bootstrap_still_writes_psk(factory):
    factory.add("psk-bs", "psk-bs-bs", BOOTSTRAP_KEY, scope="bootstrap")
    device = device_for(factory, "psk-bs")
    await device.start()
    assert device.server_uri.startswith("coaps://") and device.oscore_context is None
    assert device.bootstrap.oscore == {}
    assert not factory.server.registration("psk-bs").identity.startswith("oscore:")


async def test_plain_bootstrap_of_an_oscore_endpoint_hands_out_no_context(factory):
    factory.credentials.add_oscore(credential("osc-plain"), now=1.0)
    device = device_for(factory, "osc-plain", bootstrap_uri=f"coap://127.0.0.1:{factory.server.port}",
                                bootstrap_psk=None)
    # a NoSec account, with which an endpoint that has credentials cannot register
    with pytest.raises(RegistrationFailed, match=r"4\.03.*protect its requests with OSCORE"):
        await device.start()
    assert device.bootstrap.oscore == {} and device.oscore_context is None
    assert device.bootstrap.account().oscore is None and device.bootstrap.account().security_mode == 3
    assert factory.credentials.oscore_for_endpoint("osc-plain").master_secret == SECRET  # not renewed
    assert not (factory.tmp_path / "devices" / "osc-plain").exists()


async def test_another_endpoints_bootstrap_identity_gets_no_context(factory):
    """The identity rule still comes first: nothing is renewed or written for a device
    that proves another endpoint's bootstrap identity."""
    factory.credentials.add(PskCredential("other", "other-bs", BOOTSTRAP_KEY, "bootstrap"), now=1.0)
    factory.credentials.add_oscore(credential("osc-x"), now=1.0)
    device = device_for(factory, "osc-x", bootstrap_psk=("other-bs", BOOTSTRAP_KEY))
    with pytest.raises(RegistrationFailed, match=r"Bootstrap-Request answered 4\.03"):
        await device.start()
    assert device.bootstrap.oscore == {}
    assert factory.credentials.oscore_for_endpoint("osc-x").master_secret == SECRET
