"""The management HTTP API (aiohttp), on loopback with a bearer token.

JSON in, JSON out, described by the OpenAPI document at ``GET
/api/v1/openapi.json`` (:mod:`.openapi`). Device operations answer ``200`` with the
decoded result, ``202`` with a queue entry when the device sleeps (queue mode),
the device's error code mapped as RFC 8075 maps CoAP to HTTP (4.04 → ``404``, …;
the body keeps the CoAP ``code``), ``502`` for a 2.xx answer that does not decode and
``504`` when the device did not answer, ``404`` for an unknown endpoint (no ``code``
in the body), ``400`` for a request that cannot be built. A body that is not
a JSON object, or has a wrong-typed or unknown field, is a ``400`` naming the
field (:mod:`.bodies`); storage that cannot be written (a full disk) is ``503``, and so
is a rollout change on a node that does not lead rollouts (the body's ``leader`` names
the node to retry at; rollout reads there show the store's state);
anything else unexpected a ``500`` with ``{"error": "internal server error"}``
(the traceback goes to the log only). ``GET
/api/v1/events`` streams newline-delimited JSON events until the client leaves.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from dataclasses import asdict
from datetime import datetime
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web

from ipso_objects import IpsoError, LwM2MPath, ObjLnk, Value
from ipso_objects.codecs.link_format import NotificationAttributes, encode as encode_links
from ipso_objects.nodes import flatten
from ipso_objects.values import from_text

from . import bodies, display, openapi
from .credentials import CredentialRoutes
from .dashboard import Dashboard
from .models import ModelRoutes
from .errors import ApiError, device_error_status
from .. import metrics as prometheus
from ..core import operations
from ..core.capabilities import FIRMWARE_RESULTS, FIRMWARE_STATES, DeviceProfile
from ..security.oscore import is_oscore_identity
from ..core.operations import OperationError
from ..core.responses import REASONS, UNREACHABLE, Result
from ..security.credentials import CredentialStore
from ..ota.deployment import Deployment, DeploymentError
from ..ota.leadership import RolloutLeadership
from ..ota.orchestrator import NotLeader, Orchestrator
from ..core.registration import Registration
from ..ota.rollouts import RolloutError, RolloutState
from ..core.queue_mode import Queued
from ..server import DeviceNotRegistered, LwM2MServer
from ..store.base import QueueEntry, QueueFullError, StoreError

API = "/api/v1"
OPERATION_FIELDS: dict[str, tuple[str, ...]] = {
    "read": ("path",), "delete": ("path",), "discover": ("path",),
    "write": ("path", "value", "replace"), "execute": ("path", "args"),
    "write-attributes": ("path", "attributes"), "create": ("path", "instance", "values"),
    "observe": ("path", "paths", "timeout"), "cancel-observe": ("path", "paths"),
}
"""The body fields of each device operation."""


def json_value(value: Value) -> Any:
    """A value as JSON: opaque as hex, time as ISO 8601, objlnk as ``"3:0"``."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, ObjLnk):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _security(identity: str | None) -> str:
    """How the device proved who it is: ``psk`` (DTLS), ``oscore`` or ``none``."""
    if identity is None:
        return "none"
    return "oscore" if is_oscore_identity(identity) else "psk"


def registration_json(registration: Registration) -> dict[str, Any]:
    return {
        "endpoint": registration.endpoint,
        "id": registration.id,
        "address": registration.address,
        "security": _security(registration.identity),
        "identity": registration.identity,
        "lwm2m_version": registration.lwm2m_version,
        "binding": registration.binding,
        "queue_mode": registration.queue_mode,
        "lifetime": registration.lifetime,
        "sms": registration.sms,
        "registered_at": registration.registered_at,
        "updated_at": registration.updated_at,
        "expires_at": registration.expires_at,
        "root_path": registration.object_list.root_path,
        "content_formats": list(registration.object_list.content_formats),
        "objects": [
            {"path": str(link.path), **({"ver": link.version} if link.version else {})}
            for link in registration.object_list.objects
        ],
        "extra": dict(registration.extra),
    }


