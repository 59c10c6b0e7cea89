"""Who may register as which endpoint (sans-I/O).

Over CoAPS the DTLS handshake proves the peer holds the key of a PSK identity;
over OSCORE a request that verifies under an endpoint's security context proves
the peer holds that context (identity ``oscore:<recipient id hex>``, see
:mod:`lwm2m_server.security.oscore`). These rules tie that identity to an endpoint name:

- Register: the identity must be the endpoint's *server* credential. A bootstrap
  credential does not do (it opens only ``/bs``).
- Plain CoAP Register: refused for an endpoint that has a server credential (it
  must use it), so nobody can take over a provisioned name without its key.
  Unprotected CoAP means neither DTLS nor OSCORE.
- Update, De-register and Send: from the identity the registration was made with,
  and that identity must still be the endpoint's credential (removing a credential
  ends the device's access at its next message).

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


def forbidden(reason: str) -> RegistrationError:
    return RegistrationError("4.03", reason)


def check_identity(endpoint: str, identity: str | None, credentials: CredentialLookup | None,
                   scope: str = SERVER_SCOPE) -> None:
    """Raise 4.03 unless a peer proving ``identity`` (None: plain CoAP) may act as
    ``endpoint`` on the interface of ``scope``."""
    if identity is None:
        credential = credentials.for_endpoint(endpoint, scope) if credentials is not None else None
        if credential is not None:
            how = "protect its requests with OSCORE" if is_oscore_identity(credential.identity) \
                else "use CoAPS (DTLS) with them"
            raise forbidden(f"endpoint {endpoint!r} has {scope} credentials: {how}")
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
    """Raise 4.03 unless a request proving ``identity`` may act for ``registration``."""
    if identity != registration.identity:
        shown = "plain CoAP" if identity is None else f"identity {identity!r}"
        raise forbidden(f"endpoint {registration.endpoint!r} registered with "
                        f"{'plain CoAP' if registration.identity is None else 'another identity'}, "
                        f"not {shown}")
    if identity is not None:
        check_identity(registration.endpoint, identity, credentials)
