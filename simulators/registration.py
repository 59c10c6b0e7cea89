"""The device's side of the Registration interface (LwM2M Core 1.1 §6.2): Register,
Update and De-register to its server, over the adapter's aiocoap context, and the
loop that sends an Update before the lifetime runs out (or when one is asked for).

:class:`DeviceRegistration` is a mixin of :class:`simulators.client.SimulatedDevice`,
which owns the socket, the object tree, the security set-up and the timers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Sequence

import aiocoap
import aiocoap.error
import structlog
from aiocoap import Code, Message

from ipso_objects import LwM2MPath
from ipso_objects.codecs import link_format

from .transport import DeviceStats, wait_event

if TYPE_CHECKING:
    from .dtls import DtlsClientInterface
    from .objects import DeviceObjects
    from .profiles import DeviceProfile

log = structlog.get_logger("simulators.client")

_LIFETIME = LwM2MPath.of(1, 0, 1)
_BINDING = LwM2MPath.of(1, 0, 7)
RETRY_COUNT = LwM2MPath.of(1, 0, 17)
RETRY_TIMER = LwM2MPath.of(1, 0, 18)
DEFAULT_RETRY_TIMER = 60
"""Seconds: the Communication Retry Timer's default (LwM2M Core 1.1 §6.2.1.1)."""


BOOTSTRAP_AFTER_FAILURES = 2
"""Failed Updates (or Registers) in a row after which a device with a Bootstrap-Server
bootstraps again: LwM2M 1.1 Core §6.2.1.1, "Bootstrap on Registration Failure"
(/1/x/16, true by default) — the server it knew is gone, bootstrap names another."""


class RegistrationFailed(Exception):
    """Register, Update or De-register got an error response or no response."""


class NoResponse(RegistrationFailed):
    """The server did not answer: no response in time, CoAP retransmissions exhausted,
    or a network error."""


