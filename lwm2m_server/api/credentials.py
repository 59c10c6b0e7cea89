"""The management API's credential routes: the security store's PSKs and OSCORE
contexts, added, listed and removed; a key never appears in an answer or a log."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from ..security.credentials import CredentialConflict, CredentialStorageError, CredentialStore, oscore_credential
from ..security.psk import SCOPES, CredentialError, PskCredential, parse_hex, parse_key
from .errors import ApiError


class CredentialRoutes:
    """``GET /credentials``, ``PUT`` and ``DELETE /credentials/{ep}``."""

    def __init__(self, store: CredentialStore | None, log: Any) -> None:
        self._store = store
        self._log = log

    def register(self, router: web.UrlDispatcher, prefix: str) -> None:
        router.add_get(f"{prefix}/credentials", self.list_credentials)
        router.add_put(f"{prefix}/credentials/{{ep}}", self.put_credential)
        router.add_delete(f"{prefix}/credentials/{{ep}}", self.delete_credentials)

    def _credential_store(self) -> CredentialStore:
        if self._store is None:
            raise ApiError(503, "the security store is not running in this server")
        return self._store

    def _credential_failure(self, error: CredentialError) -> ApiError:
        if isinstance(error, CredentialConflict):
            return ApiError(409, error.reason)
        if isinstance(error, CredentialStorageError):
            self._log.error("credentials_store_failed", error=error.reason)
            return ApiError(503, "credentials storage unavailable")
        return ApiError(400, error.reason)

    async def list_credentials(self, request: web.Request) -> web.Response:
        try:
            credentials = self._credential_store().list()
        except CredentialError as error:
            raise self._credential_failure(error) from None
        return web.json_response([c.public() for c in credentials])

    async def put_credential(self, request: web.Request) -> web.Response:
        """``{"identity": "...", "key": "<hex>", "scope": "server", "replace": false}``, or
        an OSCORE context: ``{"mechanism": "oscore", "secret": "<hex>", "sender_id":
        "<hex>", "recipient_id": "<hex>", "salt", "id_context", "aead", "replace"}``
        (ids are the server's; see :mod:`lwm2m_server.security.oscore`)."""
        store = self._credential_store()
        endpoint = request.match_info["ep"]
        try:
            body = json.loads(await request.text())
        except UnicodeDecodeError:
            raise ApiError(400, "body is not UTF-8 JSON") from None
        except json.JSONDecodeError as error:  # its message names a position, never the text
            raise ApiError(400, f"body is not JSON: {error.msg} at character {error.pos}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "give {\"key\": \"<hex>\", \"identity\", \"scope\", \"replace\"}")
        mechanism = body.get("mechanism", "psk")
        if not isinstance(mechanism, str) or mechanism not in ("psk", "oscore"):
            raise ApiError(400, "mechanism: must be \"psk\" or \"oscore\"")
        if mechanism == "oscore":
            return self._put_oscore(store, endpoint, body)
        body.pop("mechanism", None)
        unknown = sorted(set(body) - {"identity", "key", "scope", "replace"})
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                "known: identity, key, scope, replace")
        identity, key, scope = body.get("identity", endpoint), body.get("key"), body.get("scope", "server")
        replace = body.get("replace", False)
        if not isinstance(key, str):
            raise ApiError(400, "key: give the key as a hex string")
        if not isinstance(identity, str):
            raise ApiError(400, "identity: must be a string")
        if scope not in SCOPES:
            raise ApiError(400, f"scope: must be one of {', '.join(SCOPES)}")
        if not isinstance(replace, bool):
            raise ApiError(400, "replace: must be true or false")
        try:
            credential = PskCredential(endpoint, identity, parse_key(key), scope)
            replaced = store.add(credential, replace=replace, now=time.time())
            stored = store.for_endpoint(endpoint, scope)
        except CredentialError as error:
            raise self._credential_failure(error) from None
        self._log.info("credential_stored", ep=endpoint, scope=scope, identity=identity, replaced=replaced)
        body = stored.public() if stored is not None else credential.public()
        return web.json_response(body, status=200 if replaced else 201)

    def _put_oscore(self, store: CredentialStore, endpoint: str, body: dict) -> web.Response:
        fields = {"mechanism", "secret", "sender_id", "recipient_id", "salt", "id_context", "aead", "replace"}
        unknown = sorted(set(body) - fields)
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(fields))}")
        for name in ("secret", "sender_id", "recipient_id"):
            if not isinstance(body.get(name), str):
                raise ApiError(400, f"{name}: give it as a hex string")
        for name in ("salt", "id_context"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise ApiError(400, f"{name}: give it as a hex string")
        aead, replace = body.get("aead", 10), body.get("replace", False)
        if isinstance(aead, bool) or not isinstance(aead, int):
            raise ApiError(400, "aead: a COSE algorithm number")
        if not isinstance(replace, bool):
            raise ApiError(400, "replace: must be true or false")
        try:
            credential = oscore_credential(
                endpoint, master_secret=parse_hex(body["secret"], "secret"),
                sender_id=parse_hex(body["sender_id"], "sender_id", allow_empty=True),
                recipient_id=parse_hex(body["recipient_id"], "recipient_id", allow_empty=True),
                master_salt=parse_hex(body.get("salt") or "", "salt", allow_empty=True),
                id_context=None if body.get("id_context") is None
                else parse_hex(body["id_context"], "id_context", allow_empty=True),
                aead=aead)
            replaced = store.add_oscore(credential, replace=replace, now=time.time())
            stored = store.oscore_for_endpoint(endpoint)
        except CredentialError as error:
            raise self._credential_failure(error) from None
        self._log.info("credential_stored", ep=endpoint, scope="server", mechanism="oscore",
                       identity=credential.identity, replaced=replaced)
        answer = stored.public() if stored is not None else credential.public()
        return web.json_response(answer, status=200 if replaced else 201)

    async def delete_credentials(self, request: web.Request) -> web.Response:
        """``DELETE /credentials/{ep}[?scope=server|bootstrap][&mechanism=psk|oscore]``: 204,
        or 404 if it had none."""
        store = self._credential_store()
        endpoint, scope = request.match_info["ep"], request.query.get("scope")
        mechanism = request.query.get("mechanism")
        if scope is not None and scope not in SCOPES:
            raise ApiError(400, f"scope: must be one of {', '.join(SCOPES)}")
        if mechanism not in (None, "psk", "oscore"):
            raise ApiError(400, "mechanism: must be psk or oscore")
        try:
            removed = store.remove(endpoint, scope, mechanism)
        except CredentialError as error:
            raise self._credential_failure(error) from None
        if not removed:
            raise ApiError(404, f"endpoint {endpoint!r} has no {scope + ' credential' if scope else 'credentials'}")
        self._log.info("credentials_removed", ep=endpoint, scope=scope or "all", count=removed)
        return web.Response(status=204)
