"""The server's own DTLS 1.2 PSK, without sockets: the PRF against the published
vector, AES-128-CCM-8 records, the replay window, cookies, fragment reassembly, the
RFC 9146 additional data built by hand from the RFC's text, session export, and whole
handshakes against a small client written here from the RFCs (the interop proof is in
test_dtls.py: tinydtls, OpenSSL and GnuTLS clients)."""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from lwm2m_server.transport import dtls_handshake as hs
from lwm2m_server.transport import dtls_records as rec

KEY = bytes(range(16))
PEER = ("::ffff:127.0.0.1", 40000)


def test_prf_matches_the_published_tls12_sha256_vector():
    # IETF TLS WG mailing list, msg03416 (the widely used P_SHA256 vector)
    secret = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
    seed = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    expected = bytes.fromhex(
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"
        "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab"
        "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
        "87347b66")
    assert rec.prf(secret, b"test label", seed, 100) == expected


def pair(peer_cid: bytes = b"", local_cid: bytes = b"") -> tuple[rec.Connection, rec.RecordProtection]:
    """A server connection and the client's side of the same keys."""
    keys = [secrets.token_bytes(16), secrets.token_bytes(4), secrets.token_bytes(16), secrets.token_bytes(4)]
    server = rec.Connection(b"dev-1", rec.RecordProtection(*keys), PEER, local_cid, peer_cid)
    client = rec.RecordProtection(keys[2], keys[3], keys[0], keys[1])
    return server, client


def test_ccm8_records_round_trip_and_a_tampered_record_is_refused():
    server, client = pair()
    record = server.seal(rec.APPLICATION_DATA, b"hello device")
    assert record[:3] == b"\x17\xfe\xfd" and record[3:11] == bytes((0, 1, 0, 0, 0, 0, 0, 0))
    # explicit nonce = epoch || sequence; 8-byte tag
    assert record[13:21] == record[3:11] and len(record) == 13 + 8 + len(b"hello device") + 8
    [parsed] = rec.parse_records(record)
    assert client.open(parsed) == (rec.APPLICATION_DATA, b"hello device")

    incoming = client.seal(rec.APPLICATION_DATA, 1, 7, b"2.05 Content")
    assert server.open(rec.parse_records(incoming)[0])[:2] == (rec.APPLICATION_DATA, b"2.05 Content")
    for position in (0 + 3 + 5, 13 + 3, len(incoming) - 1):  # the sequence (in the AAD), the nonce, the tag
        tampered = bytearray(client.seal(rec.APPLICATION_DATA, 1, 8 + position, b"2.05 Content"))
        tampered[position] ^= 0x01
        assert server.open(rec.parse_records(bytes(tampered))[0]) is None
    other_type = bytearray(client.seal(rec.APPLICATION_DATA, 1, 40, b"x"))
    other_type[0] = rec.ALERT  # the content type is authenticated too
    assert server.open(rec.parse_records(bytes(other_type))[0]) is None


def test_replay_window_of_64_records():
    window = rec.ReplayWindow()
    for sequence in (0, 1, 5, 3):
        assert window.check(sequence)
        window.accept(sequence)
    assert not window.check(5) and not window.check(3) and window.check(4) and window.check(2)
    window.accept(100)
    assert not window.check(100) and window.check(99) and window.check(37) and not window.check(36)
    assert not window.check(5)  # fell out of the window: too old to tell
    window.accept(100 + 1000)
    assert window.check(1099) and not window.check(1100)
    server, client = pair()
    record = rec.parse_records(client.seal(rec.APPLICATION_DATA, 1, 9, b"once"))[0]
    assert server.open(record) is not None and server.open(record) is None  # a replay is dropped


def test_a_forged_record_does_not_move_the_window():
    server, client = pair()
    forged = bytearray(client.seal(rec.APPLICATION_DATA, 1, 1 << 40, b"x"))
    forged[-1] ^= 1
    assert server.open(rec.parse_records(bytes(forged))[0]) is None
    assert server.open(rec.parse_records(client.seal(rec.APPLICATION_DATA, 1, 3, b"y"))[0]) is not None


