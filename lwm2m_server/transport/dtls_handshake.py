"""The server side of a DTLS 1.2 PSK handshake, without I/O (RFC 6347, RFC 4279).

A ClientHello first meets :func:`screen_client_hello`, which keeps nothing: without a
valid cookie it is answered with a HelloVerifyRequest whose cookie is an HMAC of the
client's address and hello (RFC 6347 §4.2.1), so a spoofed source costs no state. A
ClientHello with a valid cookie starts a :class:`ServerHandshake`, which sends
ServerHello and ServerHelloDone, takes the client's ClientKeyExchange (its PSK
identity), ChangeCipherSpec and Finished, and answers with its own ChangeCipherSpec
and Finished; its result is a :class:`~.dtls_records.Connection`.

Spoken: TLS_PSK_WITH_AES_128_CCM_8 only, extended_master_secret (RFC 7627) when
offered, an empty renegotiation_info when offered (RFC 5746; renegotiation itself is
refused), connection_id (RFC 9146) when offered. No session resumption: the
ServerHello's session id is empty. Time comes in as ``now`` (seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable

from .dtls_records import (
    ALERT, CHANGE_CIPHER_SPEC, CID_LENGTH, DECODE_ERROR, DECRYPT_ERROR, DTLS_1_0, DTLS_1_2, FATAL, HANDSHAKE,
    HANDSHAKE_FAILURE, ILLEGAL_PARAMETER, INTERNAL_ERROR, PROTOCOL_VERSION, UNKNOWN_PSK_IDENTITY, Connection,
    KeyBlock, Record, RecordProtection, ReplayWindow, alert, encode_record, finished_verify_data, master_secret,
    psk_premaster,
)

CLIENT_HELLO, SERVER_HELLO, HELLO_VERIFY_REQUEST = 1, 2, 3
SERVER_HELLO_DONE, CLIENT_KEY_EXCHANGE, FINISHED = 14, 16, 20
HANDSHAKE_HEADER = 12

TLS_PSK_WITH_AES_128_CCM_8 = b"\xc0\xa8"
EMPTY_RENEGOTIATION_INFO_SCSV = b"\x00\xff"
EXT_EXTENDED_MASTER_SECRET, EXT_CONNECTION_ID, EXT_RENEGOTIATION_INFO = 23, 54, 0xFF01

MAX_MESSAGE = 4096
"""A client's handshake message is larger in no honest PSK handshake: longer ones are
not reassembled (the buffer per handshake is bounded by this)."""
MAX_PENDING_FRAGMENTS = 32
FIRST_RETRANSMIT, MAX_RETRANSMIT = 1.0, 60.0  # RFC 6347 §4.2.4.1
RESEND_GAP = 0.25
"""A client's retransmitted flight is answered at most this often (one answer per flight)."""

PskLookup = Callable[[bytes], "bytes | None"]