class DeviceRegistration:
    """Register, Update, De-register and the update loop of a :class:`SimulatedDevice`
    (which provides the attributes below and :meth:`~SimulatedDevice.wake`)."""

    endpoint: str
    server_uri: str
    profile: DeviceProfile
    objects: DeviceObjects
    request_timeout: float
    update_fraction: float
    location: tuple[str, ...] | None
    asleep: bool
    stats: DeviceStats
    _port: int
    _context: aiocoap.Context | None
    _dtls: DtlsClientInterface | None
    _closing: bool
    _update_requested: asyncio.Event
    _last_update_at: float
    _sent: dict[str, Any]

    # provided by SimulatedDevice
    async def wake(self) -> None:
        raise NotImplementedError

    async def rebootstrap(self) -> bool:
        """Bootstrap again and register where it says; False for a device without a
        Bootstrap-Server."""
        raise NotImplementedError

    # -- registration interface -------------------------------------------------------------

    def _lifetime(self) -> int:
        return int(self.objects.get(_LIFETIME) or self.profile.lifetime)

    def _binding(self) -> str:
        return str(self.objects.get(_BINDING) or self.profile.binding)

    async def _request(self, message: Message) -> Message:
        if self._context is None:
            raise RegistrationFailed("the device is not started")
        uri = message.get_request_uri()
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    return await self._context.request(message).response
            except TimeoutError:
                if self._dtls is None or not uri.startswith("coaps://"):
                    raise
                # As Wakaama and Anjay do: silence over DTLS may mean the server lost the
                # session (a restart); handshake again and try once more.
                log.info("dtls_rehandshake", ep=self.endpoint)
                self._dtls.close_all()
                retry = Message(code=message.code, uri=uri, payload=message.payload,
                                content_format=message.opt.content_format)
                async with asyncio.timeout(self.request_timeout):
                    return await self._context.request(retry).response
        except TimeoutError:
            raise NoResponse(f"no response within {self.request_timeout:g} s") from None
        except aiocoap.error.Error as error:
            raise NoResponse(f"{type(error).__name__}: {error}") from None

    async def _sequence(self, build: Callable[[], Message]) -> Message:
        """One communication sequence (LwM2M Core 1.1 §6.2.1.1): while the server does not
        answer, up to Communication Retry Count (/1/0/17) attempts, the n-th retry after
        Communication Retry Timer (/1/0/18) × 2^(n-1) s; an error response is final. Without
        /1/0/17 the device makes one attempt (the spec's default is 5 × 60 s: a simulated
        fleet gives up at once unless asked to retry)."""
        attempts = max(1, int(self.objects.get(RETRY_COUNT) or 1))
        timer = float(self.objects.get(RETRY_TIMER) or DEFAULT_RETRY_TIMER)
        attempt = 1
        while True:
            try:
                return await self._request(build())  # a new message each time: new MID and token
            except NoResponse as error:
                if attempt >= attempts or self._closing:
                    raise
                wait = timer * 2 ** (attempt - 1)
                log.info("no_response", ep=self.endpoint, attempt=attempt, of=attempts, retry_in=wait,
                         reason=str(error))
                await asyncio.sleep(wait)
                attempt += 1

    def _message(self, code: Code, path: Sequence[str], query: Sequence[str] = (), payload: bytes = b"") -> Message:
        message = Message(code=code, uri=self.server_uri, payload=payload)
        message.opt.uri_path = path
        message.opt.uri_query = tuple(query)
        if payload:
            message.opt.content_format = 40
        return message

    async def register(self) -> None:
        """Send Register (POST /rd) and remember the Location-Path."""
        version = self.objects.lwm2m_version
        binding = self._binding()
        query = [f"ep={self.endpoint}", f"lt={self._lifetime()}", f"lwm2m={version}", f"b={binding}"]
        if self.profile.queue_mode and version != "1.0":
            query.append("Q")
        payload = link_format.encode(self.objects.registration_links())
        response = await self._sequence(lambda: self._message(Code.POST, ("rd",), query, payload))
        if response.code != Code.CREATED:
            raise RegistrationFailed(f"Register answered {response.code.dotted} {response.payload[:100]!r}")
        self.location = tuple(response.opt.location_path)
        self._sent = {"lt": self._lifetime(), "b": binding, "links": payload}
        self._last_update_at = asyncio.get_running_loop().time()
        self.stats.registrations += 1
        log.info("registered", ep=self.endpoint, location="/" + "/".join(self.location), port=self._port)

    async def update(self, *, send_objects: bool = False) -> None:
        """Send an Update; lt, b and the object list go along only when they changed
        (or ``send_objects``). Re-registers when the server answers 4.04."""
        if self.location is None:
            await self.register()
            return
        query = []
        lifetime, binding = self._lifetime(), self._binding()
        if lifetime != self._sent.get("lt"):
            query.append(f"lt={lifetime}")
        if binding != self._sent.get("b"):
            query.append(f"b={binding}")
        links = link_format.encode(self.objects.registration_links())
        payload = links if send_objects or links != self._sent.get("links") else b""
        location = self.location
        response = await self._sequence(lambda: self._message(Code.POST, location, query, payload))
        if response.code == Code.NOT_FOUND:
            log.info("registration_lost", ep=self.endpoint)
            self.location = None
            await self.register()
            return
        if not response.code.is_successful():
            raise RegistrationFailed(f"Update answered {response.code.dotted} {response.payload[:100]!r}")
        self._sent = {"lt": lifetime, "b": binding, "links": links}
        self._last_update_at = asyncio.get_running_loop().time()
        self.stats.updates += 1
        log.debug("updated", ep=self.endpoint, lt=lifetime)

    async def deregister(self) -> None:
        """Send De-register (DELETE on the registration)."""
        if self.location is None:
            return
        location, self.location = self.location, None
        response = await self._sequence(lambda: self._message(Code.DELETE, location))
        if not response.code.is_successful():
            raise RegistrationFailed(f"De-register answered {response.code.dotted}")
        log.info("deregistered", ep=self.endpoint)

    # -- update loop ---------------------------------------------------------------------------

    async def _update_loop(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closing:
            lifetime = self._lifetime()
            due = self._last_update_at + max(1.0, lifetime * self.update_fraction)
            await wait_event(self._update_requested, due - loop.time())
            self._update_requested.clear()
            try:
                if self.asleep:
                    await self.wake()
                elif failures >= BOOTSTRAP_AFTER_FAILURES and await self.rebootstrap():
                    log.info("rebootstrapped", ep=self.endpoint, server=self.server_uri)
                else:
                    await self.update()
                failures = 0
            except RegistrationFailed as error:
                failures += 1
                retry = min(30.0, max(1.0, lifetime * 0.1))
                log.warning("update_failed", ep=self.endpoint, reason=str(error), retry_in=retry)
                self._last_update_at = loop.time() + retry - max(1.0, lifetime * self.update_fraction)
