"""The aiocoap adapter over loopback: incoming dispatch, outgoing requests, 4.13 retry."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import aiocoap
import pytest
from aiocoap import Code, Message, optiontypes, resource

from lwm2m_server.transport.coap import CoapAdapter, DeviceUnreachable, IncomingRequest, OutgoingResponse


@dataclass(frozen=True)
class Req:
    method: str
    uri_path: tuple[str, ...]
    query: tuple[str, ...] = ()
    content_format: int | None = None
    accept: int | None = None
    payload: bytes = b""
    observe: int | None = None


@pytest.fixture
async def adapter():
    seen: list[IncomingRequest] = []

    async def handler(request: IncomingRequest) -> OutgoingResponse:
        seen.append(request)
        return OutgoingResponse("2.01", location_path=("rd", "x1"))

    server = CoapAdapter(handler, host="127.0.0.1", port=0, max_in_flight=10)
    await server.start()
    server.seen = seen
    yield server
    await server.stop()


async def device(site):
    return await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])


def port_of(context) -> int:
    interface = context.request_interfaces[0].token_interface.message_interface
    return interface.transport.get_extra_info("socket").getsockname()[1]


async def test_incoming_block1_is_reassembled_and_answered(adapter):
    client = await device(resource.Site())
    try:
        payload = b"</3/0>," * 40
        message = Message(code=Code.POST, uri=f"coap://127.0.0.1:{adapter.port}/rd?ep=a&lt=60", payload=payload)
        await client.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{adapter.port}/x")).response
        message.remote.maximum_block_size_exp = 0  # 16-byte blocks, like coap-client -b 16
        response = await client.request(message).response
        assert str(response.code) == "2.01 Created" and response.opt.location_path == ("rd", "x1")
        incoming = adapter.seen[-1]
        assert (incoming.method, incoming.uri_path, incoming.query) == ("POST", ("rd",), ("ep=a", "lt=60"))
        assert incoming.payload == payload and incoming.address == f"127.0.0.1:{port_of(client)}"
    finally:
        await client.shutdown()


async def test_outgoing_request_reaches_device_by_saved_address(adapter):
    class Manufacturer(resource.Resource):
        async def render_get(self, request):
            assert request.opt.accept == 0
            return Message(payload=b"Acme", content_format=0)

    site = resource.Site()
    site.add_resource(("3", "0", "0"), Manufacturer())
    dev = await device(site)
    try:
        response = await adapter.request(
            f"127.0.0.1:{port_of(dev)}", Req("GET", ("3", "0", "0"), accept=0), timeout=5
        )
        assert (response.code, response.content_format, response.payload) == ("2.05", 0, b"Acme")
    finally:
        await dev.shutdown()


class PickyBlock1(resource.Resource):
    """Accepts Block1 transfers only in blocks of at most 64 bytes; answers 4.13 + Size1 otherwise."""

    def __init__(self):
        super().__init__()
        self.body = b""
        self.refusals = 0

    async def needs_blockwise_assembly(self, request):
        return False

    async def render_put(self, request):
        block = request.opt.block1
        if block is None or block.size_exponent > 2:
            self.refusals += 1
            answer = Message(code=Code.REQUEST_ENTITY_TOO_LARGE)
            answer.opt.size1 = 64
            return answer
        if block.block_number == 0:
            self.body = b""
        self.body += request.payload
        if block.more:
            answer = Message(code=Code.CONTINUE)
            answer.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(block.block_number, True, block.size_exponent)
            return answer
        answer = Message(code=Code.CHANGED)
        answer.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(block.block_number, False, block.size_exponent)
        return answer


async def test_413_with_size1_is_retried_with_smaller_blocks(adapter):
    picky = PickyBlock1()
    site = resource.Site()
    site.add_resource(("5", "0", "0"), picky)
    dev = await device(site)
    try:
        image = bytes(range(256)) * 12  # 3 KiB: Block1 at 1024 first, refused
        response = await adapter.request(
            f"127.0.0.1:{port_of(dev)}", Req("PUT", ("5", "0", "0"), content_format=42, payload=image), timeout=10
        )
        assert response.code == "2.04"
        assert picky.body == image and picky.refusals == 1
    finally:
        await dev.shutdown()


async def test_silent_device_is_unreachable(adapter):
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    transport = silent[0]
    try:
        port = transport.get_extra_info("sockname")[1]
        with pytest.raises(DeviceUnreachable, match="no response within 0.5 s"):
            await adapter.request(f"127.0.0.1:{port}", Req("GET", ("3", "0")), timeout=0.5)
    finally:
        transport.close()


async def test_receive_buffer_is_raised(adapter):
    # Linux reports twice the value set; without privileges it is capped at rmem_max.
    assert adapter.receive_buffer_bytes >= 4 * 1024 * 1024


@pytest.fixture
async def file_server(tmp_path):
    image = bytes((i * 7) % 251 for i in range(300_000))
    path = tmp_path / "module.bin"
    path.write_bytes(image)
    from lwm2m_server.transport.coap import Download

    download = Download(path, len(image), b"\x01\x02\x03\x04")

    async def handler(request):
        return OutgoingResponse("4.04")

    server = CoapAdapter(handler, host="127.0.0.1", port=0,
                         downloads=lambda request: download if request.uri_path == ("fw", "m1") else None)
    await server.start()
    yield server, image
    await server.stop()


async def test_download_streams_the_whole_file_block_by_block(file_server):
    server, image = file_server
    client = await device(resource.Site())
    try:
        response = await client.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{server.port}/fw/m1")).response
        assert response.code == Code.CONTENT and response.payload == image
        assert response.opt.etag == b"\x01\x02\x03\x04"
    finally:
        await client.shutdown()


async def test_download_resumes_at_any_block_with_size2(file_server):
    server, image = file_server
    client = await device(resource.Site())
    try:
        request = Message(code=Code.GET, uri=f"coap://127.0.0.1:{server.port}/fw/m1")
        request.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(100, False, 2)  # 64-byte blocks
        request.opt.size2 = 0
        response = await client.request(request, handle_blockwise=False).response
        assert response.payload == image[6400:6464] and response.opt.block2.more
        assert response.opt.size2 == len(image)
        request = Message(code=Code.GET, uri=f"coap://127.0.0.1:{server.port}/fw/m1")
        request.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(5000, False, 6)
        response = await client.request(request, handle_blockwise=False).response
        assert response.code == Code.BAD_OPTION
        missing = await client.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{server.port}/fw/other")).response
        assert missing.code == Code.NOT_FOUND
    finally:
        await client.shutdown()


async def test_a_body_over_the_limit_is_refused_with_413_before_it_is_held():
    async def handler(request: IncomingRequest) -> OutgoingResponse:
        return OutgoingResponse("2.04")

    server = CoapAdapter(handler, host="127.0.0.1", port=0, max_request_body=4096)
    await server.start()
    client = await device(resource.Site())
    try:
        uri = f"coap://127.0.0.1:{server.port}/dp"
        fits = await client.request(Message(code=Code.POST, uri=uri, payload=b"x" * 4096)).response
        assert fits.code == Code.CHANGED
        # aiocoap sends 1 KiB blocks: the fifth block would pass 4096 bytes
        refused = await client.request(Message(code=Code.POST, uri=uri, payload=b"x" * 6000)).response
        assert refused.code == Code.REQUEST_ENTITY_TOO_LARGE and refused.opt.size1 == 4096
        # a first block whose Size1 announces 1 MB (RFC 7959 §4) is refused at once
        announced = Message(mtype=aiocoap.CON, mid=7, token=b"\x07", code=Code.POST, payload=b"x" * 1024)
        announced.opt.uri_path = ("dp",)
        announced.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(0, True, 6)
        announced.opt.size1 = 1_000_000
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.setblocking(False)
            raw.connect(("127.0.0.1", server.port))
            await loop.sock_sendall(raw, announced.encode())
            async with asyncio.timeout(5):
                refused = Message.decode(await loop.sock_recv(raw, 2048))
        assert refused.code == Code.REQUEST_ENTITY_TOO_LARGE and refused.opt.size1 == 4096
        still = await client.request(Message(code=Code.POST, uri=uri, payload=b"ok")).response
        assert still.code == Code.CHANGED
    finally:
        await client.shutdown()
        await server.stop()


async def test_per_peer_tables_stay_bounded(adapter):
    adapter._max_remotes = 3
    clients = [await device(resource.Site()) for _ in range(5)]
    try:
        for client in clients:  # five peers, as a device hopping source ports would look
            await client.request(Message(code=Code.POST, uri=f"coap://127.0.0.1:{adapter.port}/rd?ep=a")).response
        assert len(adapter._remotes) == 3
        newest = adapter.seen[-1].address
        assert newest in adapter._remotes and adapter.seen[0].address not in adapter._remotes
        adapter.forget(newest)
        assert newest not in adapter._remotes
        answer = await adapter.request(adapter.seen[-2].address, Req("GET", ("3", "0")), timeout=2)
        assert answer.code == "4.04"
        assert adapter._per_device == {}  # the lock of a device lives only while it is used
    finally:
        for client in clients:
            await client.shutdown()


async def test_a_non_utf8_uri_path_gets_a_reset_and_no_traceback(adapter, caplog):
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.setblocking(False)
        raw.connect(("127.0.0.1", adapter.port))
        # CON GET, Message ID 0x1234, Uri-Path 0xFF (not UTF-8)
        await loop.sock_sendall(raw, bytes((0x40, 0x01, 0x12, 0x34, 0xB1, 0xFF)))
        async with asyncio.timeout(5):
            answer = await loop.sock_recv(raw, 64)
    assert answer == bytes((0x70, 0x00, 0x12, 0x34))  # Reset, same Message ID
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    client = await device(resource.Site())
    try:
        response = await client.request(Message(code=Code.POST, uri=f"coap://127.0.0.1:{adapter.port}/rd?ep=a")).response
        assert response.code == Code.CREATED
    finally:
        await client.shutdown()


async def test_download_blocks_over_plain_udp_are_never_kept(file_server):
    """aiocoap keeps each response 247 s to answer a duplicate (about 90 MB after 20 pulls
    of 1 MiB). Block GETs over plain UDP take the fast path (transport/fast_requests.py):
    served from the file, no copy kept, a repeated GET served again. (Over CoAPS aiocoap
    serves them and ``_release_copy_later`` drops its copies after a second.)"""
    server, image = file_server
    recent = server._udp.token_interface._recent_messages
    client = await device(resource.Site())
    try:
        for _ in range(2):
            response = await client.request(Message(code=Code.GET, uri=f"coap://127.0.0.1:{server.port}/fw/m1")).response
            assert response.payload == image
        assert len(recent) == 0 and server.stats.blocks_served >= 2
    finally:
        await client.shutdown()


async def test_an_icmp_error_from_one_device_does_not_lose_the_answer_to_another():
    """A device whose port closed makes the kernel report "port unreachable" on the
    server's socket, and also leave it pending there: it used to fail the server's next
    send, whatever peer that was for, and this device's answer was lost."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(request: IncomingRequest) -> OutgoingResponse:
        entered.set()
        await release.wait()
        return OutgoingResponse("2.04")

    server = CoapAdapter(handler, host="127.0.0.1", port=0)
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as device:
            device.setblocking(False)
            device.connect(("127.0.0.1", server.port))
            for mid in range(3):
                entered.clear()
                release.clear()
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
                    gone.bind(("127.0.0.1", 0))
                    closed = gone.getsockname()[1]
                request = Message(code=Code.POST, payload=b"x")
                request.mtype, request.mid, request.token = aiocoap.CON, mid, bytes([mid])
                request.opt.uri_path = ("dp",)
                device.send(request.encode())
                await entered.wait()  # the server is about to answer this device, when it
                server._socket().sendto(b"\x50\x01\x00\x01", ("::ffff:127.0.0.1", closed))  # sends to a closed port
                release.set()
                async with asyncio.timeout(2):
                    answer = Message.decode(await loop.sock_recv(device, 2048))
                assert answer.code == Code.CHANGED and answer.mid == mid
    finally:
        await server.stop()


