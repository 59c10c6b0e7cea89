"""OSCORE (RFC 8613) as the second security mechanism, end to end over loopback.

A device provisioned with an OSCORE context (what the LwM2M OSCORE object /21
holds) registers over plain coap:// with every request protected; the server knows
it by that context (identity ``oscore:<recipient id hex>``) and protects its own
requests (Read, Write, Observe) with the same context; the device answers only
protected requests. Replayed, unknown, wrongly keyed and unprotected requests are
refused; the sequence numbers survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Code, Message, oscore

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations as ops
from lwm2m_server.security.credentials import CredentialError, CredentialStore, PskCredential, oscore_credential
from lwm2m_server.transport.oscore import OscoreContexts, StoredContext
from lwm2m_server.security.oscore import OscoreCredential, SequenceReservation, SequenceState
from lwm2m_server.server import LwM2MServer
from simulators import oscore as device_oscore
from simulators.client import RegistrationFailed, SimulatedDevice
from test_dtls import Secure

REGISTRY = ObjectRegistry.default()
DEVICE = LwM2MPath.parse("/3/0")
MANUFACTURER = LwM2MPath.parse("/3/0/0")
TIMEZONE = LwM2MPath.parse("/3/0/15")
SECRET = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
SALT = bytes.fromhex("9e7ca92223786340")
SERVER_ID = b"\x01"  # the server's Sender ID, the device's Recipient ID
DEVICE_ID = b"\x0a"  # the device's Sender ID (kid of its requests), the server's Recipient ID


class Oscore(Secure):
    """A server with a credentials store (as for DTLS), and OSCORE devices provisioned for it."""

    def add(self, endpoint: str, *, recipient_id: bytes = DEVICE_ID, sender_id: bytes = SERVER_ID,
            secret: bytes = SECRET) -> None:
        self.credentials.add_oscore(oscore_credential(endpoint, sender_id=sender_id, recipient_id=recipient_id,
                                                      master_secret=secret, master_salt=SALT), now=1.0)

    def folder(self, name: str, *, sender_id: bytes = DEVICE_ID, recipient_id: bytes = SERVER_ID,
               secret: bytes = SECRET) -> Path:
        return device_oscore.provision(self.tmp_path / "devices" / name, master_secret=secret,
                                       sender_id=sender_id, recipient_id=recipient_id, master_salt=SALT)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    async def device(self, endpoint: str, *, oscore: Path | None = None, start: bool = True,
                     **options) -> SimulatedDevice:
        device = SimulatedDevice(endpoint, "cortex-m4f", self.uri, REGISTRY, seed=3, sensor_interval=3600,
                                 request_timeout=options.pop("request_timeout", 5), oscore=oscore, **options)
        self.devices.append(device)
        if start:
            await device.start()
        return device


@pytest.fixture
async def setup(tmp_path):
    async with Oscore(tmp_path) as setup:
        yield setup


async def read(server: LwM2MServer, endpoint: str, path: LwM2MPath = DEVICE):
    return await server.perform(endpoint, lambda reg: ops.read(reg, path, registry=REGISTRY))


async def test_device_registers_and_is_managed_over_oscore(setup, capsys):
    setup.add("osc-1")
    device = await setup.device("osc-1", oscore=setup.folder("osc-1"))
    registration = setup.server.registration("osc-1")
    assert registration is not None
    assert registration.identity == "oscore:0a"
    assert registration.address.startswith("oscore://0a@127.0.0.1:")
    result = await read(setup.server, "osc-1")
    assert result.ok, result
    assert result.node is not None
    # Write, then read back what was written
    write = await setup.server.perform(
        "osc-1", lambda reg: ops.write(reg, TIMEZONE, "Europe/Helsinki", registry=REGISTRY))
    assert write.ok, write
    assert device.objects.get(TIMEZONE) == "Europe/Helsinki"
    await device.update()
    assert device.stats.updates == 1
    out, err = capsys.readouterr()
    assert "oscore:0a" in out  # the server did log, and never the secret or the salt
    assert SECRET.hex() not in out + err and SALT.hex() not in out + err


async def test_observe_over_oscore_and_passive_cancel(setup):
    setup.add("osc-obs")
    device = await setup.device("osc-obs", oscore=setup.folder("osc-obs"))
    temperature = LwM2MPath.parse("/3303/0/5700")
    with setup.server.events.subscribe() as events:
        first = await setup.server.observe("osc-obs", [temperature])
        assert first.ok, first
        device.step()
        expected = device.objects.get(temperature)
        async with asyncio.timeout(10):
            while True:
                event = await events.get()
                if event.kind == "notification" and event.data["result"].node.value == expected:
                    break
    assert device.observation_count == 1
    assert await setup.server.cancel_observation("osc-obs", [temperature])
    # Passive cancel: the next notification ends the OSCORE request, the one after it is
    # answered with a Reset and the device stops (aiocoap's own TransportOSCORE never stops).
    for _ in range(5):
        device.step()
        await asyncio.sleep(0.2)
        if device.observation_count == 0:
            break
    assert device.observation_count == 0


async def test_the_device_answers_only_protected_requests(setup):
    """What makes the managed-over-OSCORE test mean something: an unprotected GET is refused."""
    setup.add("osc-2")
    device = await setup.device("osc-2", oscore=setup.folder("osc-2"))
    client = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        answer = await client.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{device.address[1]}/3/0/0")).response
    finally:
        await client.shutdown()
    assert answer.code == Code.UNAUTHORIZED


async def protected_register(setup: Oscore, context, endpoint: str):
    """Register with an aiocoap client holding ``context`` (no simulator in between)."""
    client = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    client.client_credentials[f"{setup.uri}/*"] = context
    try:
        message = Message(code=Code.POST, uri=f"{setup.uri}/rd?ep={endpoint}&lt=300&lwm2m=1.1&b=U",
                          payload=b"</3/0>", content_format=40)
        return await client.request(message).response
    finally:
        await client.shutdown()


async def test_a_wrong_master_secret_is_refused(setup):
    setup.add("osc-3")
    wrong = device_oscore.load(setup.folder("wrong", secret=bytes(16)))
    with pytest.raises(oscore.NotAProtectedMessage) as caught:
        await protected_register(setup, wrong, "osc-3")
    # RFC 8613 §8.2 step 6: the request does not decrypt; 4.00, unprotected
    assert caught.value.plain_message.code == Code.BAD_REQUEST
    assert caught.value.plain_message.payload == b"Decryption failed"
    assert setup.server.registration("osc-3") is None


async def test_an_unknown_recipient_id_is_refused(setup):
    setup.add("osc-4")
    stranger = device_oscore.load(setup.folder("stranger", sender_id=b"\x77"))
    with pytest.raises(oscore.NotAProtectedMessage) as caught:
        await protected_register(setup, stranger, "osc-4")
    # RFC 8613 §8.2 step 2: no security context for this kid; 4.01, unprotected
    assert caught.value.plain_message.code == Code.UNAUTHORIZED
    assert setup.server.registration("osc-4") is None


async def test_the_context_of_another_endpoint_is_refused(setup):
    setup.add("osc-a", recipient_id=b"\x0a")
    setup.add("osc-b", recipient_id=b"\x0b")
    with pytest.raises(RegistrationFailed, match=r"4\.03.*'oscore:0a' is not the credential of endpoint 'osc-b'"):
        await setup.device("osc-b", oscore=setup.folder("a-as-b", sender_id=b"\x0a"))
    assert setup.server.registration("osc-b") is None


async def test_an_oscore_endpoint_cannot_register_unprotected(setup):
    setup.add("osc-5")
    with pytest.raises(RegistrationFailed, match=r"4\.03.*has server credentials: protect its requests with OSCORE"):
        await setup.device("osc-5")
    assert setup.server.registration("osc-5") is None


async def test_an_unprotected_update_of_an_oscore_registration_is_refused(setup):
    setup.add("osc-6")
    device = await setup.device("osc-6", oscore=setup.folder("osc-6"))
    client = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        location = "/".join(device.location)
        answer = await client.request(Message(code=Code.POST, uri=f"{setup.uri}/{location}?lt=60")).response
    finally:
        await client.shutdown()
    assert answer.code == Code.FORBIDDEN
    assert setup.server.registration("osc-6").lifetime != 60


async def test_secure_only_takes_oscore_and_refuses_plain_coap(tmp_path):
    async with Oscore(tmp_path, mode="secure-only") as setup:
        setup.add("osc-7")
        await setup.device("osc-7", oscore=setup.folder("osc-7"))
        assert setup.server.registration("osc-7").identity == "oscore:0a"
        assert (await read(setup.server, "osc-7")).ok
        with pytest.raises(RegistrationFailed, match=r"4\.03.*plain CoAP refused"):
            await setup.device("nosec-1")


def _datagram(message: Message, mid: int, token: bytes) -> bytes:
    message.mtype = aiocoap.CON
    message.mid = mid
    message.token = token
    return message.encode()


async def test_a_replayed_protected_request_is_refused(setup):
    setup.add("osc-8")
    context = device_oscore.load(setup.folder("osc-8"))
    register = Message(code=Code.POST, uri_path=("rd",), uri_query=("ep=osc-8", "lt=300", "lwm2m=1.1"),
                       content_format=40, payload=b"</3/0>")
    protected, _ = context.protect(register)
    datagram = _datagram(protected, 0x1234, b"replay01")
    loop = asyncio.get_running_loop()

    async def send_from_new_port() -> Message:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            await loop.sock_sendto(sock, datagram, ("127.0.0.1", setup.port))
            async with asyncio.timeout(5):
                return Message.decode(await loop.sock_recv(sock, 2048))

    first = await send_from_new_port()
    assert first.opt.oscore is not None  # a protected answer: the Register went through
    registration = setup.server.registration("osc-8")
    assert registration is not None
    # The same datagram from another port (no CoAP deduplication applies): OSCORE's replay window
    again = await send_from_new_port()
    assert again.code == Code.UNAUTHORIZED and again.payload == b"Replay detected"
    assert setup.server.registration("osc-8").address == registration.address
    assert len(setup.server.registrations()) == 1


async def test_sequence_numbers_survive_a_clean_restart(setup):
    setup.add("osc-9")
    device = await setup.device("osc-9", oscore=setup.folder("osc-9"))
    for _ in range(3):
        assert (await read(setup.server, "osc-9", MANUFACTURER)).ok
    used = setup.server._oscore.for_identity("oscore:0a").sender_sequence_number
    await setup.stop()
    await setup.start()  # same port, same store: the registration is kept
    context = setup.server._oscore.for_identity("oscore:0a")
    assert context.sender_sequence_number >= used  # never below what was used: no nonce reuse
    # the device keeps its replay window: a reused number would be refused by it
    assert (await read(setup.server, "osc-9", MANUFACTURER)).ok
    await device.update()  # the server's replay window was saved at stop: no Echo round needed
    assert device.stats.updates == 1


async def test_sequence_numbers_survive_a_crash(setup):
    setup.add("osc-10")
    device = await setup.device("osc-10", oscore=setup.folder("osc-10"))
    for _ in range(5):
        assert (await read(setup.server, "osc-10", MANUFACTURER)).ok
    used = setup.server._oscore.for_identity("oscore:0a").sender_sequence_number
    setup.server._oscore._live.clear()  # a crash: nothing is saved at stop
    await setup.stop()
    await setup.start()
    context = setup.server._oscore.for_identity("oscore:0a")
    assert context.sender_sequence_number > used  # resumes above the reserved bound
    assert not context.recipient_replay_window.is_initialized()  # unknown after a crash
    assert (await read(setup.server, "osc-10", MANUFACTURER)).ok
    await device.update()  # 4.01 + Echo (RFC 8613 B.1.2), repeated with the Echo: accepted
    assert device.stats.updates == 1
    assert context.recipient_replay_window.is_initialized()


def test_sequence_reservation_reserves_before_use_in_growing_steps():
    reservation = SequenceReservation(100, first_step=4, max_step=16)
    assert reservation.needs_reserving(100) is None
    assert reservation.needs_reserving(101) == 104
    reservation.reserved_to(104)
    assert [reservation.needs_reserving(n) for n in (102, 104)] == [None, None]
    assert reservation.needs_reserving(105) == 112
    reservation.reserved_to(112)
    assert reservation.needs_reserving(113) == 128
    reservation.reserved_to(128)
    assert reservation.needs_reserving(129) == 144  # capped at max_step


# -- RFC 8613 Appendix C.1: key derivation with a Master Salt ---------------------------------

C1_SECRET = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
C1_SALT = bytes.fromhex("9e7ca92223786340")
C1_CLIENT_SENDER_KEY = bytes.fromhex("f0910ed7295e6ad4b54fc793154302ff")
C1_CLIENT_RECIPIENT_KEY = bytes.fromhex("ffb14e093c94c9cac9471648b4f98710")
C1_COMMON_IV = bytes.fromhex("4622d4dd6d944168eefb54987c")
C1_CLIENT_SENDER_NONCE = bytes.fromhex("4622d4dd6d944168eefb54987c")
C1_CLIENT_RECIPIENT_NONCE = bytes.fromhex("4722d4dd6d944169eefb54987c")


def test_rfc8613_c1_server_context_of_the_store(tmp_path):
    """C.1.2 (server: Sender ID 0x01, Recipient ID empty) through the server's context."""
    credential = OscoreCredential("c1", sender_id=b"\x01", recipient_id=b"", master_secret=C1_SECRET,
                                  master_salt=C1_SALT)
    context = StoredContext(credential, SequenceState(), lambda *_: None)
    assert context.sender_key == C1_CLIENT_RECIPIENT_KEY
    assert context.recipient_key == C1_CLIENT_SENDER_KEY
    assert context.common_iv == C1_COMMON_IV