def test_cid_additional_data_is_laid_out_as_rfc_9146_says():
    cid = bytes.fromhex("a1a2a3a4a5a6")
    # seq_num_placeholder: 8 bytes of 0xff; tls12_cid = 25; cid_length: one byte;
    # tls12_cid; DTLSCiphertext.version; epoch (2); sequence_number (6); cid;
    # length_of_DTLSInnerPlaintext (2)
    expected = (b"\xff\xff\xff\xff\xff\xff\xff\xff" + b"\x19" + b"\x06" + b"\x19" + b"\xfe\xfd"
                + b"\x00\x01" + b"\x00\x00\x00\x00\x01\x02" + cid + b"\x00\x0b")
    assert rec.cid_aad(1, 0x0102, b"\xfe\xfd", cid, 11) == expected


def test_cid_records_carry_the_cid_and_hide_the_type_with_padding():
    ours, theirs = bytes.fromhex("0102030405ff"), b"\x09\x08"
    server, client = pair(peer_cid=theirs, local_cid=ours)
    sent = server.seal(rec.APPLICATION_DATA, b"ping")
    assert sent[0] == rec.TLS12_CID and sent[11:13] == theirs  # the peer's CID after the sequence number
    # the client encrypts by hand: inner plaintext = content, real type, zero padding
    inner = b"pong" + bytes((rec.APPLICATION_DATA,)) + bytes(5)
    explicit = (1).to_bytes(2, "big") + (77).to_bytes(6, "big")
    aad = (b"\xff" * 8 + bytes((25, len(ours), 25)) + b"\xfe\xfd" + explicit + ours + len(inner).to_bytes(2, "big"))
    body = explicit + AESCCM(client.write_key, tag_length=8).encrypt(client.write_iv + explicit, inner, aad)
    datagram = b"\x19\xfe\xfd" + explicit + ours + len(body).to_bytes(2, "big") + body
    [record] = rec.parse_records(datagram)
    assert record.cid == ours
    assert server.open(record) == (rec.APPLICATION_DATA, b"pong", True)
    wrong_cid = datagram[:11] + b"\x00" * 6 + datagram[17:]
    assert server.open(rec.parse_records(wrong_cid)[0]) is None


def test_a_connection_survives_export_and_import():
    server, client = pair(peer_cid=b"\x01", local_cid=b"\x02" * 6)
    server.set_psk_check(KEY)
    server.seal(rec.APPLICATION_DATA, b"a")
    seen = rec.parse_records(client.seal(rec.APPLICATION_DATA, 1, 4, b"b"))[0]
    assert server.open(seen) is not None
    restored = rec.Connection.from_export(json.loads(json.dumps(server.export())))
    assert restored.write_sequence == 1 and restored.peer_cid == b"\x01" and restored.local_cid == b"\x02" * 6
    assert restored.matches_psk(KEY) and not restored.matches_psk(bytes(16))
    assert restored.open(seen) is None  # the replay window came along
    assert restored.open(rec.parse_records(client.seal(rec.APPLICATION_DATA, 1, 5, b"c"))[0])[1] == b"c"
    with pytest.raises(ValueError):
        rec.Connection.from_export({**server.export(), "write_sequence": 1 << 48})


def hello_body(cookie: bytes = b"", extensions: bytes = b"", suites: bytes = b"\xc0\xa8\x00\xff",
               random: bytes = b"r" * 32) -> bytes:
    body = b"\xfe\xfd" + random + b"\x00" + bytes((len(cookie),)) + cookie
    body += len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
    return body + (len(extensions).to_bytes(2, "big") + extensions if extensions else b"")


def hello_record(body: bytes, message_seq: int = 0, sequence: int = 0) -> rec.Record:
    return rec.parse_records(rec.encode_record(rec.HANDSHAKE, 0, sequence,
                                               hs.encode_message(hs.CLIENT_HELLO, message_seq, body)))[0]


