"""The ``emlearn-json`` model format: trained tree classifiers as plain JSON.

Classic ML models (decision trees, random forests) are usually saved with
``pickle``/``joblib``, and loading a pickle runs code chosen by whoever wrote
the file. This format holds only numbers and names, so the server can take it
from any operator: :func:`parse` reads it with :mod:`json` and checks every
field; nothing in it is ever executed. ``docs/classic-models.md`` is the
specification; in short::

    {"format": "emlearn-json", "version": 1,
     "model_type": "random_forest",          # or "decision_tree" (exactly one tree)
     "n_features": 5, "n_classes": 3,
     "feature_names": ["t", "h", "ax", "ay", "az"],   # optional
     "classes": ["idle", "walk", "run"],               # optional labels of class 0, 1, ...
     "metadata": {"source": "sklearn 1.9.1"},          # optional, text only
     "trees": [{"feature":   [0, -1, -1],        # split feature; -1 at a leaf
                "threshold": [0.25, 0, 0],       # go left when x[feature] <= threshold
                "left":      [1, -1, -1],        # child indices; -1 at a leaf
                "right":     [2, -1, -1],
                "value":     [null, [9, 1, 0], [0, 2, 8]]}]}   # leaf class weights

Node 0 is a tree's root. A model's prediction is the class with the largest
weight at the leaf each tree reaches, voted over the trees (see the docs for
ties and soft voting). Features are float32, as on the device.

:func:`from_sklearn` makes such a document from a fitted scikit-learn
estimator. It is meant for the fixture script and for operators on their own
machines; the server never imports scikit-learn.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .base import ModelError

FORMAT_NAME = "emlearn-json"
"""Value of the ``format`` field, and the :attr:`~.base.ModelInput.format` of such uploads."""
FORMAT_VERSION = 1
"""The only ``version`` this module reads."""
MODEL_TYPES = ("decision_tree", "random_forest")
"""Model kinds; also the operator names (26241/2) a device lists for the kinds it runs."""

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
"""Largest document accepted, bytes."""
MAX_FEATURES = 1024
"""Most input features."""
MAX_CLASSES = 256
"""Most classes."""
MAX_TREES = 256
"""Most trees in a forest."""
MAX_NODES_PER_TREE = 32767
"""Most nodes in one tree (emlearn's node offsets are 16-bit)."""
MAX_TOTAL_NODES = 65536
"""Most nodes over all trees."""
MAX_DEPTH = 64
"""Deepest leaf (edges from the root); the generated C nests one block per level."""
MAX_TEXT = 256
"""Longest name, label or metadata value, characters."""
FLOAT32_MAX = 3.4028234663852886e38
"""Thresholds must lie strictly inside ±this (the features are float32)."""

_TOP_FIELDS = {"format", "version", "model_type", "n_features", "n_classes", "trees",
               "feature_names", "classes", "metadata"}
_TREE_FIELDS = ("feature", "threshold", "left", "right", "value")


@dataclass(frozen=True, slots=True)
class Tree:
    """One decision tree as parallel node arrays; node 0 is the root."""

    feature: tuple[int, ...]
    """Feature index a node splits on; -1 at a leaf."""
    threshold: tuple[float, ...]
    """A sample goes left when ``x[feature] <= threshold`` (compared in float32/float64 as scikit-learn does)."""
    left: tuple[int, ...]
    """Left child index; -1 at a leaf."""
    right: tuple[int, ...]
    """Right child index; -1 at a leaf."""
    value: tuple[tuple[float, ...] | None, ...]
    """Class weights per node (n_classes non-negative numbers); None where the document has null."""
    depth: int = 0
    """Edges from the root to the deepest leaf (computed by :func:`parse`)."""

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.feature)

    def is_leaf(self, node: int) -> bool:
        """True when ``node`` has no children."""
        return self.left[node] == -1

    @property
    def leaves(self) -> tuple[int, ...]:
        """Indices of the leaves, in node order."""
        return tuple(i for i in range(self.n_nodes) if self.is_leaf(i))


