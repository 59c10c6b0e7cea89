"""Block1 reassembly of incoming request bodies (RFC 7959 §2.5), bounded per peer and in all.

aiocoap puts the blocks of a request body together before the resource sees the
request, in a spool bounded by nothing: any peer could start as many bodies as it
liked, each up to the body limit, and leave them there. Here the spool is bounded:

- a body larger than ``max_body`` (announced by Size1, or reached by its blocks)
  is refused with **4.13** and Size1 = ``max_body`` (RFC 7959 §2.9.3);
- a peer (source ``host:port``, the rate limiter's key) may have
  :attr:`Block1Limits.bodies_per_peer` bodies in assembly holding
  :attr:`~Block1Limits.bytes_per_peer` bytes; a block past that is refused with
  **4.29** Too Many Requests (RFC 8516): the peer itself sends too much at once;
- all peers together may have :attr:`~Block1Limits.bodies` bodies holding
  :attr:`~Block1Limits.bytes` bytes; past that **5.03** Service Unavailable
  (RFC 7252 §5.9.3.4): the server is busy, through no fault of this peer.
  Both carry Max-Age: the seconds until the stalest body in the way is dropped;
- a block that does not continue a body in assembly (a gap, no block 0, a body
  dropped meanwhile) gets **4.08** Request Entity Incomplete (RFC 7959 §2.9.2);
  one whose size does not match its Block1 option gets **4.00**;
- a body no block arrived for in :attr:`~Block1Limits.idle_timeout_s` is dropped.

A block refused here ends its body (the client starts again at block 0); one the
rate limiter refuses (4.29 before the spool sees it) leaves its body waiting for
it, so a client that honours Max-Age goes on where it stopped. The same
block sent twice in a row (a retransmission with a new message ID) is answered
again without being added twice. Blocks are kept in one ``bytearray`` per body,
not copied into a new ``bytes`` per block.

:class:`Block1Ledger` is the bookkeeping without I/O (time passed in);
:class:`BoundedBlock1Spool` is what aiocoap's resource calls for each request
(``feed_and_take``, as :class:`aiocoap.blockwise.Block1Spool`). Going out,
:func:`smaller_block_exp` picks the block size to retry with after a device's 4.13.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import aiocoap.error
from aiocoap import Code, Message, blockwise

from .ratelimit import LogThrottle

SMALLEST_BLOCK_EXP = 0
"""16-byte blocks."""
IDLE_TIMEOUT_S = 93.0
"""CoAP MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2): the longest a live transfer is silent
toward the spool is one lost 2.31 (the client retransmits its block for up to
MAX_TRANSMIT_SPAN, 45 s, answered from aiocoap's duplicate cache) plus a next block
retransmitted as long, 90 s. aiocoap's own spool uses the same figure. Not
EXCHANGE_LIFETIME (247 s): a dead body would hold its peer's slots and the server's
bytes well over twice as long, for transfers no retransmission schedule stretches
that far; a transfer silent longer gets 4.08 and starts over (RFC 7959 §2.9.2 names
blocks "sent long enough ago that the server has already discarded them")."""


@dataclass(frozen=True, slots=True)
class Block1Limits:
    """Bounds on request bodies in assembly (``coap.max_block1_*``, ``coap.block1_idle_timeout_s``)."""

    bodies_per_peer: int = 4
    """Bodies one peer may have in assembly at once (an LwM2M client sends one request at a time)."""
    bytes_per_peer: int = 512 * 1024
    """Bytes one peer's bodies in assembly may hold together."""
    bodies: int = 1000
    """Bodies in assembly, all peers together."""
    bytes: int = 16 * 1024 * 1024
    """Bytes held by bodies in assembly, all peers together."""
    idle_timeout_s: float = IDLE_TIMEOUT_S
    """Seconds without a block after which a body in assembly is dropped."""

    def __post_init__(self) -> None:
        for name in ("bodies_per_peer", "bytes_per_peer", "bodies", "bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not (self.idle_timeout_s > 0 and math.isfinite(self.idle_timeout_s)):
            raise ValueError(f"idle_timeout_s must be a positive number of seconds, got {self.idle_timeout_s!r}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a block is not taken: the CoAP answer to give."""

    code: str
    """``"4.00"``, ``"4.08"``, ``"4.13"``, ``"4.29"`` or ``"5.03"``."""
    reason: str
    """A short diagnostic for the payload."""
    max_age: int | None = None
    """Seconds until the peer may try again (4.29, 5.03)."""
    size1: int | None = None
    """The largest body accepted (4.13)."""


@dataclass(frozen=True, slots=True)
class Block1Stats:
    """What the spool holds and has refused (counters for tests and metrics)."""

    bodies: int
    """Bodies in assembly now."""
    bytes: int
    """Bytes they hold now."""
    peak_bodies: int
    """Most bodies in assembly at once since the spool was made."""
    peak_bytes: int
    """Most bytes held at once since the spool was made."""
    peak_bodies_per_peer: int
    """Most bodies one peer had in assembly at once."""
    peak_bytes_per_peer: int
    """Most bytes one peer's bodies held at once."""
    refused: dict[str, int] = field(default_factory=dict)
    """Blocks refused, by answer code."""
    expired: int = 0
    """Bodies dropped after ``idle_timeout_s`` without a block."""


class _Body:
    __slots__ = ("peer", "size", "active", "value")

    def __init__(self, peer: str, size: int, now: float, value: Any) -> None:
        self.peer = peer
        self.size = size
        self.active = now
        self.value = value


class Block1Ledger:
    """Bodies in assembly by key, with their peer and size, least recently active first.

    Sans-I/O: the caller passes ``now`` (any monotonic clock) and keeps whatever it
    likes in each body's ``value``.
    """

    def __init__(self, limits: Block1Limits, max_body: int) -> None:
        if max_body < 1:
            raise ValueError(f"max_body must be at least 1 byte, got {max_body!r}")
        self.limits = limits
        self.max_body = max_body
        self._bodies: OrderedDict[Hashable, _Body] = OrderedDict()
        self._peers: dict[str, OrderedDict[Hashable, None]] = {}
        self._peer_bytes: dict[str, int] = {}
        self.bytes = 0
        """Bytes held by all bodies in assembly."""
        self.peak_bodies = self.peak_bytes = self.peak_bodies_per_peer = self.peak_bytes_per_peer = 0
        self.expired = 0
        """Bodies dropped for being idle."""

    def __len__(self) -> int:
        return len(self._bodies)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._bodies

    def value(self, key: Hashable) -> Any:
        """What the caller keeps for the body ``key`` (KeyError when none)."""
        return self._bodies[key].value

    def peer_bodies(self, peer: str) -> int:
        return len(self._peers.get(peer, ()))

    def peer_bytes(self, peer: str) -> int:
        return self._peer_bytes.get(peer, 0)

    def too_large(self, size: int) -> Refusal | None:
        """4.13 for a body (or announced Size1) over ``max_body``."""
        if size > self.max_body:
            return Refusal("4.13", f"request body over {self.max_body} bytes", size1=self.max_body)
        return None

    def start(self, key: Hashable, peer: str, size: int, now: float, value: Any = None) -> Refusal | None:
        """Begin a body of ``size`` bytes (its block 0) for ``peer``; an older body under
        the same key is dropped first (the client started over)."""
        self.expire(now)
        self.drop(key)
        refusal = self.too_large(size) or self._room(peer, size, now, new=True)
        if refusal is not None:
            return refusal
        self._bodies[key] = _Body(peer, size, now, value)
        self._peers.setdefault(peer, OrderedDict())[key] = None
        self._grow(peer, size)
        return None

    def add(self, key: Hashable, size: int, now: float) -> Refusal | None:
        """``size`` more bytes for the body ``key``; on a refusal the body is dropped."""
        self.expire(now)
        body = self._bodies.get(key)
        if body is None:
            return Refusal("4.08", "no request body in assembly for this block: start again at block 0")
        refusal = self.too_large(body.size + size) or self._room(body.peer, size, now, new=False)
        if refusal is not None:
            self.drop(key)
            return refusal
        body.size += size
        body.active = now
        self._bodies.move_to_end(key)
        self._peers[body.peer].move_to_end(key)
        self._grow(body.peer, size)
        return None

    def touch(self, key: Hashable, now: float) -> None:
        """The body ``key`` is alive (a block repeated) without growing."""
        body = self._bodies.get(key)
        if body is not None:
            body.active = now
            self._bodies.move_to_end(key)
            self._peers[body.peer].move_to_end(key)

    def drop(self, key: Hashable) -> Any:
        """Forget the body ``key`` (finished, refused, replaced); its value, or None."""
        body = self._bodies.pop(key, None)
        if body is None:
            return None
        keys = self._peers[body.peer]
        del keys[key]
        self.bytes -= body.size
        left = self._peer_bytes[body.peer] - body.size
        if keys:
            self._peer_bytes[body.peer] = left
        else:
            del self._peers[body.peer], self._peer_bytes[body.peer]
        return body.value

    def clear(self) -> None:
        """Forget every body."""
        for key in list(self._bodies):
            self.drop(key)

    def expire(self, now: float) -> int:
        """Drop the bodies idle for ``idle_timeout_s``; how many went."""
        dropped = 0
        while self._bodies:
            key, body = next(iter(self._bodies.items()))
            if now - body.active < self.limits.idle_timeout_s:
                break
            self.drop(key)
            dropped += 1
        self.expired += dropped
        return dropped

    def next_expiry(self) -> float | None:
        """When the stalest body would be dropped (``now`` scale), None when there is none."""
        if not self._bodies:
            return None
        return next(iter(self._bodies.values())).active + self.limits.idle_timeout_s

    def _room(self, peer: str, size: int, now: float, *, new: bool) -> Refusal | None:
        limits = self.limits
        keys = self._peers.get(peer)
        if new and keys is not None and len(keys) >= limits.bodies_per_peer:
            return Refusal("4.29", f"{limits.bodies_per_peer} request bodies of this peer already in assembly",
                           max_age=self._wait(self._bodies[next(iter(keys))], now))
        if self.peer_bytes(peer) + size > limits.bytes_per_peer:
            stalest = self._bodies[next(iter(keys))] if keys else None
            return Refusal("4.29", f"request bodies of this peer in assembly would pass {limits.bytes_per_peer} bytes",
                           max_age=self._wait(stalest, now))
        if new and len(self._bodies) >= limits.bodies:
            return Refusal("5.03", "too many request bodies in assembly, try again later",
                           max_age=self._wait(next(iter(self._bodies.values())), now))
        if self.bytes + size > limits.bytes:
            stalest = next(iter(self._bodies.values()), None)
            return Refusal("5.03", "request bodies in assembly hold too many bytes, try again later",
                           max_age=self._wait(stalest, now))
        return None

    def _wait(self, stalest: _Body | None, now: float) -> int:
        """Max-Age: whole seconds until ``stalest`` would be dropped (at least 1)."""
        if stalest is None:
            return 1
        return max(1, math.ceil(stalest.active + self.limits.idle_timeout_s - now))

    def _grow(self, peer: str, size: int) -> None:
        self.bytes += size
        self._peer_bytes[peer] = self._peer_bytes.get(peer, 0) + size
        self.peak_bodies = max(self.peak_bodies, len(self._bodies))
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.peak_bodies_per_peer = max(self.peak_bodies_per_peer, len(self._peers[peer]))
        self.peak_bytes_per_peer = max(self.peak_bytes_per_peer, self._peer_bytes[peer])


def smaller_block_exp(response: Message, current_exp: int) -> int | None:
    """The block size exponent to retry with after a 4.13, or None to give up.

    A Block1 option in the 4.13 names the size the peer wants (RFC 7959 §2.9.3);
    otherwise Size1 bounds the body it accepts, so blocks no larger than that;
    otherwise halve the block size.
    """
    if response.opt.block1 is not None:
        wanted = response.opt.block1.size_exponent
    elif response.opt.size1 is not None and response.opt.size1 >= 16:
        wanted = min(current_exp, max(SMALLEST_BLOCK_EXP, response.opt.size1.bit_length() - 5))
    else:
        wanted = current_exp - 1
    if wanted >= current_exp or wanted < SMALLEST_BLOCK_EXP:
        return None
    return wanted


class Block1Refused(aiocoap.error.RenderableError):
    """A :class:`Refusal` as aiocoap renders it (raised out of ``feed_and_take``)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal

    def to_message(self) -> Message:
        refusal = self.refusal
        major, minor = refusal.code.split(".")
        message = Message(code=Code((int(major) << 5) | int(minor)), payload=refusal.reason.encode())
        if refusal.size1 is not None:
            message.opt.size1 = refusal.size1
        if refusal.max_age is not None:
            message.opt.max_age = refusal.max_age
        return message


class _Assembly:
    """One body: its first block's message (options) and the bytes so far."""

    __slots__ = ("first", "payload", "last_block")

    def __init__(self, first: Message) -> None:
        self.first = first.copy(payload=b"")  # its bytes are kept once, in ``payload``
        self.payload = bytearray(first.payload)
        self.last_block = (first.opt.block1.start, len(first.payload))


class BoundedBlock1Spool(blockwise.Block1Spool):
    """aiocoap's Block1 spool over a :class:`Block1Ledger`; ``log``: a structlog logger
    (refusals are logged at most once per host per 10 s, :class:`.ratelimit.LogThrottle`)."""

    def __init__(self, max_body: int, limits: Block1Limits | None = None, *, log: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # not super().__init__(): aiocoap's unbounded TimeoutDict is what this replaces
        self.ledger = Block1Ledger(limits or Block1Limits(), max_body)
        self._log = log
        self._clock = clock
        self._throttle = LogThrottle()
        self._refused: dict[str, int] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.blocks_received = 0
        """Blocks fed (a Block1 option present), refused ones included."""
        self.bytes_received = 0
        """Their payload bytes."""

    @property
    def limit(self) -> int:
        """The largest body accepted."""
        return self.ledger.max_body

    def stats(self) -> Block1Stats:
        ledger = self.ledger
        return Block1Stats(len(ledger), ledger.bytes, ledger.peak_bodies, ledger.peak_bytes,
                           ledger.peak_bodies_per_peer, ledger.peak_bytes_per_peer, dict(self._refused),
                           ledger.expired)

    def feed_and_take(self, req: Message) -> Message:
        """The whole request once its last block is in; raises ContinueException (2.31)
        before that, or :class:`Block1Refused`."""
        block = req.opt.block1
        if block is None:
            if (refusal := self.ledger.too_large(len(req.payload))) is not None:
                self._refuse(req, refusal)
            return req
        key = blockwise._extract_block_key(req)
        now = self._clock()
        size = len(req.payload)
        self.blocks_received += 1
        self.bytes_received += size
        if block.more and size != block.size and not (block.size_exponent == 7 and size % block.size == 0):
            self.ledger.drop(key)
            self._refuse(req, Refusal("4.00", f"block of {size} bytes, its Block1 option says {block.size}"))
        if block.block_number == 0 and not block.more:  # the whole body in one block: nothing to hold
            self.ledger.drop(key)
            refusal = self.ledger.too_large(size)
        elif block.block_number == 0:
            announced = self.ledger.too_large(req.opt.size1 or 0)
            refusal = announced or self.ledger.start(key, req.remote.hostinfo, size, now, _Assembly(req))
        else:
            refusal = self._continue(key, req, now)
        if refusal is not None:
            self._refuse(req, refusal)
        self._schedule_sweep()
        if block.more:
            raise blockwise.ContinueException(block)
        if block.block_number == 0:
            return req
        assembly: _Assembly = self.ledger.drop(key)
        whole = assembly.first.copy(payload=bytes(assembly.payload), mid=req.mid, token=req.token, remote=req.remote)
        whole.opt.block1 = block
        if req.opt.block2 is not None:
            whole.opt.block2 = req.opt.block2
        return whole

    def _continue(self, key: Any, req: Message, now: float) -> Refusal | None:
        block = req.opt.block1
        if key not in self.ledger:
            return Refusal("4.08", "no request body in assembly for this block: start again at block 0")
        assembly: _Assembly = self.ledger.value(key)
        received = len(assembly.payload)
        if block.more and (block.start, len(req.payload)) == assembly.last_block:
            self.ledger.touch(key, now)  # the same block again: answered again, added once
            raise blockwise.ContinueException(block)
        if block.start != received:
            self.ledger.drop(key)
            return Refusal("4.08", f"expected the block at byte {received}, got one at byte {block.start}")
        refusal = self.ledger.add(key, len(req.payload), now)
        if refusal is None:
            assembly.payload += req.payload
            assembly.last_block = (block.start, len(req.payload))
        return refusal

    def _refuse(self, req: Message, refusal: Refusal) -> None:
        self._refused[refusal.code] = self._refused.get(refusal.code, 0) + 1
        if self._log is not None:
            peer = getattr(req.remote, "hostinfo", "?")
            held_back = self._throttle.check(peer, self._clock())
            if held_back is not None:
                self._log.info("block1_refused", peer=peer, code=refusal.code, reason=refusal.reason,
                               bodies=len(self.ledger), bytes=self.ledger.bytes, held_back=held_back)
        raise Block1Refused(refusal)

    def _schedule_sweep(self) -> None:
        """Drop idle bodies even when no more blocks come: a timer at the next expiry."""
        if self._sweep is not None or not len(self.ledger):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used without a loop (tests of the ledger): expiry happens on feeding
            return
        due = self.ledger.next_expiry()
        self._sweep = loop.call_later(max(0.0, due - self._clock()) + 0.01, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        self.ledger.expire(self._clock())
        self._schedule_sweep()

    def close(self) -> None:
        """Drop every body and stop the timer (the adapter stops)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.ledger.clear()
