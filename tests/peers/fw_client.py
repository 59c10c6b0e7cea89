"""An independent LwM2M 1.1 client used as a test peer (stands in for Wakaama/Anjay/Zephyr).

Written from OMA-TS-LightweightM2M_Core/Transport V1_1 and RFC 7252/7959/7641 only;
it imports nothing from this project (no lwm2m_server, simulators, ipso_objects).
Objects: 1 Server, 3 Device, 5 Firmware Update, 3303 Temperature (creatable).
aiocoap carries the CoAP messages; Block1 reassembly and observations are done
here, and two small wire hooks count what really leaves / arrives on the socket.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import struct
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable
from urllib.parse import urlsplit

import aiocoap
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

TEXT, LINK, OPAQUE, TLV = 0, 40, 42, 11542
Block = BlockOption.BlockwiseTuple

# ---------------------------------------------------------------- TLV (Core 1.1 §7.4.3)
OBJ_INST, RES_INST, MULTI_RES, RES = 0, 1, 2, 3  # bits 7-6 of the type byte


def tlv_item(kind: int, ident: int, value: bytes) -> bytes:
    t = kind << 6
    idb = ident.to_bytes(2 if ident > 0xFF else 1, "big")
    if ident > 0xFF:
        t |= 0x20
    n = len(value)
    if n < 8:  # length fits in bits 2-0, no length field
        return bytes([t | n]) + idb + value
    width = 1 if n < 1 << 8 else 2 if n < 1 << 16 else 3
    return bytes([t | (width << 3)]) + idb + n.to_bytes(width, "big") + value


def tlv_decode(data: bytes) -> list[tuple[int, int, bytes]]:
    """-> [(kind, id, value)]; raises ValueError on truncated input."""
    out, i = [], 0
    while i < len(data):
        t = data[i]
        idlen, width = (2 if t & 0x20 else 1), (t >> 3) & 3
        if i + 1 + idlen + width > len(data):
            raise ValueError("truncated TLV header")
        ident = int.from_bytes(data[i + 1:i + 1 + idlen], "big")
        i += 1 + idlen
        n = int.from_bytes(data[i:i + width], "big") if width else t & 7
        i += width
        if i + n > len(data):
            raise ValueError("truncated TLV value")
        out.append((t >> 6, ident, bytes(data[i:i + n])))
        i += n
    return out


def tlv_value(rtype: str, v: Any) -> bytes:
    if rtype == "int":  # shortest of 1/2/4/8 bytes, two's complement
        n = next(n for n in (1, 2, 4, 8) if -(1 << (8 * n - 1)) <= v < 1 << (8 * n - 1))
        return int(v).to_bytes(n, "big", signed=True)
    if rtype == "float":
        return struct.pack(">d", v)
    if rtype == "bool":
        return bytes([1 if v else 0])
    return v.encode() if rtype == "str" else bytes(v)


def tlv_parse_value(rtype: str, b: bytes) -> Any:
    if rtype == "int":
        if len(b) not in (1, 2, 4, 8):
            raise ValueError("bad integer length")
        return int.from_bytes(b, "big", signed=True)
    if rtype == "float":
        return struct.unpack(">f" if len(b) == 4 else ">d", b)[0]
    if rtype == "bool":
        if b not in (b"\0", b"\1"):
            raise ValueError("bad boolean")
        return b == b"\1"
    return b.decode() if rtype == "str" else b


# ----------------------------------------------------- plain text (Core 1.1 §7.3)
def text_value(rtype: str, v: Any) -> bytes:
    if rtype == "opaque":  # opaque in text/plain is base64
        return base64.b64encode(v)
    if rtype == "bool":
        return b"1" if v else b"0"
    return str(v).encode()


def text_parse_value(rtype: str, b: bytes) -> Any:
    s = b.decode()
    if rtype == "int":
        return int(s)
    if rtype == "float":
        return float(s)
    if rtype == "bool":
        if s not in ("0", "1"):
            raise ValueError("bad boolean")
        return s == "1"
    return base64.b64decode(b, validate=True) if rtype == "opaque" else s


# --------------------------------------------- test firmware image format (ours)
IMAGE_MAGIC = b"FWIM"


def make_image(name: str, version: str, payload: bytes) -> bytes:
    """b"FWIM", len(name), name, len(version), version, payload."""
    n, v = name.encode(), version.encode()
    return IMAGE_MAGIC + bytes([len(n)]) + n + bytes([len(v)]) + v + payload


def parse_image_header(image: bytes) -> tuple[str, str] | None:
    if not image.startswith(IMAGE_MAGIC) or len(image) < 6:
        return None
    i = 4
    name = image[i + 1:i + 1 + image[i]]
    i += 1 + image[i]
    if i >= len(image):
        return None
    version = image[i + 1:i + 1 + image[i]]
    return name.decode(errors="replace"), version.decode(errors="replace")


# ---------------------------------------------------------------- data model
@dataclass(frozen=True)
class Res:
    type: str  # int float bool str opaque none
    ops: str  # subset of "RWE"
    multi: bool = False


MODEL: dict[int, dict[int, Res]] = {
    1: {0: Res("int", "R"), 1: Res("int", "RW"), 7: Res("str", "RW")},
    3: {0: Res("str", "R"), 1: Res("str", "R"), 2: Res("str", "R"), 3: Res("str", "R"),
        4: Res("none", "E"), 10: Res("int", "R"), 11: Res("int", "R", True), 16: Res("str", "R"),
        18: Res("str", "R")},
    5: {0: Res("opaque", "W"), 1: Res("str", "RW"), 2: Res("none", "E"), 3: Res("int", "R"),
        5: Res("int", "R"), 6: Res("str", "R"), 7: Res("str", "R"), 8: Res("int", "R", True),
        9: Res("int", "R")},
    3303: {5700: Res("float", "R"), 5701: Res("str", "R")},
}
CREATABLE = {3303: {5700: 0.0, 5701: "Cel"}}  # objects the server may Create/Delete, with defaults
FW_STATE, FW_RESULT = (5, 0, 3), (5, 0, 5)
ATTRS = ("pmin", "pmax", "gt", "lt", "st", "epmin", "epmax")


class _Reply(Exception):
    """Ends request handling with this response (errors, 2.31 Continue)."""

    def __init__(self, code: Code, **opts: Any) -> None:
        super().__init__(str(code))
        self.msg = Message(code=code, **opts)


class _DownloadFailed(Exception):
    """args[0]: the Update Result to report."""


@dataclass
class _Obs:
    key: tuple  # (token, remote): the key aiocoap's TokenManager uses for the request
    path: tuple[int, ...]
    accept: int | None
    changed: asyncio.Event
    reason: str = "server"


class FirmwarePeer:
    """LwM2M 1.1 client with Device, Server, Firmware Update and Temperature objects."""

    # Tunables, rarely changed: override on the instance.
    block_timeout = 30.0  # a Block1 push with no block for this long fails (Update Result 4)
    download_timeout = 30.0  # a pull that takes longer fails (Update Result 4)
    download_szx = 5  # Block2 size asked for when pulling: 2**(5+4) = 512 bytes
    request_timeout = 10.0  # Register / Update / De-register
    bind_host = "127.0.0.1"

    def __init__(self, server_host: str = "127.0.0.1", server_port: int = 5683,
                 endpoint: str = "fw-peer", lifetime: int = 60, stack_version: str = "peer-1.0", *,
                 binding: str = "U", formats: set[int] | None = None, tlv_only: bool = False,
                 delivery_method: int = 2, image_check: Callable[[bytes], int] | None = None,
                 flash_size: int | None = 1 << 20, max_body_size: int = 1 << 20,
                 update_delay: float = 0.2, after_update: str = "register",
                 pmin: float = 0.0, pmax: float | None = 60.0, confirmable_notifications: bool = False,
                 exec_wrong_state_code: Code = Code.METHOD_NOT_ALLOWED, fail_update: bool = False,
                 on_event: Callable[[dict], None] | None = None) -> None:
        self.server_host, self.server_port, self.endpoint = server_host, server_port, endpoint
        self.binding, self.stack_version = binding, stack_version
        self.formats = set(formats) if formats else ({TLV, LINK} if tlv_only else {TLV, TEXT, OPAQUE, LINK})
        self.delivery_method, self.image_check = delivery_method, image_check or (lambda _img: 0)
        self.flash_size, self.max_body_size = flash_size, max_body_size
        self.update_delay, self.after_update = update_delay, after_update  # "register" | "update"
        self.pmin, self.pmax, self.confirmable = pmin, pmax, confirmable_notifications
        self.exec_wrong_state_code, self.fail_update = exec_wrong_state_code, fail_update
        self.on_event = on_event
        self.values: dict[tuple[int, int], dict[int, Any]] = {
            (1, 0): {0: 1, 1: lifetime, 7: binding},
            (3, 0): {0: "TinyMLaaS test peer", 1: "fw-peer", 2: f"SN-{endpoint}", 3: stack_version,
                     4: None, 10: (flash_size or 1 << 20) // 1024, 11: {0: 0}, 16: binding, 18: "hw-1"},
            (5, 0): {0: b"", 1: "", 2: None, 3: 0, 5: 0, 6: "", 7: "", 8: {0: 0}, 9: delivery_method},
            (3303, 0): {5700: 21.5, 5701: "Cel"},
        }
        self.attributes: dict[tuple[int, ...], dict[str, float]] = {}
        self.installed_image: bytes | None = None
        self.pending_image: bytes | None = None
        self.location: str | None = None
        self.port: int | None = None
        self.registrations = 0
        self.events: list[dict] = []
        self.notifications_sent: Counter[bytes] = Counter()  # every Observe-carrying response, by token
        self.retransmissions = 0
        self.observation_ends: dict[bytes, str] = {}  # token -> "GET" | "RST" | "reboot" | ...
        self.ctx: aiocoap.Context | None = None
        self._observations: dict[tuple, _Obs] = {}
        self._notif_mids: dict[int, tuple[bytes, int]] = {}  # MID -> (token, observe) on the wire
        self._assemblies: dict[tuple, bytearray] = {}
        self._push_active = False
        self._push_timer: asyncio.TimerHandle | None = None
        self._download: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._seq = 0

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # One server context = one UDP socket: it serves the LwM2M server's requests and
        # sends Register from the same port, so the server's requests reach us.
        site = SimpleNamespace(render_to_pipe=self._handle)  # all aiocoap asks of a site
        self.ctx = await aiocoap.Context.create_server_context(
            site, bind=(self.bind_host, 0), transports=["udp6"], loggername="fw-peer.coap")
        self._hook_wire()
        await self.register()
        self._spawn(self._keepalive())

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for obs in self._observations.values():
            obs.reason = "shutdown"
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    @property
    def lifetime(self) -> int:
        return self.values[(1, 0)][1]

    @property
    def state(self) -> int:
        return self.values[(5, 0)][3]

    @property
    def result(self) -> int:
        return self.values[(5, 0)][5]

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)

    def set_value(self, path: tuple[int, int, int], value: Any) -> None:
        """Device-side change (e.g. a new sensor reading); notifies observers."""
        inst = self.values[path[:2]]
        if inst.get(path[2]) != value:
            inst[path[2]] = value
            self._changed(path)

    # ------------------------------------------------------- registration interface
    def _server_uri(self, path: str) -> str:
        host = f"[{self.server_host}]" if ":" in self.server_host else self.server_host
        return f"coap://{host}:{self.server_port}{path}"

    def links(self) -> str:
        out = [f'</>;rt="oma.lwm2m";ct={TLV if TLV in self.formats else TEXT}']
        for oid in MODEL:
            iids = self._iids(oid)
            out += [f"</{oid}/{i}>" for i in iids] or [f"</{oid}>"]
        return ",".join(out)

    async def _request(self, msg: Message) -> Message:
        assert self.ctx is not None, "start() first"
        return await asyncio.wait_for(self.ctx.request(msg).response, self.request_timeout)

    async def register(self) -> None:
        msg = Message(code=Code.POST, uri=self._server_uri("/rd"), payload=self.links().encode(),
                      content_format=LINK)
        msg.opt.uri_query = (f"ep={self.endpoint}", f"lt={self.lifetime}", "lwm2m=1.1", f"b={self.binding}")
        resp = await self._request(msg)
        if resp.code != Code.CREATED:
            raise RuntimeError(f"Register rejected: {resp.code}")
        self.location = "/" + "/".join(resp.opt.location_path)
        self.registrations += 1
        self._event("registered", location=self.location, port=self.port)

    async def update(self, *, links: bool = False, lifetime: bool = False) -> Code:
        if self.location is None:
            raise RuntimeError("not registered")
        msg = Message(code=Code.POST, uri=self._server_uri(self.location))
        if lifetime:
            msg.opt.uri_query = (f"lt={self.lifetime}",)
        if links:
            msg.payload, msg.opt.content_format = self.links().encode(), LINK
        resp = await self._request(msg)
        self._event("updated", code=str(resp.code))
        if resp.code == Code.NOT_FOUND:  # server forgot us: register again, as clients do
            await self.register()
        return resp.code

    async def deregister(self) -> None:
        if self.location is not None:
            resp = await self._request(Message(code=Code.DELETE, uri=self._server_uri(self.location)))
            self.location = None
            self._event("deregistered", code=str(resp.code))

    async def _keepalive(self) -> None:
        while True:  # Update before the lifetime runs out
            await asyncio.sleep(max(1.0, self.lifetime * 0.8))
            try:
                await self.update()
            except Exception as e:  # keep trying, like a device would
                self._event("update_failed", error=repr(e))

    # ------------------------------------------------------------------ wire hooks
    def _hook_wire(self) -> None:
        # aiocoap ignores an RST answering a NON notification (chrysn/aiocoap#385, #416),
        # though RFC 7641 §4.5 says the observer MUST be removed; and it does not expose
        # what was really transmitted. So: wrap the udp6 send and the message dispatch.
        tman = self.ctx.request_interfaces[0]
        mman = tman.token_interface
        wire = mman.message_interface
        self._tman, self.port = tman, wire._local_port()
        orig_send, orig_dispatch = wire.send, mman.dispatch_message

        def send(msg: Message) -> None:
            orig_send(msg)
            if msg.code.is_response() and msg.opt.observe is not None:
                if self._notif_mids.get(msg.mid) == (msg.token, msg.opt.observe):
                    self.retransmissions += 1  # same CON again: not a new notification
                    return
                self._notif_mids[msg.mid] = (msg.token, msg.opt.observe)
                self.notifications_sent[msg.token] += 1
                self._event("notification", token=msg.token.hex(), observe=msg.opt.observe,
                            mtype=msg.mtype.name, code=str(msg.code))

        def dispatch(msg: Message) -> None:
            if msg.mtype == Type.RST and msg.mid in self._notif_mids:
                token = self._notif_mids[msg.mid][0]
                for obs in [o for o in self._observations.values() if o.key[0] == token]:
                    self._end_observation(obs, "RST")
            elif msg.code.is_request() and msg.opt.observe == 1:
                obs = self._observations.get((msg.token, msg.remote))
                if obs is not None:  # aiocoap replaces the request on that token (ends it)
                    obs.reason = "GET"
            orig_dispatch(msg)

        wire.send, mman.dispatch_message = send, dispatch

    def _end_observation(self, obs: _Obs, reason: str) -> None:
        obs.reason = reason
        entry = self._tman.incoming_requests.pop(obs.key, None)
        if entry is not None:
            entry[1]()  # aiocoap's stopper: drops the pipe, which cancels our render task

    # ------------------------------------------------------------ request handling
    async def _handle(self, pipe: Any) -> None:
        req = pipe.request
        try:
            try:
                path = tuple(int(p) for p in req.opt.uri_path)
            except ValueError:
                raise _Reply(Code.NOT_FOUND) from None
            body = req.payload if req.opt.block1 is None else self._block1(req, path)
            resp = self._dispatch(req, path, body)
        except _Reply as r:
            resp = r.msg
        if req.opt.block1 is not None and resp.code.is_successful() and resp.opt.block1 is None:
            resp.opt.block1 = Block(req.opt.block1.block_number, False, req.opt.block1.size_exponent)
        if req.code == Code.GET and req.opt.observe == 0 and resp.code == Code.CONTENT \
                and req.opt.accept != LINK:
            await self._observe(pipe, req, path, resp)
        else:
            pipe.add_response(resp, is_last=True)

    def _dispatch(self, req: Message, path: tuple[int, ...], body: bytes) -> Message:
        cf = None if req.opt.content_format is None else int(req.opt.content_format)
        accept = None if req.opt.accept is None else int(req.opt.accept)
        self._check_path(path)
        if req.code == Code.GET:
            return self._discover(path) if accept == LINK else self._read(path, accept)
        if req.code == Code.PUT:
            if req.opt.uri_query and not body and cf is None:
                return self._write_attributes(path, req.opt.uri_query)
            return self._write(path, body, cf, replace=True)
        if req.code == Code.POST:
            if len(path) == 1:
                return self._create(path[0], body, cf)
            if len(path) == 2:
                return self._write(path, body, cf, replace=False)  # partial update
            if len(path) == 3:
                return self._execute(path)
        if req.code == Code.DELETE:
            return self._delete(path)
        raise _Reply(Code.METHOD_NOT_ALLOWED)

    def _iids(self, oid: int) -> list[int]:
        return sorted(i for (o, i) in self.values if o == oid)

    def _check_path(self, path: tuple[int, ...]) -> None:
        if not 1 <= len(path) <= 4 or path[0] not in MODEL:
            raise _Reply(Code.NOT_FOUND)
        if len(path) >= 2 and path[:2] not in self.values:
            raise _Reply(Code.NOT_FOUND)
        if len(path) >= 3 and path[2] not in self.values[path[:2]]:
            raise _Reply(Code.NOT_FOUND)
        if len(path) == 4:
            value = self.values[path[:2]][path[2]]
            if not MODEL[path[0]][path[2]].multi or path[3] not in value:
                raise _Reply(Code.NOT_FOUND)

    # ------------------------------------------------------------------- Read
    def _res_tlv(self, res: Res, rid: int, value: Any) -> bytes:
        if res.multi:
            inner = b"".join(tlv_item(RES_INST, ri, tlv_value(res.type, v)) for ri, v in sorted(value.items()))
            return tlv_item(MULTI_RES, rid, inner)
        return tlv_item(RES, rid, tlv_value(res.type, value))

    def _instance_tlv(self, oid: int, iid: int) -> bytes:
        inst = self.values[(oid, iid)]
        return b"".join(self._res_tlv(res, rid, inst[rid])
                        for rid, res in MODEL[oid].items() if "R" in res.ops and rid in inst)

    def _read(self, path: tuple[int, ...], accept: int | None) -> Message:
        if accept is not None and accept not in self.formats:
            raise _Reply(Code.NOT_ACCEPTABLE)
        oid = path[0]
        res = MODEL[oid][path[2]] if len(path) >= 3 else None
        if res is not None and "R" not in res.ops:
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        if res is not None and (len(path) == 4 or not res.multi):  # one value
            value = self.values[path[:2]][path[2]]
            value = value[path[3]] if len(path) == 4 else value
            fmt = accept
            if fmt is None:  # no Accept: text / opaque when we have them, like real clients
                fmt = OPAQUE if res.type == "opaque" else TEXT
                fmt = fmt if fmt in self.formats else TLV
            if fmt == TEXT:
                payload = text_value(res.type, value)
            elif fmt == OPAQUE and res.type == "opaque":
                payload = value
            elif fmt == TLV:
                payload = tlv_item(RES_INST if len(path) == 4 else RES, path[-1], tlv_value(res.type, value))
            else:
                raise _Reply(Code.NOT_ACCEPTABLE)
        else:  # several values: only TLV among our formats can carry them
            fmt = TLV if accept is None else accept
            if fmt != TLV or TLV not in self.formats:
                raise _Reply(Code.NOT_ACCEPTABLE)
            if res is not None:
                payload = self._res_tlv(res, path[2], self.values[path[:2]][path[2]])
            elif len(path) == 2:  # resources, without an enclosing instance TLV (Core §7.4.3)
                payload = self._instance_tlv(oid, path[1])
            else:
                payload = b"".join(tlv_item(OBJ_INST, i, self._instance_tlv(oid, i)) for i in self._iids(oid))
        return Message(code=Code.CONTENT, payload=payload, content_format=fmt)

    def _discover(self, path: tuple[int, ...]) -> Message:
        if LINK not in self.formats or len(path) == 4:
            raise _Reply(Code.BAD_REQUEST)

        def link(p: tuple[int, ...], extra: str = "") -> str:
            attrs = "".join(f";{k}={v:g}" for k, v in self.attributes.get(p, {}).items())
            return "</" + "/".join(map(str, p)) + ">" + extra + attrs

        oid, out = path[0], []
        if len(path) == 1:
            out.append(link(path))
        for iid in self._iids(oid) if len(path) == 1 else [path[1]]:
            inst = self.values[(oid, iid)]
            if len(path) <= 2:
                out.append(link((oid, iid)))
            for rid in MODEL[oid] if len(path) <= 2 else [path[2]]:
                if rid in inst:
                    dim = f";dim={len(inst[rid])}" if MODEL[oid][rid].multi else ""
                    out.append(link((oid, iid, rid), dim))
        return Message(code=Code.CONTENT, payload=",".join(out).encode(), content_format=LINK)

    # ----------------------------------------------------------- Write / Create
    def _decode_resources(self, oid: int, items: list[tuple[int, int, bytes]]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        try:
            for kind, rid, raw in items:
                res = MODEL[oid].get(rid)
                if res is None:
                    raise _Reply(Code.NOT_FOUND)
                if kind == MULTI_RES and res.multi:
                    out[rid] = {ri: tlv_parse_value(res.type, v) for k, ri, v in tlv_decode(raw) if k == RES_INST}
                elif kind == RES and not res.multi:
                    out[rid] = tlv_parse_value(res.type, raw)
                else:
                    raise _Reply(Code.BAD_REQUEST)
        except (ValueError, UnicodeDecodeError, struct.error):
            raise _Reply(Code.BAD_REQUEST) from None
        return out

    def _write(self, path: tuple[int, ...], body: bytes, cf: int | None, replace: bool) -> Message:
        oid = path[0]
        if len(path) not in (2, 3):
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        if cf is None:  # lenient: no Content-Format means the resource's natural format
            cf = OPAQUE if len(path) == 3 and MODEL[oid][path[2]].type == "opaque" else TEXT
        if cf not in self.formats or cf == LINK:
            raise _Reply(Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            if cf == TLV:
                items = tlv_decode(body)
                if len(path) == 2 and len(items) == 1 and items[0][0] == OBJ_INST:
                    if items[0][1] != path[1]:  # tolerate a wrapping instance TLV for this iid
                        raise _Reply(Code.BAD_REQUEST)
                    items = tlv_decode(items[0][2])
                updates = self._decode_resources(oid, items)
                if len(path) == 3 and set(updates) != {path[2]}:
                    raise _Reply(Code.BAD_REQUEST)
            elif len(path) == 2:
                raise _Reply(Code.UNSUPPORTED_CONTENT_FORMAT)
            else:
                res = MODEL[oid][path[2]]
                if res.multi or (cf == OPAQUE and res.type != "opaque"):
                    raise _Reply(Code.BAD_REQUEST)
                updates = {path[2]: body if cf == OPAQUE else text_parse_value(res.type, body)}
        except (ValueError, UnicodeDecodeError):
            raise _Reply(Code.BAD_REQUEST) from None
        if any("W" not in MODEL[oid][rid].ops for rid in updates):
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        self._event("write", path="/" + "/".join(map(str, path)), cf=cf)
        for rid, value in updates.items():
            self._write_resource(path[:2] + (rid,), value, replace)
        return Message(code=Code.CHANGED)

    def _write_resource(self, path: tuple[int, int, int], value: Any, replace: bool) -> None:
        if path == (5, 0, 0):
            return self._write_package(value)
        if path == (5, 0, 1):
            return self._write_uri(value)
        inst = self.values[path[:2]]
        if MODEL[path[0]][path[2]].multi and not replace:
            value = {**inst[path[2]], **value}
        self.set_value(path, value)
        if path == (1, 0, 1) and self.location:  # lifetime changed: tell the server (Core §6.2.2)
            self._spawn(self.update(lifetime=True))

    def _write_attributes(self, path: tuple[int, ...], query: tuple[str, ...]) -> Message:
        attrs = self.attributes.setdefault(path, {})
        for q in query:
            k, _, v = q.partition("=")
            if k not in ATTRS:
                raise _Reply(Code.BAD_REQUEST)
            if v == "":  # "?pmin" alone removes the attribute
                attrs.pop(k, None)
                continue
            try:
                attrs[k] = float(v)  # the spec says integer seconds; fractions keep tests fast
            except ValueError:
                raise _Reply(Code.BAD_REQUEST) from None
        self._event("write_attributes", path="/" + "/".join(map(str, path)), attrs=dict(attrs))
        return Message(code=Code.CHANGED)

    def _create(self, oid: int, body: bytes, cf: int | None) -> Message:
        if oid not in CREATABLE:
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        if cf != TLV or TLV not in self.formats:
            raise _Reply(Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            items, iid = tlv_decode(body), None
            if items and items[0][0] == OBJ_INST:  # the server chose the instance id
                if len(items) != 1:
                    raise _Reply(Code.BAD_REQUEST)
                iid, items = items[0][1], tlv_decode(items[0][2])
        except ValueError:
            raise _Reply(Code.BAD_REQUEST) from None
        if iid is None:  # the client picks the lowest free id and says so in Location-Path
            iid = next(i for i in range(65536) if (oid, i) not in self.values)
        if (oid, iid) in self.values:
            raise _Reply(Code.BAD_REQUEST)
        values = CREATABLE[oid] | self._decode_resources(oid, items)  # Create may set R resources
        self.values[(oid, iid)] = values
        self._event("create", path=f"/{oid}/{iid}")
        self._spawn(self.update(links=True))  # the object list changed (Anjay does the same)
        return Message(code=Code.CREATED, location_path=[str(oid), str(iid)])

    def _delete(self, path: tuple[int, ...]) -> Message:
        if len(path) != 2 or path[0] not in CREATABLE:
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        del self.values[path]
        self._event("delete", path=f"/{path[0]}/{path[1]}")
        self._changed(path)  # observers of it get a final 4.04 (RFC 7641 §3.2)
        self._spawn(self.update(links=True))
        return Message(code=Code.DELETED)

    def _execute(self, path: tuple[int, ...]) -> Message:
        if "E" not in MODEL[path[0]][path[2]].ops:
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        self._event("execute", path="/" + "/".join(map(str, path)))
        if path == (5, 0, 2):
            # Object 5: Update "is only executable when State is Downloaded". The code for a
            # refused Execute is not fixed by the spec: Anjay answers 4.05, Wakaama's example 4.00.
            if self.state != 2:
                raise _Reply(self.exec_wrong_state_code)
            self._set_fw(3, 0)
            self._spawn(self._run_update())
        elif path == (3, 0, 4):
            self._spawn(self._reboot())
        return Message(code=Code.CHANGED)

    # ------------------------------------------------------- Firmware Update (obj 5)
    def _set_fw(self, state: int, result: int) -> None:
        old = (self.state, self.result)
        self.set_value(FW_RESULT, result)  # result first: a State notification then shows it
        self.set_value(FW_STATE, state)
        if (state, result) != old:
            self._event("state", state=state, result=result)

    def _cancel_transfers(self) -> None:
        self._push_active = False
        if self._push_timer:
            self._push_timer.cancel()
        if self._download and not self._download.done():
            self._download.cancel()

    def _take_package(self) -> None:
        """A (first block of a) Package: Idle -> Downloading, or refuse as Anjay does."""
        if self.state == 3:
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        if self.delivery_method == 0 or not (self.state == 0 or self._push_active):
            raise _Reply(Code.BAD_REQUEST)  # the state machine has no arrow for it
        self._set_fw(1, 0)

    def _arm_push_timer(self) -> None:
        if self._push_timer:
            self._push_timer.cancel()

        def expired() -> None:  # the server stopped sending blocks
            if self._push_active:
                self._push_active = False
                self._set_fw(0, 4)

        self._push_timer = asyncio.get_running_loop().call_later(self.block_timeout, expired)

    def _write_package(self, data: bytes) -> None:
        if self.state == 3:
            raise _Reply(Code.METHOD_NOT_ALLOWED)
        if data in (b"", b"\0"):  # empty Package resets the state machine (Anjay also takes one NUL)
            self._cancel_transfers()
            return self._set_fw(0, 0)
        self._take_package()
        self._cancel_transfers()
        self._package_complete(data)

    def _package_complete(self, data: bytes) -> None:
        if self.flash_size is not None and len(data) > self.flash_size:
            return self._set_fw(0, 2)  # not enough flash storage
        check = self.image_check(data)
        if check:
            return self._set_fw(0, check)  # e.g. 5 integrity failure, 6 unsupported package
        self.pending_image = data
        self._set_fw(2, 0)

    def _write_uri(self, uri: str) -> None:
        if uri == "":
            if self.state == 3:
                raise _Reply(Code.METHOD_NOT_ALLOWED)
            self._cancel_transfers()
            self.values[(5, 0)][1] = ""
            return self._set_fw(0, 0)
        if self.state != 0:
            raise _Reply(Code.BAD_REQUEST)
        # Errors are reported through Update Result, the Write itself succeeds (Core 1.1 E.6).
        self.values[(5, 0)][1] = uri
        try:
            parts = urlsplit(uri)
            valid = bool(parts.scheme and parts.hostname) and (parts.port or 0) >= 0  # .port may raise
        except ValueError:
            valid = False
        if not valid:
            return self._set_fw(0, 7)  # invalid URI
        if parts.scheme != "coap" or self.delivery_method == 1:
            return self._set_fw(0, 9)  # Protocol Support (/5/0/8) lists CoAP only
        self._set_fw(1, 0)
        self._download = self._spawn(self._pull(uri))

    async def _pull(self, uri: str) -> None:
        self._event("download_started", uri=uri)
        try:
            data = await asyncio.wait_for(self._fetch(uri), self.download_timeout)
        except _DownloadFailed as e:
            return self._set_fw(0, e.args[0])
        except (aiocoap.error.Error, OSError, TimeoutError) as e:
            self._event("download_failed", error=repr(e))
            return self._set_fw(0, 4)  # connection lost
        self._event("download_finished", size=len(data))
        self._package_complete(data)

    async def _fetch(self, uri: str) -> bytes:
        """GET with Block2 (RFC 7959 §2.4), one block at a time, honouring the server's size."""
        data, num, szx = bytearray(), 0, self.download_szx
        while True:
            msg = Message(code=Code.GET, uri=uri)
            msg.opt.block2 = Block(num, False, szx)
            resp = await self.ctx.request(msg, handle_blockwise=False).response
            if resp.code == Code.NOT_FOUND:
                raise _DownloadFailed(7)  # as Anjay does: nothing at that URI
            if not resp.code.is_successful():
                raise _DownloadFailed(4)
            b2 = resp.opt.block2
            if b2 is None:
                return bytes(resp.payload)
            if b2.start != len(data):
                raise _DownloadFailed(4)
            data += resp.payload
            if self.flash_size is not None and len(data) > self.flash_size:
                raise _DownloadFailed(2)
            if not b2.more:
                return bytes(data)
            szx = b2.size_exponent
            num = len(data) >> (szx + 4)

    async def _run_update(self) -> None:
        await asyncio.sleep(self.update_delay)  # "Updating" is observable for a moment
        if self.fail_update or self.pending_image is None:
            return self._set_fw(2, 8)  # update failed, package kept (as Anjay)
        self.installed_image, self.pending_image = self.pending_image, None
        name, version = parse_image_header(self.installed_image) or ("", "")
        self.set_value((5, 0, 6), name)
        self.set_value((5, 0, 7), version)
        self._event("installed", size=len(self.installed_image), name=name, version=version)
        if self.after_update == "register":
            await self._reboot(result=1)
        else:
            self._set_fw(0, 1)
            await self.update()

    async def _reboot(self, result: int | None = None) -> None:
        await asyncio.sleep(0.01)  # let the Execute's 2.04 go out first
        self._event("reboot")
        for obs in list(self._observations.values()):
            self._end_observation(obs, "reboot")  # a rebooted device has forgotten its observers
        self._assemblies.clear()
        self._cancel_transfers()
        if result is not None:
            self._set_fw(0, result)
        await self.register()

    # ------------------------------------------------------------ Block1 (RFC 7959)
    def _block1(self, req: Message, path: tuple[int, ...]) -> bytes:
        b, key = req.opt.block1, (req.remote, req.code, path)
        is_package = path == (5, 0, 0) and req.code == Code.PUT
        too_large = _Reply(Code.REQUEST_ENTITY_TOO_LARGE, size1=self.max_body_size)
        if b.block_number == 0:
            if req.opt.size1 is not None and req.opt.size1 > self.max_body_size:
                raise too_large
            if is_package and req.payload not in (b"", b"\0"):
                self._take_package()
                self._push_active = True
                self._arm_push_timer()
            self._assemblies[key] = bytearray()
        body = self._assemblies.get(key)
        if body is None or b.start != len(body) or (b.more and len(req.payload) != b.size):
            self._assemblies.pop(key, None)
            raise _Reply(Code.REQUEST_ENTITY_INCOMPLETE)  # gap, or a block we have no start for
        body += req.payload
        if len(body) > self.max_body_size:
            del self._assemblies[key]
            if is_package and self._push_active:
                self._cancel_transfers()
                self._set_fw(0, 2)
            raise too_large
        if b.more:
            if is_package:
                self._arm_push_timer()
            raise _Reply(Code.CONTINUE, block1=Block(b.block_number, True, b.size_exponent))
        del self._assemblies[key]
        return bytes(body)

    # ---------------------------------------------------------- Observe (RFC 7641)
    def _periods(self, path: tuple[int, ...]) -> tuple[float, float | None]:
        pmin, pmax = self.pmin, self.pmax
        for depth in range(1, len(path) + 1):  # most specific level wins (Core §5.1.2)
            attrs = self.attributes.get(path[:depth], {})
            pmin, pmax = attrs.get("pmin", pmin), attrs.get("pmax", pmax)
        return pmin, pmax

    def _changed(self, path: tuple[int, ...]) -> None:
        for obs in self._observations.values():
            n = min(len(obs.path), len(path))
            if obs.path[:n] == path[:n]:
                obs.changed.set()

    async def _observe(self, pipe: Any, req: Message, path: tuple[int, ...], first: Message) -> None:
        key = (req.token, req.remote)
        obs = _Obs(key, path, None if req.opt.accept is None else int(req.opt.accept), asyncio.Event())
        self._observations[key] = obs
        self._event("observe", token=req.token.hex(), path="/" + "/".join(map(str, path)))
        loop = asyncio.get_running_loop()
        try:
            first.opt.observe = self._next_seq()
            pipe.add_response(first, is_last=False)
            last = loop.time()
            while True:
                pmin, pmax = self._periods(path)
                timeout = max(0.0, last + pmax - loop.time()) if pmax else None
                try:
                    await asyncio.wait_for(obs.changed.wait(), timeout)
                except TimeoutError:
                    pass  # pmax elapsed: notify even without a change
                if last + pmin > loop.time():
                    await asyncio.sleep(last + pmin - loop.time())
                obs.changed.clear()
                try:
                    self._check_path(path)
                    resp = self._read(path, obs.accept)
                except _Reply as r:  # e.g. the instance was deleted
                    obs.reason = "error"
                    pipe.add_response(r.msg, is_last=True)
                    return
                resp.opt.observe = self._next_seq()
                resp.transport_tuning = aiocoap.Reliable() if self.confirmable else aiocoap.Unreliable()
                pipe.add_response(resp, is_last=False)
                last = loop.time()
        finally:
            if self._observations.get(key) is obs:
                del self._observations[key]
            self.observation_ends[req.token] = obs.reason
            self._event("observation_cancelled", token=req.token.hex(), via=obs.reason)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFF  # one counter for all: renewals keep rising
        return self._seq

    # ----------------------------------------------------------------- helpers
    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._event("error", error=repr(t.exception()))

        task.add_done_callback(done)
        return task

    def _event(self, kind: str, /, **fields: Any) -> None:
        rec = {"event": kind, **fields}
        self.events.append(rec)
        if self.on_event is not None:
            self.on_event(rec)