def result_json(result: Result, server: LwM2MServer, path: LwM2MPath | None = None) -> dict[str, Any]:
    """A result with its values as rows: path, name, value (JSON) and a display line."""
    body: dict[str, Any] = {
        "ok": result.ok, "code": result.code, "content_format": result.content_format,
        "diagnostic": result.diagnostic,
    }
    leaves: dict[LwM2MPath, Value] = {}
    if result.node is not None and path is not None:
        leaves = flatten(result.node, path)
    elif result.values:
        leaves = dict(result.values)
    if result.node is not None or result.values:
        body["values"] = [
            {
                "path": str(leaf),
                "name": _name(leaf, server),
                "value": json_value(value),
                "line": display.describe(leaf, value, server.registry),
            }
            for leaf, value in leaves.items()
        ]
    if result.links:
        body["links"] = encode_links(result.links).decode()
    if result.location is not None:
        body["location"] = str(result.location)
    return body


def device_answer(result: Result, server: LwM2MServer, path: LwM2MPath | None = None) -> web.Response:
    """A device's answer as HTTP: ``200`` for a decoded 2.xx; ``504`` when it did not
    answer; its error code mapped by :func:`.errors.device_error_status`; ``502`` for a
    2.xx that does not decode. The body keeps the CoAP ``code`` and ``diagnostic`` (and
    an ``error`` line, as every error answer has)."""
    body = result_json(result, server, path)
    if result.ok:
        return web.json_response(body)
    if result.code == UNREACHABLE:
        body["error"] = result.diagnostic or "device unreachable"
        return web.json_response(body, status=504)
    reason = f"{result.code} {REASONS.get(result.code, '')}".rstrip()
    body["error"] = f"device answered {reason}: {result.diagnostic}"
    status = 502 if result.code.startswith("2.") else device_error_status(result.code)
    return web.json_response(body, status=status)


def _name(path: LwM2MPath, server: LwM2MServer) -> str | None:
    definition = server.registry.resource_def(path)
    return definition.name if definition is not None else None


def entry_json(entry: QueueEntry) -> dict[str, Any]:
    return {
        "id": entry.id, "endpoint": entry.endpoint, "state": entry.state,
        "created_at": entry.created_at, "expires_at": entry.expires_at,
        "operation": entry.request.get("kind"), "result": entry.result,
    }


def _firmware_update(profile: DeviceProfile | None) -> str | None:
    """The device's Firmware Update state and last Update Result, in words."""
    if profile is None or not profile.firmware_object:
        return None
    state = FIRMWARE_STATES.get(profile.firmware_state, f"state {profile.firmware_state}")
    result = profile.firmware_result
    words = FIRMWARE_RESULTS.get(result, "not reported" if result is None else "unknown code")
    return f"{state}; update result {result if result is not None else '-'}: {words}"


def _path(text: Any, field: str = "path") -> LwM2MPath:
    if not isinstance(text, str):
        raise ApiError(400, f"{field} must be a string such as \"/3/0\"")
    try:
        return LwM2MPath.parse(text)
    except IpsoError as error:
        raise ApiError(400, f"{field}: {error.reason}") from None


def _paths(body: dict[str, Any]) -> list[LwM2MPath]:
    if "path" in body and "paths" in body:
        raise ApiError(400, "give \"path\" or \"paths\", not both")
    raw = body.get("paths", [body["path"]] if "path" in body else None)
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "give \"path\" or a non-empty list \"paths\"")
    return [_path(p, "paths") for p in raw]


def _seconds(raw: Any, name: str) -> float | None:
    """An optional positive number of seconds (a deadline the caller keeps)."""
    try:
        seconds = None if raw is None else math.nan if isinstance(raw, bool) else float(raw)
    except (TypeError, ValueError):
        seconds = math.nan
    if seconds is not None and not 0 < seconds < math.inf:
        raise ApiError(400, f"{name}: must be a number of seconds > 0, got {raw!r}")
    return seconds


