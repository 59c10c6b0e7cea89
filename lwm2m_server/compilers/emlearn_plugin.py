"""The ``emlearn`` plugin: tree classifiers (``emlearn-json``) → C for 8/32-bit MCUs.

`emlearn <https://emlearn.org>`_ turns decision trees and forests into plain C
without dynamic memory. Its converters (``emlearn.convert``) start from
scikit-learn estimators, but its code generator does not need them: it works
on the node lists that ``emlearn.trees.flatten_forest`` builds from any object
with scikit-learn's ``tree_`` attributes (``children_left``, ``feature``, …).
This plugin hands it such objects made from a parsed ``emlearn-json`` document
(:mod:`.classic_model`), so the server never imports scikit-learn, and emits
emlearn's *inline* code (one C function of nested ``if`` per tree; features
float32, no emlearn header needed).

Two things are adjusted so the C computes what the source model computes:

* split direction — the format (like scikit-learn) goes left when
  ``x <= threshold``, emlearn's code when ``x < value``. For float32 inputs
  both agree when ``value`` is the float32 just above the largest float32 not
  above ``threshold``, which is what the plugin gives emlearn;
* threshold precision — emlearn prints thresholds with ``%.6f``, which can move
  one past an input; the plugin's threshold values print their exact float32.

Voting: a single tree, or a forest whose leaves are pure (one class each),
compiles to emlearn's hard vote, which then equals scikit-learn's soft vote
exactly. Other forests compile to emlearn's soft vote with 8-bit class
proportions per leaf: probabilities within about 1/255 of the source model, and
the predicted class may differ where two classes are that close (the module's
report says ``"exact": false``).

Payload (``c-source``): one C99 translation unit, ASCII, starting with
:data:`C_SOURCE_MAGIC`, that needs only ``<stdint.h>``; only numbers from the
document reach it (names, labels and metadata never do), and it exports::

    int32_t tinymlaas_n_features(void);
    int32_t tinymlaas_n_classes(void);
    int32_t tinymlaas_predict(const float *features, int32_t n);     /* class, -1 if n is wrong */
    int32_t tinymlaas_predict_proba(const float *features, int32_t n,
                                    float *out, int32_t n_out);      /* 0, or -1 on wrong sizes */

Memory figures are estimates (``docs/classic-models.md``): flash = the code
emlearn's inline trees compile to on a Thumb-2 class core (bytes per decision
node, per leaf, per tree, fixed code, software-float routines on cores without
an FPU) plus the soft-vote leaf table; RAM = input and output copies, the vote
arrays and stack. The device keeps the source it receives as well as the built
code, so the storage check counts both. No tensor arena.
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..suit.model_info import TensorSpec
from .base import (CompiledModule, CompileFailed, CompilerPlugin, ConformanceSample, Incompatible,
                   ModelInput, TargetSpec)
from .classic_model import FORMAT_NAME, ClassicModel, Tree, parse
from .samples import sample_model

PLUGIN_VERSION = "1.0.0"
"""Version of this plugin's own logic; :attr:`EmlearnPlugin.version` adds emlearn's."""
OUTPUT_FORMAT = "c-source"
"""Payload format (26241/9): a C translation unit."""
C_SOURCE_MAGIC = "/* tinymlaas c-source v1"
"""First bytes of every payload (the simulated device checks them before building)."""
SYMBOL = "tinymlaas_model"
"""Name emlearn's generated functions are prefixed with."""

CODE_BYTES_PER_NODE = 16
"""Flash per decision node: load feature, compare with a literal, branch (+ the 4 B literal)."""
CODE_BYTES_PER_LEAF = 4
"""Flash per leaf of the source trees: return a constant (or a leaf-table offset)."""
CODE_BYTES_PER_TREE = 32
"""Flash per tree: function prologue/epilogue and its call sites in predict and predict_proba."""
CODE_BYTES_FIXED = 256
"""Flash of the vote/argmax functions and the tinymlaas_* entry points."""
CODE_BYTES_PER_TREE_CLASS_SOFT = 28
"""Soft vote only: flash per tree and class (the unrolled proportion sums in predict and predict_proba)."""
SOFT_FLOAT_BYTES = 2400
"""Cores without an FPU: flash of libgcc's float compare, add and divide routines."""
SOFT_FLOAT_SOFT_VOTE_BYTES = 800
"""Cores without an FPU, soft vote: flash of the float multiply and int→float routines besides those."""
STACK_BYTES = 96
"""RAM for the call frames of one inference."""
CYCLES_PER_LEVEL = {True: 8, False: 40}
"""Cycles per tree level on the path (hardware float: True, software float: False)."""
CYCLES_PER_TREE = 12
"""Cycles per tree for the call and the vote."""
CYCLES_PER_CLASS = {True: 6, False: 60}
"""Cycles per class per tree in the soft vote and the final argmax/normalisation."""
HARD_FLOAT_CORES = frozenset({"cortex-m4f", "cortex-m7", "cortex-m33", "cortex-m35p", "cortex-m55",
                              "cortex-m85", "esp32", "esp32s3", "x86_64", "amd64", "aarch64", "arm64"})
