"""DTLS 1.2 records without I/O: parsing, AES-128-CCM-8 protection, the replay window,
the TLS 1.2 PRF and key schedule, and an established connection's state, which can be
exported to a plain dict and imported again (a graceful restart keeps the sessions).

Only TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655, RFC 7925) is spoken. Its nonce is the
4-byte write IV of the key block followed by the 8-byte explicit nonce sent in each
record, which is the record's epoch and sequence number (RFC 6655 §3). Records of a
connection that negotiated a Connection ID (RFC 9146) are ``tls12_cid`` records: the
CID follows the sequence number, the real content type is inside the encryption, and
the additional data follows RFC 9146 §5.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, TLS12_CID = 20, 21, 22, 23, 25
CONTENT_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, TLS12_CID))
DTLS_1_2, DTLS_1_0 = b"\xfe\xfd", b"\xfe\xff"
RECORD_HEADER = 13
EXPLICIT_NONCE, TAG = 8, 8
MAX_SEQUENCE = (1 << 48) - 1
MAX_PLAINTEXT = 1 << 14

WARNING, FATAL = 1, 2
CLOSE_NOTIFY, UNEXPECTED_MESSAGE, BAD_RECORD_MAC, HANDSHAKE_FAILURE = 0, 10, 20, 40
ILLEGAL_PARAMETER, DECODE_ERROR, DECRYPT_ERROR, PROTOCOL_VERSION = 47, 50, 51, 70
INTERNAL_ERROR, NO_RENEGOTIATION, UNKNOWN_PSK_IDENTITY = 80, 100, 115

KEY_LENGTH, FIXED_IV_LENGTH = 16, 4
CID_LENGTH = 6
"""The length of every Connection ID this server hands out: one length for all makes a
``tls12_cid`` record parseable before its session is known (RFC 9146 §3)."""


def prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.2 PRF with SHA-256: P_SHA256(secret, label + seed) (RFC 5246 §5)."""
    seed = label + seed
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, "sha256")
        out += hmac.digest(secret, a + seed, "sha256")
    return bytes(out[:length])


def psk_premaster(psk: bytes) -> bytes:
    """RFC 4279 §2: uint16 N, N zero bytes, uint16 N, the PSK."""
    size = len(psk).to_bytes(2, "big")
    return size + bytes(len(psk)) + size + psk


def master_secret(premaster: bytes, client_random: bytes, server_random: bytes,
                  session_hash: bytes | None = None) -> bytes:
    """RFC 5246 §8.1, or with ``session_hash`` the extended master secret (RFC 7627 §4)."""
    if session_hash is not None:
        return prf(premaster, b"extended master secret", session_hash, 48)
    return prf(premaster, b"master secret", client_random + server_random, 48)


@dataclass(frozen=True, slots=True)
class KeyBlock:
    """The keys and implicit IVs of AES-128-CCM-8 (no MAC keys: an AEAD), RFC 5246 §6.3."""

    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes

    @classmethod
    def derive(cls, master: bytes, client_random: bytes, server_random: bytes) -> KeyBlock:
        block = prf(master, b"key expansion", server_random + client_random, 2 * (KEY_LENGTH + FIXED_IV_LENGTH))
        k, i = KEY_LENGTH, FIXED_IV_LENGTH
        return cls(block[:k], block[k:2 * k], block[2 * k:2 * k + i], block[2 * k + i:2 * k + 2 * i])


def finished_verify_data(master: bytes, label: bytes, handshake_hash: bytes) -> bytes:
    """RFC 5246 §7.4.9: 12 bytes of PRF(master, label, Hash(handshake messages))."""
    return prf(master, label, handshake_hash, 12)


# -- records -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    content_type: int
    version: bytes
    epoch: int
    sequence: int
    fragment: bytes
    cid: bytes = b""


def parse_records(datagram: bytes) -> list[Record]:
    """The records of a datagram, up to the first malformed one (RFC 6347 §4.1.2.7: an
    invalid record is dropped, and with it the rest of its datagram). ``tls12_cid``
    records carry one of our CIDs, all :data:`CID_LENGTH` bytes."""
    records = []
    offset, size = 0, len(datagram)
    while offset + RECORD_HEADER <= size:
        content_type = datagram[offset]
        version = datagram[offset + 1:offset + 3]
        if content_type not in CONTENT_TYPES or version[0] != 0xFE:
            break
        epoch = int.from_bytes(datagram[offset + 3:offset + 5], "big")
        sequence = int.from_bytes(datagram[offset + 5:offset + 11], "big")
        cid = b""
        header = RECORD_HEADER
        if content_type == TLS12_CID:
            cid = datagram[offset + 11:offset + 11 + CID_LENGTH]
            header += CID_LENGTH
            if offset + header > size:
                break
        length = int.from_bytes(datagram[offset + header - 2:offset + header], "big")
        end = offset + header + length
        if end > size or length > MAX_PLAINTEXT + 2048:
            break
        records.append(Record(content_type, version, epoch, sequence, datagram[offset + header:end], cid))
        offset = end
    return records


