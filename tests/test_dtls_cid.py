"""Connection ID (RFC 9146) against ``peers/dtls_cid_client.py``, a DTLS client written
from the RFCs apart from our server (it imports nothing of ours): the session, and the
device's registration, follow the device to a new port (NAT rebinding) without a
handshake; without a CID a new port is a new peer."""

from __future__ import annotations

from aiocoap import Code, Message

from peers.dtls_cid_client import CidDtlsClient
from test_dtls import KEY, Secure, read_device
from test_integration import wait_until

async def registered(setup: Secure, endpoint: str, cid: bytes | None) -> tuple[CidDtlsClient, str]:
    setup.add(endpoint)
    client = CidDtlsClient(("127.0.0.1", setup.server.secure_port), endpoint.encode(), KEY, cid=cid)
    client.serve(lambda request: Message(code=Code.NOT_FOUND))
    await client.connect()
    response = await client.request(Message(code=Code.POST, uri_path=("rd",),
                                            uri_query=(f"ep={endpoint}", "lt=300", "lwm2m=1.1", "b=U"),
                                            payload=b"</1/0>,</3/0>", content_format=40))
    assert response.code == Code.CREATED
    return client, "/".join(response.opt.location_path)


async def update(client: CidDtlsClient, location: str) -> Code:
    return (await client.request(Message(code=Code.POST, uri_path=tuple(location.split("/"))))).code


async def test_with_a_connection_id_the_session_follows_the_device_to_a_new_port(tmp_path):
    async with Secure(tmp_path) as setup:
        client, location = await registered(setup, "cid-1", cid=b"\x0a\x0b\x0c\x0d")
        try:
            assert client.negotiated_cid  # the server gave its own CID
            first = setup.server.registration("cid-1").address
            assert (await read_device(setup.server, "cid-1")).code == "4.04"  # reached, and answered
            await client.rebind()  # a NAT gave the device a new port
            handshakes = sum(1 for direction, kind, _ in client.records if direction == "tx" and kind == 22)
            assert await update(client, location) == Code.CHANGED  # over the same session
            assert sum(1 for direction, kind, _ in client.records if direction == "tx" and kind == 22) == handshakes
            moved = setup.server.registration("cid-1").address
            assert moved != first and moved.endswith(f":{client.local_address[1]}")
            assert (await read_device(setup.server, "cid-1")).code == "4.04"  # the server's requests follow too
            assert any(kind == 25 for direction, kind, _ in client.records if direction == "rx")  # tls12_cid
        finally:
            await client.close()


async def test_a_zero_length_connection_id_offer_gets_the_servers_cid_only(tmp_path):
    async with Secure(tmp_path) as setup:
        client, location = await registered(setup, "cid-2", cid=b"")
        try:
            assert client.negotiated_cid  # we send records with the server's CID...
            assert not any(kind == 25 for direction, kind, _ in client.records if direction == "rx")  # ...and get none
            await client.rebind()
            assert await update(client, location) == Code.CHANGED
        finally:
            await client.close()


async def test_without_a_connection_id_a_new_port_is_not_the_session(tmp_path):
    async with Secure(tmp_path) as setup:
        client, location = await registered(setup, "plain-1", cid=None)
        try:
            assert client.negotiated_cid is None
            before = setup.server.registration("plain-1").address
            await client.rebind()
            try:
                code = await update(client, location)
            except TimeoutError:
                code = None  # records from an unknown address are dropped: no answer
            assert code is None
            assert setup.server.registration("plain-1").address == before
        finally:
            await client.close(notify=False)

