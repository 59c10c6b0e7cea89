"""Selection across vendors: every plugin that fits compiles, and the modules are ranked.

When several installed plugins fit a device, the server does not guess from the
plugins' attributes: it compiles the model with each of them (once per device
class and plugin, through the compile cache) and ranks the *modules* by
:func:`rank_key`, smallest first:

1. a module that runs on an accelerator the device has comes first (the NPU or
   DSP is what the device was built around; Vela's int8 path reaches it);
2. a lossless module before a lossy one (quantizing changes the numbers the
   model computes, so it is the fallback that makes a model fit; it wins only
   when it is the one path that reaches the accelerator, rule 1);
3. a lower ``estimated_latency_s``; a module without an estimate after every
   module with one (cycles alone do not rank: cycles of an NPU and of a CPU
   are not the same unit);
4. smaller ``storage_bytes`` (payload plus off-chip data);
5. higher plugin ``priority``, then the plugin name (deterministic).

A rollout may *pin* a plugin: then only that plugin is asked, and when it does
not fit the device is incompatible with its reasons, never served by another.
docs/compiler-plugins.md "Selection" is the operator's description of the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable

import structlog

from .base import (CompiledModule, CompilerError, CompilerPlugin, Incompatible, ModelError, ModelInput, TargetSpec,
                   fit_reasons)

log = structlog.get_logger(__name__)

RULE = ("accelerator the device has first, then lossless before lossy, then lower estimated latency "
        "(unknown last), then smaller storage, then higher priority, then name")
"""The ranking rule in one line, as the API and the CLI show it."""

Compile = Callable[[CompilerPlugin, ModelInput, TargetSpec], tuple[CompiledModule, bool | None]]
"""How a plugin's module is obtained: ``(module, cache_hit)``; ``cache_hit`` None without a cache."""


def compile_directly(plugin: CompilerPlugin, model: ModelInput, target: TargetSpec) -> tuple[CompiledModule, None]:
    """:data:`Compile` without a cache: the plugin compiles every time."""
    return plugin.compile(model, target), None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One installed plugin's verdict on one model for one target."""

    plugin: str
    """Plugin name."""
    version: str
    """Plugin version."""
    lossy: bool
    """The plugin's ``lossy`` flag."""
    priority: int = 0
    """The plugin's ``priority`` (a late tie-breaker)."""
    reasons: tuple[str, ...] = ()
    """Why the plugin cannot serve the target; empty when it fits."""
    module: CompiledModule | None = None
    """The module compiled; also kept when it compiled but does not fit the device's memory."""
    cache_hit: bool | None = None
    """Whether ``module`` came from the compile cache; None when nothing compiled or no cache was used."""
    rank: int | None = None
    """1 for the chosen module, 2 for the next, ...; None when the plugin does not fit."""

    @property
    def fits(self) -> bool:
        """True when the plugin compiled a module that fits the target."""
        return self.module is not None and not self.reasons

    def explanation(self) -> str:
        """What placed a fitting module where it is, in the rule's terms (``""`` when it does not fit)."""
        if not self.fits or self.module is None:
            return ""
        module = self.module
        latency = (f"estimate {module.estimated_latency_s * 1e3:.4g} ms" if module.estimated_latency_s is not None
                   else "no latency estimate")
        return "; ".join((f"on {module.accelerator}" if module.accelerator else "CPU only",
                          "lossy" if self.lossy else "lossless", latency, f"{module.storage_bytes} B of storage"))


def rank_key(candidate: Candidate) -> tuple[bool, bool, bool, float, int, int, str]:
    """Sort key of fitting candidates, smallest first (the module docstring gives the rule)."""
    module = candidate.module
    assert module is not None, "only fitting candidates are ranked"
    latency = module.estimated_latency_s
    return (not module.accelerator, candidate.lossy, latency is None, latency if latency is not None else 0.0,
            module.storage_bytes, -candidate.priority, candidate.plugin)