"""CPU cores (26241/6) taken to have a single-precision FPU."""


def _import_emlearn(module: str = "emlearn"):
    """Import an emlearn module without its side effect: ``emlearn.bayes`` (imported by the
    package) calls ``numpy.seterr(all='raise')``, which would turn every underflow in the
    whole server, and in other plugins, into an exception."""
    saved = np.geterr()
    try:
        return importlib.import_module(module)
    finally:
        np.seterr(**saved)


def emlearn_version() -> str | None:
    """Version of the installed emlearn package, or None when it is not installed."""
    try:
        emlearn = _import_emlearn()
    except ImportError:
        return None
    return str(emlearn.__version__)


class _ExactFloat(float):
    """A threshold that prints as its exact value whatever format emlearn asks for
    (emlearn writes ``"{:.6f}f".format(value)``)."""

    def __format__(self, spec: str) -> str:
        return repr(float(self))


def emlearn_threshold(threshold: float) -> float:
    """The float32 ``v`` with ``x < v`` ⇔ ``x <= threshold`` for every float32 ``x``."""
    with np.errstate(all="ignore"):  # a threshold near zero steps through subnormals
        below = np.float32(threshold)
        if float(below) > threshold:
            below = np.nextafter(below, np.float32(-np.inf))
        return float(np.nextafter(below, np.float32(np.inf)))


@dataclass(frozen=True, slots=True)
class _SklearnShapedTree:
    """The attributes of scikit-learn's ``Tree`` that ``emlearn.trees.flatten_tree`` reads."""

    node_count: int
    children_left: list[int]
    children_right: list[int]
    feature: list[int]
    threshold: list[_ExactFloat]
    value: np.ndarray  # (node_count, 1, n_classes)


def _shaped(tree: Tree, n_classes: int, soft: bool) -> _SklearnShapedTree:
    value = np.zeros((tree.n_nodes, 1, n_classes), dtype=np.float64)
    for node, weights in enumerate(tree.value):
        if weights is not None and tree.is_leaf(node):
            row = np.asarray(weights, dtype=np.float64)
            value[node, 0] = row / row.sum() if soft else row
    thresholds = [_ExactFloat(0.0 if tree.is_leaf(i) else emlearn_threshold(t)) for i, t in enumerate(tree.threshold)]
    return _SklearnShapedTree(tree.n_nodes, list(tree.left), list(tree.right),
                              [max(f, 0) for f in tree.feature], thresholds, value)


@dataclass(frozen=True, slots=True)
class GeneratedC:
    """What :func:`generate_c` made of a model."""

    source: bytes
    """The payload: one C translation unit."""
    soft_vote: bool
    """True for emlearn's soft vote with 8-bit leaf proportions, False for the hard vote."""
    exact: bool
    """True when the C's predicted class always equals the source model's."""
    decision_nodes: int
    """Decision nodes emitted (emlearn's flattened forest)."""
    leaves: int
    """Distinct leaves after emlearn's de-duplication."""
    leaf_table_bytes: int
    """Bytes of the soft-vote leaf proportion table (0 for the hard vote)."""