def test_cookies_bind_the_address_and_the_hello_and_outlive_one_renewal():
    jar = hs.CookieJar(lifetime=10)
    first = hs.client_hello_in(hello_record(hello_body()))
    verify = hs.screen_client_hello(first, b"peer-a", jar, 0.0)
    [record] = rec.parse_records(verify)
    assert record.content_type == rec.HANDSHAKE and record.version == rec.DTLS_1_0
    cookie = record.fragment[12 + 3:]
    assert len(cookie) == 16
    second = hs.client_hello_in(hello_record(hello_body(cookie), 1, 1))
    assert hs.screen_client_hello(second, b"peer-a", jar, 1.0) is None
    assert hs.screen_client_hello(second, b"peer-b", jar, 1.0) is not None  # another address
    other = hs.client_hello_in(hello_record(hello_body(cookie, random=b"s" * 32), 1, 1))
    assert hs.screen_client_hello(other, b"peer-a", jar, 1.0) is not None  # another hello
    assert hs.screen_client_hello(second, b"peer-a", jar, 11.0) is None  # the previous secret still counts
    assert hs.screen_client_hello(second, b"peer-a", jar, 22.0) is not None  # two renewals later: stale


def test_fragments_are_reassembled_in_order_and_bounded():
    body = bytes(range(200)) * 3
    message = hs.encode_message(hs.CLIENT_KEY_EXCHANGE, 2, body)
    reassembler = hs.Reassembler(2)

    def fragment(offset: int, size: int, seq: int = 2, length: int = len(body)) -> hs.Fragment:
        return hs.Fragment(hs.CLIENT_KEY_EXCHANGE, length, seq, offset, body[offset:offset + size])

    assert reassembler.add(fragment(400, 200)) == []
    assert reassembler.add(fragment(0, 150)) == []
    assert reassembler.add(fragment(0, 150)) == []  # a duplicate
    assert reassembler.add(fragment(100, 300)) == [(hs.CLIENT_KEY_EXCHANGE, 2, body)]
    assert hs.encode_message(hs.CLIENT_KEY_EXCHANGE, 2, body) == message
    assert reassembler.add(fragment(0, 600)) == []  # already delivered
    assert reassembler.next_seq == 3
    huge = hs.Fragment(hs.CLIENT_KEY_EXCHANGE, hs.MAX_MESSAGE + 1, 3, 0, b"x")
    assert reassembler.add(huge) == []
    for offset in range(0, hs.MAX_PENDING_FRAGMENTS * 2):  # many one-byte pieces: bounded
        reassembler.add(hs.Fragment(hs.CLIENT_KEY_EXCHANGE, 1000, 3, offset * 2, b"y"))
    assert sum(len(entry[3]) for entry in reassembler._partial.values()) <= hs.MAX_PENDING_FRAGMENTS


# -- whole handshakes against a client written from the RFCs -------------------------------------


