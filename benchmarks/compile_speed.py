"""Compile speed benchmark (issue 14): compile time per plugin, cold and warm, and the
compile cache's hit ratio when a model is rolled out to a simulated fleet.

    python benchmarks/compile_speed.py                 # every fixture model, median of 5 (a few minutes)
    python benchmarks/compile_speed.py --quick         # smoke run: one model per plugin, 1 run
    python benchmarks/compile_speed.py --runs 9 --fleet config/fleet.yaml

**Per plugin.** Every installed compiler plugin (``tinymlaas.compilers`` entry points)
compiles each model of ``tests/fixtures/models`` it accepts (format from the extension,
the plugin's ``validate`` passing) for each device class of ``--fleet``'s profiles it
fits (``check`` without a reason); a plugin that fits no class there uses the targets
of its own conformance samples (``example`` does: it targets the made-up ``example-rt``).
Each (plugin, model, class):

* *cold*: a new :class:`~lwm2m_server.compilers.CompileCache` in an empty folder, a new
  plugin instance and every in-process memo of the compiler modules forgotten (the
  module-level ``_CACHE`` tables of ``tflm`` and ``vela``), so ``get_or_compile`` pays
  what a fresh daemon pays for a model it never saw; imports are warm (one compile
  before the measured ones), since a daemon imports once;
* *warm*: the same ``get_or_compile`` again, answered from the cache on disk (the
  path a second device of the class, or a restarted daemon, takes).

Figures: wall ms (median of ``--runs``), the warm figure beside its baseline, the cold
one, as a ratio, and CPU ms per compile (this process plus its children: Vela runs as
a subprocess).

**Fleet.** For one model per family (``dense_int8.tflite``, ``dense_float.onnx``,
``classic_tree.json``) a :class:`~lwm2m_server.ota.deployment.Deployment` (SQLite store,
empty compile cache, a signing key, all in a temporary folder) builds the module of
every device of ``--fleet``'s ``fleet`` section (default: config/fleet.yaml, 50
devices in 6 classes) as enrolling a rollout does (``Deployment.build``): every plugin
that fits the device gives its module (selection ranks them), from the deployment's
rankings kept per device figures, else from the compile cache, else compiled.
Figures: compiles beside the baseline of a server without either (every fitting
plugin compiled for every device), the hit ratio (modules served without a compile),
wall seconds and CPU ms per device.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lwm2m_server.compilers import (CompileCache, CompilerError, CompilerPlugin, Incompatible,  # noqa: E402
                                    ModelError, ModelInput, TargetSpec, discover_plugins)
from lwm2m_server.logging_setup import configure_logging  # noqa: E402
from simulators.objects import DeviceObjects  # noqa: E402
from simulators.profiles import DeviceProfile, load_config  # noqa: E402

MODELS = ROOT / "tests" / "fixtures" / "models"
FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".json": "emlearn-json"}
FLEET_MODELS = ("dense_int8.tflite", "dense_float.onnx", "classic_tree.json")
"""One model per family for the fleet rollout."""


# -- targets ---------------------------------------------------------------------------------------


def target_of(profile: DeviceProfile, endpoint: str, seed: int) -> TargetSpec:
    """The target the server reads from a simulated device of ``profile`` (its /26241/0 and /3/0/10)."""
    objects = DeviceObjects(profile=profile, endpoint=endpoint, seed=seed, now=1_700_000_000)
    resources: dict[int, Any] = {}
    for path, value in objects.leaves("/26241/0").items():
        if len(path) == 4:  # a multiple-instance resource
            resources.setdefault(path.ids[2], {})[path.ids[3]] = value
        else:
            resources[path.ids[2]] = value
    return TargetSpec.from_resources(resources, memory_free_kb=objects.get("/3/0/10"))


def fixture_models() -> list[ModelInput]:
    return [ModelInput(path.read_bytes(), FORMATS[path.suffix], path.stem, "1")
            for path in sorted(MODELS.iterdir()) if path.suffix in FORMATS]


def fits(plugin: CompilerPlugin, model: ModelInput, target: TargetSpec) -> bool:
    try:
        return not plugin.check(model, target)
    except CompilerError:
        return False


def jobs(plugin: CompilerPlugin, classes: dict[str, TargetSpec], quick: bool) -> list[tuple[ModelInput, str, TargetSpec]]:
    """The (model, class name, target) a plugin is measured on."""
    models = []
    for model in fixture_models():
        if model.format in plugin.accepts:
            try:
                plugin.validate(model)
            except ModelError:
                continue  # e.g. classic_expected.json: test data, not a model
            models.append(model)
    found = [(m, name, t) for m in models for name, t in classes.items() if fits(plugin, m, t)]
    if not found:  # no fleet class runs its output: its own conformance samples
        found = [(s.model, f"sample:{s.target.cpu_core}", s.target) for s in plugin.conformance_samples()]
    if quick:
        first = found[0][0].digest if found else None
        found = [job for job in found if job[0].digest == first]
    return found


# -- measuring ---------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU of this process and its waited-for children (Vela runs as a subprocess)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(action: Callable[[], Any]) -> tuple[float, float]:
    """Wall and CPU seconds of ``action()``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    action()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def forget_memos() -> None:
    """Empty the compiler modules' in-process memo tables, as a fresh daemon has them."""
    for name, module in list(sys.modules.items()):
        if name.startswith("lwm2m_server.compilers.") and isinstance(getattr(module, "_CACHE", None), dict):
            module._CACHE.clear()


@dataclass(frozen=True, slots=True)
class CompileFigures:
    """Medians of one (plugin, model, class)."""

    plugin: str
    model: str
    device_class: str
    cold_ms: float
    warm_ms: float
    cold_cpu_ms: float
    warm_cpu_ms: float
    payload_bytes: int


