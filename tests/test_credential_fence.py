"""Credentials fence plain CoAP: an endpoint that has any credential (server or
bootstrap scope, PSK or OSCORE) cannot register over plain CoAP, and a plain
registration made before its endpoint got one ends at its next message (Update,
Send, De-register) or the server's next request to it, with a log line and an
event the operator can see in ``GET /events``.

What it prevents: someone registering a fleet's endpoint names over plain CoAP
between ``credentials import`` (bootstrap keys) and the devices' first bootstrap,
and keeping those registrations afterwards.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import aiohttp
import pytest
from aiocoap import Code
from structlog.testing import capture_logs

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.api.http import ManagementApi
from lwm2m_server.core import operations as ops
from lwm2m_server.core.identity import RegistrationEnded, check_identity, check_registration
from lwm2m_server.core.registration import Registration, RegistrationError
from lwm2m_server.security.credentials import CredentialStore, PskCredential, oscore_credential
from lwm2m_server.server import DeviceNotRegistered, LwM2MServer
from lwm2m_server.store.sqlite import SqliteStore
from simulators.client import SimulatedDevice
from test_integration import wait_until
from test_server import config_for_tests, peer, send

KEY = bytes(range(16))
TOKEN = "t" * 32
REGISTRY = ObjectRegistry.default()


def add_credential(store: CredentialStore, endpoint: str, kind: str) -> None:
    if kind == "bootstrap psk":
        store.add(PskCredential(endpoint, f"{endpoint}-bs", KEY, "bootstrap"), now=1.0)
    elif kind == "server psk":
        store.add(PskCredential(endpoint, endpoint, KEY), now=1.0)
    else:
        store.add_oscore(oscore_credential(endpoint, sender_id=b"\x01", recipient_id=b"\x0a", master_secret=KEY),
                         now=1.0)


REASONS = {
    "bootstrap psk": "has a bootstrap credential: bootstrap first over CoAPS",
    "server psk": "has server credentials: use CoAPS (DTLS) with them",
    "oscore": "has server credentials: protect its requests with OSCORE",
}


class Setup:
    """A server (plain CoAP; the credentials store as the daemon opens it) and its API."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path

    async def __aenter__(self) -> Setup:
        self.credentials = CredentialStore(self.tmp_path / "credentials.sqlite3")
        self.store = await SqliteStore.open(self.tmp_path / "state.sqlite3")
        base = config_for_tests()
        config = replace(base, coap=replace(base.coap, secure_port=None))
        self.server = LwM2MServer(config, REGISTRY, self.store, credentials=self.credentials)
        await self.server.start()
        self.api = ManagementApi(self.server, TOKEN, host="127.0.0.1", port=0, credentials=self.credentials)
        await self.api.start()
        self.devices: list[SimulatedDevice] = []
        return self

    async def __aexit__(self, *exc) -> None:
        for device in self.devices:
            await device.stop(deregister=False)
        await self.api.stop()
        await self.server.stop()
        await self.store.close()
        self.credentials.close()

    def cli_store(self) -> CredentialStore:
        """The store file opened a second time, as ``tinymlaas credentials add/import`` do."""
        return CredentialStore(self.tmp_path / "credentials.sqlite3")

    async def device(self, endpoint: str) -> SimulatedDevice:
        device = SimulatedDevice(endpoint, "cortex-m4f", f"coap://127.0.0.1:{self.server.port}", REGISTRY,
                                 seed=1, sensor_interval=3600, request_timeout=5)
        self.devices.append(device)
        await device.start()
        await wait_until(lambda: self.server.profile(endpoint) is not None)
        return device

    async def events(self, kind: str, count: int, timeout: float = 3.0) -> list[dict]:
        """``count`` events of ``kind`` read from ``GET /api/v1/events`` (subscribe first, then
        act). The stream's ``timeout`` is short: stopping the API waits for it to end."""
        url = f"http://127.0.0.1:{self.api.port}/api/v1/events?kinds={kind}&timeout={timeout}"
        found = []
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async with session.get(url) as response:
                assert response.status == 200
                async for line in response.content:
                    if line.strip():
                        found.append(json.loads(line))
                        if len(found) == count:
                            response.close()  # leave now, not at the stream's timeout
                            break
        return found


# -- the rules, without sockets -------------------------------------------------------------------


class Lookup:
    def __init__(self, *credentials) -> None:
        self.credentials = credentials

    def by_identity(self, identity):
        return next((c for c in self.credentials if c.identity == identity), None)

    def for_endpoint(self, endpoint, scope="server"):
        return next((c for c in self.credentials if c.endpoint == endpoint and c.scope == scope), None)

    def has_any(self, endpoint):
        return any(c.endpoint == endpoint for c in self.credentials)


