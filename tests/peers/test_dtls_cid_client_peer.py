"""The independent DTLS 1.2 CID client peer tested alone: its building blocks against
published vectors and the RFC text, then whole handshakes against libcoap's
OpenSSL and GnuTLS servers (no CID there: they ignore the extension)."""
from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .dtls_cid_client import (APPLICATION_DATA, CLIENT_HELLO, EXT_CID, EXT_EMS, EXT_RENEG, TLS12_CID,
                              CidDtlsClient, DtlsError, aad_cid, aad_plain, ccm_nonce, inner_plaintext,
                              parse_extensions, prf, psk_premaster, split_inner_plaintext)


# ------------------------------------------------------------------ published vectors
def test_prf_sha256_ietf_tls_list_vector() -> None:
    # TLS 1.2 PRF (P_SHA256) vector posted to the IETF TLS list (mail-archive tls msg03416).
    secret = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
    seed = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    expected = bytes.fromhex(
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"
        "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab"
        "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
        "87347b66")
    assert prf(secret, b"test label", seed, 100) == expected
    assert prf(secret, b"test label", seed, 12) == expected[:12]  # Finished length: a prefix


@pytest.mark.parametrize("nonce, payload, expected", [
    # RFC 3610 §8 packet vectors #1 and #2: M=8 (8-byte tag, as CCM_8), 8-byte header as AAD.
    ("00000003020100A0A1A2A3A4A5", "08090A0B0C0D0E0F101112131415161718191A1B1C1D1E",
     "588C979A61C663D2F066D0C2C0F989806D5F6B61DAC38417E8D12CFDF926E0"),
    ("00000004030201A0A1A2A3A4A5", "08090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
     "72C91A36E135F8CF291CA894085C87E3CC15C439C9E43A3BA091D56E10400916"),
])
def test_aes_ccm_8_rfc3610_vectors(nonce: str, payload: str, expected: str) -> None:
    ccm = AESCCM(bytes.fromhex("C0C1C2C3C4C5C6C7C8C9CACBCCCDCECF"), tag_length=8)
    aad = bytes.fromhex("0001020304050607")
    assert ccm.encrypt(bytes.fromhex(nonce), bytes.fromhex(payload), aad) == bytes.fromhex(expected)
    assert ccm.decrypt(bytes.fromhex(nonce), bytes.fromhex(expected), aad) == bytes.fromhex(payload)


# ------------------------------------------------------------------ layouts from the RFC text
def test_psk_premaster_rfc4279() -> None:
    assert psk_premaster(b"\xaa\xbb\xcc") == bytes.fromhex("0003 000000 0003 aabbcc")


def test_ccm_nonce_rfc6655_dtls() -> None:
    # salt = 4-byte write IV, nonce_explicit = epoch(2) || sequence_number(6)
    assert ccm_nonce(b"\x11\x22\x33\x44", 1, 0x0A0B0C) == bytes.fromhex("11223344 0001 000000 0a0b0c")


def test_plain_aad_rfc5246() -> None:
    assert aad_plain(1, 7, APPLICATION_DATA, 0x1234) == bytes.fromhex("0001 000000000007 17 fefd 1234")


def test_cid_aad_rfc9146_section_5_3() -> None:
    """additional_data = seq_num_placeholder + tls12_cid + cid_length + tls12_cid +
    DTLSCiphertext.version + epoch + sequence_number + cid + length_of_DTLSInnerPlaintext"""
    expected = bytes.fromhex(
        "ffffffffffffffff"  # seq_num_placeholder: 8 bytes of 0xff
        "19"                # tls12_cid (25)
        "04"                # cid_length, 1 byte
        "19"                # tls12_cid again
        "fefd"              # DTLSCiphertext.version (DTLS 1.2)
        "0001"              # epoch
        "000000000005"      # sequence_number, 48 bits
        "01020304"          # cid
        "0011")             # length_of_DTLSInnerPlaintext, 2 bytes
    got = aad_cid(1, 5, b"\x01\x02\x03\x04", 17)
    assert got == expected and len(got) == 23 + 4