def measure(plugin: CompilerPlugin, model: ModelInput, class_name: str, target: TargetSpec,
            runs: int, folder: Path) -> CompileFigures:
    payload = len(plugin.compile(model, target).payload)  # imports and backends warm, as in a running daemon
    cold, warm = [], []
    for run in range(runs):
        forget_memos()
        fresh = type(plugin)()  # instance memos (litert, onnxruntime, ptq-int8, emlearn) start empty too
        cache = CompileCache(folder / f"{plugin.name}-{model.digest[:12]}-{class_name}-{run}")
        cold.append(timed(lambda: cache.get_or_compile(fresh, model, target)))
        warm.append(timed(lambda: cache.get_or_compile(fresh, model, target)))
        assert cache.stats() == {"hits": 1, "misses": 1, "corrupted": 0}, cache.stats()
    ms = lambda values: statistics.median(values) * 1e3  # noqa: E731
    return CompileFigures(plugin.name, model.name, class_name, ms([w for w, _ in cold]), ms([w for w, _ in warm]),
                          ms([c for _, c in cold]), ms([c for _, c in warm]), payload)


@dataclass(frozen=True, slots=True)
class FleetFigures:
    """One model rolled out (modules built) to every device of the fleet."""

    model: str
    devices: int
    compatible: int
    compiles: int
    lookups: int
    hits: int
    wall_s: float
    cpu_ms_per_device: float


async def fleet_pass(model_file: Path, fleet: list[tuple[str, TargetSpec]], folder: Path) -> FleetFigures:
    from lwm2m_server.config import DeploymentConfig
    from lwm2m_server.ota.deployment import Deployment
    from lwm2m_server.store.sqlite import SqliteStore

    store = await SqliteStore.open(folder / "state.sqlite3")
    try:
        config = DeploymentConfig(data_dir=folder / "data", signing_key=folder / "keys" / "signing.pem")
        deployment = Deployment(config, store, clock=time.time)
        await deployment.start()
        record = await deployment.add_model(model_file.read_bytes(), model_file.stem, "1",
                                            FORMATS[model_file.suffix])
        compatible = modules = 0
        wall, cpu = time.perf_counter(), cpu_seconds()
        for _, target in fleet:
            try:
                _, ranking = await deployment.build(record, target)
            except Incompatible:
                continue
            compatible += 1
            modules += sum(1 for candidate in ranking.candidates if candidate.fits)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        compiles = deployment.cache.stats()["misses"]
    finally:
        await store.close()
    # modules: what a server without any cache compiles (every fitting plugin, every device)
    return FleetFigures(model_file.name, len(fleet), compatible, compiles, modules, modules - compiles, wall,
                        cpu * 1e3 / len(fleet))


# -- the run -------------------------------------------------------------------------------------------


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one model per plugin and 1 run (a smoke run)")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure; the median is shown (default: 5)")
    parser.add_argument("--fleet", type=Path, default=ROOT / "config" / "fleet.yaml",
                        help="simulator config: its profiles are the classes, its fleet the rollout "
                             "(default: config/fleet.yaml)")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    configure_logging("warning", "auto")
    config = load_config(args.fleet)
    classes = {name: target_of(profile, f"{name}-probe", 1) for name, profile in config.profiles.items()}
    fleet = [(endpoint, target_of(profile, endpoint, i)) for i, (endpoint, profile) in enumerate(config.endpoints())]

    compiles: list[CompileFigures] = []
    fleets: list[FleetFigures] = []
    with tempfile.TemporaryDirectory(prefix="compile-speed-") as tmp:
        for plugin in discover_plugins():
            for model, class_name, target in jobs(plugin, classes, args.quick):
                figures = measure(plugin, model, class_name, target, runs, Path(tmp))
                compiles.append(figures)
                print(f"{plugin.name} {model.name} for {class_name}: cold {figures.cold_ms:.1f} ms "
                      f"({figures.cold_cpu_ms:.1f} ms CPU), warm {figures.warm_ms:.2f} ms", flush=True)
        for index, name in enumerate(FLEET_MODELS):
            figures = asyncio.run(fleet_pass(MODELS / name, fleet, Path(tmp) / f"fleet-{index}"))
            fleets.append(figures)
            print(f"fleet {name}: {figures.compiles} compile(s) for {figures.devices} devices "
                  f"({figures.compatible} compatible), {figures.wall_s:.2f} s", flush=True)

    print(f"\nmedians of {runs} run(s); warm = the compile cache has the module, cold = it does not "
          "(and no in-process memo):")
    rows = [("plugin", "model", "class", "warm ms", "baseline: cold ms", "ratio", "CPU ms/compile cold",
             "CPU ms warm", "payload B")]
    rows += [(f.plugin, f.model, f.device_class, f"{f.warm_ms:.2f}", f"{f.cold_ms:.1f}",
              f"x{f.warm_ms / f.cold_ms:.3f}", f"{f.cold_cpu_ms:.1f}", f"{f.warm_cpu_ms:.2f}", str(f.payload_bytes))
             for f in compiles]
    print(table(rows))
    print(f"\nfleet rollout ({args.fleet.name}, {len(fleet)} devices): modules built with the compile cache")
    rows = [("model", "devices", "compatible", "compiles", "baseline: no cache", "ratio", "hit ratio", "wall s",
             "CPU ms/device")]
    rows += [(f.model, str(f.devices), str(f.compatible), str(f.compiles), str(f.lookups),
              f"x{f.compiles / f.lookups:.2f}" if f.lookups else "-",
              f"{f.hits / f.lookups:.2f}" if f.lookups else "-", f"{f.wall_s:.2f}", f"{f.cpu_ms_per_device:.1f}")
             for f in fleets]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
