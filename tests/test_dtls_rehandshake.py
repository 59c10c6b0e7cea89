"""CoAPS devices that handshake again from the same address and port (Wakaama and
other tinydtls clients do after ~40 s idle), and failed handshakes in the log.

The peers here import nothing of the server's transport: ``peers/dtls_device.py``
drives tinydtls (DTLSSocket) directly, and Debian's libcoap ``coap-client`` speaks
DTLS through OpenSSL/GnuTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import time

import pytest
from structlog.testing import capture_logs

from ipso_objects import LwM2MPath, ObjectRegistry
from lwm2m_server.core import operations as ops
from lwm2m_server.server import LwM2MServer
from lwm2m_server.transport.messages import Download
from test_dtls import KEY, Secure
from test_integration import wait_until

pytest.importorskip("DTLSSocket.dtls", reason="CoAPS needs DTLSSocket (tinydtls)")

from peers.dtls_device import DtlsDevice  # noqa: E402 - needs DTLSSocket

REGISTRY = ObjectRegistry.default()
MANUFACTURER = LwM2MPath.parse("/3/0/0")


async def read_manufacturer(server: LwM2MServer, endpoint: str):
    return await server.perform(endpoint, lambda reg: ops.read(reg, MANUFACTURER, registry=REGISTRY))


@pytest.fixture
async def secure(tmp_path):
    async with Secure(tmp_path) as setup:
        yield setup


@pytest.fixture
async def peer(secure):
    secure.add("peer-1")
    device = DtlsDevice("peer-1", b"peer-1", KEY, ("127.0.0.1", secure.server.secure_port))
    await device.open()
    yield device
    device.close()


def failures(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "dtls_handshake_failed"]


async def test_a_device_that_handshakes_again_from_the_same_port_is_reachable_at_once(secure, peer):
    await peer.handshake()
    await peer.register()
    registration = secure.server.registration("peer-1")
    assert registration.address == f"coaps://127.0.0.1:{peer.port}" and registration.identity == "peer-1"
    assert (await read_manufacturer(secure.server, "peer-1")).node.value == "Peer Devices Inc"
    before = next(iter(secure.sessions().values()))

    with capture_logs() as logs:
        await peer.rehandshake()  # same socket, epoch 0 ClientHello, no close_notify (as Wakaama)
        await wait_until(lambda: secure.sessions().get(before.sockaddr) not in (None, before), 5)
    assert [(e["event"], e.get("reason")) for e in logs if e["event"].startswith("dtls_")] == [
        ("dtls_session_ended", "new handshake"), ("dtls_session_started", None)]

    answered = len(peer.requests)
    result = await read_manufacturer(secure.server, "peer-1")  # no Update in between
    assert result.code == "2.05" and result.node.value == "Peer Devices Inc"
    assert peer.requests[answered:] == ["/3/0/0"]
    assert secure.server.registration("peer-1") == registration  # still the same registration
    await peer.rehandshake()  # and again: each new session takes over at once
    assert (await read_manufacturer(secure.server, "peer-1")).code == "2.05"


async def test_a_new_handshake_as_another_identity_never_gets_the_registrations_requests(secure, peer):
    secure.add("peer-2")
    await peer.handshake()
    await peer.register()
    answered = len(peer.requests)

    peer.identity = b"peer-2"  # the same address and port now proves another identity
    await peer.rehandshake()
    result = await read_manufacturer(secure.server, "peer-1")
    assert result.code == "unreachable" and "proved identity 'peer-2', not 'peer-1'" in result.diagnostic
    peer.endpoint = "peer-2"
    await peer.register()  # heard from that address as peer-2 now: still not peer-1's session
    assert (await read_manufacturer(secure.server, "peer-2")).code == "2.05"
    result = await read_manufacturer(secure.server, "peer-1")
    assert result.code == "unreachable" and "proved identity 'peer-2'" in result.diagnostic
    assert peer.requests[answered:].count("/3/0/0") == 1  # only peer-2's own read reached it

    peer.identity = b"peer-1"  # back as peer-1: its registration is reachable again
    await peer.rehandshake()
    assert (await read_manufacturer(secure.server, "peer-1")).code == "2.05"


async def test_a_failed_new_handshake_ends_the_old_session(secure, peer):
    await peer.handshake()
    await peer.register()
    peer.identity = b"stranger"
    with pytest.raises(ConnectionError, match="alert 2/115"):  # unknown_psk_identity (RFC 4279 §2)
        await peer.rehandshake()
    assert not secure.sessions()
    started = time.monotonic()
    result = await read_manufacturer(secure.server, "peer-1")
    assert result.code == "unreachable" and "no DTLS session" in result.diagnostic
    assert time.monotonic() - started < 1


# -- libcoap (OpenSSL, GnuTLS): a DTLS stack that shares nothing with ours -------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("binary", ["coap-client-openssl", "coap-client-gnutls"])
async def test_libcoap_handshaking_again_from_its_port_is_reached_at_once(secure, binary, tmp_path):
    """coap-client, from one fixed local port (``-p``): a first run registers and is
    killed (no close_notify, like a device that just forgets its session); a second run
    from the same port handshakes anew and pulls a firmware file (downloads are served
    beside the LwM2M handler, so nothing but the handshake tells the server about the
    new session). The server's read goes over the new session at once: libcoap answers
    it (4.04, it serves no resources), with no Update in between."""
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} (Debian libcoap3-bin) not installed")
    firmware = tmp_path / "firmware.bin"
    firmware.write_bytes(b"\x7fFIRMWARE" * 10)
    offered = Download(firmware, firmware.stat().st_size, b"fw-1")
    secure.server._adapter._downloads = lambda request: offered if request.uri_path == ("fw", "t1") else None
    key = "libcoap-secret16"
    secure.add("libcoap-1", key=key.encode())
    port = free_udp_port()
    base = f"coaps://127.0.0.1:{secure.server.secure_port}"

    async def coap_client(*args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            binary, "-p", str(port), "-u", "libcoap-1", "-k", key, "-B", "20", *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    first = await coap_client("-m", "post", "-t", "40", "-e", "</3/0>", "-G", "20",
                              f"{base}/rd?ep=libcoap-1&lt=300&lwm2m=1.0&b=U")
    try:
        await wait_until(lambda: secure.server.registration("libcoap-1") is not None, 10)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    registration = secure.server.registration("libcoap-1")
    assert registration.address == f"coaps://127.0.0.1:{port}"
    old = next(iter(secure.sessions().values()))

    second = await coap_client("-m", "get", "-G", "20", f"{base}/fw/t1")
    try:
        await wait_until(lambda: secure.sessions().get(old.sockaddr) not in (None, old), 10)
        result = await read_manufacturer(secure.server, "libcoap-1")
    finally:
        with contextlib.suppress(ProcessLookupError):
            second.terminate()
        await second.wait()
    assert result.code == "4.04"  # libcoap's own answer, over the new session
    assert secure.server.registration("libcoap-1") == registration


# -- failed handshakes in the log ------------------------------------------------------------------


async def test_a_wrong_key_is_logged_once_with_peer_and_identity_never_the_key(secure):
    secure.add("peer-1")
    wrong = bytes.fromhex("5a5b5c5d5e5f60616263646566676869")
    peer = DtlsDevice("peer-1", b"peer-1", wrong, ("127.0.0.1", secure.server.secure_port))
    await peer.open()
    try:
        with capture_logs() as logs:
            with pytest.raises((ConnectionError, TimeoutError)):
                await peer.handshake(timeout=4)  # refused at its first Finished (decrypt_error)
            await wait_until(lambda: failures(logs), 5)
            await asyncio.sleep(1.5)  # the device's later retransmissions add no line
    finally:
        peer.close()
    [line] = failures(logs)
    assert line["log_level"] == "warning"
    assert line["peer"] == f"127.0.0.1:{peer.port}" and line["identity"] == "peer-1"
    assert line["reason"].startswith("bad key")
    text = repr(logs)
    assert wrong.hex() not in text and repr(wrong)[2:-1] not in text and KEY.hex() not in text
    assert not secure.sessions() and secure.server.registration("peer-1") is None


async def test_an_unknown_identity_is_logged(secure):
    peer = DtlsDevice("peer-9", b"stranger", KEY, ("127.0.0.1", secure.server.secure_port))
    await peer.open()
    try:
        with capture_logs() as logs:
            with pytest.raises(ConnectionError):
                await peer.handshake()
    finally:
        peer.close()
    [line] = failures(logs)
    assert (line["peer"], line["identity"], line["reason"]) == (f"127.0.0.1:{peer.port}", "stranger",
                                                                  "unknown identity")


async def test_a_stalled_handshake_is_logged_when_it_is_dropped(secure):
    secure.add("peer-1")
    peer = DtlsDevice("peer-1", b"peer-1", KEY, ("127.0.0.1", secure.server.secure_port))
    await peer.open()
    heard: list[bytes] = []

    def deaf_after_the_cookie(data: bytes, address, hear=peer.datagram_received) -> None:
        heard.append(data)
        if len(heard) == 1:  # the HelloVerifyRequest; the ServerHello flight goes unheard
            hear(data, address)

    peer.datagram_received = deaf_after_the_cookie
    endpoint = secure.server._adapter._dtls.endpoint
    try:
        with capture_logs() as logs:
            with pytest.raises(TimeoutError):
                await peer.handshake(timeout=0.5)  # deaf after the cookie: never answers ServerHello
            assert endpoint.handshakes
            endpoint.end_idle(time.monotonic() + endpoint.handshake_timeout + 1)
    finally:
        peer.close()
    [line] = failures(logs)
    assert line["peer"] == f"127.0.0.1:{peer.port}" and line["reason"] == "unfinished after 60 s"
    assert not endpoint.handshakes


async def test_a_flood_of_bad_handshakes_is_rate_limited_and_counted(secure):
    secure.add("peer-1")
    endpoint = secure.server._adapter._dtls.endpoint

    async def bad_handshake() -> None:
        peer = DtlsDevice("peer-1", b"intruder", KEY, ("127.0.0.1", secure.server.secure_port))
        await peer.open()
        try:
            with pytest.raises(ConnectionError):
                await peer.handshake()
        finally:
            peer.close()

    with capture_logs() as logs:
        await asyncio.gather(*(bad_handshake() for _ in range(50)))  # 50 source ports, one host
        assert len(failures(logs)) == 1  # one line per host per 10 s
        endpoint.failures.interval = 0  # as if the ten seconds had passed
        await bad_handshake()
    first, second = failures(logs)
    assert first["suppressed"] == 0 and second["suppressed"] == 49
    assert endpoint.failures.suppressed_total == 49
    good = DtlsDevice("peer-1", b"peer-1", KEY, ("127.0.0.1", secure.server.secure_port))
    await good.open()
    try:
        await good.handshake()  # the server still serves
        await good.register()
    finally:
        good.close()


@pytest.mark.parametrize("binary", ["coap-client-openssl", "coap-client-gnutls"])
async def test_libcoap_with_a_wrong_key_is_logged(secure, binary):
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} (Debian libcoap3-bin) not installed")
    secure.add("libcoap-1", key=b"libcoap-secret16")
    with capture_logs() as logs:
        client = await asyncio.create_subprocess_exec(
            binary, "-u", "libcoap-1", "-k", "not-the-secret!!", "-B", "6",
            f"coaps://127.0.0.1:{secure.server.secure_port}/rd",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await wait_until(lambda: failures(logs), 8)  # OpenSSL and GnuTLS resend their flight after 1 s
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have given up already
                client.terminate()
            await client.wait()
    [line] = failures(logs)
    assert line["identity"] == "libcoap-1" and line["reason"].startswith("bad key")
    assert "not-the-secret" not in repr(logs)