def test_rfc8613_c1_client_context_of_the_device(tmp_path):
    """C.1.1 (client: Sender ID empty, Recipient ID 0x01) through the simulator's context."""
    folder = device_oscore.provision(tmp_path / "c1", master_secret=C1_SECRET, sender_id=b"",
                                     recipient_id=b"\x01", master_salt=C1_SALT)
    context = device_oscore.load(folder)
    assert context.sender_key == C1_CLIENT_SENDER_KEY
    assert context.recipient_key == C1_CLIENT_RECIPIENT_KEY
    assert context.common_iv == C1_COMMON_IV
    alg = context.alg_aead
    assert context._construct_nonce(b"\x00", b"", alg) == C1_CLIENT_SENDER_NONCE
    assert context._construct_nonce(b"\x00", b"\x01", alg) == C1_CLIENT_RECIPIENT_NONCE


# -- the store, the CLI and the API ----------------------------------------------------------

def test_store_keeps_oscore_credentials_and_never_shows_the_secret(tmp_path):
    with CredentialStore(tmp_path / "c.sqlite3") as store:
        store.add(PskCredential("dev", "dev", b"\x01" * 16), now=1.0)
        store.add_oscore(oscore_credential("dev", sender_id=b"\x01", recipient_id=b"\x0a", master_secret=SECRET,
                                           master_salt=SALT), now=2.0)
        found = store.by_identity("oscore:0a")
        assert found.endpoint == "dev" and found.master_secret == SECRET
        assert store.by_identity("dev").mechanism == "psk"
        assert store.for_endpoint("dev").mechanism == "psk"  # the PSK first; OSCORE when it is the only one
        assert store.oscore_for_endpoint("dev").identity == "oscore:0a"
        listed = [c.public() for c in store.list()]
        assert [c["identity"] for c in listed] == ["dev", "oscore:0a"]
        assert SECRET.hex() not in json.dumps(listed) and SALT.hex() not in json.dumps(listed)
        assert SECRET.hex() not in repr(found) and SECRET.hex() not in repr(store.list())
        with pytest.raises(CredentialError, match="recipient id '0a' is already the OSCORE credential"):
            store.add_oscore(oscore_credential("other", sender_id=b"\x01", recipient_id=b"\x0a",
                                               master_secret=SECRET))
        with pytest.raises(CredentialError, match="starts the identities of OSCORE credentials"):
            store.add(PskCredential("x", "oscore:0b", b"\x01"))
        assert store.remove("dev", mechanism="oscore") == 1
        assert store.by_identity("oscore:0a") is None and store.by_identity("dev") is not None


