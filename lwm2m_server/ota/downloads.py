"""Module downloads of pull deliveries: the CoAP adapter's resolver for
``GET /fw/<token>``, which serves a module only to the device it is being
delivered to, and the grants that say which device that is (the rules are in
:mod:`..core.downloads`).

The rollouts set the grants (:meth:`ModuleDownloads.grant`) from their records:
a device may fetch the module of each pull delivery in progress. Grants are
saved, so a restarted server serves a resumed pull from its first datagram,
before the rollouts are loaded again.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Iterable

import structlog

from ..core.downloads import REPORT_INTERVAL_S, DownloadGrants
from ..core.registration import Registration
from ..store.base import Store
from ..transport.messages import Download, IncomingRequest, OutgoingResponse

GRANTS = "download-grant"
"""Document kind of the saved grants: key = endpoint, ``{"tokens": [...]}``."""


class ModuleDownloads:
    """``await load()`` before the adapter starts; then ``resolve`` is its resolver."""

    def __init__(
        self,
        files: Callable[[tuple[str, ...]], Download | None],
        store: Store,
        registration_of: Callable[[str], Registration | None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        log=None,
    ) -> None:
        self._files = files
        """The file behind ``("fw", token)`` (:meth:`.deployment.Deployment.download`)."""
        self._store = store
        self._registration_of = registration_of
        self._monotonic = monotonic
        self._grants = DownloadGrants()
        self._log = log or structlog.get_logger("lwm2m_server.downloads")
        self.on_grant: list[Callable[[str, frozenset[str]], Awaitable[None]]] = []
        """Awaited after each change of a grant (the cluster tells the other workers)."""

    async def load(self) -> None:
        """The saved grants (of deliveries under way when the server stopped)."""
        for endpoint, data in (await self._store.list_documents(GRANTS)).items():
            tokens = data.get("tokens")
            self._grants.set(endpoint, [t for t in tokens if isinstance(t, str)] if isinstance(tokens, list) else ())

    def granted(self) -> dict[str, frozenset[str]]:
        """Endpoint → the modules (tokens) it may fetch now."""
        return self._grants.by_endpoint()

    async def grant(self, endpoint: str, tokens: Iterable[str], now: float) -> None:
        """``endpoint`` may fetch exactly ``tokens`` from now on (none: nothing), at once
        (before this awaits anything), and saved."""
        tokens = frozenset(tokens)
        if tokens == self._grants.tokens(endpoint):
            return
        self._grants.set(endpoint, tokens)
        self._log.info("download_granted", ep=endpoint, tokens=sorted(tokens))
        if tokens:
            await self._store.put_document(GRANTS, endpoint, {"tokens": sorted(tokens)}, now)
        else:
            await self._store.delete_document(GRANTS, endpoint)
        for listener in self.on_grant:
            await listener(endpoint, tokens)

    def apply(self, endpoint: str, tokens: Iterable[str]) -> None:
        """A grant another worker made (and stored): the device may fetch through this one."""
        self._grants.set(endpoint, frozenset(tokens))

    def resolve(self, request: IncomingRequest) -> Download | OutgoingResponse | None:
        """The module a GET of ``/fw/<token>`` fetches, for the device it is delivered to;
        4.03 for any other peer, 4.04 when nobody is being delivered it; None for
        other paths (the server's routing answers those)."""
        path = request.uri_path
        if len(path) != 2 or path[0] != "fw":
            return None
        verdict = self._grants.check(path[1], request.address, request.identity, self._registration_of,
                                     self._monotonic())
        if verdict.report:
            self._log.warning("download_refused", token=path[1], address=request.address, identity=request.identity,
                              refused=verdict.refused, logged_every_s=REPORT_INTERVAL_S)
        if not verdict.allowed:
            return OutgoingResponse(verdict.code, verdict.reason.encode())
        return self._files(path)
