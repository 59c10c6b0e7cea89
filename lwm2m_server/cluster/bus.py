"""The cluster's message bus on NATS: publish/subscribe for events, request/reply for
operations on another worker's device.

NATS rather than Redis pub/sub: request/reply with a timeout and "no responders" is
built in (Redis would need reply channels and correlation ids of our own), subjects
route by name with wildcards, and a message costs no storage. Messages are CBOR maps
(bytes travel as bytes). Every failure is a :class:`BusError` that names the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import cbor2
import nats
from nats.errors import Error as NatsError

Handler = Callable[[dict[str, Any]], Awaitable[None]]
Responder = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class BusError(Exception):
    """The bus could not do what was asked; ``str()`` names the server and why."""


class NatsBus:
    """One connection to NATS; ``await NatsBus.connect(url)``."""

    def __init__(self, url: str, connection: Any) -> None:
        self.url = url
        self._nc = connection
        self._subscriptions: list[Any] = []

    @classmethod
    async def connect(cls, url: str, *, name: str = "tinymlaas", timeout: float = 5.0) -> NatsBus:
        where = _where(url)
        try:
            connection = await nats.connect(url, name=name, connect_timeout=timeout, max_reconnect_attempts=-1,
                                            allow_reconnect=True, reconnect_time_wait=0.5)
        except (OSError, NatsError, asyncio.TimeoutError) as error:
            raise BusError(f"NATS {where}: cannot connect: {error or type(error).__name__}") from None
        return cls(url, connection)

    async def publish(self, subject: str, message: dict[str, Any]) -> None:
        await self.publish_encoded(subject, cbor2.dumps(message))

    async def publish_encoded(self, subject: str, payload: bytes) -> None:
        """Publish a message already CBOR-encoded (a batch sized to fit, :func:`.wire.encode_batches`)."""
        try:
            await self._nc.publish(subject, payload)
        except NatsError as error:
            raise BusError(f"NATS {_where(self.url)}: publish to {subject}: {error or type(error).__name__}") from None

    async def subscribe(self, subject: str, handler: Handler) -> None:
        """Call ``handler`` with every message on ``subject`` (one at a time, in order)."""
        async def receive(msg) -> None:
            try:
                message = cbor2.loads(msg.data)
            except Exception:  # noqa: BLE001 - a malformed message is dropped, never fatal
                return
            if isinstance(message, dict):
                await handler(message)

        self._subscriptions.append(await self._nc.subscribe(subject, cb=receive))

    async def serve(self, subject: str, responder: Responder) -> None:
        """Answer every request on ``subject`` with ``responder``'s reply; concurrently, since
        a request to a device may wait up to its timeout."""
        async def receive(msg) -> None:
            asyncio.get_running_loop().create_task(self._answer(msg, responder))

        self._subscriptions.append(await self._nc.subscribe(subject, cb=receive))

    async def _answer(self, msg: Any, responder: Responder) -> None:
        try:
            request = cbor2.loads(msg.data)
            reply = await responder(request) if isinstance(request, dict) else {"error": "malformed request"}
        except Exception as error:  # noqa: BLE001 - the asker gets the reason, the worker goes on
            reply = {"error": f"{type(error).__name__}: {error}"}
        try:
            await msg.respond(cbor2.dumps(reply))
        except NatsError:
            pass  # the asker gave up or the connection is down: nothing to tell

    async def request(self, subject: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            msg = await self._nc.request(subject, cbor2.dumps(message), timeout=timeout)
        except asyncio.TimeoutError:
            raise BusError(f"NATS {_where(self.url)}: no answer on {subject} within {timeout:g} s") from None
        except NatsError as error:
            raise BusError(f"NATS {_where(self.url)}: request on {subject}: {error or type(error).__name__}") from None
        reply = cbor2.loads(msg.data)
        if not isinstance(reply, dict):
            raise BusError(f"NATS {_where(self.url)}: malformed reply on {subject}")
        return reply

    async def gather(self, subject: str, message: dict[str, Any], window: float) -> list[dict[str, Any]]:
        """Every answer to ``message`` on ``subject`` that arrives within ``window`` seconds
        (a question to all workers; request() takes the first answer only)."""
        inbox = self._nc.new_inbox()
        answers: list[dict[str, Any]] = []

        async def receive(msg) -> None:
            with contextlib.suppress(Exception):
                answer = cbor2.loads(msg.data)
                if isinstance(answer, dict):
                    answers.append(answer)

        try:
            subscription = await self._nc.subscribe(inbox, cb=receive)
            await self._nc.publish(subject, cbor2.dumps(message), reply=inbox)
            await asyncio.sleep(window)
            await subscription.unsubscribe()
        except NatsError as error:
            raise BusError(f"NATS {_where(self.url)}: gather on {subject}: {error}") from None
        return answers

    async def close(self) -> None:
        try:
            await self._nc.drain()
        except (NatsError, asyncio.TimeoutError):
            await self._nc.close()


def _where(url: str) -> str:
    """host:port of a NATS URL, without credentials."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 4222}"