class Client:
    """The client side of a DTLS 1.2 PSK handshake (RFC 6347, RFC 4279, RFC 7627, RFC 9146)."""

    def __init__(self, identity: bytes, key: bytes, cid: bytes | None = None, ems: bool = True) -> None:
        self.identity, self.key, self.cid = identity, key, cid
        self.random = secrets.token_bytes(32)
        self.extensions = b""
        if ems:
            self.extensions += b"\x00\x17\x00\x00"
        if cid is not None:
            self.extensions += b"\x00\x36" + (len(cid) + 1).to_bytes(2, "big") + bytes((len(cid),)) + cid
        self.transcript: list[bytes] = []
        self.sequence = 0
        self.server_cid = b""

    def hello(self, cookie: bytes = b"", message_seq: int = 0) -> bytes:
        message = hs.encode_message(hs.CLIENT_HELLO, message_seq, hello_body(cookie, self.extensions,
                                                                            random=self.random))
        if cookie:
            self.transcript.append(message)
        return self._record(rec.HANDSHAKE, message)

    def _record(self, content_type: int, payload: bytes, epoch: int = 0) -> bytes:
        self.sequence += 1
        return rec.encode_record(content_type, epoch, self.sequence, payload)

    def server_flight(self, datagrams: list[bytes]) -> None:
        for record in (r for d in datagrams for r in rec.parse_records(d)):
            for fragment in hs.parse_fragments(record.fragment):
                self.transcript.append(hs.encode_message(fragment.msg_type, fragment.message_seq, fragment.body))
                if fragment.msg_type == hs.SERVER_HELLO:
                    self.server_random = fragment.body[2:34]
                    extensions = fragment.body[2 + 32 + 1 + 3 + 2:]
                    at = 0
                    while at < len(extensions):
                        kind = int.from_bytes(extensions[at:at + 2], "big")
                        size = int.from_bytes(extensions[at + 2:at + 4], "big")
                        if kind == hs.EXT_CONNECTION_ID:
                            self.server_cid = extensions[at + 5:at + 4 + size]
                        at += 4 + size

    def key_exchange_flight(self, fragment_size: int | None = None) -> list[bytes]:
        cke = hs.encode_message(hs.CLIENT_KEY_EXCHANGE, 2, len(self.identity).to_bytes(2, "big") + self.identity)
        self.transcript.append(cke)
        session_hash = hashlib.sha256(b"".join(self.transcript)).digest()
        self.master = rec.master_secret(rec.psk_premaster(self.key), self.random, self.server_random, session_hash)
        keys = rec.KeyBlock.derive(self.master, self.random, self.server_random)
        self.protection = rec.RecordProtection(keys.client_key, keys.client_iv, keys.server_key, keys.server_iv)
        verify = rec.finished_verify_data(self.master, b"client finished",
                                          hashlib.sha256(b"".join(self.transcript)).digest())
        finished = hs.encode_message(hs.FINISHED, 3, verify)
        self.transcript.append(finished)
        if fragment_size is None:
            pieces = [self._record(rec.HANDSHAKE, cke)]
        else:  # the ClientKeyExchange in several fragments, each its own record
            body = cke[12:]
            pieces = [self._record(rec.HANDSHAKE, cke[:1] + cke[1:4] + cke[4:6] + offset.to_bytes(3, "big")
                                   + len(body[offset:offset + fragment_size]).to_bytes(3, "big")
                                   + body[offset:offset + fragment_size])
                      for offset in range(0, len(body), fragment_size)][::-1]  # out of order too
        self.epoch1 = 0
        return pieces + [self._record(rec.CHANGE_CIPHER_SPEC, b"\x01") + self.seal(rec.HANDSHAKE, finished)]

    def seal(self, content_type: int, payload: bytes) -> bytes:
        self.epoch1 += 1
        return self.protection.seal(content_type, 1, self.epoch1, payload, self.server_cid)

    def open(self, datagram: bytes) -> list[tuple[int, bytes]]:
        out = []
        for record in rec.parse_records(datagram):
            if record.epoch == 1:
                out.append(self.protection.open(record))
            else:
                out.append((record.content_type, record.fragment))
        return out


def handshake(client: Client, lookup=lambda identity: KEY if identity == b"dev-1" else None,
              fragment_size: int | None = None) -> tuple[hs.ServerHandshake, list[bytes]]:
    jar = hs.CookieJar()
    verify = hs.screen_client_hello(hs.client_hello_in(rec.parse_records(client.hello())[0]), b"peer", jar, 0)
    cookie = rec.parse_records(verify)[0].fragment[15:]
    hello = hs.client_hello_in(rec.parse_records(client.hello(cookie, 1))[0])
    assert hs.screen_client_hello(hello, b"peer", jar, 0) is None
    server = hs.ServerHandshake(hello, lookup, 0.0, PEER)
    client.server_flight(server.start())
    answers = []
    for datagram in client.key_exchange_flight(fragment_size):
        for record in rec.parse_records(datagram):
            answers += server.receive(record, 0.0) or []
    return server, answers


