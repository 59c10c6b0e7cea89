"""A lossy UDP relay on loopback, for fault tests (a tiny ``tc netem`` in asyncio).

::

    relay = LossyRelay(("127.0.0.1", server_port), loss=0.1, seed=1)
    await relay.start()            # listens on 127.0.0.1:relay.port
    ...                            # clients talk to relay.port instead of server_port
    relay.close()

Each client source address gets its own upstream socket, connected to the
target, so the target sees one distinct peer per client and its answers (and
its own requests to that peer) go back to the right client. Datagrams in both
directions, ``"up"`` (client → target) and ``"down"`` (target → client), are
dropped, duplicated, delayed and reordered with the rates of that direction's
:class:`Faults`, drawn from one seeded :class:`random.Random`. :attr:`stats`
counts what the relay did. The rates can be changed while it runs
(``relay.down = Faults(loss=1.0)``), and ``drop=`` takes a predicate for
targeted losses (e.g. every request the target sends).

Per datagram, in order: ``drop`` predicate, then loss; a datagram that
survives is duplicated with probability ``duplicate`` (the copy is faulted
independently for delay and reordering); each copy waits ``uniform(*delay)``
seconds; then, with probability ``reorder``, it is held back until the next
datagram of the same client and direction has gone out (so that one overtakes
it), or until ``hold_s`` passed without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from dataclasses import dataclass, field
from typing import Callable, Literal

Address = tuple[str, int]
Direction = Literal["up", "down"]
RECEIVE_BUFFER_BYTES = 1 << 20
"""SO_RCVBUF of the relay's sockets, so bursts are lost by choice, not in the kernel."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What the relay does to the datagrams of one direction."""

    loss: float = 0.0
    """Probability that a datagram is dropped."""
    duplicate: float = 0.0
    """Probability that a datagram that was not dropped is sent twice."""
    delay: tuple[float, float] = (0.0, 0.0)
    """Each copy waits ``uniform(low, high)`` seconds."""
    reorder: float = 0.0
    """Probability that a copy is held back until the next one of its flow overtook it."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in 0..1, got {value}")
        low, high = self.delay
        if not 0.0 <= low <= high:
            raise ValueError(f"delay must be (low, high) with 0 <= low <= high, got {self.delay}")


@dataclass(slots=True)
class DirectionStats:
    """Counters of one direction."""

    received: int = 0
    """Datagrams that came in to be relayed."""
    dropped: int = 0
    """Dropped (loss or the ``drop`` predicate)."""
    duplicated: int = 0
    """Extra copies made."""
    delayed: int = 0
    """Copies sent after a delay > 0."""
    reordered: int = 0
    """Copies that were overtaken by a later datagram of their flow."""
    sent: int = 0
    """Copies handed to the kernel (received − dropped + duplicated, once all went out)."""
    errors: int = 0
    """Send errors and ICMP errors reported on the sockets (e.g. the target is down)."""

    @property
    def loss_rate(self) -> float:
        """Share of received datagrams that were dropped."""
        return self.dropped / self.received if self.received else 0.0


@dataclass(slots=True)
class RelayStats:
    """Counters of a :class:`LossyRelay`, per direction."""

    up: DirectionStats = field(default_factory=DirectionStats)
    """Client → target."""
    down: DirectionStats = field(default_factory=DirectionStats)
    """Target → client."""

    def __getitem__(self, direction: Direction) -> DirectionStats:
        return self.up if direction == "up" else self.down

    @property
    def received(self) -> int:
        return self.up.received + self.down.received

    @property
    def dropped(self) -> int:
        return self.up.dropped + self.down.dropped

    @property
    def loss_rate(self) -> float:
        """Share of all received datagrams (both directions) that were dropped."""
        return self.dropped / self.received if self.received else 0.0


class _Flow:
    """One client: its upstream socket and the reorder slots of both directions."""

    def __init__(self, client: Address) -> None:
        self.client = client
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        """Datagrams that arrived before the upstream socket was ready."""
        self.held: dict[Direction, tuple[bytes, asyncio.TimerHandle] | None] = {"up": None, "down": None}


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._relay._from_client(data, addr[:2])

    def error_received(self, exc: Exception) -> None:
        self._relay.stats.down.errors += 1


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay, flow: _Flow) -> None:
        self._relay = relay
        self._flow = flow

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._relay._from_target(data, self._flow)

    def error_received(self, exc: Exception) -> None:
        self._relay.stats.up.errors += 1


class LossyRelay:
    """A UDP relay between clients and ``target`` that loses, duplicates, delays and
    reorders datagrams; ``await start()``, use :attr:`port`, ``close()``."""

    def __init__(
        self,
        target: Address,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        reorder: float = 0.0,
        seed: int | None = None,
        up: Faults | None = None,
        down: Faults | None = None,
        drop: Callable[[Direction, Address, bytes], bool] | None = None,
        tap: Callable[[Direction, Address, bytes], None] | None = None,
        hold_s: float | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        both = Faults(loss, duplicate, tuple(delay), reorder)
        self.target = target
        self.up: Faults = up or both
        """Faults of client → target datagrams (may be replaced while running)."""
        self.down: Faults = down or both
        """Faults of target → client datagrams (may be replaced while running)."""
        self.drop = drop
        """Optional predicate ``(direction, client, datagram) -> bool``: True drops it."""
        self.tap = tap
        """Optional observer ``(direction, client, datagram)``, called for every datagram received."""
        self.hold_s = hold_s
        """Longest time a reordered datagram waits to be overtaken (default: the largest delay + 20 ms)."""
        self.stats = RelayStats()
        self._rng = random.Random(seed)
        self._host = host
        self._listener: asyncio.DatagramTransport | None = None
        self._flows: dict[Address, _Flow] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # -- life cycle ----------------------------------------------------------------

    async def start(self) -> LossyRelay:
        loop = asyncio.get_running_loop()
        self._listener, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=(self._host, 0)
        )
        raise_receive_buffer(self._listener)
        return self

    @property
    def port(self) -> int:
        """The port clients send to."""
        assert self._listener is not None, "relay not started"
        return self._listener.get_extra_info("sockname")[1]

    @property
    def address(self) -> Address:
        return self._host, self.port

    @property
    def clients(self) -> dict[Address, Address]:
        """Client address → the local address of its upstream socket (what the target sees)."""
        return {
            client: flow.upstream.get_extra_info("sockname")[:2]
            for client, flow in self._flows.items() if flow.upstream is not None
        }

    def upstream_address(self, client: Address) -> Address | None:
        """The address the target sees for ``client`` (None before its first datagram went up)."""
        return self.clients.get(tuple(client))

    def close(self) -> None:
        """Stop relaying: pending and held datagrams are discarded, sockets closed."""
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for flow in self._flows.values():
            if flow.upstream is not None:
                flow.upstream.close()
        self._flows.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def __aenter__(self) -> LossyRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- datagrams -------------------------------------------------------------------

    def _from_client(self, data: bytes, client: Address) -> None:
        if self._closed:
            return
        flow = self._flows.get(client)
        if flow is None:
            flow = self._flows[client] = _Flow(client)
            task = asyncio.get_running_loop().create_task(self._connect(flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._relay("up", flow, data)

    def _from_target(self, data: bytes, flow: _Flow) -> None:
        if not self._closed:
            self._relay("down", flow, data)

    async def _connect(self, flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, flow), local_addr=(self._host, 0), remote_addr=self.target
        )
        if self._closed:
            transport.close()
            return
        raise_receive_buffer(transport)
        flow.upstream = transport
        pending, flow.pending = flow.pending, []
        for data in pending:
            self._send("up", flow, data)

    def _relay(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        stats = self.stats[direction]
        faults = self.up if direction == "up" else self.down
        stats.received += 1
        if self.tap is not None:
            self.tap(direction, flow.client, data)
        if (self.drop is not None and self.drop(direction, flow.client, data)) or self._chance(faults.loss):
            stats.dropped += 1
            return
        copies = 1
        if self._chance(faults.duplicate):
            copies = 2
            stats.duplicated += 1
        for _ in range(copies):
            low, high = faults.delay
            wait = self._rng.uniform(low, high) if high > 0 else 0.0
            if wait > 0:
                stats.delayed += 1
                self._later(wait, self._emit, direction, flow, data)
            else:
                self._emit(direction, flow, data)

    def _chance(self, probability: float) -> bool:
        # always draw, so one run's decisions do not depend on which rates are zero
        return self._rng.random() < probability

    def _later(self, wait: float, callback, *args) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def run() -> None:
            self._timers.discard(handle)
            if not self._closed:
                callback(*args)

        handle = loop.call_later(wait, run)
        self._timers.add(handle)
        return handle

    def _emit(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        """Send now, or hold back to be overtaken (reordering)."""
        faults = self.up if direction == "up" else self.down
        held = flow.held[direction]
        if held is None and self._chance(faults.reorder):
            hold = self.hold_s if self.hold_s is not None else faults.delay[1] + 0.02
            timer = self._later(hold, self._release, direction, flow, data)
            flow.held[direction] = (data, timer)
            return
        self._send(direction, flow, data)
        if held is not None:  # the held one was overtaken by this one
            flow.held[direction] = None
            held[1].cancel()
            self._timers.discard(held[1])
            self.stats[direction].reordered += 1
            self._send(direction, flow, held[0])

    def _release(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        held = flow.held[direction]
        if held is not None and held[0] is data:
            flow.held[direction] = None
        self._send(direction, flow, data)

    def _send(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        stats = self.stats[direction]
        try:
            if direction == "up":
                if flow.upstream is None:
                    flow.pending.append(data)
                    return
                flow.upstream.sendto(data)
            else:
                assert self._listener is not None
                self._listener.sendto(data, flow.client)
        except OSError:
            stats.errors += 1
            return
        stats.sent += 1


def raise_receive_buffer(transport: asyncio.DatagramTransport) -> None:
    sock = transport.get_extra_info("socket")
    # as root SO_RCVBUFFORCE passes net.core.rmem_max; otherwise the kernel caps SO_RCVBUF
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
                return
