"""OSCORE (RFC 8613) for the CoAP adapter: the server's security contexts, backed by
the security store, and the aiocoap pieces that use them. Part of the CoAP adapter.

- :class:`StoredContext`: an aiocoap security context (aiocoap derives the keys
  and protects/verifies messages) whose sender sequence numbers are reserved in
  the store before they are used, and whose replay window is saved at a clean
  stop. After an unclean stop the window is unknown, and the first request of the
  device is answered 4.01 with an Echo option that aiocoap clients (and other
  RFC 8613 Appendix B.1.2 clients) repeat their request with.
- :class:`OscoreContexts`: finds the context of an incoming request by its kid,
  reading the store afresh each time, so a credential added, replaced or removed
  applies at the next request; it is aiocoap's ``server_credentials`` for
  :class:`OscoreSite`.
- :class:`OscoreSite`: aiocoap's ``OscoreSiteWrapper`` without EDHOC. Protected
  requests reach the inner site unprotected, with an ``OSCOREAddress`` remote.
- :class:`OscoreRequests`: aiocoap's ``TransportOSCORE`` (server→device requests
  to an ``OSCOREAddress``), changed so that an observation nobody follows any more
  ends: as shipped, the OSCORE request task keeps the wire observation open forever.

A device talking OSCORE is addressed as ``oscore://<recipient id hex>@host:port``,
so its requests never share a remote with plain CoAP from the same port (a forged
plain datagram cannot make the server talk plain to it).
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
from typing import Any, Callable

from aiocoap import oscore
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.transports.oscore import OSCOREAddress, TransportOSCORE

from ..security.oscore import (
    AEAD_ALGORITHMS, HKDF_ALGORITHMS, IDENTITY_PREFIX, OscoreCredential, SequenceReservation, SequenceState,
    identity_for, is_oscore_identity,
)

SCHEME = "oscore://"

__all__ = ["OSCOREAddress", "OscoreContexts", "OscoreRequests", "OscoreSite", "StoredContext",
           "address_of", "authenticated_identity", "refuse_reason", "split_address"]


def address_of(identity: str, hostinfo: str) -> str:
    """``oscore://<recipient id hex>@host:port``."""
    return f"{SCHEME}{identity[len(IDENTITY_PREFIX):]}@{hostinfo}"


def split_address(address: str) -> tuple[str, str] | None:
    """``(identity, hostinfo)`` of an address made by :func:`address_of`; None otherwise."""
    if not address.startswith(SCHEME) or "@" not in address:
        return None
    kid, _, hostinfo = address[len(SCHEME):].partition("@")
    return IDENTITY_PREFIX + kid, hostinfo


class StoredContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):
    """One endpoint's OSCORE security context; its sequence state goes to ``save``."""

    def __init__(self, credential: OscoreCredential, state: SequenceState,
                 save: Callable[[OscoreCredential, SequenceState], None]) -> None:
        self.credential = credential
        self.fingerprint = credential.fingerprint()
        self.identity = credential.identity
        """``oscore:<recipient id hex>``: who a request verified under this context is."""
        self.authenticated_claims = [credential.identity]
        self.alg_aead = oscore.algorithms[AEAD_ALGORITHMS[credential.aead][0]]
        self.hashfun = oscore.hashfunctions[HKDF_ALGORITHMS[credential.hkdf]]
        self.sender_id = credential.sender_id
        self.recipient_id = credential.recipient_id
        self.id_context = credential.id_context
        self.derive_keys(credential.master_salt, credential.master_secret)
        self.echo_recovery = secrets.token_bytes(8)
        self._save = save
        self._reservation = SequenceReservation(state.reserved)
        self.sender_sequence_number = state.reserved
        self.recipient_replay_window = oscore.ReplayWindow(oscore.DEFAULT_WINDOWSIZE, self._window_changed)
        self._window_saved = False
        if state.replay_window is not None:
            try:
                self.recipient_replay_window.initialize_from_persisted(state.replay_window)
                self.recipient_replay_window.is_valid(0)  # a malformed saved window fails here
                self._window_saved = True
            except (KeyError, TypeError, ValueError):
                self.recipient_replay_window = oscore.ReplayWindow(oscore.DEFAULT_WINDOWSIZE, self._window_changed)

    def __repr__(self) -> str:
        return f"<StoredContext {self.identity}>"

    def post_seqnoincrease(self) -> None:
        """Called by aiocoap after taking a number and before using it: reserve ahead."""
        bound = self._reservation.needs_reserving(self.sender_sequence_number)
        if bound is not None:
            self._save(self.credential, SequenceState(bound, self._window_state()))
            self._reservation.reserved_to(bound)

    def _window_state(self) -> dict | None:
        if not self._window_saved or not self.recipient_replay_window.is_initialized():
            return None
        return self.recipient_replay_window.persist()

    def _window_changed(self) -> None:
        """The window moved: the saved copy is stale from now on (one write)."""
        if self._window_saved:
            self._window_saved = False
            self._save(self.credential, SequenceState(self._reservation.reserved, None))

    def close(self) -> None:
        """Save the replay window as it is (a clean stop needs no Echo round after)."""
        window = self.recipient_replay_window.persist() if self.recipient_replay_window.is_initialized() else None
        self._save(self.credential, SequenceState(self._reservation.reserved, window))
        self._window_saved = window is not None


