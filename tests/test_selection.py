"""Selection across vendors (issue 14, item 5): every plugin that fits compiles, the modules
are ranked by the documented rule (accelerator, lossless, latency estimate, storage,
priority, name), a rollout may pin a plugin, and the ranking per device class is
visible through the API (``GET /models/{key}``) and the compile service (``POST /compile``).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Mapping

import aiohttp
import pytest

from lwm2m_server.api.http import ManagementApi
from lwm2m_server.compilers import (CompileCache, CompiledModule, CompileFailed, CompilerPlugin, Incompatible,
                                    ModelError, ModelInput, TargetSpec, rank_plugins, select_plugin)
from lwm2m_server.compilers.selection import RULE
from lwm2m_server.config import DeploymentConfig
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.ota.rollouts import Rollout, RolloutError, Selector, Strategy
from lwm2m_server.store.sqlite import SqliteStore
from simulators.objects import DeviceObjects
from simulators.profiles import load_config
from test_orchestrator import Stack
from test_sim_updates import capabilities

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
DENSE = (MODELS / "dense_int8.tflite").read_bytes()
PROFILES = load_config(ROOT / "config" / "fleet.yaml").profiles
NPU = "ethos-u55-128"
TARGET = TargetSpec("tflite-micro", "1", "cortex-m55", ram_bytes=8192, flash_bytes=65536, arena_budget_bytes=16384,
                    ops=frozenset({"FULLY_CONNECTED"}), accelerators=frozenset({NPU}))
MODEL = ModelInput(b"model bytes", "tflite", "m", "1")
TOKEN = "selection-test-token-0123456789"


class Fake(CompilerPlugin):
    """A plugin whose module figures (or failure) the test sets."""

    accepts = frozenset({"tflite"})
    targets = frozenset({"tflite-micro"})

    def __init__(self, name: str, *, size: int = 100, latency: float | None = None, accelerator: str = "",
                 lossy: bool = False, priority: int = 0, reasons: tuple[str, ...] = (), arena: int = 1000,
                 error: Exception | None = None) -> None:
        self.name, self.version, self.lossy, self.priority = name, "1", lossy, priority
        self.size, self.latency, self.accelerator, self.reasons, self.arena, self.error = (
            size, latency, accelerator, reasons, arena, error)
        self.compiled = 0

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return list(self.reasons)

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        self.compiled += 1
        if self.error is not None:
            raise self.error
        return CompiledModule(self.name.encode().ljust(self.size, b"."), "tflite", target.runtime, self.arena, 100,
                              frozenset({"FULLY_CONNECTED"}), (), (), self.name, self.version, model.digest,
                              accelerator=self.accelerator, accelerator_ops=("FULLY_CONNECTED",) if self.accelerator
                              else (), estimated_latency_s=self.latency,
                              estimate_source="fake cost model" if self.latency is not None else "")


def order(plugins: list[Fake], target: TargetSpec = TARGET) -> list[str]:
    return [c.plugin for c in rank_plugins(plugins, MODEL, target).candidates if c.fits]


# -- the rule ----------------------------------------------------------------------------------------


def test_modules_rank_by_accelerator_losslessness_latency_storage_priority_name():
    plugins = [
        Fake("cpu-lossy-tiny", lossy=True, size=10, latency=1e-6), Fake("cpu-unknown", size=20),
        Fake("cpu-big-b", size=60, latency=1e-3), Fake("cpu-big-a", size=60, latency=1e-3),
        Fake("cpu-big-p", size=60, latency=1e-3, priority=1), Fake("cpu-slow", size=40, latency=1e-3),
        Fake("cpu-fast", size=50, latency=1e-4), Fake("npu-lossy", accelerator=NPU, lossy=True, size=900, latency=5e-3),
        Fake("npu", accelerator=NPU, size=800), Fake("no", reasons=("operator X missing",)),
    ]
    ranking = rank_plugins(plugins, MODEL, TARGET)
    assert [(c.plugin, c.rank) for c in ranking.candidates] == [
        ("npu", 1), ("npu-lossy", 2), ("cpu-fast", 3), ("cpu-slow", 4), ("cpu-big-p", 5), ("cpu-big-a", 6),
        ("cpu-big-b", 7), ("cpu-unknown", 8), ("cpu-lossy-tiny", 9), ("no", None)]
    assert ranking.chosen.plugin == "npu" and ranking.reasons_by_plugin["no"] == ["operator X missing"]
    assert ranking.chosen.explanation() == f"on {NPU}; lossless; no latency estimate; 800 B of storage"
    assert ranking.candidates[2].explanation() == "CPU only; lossless; estimate 0.1 ms; 50 B of storage"
    assert plugins[-1].compiled == 0  # a plugin whose check fails is not compiled
    assert "accelerator" in RULE and RULE.index("lossless") < RULE.index("latency") < RULE.index("storage")


def test_a_lossy_module_wins_only_when_it_alone_reaches_the_accelerator():
    assert order([Fake("cpu", size=10, latency=1e-6), Fake("npu-q", accelerator=NPU, lossy=True)]) == ["npu-q", "cpu"]
    assert order([Fake("q", lossy=True, size=10, latency=1e-6), Fake("float", size=999)]) == ["float", "q"]
    without_npu = TargetSpec("tflite-micro", "1", "cortex-m4f", ram_bytes=8192, flash_bytes=65536,
                             arena_budget_bytes=16384, ops=frozenset({"FULLY_CONNECTED"}))
    # a module for an accelerator the device lacks does not fit at all
    ranking = rank_plugins([Fake("npu", accelerator=NPU), Fake("cpu")], MODEL, without_npu)
    assert ranking.chosen.plugin == "cpu"
    assert ranking.reasons_by_plugin["npu"] == [f"module needs accelerator '{NPU}', device has none"]


def test_failures_are_reasons_and_a_module_too_big_for_the_device_keeps_its_figures():
    ranking = rank_plugins([
        Fake("died", error=CompileFailed("backend died")), Fake("bug", error=RuntimeError("oops")),
        Fake("refused", error=Incompatible("too many operators")), Fake("big", arena=20000), Fake("ok")],
        MODEL, TARGET)
    assert ranking.chosen.plugin == "ok"
    assert ranking.reasons_by_plugin == {
        "ok": [], "died": ["compile failed: backend died"], "bug": ["compile failed: RuntimeError('oops')"],
        "refused": ["too many operators"],
        "big": ["needs 20000 B of tensor arena, device arena budget is 16384 B"]}
    big = next(c for c in ranking.candidates if c.plugin == "big")
    assert big.module is not None and big.module.required_arena_bytes == 20000 and big.rank is None
    with pytest.raises(ModelError):
        rank_plugins([Fake("ok"), Fake("bad-model", error=ModelError("not a flatbuffer"))], MODEL, TARGET)


def test_nothing_fits_names_every_plugins_reasons():
    with pytest.raises(Incompatible) as caught:
        rank_plugins([Fake("a", reasons=("r1", "r2")), Fake("b", arena=99999)], MODEL, TARGET).require()
    assert caught.value.reason == ("no compiler plugin fits: a: r1, r2; "
                                   "b: needs 99999 B of tensor arena, device arena budget is 16384 B")
    assert set(caught.value.reasons_by_plugin) == {"a", "b"}
    with pytest.raises(Incompatible, match="no compiler plugin is installed"):
        rank_plugins([], MODEL, TARGET).require()
    chosen, reasons = select_plugin([Fake("a", reasons=("r1",)), Fake("b")], MODEL, TARGET)
    assert chosen.name == "b" and reasons == {"b": [], "a": ["r1"]}


def test_a_pin_asks_only_that_plugin_and_never_falls_back():
    npu, cpu = Fake("npu", accelerator=NPU), Fake("cpu")
    ranking = rank_plugins([npu, cpu], MODEL, TARGET, pin="cpu")
    assert ranking.pinned == "cpu" and [c.plugin for c in ranking.candidates] == ["cpu"]
    assert ranking.require().plugin == "cpu" and npu.compiled == 0
    with pytest.raises(Incompatible) as caught:
        rank_plugins([npu, Fake("small", arena=99999)], MODEL, TARGET, pin="small").require()
    assert caught.value.reason == ("pinned plugin small does not fit: "
                                   "needs 99999 B of tensor arena, device arena budget is 16384 B")
    with pytest.raises(Incompatible, match=r"pinned plugin nope is not installed \(installed: cpu, npu\)"):
        rank_plugins([npu, cpu], MODEL, TARGET, pin="nope")


def test_each_plugin_compiles_once_per_class_through_the_cache(tmp_path):
    cache = CompileCache(tmp_path)
    plugins = [Fake("npu", accelerator=NPU), Fake("cpu")]
    first = rank_plugins(plugins, MODEL, TARGET, compile=cache.get_or_compile)
    assert [c.cache_hit for c in first.candidates] == [False, False]
    smaller = TargetSpec("tflite-micro", "1", "cortex-m55", ram_bytes=8192, flash_bytes=65536,
                         arena_budget_bytes=512, ops=frozenset({"FULLY_CONNECTED"}), accelerators=frozenset({NPU}))
    assert smaller.device_class == TARGET.device_class
    second = rank_plugins(plugins, MODEL, smaller, compile=cache.get_or_compile)
    assert [p.compiled for p in plugins] == [1, 1] and cache.stats()["hits"] == 2
    assert second.chosen is None and all(c.cache_hit for c in second.candidates)  # memory filters per device


# -- the shipped plugins, through Deployment ---------------------------------------------------------


def target_of(profile_name: str) -> TargetSpec:
    objects = DeviceObjects(profile=PROFILES[profile_name], endpoint="probe", seed=1, now=1_700_000_000)
    return TargetSpec.from_resources(capabilities(objects), memory_free_kb=objects.get("/3/0/10"))


@pytest.fixture
async def deployment(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    config = DeploymentConfig(data_dir=tmp_path / "data", signing_key=tmp_path / "keys" / "signing.pem")
    deployment = Deployment(config, store, clock=lambda: 1_800_000_000.0)
    await deployment.start()
    yield deployment
    await store.close()


async def test_the_m55_gets_vela_ranked_over_tflm_and_a_pin_overrides_it(deployment):
    model = await deployment.add_model(DENSE, "dense", "1.0")
    m55 = target_of("cortex-m55-ethos-u55")
    ranking = await deployment.ranking(model, m55)
    fitting = [(c.plugin, c.rank, c.module.accelerator) for c in ranking.candidates if c.fits]
    assert fitting == [("vela", 1, NPU), ("tflm", 2, "")]
    vela = ranking.chosen.module
    assert vela.estimated_latency_s > 0 and vela.estimate_source.startswith("vela ")
    assert "litert does not compile for runtime 'tflite-micro'" in ranking.reasons_by_plugin["litert"][0]
    assert deployment.cache.stats()["misses"] == 2  # vela and tflm, once each for the class

    chosen = await deployment.artifact_for(model, m55)
    pinned = await deployment.artifact_for(model, m55, "tflm")
    assert (chosen.plugin, pinned.plugin) == ("vela", "tflm") and chosen.payload_sha256 != pinned.payload_sha256
    assert pinned.payload_sha256 == hashlib.sha256(DENSE).hexdigest()  # tflm sends the flatbuffer as it is
    assert deployment.cache.stats()["misses"] == 2  # the rest came from the cache
    with pytest.raises(Incompatible, match=r"^pinned plugin litert does not fit: litert does not compile for "
                                           r"runtime 'tflite-micro'"):
        await deployment.artifact_for(model, m55, "litert")


# -- rollouts carry the pin ----------------------------------------------------------------------------


def test_the_pin_is_part_of_the_strategy_and_stored_with_the_rollout():
    rollout = Rollout("r-1", "dense@1.0", Selector(), Strategy(plugin="tflm"))
    assert Rollout.from_dict(rollout.to_dict()).strategy.plugin == "tflm"
    old = rollout.to_dict()
    del old["strategy"]["plugin"]  # saved before pins existed
    assert Rollout.from_dict(old).strategy.plugin == ""
    with pytest.raises(RolloutError, match="plugin must be a plugin name"):
        Strategy(plugin=" tflm")


@pytest.fixture
async def stack(tmp_path):
    stack = await Stack().start(tmp_path)
    yield stack
    await stack.stop()


async def test_a_pinned_rollout_marks_devices_it_does_not_fit_incompatible(stack):
    await stack.device("m55-0001", PROFILES["cortex-m55-ethos-u55"])
    await stack.device("m4f-0001", "cortex-m4f")
    model = await stack.deployment.add_model(DENSE, "dense", "1.0")
    firmware = await stack.deployment.add_model(b"\x7fELF image", "fw", "1.0", fmt="firmware")
    with pytest.raises(RolloutError, match=r"plugin nope is not installed \(installed: .*tflm.*vela"):
        await stack.orchestrator.create(model.key, Selector(), Strategy(plugin="nope"))
    with pytest.raises(RolloutError, match="firmware image: it is not compiled"):
        await stack.orchestrator.create(firmware.key, Selector(), Strategy(plugin="tflm"))
    rollout = await stack.orchestrator.create(model.key, Selector(),
                                              Strategy(plugin="vela", canary_fraction=0, mode="push"))
    _, devices = await stack.wait(rollout.id, lambda r, ds: len(ds) == 2 and all(d.final for d in ds), 60)
    by_endpoint = {d.endpoint: d for d in devices}
    assert by_endpoint["m55-0001"].status.value == "done"
    assert "compiled by vela" in by_endpoint["m55-0001"].package and "pinned by the rollout" in \
        by_endpoint["m55-0001"].package
    m4f = by_endpoint["m4f-0001"]
    assert m4f.status.value == "incompatible"
    assert m4f.reason.startswith("incompatible: pinned plugin vela does not fit: vela compiles for Arm Ethos-U NPUs")


# -- the API: ranking per class, compile service -------------------------------------------------------


@pytest.fixture
async def api(stack):
    served = ManagementApi(stack.server, TOKEN, port=0, deployment=stack.deployment, orchestrator=stack.orchestrator)
    await served.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{served.port}", headers=headers) as session:
        yield session, stack
    await served.stop()


async def test_model_detail_ranks_plugins_per_known_class(api):
    session, stack = api
    await stack.device("m55-0001", PROFILES["cortex-m55-ethos-u55"])
    await stack.device("m4f-0002", "cortex-m4f")
    await stack.device("m4f-0001", "cortex-m4f")
    await stack.deployment.add_model(DENSE, "dense", "1.0")
    async with session.get("/api/v1/models/dense@1.0") as response:
        assert response.status == 200, await response.text()
        detail = await response.json()
    assert detail["name"] == "dense" and detail["rule"] == RULE
    classes = {c["chosen"]: c for c in detail["classes"]}
    assert set(classes) == {"vela", "tflm"}
    m4f = classes["tflm"]
    assert m4f["endpoints"] == ["m4f-0001", "m4f-0002"] and m4f["endpoint"] == "m4f-0001"
    m55 = classes["vela"]
    rows = {row["plugin"]: row for row in m55["plugins"]}
    assert [row["plugin"] for row in m55["plugins"][:2]] == ["vela", "tflm"]
    assert rows["vela"]["rank"] == 1 and rows["vela"]["accelerator"] == NPU and rows["vela"]["fits"]
    assert rows["vela"]["estimated_latency_s"] > 0 and "vela" in rows["vela"]["estimate_source"]
    assert rows["tflm"]["rank"] == 2 and rows["tflm"]["payload_bytes"] == len(DENSE)
    assert rows["litert"]["rank"] is None and rows["litert"]["payload_bytes"] is None and rows["litert"]["reasons"]
    async with session.get("/api/v1/models/nope@1") as response:
        assert response.status == 404 and "no model nope@1" in (await response.json())["error"]


async def test_compile_returns_the_module_its_report_and_payload(api):
    session, stack = api
    await stack.device("m55-0001", PROFILES["cortex-m55-ethos-u55"])
    await stack.deployment.add_model(DENSE, "dense", "1.0")
    await stack.deployment.add_model(b"\x7fELF image", "fw", "1.0", fmt="firmware")
    m55_class = stack.server.profile("m55-0001").device_class

    async def compile_(body):
        async with session.post("/api/v1/compile", json=body) as response:
            return response.status, await response.json()

    status, first = await compile_({"model": "dense@1.0", "device_class": m55_class})
    assert status == 200 and first["plugin"] == "vela" and first["cache_hit"] is False
    payload = base64.b64decode(first["payload_base64"])
    assert hashlib.sha256(payload).hexdigest() == first["module"]["payload"]["sha256"]
    assert first["module"]["accelerator"] == NPU and first["module"]["log"] and first["module"]["report"]["macs"] > 0
    assert first["endpoint"] == "m55-0001" and [r["plugin"] for r in first["ranking"][:2]] == ["vela", "tflm"]
    status, again = await compile_({"model": "dense@1.0", "endpoint": "m55-0001", "plugin": "tflm"})
    assert status == 200 and again["plugin"] == "tflm" and again["pinned"] and again["cache_hit"] is True
    assert base64.b64decode(again["payload_base64"]) == DENSE

    status, refused = await compile_({"model": "dense@1.0", "endpoint": "m55-0001", "plugin": "litert"})
    assert status == 422 and refused["error"].startswith("pinned plugin litert does not fit: ")
    assert list(refused["reasons_by_plugin"]) == ["litert"]
    for body, code, words in (
            ({"model": "dense@1.0"}, 400, "give \"device_class\" or \"endpoint\""),
            ({"model": "dense@1.0", "device_class": m55_class, "endpoint": "m55-0001"}, 400, "not both"),
            ({"model": "dense@1.0", "device_class": "tflite-micro-9-nope"}, 404, f"known classes: {m55_class}"),
            ({"model": "dense@1.0", "endpoint": "ghost"}, 404, "no discovered device ghost"),
            ({"model": "dense@1.0", "endpoint": "m55-0001", "plugin": "nope"}, 400, "nope is not installed"),
            ({"model": "fw@1.0", "endpoint": "m55-0001"}, 400, "firmware image"),
            ({"model": "gone@1", "endpoint": "m55-0001"}, 404, "no model gone@1"),
            ({"model": "dense@1.0", "endpoint": "m55-0001", "options": {}}, 400, "unknown field(s) 'options'")):
        status, answer = await compile_(body)
        assert status == code and words in answer["error"], (body, answer)
    async with session.get("/api/v1/models/fw@1.0") as response:
        assert (await response.json())["classes"] == []
