"""Observations on the wire (RFC 7641) for the CoAP adapter: which tokens the server
observes on, what to do with a notification nobody asked for, and the stream of
notifications one observation delivers. Part of the CoAP adapter.

- :class:`WireObservation`: one observation as the adapter holds it: its token, the
  device's address, the request that started it (repeated with Observe=1 to cancel
  it) and the notifications it delivers, freshest only (RFC 7641 §3.4).
- :class:`ObservationKeeper`: the adapter's observations: follows aiocoap's, adopts
  persisted ones, and ends them, telling the device (Cancel Observation: the request
  again with Observe=1 and the same token, RFC 7641 §3.6, LwM2M Transport 1.1 §6.4.1)
  or not (when the device is gone, or at a restart, which keeps them for adoption).
- :class:`NotificationScreen`: sits in front of aiocoap's message managers (plain
  UDP and DTLS). A notification whose token no request of aiocoap and no adopted
  observation knows is answered with a Reset, CON or NON alike (RFC 7641 §3.6: the
  client "MAY reject" it; §4.5: the server then removes the observer). aiocoap
  resets only CON ones and ignores NON ones, so a device that notifies NON would
  notify an orphan observation forever. Notifications of an *adopted* observation
  (persisted before a restart, whose token aiocoap cannot take over) are
  acknowledged and delivered here. Tokens are drawn here too: 8 random bytes.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

import aiocoap.error
import structlog
from aiocoap import Message
from aiocoap.transports.oscore import OSCOREAddress
from aiocoap.numbers.codes import EMPTY
from aiocoap.numbers.types import ACK, CON, NON, RST

from ..security.random_bytes import random_bytes
from .messages import CoapRequest, CoapResponse

OBSERVE_WRAP = 1 << 23
"""Half the 24-bit Observe sequence space (RFC 7641 §3.4)."""
OBSERVE_STALE_AFTER_S = 128.0
"""After this long any notification counts as fresh (RFC 7641 §3.4)."""
NOTIFICATIONS_KEPT = 64
"""Notifications queued for a slow consumer before the oldest are dropped (observe is lossy)."""


def is_fresher(last: tuple[int, float] | None, observe: int, now: float) -> bool:
    """Whether a notification numbered ``observe`` that came at ``now`` is newer than the
    last one taken, ``last`` = (its Observe number, when it came) (RFC 7641 §3.4)."""
    if last is None:
        return True
    number, at = last
    return ((number < observe and observe - number < OBSERVE_WRAP)
            or (number > observe and number - observe > OBSERVE_WRAP)
            or now > at + OBSERVE_STALE_AFTER_S)


class WireObservation:
    """One observation the server holds on a device, as the adapter sees it.

    Iterate it for the notifications; the iteration ends when the device ends the
    observation (a final response without Observe, an error) or the server does.
    """

    def __init__(self, address: str, token: bytes, request: CoapRequest, *, adopted: bool = False) -> None:
        self.address = address
        """Where the device is (the registration's address)."""
        self.token = token
        """The CoAP token the device notifies with; empty when unknown (then no Cancel can be sent)."""
        self.request = request
        """The Observe (GET) or Observe-Composite (FETCH) request that started it."""
        self.adopted = adopted
        """Taken over from before a restart: its notifications bypass aiocoap."""
        self._queue: asyncio.Queue[CoapResponse | None] = asyncio.Queue(NOTIFICATIONS_KEPT + 1)
        self._last: tuple[int, float] | None = None
        self.ended = False
        """No more notifications will be delivered."""
        self.stop_listening: Callable[[], None] = lambda: None
        """Drops the transport's own state for it (aiocoap's observation and its pump)."""

    def seed(self, first: CoapResponse) -> None:
        """Note the Observe number of the response that started the observation."""
        if first.observe is not None:
            self._last = (first.observe, time.monotonic())

    def deliver(self, notification: CoapResponse) -> bool:
        """Queue a notification; False when it is stale (reordered, a duplicate) or the
        observation has ended. One without Observe is final and ends it."""
        if self.ended:
            return False
        now = time.monotonic()
        if notification.observe is not None:
            if not is_fresher(self._last, notification.observe, now):
                return False
            self._last = (notification.observe, now)
        if self._queue.qsize() >= NOTIFICATIONS_KEPT:
            self._queue.get_nowait()  # the consumer is behind: the oldest goes
        self._queue.put_nowait(notification)
        if notification.observe is None:
            self.end()
        return True

    def end(self) -> None:
        """No more notifications: the iteration ends after what is queued."""
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[CoapResponse]:
        while (notification := await self._queue.get()) is not None:
            yield notification


def response_of(message: Message) -> CoapResponse:
    """The adapter's value for an aiocoap response."""
    return CoapResponse(
        code=message.code.dotted,
        content_format=int(message.opt.content_format) if message.opt.content_format is not None else None,
        payload=bytes(message.payload),
        location_path=tuple(message.opt.location_path),
        observe=message.opt.observe,
    )


class NotificationScreen:
    """Screens responses before aiocoap's message managers see them: resets orphan
    notifications and delivers those of adopted observations."""

    def __init__(self, address_of: Callable[[object], str], log=None) -> None:
        self._address_of = address_of  # remote → the address string registrations use
        self._adopted: dict[tuple[bytes, str], WireObservation] = {}
        self._adopted_tokens: set[bytes] = set()
        self._log = log or structlog.get_logger("lwm2m_server.coap")

    def install(self, token_manager, message_manager) -> None:
        """Screen what ``message_manager`` receives; draw ``token_manager``'s tokens here."""
        dispatch = message_manager.dispatch_message

        def screened(message: Message) -> None:
            try:
                taken = self._take(token_manager, message_manager, message)
            except Exception as error:  # noqa: BLE001 - one odd datagram must not stop the transport
                self._log.info("response_dropped", peer=str(message.remote), reason=repr(error)[:200])
                return
            if not taken:
                dispatch(message)  # everything else, unknown non-notifications too, as aiocoap does

        message_manager.dispatch_message = screened

        def next_token() -> bytes:
            # aiocoap counts tokens up from a random 16-bit start, separately per
            # transport and afresh each process: a token from before a restart may
            # come again. Random 8-byte tokens (also RFC 7252 §5.3.1's advice against
            # spoofed responses) are unique across transports and restarts, so a stored
            # observation is keyed by its wire token and adopted by it.
            token = random_bytes(8)
            while self._in_use(token):
                token = random_bytes(8)
            return token

        token_manager.next_token = next_token

    def _take(self, token_manager, message_manager, message: Message) -> bool:
        """Handle a response no request of aiocoap waits for: True when it was
        (delivered to an adopted observation, or reset as an orphan notification)."""
        if message.mtype not in (CON, NON) or not message.code.is_response() \
                or self._expected(token_manager, message):
            return False
        if self._take_adopted(message_manager, message):
            return True
        if message.opt.observe is None:
            return False
        self._reset(message_manager, message)
        return True

    def adopt(self, observation: WireObservation) -> None:
        """Take ``observation``'s notifications from now on (aiocoap has no request for its token)."""
        self._adopted[(observation.token, observation.address)] = observation
        self._adopted_tokens.add(observation.token)

    def forget(self, observation: WireObservation) -> None:
        """Stop taking ``observation``'s notifications: the next one is reset."""
        if self._adopted.get((observation.token, observation.address)) is observation:
            del self._adopted[(observation.token, observation.address)]
            self._adopted_tokens.discard(observation.token)

    def adopted(self) -> list[WireObservation]:
        return list(self._adopted.values())

    def _in_use(self, token: bytes) -> bool:
        return token in self._adopted_tokens

    @staticmethod
    def _expected(token_manager, message: Message) -> bool:
        """Whether aiocoap has a request waiting on this token (then it is aiocoap's)."""
        outgoing = token_manager.outgoing_requests
        if outgoing is None:  # shutting down: leave it to aiocoap
            return True
        return (message.token, message.remote) in outgoing or (message.token, None) in outgoing

    def _take_adopted(self, message_manager, message: Message) -> bool:
        try:
            address = self._address_of(message.remote)
        except (AttributeError, ValueError):
            return False
        observation = self._adopted.get((message.token, address))
        if observation is None:
            return False
        if message.mtype is CON:
            self._send_empty(message_manager, message, ACK)
        block2 = message.opt.block2
        if block2 is not None and block2.more:
            # the rest would be fetched with Block2 GETs on a request aiocoap never made
            self._log.info("notification_block2_skipped", address=address, token=message.token.hex())
            return True
        observation.deliver(response_of(message))
        if observation.ended:
            self.forget(observation)
        return True

    def _reset(self, message_manager, message: Message) -> None:
        self._log.info("orphan_notification_reset", peer=str(message.remote), token=message.token.hex(),
                       mtype=message.mtype.name, observe=message.opt.observe)
        self._send_empty(message_manager, message, RST)

    @staticmethod
    def _send_empty(message_manager, message: Message, mtype) -> None:
        """An empty ACK or RST for ``message``, straight to the wire: its MID is the
        notification's, which aiocoap's send_message would replace."""
        answer = Message(_mtype=mtype, _mid=message.mid, code=EMPTY, payload=b"")  # as aiocoap builds its own
        answer.remote = message.remote.as_response_address()
        message_manager.message_interface.send(answer)


_CANCEL_PAYLOAD_LIMIT = 1024
"""A Cancel Observation goes as one message (no Block1): an Observe-Composite's paths fit."""


class ObservationKeeper:
    """The observations of one CoAP adapter (see the module docstring)."""

    def __init__(self, message_for: Callable[[str, CoapRequest], Awaitable[Message]],
                 context: Callable[[], aiocoap.Context | None], address_of: Callable[[object], str],
                 log=None) -> None:
        self._message_for = message_for  # the adapter's request → aiocoap message, remote filled in
        self._context = context
        self._log = log or structlog.get_logger("lwm2m_server.coap")
        self.screen = NotificationScreen(address_of, self._log)
        self._tasks: set[asyncio.Task] = set()  # pumps, and Cancel Observations being sent

    def follow(self, address: str, request: CoapRequest, first: Message, observation) -> WireObservation:
        """The observation aiocoap keeps for ``request``, whose ``first`` response came."""
        wire = WireObservation(address, bytes(first.token or b""), request)
        wire.seed(response_of(first))
        pump = self._spawn(self._pump(observation, wire))

        def stop_listening() -> None:
            if not observation.cancelled:
                observation.cancel()  # aiocoap swallows the next message on the token, then forgets it
            pump.cancel()  # a cancelled aiocoap observation never ends its iteration

        wire.stop_listening = stop_listening
        return wire

    async def _pump(self, observation, wire: WireObservation) -> None:
        try:
            async for notification in observation:
                wire.deliver(response_of(notification))
        except aiocoap.error.Error:
            pass
        finally:
            wire.end()

    def adopt(self, address: str, token: bytes, request: CoapRequest) -> WireObservation:
        """An observation made before a restart, taken over by its token."""
        wire = WireObservation(address, token, request, adopted=True)
        self.screen.adopt(wire)
        return wire

    def release(self, wire: WireObservation) -> None:
        """Stop delivering ``wire``'s notifications; the device is not told (its next
        notification is answered with a Reset)."""
        wire.end()
        wire.stop_listening()
        self.screen.forget(wire)

    def cancel(self, wire: WireObservation) -> None:
        """Stop delivering ``wire``'s notifications and tell the device; nothing to tell
        when the device ended it already."""
        if wire.ended:
            return
        self.release(wire)
        self._spawn(self._send_cancel(wire))

    async def _send_cancel(self, wire: WireObservation) -> None:
        """The observing request again, with Observe=1 and the observation's token.

        aiocoap's requests always draw a new token (``TokenManager.request``), so the
        cancel goes one layer down, to the message manager of the transport the
        observation runs over (plain UDP or DTLS: the same session), which still numbers,
        retransmits and queues it behind another exchange with the device (NSTART 1).
        For an OSCORE device it is protected with the device's context first and its
        outer token set. The device's answer comes back on the old token; aiocoap's
        ended observation takes it, or, once that is gone, drops it.
        """
        if not wire.token:
            self._log.info("observation_cancel_not_sent", address=wire.address, reason="token unknown")
            return
        try:
            message = await self._message_for(wire.address, wire.request)
            message.opt.observe = 1
            if isinstance(message.remote, OSCOREAddress):
                underlying = message.remote.underlying_address
                message, _ = message.remote.security_context.protect(message)
                message.remote = underlying
            if len(message.payload) > _CANCEL_PAYLOAD_LIMIT:
                raise ValueError(f"request body of {len(message.payload)} bytes would need Block1")
            context = self._context()
            if context is None:
                return
            interface = await context.find_remote_and_interface(message)
            messages = getattr(interface, "token_interface", None)
            if messages is None or not hasattr(messages, "send_message"):
                raise ValueError(f"no message manager behind {type(interface).__name__}")
            message.token = wire.token
            messages.send_message(message, lambda: self._log.info(
                "observation_cancel_reset", address=wire.address, token=wire.token.hex()))
        except Exception as error:  # noqa: BLE001 - one failed cancel must not end others; the Reset remains
            self._log.info("observation_cancel_not_sent", address=wire.address, reason=str(error) or repr(error))
            return
        self._log.info("observation_cancel_sent", address=wire.address, token=wire.token.hex(),
                       method=wire.request.method)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """End every observation here without telling the devices: a restart adopts them."""
        for adopted in self.screen.adopted():
            self.release(adopted)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
