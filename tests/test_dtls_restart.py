"""DTLS sessions over a restart: a graceful stop saves them, the next start resumes them
(the devices keep theirs, so the server reaches them without a handshake); the file is
deleted when read, so sessions saved once resume once, even if that process is killed.

The devices: the simulator (tinydtls through DTLSSocket) and ``peers/dtls_device.py``,
a Wakaama-like tinydtls peer that imports nothing of ours.
"""

from __future__ import annotations

import json
import stat
import time

import pytest
from structlog.testing import capture_logs

from lwm2m_server.transport.coap import CoapAdapter
from lwm2m_server.transport.dtls_records import APPLICATION_DATA
from test_dtls import KEY, Secure, read_device
from test_dtls_rehandshake import read_manufacturer
from test_integration import wait_until

pytest.importorskip("DTLSSocket.dtls", reason="the devices' DTLS client needs DTLSSocket (tinydtls)")

from peers.dtls_device import DtlsDevice  # noqa: E402 - needs DTLSSocket


@pytest.fixture
def session_file(tmp_path, monkeypatch):
    """Every CoAP adapter keeps its DTLS sessions here (the daemon gives it
    ``security.dtls_session_file``)."""
    path = tmp_path / "dtls-sessions.json"
    init = CoapAdapter.__init__

    def with_session_file(self, *args, **kwargs):
        if kwargs.get("dtls_session_file") is None:
            kwargs["dtls_session_file"] = path
        init(self, *args, **kwargs)

    monkeypatch.setattr(CoapAdapter, "__init__", with_session_file)
    return path


def endpoint_of(setup: Secure):
    return setup.server._adapter._dtls.endpoint


def record_datagrams(setup: Secure) -> list[bytes]:
    """What the CoAPS port hears from now on."""
    heard: list[bytes] = []
    endpoint = endpoint_of(setup)
    receive = endpoint.datagram_received
    endpoint.datagram_received = lambda data, address: (heard.append(bytes(data)), receive(data, address))[1]
    return heard


async def registered_devices(setup: Secure) -> tuple[list, DtlsDevice]:
    devices = []
    for number in range(3):
        setup.add(f"dev-{number}")
        devices.append(await setup.device(f"dev-{number}", psk=(f"dev-{number}", KEY)))
    setup.add("peer-1")
    peer = DtlsDevice("peer-1", b"peer-1", KEY, ("127.0.0.1", setup.server.secure_port))
    await peer.open()
    await peer.handshake()
    await peer.register()
    # discovery over: the devices have nothing more to say
    await wait_until(lambda: all(setup.server.profile(f"dev-{number}") for number in range(3)), 10)
    return devices, peer


async def test_after_a_graceful_restart_the_server_reads_its_dtls_devices_without_a_handshake(tmp_path, session_file):
    async with Secure(tmp_path) as setup:
        devices, peer = await registered_devices(setup)
        try:
            with capture_logs() as logs:
                await setup.stop()  # graceful: the sessions are saved, no close_notify
            assert not [e for e in logs if e["event"] == "dtls_session_ended" and e.get("reason") == "close_notify"]
            assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
            assert len(json.loads(session_file.read_text())["sessions"]) == 4

            await setup.start()  # same ports
            assert not session_file.exists()  # deleted before serving
            assert len(setup.sessions()) == 4
            heard = record_datagrams(setup)
            started = time.monotonic()
            for number in range(3):
                result = await read_device(setup.server, f"dev-{number}")
                assert result.code == "2.05", result
            answered = len(peer.requests)
            result = await read_manufacturer(setup.server, "peer-1")
            elapsed = time.monotonic() - started
            assert result.code == "2.05" and result.node.value == "Peer Devices Inc"
            assert peer.requests[answered:] == ["/3/0/0"]
            assert elapsed < 3, elapsed
            # nothing but the devices' encrypted answers: no ClientHello, no handshake at all
            assert heard and all(datagram[0] == APPLICATION_DATA for datagram in heard)
            print(f"first reads after a graceful restart: {elapsed * 1000:.0f} ms for 4 devices")
        finally:
            peer.close()


async def test_sessions_saved_once_resume_once_even_if_that_process_is_killed(tmp_path, session_file):
    async with Secure(tmp_path) as setup:
        setup.add("dev-1")
        device = await setup.device("dev-1", psk=("dev-1", KEY))
        await setup.stop()
        await setup.start()
        assert not session_file.exists()
        assert (await read_device(setup.server, "dev-1")).code == "2.05"

        # SIGKILL, as seen from outside: no datagram leaves any more and nothing is saved
        endpoint = endpoint_of(setup)
        endpoint._transport.close()
        endpoint.session_file = None
        await setup.stop()
        assert not session_file.exists()
        await setup.start()  # the saved keys must not come back with their old write sequence
        assert not setup.sessions()
        result = await read_device(setup.server, "dev-1")
        assert result.code == "unreachable" and "no DTLS session" in result.diagnostic

        device.request_timeout = 1
        started = time.monotonic()
        await device.update()  # unanswered over the lost session: the device handshakes again
        assert (await read_device(setup.server, "dev-1")).code == "2.05"
        print(f"after the kill: reachable {time.monotonic() - started:.2f} s after the device's next request")


async def test_sessions_of_a_removed_or_rekeyed_credential_are_not_resumed(tmp_path, session_file):
    async with Secure(tmp_path) as setup:
        for name in ("dev-1", "dev-2", "dev-3"):
            setup.add(name)
            await setup.device(name, psk=(name, KEY))
        await setup.stop()
        setup.credentials.remove("dev-2")
        setup.credentials.remove("dev-3")
        setup.add("dev-3", key=bytes(range(1, 17)))  # same identity, another key
        with capture_logs() as logs:
            await setup.start()
        assert [s.identity for s in setup.sessions().values()] == [b"dev-1"]
        [resumed] = [e for e in logs if e["event"] == "dtls_sessions_resumed"]
        assert resumed["sessions"] == 1 and resumed["credential_removed_or_changed"] == 2
        assert (await read_device(setup.server, "dev-1")).code == "2.05"