def generate_c(model: ClassicModel, version: str) -> GeneratedC:
    """The payload for ``model`` with emlearn's inline tree generator (deterministic);
    :class:`CompileFailed` when emlearn is missing or refuses the trees."""
    try:
        emlearn_trees = _import_emlearn("emlearn.trees")
    except ImportError:
        raise CompileFailed("the emlearn package is not installed on the server") from None
    soft = len(model.trees) > 1 and not model.pure_leaves
    leaf_bits = 8 if soft else 0
    try:
        forest = emlearn_trees.flatten_forest([_shaped(t, model.n_classes, soft) for t in model.trees],
                                              leaf="probabilities" if soft else "argmax", leaf_bits=leaf_bits)
        forest = emlearn_trees.remove_duplicate_leaves(forest)
        body = emlearn_trees.generate_c_inlined(forest, SYMBOL, model.n_features, n_classes=model.n_classes,
                                                leaf_bits=leaf_bits, dtype="float", classifier=True,
                                                include_proba=True)
    except (AssertionError, ValueError, IndexError, KeyError, TypeError) as error:  # emlearn checks with assert
        raise CompileFailed(f"emlearn refused the trees: {error!r}") from None
    nodes, _, leaves = forest
    exact = not soft
    n, c = model.n_features, model.n_classes
    header = (
        f"{C_SOURCE_MAGIC}: {model.model_type}, {len(model.trees)} tree(s), {n} float32 features, "
        f"{c} classes, {'soft vote, 8-bit leaf proportions' if soft else 'hard vote'}; "
        f"generated by the TinyMLaaS emlearn plugin {version} (emlearn inline trees) */\n"
        "/* Entry points:\n"
        " *   int32_t tinymlaas_n_features(void);\n"
        " *   int32_t tinymlaas_n_classes(void);\n"
        " *   int32_t tinymlaas_predict(const float *features, int32_t n);  -> class index, -1 if n is wrong\n"
        " *   int32_t tinymlaas_predict_proba(const float *features, int32_t n, float *out, int32_t n_out);\n"
        " *       -> 0 with a score per class in out, -1 on wrong sizes */\n"
    )
    entry = f"""
int32_t tinymlaas_n_features(void) {{ return {n}; }}

int32_t tinymlaas_n_classes(void) {{ return {c}; }}

int32_t tinymlaas_predict(const float *features, int32_t n) {{
    if (features == 0 || n != {n}) {{
        return -1;
    }}
    return {SYMBOL}_predict(features, n);
}}

int32_t tinymlaas_predict_proba(const float *features, int32_t n, float *out, int32_t n_out) {{
    if (features == 0 || out == 0 || n != {n} || n_out != {c}) {{
        return -1;
    }}
    return (int32_t){SYMBOL}_predict_proba(features, n, out, n_out);
}}
"""
    # emlearn indents every nesting level; without it the source of a deep forest is ~3x smaller
    lines = (line.strip() for line in body.splitlines())
    source = header + "\n".join(line for line in lines if line) + "\n" + entry
    return GeneratedC(source.encode("ascii"), soft, exact, len(nodes), len(leaves),
                      len(leaves) * c if soft else 0)


@dataclass(frozen=True, slots=True)
class Estimate:
    """Memory and time estimates of a generated model on one CPU core (never measured)."""

    code_bytes: int
    """Flash of the compiled code, leaf table included."""
    ram_bytes: int
    """RAM during one inference: input and output copies, vote arrays, stack."""
    cycles: int
    """Cycles of one inference along the deepest path of every tree."""
    hard_float: bool
    """Whether the core was taken to have an FPU."""


def estimate(model: ClassicModel, generated: GeneratedC, cpu_core: str) -> Estimate:
    """The figures described in the module docstring for ``cpu_core``."""
    hard_float = cpu_core in HARD_FLOAT_CORES
    trees = len(model.trees)
    c = model.n_classes
    code = (generated.decision_nodes * CODE_BYTES_PER_NODE + model.n_leaves * CODE_BYTES_PER_LEAF
            + trees * CODE_BYTES_PER_TREE + CODE_BYTES_FIXED)
    if generated.soft_vote:
        code += generated.leaf_table_bytes + trees * c * CODE_BYTES_PER_TREE_CLASS_SOFT
    if not hard_float:
        code += SOFT_FLOAT_BYTES + (SOFT_FLOAT_SOFT_VOTE_BYTES if generated.soft_vote else 0)
    ram = 4 * model.n_features + 4 + 3 * 4 * c + STACK_BYTES
    per_class = CYCLES_PER_CLASS[hard_float]
    cycles = (sum(t.depth for t in model.trees) * CYCLES_PER_LEVEL[hard_float] + trees * CYCLES_PER_TREE
              + (trees * c * per_class if generated.soft_vote else 0) + 2 * c * per_class)
    return Estimate(code, ram, cycles, hard_float)


