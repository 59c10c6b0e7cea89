"""The conformance kit: does a compiler plugin follow the standard (docs/compiler-plugins.md)?

:func:`check_plugin` runs a plugin through the contract the server relies on and
returns one :class:`Finding` per check. It needs the plugin's own
:meth:`~.base.CompilerPlugin.conformance_samples` — models with a target each
fits — and derives everything else from them:

* the attributes are there and typed (name, version, accepts, targets,
  output_format, lossy, priority);
* per sample: ``validate`` accepts the model, ``check`` returns no reason,
  ``compile`` returns a module whose JSON form follows ``result.schema.json``,
  whose payload format is the plugin's and one the target installs, whose
  runtime is one of the plugin's, whose source digest is the model's, and
  which :func:`~.base.fit_reasons` lets onto the target;
* per sample, a target of the same device class with more memory gets the
  same payload and figures (a module is compiled once per class and served to
  every device of it);
* per sample, targets it must not fit — another runtime name, formats without
  the plugin's output format — make ``check`` return reasons and ``compile``
  raise :class:`~.base.Incompatible`;
* per accepted format, malformed bytes make ``validate``, ``check`` and
  ``compile`` raise :class:`~.base.ModelError`;
* nothing the plugin does raises outside :class:`~.base.CompilerError`.

``tinymlaas plugins check NAME`` prints the findings.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Set
from dataclasses import dataclass, replace
from typing import Any, Callable

from .base import (CompiledModule, CompilerError, CompilerPlugin, ConformanceSample, Incompatible,
                   ModelError, ModelInput, TargetSpec, fit_reasons)
from .describe import module_to_json, schema_errors

GARBAGE = b"\x00garbage"
"""Bytes no model format accepts: what the kit uploads as a malformed model."""
OTHER_RUNTIME = "conformance-kit-no-such-runtime"
"""Runtime name of the derived target no plugin compiles for."""
SAME_CLASS_FIELDS = ("payload_digest", "payload_format", "runtime", "required_arena_bytes",
                     "required_ram_bytes", "required_flash_bytes", "required_ops", "inputs", "outputs",
                     "accelerator")
"""What must not change between two targets of one device class (the cache serves one module to both)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check of the kit."""

    check: str
    """What was checked, e.g. ``sample 1: compile``."""
    passed: bool
    """True when the plugin behaved as the standard says."""
    message: str
    """What was found; on failure, what is wrong and what the standard expects."""


class _Calls:
    """Runs plugin methods, turning exceptions into values and remembering those outside CompilerError."""

    def __init__(self) -> None:
        self.foreign: list[str] = []
        """``what: error`` of each call that raised something other than a CompilerError."""

    def run(self, what: str, function: Callable[..., Any], *args: Any) -> tuple[Any, Exception | None]:
        try:
            return function(*args), None
        except CompilerError as error:
            return None, error
        except Exception as error:  # a plugin bug: the kit reports it instead of dying
            self.foreign.append(f"{what}: {describe_error(error)}")
            return None, error


def describe_error(error: BaseException) -> str:
    """``KeyError: 'x' (at plugin.py:12)``: the exception and the plugin line that raised it."""
    text = f"{type(error).__name__}: {getattr(error, 'reason', None) or error}"
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        text += f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})"
    return text


def check_plugin(plugin: CompilerPlugin) -> list[Finding]:
    """Every check of the kit on ``plugin``, in order; the plugin conforms when all passed."""
    calls = _Calls()
    findings = _attributes(plugin, calls)
    methods_missing = any(f.check.startswith("method ") for f in findings)
    samples = [] if methods_missing else _samples(plugin, calls, findings)
    for number, sample in enumerate(samples, 1):
        findings += _sample(plugin, sample, f"sample {number}", calls)
    if samples:
        findings += _garbage(plugin, samples, calls)
    findings.append(Finding("only CompilerError raised", not calls.foreign,
                            "every error was a CompilerError" if not calls.foreign else
                            "check, compile and validate may raise only CompilerError subclasses; raised: "
                            + "; ".join(calls.foreign)))
    return findings


# ---- attributes and samples ------------------------------------------------------------------

def _lower_names(value: Any) -> str:
    """Why ``value`` is not a non-empty set of lower-case names; "" when it is."""
    if not isinstance(value, Set):
        return f"must be a set of names (a frozenset), got {type(value).__name__}"
    if not value:
        return "must not be empty"
    bad = sorted(repr(v) for v in value if not isinstance(v, str) or not v or v != v.strip().lower())
    return f"names must be non-empty lower-case text, got {', '.join(bad)}" if bad else ""


def _attributes(plugin: CompilerPlugin, calls: _Calls) -> list[Finding]:
    def text(value: Any) -> str:
        return "" if isinstance(value, str) and value.strip() else f"must be non-empty text, got {value!r}"

    def lower_text(value: Any) -> str:
        return text(value) or ("" if value == value.strip().lower() else f"must be lower case, got {value!r}")

    rules: dict[str, Callable[[Any], str]] = {
        "name": text, "version": text, "accepts": _lower_names, "targets": _lower_names,
        "output_format": lower_text,
        "lossy": lambda v: "" if isinstance(v, bool) else f"must be a bool, got {v!r}",
        "priority": lambda v: "" if isinstance(v, int) and not isinstance(v, bool) else f"must be an int, got {v!r}",
    }
    findings = []
    for attribute, rule in rules.items():
        value, error = calls.run(f"reading {attribute}", getattr, plugin, attribute)
        problem = f"reading it raised {describe_error(error)}" if error else rule(value)
        shown = sorted(value) if isinstance(value, Set) and not problem else value
        findings.append(Finding(f"attribute {attribute}", not problem, problem or f"{attribute} = {shown!r}"))
    for method in ("validate", "check", "compile", "conformance_samples"):
        if not callable(getattr(plugin, method, None)):
            findings.append(Finding(f"method {method}", False, f"the plugin has no {method}() method"))
    return findings


def _samples(plugin: CompilerPlugin, calls: _Calls, findings: list[Finding]) -> list[ConformanceSample]:
    supply = ("supply conformance_samples(): a list of ConformanceSample(model, target), each a valid "
              "model of an accepted format and a target it fits; the kit derives the rest from them")
    got, error = calls.run("conformance_samples()", getattr(plugin, "conformance_samples", list))
    if error is not None:
        findings.append(Finding("samples", False, f"conformance_samples() raised {describe_error(error)}"))
        return []
    samples = list(got) if isinstance(got, (list, tuple)) else []
    if not samples:
        findings.append(Finding("samples", False, f"the plugin offers no sample: {supply}"))
        return []
    usable = []
    accepts, targets = getattr(plugin, "accepts", frozenset()), getattr(plugin, "targets", frozenset())
    for number, sample in enumerate(samples, 1):
        problem = ""
        if not isinstance(sample, ConformanceSample):
            problem = f"is a {type(sample).__name__}, not a ConformanceSample"
        elif sample.model.format not in accepts:
            problem = f"model format {sample.model.format!r} is not one the plugin accepts"
        elif sample.target.runtime not in targets:
            problem = f"target runtime {sample.target.runtime!r} is not one the plugin targets"
        if problem:
            findings.append(Finding(f"sample {number}", False, f"sample {number} {problem}"))
        else:
            usable.append(sample)
    if usable:
        findings.append(Finding("samples", True, f"{len(usable)} sample(s): " + ", ".join(
            f"{s.model.name or s.model.digest[:12]} ({s.model.format}, {len(s.model.data)} B) for "
            f"{s.target.runtime} on {s.target.cpu_core}" for s in usable)))
    return usable


# ---- per sample ------------------------------------------------------------------------------

def _reasons(value: Any) -> str:
    """Why ``value`` is not a list of reasons (text); "" when it is."""
    if not isinstance(value, list) or not all(isinstance(r, str) and r for r in value):
        return f"check must return a list of non-empty reasons (text), got {value!r}"
    return ""


def _sample(plugin: CompilerPlugin, sample: ConformanceSample, label: str, calls: _Calls) -> list[Finding]:
    model, target = sample.model, sample.target
    findings = []
    _, error = calls.run(f"{label} validate", plugin.validate, model)
    findings.append(Finding(f"{label}: validate", error is None,
                            "the sample model is valid" if error is None else
                            f"validate refused the sample model: {describe_error(error)}"))
    reasons, error = calls.run(f"{label} check", plugin.check, model, target)
    problem = f"check raised {describe_error(error)}" if error else _reasons(reasons) or (
        f"check refused the sample's target: {'; '.join(reasons)}" if reasons else "")
    findings.append(Finding(f"{label}: check", not problem, problem or "check returns no reason"))

    module, error = calls.run(f"{label} compile", plugin.compile, model, target)
    if error is not None or not isinstance(module, CompiledModule):
        why = describe_error(error) if error else f"returned {type(module).__name__}, not a CompiledModule"
        findings.append(Finding(f"{label}: compile", False, f"compile failed on its own sample: {why}"))
        return findings + _unfitting(plugin, model, target, label, calls)
    findings.append(Finding(f"{label}: compile", True,
                            f"payload {len(module.payload)} B (sha256 {module.payload_digest[:16]}…), "
                            f"arena {module.required_arena_bytes} B, RAM {module.required_ram_bytes} B"))
    findings += _module(plugin, model, target, module, label)
    findings.append(_same_class(plugin, model, target, module, label, calls))
    return findings + _unfitting(plugin, model, target, label, calls)


def _module(plugin: CompilerPlugin, model: ModelInput, target: TargetSpec, module: CompiledModule,
            label: str) -> list[Finding]:
    findings = []
    try:
        document = module_to_json(module)
        json.dumps(document, allow_nan=False)
        problems = schema_errors("result", document)
    except Exception as error:  # a report, op name or tensor that has no JSON form
        problems = [f"the result has no JSON form: {type(error).__name__}: {error}"]
    findings.append(Finding(f"{label}: result schema", not problems,
                            "the result follows result.schema.json" if not problems else
                            "the result does not follow result.schema.json: " + "; ".join(problems)))
    output_format = getattr(plugin, "output_format", None)
    ok = module.payload_format == output_format and module.payload_format in target.formats
    findings.append(Finding(f"{label}: payload format", ok,
                            f"payload format {module.payload_format!r}, the plugin's output_format "
                            f"{output_format!r}, target installs {', '.join(sorted(target.formats)) or 'none'}"))
    targets = getattr(plugin, "targets", frozenset())
    shown = ", ".join(sorted(targets)) if isinstance(targets, Set) else repr(targets)
    findings.append(Finding(f"{label}: runtime", module.runtime in targets,
                            f"module runtime {module.runtime!r}, plugin targets {shown}"))
    findings.append(Finding(f"{label}: source digest", module.source_digest == model.digest,
                            "source_digest is the model's SHA-256" if module.source_digest == model.digest else
                            f"source_digest is {module.source_digest!r}, the model's SHA-256 is {model.digest}"))
    reasons = fit_reasons(module, target)
    findings.append(Finding(f"{label}: fits its target", not reasons,
                            "fit_reasons(module, target) is empty" if not reasons else
                            "the module does not fit the target check accepted: " + "; ".join(reasons)))
    return findings


def _same_class(plugin: CompilerPlugin, model: ModelInput, target: TargetSpec, module: CompiledModule,
                label: str, calls: _Calls) -> Finding:
    sibling = replace(target, ram_bytes=target.ram_bytes * 2 + 4096, flash_bytes=target.flash_bytes * 2 + 4096,
                      arena_budget_bytes=target.arena_budget_bytes * 2 + 4096)
    assert sibling.device_class == target.device_class  # memory is not part of the class
    check = f"{label}: same class, more memory"
    other, error = calls.run(f"{label} compile for more memory", plugin.compile, model, sibling)
    if error is not None or not isinstance(other, CompiledModule):
        why = describe_error(error) if error else f"returned {type(other).__name__}"
        return Finding(check, False, f"compile for a device of the same class with more memory failed: {why}")
    changed = [f"{name} {getattr(module, name)!r} → {getattr(other, name)!r}"
               for name in SAME_CLASS_FIELDS if getattr(module, name) != getattr(other, name)]
    if changed:
        return Finding(check, False, "a device of the same class with more memory got another module (the "
                       "module is compiled once per class; memory may only decide whether it fits): "
                       + "; ".join(changed))
    return Finding(check, True, f"same payload (sha256 {module.payload_digest[:16]}…) and figures for "
                                f"{sibling.ram_bytes} B RAM, {sibling.flash_bytes} B storage, "
                                f"{sibling.arena_budget_bytes} B arena")


def _unfitting(plugin: CompilerPlugin, model: ModelInput, target: TargetSpec, label: str,
               calls: _Calls) -> list[Finding]:
    output_format = getattr(plugin, "output_format", "")
    derived = {
        f"runtime {OTHER_RUNTIME!r}": replace(target, runtime=OTHER_RUNTIME),
        f"formats without {output_format!r}": replace(target, formats=target.formats - {output_format}),
    }
    findings = []
    for what, unfit in derived.items():
        check = f"{label}: refuses {what}"
        reasons, error = calls.run(f"{label} check for {what}", plugin.check, model, unfit)
        if error is not None:
            findings.append(Finding(check, False, f"check raised {describe_error(error)} instead of "
                                                  "returning the reasons"))
            continue
        problem = _reasons(reasons) or ("" if reasons else "check returned no reason for a target it cannot serve")
        if problem:
            findings.append(Finding(check, False, problem))
            continue
        _, error = calls.run(f"{label} compile for {what}", plugin.compile, model, unfit)
        if isinstance(error, Incompatible):
            findings.append(Finding(check, True, f"check: {'; '.join(reasons)}; compile raised Incompatible"))
        else:
            why = describe_error(error) if error else "returned a module"
            findings.append(Finding(check, False, f"compile must raise Incompatible for a target check "
                                                  f"refuses, but {why}"))
    return findings


def _garbage(plugin: CompilerPlugin, samples: list[ConformanceSample], calls: _Calls) -> list[Finding]:
    findings = []
    for fmt in sorted(getattr(plugin, "accepts", ())):
        target = next((s.target for s in samples if s.model.format == fmt), samples[0].target)
        garbage = ModelInput(GARBAGE, fmt, "garbage", "1")
        for method, args in (("validate", (garbage,)), ("check", (garbage, target)),
                             ("compile", (garbage, target))):
            check = f"malformed {fmt}: {method}"
            _, error = calls.run(f"{method} of malformed {fmt}", getattr(plugin, method), *args)
            if isinstance(error, ModelError):
                findings.append(Finding(check, True, f"ModelError: {error.reason}"))
            else:
                why = describe_error(error) if error else "returned normally"
                findings.append(Finding(check, False, f"{method} of {GARBAGE!r} as {fmt!r} must raise "
                                                      f"ModelError naming the problem, but {why}"))
    return findings