def test_plain_coap_is_refused_to_an_endpoint_with_a_credential_of_any_kind():
    lookup = Lookup(PskCredential("bs-only", "bs-only-bs", KEY, "bootstrap"), PskCredential("psk", "psk", KEY),
                    oscore_credential("osc", sender_id=b"\x01", recipient_id=b"\x0a", master_secret=KEY))
    check_identity("nothing", None, lookup)  # no credential: NoSec (mixed mode)
    for endpoint, reason in (("bs-only", REASONS["bootstrap psk"]), ("psk", REASONS["server psk"]),
                             ("osc", REASONS["oscore"])):
        with pytest.raises(RegistrationError) as refused:
            check_identity(endpoint, None, lookup)
        assert refused.value.code == "4.03" and f"endpoint {endpoint!r} {reason}" in refused.value.reason


def test_a_registration_its_credentials_no_longer_admit_is_ended():
    plain = Registration("r1", "dev", "coap://h:1", 60, "1.1", "U", False, None, None, 0.0, 0.0)
    secure = replace(plain, id="r2", identity="dev")
    check_registration(plain, Lookup())
    check_registration(secure, Lookup(PskCredential("dev", "dev", KEY)))
    with pytest.raises(RegistrationEnded, match="registration of 'dev' ended: endpoint 'dev' has a bootstrap"):
        check_registration(plain, Lookup(PskCredential("dev", "dev-bs", KEY, "bootstrap")))
    with pytest.raises(RegistrationEnded, match="identity 'dev' has no credentials here"):
        check_registration(secure, Lookup())  # its credential was removed


# -- a running server -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(REASONS))
async def test_plain_register_of_an_endpoint_with_credentials_is_403(tmp_path, kind):
    async with Setup(tmp_path) as setup:
        add_credential(setup.credentials, "fleet-1", kind)
        client = await peer()
        try:
            refused = await send(client, setup.server, Code.POST, "/rd?ep=fleet-1&lt=300", b"</3/0>")
            accepted = await send(client, setup.server, Code.POST, "/rd?ep=no-credentials&lt=300", b"</3/0>")
        finally:
            await client.shutdown()
        assert refused.code == Code.FORBIDDEN
        assert f"endpoint 'fleet-1' {REASONS[kind]}" in refused.payload.decode()
        assert setup.server.registration("fleet-1") is None
        assert accepted.code == Code.CREATED  # mixed mode: endpoints without credentials still may
        assert [r.endpoint for r in await setup.store.load_registrations()] == ["no-credentials"]


@pytest.mark.parametrize("message", ["update", "send", "deregister"])
async def test_a_credential_added_ends_a_plain_registration_at_its_next_message(tmp_path, message):
    async with Setup(tmp_path) as setup:
        device = await setup.device("squatter")
        result = await setup.server.observe("squatter", [LwM2MPath.parse("/3/0/0")])
        assert result.ok and len(await setup.store.load_observations()) == 1
        location = "/" + "/".join(device.location)
        events = asyncio.create_task(setup.events("registration_ended", 1))
        await wait_until(lambda: setup.server.events.subscribers())
        with setup.cli_store() as cli:  # `tinymlaas credentials import` of the fleet's bootstrap keys
            add_credential(cli, "squatter", "bootstrap psk")

        with capture_logs() as logs:
            if message == "update":
                response = await send(device._context, setup.server, Code.POST, f"{location}?lt=600")
            elif message == "send":
                response = await send(device._context, setup.server, Code.POST, "/dp",
                                      b'[{"bn":"/3303/0/","n":"5700","v":21.5}]', 110)
            else:
                response = await send(device._context, setup.server, Code.DELETE, location)
        assert response.code == Code.FORBIDDEN
        reason = response.payload.decode()
        assert reason.startswith("registration of 'squatter' ended: endpoint 'squatter' has a bootstrap credential")
        assert setup.server.registration("squatter") is None
        assert setup.server.observations("squatter") == []
        assert await setup.store.load_registrations() == [] and await setup.store.load_observations() == []
        (line,) = [entry for entry in logs if entry["event"] == "registration_ended"]
        assert line["ep"] == "squatter" and line["reason"] == reason
        (event,) = await asyncio.wait_for(events, 10)
        assert (event["kind"], event["endpoint"], event["reason"]) == ("registration_ended", "squatter", reason)
        # the registration is gone for good: its next Update is 4.04 (and a Register 4.03)
        again = await send(device._context, setup.server, Code.POST, location)
        assert again.code == Code.NOT_FOUND


async def test_a_request_to_a_plain_registration_whose_endpoint_got_credentials_ends_it(tmp_path):
    async with Setup(tmp_path) as setup:
        await setup.device("squatter")
        add_credential(setup.credentials, "squatter", "server psk")
        with setup.server.events.subscribe() as events:
            with pytest.raises(DeviceNotRegistered):
                await setup.server.perform("squatter", lambda r: ops.read(r, LwM2MPath.parse("/3/0"),
                                                                          registry=REGISTRY))
            event = events.get_nowait()
        assert event.kind == "registration_ended" and "use CoAPS (DTLS)" in event.data["reason"]
        assert setup.server.registration("squatter") is None
        assert await setup.store.load_registrations() == []
