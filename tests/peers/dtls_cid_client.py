"""An independent DTLS 1.2 PSK client with Connection ID, used as a test peer.

It is written from the RFC texts only and imports nothing of this project (no
lwm2m_server, no simulators), so that a misreading of the RFCs is not shared
between our DTLS server and the peer that tests it. Only ``cryptography`` (HMAC
is stdlib, AES-CCM from ``cryptography``) and aiocoap (to encode and decode CoAP
messages, nothing else) are used.

What it follows:

* RFC 6347 (DTLS 1.2) §4.1 record layer, §4.2.1 HelloVerifyRequest/cookie,
  §4.2.2 handshake header (message_seq, fragment_offset, fragment_length),
  §4.2.4 flight retransmission (simplified: fixed doubling timer),
  §4.2.6 transcript = messages as if sent unfragmented.
* RFC 5246 (TLS 1.2) §5 PRF/P_SHA256, §6.3 key_block, §7.4.9 Finished,
  §8.1 master_secret; §6.2.3.3 AEAD additional_data for ordinary records.
* RFC 4279 §2 PSK key exchange: premaster = N || 0*N || N || psk (N = 2-byte length).
* RFC 6655 §3 AES-CCM: nonce = client/server_write_IV(4) || nonce_explicit(8),
  and for DTLS the explicit part is epoch(2) || sequence_number(6), sent in
  front of the ciphertext; CCM_8 = 8-byte tag. Suite TLS_PSK_WITH_AES_128_CCM_8 (0xC0A8).
* RFC 7627 extended_master_secret (23): master_secret =
  PRF(pms, "extended master secret", Hash(handshake up to ClientKeyExchange)).
* RFC 5746 renegotiation_info (0xff01) with an empty renegotiated_connection.
* RFC 9146 connection_id (54): §3 extension (cid<0..255>; empty = "send me
  none"), §4 tls12_cid (25) record with the CID after the sequence number and
  DTLSInnerPlaintext = content || real_type || zeros, only for encrypted
  records and only towards a peer that asked for a non-empty CID, §5.3 AEAD
  additional_data = 8*0xff || 25 || cid_length || 25 || version || epoch ||
  sequence_number || cid || length_of_DTLSInnerPlaintext (2 bytes).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
from typing import Awaitable, Callable

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, TLS12_CID = 20, 21, 22, 23, 25
CLIENT_HELLO, SERVER_HELLO, HELLO_VERIFY_REQUEST = 1, 2, 3
SERVER_KEY_EXCHANGE, SERVER_HELLO_DONE, CLIENT_KEY_EXCHANGE, FINISHED = 12, 14, 16, 20
EXT_EMS, EXT_CID, EXT_RENEG = 23, 54, 0xFF01
DTLS12 = b"\xfe\xfd"
PSK_AES_128_CCM_8 = 0xC0A8
SEQ_PLACEHOLDER = b"\xff" * 8


class DtlsError(Exception):
    """Handshake failure, bad Finished, or a fatal alert from the server."""


# ----------------------------------------------------------- crypto building blocks
def prf(secret: bytes, label: bytes, seed: bytes, n: int) -> bytes:
    """RFC 5246 §5: PRF(secret, label, seed) = P_SHA256(secret, label + seed)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < n:
        a = hmac.new(secret, a, hashlib.sha256).digest()  # A(i) = HMAC(secret, A(i-1))
        out += hmac.new(secret, a + seed, hashlib.sha256).digest()
    return out[:n]


def psk_premaster(psk: bytes) -> bytes:
    """RFC 4279 §2: uint16 N, N zero octets, uint16 N, the PSK."""
    n = struct.pack("!H", len(psk))
    return n + bytes(len(psk)) + n + psk


def ccm_nonce(write_iv: bytes, epoch: int, seq: int) -> bytes:
    """RFC 6655 §3: salt (4-byte write IV) || epoch(2) || sequence_number(6)."""
    return write_iv + explicit_nonce(epoch, seq)


def explicit_nonce(epoch: int, seq: int) -> bytes:
    return struct.pack("!H", epoch) + seq.to_bytes(6, "big")


def aad_plain(epoch: int, seq: int, ctype: int, length: int, version: bytes = DTLS12) -> bytes:
    """RFC 5246 §6.2.3.3 with the DTLS seq_num (epoch || seq): 13 bytes."""
    return explicit_nonce(epoch, seq) + bytes([ctype]) + version + struct.pack("!H", length)


