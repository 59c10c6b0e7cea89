"""The simulated device's Bootstrap interface, sans-I/O: the server's own plan applied
to it, Bootstrap-Finish refusing an unusable configuration (4.06), Bootstrap-Delete
keeping the bootstrap account, Bootstrap-Discover, the management server's view
afterwards, and the ``tinymlaas-sim --bootstrap`` options."""

from __future__ import annotations

import pytest

from ipso_objects import LwM2MPath, MultiResource, ObjectInstance, ObjectRegistry, Resource, codecs
from ipso_objects.codecs import ContentFormat as CF
from ipso_objects.codecs import link_format
from lwm2m_server.core.bootstrap import Psk, ServerAccount, TRUST_ANCHORS, parse_bootstrap_request, plan
from lwm2m_server.bootstrap_server import public_key_der
from lwm2m_server.suit import generate_signing_key
from simulators.bootstrap import BOOTSTRAPPING, FINISHED, BootstrapInterface, parse_psk
from simulators.cli import main
from simulators.objects import DeviceObjects
from simulators.profiles import builtin_profiles

P = LwM2MPath.parse
REGISTRY = ObjectRegistry.default()
BS_URI = "coap://bootstrap.example:5683"
SIGNER = generate_signing_key()


def fresh(profile: str = "cortex-m4f", psk=None) -> BootstrapInterface:
    objects = DeviceObjects(REGISTRY, builtin_profiles()[profile], endpoint="dev-1", seed=1, now=1_700_000_000)
    interface = BootstrapInterface(objects, BS_URI, psk)
    interface.begin()
    return interface


def send(interface: BootstrapInterface, step):
    request = step.request
    return interface.handle(request.method, request.uri_path, request.query, request.content_format,
                            request.accept, request.payload)


def write(interface: BootstrapInterface, path: str, node, fmt: int = CF.TLV):
    payload = codecs.encode(fmt, node, P(path), REGISTRY)
    return interface.handle("PUT", path.strip("/").split("/"), content_format=fmt, payload=payload)


def instance(instance_id: int, values: dict) -> ObjectInstance:
    return ObjectInstance(instance_id, {rid: Resource(rid, value) for rid, value in values.items()})


def finish(interface: BootstrapInterface):
    return interface.handle("POST", ["bs"])


def test_device_starts_with_only_the_bootstrap_account():
    interface = fresh(psk=("dev-1-bs", b"k" * 16))
    objects = interface.objects
    assert objects.instances(0) == [0] and objects.instances(1) == []
    assert objects.get("/0/0/1") is True and objects.get("/0/0/0") == BS_URI
    assert (objects.get("/0/0/2"), objects.get("/0/0/3"), objects.get("/0/0/5")) == (0, b"dev-1-bs", b"k" * 16)
    assert interface.account() is None
    assert interface.request_query("dev-1") == ["ep=dev-1", "pct=112"]
    assert fresh("cortex-m0plus").request_query("dev-1") == ["ep=dev-1"]  # 1.0: no pct


def test_finish_without_a_server_account_is_406():
    interface = fresh()
    response = finish(interface)
    assert response.code == "4.06"
    assert b"no LwM2M Server account" in response.payload
    assert interface.state == BOOTSTRAPPING and interface.account() is None


def test_finish_with_a_security_instance_but_no_matching_server_is_406():
    interface = fresh()
    security = {0: "coap://lwm2m.example:5683", 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: 5}
    assert write(interface, "/0/1", instance(1, security)).code == "2.04"
    assert write(interface, "/1/0", instance(0, {0: 6, 1: 60, 6: False, 7: "U"})).code == "2.04"
    response = finish(interface)
    assert response.code == "4.06" and b"no Server instance has Short Server ID 5" in response.payload


