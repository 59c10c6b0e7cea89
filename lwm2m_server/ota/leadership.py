"""One rollout leader among the nodes that share a store: a lease in the store.

:class:`RolloutLeadership` takes the store lease ``rollouts`` for this node (its
``cluster.node`` name) and runs the orchestrator only while it holds it: on gaining
it, :meth:`Orchestrator.start` reads every rollout and each device's job state from
the store and resumes the deliveries in flight where they stood (as after a
restart); on losing it, :meth:`Orchestrator.stop`. The leader renews every
``renew_every_s`` (a third of the lease by default). Another node tries at the same
pace and takes the lease once it has expired, or at once when its holder released it
(a clean stop). A restarted node takes its own unexpired lease back at once.

Two leaders never overlap:

* the leader stops its orchestrator before the lease can pass on: at once when
  another node holds it, and when a renewal has not succeeded by ``expires_at -
  margin_s`` (the store unreachable or too slow);
* every rollout and device document the orchestrator writes is fenced: the store
  writes it only while the lease still has this holder and epoch, in the same
  statement (:meth:`~lwm2m_server.store.base.Store.put_document_if_lease`). A leader
  that lost the lease without noticing (paused, cut off, its clock astray) has its
  writes refused, and each delivery stops before its next device request, since every
  request follows a fenced save of the job.

The nodes' clocks must agree to better than ``margin_s`` (NTP does that easily).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Awaitable, Callable

import structlog

from ..store.base import Lease, Store, StoreError
from .deployment import Artifact, Deployment
from .orchestrator import Orchestrator

LEASE = "rollouts"
"""The store lease whose holder leads rollouts."""


class RolloutLeadership:
    """Runs ``orchestrator`` while this node holds the store lease; ``await start()``, ``await stop()``."""

    def __init__(
        self, store: Store, orchestrator: Orchestrator, *, holder: str, ttl_s: float = 15.0,
        renew_every_s: float | None = None, margin_s: float | None = None, clock: Callable[[], float] = time.time,
        before_start: Callable[[], Awaitable[None]] | None = None,
        after_start: Callable[[], Awaitable[None]] | None = None, name: str = LEASE,
    ) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.holder = holder
        """This node's name in the lease."""
        self.name = name
        self.ttl_s = ttl_s
        """How long a lease lasts from each renewal (``deployment.leader_lease_s``)."""
        self.renew_every_s = ttl_s / 3 if renew_every_s is None else renew_every_s
        """Between renewals, and between a standby's attempts to take the lease."""
        self.margin_s = ttl_s / 5 if margin_s is None else margin_s
        """The leader stops this long before its lease expires unless renewed by then."""
        if not 0 < self.renew_every_s < ttl_s - self.margin_s or self.margin_s < 0:
            raise ValueError(f"need 0 < renew_every_s ({self.renew_every_s:g}) < ttl_s - margin_s "
                             f"({ttl_s:g} - {self.margin_s:g})")
        self._clock = clock
        self._before_start, self._after_start = before_start, after_start
        self._lease: Lease | None = None
        self._lock = asyncio.Lock()  # attempts, stop and view refreshes take turns
        self._task: asyncio.Task | None = None
        self._seen: str | None = None  # the other holder last logged
        self._log = structlog.get_logger("lwm2m_server.leadership")
        # a lease that is never in force: nothing is written before this node wins the real one
        orchestrator.lease = Lease(name, holder, 0.0, 0)
        orchestrator.lease_margin_s = self.margin_s

    @property
    def is_leader(self) -> bool:
        """Whether this node leads rollouts now."""
        lease = self._lease
        return lease is not None and self._clock() < lease.expires_at - self.margin_s

    @property
    def lease(self) -> Lease | None:
        """The lease this node holds, None when it does not lead."""
        return self._lease

    async def start(self) -> None:
        """One attempt at once (a node alone takes the lease here and leads from now on),
        then renew or retry in the background. Errors of the first attempt (the store
        failing, the orchestrator or ``after_start`` failing) are raised."""
        await self._attempt(first=True)
        self._task = asyncio.create_task(self._run())

    async def stop(self, *, release: bool = True) -> None:
        """Stop leading: the orchestrator stops, and the lease is released (``release=False``
        leaves it to expire, as a node that dies does)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        async with self._lock:
            if self._lease is not None:
                self._lease = None
                await self.orchestrator.stop()
            if release:
                await self._release()

    async def leader(self) -> str | None:
        """The node that leads rollouts now (this one or another); None when none does or
        the store cannot say."""
        if self.is_leader:
            return self.holder
        try:
            lease = await self.store.get_lease(self.name)
        except StoreError:
            return None
        return lease.holder if lease is not None and lease.held(self._clock()) else None

    async def refresh_view(self) -> None:
        """On a node that does not lead: the orchestrator's rollouts as the store has them now."""
        if self.is_leader:
            return
        async with self._lock:
            if self._lease is None:
                await self.orchestrator.load()

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._delay())
            try:
                await self._attempt()
            except Exception:  # keep trying whatever one attempt did
                self._log.exception("rollout_leadership_failed", holder=self.holder)

    def _delay(self) -> float:
        """Until the next renewal, or the leader's deadline when that comes first."""
        lease = self._lease
        if lease is None:
            return self.renew_every_s
        return max(0.0, min(self.renew_every_s, lease.expires_at - self.margin_s - self._clock()))

    async def _attempt(self, first: bool = False) -> None:
        async with self._lock:
            held = self._lease
            now = self._clock()
            budget = self.renew_every_s if held is None else held.expires_at - self.margin_s - now
            try:
                if budget <= 0 and not first:
                    raise TimeoutError
                async with asyncio.timeout(None if first else budget):
                    lease = await self.store.acquire_lease(self.name, self.holder, self.ttl_s, now)
            except (StoreError, TimeoutError) as error:
                reason = str(error) or "the store did not answer in time"
                if first:
                    raise
                if held is not None and self._clock() >= held.expires_at - self.margin_s:
                    await self._lose(f"lease not renewed in time: {reason}")
                else:
                    self._log.warning("rollout_lease_unavailable", holder=self.holder, reason=reason)
                return
            if lease is None:
                if held is not None:
                    await self._lose("another node holds the lease")
                await self._note_other()
                return
            if held is not None and lease.epoch == held.epoch:
                self._lease = self.orchestrator.lease = lease  # renewed
                return
            if held is not None:  # it expired meanwhile and was taken anew: start over from the store
                await self._lose("the lease expired before it was renewed")
            await self._gain(lease, first)

    async def _gain(self, lease: Lease, first: bool) -> None:
        self.orchestrator.lease = lease  # its writes are fenced by this one from now on
        try:
            if self._before_start is not None:
                await self._before_start()
            await self.orchestrator.start()
            self._lease = lease  # leading (the API changes rollouts here) once the state is loaded
            if self._after_start is not None:
                try:
                    await self._after_start()
                except Exception:
                    if first:
                        raise
                    self._log.exception("rollout_leader_after_start_failed", holder=self.holder)  # still leads
        except BaseException as error:
            self._lease = None
            await self.orchestrator.stop()
            await self._release()
            if first or not isinstance(error, Exception):
                raise
            self._log.exception("rollout_leadership_start_failed", holder=self.holder)
            return
        self._seen = None
        self._log.info("rollout_leader", holder=self.holder, epoch=lease.epoch,
                       expires_in=round(lease.expires_at - self._clock(), 1))

    async def _lose(self, reason: str) -> None:
        self._lease = None  # is_leader is False before anything else happens
        self._log.warning("rollout_leadership_lost", holder=self.holder, reason=reason)
        await self.orchestrator.stop()

    async def _note_other(self) -> None:
        """Log the node that leads, once per change."""
        try:
            lease = await self.store.get_lease(self.name)
        except StoreError:
            return
        if lease is not None and lease.holder != self._seen:
            self._seen = lease.holder
            self._log.info("rollout_standby", holder=self.holder, leader=lease.holder, epoch=lease.epoch)

    async def _release(self) -> None:
        try:
            if await self.store.release_lease(self.name, self.holder):
                self._log.info("rollout_lease_released", holder=self.holder)
        except StoreError as error:  # it expires on its own
            self._log.warning("rollout_lease_not_released", holder=self.holder, reason=str(error))


async def remember_modules(deployment: Deployment) -> None:
    """Serve every module the store names whose file is at hand: a node taking over
    resumes deliveries of modules the former leader signed into the shared folder."""
    for data in (await deployment.store.list_documents("module")).values():
        artifact = Artifact(**data)
        if Path(artifact.file).is_file():
            deployment.remember(artifact)
