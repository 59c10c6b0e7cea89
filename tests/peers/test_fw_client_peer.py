"""The LwM2M firmware peer tested alone: an aiocoap context plays the LwM2M server."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Message, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from .fw_client import (MULTI_RES, OBJ_INST, RES, RES_INST, TLV, FirmwarePeer, make_image,
                        tlv_decode, tlv_item)

Block = BlockOption.BlockwiseTuple
PMAX = 0.3


class FakeServer:
    """Just enough LwM2M server: /rd registration interface, a firmware blob, a client API."""

    def __init__(self) -> None:
        self.site = resource.Site()
        self.registrations: list[dict] = []
        self.updates: list[dict] = []
        self.deregistrations: list[str] = []
        self.blobs: dict[str, bytes] = {}
        self.site.add_resource(["rd"], _Rd(self))
        self.ctx: aiocoap.Context | None = None
        self.port = 0

    async def start(self) -> None:
        self.ctx = await aiocoap.Context.create_server_context(
            self.site, bind=("127.0.0.1", 0), transports=["udp6"])
        self.port = self.ctx.request_interfaces[0].token_interface.message_interface._local_port()

    def serve(self, path: str, data: bytes) -> str:
        self.site.add_resource(path.strip("/").split("/"), _Blob(data))
        return f"coap://127.0.0.1:{self.port}{path}"

    @property
    def peer_hostinfo(self) -> str:
        return self.registrations[-1]["remote"]  # where the client's Register came from

    async def request(self, code: Code, path: str, payload: bytes = b"", **opts) -> Message:
        msg = Message(code=code, uri=f"coap://{self.peer_hostinfo}{path}", payload=payload, **opts)
        return await asyncio.wait_for(self.ctx.request(msg, handle_blockwise=False).response, 5)

    async def request_blockwise(self, code: Code, path: str, payload: bytes, **opts) -> Message:
        msg = Message(code=code, uri=f"coap://{self.peer_hostinfo}{path}", payload=payload, **opts)
        return await asyncio.wait_for(self.ctx.request(msg).response, 10)


class _Rd(resource.Resource):
    def __init__(self, srv: FakeServer) -> None:
        super().__init__()
        self.srv = srv

    async def render_post(self, request: Message) -> Message:
        loc = f"r{len(self.srv.registrations)}"
        self.srv.registrations.append({"query": list(request.opt.uri_query), "cf": request.opt.content_format,
                                       "payload": request.payload.decode(), "remote": request.remote.hostinfo})
        self.srv.site.add_resource(["rd", loc], _Registration(self.srv, loc))
        return Message(code=Code.CREATED, location_path=["rd", loc])


class _Registration(resource.Resource):
    def __init__(self, srv: FakeServer, loc: str) -> None:
        super().__init__()
        self.srv, self.loc = srv, loc

    async def render_post(self, request: Message) -> Message:
        self.srv.updates.append({"loc": self.loc, "query": list(request.opt.uri_query),
                                 "payload": request.payload.decode()})
        return Message(code=Code.CHANGED)

    async def render_delete(self, request: Message) -> Message:
        self.srv.deregistrations.append(self.loc)
        return Message(code=Code.DELETED)


class _Blob(resource.Resource):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    async def render_get(self, request: Message) -> Message:
        return Message(payload=self.data)  # aiocoap slices it per the Block2 option


class RawObserver:
    """A bare UDP socket speaking CoAP, so we choose tokens, answer with RST and see every datagram."""

    def __init__(self, hostinfo: str) -> None:
        host, port = hostinfo.rsplit(":", 1)
        self.addr = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.mid = 100

    def send(self, msg: Message) -> None:
        self.sock.sendto(msg.encode(), self.addr)

    def get(self, path: str, token: bytes, observe: int | None) -> None:
        self.mid += 1
        self.send(Message(_mtype=Type.CON, _mid=self.mid, _token=token, code=Code.GET,
                          uri_path=path.strip("/").split("/"), observe=observe))

    def rst(self, mid: int) -> None:
        self.send(Message(_mtype=Type.RST, _mid=mid, code=Code.EMPTY))

    async def recv(self, timeout: float) -> Message | None:
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        except TimeoutError:
            return None
        msg = Message.decode(data)
        if msg.mtype == Type.CON:  # ACK CON notifications, as a live observer would
            self.send(Message(_mtype=Type.ACK, _mid=msg.mid, code=Code.EMPTY))
        return msg

    async def collect(self, seconds: float) -> list[Message]:
        out, end = [], asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            if (m := await self.recv(left)) is not None:
                out.append(m)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def server():
    srv = FakeServer()
    await srv.start()
    yield srv
    await srv.ctx.shutdown()


async def _peer(server: FakeServer, **kw) -> FirmwarePeer:
    peer = FirmwarePeer("127.0.0.1", server.port, kw.pop("endpoint", "peer-1"), kw.pop("lifetime", 60),
                        "peer-1.0", update_delay=0.1, pmax=PMAX, **kw)
    await peer.start()
    return peer


@pytest.fixture
async def peer(server):
    p = await _peer(server)
    yield p
    await p.stop()


def _tlv_map(payload: bytes) -> dict:
    out = {}
    for kind, ident, value in tlv_decode(payload):
        out[ident] = {i: v for _k, i, v in tlv_decode(value)} if kind == MULTI_RES else value
    return out


async def push(server: FakeServer, image: bytes, szx: int = 5, path: str = "/5/0/0") -> Message:
    """Block1 PUT, block by block, checking each 2.31 Continue (RFC 7959 §2.3)."""
    size = 2 ** (szx + 4)
    nblocks = -(-len(image) // size)
    for num in range(nblocks):
        more = num < nblocks - 1
        resp = await server.request(Code.PUT, path, image[num * size:(num + 1) * size], content_format=42,
                                    block1=Block(num, more, szx))
        if more:
            assert resp.code == Code.CONTINUE, resp
            assert resp.opt.block1 == Block(num, True, szx)
    return resp


# ------------------------------------------------------------------------ tests
async def test_register_from_serving_socket_and_read_text(server, peer):
    reg = server.registrations[0]
    assert reg["query"] == ["ep=peer-1", "lt=60", "lwm2m=1.1", "b=U"]
    assert reg["cf"] == 40
    assert reg["payload"] == '</>;rt="oma.lwm2m";ct=11542,</1/0>,</3/0>,</5/0>,</3303/0>'
    assert reg["remote"] == f"127.0.0.1:{peer.port}"  # Register left from the socket that serves
    assert peer.location == "/rd/r0"
    resp = await server.request(Code.GET, "/3/0/3", accept=0)
    assert (resp.code, resp.opt.content_format, resp.payload) == (Code.CONTENT, 0, b"peer-1.0")
    resp = await server.request(Code.GET, "/3/0/3")  # no Accept: plain text too
    assert resp.opt.content_format == 0
    assert (await server.request(Code.GET, "/3/0/9")).code == Code.NOT_FOUND
    assert (await server.request(Code.GET, "/5/0/0")).code == Code.METHOD_NOT_ALLOWED  # W only
    assert (await server.request(Code.PUT, "/3/0/3", b"x", content_format=0)).code == Code.METHOD_NOT_ALLOWED


async def test_tlv_reads_match_spec_encoding(server, peer):
    resp = await server.request(Code.GET, "/5/0", accept=TLV)
    assert resp.code == Code.CONTENT and resp.opt.content_format == TLV
    fw = _tlv_map(resp.payload)
    assert set(fw) == {1, 3, 5, 6, 7, 8, 9}  # no Package (W) nor Update (E)
    assert fw[3] == b"\0" and fw[5] == b"\0" and fw[9] == b"\x02" and fw[8] == {0: b"\0"}
    # Core §7.4.3 byte layout: resource with 8-bit length field; multiple resource with instances
    resp = await server.request(Code.GET, "/3/0/0", accept=TLV)
    assert resp.payload == b"\xc8\x00\x13" + b"TinyMLaaS test peer"
    resp = await server.request(Code.GET, "/3/0/11", accept=TLV)
    assert resp.payload == bytes([0x83, 0x0B, 0x41, 0x00, 0x00])
    resp = await server.request(Code.GET, "/3303", accept=TLV)
    [(kind, iid, inner)] = tlv_decode(resp.payload)
    assert (kind, iid) == (OBJ_INST, 0)
    assert {i for _k, i, _v in tlv_decode(inner)} == {5700, 5701}
    assert tlv_item(RES, 5700, b"")[:1] == b"\xe0"  # 16-bit id flag


async def test_push_block1_update_and_reregister(server, peer):
    image = make_image("app", "2.0.1", os.urandom(20 * 1024))
    size = 512
    resp = await server.request(Code.PUT, "/5/0/0", image[:size], content_format=42, block1=Block(0, True, 5))
    assert resp.code == Code.CONTINUE
    assert (await server.request(Code.GET, "/5/0/3")).payload == b"1"  # Downloading while blocks arrive
    resp = await push(server, image)
    assert resp.code == Code.CHANGED and resp.opt.block1.more is False
    assert peer.state == 2 and peer.result == 0
    resp = await server.request(Code.POST, "/5/0/2")
    assert resp.code == Code.CHANGED
    assert peer.state == 3
    await peer.wait_for(lambda: len(server.registrations) == 2)  # "rebooted" and registered again
    assert [(await server.request(Code.GET, p)).payload for p in ("/5/0/3", "/5/0/5", "/5/0/6", "/5/0/7")] \
        == [b"0", b"1", b"app", b"2.0.1"]
    assert (await server.request(Code.GET, "/3/0/3")).payload == b"peer-1.0"  # stack version, unchanged
    assert peer.installed_image == image
    assert [e["state"] for e in peer.events if e["event"] == "state"] == [1, 2, 3, 0]


async def test_push_tlv_with_aiocoap_blockwise_and_header_less_image(server, peer):
    image = os.urandom(5000)
    resp = await server.request_blockwise(Code.PUT, "/5/0/0", tlv_item(RES, 0, image), content_format=TLV)
    assert resp.code == Code.CHANGED and peer.state == 2
    assert (await server.request(Code.POST, "/5/0/2")).code == Code.CHANGED
    await peer.wait_for(lambda: peer.result == 1 and len(server.registrations) == 2)
    assert peer.installed_image == image
    assert peer.values[(5, 0)][6] == "" and peer.values[(5, 0)][7] == ""


async def test_block1_gap_too_large_and_bad_states(server):
    peer = await _peer(server, max_body_size=4096, flash_size=2048)
    try:
        assert (await server.request(Code.POST, "/5/0/2")).code == Code.METHOD_NOT_ALLOWED  # not Downloaded
        await server.request(Code.PUT, "/5/0/0", b"a" * 512, content_format=42, block1=Block(0, True, 5))
        resp = await server.request(Code.PUT, "/5/0/0", b"c" * 512, content_format=42, block1=Block(2, True, 5))
        assert resp.code == Code.REQUEST_ENTITY_INCOMPLETE  # block 1 is missing
        resp = await server.request(Code.PUT, "/5/0/0", b"a" * 512, content_format=42, block1=Block(0, True, 5),
                                    size1=10_000)
        assert resp.code == Code.REQUEST_ENTITY_TOO_LARGE and resp.opt.size1 == 4096
        assert peer.state == 1  # still Downloading: a server may restart the transfer
        assert (await push(server, b"z" * 3000)).code == Code.CHANGED
        assert (peer.state, peer.result) == (0, 2)  # larger than flash: Not enough flash memory
        resp = await push(server, b"y" * 1500)
        assert resp.code == Code.CHANGED and peer.state == 2
        # Downloaded: a new package is refused, an empty write resets the state machine
        assert (await server.request(Code.PUT, "/5/0/0", b"q", content_format=42)).code == Code.BAD_REQUEST
        assert (await server.request(Code.PUT, "/5/0/0", b"", content_format=42)).code == Code.CHANGED
        assert (peer.state, peer.result) == (0, 0)
    finally:
        await peer.stop()


async def test_image_check_rejects(server):
    peer = await _peer(server, image_check=lambda img: 0 if img.startswith(b"FWIM") else 6)
    try:
        assert (await server.request(Code.PUT, "/5/0/0", b"garbage", content_format=42)).code == Code.CHANGED
        assert (peer.state, peer.result) == (0, 6)
    finally:
        await peer.stop()


async def test_pull_then_update_sends_registration_update(server):
    peer = await _peer(server, after_update="update")
    try:
        image = make_image("model", "7", os.urandom(9000))
        uri = server.serve("/fw/x", image)
        resp = await server.request(Code.PUT, "/5/0/1", uri.encode(), content_format=0)
        assert resp.code == Code.CHANGED
        await peer.wait_for(lambda: peer.state == 2)
        assert (await server.request(Code.GET, "/5/0/1")).payload == uri.encode()
        assert (await server.request(Code.POST, "/5/0/2")).code == Code.CHANGED
        await peer.wait_for(lambda: len(server.updates) == 1)
        assert (peer.state, peer.result, peer.installed_image) == (0, 1, image)
        assert len(server.registrations) == 1
        assert peer.values[(5, 0)][7] == "7"
    finally:
        await peer.stop()


@pytest.mark.parametrize("uri, result", [
    ("not a uri", 7),
    ("http://127.0.0.1/fw", 9),
    ("coaps://127.0.0.1/fw", 9),
    ("coap://127.0.0.1:{port}/fw/missing", 7),  # 4.04 from the file server
])
async def test_pull_failures(server, peer, uri, result):
    resp = await server.request(Code.PUT, "/5/0/1", uri.format(port=server.port).encode(), content_format=0)
    assert resp.code == Code.CHANGED  # errors show in Update Result, not in the Write
    await peer.wait_for(lambda: peer.result == result)
    assert peer.state == 0


async def test_pull_connection_lost(server, peer):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there: ICMP port unreachable
    await server.request(Code.PUT, "/5/0/1", f"coap://127.0.0.1:{port}/fw".encode(), content_format=0)
    await peer.wait_for(lambda: peer.result == 4)
    assert peer.state == 0
    await server.request(Code.PUT, "/5/0/1", b"", content_format=0)  # empty URI: back to initial
    assert (peer.state, peer.result) == (0, 0)


async def test_observe_cancel_with_get_observe_1(server, peer):
    obs = RawObserver(server.peer_hostinfo)
    try:
        token = b"\x11\x22"
        obs.get("/3303/0/5700", token, 0)
        first = await obs.recv(2)
        assert first.code == Code.CONTENT and first.opt.observe is not None and first.payload == b"21.5"
        peer.set_value((3303, 0, 5700), 22.0)
        change = await obs.recv(2)
        assert change.payload == b"22.0" and change.mtype == Type.NON and change.opt.observe > first.opt.observe
        periodic = await obs.collect(2.5 * PMAX)  # pmax keeps them coming without changes
        assert len(periodic) >= 2
        obs.get("/3303/0/5700", token, 1)  # RFC 7641 §3.6: GET with Observe=1, same token
        msgs = await obs.collect(0.5)
        assert msgs and msgs[-1].opt.observe is None
        sent = peer.notifications_sent[token]
        assert sent == 2 + len(periodic) + sum(m.opt.observe is not None for m in msgs)  # counted on the wire
        peer.set_value((3303, 0, 5700), 23.0)
        assert await obs.collect(3 * PMAX) == []
        assert peer.notifications_sent[token] == sent
        assert peer.observation_ends[token] == "GET"
    finally:
        obs.close()


async def test_observe_cancel_with_rst_on_non_notification(server, peer):
    obs = RawObserver(server.peer_hostinfo)
    try:
        token = b"\x33"
        obs.get("/5/0/3", token, 0)
        assert (await obs.recv(2)).payload == b"0"
        note = await obs.recv(2 * PMAX)
        assert note is not None and note.mtype == Type.NON
        obs.rst(note.mid)  # RFC 7641 §4.5: MUST remove the observer (aiocoap alone would not for NON)
        await asyncio.sleep(0.05)
        sent = peer.notifications_sent[token]
        leftover = await obs.collect(3 * PMAX)
        assert leftover == [] and peer.notifications_sent[token] == sent
        assert peer.observation_ends[token] == "RST"
    finally:
        obs.close()


async def test_con_notifications_and_aiocoap_client_forgetting(server):
    """aiocoap's client sends no GET Observe=1 when an observation is dropped; it answers the next
    CON notification with RST (it ignores NON ones). The peer must stop on that RST."""
    peer = await _peer(server, confirmable_notifications=True)
    try:
        req = server.ctx.request(Message(code=Code.GET, uri=f"coap://{server.peer_hostinfo}/3303/0/5700",
                                         observe=0))
        first = await req.response
        token = next(iter(peer.notifications_sent))
        async for note in req.observation:
            assert note.opt.observe > first.opt.observe
            break
        req.observation.cancel()
        await peer.wait_for(lambda: peer.observation_ends.get(token) == "RST", timeout=3)
        sent = peer.notifications_sent[token]
        await asyncio.sleep(3 * PMAX)
        assert peer.notifications_sent[token] == sent
        assert any(e["event"] == "notification" and e["mtype"] == "CON" for e in peer.events)
    finally:
        await peer.stop()


async def test_write_attributes_pmin_pmax_and_discover(server, peer):
    resp = await server.request(Code.PUT, "/3303/0/5700", uri_query=["pmin=0.5", "pmax=0.5"])
    assert resp.code == Code.CHANGED
    resp = await server.request(Code.GET, "/3303/0", accept=40)
    assert resp.payload == b"</3303/0>,</3303/0/5700>;pmin=0.5;pmax=0.5,</3303/0/5701>"
    resp = await server.request(Code.GET, "/3", accept=40)
    assert b"</3>,</3/0>," in resp.payload and b"</3/0/11>;dim=1" in resp.payload
    obs = RawObserver(server.peer_hostinfo)
    try:
        obs.get("/3303/0/5700", b"\x44", 0)
        await obs.recv(2)
        assert len(await obs.collect(1.3)) == 2  # every 0.5 s, not every PMAX
        assert (await server.request(Code.PUT, "/3303/0/5700", uri_query=["bogus=1"])).code == Code.BAD_REQUEST
    finally:
        obs.close()


async def test_create_and_delete_instances(server, peer):
    body = tlv_item(RES, 5700, b"\x40\x36\x00\x00\x00\x00\x00\x00") + tlv_item(RES, 5701, b"K")
    resp = await server.request(Code.POST, "/3303", body, content_format=TLV)
    assert resp.code == Code.CREATED and resp.opt.location_path == ("3303", "1")
    assert (await server.request(Code.GET, "/3303/1/5700")).payload == b"22.0"
    resp = await server.request(Code.POST, "/3303", tlv_item(OBJ_INST, 7, tlv_item(RES, 5701, b"F")),
                                content_format=TLV)
    assert resp.code == Code.CREATED and resp.opt.location_path == ("3303", "7")
    assert (await server.request(Code.GET, "/3303/7/5701")).payload == b"F"
    resp = await server.request(Code.POST, "/3303", tlv_item(OBJ_INST, 7, b""), content_format=TLV)
    assert resp.code == Code.BAD_REQUEST  # exists already
    assert (await server.request(Code.POST, "/3", b"", content_format=TLV)).code == Code.METHOD_NOT_ALLOWED
    await peer.wait_for(lambda: server.updates[-1:] and server.updates[-1]["payload"].endswith(
        "</3303/0>,</3303/1>,</3303/7>"))  # Update carries the new object list
    obs = RawObserver(server.peer_hostinfo)
    try:
        obs.get("/3303/7", b"\x55", 0)
        assert (await obs.recv(2)).code == Code.CONTENT
        assert (await server.request(Code.DELETE, "/3303/7")).code == Code.DELETED
        gone = await obs.recv(2)  # the observed instance is gone: final 4.04 without Observe
        assert gone.code == Code.NOT_FOUND and gone.opt.observe is None
        assert peer.observation_ends[b"\x55"] == "error"
    finally:
        obs.close()
    assert (await server.request(Code.GET, "/3303/7/5701")).code == Code.NOT_FOUND
    await peer.wait_for(lambda: server.updates[-1]["payload"].endswith("</3303/0>,</3303/1>"))
    assert (await server.request(Code.DELETE, "/3/0")).code == Code.METHOD_NOT_ALLOWED


async def test_instance_writes_and_lifetime_update(server, peer):
    resp = await server.request(Code.POST, "/1/0", tlv_item(RES, 1, b"\x00\x78"), content_format=TLV)
    assert resp.code == Code.CHANGED and peer.lifetime == 120
    await peer.wait_for(lambda: server.updates and server.updates[-1]["query"] == ["lt=120"])
    resp = await server.request(Code.PUT, "/1/0/7", b"U", content_format=0)
    assert resp.code == Code.CHANGED
    bad = tlv_item(RES_INST, 0, b"\x01")  # resource-instance TLV where a resource is expected
    assert (await server.request(Code.POST, "/1/0", bad, content_format=TLV)).code == Code.BAD_REQUEST
    assert (await server.request(Code.PUT, "/1/0/1", b"abc", content_format=0)).code == Code.BAD_REQUEST


async def test_tlv_only_content_negotiation(server):
    peer = await _peer(server, tlv_only=True)
    try:
        for accept in (110, 112, 11543, 11544, 0):  # SenML JSON/CBOR, OMA JSON, LwM2M CBOR, text
            assert (await server.request(Code.GET, "/3/0/3", accept=accept)).code == Code.NOT_ACCEPTABLE
        resp = await server.request(Code.GET, "/3/0/3")
        assert resp.opt.content_format == TLV and tlv_decode(resp.payload) == [(RES, 3, b"peer-1.0")]
        for cf in (0, 42, 110, 11543, 60):
            resp = await server.request(Code.PUT, "/1/0/7", b"U", content_format=cf)
            assert resp.code == Code.UNSUPPORTED_CONTENT_FORMAT
        assert (await server.request(Code.PUT, "/1/0/7", tlv_item(RES, 7, b"U"), content_format=TLV)).code \
            == Code.CHANGED
    finally:
        await peer.stop()


async def test_cli_prints_json_events(server):
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.peers.fw_client", "--server", f"coap://127.0.0.1:{server.port}",
        "--endpoint", "cli-1", "--pmax", "0.2", cwd=root, stdout=asyncio.subprocess.PIPE)
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert first["event"] == "registered" and first["location"] == "/rd/r0"
        assert (await server.request(Code.GET, "/3/0/3")).payload == b"peer-1.0"
        assert (await server.request(Code.PUT, "/5/0/0", b"img", content_format=42)).code == Code.CHANGED
        proc.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(proc.stdout.read(), 10)
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    events = [json.loads(line) for line in out.decode().splitlines()]
    names = [e["event"] for e in events]
    assert "write" in names and {"event": "state", "state": 2, "result": 0} in events
    assert names[-2:] == ["deregistered", "stopped"] and server.deregistrations == ["r0"]