class StallingBlock1(resource.Resource):
    """Takes Block1 transfers; answers 2.31 asking for 32-byte blocks from block 1 on,
    and never answers block ``stall_at`` (aiocoap acknowledges it after a moment)."""

    def __init__(self, stall_at: int | None = None):
        super().__init__()
        self.body, self.sizes, self.stall_at = b"", [], stall_at

    async def needs_blockwise_assembly(self, request):
        return False

    async def render_put(self, request):
        block = request.opt.block1
        self.sizes.append(len(request.payload))
        if block.block_number == self.stall_at:
            await asyncio.Event().wait()
        self.body = (b"" if block.block_number == 0 else self.body) + request.payload
        answer = Message(code=Code.CONTINUE if block.more else Code.CHANGED)
        answer.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(block.block_number, block.more, 1)  # 32 bytes
        return answer


async def test_a_smaller_block_size_in_the_devices_2_31_is_taken_from_the_next_block_on(adapter):
    device_side = StallingBlock1()
    site = resource.Site()
    site.add_resource(("5", "0", "0"), device_side)
    dev = await device(site)
    try:
        image = bytes(range(256)) * 8  # 2 KiB: the first block at our 1024, the rest at 32
        response = await adapter.request(
            f"127.0.0.1:{port_of(dev)}", Req("PUT", ("5", "0", "0"), content_format=42, payload=image), timeout=5
        )
        assert response.code == "2.04" and device_side.body == image
        assert device_side.sizes == [1024] + [32] * 32
    finally:
        await dev.shutdown()


async def test_a_block_acknowledged_and_never_answered_fails_the_transfer_after_one_timeout(adapter):
    site = resource.Site()
    site.add_resource(("5", "0", "0"), StallingBlock1(stall_at=40))  # numbers count 32-byte blocks after the first
    dev = await device(site)
    try:
        image = bytes(range(256)) * 40  # 10 KiB: 300+ blocks after the first (once was a timeout for each)
        started = asyncio.get_running_loop().time()
        with pytest.raises(DeviceUnreachable, match="no response within 1 s"):
            await adapter.request(f"127.0.0.1:{port_of(dev)}", Req("PUT", ("5", "0", "0"), payload=image), timeout=1)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await dev.shutdown()