def test_inner_plaintext_padding() -> None:
    assert inner_plaintext(b"abc", APPLICATION_DATA) == b"abc\x17"
    assert inner_plaintext(b"abc", APPLICATION_DATA, 3) == b"abc\x17\x00\x00\x00"
    assert split_inner_plaintext(b"abc\x17\x00\x00\x00") == (b"abc", APPLICATION_DATA)
    assert split_inner_plaintext(b"a\x00\x00\x17") == (b"a\x00\x00", APPLICATION_DATA)  # content zeros kept
    assert split_inner_plaintext(b"\x15") == (b"", 21)
    with pytest.raises(DtlsError):
        split_inner_plaintext(b"\x00\x00\x00")  # no real_type at all


# ------------------------------------------------------------------ ClientHello / ServerHello
def _hello_extensions(client: CidDtlsClient) -> dict[int, bytes]:
    client._client_random = bytes(32)
    msg = client._client_hello(b"")
    assert msg[0] == CLIENT_HELLO
    body = msg[12:]
    i = 2 + 32 + 1 + 1  # version, random, empty session_id, empty cookie
    i += 2 + struct.unpack_from("!H", body, i)[0]  # cipher_suites
    assert body[36:40] == bytes.fromhex("0002c0a8")  # TLS_PSK_WITH_AES_128_CCM_8 only
    i += 1 + body[i]  # compression methods
    return parse_extensions(body[i + 2:])


@pytest.mark.parametrize("cid, ext", [
    (b"\x01\x02\x03\x04", b"\x04\x01\x02\x03\x04"), (b"", b"\x00"), (None, None)])
def test_client_hello_extensions(cid: bytes | None, ext: bytes | None) -> None:
    exts = _hello_extensions(CidDtlsClient(("127.0.0.1", 1), b"id", b"k", cid=cid))
    assert exts.get(EXT_CID) == ext
    assert exts[EXT_EMS] == b"" and exts[EXT_RENEG] == b"\x00"
    assert EXT_EMS not in _hello_extensions(CidDtlsClient(("127.0.0.1", 1), b"id", b"k",
                                                          extended_master_secret=False))


def _server_hello(exts: bytes) -> bytes:
    return b"\xfe\xfd" + bytes(32) + b"\x00" + b"\xc0\xa8" + b"\x00" + struct.pack("!H", len(exts)) + exts


def test_server_hello_cid_and_ems() -> None:
    c = CidDtlsClient(("127.0.0.1", 1), b"id", b"k")
    c._parse_server_hello(_server_hello(struct.pack("!HH", 54, 3) + b"\x02\xaa\xbb" + struct.pack("!HH", 23, 0)))
    assert c.negotiated_cid == b"\xaa\xbb" and c.ems_used
    c = CidDtlsClient(("127.0.0.1", 1), b"id", b"k")
    c._parse_server_hello(_server_hello(struct.pack("!HH", 54, 1) + b"\x00"))
    assert c.negotiated_cid == b"" and not c.ems_used  # server wants no CID from us
    c = CidDtlsClient(("127.0.0.1", 1), b"id", b"k")
    c._parse_server_hello(_server_hello(b""))
    assert c.negotiated_cid is None


# ------------------------------------------------------------------ records, offline
def _pair(server_cid: bytes, client_cid: bytes | None, padding: int = 0) -> tuple[CidDtlsClient, CidDtlsClient]:
    """Two peers with mirrored keys: ``mirror`` plays the server side of the record layer."""
    k1, k2, iv1, iv2 = b"\x01" * 16, b"\x02" * 16, b"\x0a" * 4, b"\x0b" * 4
    client = CidDtlsClient(("127.0.0.1", 1), b"id", b"k", cid=client_cid, padding=padding)
    mirror = CidDtlsClient(("127.0.0.1", 1), b"id", b"k", cid=server_cid)
    client._keys = (AESCCM(k1, 8), iv1, AESCCM(k2, 8), iv2)
    mirror._keys = (AESCCM(k2, 8), iv2, AESCCM(k1, 8), iv1)
    client.negotiated_cid, mirror.negotiated_cid = server_cid, client_cid
    client.established = mirror.established = True
    return client, mirror