@pytest.mark.parametrize("fields, reason", [
    ({"master_secret": bytes(15)}, "master_secret: 15 bytes, must be 16..64"),
    ({"sender_id": b"\x0a"}, "sender_id and recipient_id must differ"),
    ({"recipient_id": bytes(8)}, "recipient_id: 8 bytes, must be 0..7"),
    ({"aead": 12, "recipient_id": b"\x0a\x0b"}, "recipient_id: 2 bytes, must be 0..1"),
    ({"aead": 99}, "aead: COSE algorithm 99 is not supported"),
])
def test_oscore_credential_limits(fields, reason):
    values = {"sender_id": b"\x01", "recipient_id": b"\x0a", "master_secret": SECRET} | fields
    with pytest.raises(CredentialError, match=reason) as caught:
        oscore_credential("dev", **values)
    assert SECRET.hex() not in caught.value.reason


def test_a_version_1_store_is_migrated_keeping_its_psk_rows(tmp_path):
    import sqlite3

    path = tmp_path / "v1.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute("""CREATE TABLE credentials (
            endpoint TEXT NOT NULL, scope TEXT NOT NULL CHECK (scope IN ('server', 'bootstrap')),
            identity TEXT NOT NULL UNIQUE CHECK (length(CAST(identity AS BLOB)) BETWEEN 1 AND 32),
            key BLOB NOT NULL CHECK (typeof(key) = 'blob' AND length(key) BETWEEN 1 AND 16),
            created REAL NOT NULL, PRIMARY KEY (endpoint, scope))""")
        raw.execute("INSERT INTO credentials VALUES ('old', 'server', 'old-id', ?, 5.0)", (b"\x02" * 16,))
        raw.execute("PRAGMA user_version = 1")
    raw.close()
    with CredentialStore(path) as store:
        assert store.by_identity("old-id").key == b"\x02" * 16
        store.add_oscore(oscore_credential("old", sender_id=b"", recipient_id=b"\x01", master_secret=SECRET))
        assert store.for_endpoint("old").mechanism == "psk"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
    raw.close()


def test_two_servers_cannot_share_the_oscore_state(tmp_path):
    with CredentialStore(tmp_path / "c.sqlite3") as first, CredentialStore(tmp_path / "c.sqlite3") as second:
        first.add_oscore(oscore_credential("dev", sender_id=b"\x01", recipient_id=b"\x0a", master_secret=SECRET))
        contexts = OscoreContexts(first)
        assert contexts.for_identity("oscore:0a") is not None
        with pytest.raises(CredentialError, match="another process uses its OSCORE contexts"):
            OscoreContexts(second).for_identity("oscore:0a")


def test_cli_adds_an_oscore_credential_and_never_lists_its_secret(tmp_path):
    (tmp_path / "server.yaml").write_text(f"security: {{credentials_path: {tmp_path / 'creds.sqlite3'}}}\n")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lwm2m_server.cli", "credentials", *args,
                               "--config", str(tmp_path / "server.yaml")], capture_output=True, text=True,
                              timeout=60)

    added = cli("add", "osc-cli", "--oscore", "--sender-id", "01", "--recipient-id", "0a",
                "--secret", SECRET.hex(), "--salt", SALT.hex())
    assert added.returncode == 0, added.stderr
    assert "added the OSCORE credential of osc-cli (identity oscore:0a" in added.stdout
    generated = cli("add", "osc-gen", "--oscore", "--sender-id", "", "--recipient-id", "0b", "--generate")
    assert generated.returncode == 0, generated.stderr
    secret = generated.stdout.split("master secret ")[1].split()[0]
    listed = cli("list", "--json")
    assert listed.returncode == 0
    assert [c["identity"] for c in json.loads(listed.stdout)] == ["oscore:0a", "oscore:0b"]
    for output in (added.stdout, listed.stdout, listed.stderr, cli("list").stdout):
        assert SECRET.hex() not in output and SALT.hex() not in output and secret not in output
    mixed = cli("add", "osc-bad", "--oscore", "--key", "00", "--sender-id", "01", "--recipient-id", "0c")
    assert mixed.returncode == 2 and "--key: not for an OSCORE credential" in mixed.stderr
    with CredentialStore(tmp_path / "creds.sqlite3") as store:
        assert store.by_identity("oscore:0b").master_secret.hex() == secret


async def test_api_stores_an_oscore_credential_and_never_answers_its_secret(tmp_path):
    import aiohttp

    from lwm2m_server.api.http import ManagementApi

    with CredentialStore(tmp_path / "c.sqlite3") as store:
        api = ManagementApi(None, "t" * 32, host="127.0.0.1", port=0, credentials=store)  # type: ignore[arg-type]
        await api.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}",
                                             headers={"Authorization": f"Bearer {'t' * 32}"}) as session:
                body = {"mechanism": "oscore", "secret": SECRET.hex(), "salt": SALT.hex(),
                        "sender_id": "01", "recipient_id": "0a"}
                async with session.put("/api/v1/credentials/osc-api", json=body) as response:
                    created, text = response.status, await response.text()
                async with session.get("/api/v1/credentials") as response:
                    listing = await response.text()
                async with session.put("/api/v1/credentials/osc-api", json=body | {"secret": "00"}) as response:
                    short, short_text = response.status, await response.text()
                async with session.delete("/api/v1/credentials/osc-api?mechanism=oscore") as response:
                    deleted = response.status
        finally:
            await api.stop()
    assert created == 201 and json.loads(text)["identity"] == "oscore:0a"
    assert [c["identity"] for c in json.loads(listing)] == ["oscore:0a"]
    for answer in (text, listing, short_text):
        assert SECRET.hex() not in answer and SALT.hex() not in answer
    assert short == 400 and "secret: 1 bytes, must be 16..64" in short_text
    assert deleted == 204