@pytest.mark.parametrize("mode, uri, reason", [
    (0, "coap://lwm2m.example:5683", b"does not fit a coap:// URI"),
    (3, "coaps://lwm2m.example:5684", b"does not fit a coaps:// URI"),
    (1, "coaps://lwm2m.example:5684", b"Security Mode 1 is not supported"),
    (3, "http://lwm2m.example", b"not a coap:// or coaps:// URI"),
])
def test_finish_refuses_an_account_the_device_cannot_use(mode, uri, reason):
    interface = fresh()
    write(interface, "/0/1", instance(1, {0: uri, 1: False, 2: mode, 3: b"", 4: b"", 5: b"", 10: 1}))
    write(interface, "/1/0", instance(0, {0: 1, 1: 60, 6: False, 7: "U"}))
    response = finish(interface)
    assert response.code == "4.06" and reason in response.payload


def test_finish_outside_a_bootstrap_is_405():
    interface = fresh()
    interface.abort()
    assert finish(interface).code == "4.05"


@pytest.mark.parametrize("profile", ["cortex-m0plus", "cortex-m4f", "linux-gateway"])
def test_the_servers_plan_configures_the_device(profile):
    interface = fresh(profile)
    anchor = public_key_der(SIGNER)
    account = ServerAccount("coaps://lwm2m.example:5684", 3, 120, "U", Psk("dev-1-srv", b"s" * 16))
    query = interface.request_query("dev-1")
    steps = list(plan(parse_bootstrap_request(query), account, [anchor]))
    answers = {step.name: send(interface, step) for step in steps}
    assert {name: r.code for name, r in answers.items()} == {
        "delete /0": "2.02", "delete /1": "2.02",
        "delete /21": "4.04" if profile == "cortex-m0plus" else "2.02",  # LwM2M 1.0: no OSCORE object
        "discover /": "4.05" if profile == "cortex-m0plus" else "2.05",
        "write /0/1": "2.04", "write /1/0": "2.04", "write /26241/0/21": "2.04", "finish": "2.04",
    }
    assert interface.state == FINISHED
    got = interface.account()
    assert (got.uri, got.short_server_id, got.security_mode) == ("coaps://lwm2m.example:5684", 3, 0)
    assert (got.identity, got.key, got.security_instance, got.server_instance) == (b"dev-1-srv", b"s" * 16, 1, 0)
    assert b"s" * 16 not in repr(got).encode()
    assert interface.objects.get("/1/0/1") == 120
    assert interface.objects.updates.trust.anchors[-1].public_numbers() == SIGNER.public_key().public_numbers()
    assert interface.objects.get("/0/0/1") is True  # the bootstrap account survived


def test_bootstrap_delete_keeps_the_bootstrap_account_and_device_object():
    interface = fresh()
    objects = interface.objects
    write(interface, "/0/1", instance(1, {0: "coap://x:1", 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: 1}))
    assert interface.handle("DELETE", ["0", "0"]).code == "4.00"
    assert interface.handle("DELETE", ["3", "0"]).code == "4.00"
    assert interface.handle("DELETE", []).code == "2.02"  # "/": everything else goes
    assert objects.instances(0) == [0] and objects.instances(3) == [0]
    assert objects.instances(26241) == [] and objects.instances(9) == []
    assert interface.handle("DELETE", ["0", "7"]).code == "4.04"
    assert interface.handle("DELETE", ["0", "0", "1"]).code == "4.00"


def test_bootstrap_discover_lists_accounts_with_ssid_and_uri():
    interface = fresh()
    write(interface, "/0/1", instance(1, {0: "coap://x:1", 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: 4}))
    write(interface, "/1/0", instance(0, {0: 4, 1: 60, 6: False, 7: "U"}))
    response = interface.handle("GET", [], accept=CF.LINK)
    assert response.code == "2.05" and response.content_format == CF.LINK
    links = link_format.decode(response.payload)
    assert links[0].target == "/" and links[0].lwm2m == "1.1"
    by_path = {link.target: link for link in links}
    assert by_path["/0/0"].params == ()  # the bootstrap account: no ssid, no uri
    assert (by_path["/0/1"].ssid, by_path["/0/1"].uri) == (4, "coap://x:1")
    assert by_path["/1/0"].ssid == 4 and "/26241/0" in by_path
    assert fresh("cortex-m0plus").handle("GET", [], accept=CF.LINK).code == "4.05"  # LwM2M 1.0