class ManagementApi:
    """Routes and handlers; :meth:`start` binds the HTTP listener."""

    def __init__(self, server: LwM2MServer, token: str, *, host: str = "127.0.0.1", port: int = 5780,
                 deployment: Deployment | None = None, orchestrator: Orchestrator | None = None,
                 credentials: CredentialStore | None = None, metrics_access: str = "loopback",
                 leadership: RolloutLeadership | None = None) -> None:
        self.server = server
        self.deployment = deployment
        self.orchestrator = orchestrator
        self.leadership = leadership
        """Whether this node leads rollouts (nodes sharing a store); None: it always does."""
        self.credentials = credentials
        self._token = token
        self._metrics_access = metrics_access
        """``api.metrics``: who may read ``/metrics`` without the token."""
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._log = structlog.get_logger("lwm2m_server.api")
        self.app = web.Application(middlewares=[self._errors, self._auth])
        r = self.app.router
        r.add_get(f"{API}/health", self.health)
        r.add_get(f"{API}/openapi.json", self.openapi_document)
        r.add_get(f"{API}/devices", self.devices)
        r.add_get(f"{API}/devices/{{ep}}", self.device)
        for name in ("read", "write", "execute", "create", "delete", "discover",
                     "write-attributes", "observe", "cancel-observe"):
            r.add_post(f"{API}/devices/{{ep}}/{name}", self._operation(name))
        r.add_get(f"{API}/queue/{{id}}", self.queue_entry)
        r.add_get(f"{API}/models", self.list_models)
        r.add_post(f"{API}/models", self.add_model)
        ModelRoutes(server, deployment).register(r, API)  # GET /models/{key}, POST /compile
        r.add_get(f"{API}/rollouts", self.list_rollouts)
        r.add_post(f"{API}/rollouts", self.create_rollout)
        r.add_get(f"{API}/rollouts/{{id}}", self.get_rollout)
        for action in ("pause", "resume", "cancel"):
            r.add_post(f"{API}/rollouts/{{id}}/{action}", self._rollout_action(action))
        r.add_get(f"{API}/events", self.events)
        r.add_get(prometheus.PATH, self.metrics)
        CredentialRoutes(credentials, self._log).register(r, API)
        self.dashboard = Dashboard(self, security=_security, firmware_update=_firmware_update)  # pages at /, sessions
        self.dashboard.register(self.app)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def port(self) -> int:
        server = self._site._server if self._site is not None else None  # aiohttp keeps it private
        return server.sockets[0].getsockname()[1] if server is not None else self._port

    # -- middlewares ------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return web.json_response({"error": error.message}, status=error.status)
        except DeviceNotRegistered as error:
            return web.json_response({"error": str(error)}, status=404)
        except QueueFullError as error:
            return web.json_response({"error": str(error)}, status=429)
        except (OperationError, IpsoError) as error:
            return web.json_response({"error": error.reason}, status=400)
        except NotLeader as error:  # rollouts change only at the node that leads them
            leader = error.leader or (await self.leadership.leader() if self.leadership is not None else None)
            where = f"node {leader} leads rollouts: retry there" if leader else "no node leads rollouts now: retry soon"
            return web.json_response({"error": f"{error}; {where}", "leader": leader}, status=503,
                                     headers={} if leader else {"Retry-After": "5"})
        except (DeploymentError, RolloutError) as error:
            return web.json_response({"error": str(error)}, status=400)
        except StoreError as error:
            self._log.error("store_failed", error=str(error))
            return web.json_response({"error": "server storage unavailable"}, status=503)
        except (web.HTTPException, ConnectionError):
            raise  # aiohttp's own answers (an unknown route, a wrong method); a client that left
        except OSError as error:  # e.g. no space left for a model file
            self._log.error("storage_failed", error=str(error))
            reason = error.strerror or type(error).__name__
            return web.json_response({"error": f"server storage unavailable: {reason}"}, status=503)
        except Exception:  # a bug: the log gets the traceback, the client a plain answer
            self._log.exception("api_request_failed", method=request.method, path=request.path)
            return web.json_response({"error": "internal server error"}, status=500)

    @web.middleware
    async def _auth(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path == prometheus.PATH and not prometheus.needs_token(self._metrics_access, request.remote):
            return await handler(request)
        if request.path not in (f"{API}/health", f"{API}/openapi.json") and not Dashboard.public(request.path):
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self._token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                # or the dashboard's session cookie, with its CSRF header on a change
                refused = self.dashboard.refusal(request)
                if refused is not None:
                    return refused
        return await handler(request)

    # -- handlers ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "registrations": len(self.server.registrations())})

    async def openapi_document(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.DOCUMENT)

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text (who may read it: ``api.metrics``)."""
        leading = self.leadership is None or self.leadership.is_leader  # rollout gauges from one node only
        body = await self.server.metrics.render(self.orchestrator if leading else None)
        return web.Response(body=body, headers={"Content-Type": prometheus.CONTENT_TYPE})

    async def devices(self, request: web.Request) -> web.Response:
        return web.json_response([registration_json(r) for r in self.server.registrations()])

    async def device(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["ep"]
        registration = self.server.registration(endpoint)
        if registration is None:
            raise DeviceNotRegistered(endpoint)
        body = registration_json(registration)
        profile = self.server.profile(endpoint)
        body["profile"] = profile.to_dict() if profile is not None else None
        body["device_class"] = profile.device_class if profile is not None else None
        body["firmware_update"] = _firmware_update(profile)
        body["observations"] = [
            [str(p) for p in record.paths] for record in self.server.observations(endpoint)
        ]
        return web.json_response(body)

    async def queue_entry(self, request: web.Request) -> web.Response:
        entry = await self.server.queue_entry(request.match_info["id"])
        if entry is None:
            raise ApiError(404, f"no queue entry {request.match_info['id']}")
        return web.json_response(entry_json(entry))

    # -- models and rollouts -------------------------------------------------------------

    def _deploying(self) -> tuple[Deployment, Orchestrator]:
        if self.deployment is None or self.orchestrator is None:
            raise ApiError(503, "model deployment is not running in this server")
        return self.deployment, self.orchestrator

    async def list_models(self, request: web.Request) -> web.Response:
        deployment, _ = self._deploying()
        return web.json_response([asdict(m) for m in await deployment.models()])

    async def add_model(self, request: web.Request) -> web.Response:
        """``POST /models?name=kws&version=1.0`` with the model file as the body."""
        deployment, _ = self._deploying()
        bodies.check_fields(dict(request.query), ("name", "version", "format"), "query")
        name, version = request.query.get("name", ""), request.query.get("version", "")
        data = await request.read()
        if not data:
            raise ApiError(400, "the body must be the model file")
        record = await deployment.add_model(data, name, version, request.query.get("format", "tflite"))
        return web.json_response(asdict(record), status=201)

    async def _leading(self) -> None:
        """A rollout change here is refused (503, naming the leader) unless this node leads rollouts."""
        if self.leadership is not None and not self.leadership.is_leader:
            raise NotLeader(f"this node ({self.leadership.holder}) does not lead rollouts",
                            await self.leadership.leader())

    async def _fresh_view(self) -> None:
        """Where another node leads rollouts, show them as the store has them now."""
        if self.leadership is not None:
            await self.leadership.refresh_view()

    async def list_rollouts(self, request: web.Request) -> web.Response:
        _, orchestrator = self._deploying()
        await self._fresh_view()
        return web.json_response([self._rollout_json(r.id) for r in orchestrator.rollouts()])

    async def create_rollout(self, request: web.Request) -> web.Response:
        _, orchestrator = self._deploying()
        model, selector, strategy, rollout_id = bodies.rollout(await bodies.json_object(request))
        await self._leading()
        rollout = await orchestrator.create(model, selector, strategy, rollout_id)
        return web.json_response(self._rollout_json(rollout.id), status=201)

    async def get_rollout(self, request: web.Request) -> web.Response:
        self._deploying()
        await self._fresh_view()
        return web.json_response(self._rollout_json(request.match_info["id"], devices=True))

    def _rollout_action(self, action: str):
        states = {"pause": RolloutState.PAUSED, "resume": RolloutState.RUNNING, "cancel": RolloutState.CANCELLED}

        async def handler(request: web.Request) -> web.Response:
            _, orchestrator = self._deploying()
            bodies.check_fields(await bodies.json_object(request, optional=True), ())  # it takes none
            await self._leading()
            await orchestrator.set_state(request.match_info["id"], states[action])
            return web.json_response(self._rollout_json(request.match_info["id"]))

        return handler

    def _rollout_json(self, rollout_id: str, devices: bool = False) -> dict[str, Any]:
        _, orchestrator = self._deploying()
        found = orchestrator.summary(rollout_id)
        if found is None:
            raise ApiError(404, f"no rollout {rollout_id}")
        rollout, summary = found
        body = rollout.to_dict()
        body["summary"] = {"total": summary.total, "finished": summary.finished, "counts": dict(summary.counts)}
        if devices:
            body["devices"] = [
                {"endpoint": d.endpoint, "status": d.status.value, "attempts": d.attempts, "canary": d.canary,
                 "reason": d.reason, "phase": (d.job or {}).get("phase"), "mode": (d.job or {}).get("mode"),
                 "package": d.package}
                for d in orchestrator.rollout(rollout_id)[1]
            ]
        return body

    def _operation(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            body = await bodies.json_object(request, optional=True)
            bodies.check_fields(body, OPERATION_FIELDS[name])
            return await self._perform(name, request.match_info["ep"], body)

        return handler

    async def _perform(self, name: str, endpoint: str, body: dict[str, Any]) -> web.Response:
        server, registry = self.server, self.server.registry
        if name == "observe":
            paths = _paths(body)
            result = await server.observe(endpoint, paths, timeout=_seconds(body.get("timeout"), "timeout"))
            return device_answer(result, server, paths[0] if len(paths) == 1 else None)
        if name == "cancel-observe":
            cancelled = await server.cancel_observation(endpoint, _paths(body))
            return web.json_response({"cancelled": cancelled})
        path = _path(body.get("path"))
        if name == "read":
            build = lambda reg: operations.read(reg, path, registry=registry)  # noqa: E731
        elif name == "write":
            value = self._write_value(path, body)
            replace = bodies.boolean(body, "replace", True)
            build = lambda reg: operations.write(reg, path, value, replace, registry=registry)  # noqa: E731
        elif name == "execute":
            arguments = body.get("args", "")
            if not isinstance(arguments, str):
                raise ApiError(400, "args must be a string such as \"0='a',1\"")
            build = lambda reg: operations.execute(reg, path, arguments, registry=registry)  # noqa: E731
        elif name == "delete":
            build = lambda reg: operations.delete(reg, path, registry=registry)  # noqa: E731
        elif name == "discover":
            build = lambda reg: operations.discover(reg, path, registry=registry)  # noqa: E731
        elif name == "write-attributes":
            attributes = body.get("attributes")
            if not isinstance(attributes, dict) or not all(
                    v is None or type(v) in (str, int, float) for v in attributes.values()):
                raise ApiError(400, "attributes must be an object such as {\"pmin\": 10} "
                                    "(values: numbers, strings or null)")
            query = [f"{k}={v}" if v is not None else k for k, v in attributes.items()]
            attrs = NotificationAttributes.from_query(query)
            build = lambda reg: operations.write_attributes(reg, path, attrs, registry=registry)  # noqa: E731
        elif name == "create":
            build = self._create_builder(path, body)
        else:
            raise ApiError(404, f"unknown operation {name}")
        outcome = await server.perform(endpoint, build)
        if isinstance(outcome, Queued):
            return web.json_response(
                {"queued": outcome.entry_id, "expires_at": outcome.expires_at}, status=202
            )
        return device_answer(outcome, server, path)

    def _write_value(self, path: LwM2MPath, body: dict[str, Any]) -> Value:
        """``{"value": "text"}``: parsed by the resource's type (opaque as hex)."""
        if not path.is_resource and not path.is_resource_instance:
            raise ApiError(400, "write takes a resource or resource-instance path")
        if "value" not in body:
            raise ApiError(400, "write needs \"value\"")
        raw = body["value"]
        if raw is None or not isinstance(raw, (str, int, float)):  # bool is an int
            raise ApiError(400, f"value: must be a string, number or boolean, got {bodies.kind(raw)}")
        rtype = self.server.registry.value_type(path)
        if rtype is None:
            return raw if isinstance(raw, (str, int, float, bool)) else str(raw)
        return text_to_value(str(raw) if not isinstance(raw, bool) else str(int(raw)), rtype)

    def _create_builder(self, path: LwM2MPath, body: dict[str, Any]):
        """``{"instance": 7, "values": {"5701": "Cel"}}``; without ``instance`` (or with
        null) the device picks the id and answers it in Location-Path."""
        from ipso_objects.nodes import ObjectInstance, Resource

        if not path.is_object:
            raise ApiError(400, "create takes an object path such as \"/3303\"")
        values = body.get("values", {})
        instance_id = body.get("instance")
        valid_id = instance_id is None or (type(instance_id) is int and 0 <= instance_id < 65535)
        if not isinstance(values, dict) or not valid_id:
            raise ApiError(400, "create takes \"instance\" (0..65534, or null to let the device "
                                "pick) and \"values\" ({resource id: text})")
        resources = {}
        for key, raw in values.items():
            if not str(key).isdigit():
                raise ApiError(400, f"values key {key!r} is not a resource id")
            if raw is None or not isinstance(raw, (str, int, float)):
                raise ApiError(400, f"values.{key}: must be a string, number or boolean, got {bodies.kind(raw)}")
            leaf = path.child(instance_id or 0).child(int(key))  # the model ignores the instance id
            rtype = self.server.registry.value_type(leaf)
            value = text_to_value(str(raw), rtype) if rtype is not None else raw
            resources[int(key)] = Resource(int(key), value)
        node = resources if instance_id is None else ObjectInstance(instance_id, resources)
        registry = self.server.registry
        return lambda reg: operations.create(reg, path, node, registry=registry)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /events[?endpoint=][&kinds=a,b][&timeout=S]``: one JSON event a line;
        with ``timeout`` the stream ends after S seconds."""
        endpoint = request.query.get("endpoint")
        kinds = set(filter(None, request.query.get("kinds", "").split(",")))
        duration = _seconds(request.query.get("timeout"), "timeout")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration if duration is not None else math.inf
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        with self.server.events.subscribe(endpoint or None, kinds or None) as queue:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(min(15, remaining)):
                        event = await queue.get()
                    line = json.dumps(self.event_json(event)).encode() + b"\n"
                except TimeoutError:
                    line = b"\n"  # keep-alive; also notices a gone client
                try:
                    await response.write(line)
                except ConnectionResetError:  # the client left (e.g. observe --count had enough)
                    break
        return response

    def event_json(self, event) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": event.kind, "endpoint": event.endpoint, "time": event.time}
        data = event.data
        if "registration" in data:
            body["registration"] = registration_json(data["registration"])
        if "result" in data:
            paths = data.get("paths", ())
            body["paths"] = [str(p) for p in paths]
            body["result"] = result_json(data["result"], self.server, paths[0] if len(paths) == 1 else None)
        if "entry" in data:
            body["entry"] = entry_json(data["entry"])
        if "reason" in data:
            body["reason"] = data["reason"]
        if event.kind == "rollout":
            body.update({key: data[key] for key in ("rollout", "status", "counts", "total") if key in data})
        if (profile := data.get("profile")) is not None and hasattr(profile, "device_class"):
            body["device_class"] = profile.device_class
        if "entries" in data:
            body["values"] = [
                {"time": entry.time, "path": str(path), "value": json_value(value),
                 "line": display.describe(path, value, self.server.registry)}
                for entry in data["entries"] for path, value in entry.values.items()
            ]
        return body


def text_to_value(text: str, rtype) -> Value:
    """An operator's text for a typed resource; opaque is hex (``0a1b``)."""
    from ipso_objects.model import ResourceType

    if rtype is ResourceType.OPAQUE:
        try:
            return bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            raise ApiError(400, f"{text!r} is not hex for an Opaque resource") from None
    return from_text(text, rtype)
