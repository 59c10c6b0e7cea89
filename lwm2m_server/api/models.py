"""The management API's model detail and compile service.

``GET /models/{key}`` shows, per device class the server knows, every installed
plugin's verdict on the model: fits (its rank, payload, arena, accelerator and
latency estimate with its source) or the reasons it does not.
``POST /compile`` compiles a model for one class (or one device's class)
without deploying: the chosen plugin, the ranking, the module's figures, the
compiler's log and report, and the payload (base64, in the same answer, so the
figures and the bytes always belong together). Both use the compile cache.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from aiohttp import web

from . import bodies
from .errors import ApiError
from ..compilers import RULE, Candidate, Incompatible, ModelError, Ranking, TargetSpec
from ..compilers.describe import module_to_json, target_to_json
from ..ota.classes import DeviceView, device_target, known_classes
from ..ota.deployment import Deployment, ModelRecord


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    """One plugin's verdict: its rank and the module's figures when it fits, else its reasons."""
    module = candidate.module
    figures: dict[str, Any] = {
        "payload_bytes": None, "storage_bytes": None, "arena_bytes": None, "ram_bytes": None, "accelerator": None,
        "estimated_latency_s": None, "estimated_cycles": None, "estimate_source": None,
    }
    if module is not None:
        figures = {
            "payload_bytes": len(module.payload), "storage_bytes": module.storage_bytes,
            "arena_bytes": module.required_arena_bytes, "ram_bytes": module.required_ram_bytes,
            "accelerator": module.accelerator, "estimated_latency_s": module.estimated_latency_s,
            "estimated_cycles": module.estimated_cycles, "estimate_source": module.estimate_source,
        }
    return {"plugin": candidate.plugin, "version": candidate.version, "fits": candidate.fits,
            "rank": candidate.rank, "lossy": candidate.lossy, "why": candidate.explanation(),
            "reasons": list(candidate.reasons), "cache_hit": candidate.cache_hit, **figures}


def ranking_json(ranking: Ranking) -> list[dict[str, Any]]:
    return [candidate_json(c) for c in ranking.candidates]


class ModelRoutes:
    """``GET /models/{key}`` and ``POST /compile``."""

    def __init__(self, devices: DeviceView, deployment: Deployment | None) -> None:
        self._devices = devices
        self._deployment = deployment

    def register(self, router: web.UrlDispatcher, prefix: str) -> None:
        router.add_get(f"{prefix}/models/{{key}}", self.model_detail)
        router.add_post(f"{prefix}/compile", self.compile)

    def _deploying(self) -> Deployment:
        if self._deployment is None:
            raise ApiError(503, "model deployment is not running in this server")
        return self._deployment

    async def _model(self, key: str) -> ModelRecord:
        model = await self._deploying().model(key)
        if model is None:
            raise ApiError(404, f"no model {key} (`tinymlaas models list` lists them)")
        return model

    async def _ranking(self, model: ModelRecord, target: TargetSpec, plugin: str = "") -> Ranking:
        try:
            return await self._deploying().ranking(model, target, plugin)
        except ModelError as error:  # validated at upload; a stored file that no longer parses
            raise ApiError(422, f"{model.key} is not a valid {model.format} model: {error.reason}") from None

    async def model_detail(self, request: web.Request) -> web.Response:
        """The model, and per known device class every plugin's verdict, ranked."""
        model = await self._model(request.match_info["key"])
        classes = []
        if model.format != "firmware":
            for known in known_classes(self._devices):
                ranking = await self._ranking(model, known.target)
                chosen = ranking.chosen
                classes.append({"device_class": known.device_class, "endpoint": known.endpoint,
                                "endpoints": list(known.endpoints), "chosen": chosen.plugin if chosen else None,
                                "plugins": ranking_json(ranking)})
        return web.json_response({**asdict(model), "rule": RULE, "classes": classes})

    async def compile(self, request: web.Request) -> web.Response:
        """``{"model": "name@version", "device_class" | "endpoint": "...", "plugin": "..."}``."""
        body = await bodies.json_object(request)
        bodies.check_fields(body, ("model", "device_class", "endpoint", "plugin"))
        key = bodies.optional_string(body, "model")
        if not key:
            raise ApiError(400, f"model: give the model as \"name@version\", got {bodies.kind(body.get('model'))}")
        device_class = bodies.optional_string(body, "device_class")
        endpoint = bodies.optional_string(body, "endpoint")
        plugin = bodies.optional_string(body, "plugin") or ""
        if (device_class is None) == (endpoint is None):
            raise ApiError(400, "give \"device_class\" or \"endpoint\" (the device whose class to compile for), "
                                "not both")
        model = await self._model(key)
        if model.format == "firmware":
            raise ApiError(400, f"{model.key} is a firmware image: it is installed as it is, never compiled")
        endpoint, target = self._target(device_class, endpoint)
        if plugin and plugin not in {p.name for p in self._deploying().plugins}:
            installed = ", ".join(sorted(p.name for p in self._deploying().plugins))
            raise ApiError(400, f"plugin: {plugin} is not installed (installed: {installed})")
        ranking = await self._ranking(model, target, plugin)
        common = {"model": model.key, "device_class": target.device_class, "endpoint": endpoint,
                  "target": target_to_json(target), "pinned": bool(plugin), "rule": RULE,
                  "ranking": ranking_json(ranking)}
        try:
            chosen = ranking.require()
        except Incompatible as error:
            return web.json_response({"error": error.reason, "reasons_by_plugin": error.reasons_by_plugin,
                                      **common}, status=422)
        module = chosen.module
        assert module is not None  # a fitting candidate has its module
        return web.json_response({**common, "plugin": chosen.plugin, "cache_hit": chosen.cache_hit,
                                  "module": module_to_json(module),
                                  "payload_base64": base64.b64encode(module.payload).decode("ascii")})

    def _target(self, device_class: str | None, endpoint: str | None) -> tuple[str, TargetSpec]:
        """The device whose figures to compile with, and its target (404 for an unknown class or device)."""
        if endpoint is not None:
            if self._devices.profile(endpoint) is None:
                raise ApiError(404, f"no discovered device {endpoint}")
            target = device_target(self._devices, endpoint)
            if target is None:
                raise ApiError(400, f"endpoint: device {endpoint} has no usable TinyML Capability object (/26241)")
            return endpoint, target
        classes = {known.device_class: known for known in known_classes(self._devices)}
        known = classes.get(device_class or "")
        if known is None:
            listed = ", ".join(classes) or "none"
            raise ApiError(404, f"no registered device is of class {device_class} (known classes: {listed})")
        return known.endpoint, known.target

