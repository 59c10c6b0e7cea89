"""CoAPS (DTLS 1.2 PSK): simulated devices and Debian's libcoap against the server.

Devices register, are managed and observed over their DTLS session; unknown or
mismatched identities, wrong keys and plain CoAP in secure-only mode are refused;
the session table is bounded and idle sessions end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from dataclasses import replace

import aiocoap
import pytest
from aiocoap import Code, Message

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations as ops
from lwm2m_server.security.credentials import CredentialStore, PskCredential
from lwm2m_server.core.registration import Registration
from lwm2m_server.core.identity import check_identity, check_same_peer
from lwm2m_server.core.registration import RegistrationError
from lwm2m_server.server import LwM2MServer, Queued
from lwm2m_server.store.sqlite import SqliteStore
from simulators.client import RegistrationFailed, SimulatedDevice
from test_integration import wait_until
from test_server import config_for_tests

pytest.importorskip("DTLSSocket.dtls", reason="the simulated devices' CoAPS client needs DTLSSocket (tinydtls)")

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
REGISTRY = ObjectRegistry.default()
DEVICE = LwM2MPath.parse("/3/0")


class Secure:
    """A server with CoAPS on an ephemeral port and a credentials store."""

    def __init__(self, tmp_path, queue: dict | None = None, deployment: dict | None = None, **security) -> None:
        self.tmp_path = tmp_path
        self.queue = queue or {}
        self.deployment = deployment or {}
        self.credentials = CredentialStore(tmp_path / "credentials.sqlite3")
        self.security = security
        self.devices: list[SimulatedDevice] = []
        self.server: LwM2MServer | None = None
        self.ports = (0, 0)

    async def start(self) -> LwM2MServer:
        self.store = await SqliteStore.open(self.tmp_path / "state.sqlite3")
        base = config_for_tests(**self.queue)
        config = replace(base, coap=replace(base.coap, port=self.ports[0], secure_port=self.ports[1]),
                         security=replace(base.security, **self.security),
                         deployment=replace(base.deployment, **self.deployment))
        self.server = LwM2MServer(config, REGISTRY, self.store, credentials=self.credentials)
        await self.server.start()
        self.ports = (self.server.port, self.server.secure_port)
        return self.server

    async def stop(self) -> None:
        await self.server.stop()
        await self.store.close()

    async def __aenter__(self) -> Secure:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        for device in self.devices:
            await device.stop(deregister=False)
        await self.stop()
        self.credentials.close()

    def add(self, endpoint: str, identity: str | None = None, key: bytes = KEY, scope: str = "server") -> None:
        self.credentials.add(PskCredential(endpoint, identity or endpoint, key, scope), now=1.0)

    @property
    def coaps_uri(self) -> str:
        return f"coaps://127.0.0.1:{self.server.secure_port}"

    async def device(self, endpoint: str, psk=None, uri: str | None = None, **options) -> SimulatedDevice:
        device = SimulatedDevice(endpoint, options.pop("profile", "cortex-m4f"), uri or self.coaps_uri, REGISTRY, seed=3,
                                 sensor_interval=3600, psk=psk, request_timeout=options.pop("request_timeout", 5),
                                 **options)
        self.devices.append(device)
        await device.start()
        return device

    def sessions(self):
        return self.server._adapter._dtls.endpoint.sessions


@pytest.fixture
async def secure(tmp_path):
    async with Secure(tmp_path) as setup:
        yield setup


async def read_device(server: LwM2MServer, endpoint: str):
    return await server.perform(endpoint, lambda reg: ops.read(reg, DEVICE, registry=REGISTRY))


async def test_device_registers_and_is_managed_over_its_dtls_session(secure):
    secure.add("dev-1")
    device = await secure.device("dev-1", psk=("dev-1", KEY))
    registration = secure.server.registration("dev-1")
    assert registration.identity == "dev-1"
    assert registration.address.startswith("coaps://127.0.0.1:")

    result = await read_device(secure.server, "dev-1")  # server → device, over the session
    assert result.code == "2.05" and result.node.resources[0].value == device.objects.get("/3/0/0")

    long_text = "x" * 3000  # Block1 over DTLS
    result = await secure.server.perform(
        "dev-1", lambda reg: ops.write(reg, LwM2MPath.parse("/1/0/7"), "U", registry=REGISTRY))
    assert result.code == "2.04"
    result = await secure.server.perform(
        "dev-1", lambda reg: ops.write(reg, LwM2MPath.parse("/3/0/15"), long_text, registry=REGISTRY))
    assert result.code == "2.04" and device.objects.get("/3/0/15") == long_text

    with secure.server.events.subscribe() as events:  # notifications come over the session
        assert (await secure.server.observe("dev-1", [LwM2MPath.parse("/3303/0/5700")])).ok
        device.step()
        expected = device.objects.get("/3303/0/5700")
        async with asyncio.timeout(10):
            while True:
                event = await events.get()
                if event.kind == "notification" and event.data["result"].node.value == expected:
                    break

    await device.update()  # later requests come from the same identity
    assert secure.server.registration("dev-1").identity == "dev-1"


async def test_a_sleeping_queue_mode_device_gets_its_requests_over_dtls_when_it_wakes(tmp_path):
    async with Secure(tmp_path, queue={"awake_window_s": 0.3}) as setup:
        setup.add("sleepy-1")
        device = await setup.device("sleepy-1", psk=("sleepy-1", KEY), profile="cortex-m0plus")  # 1.0, b=UQ
        await device.sleep()
        await asyncio.sleep(0.4)
        outcome = await read_device(setup.server, "sleepy-1")
        assert isinstance(outcome, Queued)
        await device.wake()  # an Update over its session, then it answers
        entry = await setup.server.wait_for_entry(outcome.entry_id, timeout=10)
        assert entry.state == "delivered" and entry.result["code"] == "2.05"


async def test_unknown_identity_fails_the_handshake(secure):
    secure.add("dev-1")
    with pytest.raises(RegistrationFailed):
        await secure.device("dev-1", psk=("stranger", KEY))
    assert secure.server.registration("dev-1") is None
    assert not secure.sessions()


async def test_wrong_key_fails_the_handshake(secure):
    secure.add("dev-1")
    with pytest.raises(RegistrationFailed):
        await secure.device("dev-1", psk=("dev-1", bytes(16)), request_timeout=2)
    assert secure.server.registration("dev-1") is None
    assert not secure.sessions()


async def test_identity_of_another_endpoint_is_refused(secure):
    secure.add("dev-1")
    secure.add("dev-2")
    with pytest.raises(RegistrationFailed, match=r"4\.03.*identity 'dev-1' is not the credential of endpoint 'dev-2'"):
        await secure.device("dev-2", psk=("dev-1", KEY))
    assert secure.server.registration("dev-2") is None


async def test_bootstrap_credential_does_not_open_registration(secure):
    secure.add("dev-1", identity="dev-1-bs", scope="bootstrap")
    with pytest.raises(RegistrationFailed, match=r"4\.03.*bootstrap credential, not a server one"):
        await secure.device("dev-1", psk=("dev-1-bs", KEY))


async def test_endpoint_with_credentials_cannot_register_over_plain_coap(secure):
    secure.add("dev-1")
    with pytest.raises(RegistrationFailed, match=r"4\.03.*has server credentials: use CoAPS"):
        await secure.device("dev-1", uri=f"coap://127.0.0.1:{secure.server.port}")
    await secure.device("dev-0", uri=f"coap://127.0.0.1:{secure.server.port}")  # mixed mode: NoSec devices too
    assert secure.server.registration("dev-0").identity is None


async def test_plain_update_of_a_secure_registration_is_refused(secure):
    secure.add("dev-1")
    await secure.device("dev-1", psk=("dev-1", KEY))
    registration = secure.server.registration("dev-1")
    context = await aiocoap.Context.create_client_context()
    try:
        request = Message(code=Code.POST, uri=f"coap://127.0.0.1:{secure.server.port}/rd/{registration.id}")
        request.opt.uri_query = ("lt=99",)
        response = await context.request(request).response
    finally:
        await context.shutdown()
    assert response.code == Code.FORBIDDEN
    assert b"registered with another identity, not plain CoAP" in response.payload
    assert secure.server.registration("dev-1") == registration


async def test_removed_credentials_end_the_device_access(secure):
    secure.add("dev-1")
    device = await secure.device("dev-1", psk=("dev-1", KEY))
    secure.credentials.remove("dev-1")
    with pytest.raises(RegistrationFailed, match=r"4\.03.*registration of 'dev-1' ended"):
        await device.update()
    assert secure.server.registration("dev-1") is None  # ended, not only refused


async def test_secure_only_refuses_plain_coap(tmp_path):
    async with Secure(tmp_path, mode="secure-only") as setup:
        setup.add("dev-1")
        await setup.device("dev-1", psk=("dev-1", KEY))
        with pytest.raises(RegistrationFailed, match=r"4\.03.*plain CoAP refused"):
            await setup.device("dev-0", uri=f"coap://127.0.0.1:{setup.server.port}")
        assert setup.server.registration("dev-0") is None
        assert setup.server.registration("dev-1").identity == "dev-1"
        if shutil.which("coap-client-notls"):  # any plain request, downloads included
            done = await asyncio.to_thread(subprocess.run, [
                "coap-client-notls", "-B", "5", "-m", "get", f"coap://127.0.0.1:{setup.server.port}/dl/module"],
                capture_output=True, text=True, timeout=20)
            assert "4.03" in done.stdout + done.stderr and "only CoAPS" in done.stdout + done.stderr


async def test_session_table_is_bounded_and_an_evicted_device_comes_back(tmp_path):
    async with Secure(tmp_path, max_sessions=2) as setup:
        devices = []
        for number in range(3):
            setup.add(f"dev-{number}")
            devices.append(await setup.device(f"dev-{number}", psk=(f"dev-{number}", KEY)))
        assert len(setup.sessions()) == 2
        # the least recently used session (dev-0's) made room; the server cannot reach it
        result = await read_device(setup.server, "dev-0")
        assert result.code == "unreachable" and "no DTLS session" in result.diagnostic
        await devices[0].update()  # the device handshakes again
        assert (await read_device(setup.server, "dev-0")).code == "2.05"
        assert len(setup.sessions()) == 2


async def test_idle_sessions_end(tmp_path):
    async with Secure(tmp_path, session_idle_timeout_s=0.3) as setup:
        setup.add("dev-1")
        device = await setup.device("dev-1", psk=("dev-1", KEY))
        await wait_until(lambda: not setup.sessions(), 5)
        assert (await read_device(setup.server, "dev-1")).code == "unreachable"
        await device.update()
        assert (await read_device(setup.server, "dev-1")).code == "2.05"


async def test_restart_keeps_the_secure_registration_and_its_observation(tmp_path):
    temperature = LwM2MPath.parse("/3303/0/5700")
    async with Secure(tmp_path) as setup:
        setup.add("dev-1")
        device = await setup.device("dev-1", psk=("dev-1", KEY))
        assert (await setup.server.observe("dev-1", [temperature])).ok
        await setup.stop()
        await setup.start()  # same ports; DTLS sessions are gone, the registration is not
        assert setup.server.registration("dev-1").identity == "dev-1"
        assert (await read_device(setup.server, "dev-1")).code == "unreachable"
        device.request_timeout = 1
        await device.update()  # unanswered over the lost session: the device handshakes again
        assert (await read_device(setup.server, "dev-1")).code == "2.05"
        # the observation is re-established over the new session and notifies again
        await wait_until(lambda: setup.server.observations("dev-1"), 10)
        with setup.server.events.subscribe() as events:
            device.step()
            expected = device.objects.get("/3303/0/5700")
            async with asyncio.timeout(10):
                while not ((event := await events.get()).kind == "notification"
                           and event.data["result"].node.value == expected):
                    pass


# -- libcoap's DTLS clients (OpenSSL and GnuTLS builds) -----------------------------------------


@pytest.mark.parametrize("binary", ["coap-client-openssl", "coap-client-gnutls"])
async def test_libcoap_registers_over_dtls_psk(secure, binary):
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} (Debian libcoap3-bin) not installed")

    def coap_client(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "-B", "5", *args], capture_output=True, text=True, timeout=20)

    key = b"libcoap-secret16"  # coap-client takes the key as text
    secure.add("libcoap-1", key=key)
    uri = f"coaps://127.0.0.1:{secure.server.secure_port}/rd?ep=libcoap-1&lt=60&lwm2m=1.1&b=U"
    done = await asyncio.to_thread(coap_client, "-m", "post", "-u", "libcoap-1", "-k", key.decode(),
                                   "-t", "40", "-e", "</3/0>", uri)
    assert done.returncode == 0, done.stderr
    registration = secure.server.registration("libcoap-1")
    assert registration is not None and registration.identity == "libcoap-1"

    refused = await asyncio.to_thread(coap_client, "-m", "post", "-u", "nobody", "-k", key.decode(),
                                      "-t", "40", "-e", "</3/0>", uri.replace("libcoap-1", "libcoap-2"))
    assert secure.server.registration("libcoap-2") is None
    assert "alert" in (refused.stdout + refused.stderr).lower()  # the server refuses the unknown identity


# -- the rules, without sockets ---------------------------------------------------------------


class Store:
    def __init__(self, *credentials: PskCredential) -> None:
        self.credentials = credentials

    def by_identity(self, identity):
        return next((c for c in self.credentials if c.identity == identity), None)

    def for_endpoint(self, endpoint, scope="server"):
        return next((c for c in self.credentials if c.endpoint == endpoint and c.scope == scope), None)

    def has_any(self, endpoint):
        return any(c.endpoint == endpoint for c in self.credentials)


def forbidden(call) -> str:
    with pytest.raises(RegistrationError) as raised:
        call()
    assert raised.value.code == "4.03"
    return raised.value.reason


def test_identity_rules():
    store = Store(PskCredential("a", "id-a", KEY), PskCredential("a", "bs-a", KEY, "bootstrap"),
                  PskCredential("b", "id-b", KEY))
    check_identity("a", "id-a", store)
    check_identity("a", "bs-a", store, scope="bootstrap")
    check_identity("c", None, store)  # no credentials: NoSec allowed (mixed mode)
    assert "use CoAPS" in forbidden(lambda: check_identity("a", None, store))
    assert "not the credential of endpoint 'a'" in forbidden(lambda: check_identity("a", "id-b", store))
    assert "has no credentials" in forbidden(lambda: check_identity("a", "ghost", store))
    assert "bootstrap credential" in forbidden(lambda: check_identity("a", "bs-a", store))
    assert "use CoAPS" in forbidden(lambda: check_identity("a", None, store, scope="bootstrap"))


def test_same_peer_rules():
    store = Store(PskCredential("a", "id-a", KEY))
    secure = Registration("r1", "a", "coaps://h:1", 60, "1.1", "U", False, None, None, 0.0, 0.0, identity="id-a")
    plain = replace(secure, identity=None, endpoint="c")
    check_same_peer(secure, "id-a", store)
    check_same_peer(plain, None, store)
    assert "not plain CoAP" in forbidden(lambda: check_same_peer(secure, None, store))
    assert "registered with plain CoAP, not identity 'id-a'" in forbidden(lambda: check_same_peer(plain, "id-a", store))
    assert "has no credentials" in forbidden(lambda: check_same_peer(secure, "id-a", Store()))


async def test_unfinished_handshakes_are_bounded_and_their_state_dropped(tmp_path):
    """Ten clients stop after the server's first flight (a verified ClientHello makes
    the server keep a handshake); only the five newest stay, and an evicted one can no
    longer finish its handshake, while a kept one still can."""
    from DTLSSocket import dtls

    async with Secure(tmp_path, max_sessions=100) as setup:
        setup.add("dev-1")
        endpoint = setup.server._adapter._dtls.endpoint
        endpoint.max_handshakes = 5
        loop = asyncio.get_running_loop()
        server = ("::ffff:127.0.0.1", setup.server.secure_port)

        class Client:
            def __init__(self) -> None:
                self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                self.sock.bind(("::ffff:127.0.0.1", 0))
                self.sock.setblocking(False)
                self.context = dtls.DTLS(read=lambda sender, data: len(data), write=self.write,
                                         event=lambda level, code: 0, pskId=b"dev-1", pskStore={b"dev-1": KEY})

            def write(self, recipient, data: bytes) -> int:
                self.sock.sendto(data, (*server, 0, 0))
                return len(data)

            async def receive(self) -> list[bytes]:
                """The datagrams of the server's next flight."""
                async with asyncio.timeout(5):
                    flight = [await loop.sock_recv(self.sock, 2048)]
                await asyncio.sleep(0.05)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        flight.append(self.sock.recv(2048))
                return flight

            def feed(self, connection, flight: list[bytes]) -> None:
                for datagram in flight:
                    self.context.handleMessage(connection, datagram)

        clients = [Client() for _ in range(10)]
        flights = []
        for client in clients:
            connection = client.context.connect(*server)
            client.feed(connection, await client.receive())  # HelloVerifyRequest: the cookie
            flights.append((connection, await client.receive()))  # ServerHello ... ServerHelloDone
        assert len(endpoint.handshakes) == 5
        before = len(endpoint.sessions)
        for client, (connection, flight) in list(zip(clients, flights))[:5]:  # evicted: the server forgot them
            client.feed(connection, flight)
        await asyncio.sleep(0.3)
        assert len(endpoint.sessions) == before
        client, (connection, flight) = clients[-1], flights[-1]
        client.feed(connection, flight)  # a kept one finishes
        await wait_until(lambda: len(endpoint.sessions) == before + 1, 5)
        for client in clients:
            client.sock.close()