class EmlearnPlugin(CompilerPlugin):
    """``emlearn-json`` tree classifiers → C source for MCUs running emlearn models."""

    name = "emlearn"
    accepts = frozenset({FORMAT_NAME})
    targets = frozenset({"emlearn"})
    output_format = OUTPUT_FORMAT

    def __init__(self) -> None:
        self._backend = emlearn_version()
        self._generated: OrderedDict[str, tuple[ClassicModel, GeneratedC]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def version(self) -> str:  # type: ignore[override]
        """Plugin version + emlearn's, e.g. ``1.0.0+emlearn.0.23.2``."""
        return f"{PLUGIN_VERSION}+emlearn.{self._backend or 'unavailable'}"

    def generated(self, model: ModelInput) -> tuple[ClassicModel, GeneratedC]:
        """The parsed model and its C (cached per model digest)."""
        with self._lock:
            if model.digest in self._generated:
                self._generated.move_to_end(model.digest)
                return self._generated[model.digest]
        parsed = parse(model.data)
        result = (parsed, generate_c(parsed, self.version))
        with self._lock:
            self._generated[model.digest] = result
            while len(self._generated) > 64:
                self._generated.popitem(last=False)
        return result

    def _verdict(self, model: ModelInput, target: TargetSpec
                 ) -> tuple[list[str], ClassicModel | None, GeneratedC | None, Estimate | None]:
        reasons = self.basic_reasons(model, target)
        if model.format not in self.accepts:
            return reasons, None, None, None
        parsed = parse(model.data)  # a malformed model is a ModelError whatever the target
        if reasons:
            return reasons, parsed, None, None
        if self._backend is None:
            return ["the emlearn package is not installed on the server"], parsed, None, None
        if parsed.model_type not in target.ops:
            kinds = sorted(target.ops)
            reasons.append(f"model kind {parsed.model_type!r} is not one the device runs "
                           f"(its model kinds: {', '.join(kinds) or 'none'})")
        try:
            _, generated = self.generated(model)
        except CompileFailed as error:
            return reasons + [error.reason], parsed, None, None
        figures = estimate(parsed, generated, target.cpu_core)
        source = len(generated.source)
        if source + figures.code_bytes > target.flash_bytes:
            reasons.append(f"C source {source} B + compiled code about {figures.code_bytes} B (estimate) = "
                           f"{source + figures.code_bytes} B, device model storage is {target.flash_bytes} B")
        if figures.ram_bytes > target.ram_bytes:
            reasons.append(f"needs about {figures.ram_bytes} B of RAM (estimate), device has {target.ram_bytes} B")
        return reasons, parsed, generated, figures

    def validate(self, model: ModelInput) -> None:
        parse(model.data)

    def check(self, model: ModelInput, target: TargetSpec) -> list[str]:
        return self._verdict(model, target)[0]

    def compile(self, model: ModelInput, target: TargetSpec,
                options: Mapping[str, Any] | None = None) -> CompiledModule:
        reasons, parsed, generated, figures = self._verdict(model, target)
        if reasons:
            raise Incompatible("; ".join(reasons))
        assert parsed is not None and generated is not None and figures is not None
        n, c = parsed.n_features, parsed.n_classes
        float_note = "hardware float" if figures.hard_float else "software float"
        return CompiledModule(
            payload=generated.source,
            payload_format=self.output_format,
            runtime=target.runtime,
            required_arena_bytes=0,
            required_ram_bytes=figures.ram_bytes,
            required_ops=frozenset({parsed.model_type}),
            inputs=(TensorSpec("features", "float32", (1, n)),),
            outputs=(TensorSpec("class", "int32", (1,)), TensorSpec("scores", "float32", (1, c))),
            compiler=self.name,
            compiler_version=self.version,
            source_digest=model.digest,
            cpu_ops=(parsed.model_type,),
            required_flash_bytes=figures.code_bytes,
            estimated_cycles=figures.cycles,
            estimate_source=f"emlearn plugin {PLUGIN_VERSION} static estimate: deepest path of every tree "
                            f"at fixed cycles per level ({float_note} on {target.cpu_core})",
            report={
                "model_type": parsed.model_type, "trees": len(parsed.trees), "n_features": n, "n_classes": c,
                "decision_nodes": generated.decision_nodes, "leaves": generated.leaves,
                "max_depth": parsed.max_depth, "voting": "soft" if generated.soft_vote else "hard",
                "exact": generated.exact, "source_bytes": len(generated.source),
                "code_bytes_estimate": figures.code_bytes, "leaf_table_bytes": generated.leaf_table_bytes,
                "ram_bytes_estimate": figures.ram_bytes, "cycles_estimate": figures.cycles,
                "emlearn": self._backend,
            },
            log=(
                f"{parsed.model_type}: {len(parsed.trees)} tree(s), {parsed.n_nodes} nodes, depth {parsed.max_depth}, "
                f"{n} features, {c} classes",
                f"emlearn {self._backend} inline trees: {generated.decision_nodes} decision nodes, "
                f"{generated.leaves} distinct leaves, "
                + ("soft vote with 8-bit leaf proportions (class may differ from the source model "
                   "where two classes are within ~1/255)" if generated.soft_vote
                   else "hard vote (same class as the source model)"),
                f"C source {len(generated.source)} B; estimates for {target.cpu_core} ({float_note}): "
                f"code about {figures.code_bytes} B, RAM about {figures.ram_bytes} B, "
                f"about {figures.cycles} cycles per inference",
            ),
        )

    def conformance_samples(self) -> list[ConformanceSample]:
        """The shipped one-tree sample (``samples/emlearn_sample.json``) on a small Cortex-M0+."""
        target = TargetSpec("emlearn", self._backend or "0.23.2", "cortex-m0plus", ram_bytes=2048,
                            flash_bytes=32768, arena_budget_bytes=0,
                            ops=frozenset({"decision_tree", "random_forest"}), formats=frozenset({OUTPUT_FORMAT}),
                            cpu_clock_hz=48_000_000)
        return [ConformanceSample(sample_model("emlearn_sample.json", FORMAT_NAME), target)]