def aad_cid(epoch: int, seq: int, cid: bytes, inner_len: int, version: bytes = DTLS12) -> bytes:
    """RFC 9146 §5.3 additional_data for a tls12_cid record (23 + len(cid) bytes)."""
    return (SEQ_PLACEHOLDER + bytes([TLS12_CID, len(cid), TLS12_CID]) + version
            + explicit_nonce(epoch, seq) + cid + struct.pack("!H", inner_len))


def inner_plaintext(content: bytes, real_type: int, padding: int = 0) -> bytes:
    """RFC 9146 §4 DTLSInnerPlaintext: content || real_type || zeros[padding]."""
    return content + bytes([real_type]) + bytes(padding)


def split_inner_plaintext(data: bytes) -> tuple[bytes, int]:
    """Strip the zero padding; the last non-zero byte is the real content type."""
    end = len(data.rstrip(b"\x00"))
    if end == 0:
        raise DtlsError("DTLSInnerPlaintext without a content type")
    return data[:end - 1], data[end - 1]


def hs_header(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """RFC 6347 §4.2.2 handshake message as a single unfragmented fragment."""
    n = len(body).to_bytes(3, "big")
    return bytes([msg_type]) + n + struct.pack("!H", message_seq) + b"\0\0\0" + n + body


def _vec(data: bytes, width: int) -> bytes:
    return len(data).to_bytes(width, "big") + data


def _ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def parse_extensions(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(data):
        t, n = struct.unpack_from("!HH", data, i)
        out[t] = data[i + 4:i + 4 + n]
        i += 4 + n
    return out


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, owner: "CidDtlsClient") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr) -> None:
        self.owner._on_datagram(data)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.
        pass


Handler = Callable[[aiocoap.Message], "aiocoap.Message | Awaitable[aiocoap.Message]"]


