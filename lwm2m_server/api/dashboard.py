"""The web dashboard: a single page served at ``/`` on the API's port, its login
sessions, and the few ``/api/v1`` routes it needs beyond the JSON API's.

Log in with the API token (``POST /dashboard/login``); the answer sets a session
cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over https) naming a random
id held in memory with an expiry, and gives the session's CSRF token. The page's
script calls the same ``/api/v1`` routes as any client, with the cookie and, on
every method but GET/HEAD, the CSRF token in ``X-CSRF-Token``
(:meth:`Dashboard.refusal`, asked by the API's auth middleware when no bearer
token was given). The pages themselves hold no data and need no login; they are
sent with ``Content-Security-Policy: default-src 'self'``.

Routes added under ``/api/v1`` (all need the token or a session):

- ``GET /events/sse[?endpoint=][&kinds=a,b]``: the event stream as Server-Sent
  Events (``event: <kind>``, ``data: <the same JSON as /events>``);
- ``GET /fleet``: every registered device with its class, status, security and
  installed model, for the fleet table;
- ``GET /models/{key}/modules``: the compiled modules of a model per device
  class (size, arena, plugin) and why classes were found incompatible;
- ``GET /objects/{id}``: an object's definition (names, operations, units).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from .errors import ApiError

API = "/api/v1"
STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
"""The files under ``/static/``: nothing else of the folder is served."""
COOKIE = "tinymlaas_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_TTL_S = 8 * 3600.0
MAX_SESSIONS = 256
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
KEEPALIVE_S = 15.0


@dataclass(slots=True)
class Session:
    csrf: str
    expires_at: float


class Dashboard:
    """The page, its assets, the login sessions and the dashboard's API routes."""

    def __init__(self, api: Any, *, security: Callable[[str | None], str],
                 firmware_update: Callable[[Any], str | None], ttl_s: float = SESSION_TTL_S) -> None:
        """``api``: the :class:`.http.ManagementApi` (its server, token, deployment and
        event serialiser); ``security`` and ``firmware_update``: how it words those."""
        self.api = api
        self._security = security
        self._firmware_update = firmware_update
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._streams: dict[asyncio.Queue, str | None] = {}
        """Open SSE streams and the session each was opened with (None: the bearer token)."""

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/static/{name}", self.asset)
        r.add_post("/dashboard/login", self.login)
        r.add_post("/dashboard/logout", self.logout)
        r.add_get("/dashboard/session", self.session_info)
        r.add_get(f"{API}/events/sse", self.sse)
        r.add_get(f"{API}/fleet", self.fleet)
        r.add_get(f"{API}/models/{{key}}/modules", self.modules)
        r.add_get(f"{API}/objects/{{id}}", self.object_definition)
        app.on_shutdown.append(self._end_streams)

    # -- sessions ---------------------------------------------------------------------

    @staticmethod
    def public(path: str) -> bool:
        """Paths the API's bearer check leaves to the dashboard (they hold no data or check the session themselves)."""
        return path == "/" or path.startswith("/static/") or path.startswith("/dashboard/")

    def _session(self, request: web.Request) -> tuple[str, Session] | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires_at <= time.time():
            self._sessions.pop(sid, None)
            return None
        return sid, session

    def refusal(self, request: web.Request) -> web.Response | None:
        """None when a session cookie admits ``request`` (with the CSRF header on a
        change); else the answer: 401 without a valid session, 403 without the CSRF token."""
        found = self._session(request)
        if found is None:
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        if request.method not in SAFE_METHODS:
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), found[1].csrf.encode()):
                return web.json_response({"error": f"missing or wrong {CSRF_HEADER} header"}, status=403)
        return None

    def _prune(self) -> None:
        now = time.time()
        for sid in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[sid]
        while len(self._sessions) >= MAX_SESSIONS:  # the oldest goes
            del self._sessions[min(self._sessions, key=lambda s: self._sessions[s].expires_at)]

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """A browser's Origin (when it sends one) must be this server: no login from another site."""
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    async def login(self, request: web.Request) -> web.Response:
        """``{"token": "..."}`` (JSON) or a form field ``token``: 200 with the CSRF token and a cookie, or 401."""
        if not self._same_origin(request):
            return web.json_response({"error": "cross-origin login refused"}, status=403)
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.text())
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = None
            token = body.get("token") if isinstance(body, dict) else None
        else:
            token = (await request.post()).get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.api._token.encode()):
            await asyncio.sleep(0.2)  # slows guessing a little; the token is long anyway
            self.api._log.warning("dashboard_login_refused", remote=request.remote)
            return web.json_response({"error": "wrong token"}, status=401)
        self._prune()
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), time.time() + self.ttl_s)
        self._sessions[sid] = session
        response = web.json_response({"csrf": session.csrf, "expires_at": session.expires_at})
        response.set_cookie(COOKIE, sid, max_age=int(self.ttl_s), path="/", httponly=True,
                            samesite="Strict", secure=request.secure)
        response.headers["Cache-Control"] = "no-store"
        self.api._log.info("dashboard_login", remote=request.remote)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """Ends the session (needs the CSRF header, like every change)."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        sid, _ = self._session(request)
        self._sessions.pop(sid, None)
        self._wake(lambda stream_sid: stream_sid == sid)  # its event streams end now
        response = web.json_response({"logged_out": True})
        response.del_cookie(COOKIE, path="/", samesite="Strict", secure=request.secure, httponly=True)
        return response

    async def session_info(self, request: web.Request) -> web.Response:
        """The current session's CSRF token (a page reload keeps the session), or 401."""
        found = self._session(request)
        if found is None:
            return web.json_response({"error": "not logged in"}, status=401)
        return web.json_response({"csrf": found[1].csrf, "expires_at": found[1].expires_at},
                                 headers={"Cache-Control": "no-store"})

    # -- the page ---------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html",
                            charset="utf-8", headers=PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=(STATIC / name).read_bytes(), content_type=ASSETS[name],
                            headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})

    # -- Server-Sent Events -------------------------------------------------------------

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """``GET /events/sse[?endpoint=][&kinds=a,b]``: ``text/event-stream`` until the client leaves."""
        endpoint = request.query.get("endpoint") or None
        kinds = set(filter(None, request.query.get("kinds", "").split(","))) or None
        # a stream opened with a session (not the bearer token) ends with the session: logout, expiry
        found = self._session(request) if "Authorization" not in request.headers else None
        by_session = found is not None
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        with self.api.server.events.subscribe(endpoint, kinds) as queue:
            self._streams[queue] = found[0] if found is not None else None
            try:
                await response.write(b"retry: 3000\n\n")
                while not (by_session and self._session(request) is None):
                    try:
                        async with asyncio.timeout(KEEPALIVE_S):
                            event = await queue.get()
                    except TimeoutError:
                        chunk = b": keep-alive\n\n"  # also notices a client that left
                    else:
                        if event is None:  # the server stops
                            break
                        data = json.dumps(self.api.event_json(event), separators=(",", ":"))
                        chunk = f"event: {event.kind}\ndata: {data}\n\n".encode()
                    await response.write(chunk)
            except ConnectionError:  # the browser left (closed the tab, logged out)
                pass
            finally:
                self._streams.pop(queue, None)
        return response

    async def _end_streams(self, app: web.Application) -> None:
        self._wake(lambda sid: True)

    def _wake(self, which: Callable[[str | None], bool]) -> None:
        """End the streams ``which`` picks by their session id: a None in their queue."""
        for queue, sid in list(self._streams.items()):
            if which(sid):
                while queue.full():
                    queue.get_nowait()
                queue.put_nowait(None)

    # -- data the pages need ------------------------------------------------------------

    async def fleet(self, request: web.Request) -> web.Response:
        """Every registered device, one row each: class, status, security, installed model."""
        server = self.api.server
        rows = []
        for registration in server.registrations():
            profile = server.profile(registration.endpoint)
            tinyml = profile.tinyml if profile is not None else None
            if profile is None:
                status = "discovering"
            elif profile.problems:
                status = "incomplete"
            elif registration.queue_mode:
                status = "queue mode"
            else:
                status = "online"
            rows.append({
                "endpoint": registration.endpoint,
                "device_class": profile.device_class if profile is not None else None,
                "status": status,
                "security": self._security(registration.identity),
                "lwm2m_version": registration.lwm2m_version,
                "binding": registration.binding,
                "updated_at": registration.updated_at,
                "expires_at": registration.expires_at,
                "model": (f"{tinyml.active_model_id}@{tinyml.active_model_version}"
                          if tinyml is not None and tinyml.active_model_id else None),
                "firmware_update": self._firmware_update(profile),
            })
        rows.sort(key=lambda row: row["endpoint"])
        return web.json_response(rows)

    async def modules(self, request: web.Request) -> web.Response:
        """``{"model", "modules": [{device_class, plugin, size, arena_bytes, ...}],
        "incompatible": [{device_class, reason, devices}]}``."""
        deployment, orchestrator = self.api._deploying()
        key = request.match_info["key"]
        model = await deployment.model(key)
        if model is None:
            raise ApiError(404, f"no model {key}")
        modules = []
        for doc_key, data in sorted((await deployment.store.list_documents("module")).items()):
            if doc_key.startswith(f"{key}:"):
                modules.append({name: data.get(name) for name in (
                    "device_class", "plugin", "size", "arena_bytes", "package", "sha256", "sequence_number")})
        reasons: Counter[tuple[str, str]] = Counter()
        for rollout in orchestrator.rollouts():
            if rollout.model != key:
                continue
            _, devices = orchestrator.rollout(rollout.id) or (None, [])
            for device in devices:
                if device.status.value == "incompatible":
                    profile = self.api.server.profile(device.endpoint)
                    device_class = (profile.device_class if profile is not None else None) or "unknown"
                    reasons[(device_class, device.reason or "")] += 1
        incompatible = [{"device_class": c, "reason": r, "devices": n} for (c, r), n in sorted(reasons.items())]
        return web.json_response({"model": key, "modules": modules, "incompatible": incompatible})

    async def object_definition(self, request: web.Request) -> web.Response:
        """An object's name and resources (id, name, operations, type, units, multiple)."""
        raw = request.match_info["id"]
        if not (raw.isascii() and raw.isdigit()):  # int("²") would raise
            raise ApiError(400, "id: an object id such as 3")
        definition = self.api.server.registry.get(int(raw))
        if definition is None:
            raise ApiError(404, f"no definition of object {raw}")
        return web.json_response({
            "id": definition.id, "name": definition.name, "version": definition.version,
            "multiple": definition.multiple,
            "resources": [
                {"id": r.id, "name": r.name, "operations": r.operations.value, "type": r.type.value,
                 "units": r.units, "multiple": r.multiple}
                for r in sorted(definition.resources.values(), key=lambda r: r.id)
            ],
        })