@pytest.mark.parametrize("fragment_size", [None, 3])
def test_a_psk_handshake_with_extended_master_secret_completes(fragment_size):
    client = Client(b"dev-1", KEY)
    server, answers = handshake(client, fragment_size=fragment_size)
    assert server.connection is not None and server.connection.identity == b"dev-1"
    [(ccs_type, ccs), (finished_type, finished)] = client.open(answers[0])
    expected = rec.finished_verify_data(client.master, b"server finished",
                                        hashlib.sha256(b"".join(client.transcript)).digest())
    assert (ccs_type, ccs, finished_type) == (rec.CHANGE_CIPHER_SPEC, b"\x01", rec.HANDSHAKE)
    assert finished[12:] == expected
    record = rec.parse_records(client.seal(rec.APPLICATION_DATA, b"POST /rd"))[0]
    assert server.connection.open(record)[:2] == (rec.APPLICATION_DATA, b"POST /rd")


def test_cid_is_negotiated_and_the_finished_flight_carries_it():
    client = Client(b"dev-1", KEY, cid=b"\x42\x43")
    server, answers = handshake(client)
    connection = server.connection
    assert len(client.server_cid) == rec.CID_LENGTH and connection.local_cid == client.server_cid
    assert connection.peer_cid == b"\x42\x43"
    records = rec.parse_records(answers[0])
    assert records[1].content_type == rec.TLS12_CID and answers[0].count(b"\x42\x43") >= 1
    reply = rec.parse_records(client.seal(rec.APPLICATION_DATA, b"ok"))[0]
    assert reply.content_type == rec.TLS12_CID and reply.cid == connection.local_cid
    assert connection.open(reply)[:2] == (rec.APPLICATION_DATA, b"ok")


def test_unknown_identity_wrong_key_and_missing_suite_fail_with_alerts():
    with pytest.raises(hs.HandshakeFailure) as unknown:
        handshake(Client(b"stranger", KEY))
    assert (unknown.value.reason, unknown.value.alert) == ("unknown identity", rec.UNKNOWN_PSK_IDENTITY)
    server, answers = handshake(Client(b"dev-1", bytes(16)))  # another key: its Finished does not open
    assert server.connection is None and answers == []
    with pytest.raises(hs.HandshakeFailure) as wrong:
        server.undecryptable_finished()  # what the endpoint says when no older session opens it either
    assert wrong.value.reason.startswith("bad key") and wrong.value.alert == rec.DECRYPT_ERROR
    jar = hs.CookieJar()
    body = hello_body(suites=b"\xc0\x2b")
    first = hs.client_hello_in(hello_record(body))
    cookie = rec.parse_records(hs.screen_client_hello(first, b"p", jar, 0))[0].fragment[15:]
    server = hs.ServerHandshake(hs.client_hello_in(hello_record(hello_body(cookie, suites=b"\xc0\x2b"), 1, 1)),
                                lambda identity: KEY, 0.0, PEER)
    with pytest.raises(hs.HandshakeFailure) as refused:
        server.start()
    assert refused.value.alert == rec.HANDSHAKE_FAILURE
    assert rec.parse_records(server.failure_datagrams[0])[0].fragment == bytes((rec.FATAL, rec.HANDSHAKE_FAILURE))


def test_the_first_flight_is_resent_on_a_timer_and_when_the_client_repeats_its_hello():
    client = Client(b"dev-1", KEY)
    jar = hs.CookieJar()
    verify = hs.screen_client_hello(hs.client_hello_in(rec.parse_records(client.hello())[0]), b"p", jar, 0)
    cookie = rec.parse_records(verify)[0].fragment[15:]
    repeated = client.hello(cookie, 1)
    server = hs.ServerHandshake(hs.client_hello_in(rec.parse_records(repeated)[0]), lambda i: KEY, 0.0, PEER)
    first = server.start()
    assert server.retransmit(0.5) == [] and server.due() == 1.0
    again = server.retransmit(1.0)
    assert len(again) == 1 and again != first and server.due() == 3.0  # new record sequence numbers; backoff
    sent_first = [r.sequence for r in rec.parse_records(first[0])]
    assert sent_first[0] == rec.parse_records(repeated)[0].sequence  # it starts at the hello's (RFC 6347 §4.2.1)
    assert [r.sequence for r in rec.parse_records(again[0])] == [sent_first[-1] + 1, sent_first[-1] + 2]
    assert server.receive(rec.parse_records(repeated)[0], 5.0)  # the client's hello again: the flight again
    assert server.receive(rec.parse_records(repeated)[0], 5.1) == []  # but not twice at once