@dataclass(frozen=True, slots=True)
class ClassicModel:
    """A parsed and checked ``emlearn-json`` document."""

    model_type: str
    """One of :data:`MODEL_TYPES`."""
    n_features: int
    """Input features (float32 each)."""
    n_classes: int
    """Classes; the model predicts an index in ``range(n_classes)``."""
    trees: tuple[Tree, ...]
    """The trees (one for ``decision_tree``)."""
    feature_names: tuple[str, ...] = ()
    """Names of the features, or empty."""
    classes: tuple[str | int | float, ...] = ()
    """Labels of class 0, 1, …, or empty."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Free text about the model's origin."""

    @property
    def n_nodes(self) -> int:
        """Nodes over all trees."""
        return sum(t.n_nodes for t in self.trees)

    @property
    def n_leaves(self) -> int:
        """Leaves over all trees."""
        return sum(len(t.leaves) for t in self.trees)

    @property
    def max_depth(self) -> int:
        """Depth of the deepest tree."""
        return max(t.depth for t in self.trees)

    @property
    def pure_leaves(self) -> bool:
        """True when every leaf has weight on a single class (hard and soft voting then agree)."""
        return all(sum(1 for w in tree.value[leaf] or () if w > 0) == 1
                   for tree in self.trees for leaf in tree.leaves)


# ---- parsing ----------------------------------------------------------------------------

def _fail(path: str, reason: str) -> ModelError:
    return ModelError(f"{path}: {reason}")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {_show(value)}")
    if not low <= value <= high:
        raise _fail(path, f"must be in {low}..{high}, got {value}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(path, f"must be a finite number, got {_show(number)}")
    return number


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise _fail(path, f"must be text of 1..{MAX_TEXT} characters, got {_show(value)}")
    if not value.isprintable():
        raise _fail(path, "must not contain control characters")
    return value


def _array(value: Any, path: str, length: int | None = None, *, low: int = 1, high: int) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, f"must be an array, got {_show(value)}")
    if length is not None and len(value) != length:
        raise _fail(path, f"must have {length} entries, got {len(value)}")
    if not low <= len(value) <= high:
        raise _fail(path, f"must have {low}..{high} entries, got {len(value)}")
    return value


def _weights(value: Any, path: str, n_classes: int) -> tuple[float, ...]:
    items = _array(value, path, n_classes, high=MAX_CLASSES)
    weights = tuple(_number(w, f"{path}[{c}]") for c, w in enumerate(items))
    if any(w < 0 for w in weights):
        raise _fail(path, "class weights must be >= 0")
    return weights


def _tree(data: Any, path: str, n_features: int, n_classes: int) -> Tree:
    if not isinstance(data, dict):
        raise _fail(path, f"must be an object, got {_show(data)}")
    unknown = sorted(set(data) - set(_TREE_FIELDS))
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", "unknown field")
    for name in _TREE_FIELDS:
        if name not in data:
            raise _fail(f"{path}.{name}", "is missing")
    n = len(_array(data["feature"], f"{path}.feature", high=MAX_NODES_PER_TREE))
    for name in _TREE_FIELDS[1:]:
        _array(data[name], f"{path}.{name}", n, high=MAX_NODES_PER_TREE)
    left = tuple(_integer(v, f"{path}.left[{i}]", -1, n - 1) for i, v in enumerate(data["left"]))
    right = tuple(_integer(v, f"{path}.right[{i}]", -1, n - 1) for i, v in enumerate(data["right"]))
    features, thresholds, values = [], [], []
    for i in range(n):
        if (left[i] == -1) != (right[i] == -1):
            side = "right" if left[i] != -1 else "left"
            raise _fail(f"{path}.{side}[{i}]", "a node has two children or none (-1 on one side only)")
        leaf = left[i] == -1
        feature_path = f"{path}.feature[{i}]"
        if leaf:
            if data["feature"][i] != -1 or isinstance(data["feature"][i], bool):
                raise _fail(feature_path, f"must be -1 at a leaf, got {_show(data['feature'][i])}")
            features.append(-1)
        else:
            features.append(_integer(data["feature"][i], feature_path, 0, n_features - 1))
        threshold = _number(data["threshold"][i], f"{path}.threshold[{i}]")
        if abs(threshold) >= FLOAT32_MAX:
            raise _fail(f"{path}.threshold[{i}]", f"must be within ±{FLOAT32_MAX:.7g} (float32), got {threshold!r}")
        thresholds.append(threshold)
        raw = data["value"][i]
        if raw is None and not leaf:
            values.append(None)
            continue
        if raw is None:
            raise _fail(f"{path}.value[{i}]", "a leaf needs its class weights")
        weights = _weights(raw, f"{path}.value[{i}]", n_classes)
        if leaf and not sum(weights) > 0:
            raise _fail(f"{path}.value[{i}]", "a leaf's class weights must not all be 0")
        values.append(weights)
    depth = _check_shape(path, left, right)
    return Tree(tuple(features), tuple(thresholds), left, right, tuple(values), depth)