class HandshakeFailure(Exception):
    """The handshake ends; ``reason`` is for the log, ``alert`` the fatal alert sent (if any)."""

    def __init__(self, reason: str, alert_code: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert_code


# -- handshake messages ------------------------------------------------------------------------


@dataclass(slots=True)
class Fragment:
    msg_type: int
    length: int
    message_seq: int
    offset: int
    body: bytes


def parse_fragments(fragment: bytes) -> list[Fragment]:
    """The handshake fragments of one record's plaintext (several may share a record)."""
    out, position = [], 0
    while position + HANDSHAKE_HEADER <= len(fragment):
        h = fragment[position:position + HANDSHAKE_HEADER]
        length = int.from_bytes(h[1:4], "big")
        offset = int.from_bytes(h[6:9], "big")
        size = int.from_bytes(h[9:12], "big")
        end = position + HANDSHAKE_HEADER + size
        if end > len(fragment) or offset + size > length:
            break
        out.append(Fragment(h[0], length, int.from_bytes(h[4:6], "big"), offset,
                            fragment[position + HANDSHAKE_HEADER:end]))
        position = end
    return out


def encode_message(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """A handshake message in one fragment: what goes out, and what the transcript hashes
    (RFC 6347 §4.2.6: each message as if sent unfragmented)."""
    length = len(body).to_bytes(3, "big")
    return bytes((msg_type,)) + length + message_seq.to_bytes(2, "big") + b"\0\0\0" + length + body


class Reassembler:
    """Puts a peer's handshake messages together from fragments, in message_seq order,
    holding at most :data:`MAX_MESSAGE` bytes per message and a few messages ahead."""

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq
        self._partial: dict[int, tuple[int, int, bytearray, set[tuple[int, int]]]] = {}

    def add(self, fragment: Fragment) -> list[tuple[int, int, bytes]]:
        """Complete messages (type, message_seq, body) now deliverable, in order."""
        seq = fragment.message_seq
        if seq < self.next_seq or seq > self.next_seq + 4 or fragment.length > MAX_MESSAGE:
            return []
        entry = self._partial.get(seq)
        if entry is None:
            if sum(len(ranges) for *_, ranges in self._partial.values()) >= MAX_PENDING_FRAGMENTS:
                return []
            entry = self._partial[seq] = (fragment.msg_type, fragment.length, bytearray(fragment.length), set())
        msg_type, length, buffer, ranges = entry
        if (msg_type, length) != (fragment.msg_type, fragment.length) or len(ranges) >= MAX_PENDING_FRAGMENTS:
            return []
        buffer[fragment.offset:fragment.offset + len(fragment.body)] = fragment.body
        ranges.add((fragment.offset, fragment.offset + len(fragment.body)))
        done = []
        while (entry := self._partial.get(self.next_seq)) is not None and _covers(entry[3], entry[1]):
            del self._partial[self.next_seq]
            done.append((entry[0], self.next_seq, bytes(entry[2])))
            self.next_seq += 1
        return done


def _covers(ranges: set[tuple[int, int]], length: int) -> bool:
    reached = 0
    for start, end in sorted(ranges):
        if start > reached:
            return False
        reached = max(reached, end)
    return reached >= length


@dataclass(slots=True)
class ClientHello:
    version: bytes
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: list[bytes]
    compressions: bytes
    extensions: dict[int, bytes]
    message_seq: int
    record_sequence: int
    raw: bytes
    """The whole message, as the transcript hashes it."""


def parse_client_hello(body: bytes, message_seq: int = 0, record_sequence: int = 0) -> ClientHello:
    """ValueError when malformed."""
    def take(size: int) -> bytes:
        nonlocal position
        if position + size > len(body):
            raise ValueError("truncated ClientHello")
        chunk = body[position:position + size]
        position += size
        return chunk

    def vector(length_bytes: int) -> bytes:
        return take(int.from_bytes(take(length_bytes), "big"))

    position = 0
    version, random = take(2), take(32)
    session_id, cookie, suites, compressions = vector(1), vector(1), vector(2), vector(1)
    if len(suites) % 2 or len(session_id) > 32 or len(cookie) > 255:
        raise ValueError("malformed ClientHello")
    extensions: dict[int, bytes] = {}
    if position < len(body):
        block = vector(2)
        at = 0
        while at + 4 <= len(block):
            kind, size = int.from_bytes(block[at:at + 2], "big"), int.from_bytes(block[at + 2:at + 4], "big")
            if at + 4 + size > len(block) or kind in extensions:
                raise ValueError("malformed extensions")
            extensions[kind] = block[at + 4:at + 4 + size]
            at += 4 + size
        if at != len(block):
            raise ValueError("malformed extensions")
    return ClientHello(version, random, session_id, cookie, [suites[i:i + 2] for i in range(0, len(suites), 2)],
                       compressions, extensions, message_seq, record_sequence,
                       encode_message(CLIENT_HELLO, message_seq, body))


def client_hello_in(record: Record) -> ClientHello | None:
    """The ClientHello an epoch-0 record carries whole (the stateless stage takes no
    fragments), or None."""
    if record.content_type != HANDSHAKE or record.epoch != 0:
        return None
    fragments = parse_fragments(record.fragment)
    if len(fragments) != 1:
        return None
    first = fragments[0]
    if first.msg_type != CLIENT_HELLO or first.offset != 0 or len(first.body) != first.length:
        return None
    try:
        return parse_client_hello(first.body, first.message_seq, record.sequence)
    except ValueError:
        return None


class CookieJar:
    """HelloVerifyRequest cookies: an HMAC of the client's address and hello under a secret
    renewed every ``lifetime`` seconds; the previous secret is still accepted."""

    def __init__(self, lifetime: float = 300.0) -> None:
        self.lifetime = lifetime
        self._secret = secrets.token_bytes(32)
        self._previous = self._secret
        self._renewed = None

    def _rotate(self, now: float) -> None:
        if self._renewed is None:
            self._renewed = now
        elif now - self._renewed >= self.lifetime:
            self._previous, self._secret, self._renewed = self._secret, secrets.token_bytes(32), now

    @staticmethod
    def _input(peer: bytes, hello: ClientHello) -> bytes:
        return b"".join((peer, hello.version, hello.random, bytes((len(hello.session_id),)), hello.session_id,
                         b"".join(hello.cipher_suites), hello.compressions))

    def cookie(self, peer: bytes, hello: ClientHello, now: float) -> bytes:
        self._rotate(now)
        return hmac.digest(self._secret, self._input(peer, hello), "sha256")[:16]

    def valid(self, peer: bytes, hello: ClientHello, now: float) -> bool:
        self._rotate(now)
        if len(hello.cookie) != 16:
            return False
        data = self._input(peer, hello)
        return any(hmac.compare_digest(hmac.digest(secret, data, "sha256")[:16], hello.cookie)
                   for secret in (self._secret, self._previous))


def hello_verify_request(hello: ClientHello, cookie: bytes) -> bytes:
    """RFC 6347 §4.2.1: version DTLS 1.0, the client's message_seq and record sequence."""
    body = DTLS_1_0 + bytes((len(cookie),)) + cookie
    return encode_record(HANDSHAKE, 0, hello.record_sequence,
                         encode_message(HELLO_VERIFY_REQUEST, hello.message_seq, body), DTLS_1_0)


def screen_client_hello(hello: ClientHello, peer: bytes, jar: CookieJar, now: float) -> bytes | None:
    """The HelloVerifyRequest to send when ``hello`` lacks a valid cookie for ``peer``
    (the client's address and port as bytes); None when the handshake may start."""
    if jar.valid(peer, hello, now):
        return None
    return hello_verify_request(hello, jar.cookie(peer, hello, now))


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


# -- the handshake -------------------------------------------------------------------------------


class ServerHandshake:
    """One peer's handshake from a verified ClientHello to the server's Finished.

    ``start`` gives the first flight; ``receive`` takes each record from the peer and
    gives datagrams to send; ``due`` and ``retransmit`` run the flight timer. It raises
    :class:`HandshakeFailure` when the handshake cannot go on (datagrams to send with it
    are in ``failure_datagrams``); ``connection`` is set once it completed."""

    def __init__(self, hello: ClientHello, lookup: PskLookup, now: float, peer: tuple[str, int],
                 new_cid: Callable[[], bytes] = lambda: secrets.token_bytes(CID_LENGTH)) -> None:
        self.started = now
        self.peer = peer
        self.client_random = hello.random
        self.server_random = secrets.token_bytes(32)
        self._lookup = lookup
        self._hello = hello
        self._transcript = [hello.raw]
        self._reassembler = Reassembler(hello.message_seq + 1)
        self._message_seq = hello.message_seq  # the server's: its first message answers this hello
        self._epoch0_sequence = hello.record_sequence
        self._extended = EXT_EXTENDED_MASTER_SECRET in hello.extensions
        self.local_cid = new_cid() if EXT_CONNECTION_ID in hello.extensions else b""
        self.peer_cid = b""
        self._flight: list[tuple[int, int, bytes]] = []  # (content type, epoch, plaintext)
        self._retransmit_at = now + FIRST_RETRANSMIT
        self._interval = FIRST_RETRANSMIT
        self._resent_at = -1.0
        self._master = b""
        self._protection: RecordProtection | None = None
        self._read_window = ReplayWindow()
        self._client_finished_expected = b""
        self._psk = b""
        self.offered_identity: bytes | None = None
        """The PSK identity the peer offered, known or not (for the log of a failure)."""
        self.identity: bytes | None = None
        """The identity whose key the handshake uses (known to the lookup)."""
        self.connection: Connection | None = None
        self.failure_datagrams: list[bytes] = []

    # -- flights --------------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        hello = self._hello
        if hello.version[0] != 0xFE or hello.version[1] > DTLS_1_2[1]:  # (DTLS counts down: 1.0 is 0xfeff)
            self._fail("the client offers no DTLS 1.2", PROTOCOL_VERSION)
        if TLS_PSK_WITH_AES_128_CCM_8 not in hello.cipher_suites:
            self._fail("the client offers no TLS_PSK_WITH_AES_128_CCM_8", HANDSHAKE_FAILURE)
        if 0 not in hello.compressions:
            self._fail("the client offers no null compression", HANDSHAKE_FAILURE)
        renegotiation = hello.extensions.get(EXT_RENEGOTIATION_INFO)
        if renegotiation not in (None, b"\x00"):  # RFC 5746 §3.6: it must be empty at first
            self._fail("a non-empty renegotiation_info in an initial handshake", HANDSHAKE_FAILURE)
        extensions = b""
        if renegotiation is not None or (EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites):
            extensions += _extension(EXT_RENEGOTIATION_INFO, b"\x00")
        if self._extended:
            extensions += _extension(EXT_EXTENDED_MASTER_SECRET, b"")
        if self.local_cid:
            offered = hello.extensions[EXT_CONNECTION_ID]
            if not offered or offered[0] != len(offered) - 1:
                self._fail("a malformed connection_id extension", DECODE_ERROR)
            self.peer_cid = offered[1:]
            extensions += _extension(EXT_CONNECTION_ID, bytes((len(self.local_cid),)) + self.local_cid)
        body = (DTLS_1_2 + self.server_random + b"\x00" + TLS_PSK_WITH_AES_128_CCM_8 + b"\x00"
                + (len(extensions).to_bytes(2, "big") + extensions if extensions else b""))
        server_hello = self._message(SERVER_HELLO, body)
        done = self._message(SERVER_HELLO_DONE, b"")
        # one message per record: tinydtls reads a record's first message only
        self._flight = [(HANDSHAKE, 0, server_hello), (HANDSHAKE, 0, done)]
        return self._send_flight()

    def _message(self, msg_type: int, body: bytes) -> bytes:
        message = encode_message(msg_type, self._message_seq, body)
        self._message_seq += 1
        self._transcript.append(message)
        return message

    def _send_flight(self) -> list[bytes]:
        """The current flight as one datagram, with new record sequence numbers (RFC 6347 §4.2.4)."""
        records = []
        for content_type, epoch, plaintext in self._flight:
            if epoch == 0:
                records.append(encode_record(content_type, 0, self._epoch0_sequence, plaintext))
                self._epoch0_sequence += 1
            else:
                records.append(self.connection.seal(content_type, plaintext))
        return [b"".join(records)]

    def due(self) -> float | None:
        """When the first flight is to be sent again, None once the client answered it."""
        return self._retransmit_at if self._protection is None else None

    def retransmit(self, now: float) -> list[bytes]:
        if self._protection is not None or now < self._retransmit_at:
            return []
        self._interval = min(self._interval * 2, MAX_RETRANSMIT)
        self._retransmit_at = now + self._interval
        return self._send_flight()

    def resend_final_flight(self, now: float) -> list[bytes]:
        """The client sent its Finished again (ours was lost): ChangeCipherSpec and Finished again."""
        if self.connection is None or now - self._resent_at < RESEND_GAP:
            return []
        self._resent_at = now
        return self._send_flight()

    def _fail(self, reason: str, alert_code: int | None) -> None:
        if alert_code is not None:
            self.failure_datagrams = [encode_record(ALERT, 0, self._epoch0_sequence, alert(FATAL, alert_code))]
            self._epoch0_sequence += 1
        raise HandshakeFailure(reason, alert_code)

    # -- the client's second flight -------------------------------------------------------------

    def same_hello(self, hello: ClientHello) -> bool:
        return hello.random == self.client_random

    def receive(self, record: Record, now: float) -> list[bytes] | None:
        """Datagrams to answer ``record`` with; None when the record is not this handshake's
        (an epoch-1 record that does not authenticate under its keys)."""
        if record.epoch == 0:
            if record.content_type == CHANGE_CIPHER_SPEC:
                return []  # the keys are ready from the ClientKeyExchange on; the order of arrival does not matter
            if record.content_type != HANDSHAKE:
                return []
            return self._handshake_fragments(record.fragment, now)
        if self._protection is None or record.epoch != 1 or not self._read_window.check(record.sequence):
            return None
        opened = self._protection.open(record)
        if opened is None:
            return None
        self._read_window.accept(record.sequence)
        content_type, plaintext = opened
        if content_type != HANDSHAKE:
            return []
        return self._handshake_fragments(plaintext, now)

    def undecryptable_finished(self) -> None:
        """An epoch-1 handshake record that neither this handshake's keys nor an older
        session's open: with PSK that is the Finished of a client with another key."""
        if self._protection is not None and self.connection is None:
            self._fail("bad key: its Finished did not decrypt", DECRYPT_ERROR)

    def _handshake_fragments(self, plaintext: bytes, now: float) -> list[bytes]:
        out: list[bytes] = []
        for fragment in parse_fragments(plaintext):
            if fragment.message_seq < self._reassembler.next_seq:
                # the client sent a flight again: ours was lost
                if self.connection is None and now - self._resent_at >= RESEND_GAP:
                    self._resent_at = now
                    out += self._send_flight()
                continue
            for msg_type, message_seq, body in self._reassembler.add(fragment):
                out += self._message_received(msg_type, message_seq, body)
        return out

    def _message_received(self, msg_type: int, message_seq: int, body: bytes) -> list[bytes]:
        raw = encode_message(msg_type, message_seq, body)
        if msg_type == CLIENT_KEY_EXCHANGE and self._protection is None:
            self._key_exchange(body)
            self._transcript.append(raw)
            self._derive_keys()
            return []
        if msg_type == FINISHED and self._protection is not None and self.connection is None:
            return self._finished(body, raw)
        self._fail(f"unexpected handshake message {msg_type}", 10)  # unexpected_message
        return []

    def _key_exchange(self, body: bytes) -> None:
        if len(body) < 2 or int.from_bytes(body[:2], "big") != len(body) - 2:
            self._fail("a malformed ClientKeyExchange", DECODE_ERROR)
        identity = self.offered_identity = body[2:]
        try:
            key = self._lookup(identity) if identity else None
        except Exception:  # a failing credentials store refuses, it does not stop the endpoint
            self._fail("the PSK lookup failed", INTERNAL_ERROR)
        if key is None:
            self._fail("unknown identity", UNKNOWN_PSK_IDENTITY)
        if not key:
            self._fail("an empty PSK", ILLEGAL_PARAMETER)
        self.identity = identity
        self._psk = key

    def _derive_keys(self) -> None:
        premaster = psk_premaster(self._psk)
        session_hash = hashlib.sha256(b"".join(self._transcript)).digest() if self._extended else None
        self._master = master_secret(premaster, self.client_random, self.server_random, session_hash)
        keys = KeyBlock.derive(self._master, self.client_random, self.server_random)
        self._protection = RecordProtection(keys.server_key, keys.server_iv, keys.client_key, keys.client_iv)
        self._client_finished_expected = finished_verify_data(
            self._master, b"client finished", hashlib.sha256(b"".join(self._transcript)).digest())

    def _finished(self, body: bytes, raw: bytes) -> list[bytes]:
        if not hmac.compare_digest(body, self._client_finished_expected):
            self._fail("bad key: its Finished did not verify", DECRYPT_ERROR)
        self._transcript.append(raw)
        verify = finished_verify_data(self._master, b"server finished",
                                      hashlib.sha256(b"".join(self._transcript)).digest())
        finished = encode_message(FINISHED, self._message_seq, verify)
        self._message_seq += 1
        connection = Connection(self.identity, self._protection, self.peer, self.local_cid, self.peer_cid,
                                replay=self._read_window)
        connection.set_psk_check(self._psk)
        self.connection = connection
        self._psk = b""
        self._flight = [(CHANGE_CIPHER_SPEC, 0, b"\x01"), (HANDSHAKE, 1, finished)]
        return self._send_flight()