class OscoreContexts:
    """The server's OSCORE contexts, found in the security store (a
    :class:`~lwm2m_server.security.credentials.CredentialStore`)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._live: dict[bytes, StoredContext] = {}  # recipient id → context

    def find_oscore(self, unprotected: dict) -> StoredContext:
        """The context of an incoming request's kid (and kid context); KeyError when
        there is none (aiocoap answers 4.01 Unauthorized)."""
        kid = unprotected.get(oscore.COSE_KID)
        if not isinstance(kid, bytes):
            raise KeyError("no kid")
        credential = self._store.oscore_by_recipient(kid)
        if credential is None:
            raise KeyError("unknown kid")
        context = self._context(credential)
        if context.get_oscore_context_for(unprotected) is None:
            raise KeyError("kid context does not match")
        return context

    def for_identity(self, identity: str) -> StoredContext | None:
        """The current context of ``oscore:<hex>``; None when its credential is gone."""
        if not is_oscore_identity(identity):
            return None
        try:
            recipient_id = bytes.fromhex(identity[len(IDENTITY_PREFIX):])
        except ValueError:
            return None
        credential = self._store.oscore_by_recipient(recipient_id)
        if credential is None or identity_for(credential.recipient_id) != identity:
            return None
        return self._context(credential)

    def _context(self, credential: OscoreCredential) -> StoredContext:
        context = self._live.get(credential.recipient_id)
        if context is not None and context.fingerprint == credential.fingerprint():
            return context
        if context is not None:  # the credential was replaced: the old context is done
            context.close()
        self._store.claim_oscore_state()
        context = StoredContext(credential, self._store.sequence_state(credential), self._store.save_sequence_state)
        self._live[credential.recipient_id] = context
        return context

    def close(self) -> None:
        """Save every live context's state (at server stop)."""
        live, self._live = self._live, {}
        for context in live.values():
            context.close()


class OscoreSite(OscoreSiteWrapper):
    """aiocoap's OSCORE site wrapper; ``/.well-known/edhoc`` goes to the inner site
    (there is no EDHOC here)."""

    def __init__(self, inner_site: Any, contexts: OscoreContexts) -> None:
        super().__init__(inner_site, contexts)

    async def _render_edhoc_to_pipe(self, pipe: Any) -> None:
        await self._inner_site.render_to_pipe(pipe)


_WIRE_REQUESTS: contextvars.ContextVar[list] = contextvars.ContextVar("tinymlaas_oscore_wire_requests")


class _RecordingWire:
    """The forwarding context, noting each wire request of the current OSCORE request."""

    def __init__(self, wire: Any) -> None:
        self._wire = wire
        self.loop = wire.loop

    def request(self, message: Any) -> Any:
        sent = self._wire.request(message)
        recorded = _WIRE_REQUESTS.get(None)
        if recorded is not None:
            recorded.append(sent)
        return sent


class _WithOuterToken:
    """The pipe of a request to an OSCORE device, handing on each unprotected response
    with the token of the protected (outer) message it came in: aiocoap leaves it
    empty, and a Cancel Observation must repeat it (RFC 7641 §3.6)."""

    def __init__(self, pipe: Any, wire_requests: list) -> None:
        self._pipe = pipe
        self._wire_requests = wire_requests

    @property
    def request(self) -> Any:
        return self._pipe.request

    def add_response(self, response: Any, is_last: bool = False) -> None:
        outer = self._wire_requests[-1].response if self._wire_requests else None
        if outer is not None and outer.done() and not outer.cancelled() and outer.exception() is None:
            response.token = outer.result().token
        self._pipe.add_response(response, is_last)

    def add_exception(self, exception: BaseException) -> None:
        self._pipe.add_exception(exception)


class OscoreRequests(TransportOSCORE):
    """Requests to an ``OSCOREAddress``, protected by its context (aiocoap's
    TransportOSCORE). When nobody wants more responses (an observation cancelled),
    the request task ends and its wire observation is cancelled, so the device's
    next notification is answered with a Reset (passive cancel, RFC 7641 §3.6)."""

    def __init__(self, context: Any) -> None:
        super().__init__(context, context)
        self._wire = _RecordingWire(context)

    def request(self, request: Any) -> None:
        task = self.loop.create_task(self._request(request), name=f"OSCORE request {request!r}")
        self._tasks.add(task)

        def done(finished: asyncio.Task) -> None:
            self._tasks.discard(finished)
            if finished.cancelled():
                return
            failure = finished.exception()
            if failure is not None:
                try:
                    request.add_exception(failure)
                except asyncio.InvalidStateError:
                    pass  # the requester cancelled; aiocoap drops its interest a loop turn later

        task.add_done_callback(done)
        request.on_interest_end(lambda: task.done() or task.cancel())

    async def _request(self, request: Any) -> None:
        recorded: list = []
        _WIRE_REQUESTS.set(recorded)  # this task's own context
        try:
            await super()._request(_WithOuterToken(request, recorded))
        finally:
            for wire in recorded:
                observation = getattr(wire, "observation", None)
                if observation is not None and not observation.cancelled:
                    observation.cancel()


def authenticated_identity(remote: Any) -> str | None:
    """The OSCORE identity a request came with (None: not OSCORE-protected)."""
    if isinstance(remote, OSCOREAddress) and isinstance(remote.security_context, StoredContext):
        return remote.security_context.identity
    return None


def refuse_reason(remote: Any) -> str | None:
    """Why an OSCORE-protected request cannot be taken, or None."""
    if isinstance(remote, OSCOREAddress) and getattr(remote.underlying_address, "scheme", "coap") != "coap":
        return "OSCORE is accepted over plain coap:// only"
    return None