def encode_record(content_type: int, epoch: int, sequence: int, fragment: bytes, version: bytes = DTLS_1_2) -> bytes:
    return (bytes((content_type,)) + version + epoch.to_bytes(2, "big") + sequence.to_bytes(6, "big")
            + len(fragment).to_bytes(2, "big") + fragment)


def plain_aad(epoch: int, sequence: int, content_type: int, version: bytes, length: int) -> bytes:
    """RFC 5246 §6.2.3.3 as DTLS uses it: seq_num (epoch and sequence) + type + version + length."""
    return (epoch.to_bytes(2, "big") + sequence.to_bytes(6, "big") + bytes((content_type,)) + version
            + length.to_bytes(2, "big"))


def cid_aad(epoch: int, sequence: int, version: bytes, cid: bytes, inner_length: int) -> bytes:
    """RFC 9146 §5 (AEAD): seq_num_placeholder (8 × 0xff) + tls12_cid + cid_length +
    tls12_cid + version + epoch + sequence_number + cid + length_of_DTLSInnerPlaintext."""
    return (b"\xff" * 8 + bytes((TLS12_CID, len(cid), TLS12_CID)) + version + epoch.to_bytes(2, "big")
            + sequence.to_bytes(6, "big") + cid + inner_length.to_bytes(2, "big"))


class ReplayWindow:
    """RFC 6347 §4.1.2.6: the highest sequence number accepted and a 64-bit bitmap of
    the ones just below it. ``check`` before decrypting, ``accept`` after the record
    authenticated (a forged record must not move the window)."""

    SIZE = 64

    __slots__ = ("highest", "bitmap")

    def __init__(self, highest: int = -1, bitmap: int = 0) -> None:
        self.highest = highest
        self.bitmap = bitmap

    def check(self, sequence: int) -> bool:
        """Whether ``sequence`` is new: above the window, or inside it and unseen."""
        if sequence > self.highest:
            return True
        behind = self.highest - sequence
        return behind < self.SIZE and not (self.bitmap >> behind) & 1

    def accept(self, sequence: int) -> None:
        if sequence > self.highest:
            shift = sequence - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.SIZE) - 1) if shift < self.SIZE else 1
            self.highest = sequence
        else:
            self.bitmap |= 1 << (self.highest - sequence)


class RecordProtection:
    """AES-128-CCM-8 for one direction pair: sealing with our key and IV, opening with the
    peer's. Sequence numbers are 48 bits; the connection ends before one would repeat."""

    __slots__ = ("_seal", "_open", "write_iv", "read_iv", "write_key", "read_key")

    def __init__(self, write_key: bytes, write_iv: bytes, read_key: bytes, read_iv: bytes) -> None:
        self.write_key, self.write_iv, self.read_key, self.read_iv = write_key, write_iv, read_key, read_iv
        self._seal = AESCCM(write_key, tag_length=TAG)
        self._open = AESCCM(read_key, tag_length=TAG)

    def seal(self, content_type: int, epoch: int, sequence: int, plaintext: bytes, peer_cid: bytes = b"") -> bytes:
        """One protected record; with ``peer_cid`` a ``tls12_cid`` record carrying it."""
        explicit = epoch.to_bytes(2, "big") + sequence.to_bytes(6, "big")
        nonce = self.write_iv + explicit
        if not peer_cid:
            aad = plain_aad(epoch, sequence, content_type, DTLS_1_2, len(plaintext))
            return encode_record(content_type, epoch, sequence, explicit + self._seal.encrypt(nonce, plaintext, aad))
        inner = plaintext + bytes((content_type,))  # DTLSInnerPlaintext, without padding
        aad = cid_aad(epoch, sequence, DTLS_1_2, peer_cid, len(inner))
        fragment = explicit + self._seal.encrypt(nonce, inner, aad)
        return (bytes((TLS12_CID,)) + DTLS_1_2 + explicit + peer_cid + len(fragment).to_bytes(2, "big") + fragment)

    def open(self, record: Record) -> tuple[int, bytes] | None:
        """The content type and plaintext of ``record``, or None if it does not authenticate."""
        fragment = record.fragment
        if len(fragment) < EXPLICIT_NONCE + TAG:
            return None
        nonce = self.read_iv + fragment[:EXPLICIT_NONCE]
        body = fragment[EXPLICIT_NONCE:]
        inner_length = len(body) - TAG
        if record.content_type == TLS12_CID:
            aad = cid_aad(record.epoch, record.sequence, record.version, record.cid, inner_length)
        else:
            aad = plain_aad(record.epoch, record.sequence, record.content_type, record.version, inner_length)
        try:
            plaintext = self._open.decrypt(nonce, body, aad)
        except InvalidTag:
            return None
        if record.content_type != TLS12_CID:
            return record.content_type, plaintext
        end = len(plaintext)  # DTLSInnerPlaintext: content, real type, zero padding
        while end and plaintext[end - 1] == 0:
            end -= 1
        if not end:
            return None
        return plaintext[end - 1], plaintext[:end - 1]