# ---------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="LwM2M 1.1 firmware-update test peer (JSON events on stdout)")
    ap.add_argument("--server", default="coap://127.0.0.1:5683")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--lifetime", type=int, default=60)
    ap.add_argument("--stack-version", default="peer-1.0")
    ap.add_argument("--tlv-only", action="store_true")
    ap.add_argument("--pmax", type=float, default=60.0)
    ap.add_argument("--con", action="store_true", help="send notifications as CON")
    ap.add_argument("--after-update", choices=("register", "update"), default="register")
    ap.add_argument("--update-delay", type=float, default=0.2)
    args = ap.parse_args(argv)
    url = urlsplit(args.server)

    def emit(rec: dict) -> None:
        print(json.dumps(rec, default=str), flush=True)

    async def run() -> None:
        peer = FirmwarePeer(url.hostname or "127.0.0.1", url.port or 5683, args.endpoint, args.lifetime,
                            args.stack_version, tlv_only=args.tlv_only, pmax=args.pmax,
                            confirmable_notifications=args.con, after_update=args.after_update,
                            update_delay=args.update_delay, on_event=emit)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await peer.start()
        await stop.wait()
        try:  # a client being shut down deregisters
            await asyncio.wait_for(peer.deregister(), 2.0)
        except Exception as e:  # report it, still shut down
            emit({"event": "deregister_failed", "error": repr(e)})
        await peer.stop()
        emit({"event": "stopped"})

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