class CidDtlsClient:
    """DTLS 1.2 PSK client (TLS_PSK_WITH_AES_128_CCM_8) offering RFC 9146 CIDs.

    ``cid``: the CID we ask the server to put in records it sends us; ``b""``
    offers a zero-length CID (we send CIDs, receive none); ``None`` does not
    offer the extension at all. ``padding``: zero bytes appended to every
    DTLSInnerPlaintext we send. ``records`` logs (direction, outer type, epoch)
    of every record on the wire, for tests.
    """

    def __init__(self, server: tuple[str, int], identity: bytes, key: bytes, *,
                 cid: bytes | None = b"\x01\x02\x03\x04", extended_master_secret: bool = True,
                 padding: int = 0, retransmit: float = 1.0) -> None:
        self.server, self.identity, self.key = server, identity, key
        self.cid, self.offer_ems, self.padding, self.retransmit = cid, extended_master_secret, padding, retransmit
        self.negotiated_cid: bytes | None = None  # the server's CID (ServerHello), None = not accepted
        self.server_extensions: dict[int, bytes] = {}
        self.ems_used = False
        self.psk_identity_hint: bytes | None = None
        self.records: list[tuple[str, int, int]] = []
        self.alerts: list[tuple[int, int]] = []
        self.established = False
        self._transport: asyncio.DatagramTransport | None = None
        self._tx_seq = {0: 0, 1: 0}
        self._msg_seq = 0
        self._keys: tuple[AESCCM, bytes, AESCCM, bytes] | None = None  # client key/iv, server key/iv
        self._hs_wakeup = asyncio.Event()
        self._frags: dict[int, tuple[int, bytearray, bytearray]] = {}  # seq -> type, data, mask
        self._hs_ready: dict[int, tuple[int, bytes]] = {}
        self._rx_next: int | None = 0
        self._failure: Exception | None = None
        self._handler: Handler | None = None
        self._pending: dict[bytes, asyncio.Future] = {}
        self._served: dict[int, bytes] = {}  # MID -> encoded response (dedup of CON retransmissions)
        self._mid = int.from_bytes(os.urandom(2), "big")

    # ------------------------------------------------------------------ socket
    async def _open(self) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), remote_addr=self.server)
        return transport

    @property
    def local_address(self) -> tuple:
        assert self._transport is not None
        return self._transport.get_extra_info("sockname")

    async def rebind(self) -> None:
        """NAT rebinding: a new UDP socket (new local port), same DTLS session."""
        old = self._transport
        self._transport = await self._open()  # opened before the old one closes: the port differs
        if old is not None:
            old.close()

    # ------------------------------------------------------------ record layer
    def _record(self, epoch: int, ctype: int, payload: bytes) -> bytes:
        seq = self._tx_seq[epoch]
        self._tx_seq[epoch] += 1
        if epoch == 0:
            out = bytes([ctype]) + DTLS12 + explicit_nonce(epoch, seq) + _vec(payload, 2)
        else:
            ckey, civ = self._keys[0], self._keys[1]
            nonce = ccm_nonce(civ, epoch, seq)
            if self.negotiated_cid:  # the server asked for a CID: RFC 9146 record
                inner = inner_plaintext(payload, ctype, self.padding)
                aad = aad_cid(epoch, seq, self.negotiated_cid, len(inner))
                frag = explicit_nonce(epoch, seq) + ckey.encrypt(nonce, inner, aad)
                out = (bytes([TLS12_CID]) + DTLS12 + explicit_nonce(epoch, seq)
                       + self.negotiated_cid + _vec(frag, 2))
            else:
                frag = explicit_nonce(epoch, seq) + ckey.encrypt(nonce, payload, aad_plain(epoch, seq, ctype, len(payload)))
                out = bytes([ctype]) + DTLS12 + explicit_nonce(epoch, seq) + _vec(frag, 2)
        self.records.append(("tx", out[0], epoch))
        return out

    def _send(self, items: list[tuple[int, int, bytes]]) -> None:
        """Send (epoch, content type, payload) items as the records of one datagram."""
        data = b"".join(self._record(*item) for item in items)
        if self._transport is not None:
            self._transport.sendto(data)

    def _on_datagram(self, data: bytes) -> None:
        i = 0
        while i + 13 <= len(data):
            ctype, version = data[i], data[i + 1:i + 3]
            epoch, = struct.unpack_from("!H", data, i + 3)
            seq = int.from_bytes(data[i + 5:i + 11], "big")
            cid = b""
            if ctype == TLS12_CID:
                n = len(self.cid or b"")
                cid = data[i + 11:i + 11 + n]
                i += n
            length, = struct.unpack_from("!H", data, i + 11)
            frag, i = data[i + 13:i + 13 + length], i + 13 + length
            self.records.append(("rx", ctype, epoch))
            try:
                self._on_record(ctype, version, epoch, seq, cid, frag)
            except Exception as e:  # a record that does not authenticate is dropped (RFC 6347 §4.1.2.7)
                self.records.append(("drop:" + type(e).__name__, ctype, epoch))

    def _on_record(self, ctype: int, version: bytes, epoch: int, seq: int, cid: bytes, frag: bytes) -> None:
        if epoch == 1 and self._keys is not None:
            skey, siv = self._keys[2], self._keys[3]
            nonce, body = siv + frag[:8], frag[8:]
            if ctype == TLS12_CID:
                if cid != (self.cid or b""):
                    raise DtlsError("record for another CID")
                inner = skey.decrypt(nonce, body, aad_cid(epoch, seq, cid, len(body) - 8, version))
                payload, ctype = split_inner_plaintext(inner)
            else:
                payload = skey.decrypt(nonce, body, aad_plain(epoch, seq, ctype, len(body) - 8, version))
        elif epoch == 0 and ctype != TLS12_CID and ctype != APPLICATION_DATA:
            payload = frag
        else:
            raise DtlsError("unexpected epoch")
        if ctype == HANDSHAKE:
            self._on_handshake(payload)
        elif ctype == CHANGE_CIPHER_SPEC:
            pass  # the server's Finished is checked by its content, the epoch tells the keys
        elif ctype == ALERT and len(payload) >= 2:
            self.alerts.append((payload[0], payload[1]))
            if payload[0] == 2 or payload[1] == 0:
                self._fail(DtlsError(f"alert level={payload[0]} description={payload[1]}"))
        elif ctype == APPLICATION_DATA and epoch == 1:  # may come with the server's Finished
            self._on_coap(payload)

    def _fail(self, exc: Exception) -> None:
        self._failure = exc
        self.established = False
        self._hs_wakeup.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    # ---------------------------------------------------- handshake reassembly
    def _on_handshake(self, data: bytes) -> None:
        while len(data) >= 12:
            mtype, total = data[0], int.from_bytes(data[1:4], "big")
            mseq, = struct.unpack_from("!H", data, 4)
            off, flen = int.from_bytes(data[6:9], "big"), int.from_bytes(data[9:12], "big")
            frag, data = data[12:12 + flen], data[12 + flen:]
            if mseq in self._hs_ready or (self._rx_next is not None and mseq < self._rx_next):
                continue  # a retransmission of something we have
            if off + len(frag) > total:
                continue
            _, buf, mask = self._frags.setdefault(mseq, (mtype, bytearray(total), bytearray(total)))
            buf[off:off + len(frag)] = frag
            mask[off:off + len(frag)] = b"\x01" * len(frag)
            if all(mask):  # every byte of the message has arrived
                del self._frags[mseq]
                self._hs_ready[mseq] = (mtype, bytes(buf))
                self._hs_wakeup.set()

    async def _next_message(self, flight: list[tuple[int, int, bytes]], deadline: float) -> tuple[int, int, bytes]:
        """The next in-order handshake message; retransmits ``flight`` on silence."""
        loop = asyncio.get_running_loop()
        wait = self.retransmit
        while True:
            if self._failure:
                raise self._failure
            ready = sorted(self._hs_ready) if self._rx_next is None else [s for s in self._hs_ready if s == self._rx_next]
            if ready:
                mseq = ready[0]
                mtype, body = self._hs_ready.pop(mseq)
                self._rx_next = mseq + 1
                return mtype, mseq, body
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("DTLS handshake timed out")
            self._hs_wakeup.clear()
            try:
                await asyncio.wait_for(self._hs_wakeup.wait(), min(wait, remaining))
            except asyncio.TimeoutError:
                self._send(flight)  # RFC 6347 §4.2.4: retransmit the last flight
                wait = min(wait * 2, 60.0)

    # ---------------------------------------------------------------- handshake
    def _hs(self, msg_type: int, body: bytes) -> bytes:
        msg = hs_header(msg_type, self._msg_seq, body)
        self._msg_seq += 1
        return msg

    def _client_hello(self, cookie: bytes) -> bytes:
        exts = b""
        if self.cid is not None:
            exts += _ext(EXT_CID, _vec(self.cid, 1))
        if self.offer_ems:
            exts += _ext(EXT_EMS, b"")
        exts += _ext(EXT_RENEG, b"\x00")
        body = (DTLS12 + self._client_random + b"\x00" + _vec(cookie, 1)
                + _vec(struct.pack("!H", PSK_AES_128_CCM_8), 2) + b"\x01\x00" + _vec(exts, 2))
        return self._hs(CLIENT_HELLO, body)

    async def connect(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._transport is None:
            self._transport = await self._open()
        self._client_random = os.urandom(32)
        hello = self._client_hello(b"")
        flight, transcript = [(0, HANDSHAKE, hello)], hello
        self._send(flight)
        server_random, cookie = b"", None
        while True:  # flight 2: [HelloVerifyRequest] ServerHello [ServerKeyExchange] ServerHelloDone
            mtype, mseq, body = await self._next_message(flight, deadline)
            if mtype == HELLO_VERIFY_REQUEST and not server_random:
                if body[3:3 + body[2]] == cookie:
                    continue  # a retransmitted HelloVerifyRequest
                cookie = body[3:3 + body[2]]  # server_version(2) cookie<0..255>
                hello = self._client_hello(cookie)  # RFC 6347 §4.2.1: same hello + cookie, next message_seq
                flight, transcript = [(0, HANDSHAKE, hello)], hello  # the first hello and HVR are not hashed
                self._rx_next = None  # the server's numbering restarts at what it chooses
                self._send(flight)
                continue
            transcript += hs_header(mtype, mseq, body)
            if mtype == SERVER_HELLO:
                server_random = self._parse_server_hello(body)
            elif mtype == SERVER_KEY_EXCHANGE:
                self.psk_identity_hint = body[2:2 + struct.unpack_from("!H", body)[0]]
            elif mtype == SERVER_HELLO_DONE and server_random:
                break
            else:
                raise DtlsError(f"unexpected handshake message {mtype}")
        # flight 3: ClientKeyExchange, ChangeCipherSpec, Finished
        cke = self._hs(CLIENT_KEY_EXCHANGE, _vec(self.identity, 2))
        transcript += cke
        pms = psk_premaster(self.key)
        if self.ems_used:
            ms = prf(pms, b"extended master secret", hashlib.sha256(transcript).digest(), 48)
        else:
            ms = prf(pms, b"master secret", self._client_random + server_random, 48)
        kb = prf(ms, b"key expansion", server_random + self._client_random, 40)
        self._keys = (AESCCM(kb[0:16], 8), kb[32:36], AESCCM(kb[16:32], 8), kb[36:40])
        verify = prf(ms, b"client finished", hashlib.sha256(transcript).digest(), 12)
        fin = self._hs(FINISHED, verify)
        transcript += fin
        flight = [(0, HANDSHAKE, cke), (0, CHANGE_CIPHER_SPEC, b"\x01"), (1, HANDSHAKE, fin)]
        self._send(flight)  # a retransmission re-protects Finished under a new record sequence number
        mtype, mseq, body = await self._next_message(flight, deadline)
        expected = prf(ms, b"server finished", hashlib.sha256(transcript).digest(), 12)
        if mtype != FINISHED or not hmac.compare_digest(body, expected):
            self._send([(1, ALERT, b"\x02\x33")])  # fatal decrypt_error
            raise DtlsError("server Finished does not verify")
        self.established = True

    def _parse_server_hello(self, body: bytes) -> bytes:
        if body[:2] != DTLS12:
            raise DtlsError(f"server version {body[:2].hex()}")
        server_random, sid_len = body[2:34], body[34]
        i = 35 + sid_len
        suite, = struct.unpack_from("!H", body, i)
        if suite != PSK_AES_128_CCM_8 or body[i + 2] != 0:
            raise DtlsError(f"server chose suite {suite:#06x}")
        i += 3
        self.server_extensions = parse_extensions(body[i + 2:]) if len(body) > i else {}
        ext = self.server_extensions
        if EXT_CID in ext:
            if self.cid is None:
                raise DtlsError("connection_id in ServerHello without our offer")
            self.negotiated_cid = ext[EXT_CID][1:1 + ext[EXT_CID][0]]
        if EXT_RENEG in ext and ext[EXT_RENEG] != b"\x00":
            raise DtlsError("renegotiation_info not empty")
        self.ems_used = self.offer_ems and EXT_EMS in ext
        return server_random

    # --------------------------------------------------------------------- CoAP
    def serve(self, handler: Handler) -> None:
        """Answer the server's CoAP requests with ``handler(request) -> response``."""
        self._handler = handler

    def send_app(self, data: bytes) -> None:
        """Send one application_data record (raw bytes, e.g. a CoAP message)."""
        if not self.established:
            raise DtlsError("no session")
        self._send([(1, APPLICATION_DATA, data)])

    async def request(self, message: aiocoap.Message, timeout: float = 5.0) -> aiocoap.Message:
        """Send ``message`` as a CON request over the session and await its response."""
        loop = asyncio.get_running_loop()
        self._mid = (self._mid + 1) & 0xFFFF
        message.mid, message.mtype = self._mid, Type.CON
        message.token = message.token or os.urandom(4)
        fut = self._pending[message.token] = loop.create_future()
        raw, wait, deadline = message.encode(), 2.0, loop.time() + timeout
        try:
            while True:
                self.send_app(raw)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(wait, max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:
                    if loop.time() >= deadline:
                        raise TimeoutError("no CoAP response") from None
                    wait *= 2
        finally:
            self._pending.pop(message.token, None)

    def _on_coap(self, data: bytes) -> None:
        try:
            msg = aiocoap.Message.decode(data)
        except Exception:
            return
        if msg.code.is_request():
            if msg.mtype == Type.CON and msg.mid in self._served:
                self.send_app(self._served[msg.mid])
            else:
                asyncio.get_running_loop().create_task(self._answer(msg))
        elif msg.code.is_response():
            if msg.mtype == Type.CON:  # separate response: acknowledge it
                ack = aiocoap.Message(code=Code.EMPTY)
                ack.mtype, ack.mid = Type.ACK, msg.mid
                self.send_app(ack.encode())
            fut = self._pending.get(msg.token)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def _answer(self, request: aiocoap.Message) -> None:
        response = self._handler(request) if self._handler else aiocoap.Message(code=Code.NOT_FOUND)
        if asyncio.iscoroutine(response):
            response = await response
        response.token = request.token
        if request.mtype == Type.CON:
            response.mtype, response.mid = Type.ACK, request.mid
        else:
            self._mid = (self._mid + 1) & 0xFFFF
            response.mtype, response.mid = Type.NON, self._mid
        raw = response.encode()
        if request.mtype == Type.CON:
            self._served[request.mid] = raw
        if self._keys is not None and self._transport is not None:
            self._send([(1, APPLICATION_DATA, raw)])

    async def close(self, notify: bool = True) -> None:
        if notify and self.established and self._transport is not None:
            self._send([(1, ALERT, b"\x01\x00")])  # warning close_notify
        self.established = False
        if self._transport is not None:
            self._transport.close()
            self._transport = None