def _check_shape(path: str, left: tuple[int, ...], right: tuple[int, ...]) -> int:
    """Every node reached exactly once from node 0 (no cycle, no shared or orphan node); the depth."""
    seen = [False] * len(left)
    seen[0] = True
    stack = [(0, 0)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            raise _fail(path, f"is deeper than {MAX_DEPTH} levels")
        for side, children in (("left", left), ("right", right)):
            child = children[node]
            if child == -1:
                continue
            if seen[child]:
                what = "a cycle" if child == 0 or child == node else "a cycle or a shared subtree"
                raise _fail(f"{path}.{side}[{node}]", f"node {child} is reached twice ({what})")
            seen[child] = True
            stack.append((child, depth + 1))
    orphans = [i for i, reached in enumerate(seen) if not reached]
    if orphans:
        raise _fail(path, f"node {orphans[0]} is not reachable from the root (node 0)")
    return deepest


def parse(data: bytes) -> ClassicModel:
    """Read and check an ``emlearn-json`` document; :class:`~.base.ModelError` naming the field
    (``trees[0].left[3]: ...``) for anything malformed, out of range or over a size limit."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise _fail("document", f"is {len(data)} B, more than the {MAX_DOCUMENT_BYTES} B limit")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as error:
        raise _fail("document", f"is not UTF-8 text (byte {error.start})") from None
    try:
        # NaN/Infinity are not JSON; Python reads them anyway: keep them so the field check names them
        document = json.loads(text, parse_constant=float)
    except json.JSONDecodeError as error:
        raise _fail("document", f"is not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise _fail("document", "is nested too deeply") from None
    if not isinstance(document, dict):
        raise _fail("document", f"must be a JSON object, got {_show(document)}")
    unknown = sorted(set(document) - _TOP_FIELDS)
    if unknown:
        raise _fail(unknown[0], "unknown field")
    for name in ("format", "version", "model_type", "n_features", "n_classes", "trees"):
        if name not in document:
            raise _fail(name, "is missing")
    if document["format"] != FORMAT_NAME:
        raise _fail("format", f"must be {FORMAT_NAME!r}, got {_show(document['format'])}")
    _integer(document["version"], "version", FORMAT_VERSION, FORMAT_VERSION)
    model_type = document["model_type"]
    if model_type not in MODEL_TYPES:
        raise _fail("model_type", f"must be one of {', '.join(MODEL_TYPES)}, got {_show(model_type)}")
    n_features = _integer(document["n_features"], "n_features", 1, MAX_FEATURES)
    n_classes = _integer(document["n_classes"], "n_classes", 2, MAX_CLASSES)
    high = 1 if model_type == "decision_tree" else MAX_TREES
    raw_trees = _array(document["trees"], "trees", high=high)
    if sum(len(t["feature"]) for t in raw_trees if isinstance(t, dict) and isinstance(t.get("feature"), list)) \
            > MAX_TOTAL_NODES:
        raise _fail("trees", f"have more than {MAX_TOTAL_NODES} nodes in all")
    trees = tuple(_tree(t, f"trees[{i}]", n_features, n_classes) for i, t in enumerate(raw_trees))
    names: tuple[str, ...] = ()
    if document.get("feature_names") is not None:
        items = _array(document["feature_names"], "feature_names", n_features, high=MAX_FEATURES)
        names = tuple(_text(v, f"feature_names[{i}]") for i, v in enumerate(items))
    labels: tuple[str | int | float, ...] = ()
    if document.get("classes") is not None:
        items = _array(document["classes"], "classes", n_classes, high=MAX_CLASSES)
        labels = tuple(_text(v, f"classes[{i}]") if isinstance(v, str) else
                       (_integer(v, f"classes[{i}]", -2**53, 2**53) if isinstance(v, int) and not isinstance(v, bool)
                        else _number(v, f"classes[{i}]"))
                       for i, v in enumerate(items))
    metadata: dict[str, str] = {}
    if document.get("metadata") is not None:
        raw = document["metadata"]
        if not isinstance(raw, dict) or len(raw) > 64:
            raise _fail("metadata", "must be an object of at most 64 text entries")
        for key, value in raw.items():
            metadata[_text(key, "metadata")] = _text(value, f"metadata.{key}")
    return ClassicModel(model_type, n_features, n_classes, trees, names, labels, metadata)


# ---- export from scikit-learn (operators' machines, fixture scripts) ------------------------

_SKLEARN_KINDS = {
    "DecisionTreeClassifier": "decision_tree", "ExtraTreeClassifier": "decision_tree",
    "RandomForestClassifier": "random_forest", "ExtraTreesClassifier": "random_forest",
}


def _label(value: Any) -> str | int | float:
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else str(value)


def from_sklearn(estimator: Any, *, feature_names: list[str] | None = None,
                 metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An ``emlearn-json`` document (a dict; ``json.dumps`` it) of a fitted scikit-learn tree
    classifier: DecisionTreeClassifier, ExtraTreeClassifier, RandomForestClassifier or
    ExtraTreesClassifier with one output. ``feature_names`` default to the estimator's
    ``feature_names_in_`` (fitted on a DataFrame); ``metadata`` adds text entries. Imports
    scikit-learn (only here); raises :class:`~.base.ModelError` for other estimators. The
    result passes :func:`parse`."""
    from sklearn.utils.validation import check_is_fitted  # lazily: the server never needs sklearn

    kind = _SKLEARN_KINDS.get(type(estimator).__name__)
    if kind is None:
        raise ModelError(f"{type(estimator).__name__} is not supported "
                         f"(supported: {', '.join(sorted(_SKLEARN_KINDS))})")
    check_is_fitted(estimator)
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise ModelError("only single-output classifiers are supported")
    import sklearn

    estimators = list(estimator.estimators_) if kind == "random_forest" else [estimator]
    trees = []
    for member in estimators:
        tree = member.tree_
        leaf = [int(l) == -1 for l in tree.children_left]
        trees.append({
            "feature": [-1 if leaf[i] else int(f) for i, f in enumerate(tree.feature)],
            "threshold": [0.0 if leaf[i] else float(t) for i, t in enumerate(tree.threshold)],
            "left": [int(c) for c in tree.children_left],
            "right": [int(c) for c in tree.children_right],
            "value": [[float(w) for w in tree.value[i][0]] if leaf[i] else None for i in range(tree.node_count)],
        })
    document: dict[str, Any] = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "model_type": kind,
        "n_features": int(estimator.n_features_in_), "n_classes": int(estimator.n_classes_),
        "classes": [_label(c) for c in estimator.classes_],
    }
    names = feature_names if feature_names is not None else getattr(estimator, "feature_names_in_", None)
    if names is not None:
        document["feature_names"] = [str(n) for n in names]
    document["metadata"] = {"source": f"scikit-learn {sklearn.__version__} {type(estimator).__name__}",
                            **dict(metadata or {})}
    document["trees"] = trees
    return document