async def test_close_notify_from_the_device_ends_its_session_at_once(secure):
    secure.add("dev-1")
    device = await secure.device("dev-1", psk=("dev-1", KEY))
    await wait_until(lambda: secure.server.profile("dev-1"), 10)  # the server sends nothing more
    device._dtls.close_all()  # close_notify (tinydtls sends it as a warning-level alert)
    await wait_until(lambda: not secure.sessions(), 5)
    started = asyncio.get_running_loop().time()
    result = await read_device(secure.server, "dev-1")
    assert result.code == "unreachable" and "no DTLS session" in result.diagnostic
    assert asyncio.get_running_loop().time() - started < 1  # not after CoAP's retransmissions


async def test_a_session_that_cannot_seal_any_more_ends_fails_fast_and_never_handshakes_as_client(secure):
    """The 48-bit write sequence is used up (no nonce may repeat): the session ends, the
    request fails at once, and the server never starts a handshake toward the device."""
    from lwm2m_server.transport.dtls_records import MAX_SEQUENCE

    secure.add("dev-1")
    await secure.device("dev-1", psk=("dev-1", KEY))
    endpoint = secure.server._adapter._dtls.endpoint
    session = next(iter(endpoint.sessions.values()))
    session.connection.write_sequence = MAX_SEQUENCE + 1
    sent = []
    send = endpoint._send
    endpoint._send = lambda recipient, data: (sent.append(data), send(recipient, data))[1]
    result = await asyncio.wait_for(read_device(secure.server, "dev-1"), 5)
    assert result.code == "unreachable" and not endpoint.sessions
    await asyncio.sleep(0.6)
    assert sent == []  # no record with a reused sequence number, and no ClientHello


async def test_the_coaps_socket_gets_the_large_receive_buffer(secure):
    sock = secure.server._adapter._dtls.endpoint._transport.get_extra_info("socket")
    # Linux reports twice what was set; without the raise it stays at the ~208 KiB default
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 * 1024 * 1024


async def test_pull_uris_name_the_public_host_and_ports_of_each_transport(tmp_path):
    public = {"public_host": "2001:db8::7", "public_port": 15683, "public_secure_port": 15684}
    async with Secure(tmp_path, deployment=public) as setup:
        setup.add("dev-1")
        await setup.device("dev-1", psk=("dev-1", KEY))
        await setup.device("dev-0", uri=f"coap://127.0.0.1:{setup.server.port}")
        assert setup.server.download_uri("dev-1", "t1") == "coaps://[2001:db8::7]:15684/fw/t1"
        assert setup.server.download_uri("dev-0", "t0") == "coap://[2001:db8::7]:15683/fw/t0"
    async with Secure(tmp_path / "own") as setup:  # without public_host: where each device reached us
        setup.add("dev-1")
        await setup.device("dev-1", psk=("dev-1", KEY))
        assert setup.server.download_uri("dev-1", "t1") == f"coaps://127.0.0.1:{setup.server.secure_port}/fw/t1"