def test_cid_record_layout_and_decryption() -> None:
    client, _ = _pair(b"\xaa\xbb\xcc", b"\x01\x02\x03\x04", padding=5)
    client._tx_seq[1] = 9
    rec = client._record(1, APPLICATION_DATA, b"hello")
    # RFC 9146 §4: tls12_cid, version, epoch, seq, cid, length, enc_content
    assert rec[0] == TLS12_CID and rec[1:3] == b"\xfe\xfd"
    assert rec[3:5] == b"\x00\x01" and rec[5:11] == (9).to_bytes(6, "big")
    assert rec[11:14] == b"\xaa\xbb\xcc"
    length = struct.unpack_from("!H", rec, 14)[0]
    frag = rec[16:]
    assert len(frag) == length == 8 + len(b"hello") + 1 + 5 + 8  # explicit nonce, inner, tag
    assert frag[:8] == rec[3:11]  # explicit nonce = epoch || seq
    inner = AESCCM(b"\x01" * 16, 8).decrypt(b"\x0a" * 4 + frag[:8], frag[8:],
                                            aad_cid(1, 9, b"\xaa\xbb\xcc", 11))
    assert inner == b"hello\x17" + bytes(5)


def test_zero_length_server_cid_sends_plain_records() -> None:
    client, _ = _pair(b"", b"\x01\x02")
    rec = client._record(1, APPLICATION_DATA, b"x")
    assert rec[0] == APPLICATION_DATA and len(rec) == 13 + 8 + 1 + 8


@pytest.mark.parametrize("server_cid, client_cid", [
    (b"\xaa\xbb\xcc", b"\x01\x02\x03\x04"), (b"\xaa", b""), (b"", b"\x01"), (None, b"\x01")])
async def test_coap_both_ways_over_mirrored_records(server_cid, client_cid) -> None:
    client, mirror = _pair(server_cid, client_cid)
    client.serve(lambda req: aiocoap.Message(code=Code.CONTENT, payload=b"/".join(
        s.encode() for s in req.opt.uri_path)))
    req = aiocoap.Message(code=Code.GET, uri_path=["3", "0", "0"])
    req.mid, req.token, req.mtype = 7, b"tk", aiocoap.CON
    sent: list[bytes] = []
    client._transport = type("T", (), {"sendto": lambda self, d: sent.append(d)})()
    client._on_datagram(mirror._record(1, APPLICATION_DATA, req.encode()))
    await asyncio.sleep(0.01)
    assert len(sent) == 1
    expected_type = TLS12_CID if server_cid else APPLICATION_DATA
    assert sent[0][0] == expected_type
    got: list[bytes] = []
    mirror._on_coap = got.append
    mirror._on_datagram(sent[0])
    resp = aiocoap.Message.decode(got[0])
    assert resp.code == Code.CONTENT and resp.payload == b"3/0/0" and resp.mid == 7 and resp.token == b"tk"
    assert not [r for r in client.records + mirror.records if r[0].startswith("drop")]


def test_tampered_cid_record_is_dropped() -> None:
    client, mirror = _pair(b"\xaa", b"\x01\x02")
    rec = bytearray(mirror._record(1, APPLICATION_DATA, b"zz"))
    rec[-1] ^= 1
    client._on_datagram(bytes(rec))
    assert client.records[-1][0] == "drop:InvalidTag"


# ------------------------------------------------------------------ against libcoap servers
def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


@pytest.mark.parametrize("binary", ["coap-server-openssl", "coap-server-gnutls"])
@pytest.mark.parametrize("cid", [b"\x01\x02\x03\x04", b""], ids=["cid4", "cid0"])
@pytest.mark.parametrize("ems", [True, False], ids=["ems", "no-ems"])
async def test_handshake_and_get_against_libcoap(binary: str, cid: bytes, ems: bool) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not installed (Debian package libcoap3-bin)")
    port = _free_port_pair()
    proc = subprocess.Popen([binary, "-A", "127.0.0.1", "-p", str(port), "-k", "peer-secret", "-h", "hint"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # DTLS listens on port + 1
            if _port_taken(port + 1):
                break
            await asyncio.sleep(0.05)
        client = CidDtlsClient(("127.0.0.1", port + 1), b"peer-identity", b"peer-secret",
                               cid=cid, extended_master_secret=ems)
        await client.connect(timeout=10)
        assert client.negotiated_cid is None  # no RFC 9146 in these servers: extension ignored
        assert client.ems_used == ems
        assert client.psk_identity_hint in (None, b"hint")
        resp = await client.request(aiocoap.Message(code=Code.GET, uri_path=[".well-known", "core"]))
        assert resp.code == Code.CONTENT and b"</time>" in resp.payload
        assert {t for d, t, e in client.records if e == 1} <= {20, 21, 22, 23}  # no tls12_cid record
        assert not [r for r in client.records if r[0].startswith("drop")]
        await client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