# -- the endpoint's Connection ID handling (RFC 9146 §6), without a socket --------------------


class RecordingInterface:
    _mman = object()

    def __init__(self) -> None:
        self.received: list[tuple[tuple[str, int], bytes]] = []

    def _received_datagram(self, session, data: bytes) -> None:
        self.received.append((session.sockaddr, data))

    def _received_exception(self, session, exception) -> None:
        pass


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, address) -> None:
        self.sent.append((data, address))

    def is_closing(self) -> bool:
        return False


def test_a_cid_session_follows_its_peer_only_on_a_newer_authenticated_record():
    import structlog

    from lwm2m_server.transport.dtls import DtlsServerEndpoint

    interface = RecordingInterface()
    endpoint = DtlsServerEndpoint(interface, lambda identity: KEY, max_sessions=10, idle_timeout=100,
                                  log=structlog.get_logger())
    endpoint._transport = transport = RecordingTransport()
    ours = b"\xaa" * rec.CID_LENGTH
    connection, client = pair(peer_cid=b"\x07", local_cid=ours)
    endpoint._add(PEER, connection, 0.0)
    moved, elsewhere = ("::ffff:10.0.0.9", 5000), ("::ffff:10.0.0.10", 6000)

    endpoint.datagram_received(client.seal(rec.APPLICATION_DATA, 1, 1, b"one", ours), ("127.0.0.1", 40000))
    endpoint.datagram_received(client.seal(rec.APPLICATION_DATA, 1, 5, b"two", ours), ("10.0.0.9", 5000))
    assert list(endpoint.sessions) == [moved] and connection.peer == moved  # a newer record, authenticated
    endpoint.datagram_received(client.seal(rec.APPLICATION_DATA, 1, 3, b"late", ours), ("10.0.0.10", 6000))
    assert list(endpoint.sessions) == [moved]  # older than one seen: delivered, but no move
    forged = bytearray(client.seal(rec.APPLICATION_DATA, 1, 9, b"forged", ours))
    forged[-1] ^= 1
    endpoint.datagram_received(bytes(forged), ("10.0.0.10", 6000))
    assert list(endpoint.sessions) == [moved]  # not authenticated: no move
    assert [data for _, data in interface.received] == [b"one", b"two", b"late"]
    assert endpoint.session_at("10.0.0.9", 5000) is endpoint.sessions[moved]
    assert endpoint.session_at("10.0.0.10", 6000) is None

    endpoint.sessions[moved].send(b"2.05")  # the peer's CID goes out, to its new address
    datagram, address = transport.sent[-1]
    assert address[:2] == moved and datagram[0] == rec.TLS12_CID and datagram[11:12] == b"\x07"
    assert client.open(rec.Record(rec.TLS12_CID, datagram[1:3], 1, 0, datagram[14:], b"\x07")) == (
        rec.APPLICATION_DATA, b"2.05")


def test_renegotiation_inside_a_session_is_refused_with_a_warning():
    import structlog

    from lwm2m_server.transport.dtls import DtlsServerEndpoint

    endpoint = DtlsServerEndpoint(RecordingInterface(), lambda identity: KEY, max_sessions=10, idle_timeout=100,
                                  log=structlog.get_logger())
    endpoint._transport = transport = RecordingTransport()
    connection, client = pair()
    endpoint._add(PEER, connection, 0.0)
    hello = hs.encode_message(hs.CLIENT_HELLO, 4, hello_body())
    endpoint.datagram_received(client.seal(rec.HANDSHAKE, 1, 1, hello), ("127.0.0.1", 40000))
    [(datagram, _)] = transport.sent
    assert client.open(rec.parse_records(datagram)[0]) == (rec.ALERT, bytes((rec.WARNING, rec.NO_RENEGOTIATION)))
    assert PEER in endpoint.sessions and not endpoint.handshakes
