"""Who may register as which endpoint (sans-I/O).

Over CoAPS the DTLS handshake proves the peer holds the key of a PSK identity;
over OSCORE a request that verifies under an endpoint's security context proves
the peer holds that context (identity ``oscore:<recipient id hex>``, see
:mod:`lwm2m_server.security.oscore`). These rules tie that identity to an endpoint name:

- Register: the identity must be the endpoint's *server* credential. A bootstrap
  credential does not do (it opens only ``/bs``).
- Plain CoAP Register: refused for an endpoint that has *any* credential (server
  or bootstrap scope, PSK or OSCORE), so nobody can take a provisioned name
  without its key, including between ``credentials import`` of bootstrap keys
  and the device's first bootstrap. The reason says what to use: CoAPS with the
  server PSK, OSCORE, or "bootstrap first over CoAPS" when the endpoint has only
  a bootstrap credential. Unprotected CoAP means neither DTLS nor OSCORE.
- Update, De-register and Send: from the identity the registration was made with
  (else 4.03, and the registration is left alone: the sender is someone else).
  That identity must still be the endpoint's credential, and a plain registration
  stays allowed only while its endpoint has no credential. When that no longer
  holds (a credential was added to a plain-registered endpoint, or the
  registration's own credential was removed) the refusal is
  :class:`RegistrationEnded`: the server removes the registration. It checks the
  same (:func:`check_registration`) before it sends a registration a request.

Refusals are 4.03 Forbidden with a reason that names the endpoint and identity,
never a key.
"""

from __future__ import annotations

from typing import Protocol

from ..security.oscore import is_oscore_identity
from .registration import Registration, RegistrationError

SERVER_SCOPE = "server"
BOOTSTRAP_SCOPE = "bootstrap"


class Credential(Protocol):
    endpoint: str
    identity: str
    scope: str


class CredentialLookup(Protocol):
    """What the rules need of the security store."""

    def by_identity(self, identity: str) -> Credential | None: ...

    def for_endpoint(self, endpoint: str, scope: str = SERVER_SCOPE) -> Credential | None: ...

    def has_any(self, endpoint: str) -> bool:
        """True when ``endpoint`` has a credential of any scope."""
        ...


def forbidden(reason: str) -> RegistrationError:
    return RegistrationError("4.03", reason)


class RegistrationEnded(RegistrationError):
    """4.03 for a message of a registration that is no longer allowed at all (its
    endpoint's credentials changed): the server ends the registration."""

    def __init__(self, reason: str) -> None:
        super().__init__("4.03", reason)


def plain_refusal(endpoint: str, credentials: CredentialLookup | None) -> str | None:
    """Why ``endpoint`` may not use plain CoAP (it has a credential of either scope),
    or None when it may."""
    if credentials is None or not credentials.has_any(endpoint):  # most devices: one lookup
        return None
    server = credentials.for_endpoint(endpoint, SERVER_SCOPE)
    if server is not None:
        how = "protect its requests with OSCORE" if is_oscore_identity(server.identity) \
            else "use CoAPS (DTLS) with them"
        return f"endpoint {endpoint!r} has server credentials: {how}"
    if credentials.for_endpoint(endpoint, BOOTSTRAP_SCOPE) is not None:
        return (f"endpoint {endpoint!r} has a bootstrap credential: bootstrap first over CoAPS, "
                "then register with the server credentials it gets")
    return None


def check_identity(endpoint: str, identity: str | None, credentials: CredentialLookup | None,
                   scope: str = SERVER_SCOPE) -> None:
    """Raise 4.03 unless a peer proving ``identity`` (None: plain CoAP) may act as
    ``endpoint`` on the interface of ``scope``. Plain CoAP is refused to an endpoint
    with a credential of any scope."""
    if identity is None:
        reason = plain_refusal(endpoint, credentials)
        if reason is not None:
            raise forbidden(reason)
        return
    credential = credentials.by_identity(identity) if credentials is not None else None
    if credential is None:
        raise forbidden(f"identity {identity!r} has no credentials here")
    if credential.scope != scope:
        raise forbidden(f"identity {identity!r} is a {credential.scope} credential, not a {scope} one")
    if credential.endpoint != endpoint:
        raise forbidden(f"identity {identity!r} is not the credential of endpoint {endpoint!r}")


def check_same_peer(registration: Registration, identity: str | None,
                    credentials: CredentialLookup | None) -> None:
    """Raise 4.03 unless a request proving ``identity`` may act for ``registration``;
    :class:`RegistrationEnded` when the registration itself is no longer allowed."""
    if identity != registration.identity:
        shown = "plain CoAP" if identity is None else f"identity {identity!r}"
        raise forbidden(f"endpoint {registration.endpoint!r} registered with "
                        f"{'plain CoAP' if registration.identity is None else 'another identity'}, "
                        f"not {shown}")
    check_registration(registration, credentials)


def check_registration(registration: Registration, credentials: CredentialLookup | None) -> None:
    """Raise :class:`RegistrationEnded` when the credentials no longer admit
    ``registration`` (made over plain CoAP by an endpoint that has credentials now,
    or with an identity that is no longer the endpoint's)."""
    try:
        check_identity(registration.endpoint, registration.identity, credentials)
    except RegistrationEnded:
        raise
    except RegistrationError as error:
        raise RegistrationEnded(f"registration of {registration.endpoint!r} ended: {error.reason}") from None