def test_bootstrap_write_reaches_resources_a_management_server_cannot():
    interface = fresh()
    objects = interface.objects
    anchor = public_key_der(SIGNER)
    assert write(interface, str(TRUST_ANCHORS), MultiResource(21, {0: anchor})).code == "2.04"
    assert objects.get(TRUST_ANCHORS) == {0: anchor}
    # Bootstrap-Write of a read-only resource (Device object Manufacturer) is allowed too
    assert write(interface, "/3/0", instance(0, {0: "Bootstrapped Inc"})).code == "2.04"
    assert objects.get("/3/0/0") == "Bootstrapped Inc"
    assert write(interface, "/3/1", instance(1, {0: "second"})).code == "4.00"  # single-instance object
    assert write(interface, "/4242/0", instance(0, {0: "x"})).code == "4.04"


def test_management_server_cannot_read_write_or_discover_trust_anchors():
    interface = fresh()
    objects = interface.objects
    write(interface, str(TRUST_ANCHORS), MultiResource(21, {0: public_key_der(SIGNER)}))
    interface.abort()  # as after Bootstrap-Finish: requests come from a management server
    assert objects.handle("GET", ["26241", "0", "21"]).code == "4.05"
    forged = codecs.encode(CF.TLV, MultiResource(21, {0: b"\x30\x00"}), TRUST_ANCHORS, REGISTRY)
    assert objects.handle("PUT", ["26241", "0", "21"], content_format=CF.TLV, payload=forged).code == "4.05"
    assert objects.get(TRUST_ANCHORS) == {0: public_key_der(SIGNER)}
    assert objects.handle("GET", ["26241", "0", "21"], accept=CF.LINK).code == "4.05"
    listed = link_format.decode(objects.handle("GET", ["26241", "0"], accept=CF.LINK).payload)
    assert "/26241/0/21" not in {link.target for link in listed} and "/26241/0/19" in {l.target for l in listed}
    read = objects.handle("GET", ["26241", "0"], accept=CF.SENML_JSON)
    assert read.code == "2.05" and b"/21" not in read.payload
    assert objects.handle("GET", ["0"]).code == "4.04"


def test_a_trust_anchor_that_is_no_key_makes_finish_406():
    interface = fresh()
    write(interface, "/0/1", instance(1, {0: "coap://x:1", 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: 1}))
    write(interface, "/1/0", instance(0, {0: 1, 1: 60, 6: False, 7: "U"}))
    write(interface, str(TRUST_ANCHORS), MultiResource(21, {0: b"not a key"}))
    response = finish(interface)
    assert response.code == "4.06" and b"/26241/0/21" in response.payload
    assert interface.objects.updates.trust.anchors == ()


def test_parse_psk():
    assert parse_psk("dev-1:000102") == (b"dev-1", b"\x00\x01\x02")
    assert parse_psk("id:with:colons:ff") == (b"id:with:colons", b"\xff")
    for bad in ("nocolon", ":00", "id:zz", "id:"):
        with pytest.raises(ValueError):
            parse_psk(bad)


@pytest.mark.parametrize("argv, message", [
    (["device", "--profile", "cortex-m4f", "--endpoint", "x", "--bootstrap-psk", "id:00"],
     "--bootstrap-psk: needs --bootstrap"),
    (["device", "--profile", "cortex-m4f", "--endpoint", "x", "--bootstrap", "http://h"],
     "--bootstrap: must be a coap:// or coaps:// URI"),
    (["device", "--profile", "cortex-m4f", "--endpoint", "x", "--bootstrap", "coaps://h",
      "--bootstrap-psk", "id:xyz"], "--bootstrap-psk: the key after the last ':' is not hexadecimal"),
])
def test_cli_bootstrap_options_are_checked(argv, message, capsys):
    assert main(argv, configure_logging=False) == 2
    err = capsys.readouterr().err
    assert message in err and "xyz" not in err  # a key is never echoed