@dataclass(frozen=True, slots=True)
class Ranking:
    """Every asked plugin's verdict for one model and target: fitting ones in rank order, then the others."""

    candidates: tuple[Candidate, ...]
    """Fitting candidates by rank, then the others in the order the plugins were given."""
    pinned: str = ""
    """The plugin a rollout pinned (the only one asked); "" when the rule chose."""

    @property
    def chosen(self) -> Candidate | None:
        """The rank-1 candidate, or None when nothing fits."""
        first = self.candidates[0] if self.candidates else None
        return first if first is not None and first.rank == 1 else None

    @property
    def reasons_by_plugin(self) -> dict[str, list[str]]:
        """Each asked plugin's reasons (an empty list: it fits)."""
        return {c.plugin: list(c.reasons) for c in self.candidates}

    def require(self) -> Candidate:
        """The chosen candidate; :class:`Incompatible` naming every plugin's reasons when none fits."""
        chosen = self.chosen
        if chosen is not None:
            return chosen
        if self.pinned:
            [candidate] = self.candidates
            raise Incompatible(f"pinned plugin {self.pinned} does not fit: {'; '.join(candidate.reasons)}",
                               self.reasons_by_plugin)
        if not self.candidates:
            raise Incompatible("no compiler plugin is installed", {})
        summary = "; ".join(f"{c.plugin}: {', '.join(c.reasons)}" for c in self.candidates)
        raise Incompatible(f"no compiler plugin fits: {summary}", self.reasons_by_plugin)


def _candidate(plugin: CompilerPlugin, model: ModelInput, target: TargetSpec, compile: Compile) -> Candidate:
    base = Candidate(plugin.name, str(plugin.version), bool(getattr(plugin, "lossy", False)),
                     int(getattr(plugin, "priority", 0)))
    try:
        reasons = list(plugin.check(model, target))
    except ModelError:
        raise
    except CompilerError as exc:
        reasons = [exc.reason]
    except Exception as exc:  # a plugin bug must not hide the other plugins' verdicts
        log.warning("compiler_plugin_check_crashed", plugin=plugin.name, error=repr(exc))
        reasons = [f"check failed: {exc!r}"]
    if reasons:
        return replace(base, reasons=tuple(reasons))
    try:
        module, hit = compile(plugin, model, target)
    except ModelError:
        raise
    except Incompatible as exc:  # check passed, compile disagreed: its reason stands
        return replace(base, reasons=(exc.reason,))
    except CompilerError as exc:
        return replace(base, reasons=(f"compile failed: {exc.reason}",))
    except Exception as exc:  # as for check: one broken plugin is one plugin's reason
        log.warning("compiler_plugin_compile_crashed", plugin=plugin.name, error=repr(exc))
        return replace(base, reasons=(f"compile failed: {exc!r}",))
    # the module is the class's; this device's memory decides whether it goes here
    return replace(base, module=module, cache_hit=hit, reasons=tuple(fit_reasons(module, target)))


def rank_plugins(plugins: Iterable[CompilerPlugin], model: ModelInput, target: TargetSpec, *,
                 compile: Compile = compile_directly, pin: str = "") -> Ranking:
    """Ask every plugin (or only ``pin``), compile those whose check passes, rank the modules that fit.

    ``check`` runs with ``target``'s own figures; ``compile`` gives the class's
    module (pass the cache's, so each plugin compiles once per class); the module
    must then pass :func:`fit_reasons` for ``target``. :class:`ModelError`
    propagates (the model is at fault, not a plugin); anything else a plugin
    raises becomes that plugin's reason. A ``pin`` naming no installed plugin
    raises :class:`Incompatible` listing the installed ones.
    """
    plugins = list(plugins)
    if pin:
        pinned = [p for p in plugins if p.name == pin]
        if not pinned:
            installed = ", ".join(sorted(p.name for p in plugins)) or "none"
            reason = f"pinned plugin {pin} is not installed (installed: {installed})"
            raise Incompatible(reason, {pin: [reason]})
        plugins = pinned
    candidates = [_candidate(plugin, model, target, compile) for plugin in plugins]
    fitting = sorted((c for c in candidates if c.fits), key=rank_key)
    ranked = [replace(c, rank=i) for i, c in enumerate(fitting, 1)]
    return Ranking(tuple(ranked + [c for c in candidates if not c.fits]), pin)


def select_plugin(plugins: Iterable[CompilerPlugin], model: ModelInput,
                  target: TargetSpec) -> tuple[CompilerPlugin, dict[str, list[str]]]:
    """The plugin whose module ranks first (:func:`rank_plugins`, compiling without a cache),
    and every plugin's reasons (empty list = fits); :class:`Incompatible` when none fits,
    its ``reasons_by_plugin`` holding each plugin's reasons."""
    plugins = list(plugins)
    ranking = rank_plugins(plugins, model, target)
    chosen = ranking.require()
    return next(p for p in plugins if p.name == chosen.plugin), ranking.reasons_by_plugin