def alert(level: int, description: int) -> bytes:
    return bytes((level, description))


# -- an established connection --------------------------------------------------------------------


@dataclass(slots=True)
class Connection:
    """An established DTLS connection's state (epoch 1 on both sides; no renegotiation)."""

    identity: bytes
    protection: RecordProtection
    peer: tuple[str, int]
    local_cid: bytes = b""
    """The CID the peer puts in records to us (ours, :data:`CID_LENGTH` bytes), or none."""
    peer_cid: bytes = b""
    """The CID we put in records to the peer; empty: plain records (RFC 9146 §3)."""
    epoch: int = 1
    write_sequence: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    last_use: float = 0.0
    """Wall-clock time of the last record that authenticated (exported as is)."""
    psk_check: bytes = b""
    """HMAC of a salt under the PSK, so an import can tell that the key did not change."""
    psk_salt: bytes = b""

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        if self.write_sequence > MAX_SEQUENCE:
            raise ConnectionError("DTLS write sequence exhausted: the peer must handshake again")
        sequence, self.write_sequence = self.write_sequence, self.write_sequence + 1
        return self.protection.seal(content_type, self.epoch, sequence, plaintext, self.peer_cid)

    def open(self, record: Record) -> tuple[int, bytes, bool] | None:
        """The content type, plaintext, and whether the record is the newest seen yet
        (RFC 9146 §6 lets only such a record move the peer's address); None for a record
        of another epoch, a replay, or one that does not authenticate."""
        if record.epoch != self.epoch or not self.replay.check(record.sequence):
            return None
        if self.local_cid and record.content_type == TLS12_CID and not hmac.compare_digest(record.cid, self.local_cid):
            return None
        opened = self.protection.open(record)
        if opened is None:
            return None
        newest = record.sequence > self.replay.highest
        self.replay.accept(record.sequence)
        return opened[0], opened[1], newest

    def set_psk_check(self, psk: bytes) -> None:
        self.psk_salt = secrets.token_bytes(16)
        self.psk_check = hmac.digest(psk, b"lwm2m dtls session psk check" + self.psk_salt, "sha256")

    def matches_psk(self, psk: bytes) -> bool:
        expected = hmac.digest(psk, b"lwm2m dtls session psk check" + self.psk_salt, "sha256")
        return hmac.compare_digest(expected, self.psk_check)

    def export(self) -> dict:
        """A plain dict (JSON-ready) of everything needed to go on with this connection."""
        p = self.protection
        return {
            "identity": self.identity.hex(), "peer": [self.peer[0], self.peer[1]],
            "server_key": p.write_key.hex(), "server_iv": p.write_iv.hex(),
            "client_key": p.read_key.hex(), "client_iv": p.read_iv.hex(),
            "epoch": self.epoch, "write_sequence": self.write_sequence,
            "replay_highest": self.replay.highest, "replay_bitmap": self.replay.bitmap,
            "local_cid": self.local_cid.hex(), "peer_cid": self.peer_cid.hex(),
            "last_use": self.last_use, "psk_salt": self.psk_salt.hex(), "psk_check": self.psk_check.hex(),
        }

    @classmethod
    def from_export(cls, data: dict) -> Connection:
        """The connection :meth:`export` described; ValueError/KeyError/TypeError when malformed."""
        def blob(name: str, sizes: tuple[int, ...]) -> bytes:
            value = bytes.fromhex(data[name])
            if len(value) not in sizes:
                raise ValueError(f"{name}: {len(value)} bytes")
            return value

        protection = RecordProtection(blob("server_key", (KEY_LENGTH,)), blob("server_iv", (FIXED_IV_LENGTH,)),
                                      blob("client_key", (KEY_LENGTH,)), blob("client_iv", (FIXED_IV_LENGTH,)))
        host, port = data["peer"]
        write_sequence, epoch = int(data["write_sequence"]), int(data["epoch"])
        highest, bitmap = int(data["replay_highest"]), int(data["replay_bitmap"])
        if not (0 <= write_sequence <= MAX_SEQUENCE and 1 <= epoch <= 0xFFFF and -1 <= highest <= MAX_SEQUENCE
                and 0 <= bitmap < 1 << ReplayWindow.SIZE and isinstance(host, str) and 0 < int(port) < 65536):
            raise ValueError("a field out of range")
        identity = bytes.fromhex(data["identity"])
        if not identity:
            raise ValueError("no identity")
        return cls(identity, protection, (host, int(port)), blob("local_cid", (0, CID_LENGTH)),
                   blob("peer_cid", tuple(range(256))), epoch, write_sequence, ReplayWindow(highest, bitmap),
                   float(data["last_use"]), blob("psk_check", (32,)), blob("psk_salt", (16,)))


def handshake_hash(messages: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(messages)).digest()
