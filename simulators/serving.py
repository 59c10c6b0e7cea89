"""The device answering its server: requests to its objects (and to the Bootstrap
interface while it bootstraps), and observations with their notification timing.

:class:`DeviceServing` is a mixin of :class:`simulators.client.SimulatedDevice`,
which owns the socket, the object tree and the timers that call these methods.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiocoap import Code, Message

from ipso_objects import IpsoError, LwM2MPath, codecs

from .objects import Response
from .observe import Observation, effective_attributes
from .transport import LiveObservation, coap_code

log = structlog.get_logger("simulators.client")


class DeviceServing:
    # -- observations ------------------------------------------------------------------------

    def _evaluate(self) -> None:
        if self.asleep or not self._observations:
            return
        now = asyncio.get_running_loop().time()
        for live in list(self._observations.values()):
            if live.attributes_version != self.objects.attributes_version:
                live.observation.set_attributes(self._effective(live.paths))
                live.attributes_version = self.objects.attributes_version
            if live.observation.should_notify(now, self._observed(live.paths)):
                live.due.set()

    def _effective(self, paths: tuple[LwM2MPath, ...]) -> dict:
        pmin, pmax = self.objects.server_defaults()
        return {
            path: effective_attributes(path, self.objects.attributes, default_pmin=pmin, default_pmax=pmax)
            for path in paths
        }

    def _observed(self, paths: tuple[LwM2MPath, ...]) -> Any:
        if len(paths) == 1:
            return self.objects.observed_value(paths[0])
        return {path: self.objects.observed_value(path) for path in paths}

    def _next_deadline(self) -> float | None:
        deadlines = [d for d in (live.observation.next_deadline() for live in self._observations.values())
                     if d is not None]
        return min(deadlines) if deadlines else None

    # -- serving requests ---------------------------------------------------------------------

    def _handle(self, request: Message) -> Response:
        content_format = request.opt.content_format
        accept = request.opt.accept
        return self.objects.handle(
            request.code.name,
            request.opt.uri_path,
            request.opt.uri_query,
            None if content_format is None else int(content_format),
            None if accept is None else int(accept),
            request.payload,
            request.opt.observe,
            now=time.time(),
        )

    def _respond(self, request: Message) -> Message:
        self.stats.requests += 1
        if self.bootstrap is not None and self.bootstrap.active:
            return self._to_message(self._bootstrap_request(request))
        response = self._handle(request)
        log.debug("request", ep=self.endpoint, method=request.code.name,
                  path="/" + "/".join(request.opt.uri_path), code=response.code)
        self._after_change()
        return self._to_message(response)

    def _bootstrap_request(self, request: Message) -> Response:
        assert self.bootstrap is not None
        content_format, accept = request.opt.content_format, request.opt.accept
        response = self.bootstrap.handle(
            request.code.name, request.opt.uri_path, request.opt.uri_query,
            None if content_format is None else int(content_format), None if accept is None else int(accept),
            request.payload)
        log.debug("bootstrap_interface", ep=self.endpoint, method=request.code.name,
                  path="/" + "/".join(request.opt.uri_path), code=response.code)
        if tuple(request.opt.uri_path) == ("bs",):
            self._bootstrap_done.set()  # Bootstrap-Finish, accepted or not
        return response

    @staticmethod
    def _to_message(response: Response) -> Message:
        message = Message(code=coap_code(response.code), payload=response.payload)
        if response.content_format is not None:
            message.opt.content_format = int(response.content_format)
        if response.location_path:
            message.opt.location_path = response.location_path
        return message

    @staticmethod
    def _observable(request: Message) -> bool:
        if request.code == Code.FETCH:
            return True
        return request.code == Code.GET and request.opt.accept != 40

    def _observed_paths(self, request: Message) -> tuple[LwM2MPath, ...]:
        if request.code == Code.FETCH:
            return tuple(codecs.decode_paths(int(request.opt.content_format), request.payload))
        return (LwM2MPath.parse("/" + "/".join(request.opt.uri_path)),)

    def _cancel_observation(self, request: Message) -> None:
        live = self._observations.pop((request.remote, request.token), None)
        if live is not None and live.task is not None:
            live.task.cancel()

    async def _serve_observation(self, pipe: Any) -> None:
        request = pipe.request
        self.stats.requests += 1
        response = self._handle(request)
        message = self._to_message(response)
        try:
            paths = self._observed_paths(request) if response.ok else ()
        except IpsoError:
            paths = ()
        if not paths:
            pipe.add_response(message, is_last=True)
            return
        loop = asyncio.get_running_loop()
        # Under OSCORE the inner request has no token of its own: each observation is its own.
        key = (request.remote, request.token or object())
        if request.token:
            self._cancel_observation(request)  # RFC 7641 §4.1: same token re-registers
        live = LiveObservation(
            Observation(request.token, paths, self._effective(paths), loop.time(), self._observed(paths)),
            paths, asyncio.current_task(), self.objects.attributes_version,
        )
        self._observations[key] = live
        self._wakeup.set()
        message.opt.observe = sequence = 0
        pipe.add_response(message, is_last=False)
        log.debug("observe", ep=self.endpoint, paths=[str(p) for p in paths])
        try:
            while True:
                await live.due.wait()
                live.due.clear()
                response = self._handle(request)
                message = self._to_message(response)
                if not response.ok:
                    pipe.add_response(message, is_last=True)
                    return
                sequence = (sequence + 1) % (1 << 24)
                message.opt.observe = sequence
                self.stats.notifications += 1
                pipe.add_response(message, is_last=False)
        finally:
            if self._observations.get(key) is live:
                del self._observations[key]
