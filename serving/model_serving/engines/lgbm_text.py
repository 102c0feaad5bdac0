"""Read a LightGBM native text model into plain trees, for code generation.

The text is cut into header and tree blocks by model_store.native_model (the check the operator
runs on every version); this module keeps what the compiled trees need.

Only what prediction needs is kept: numeric splits (feature, threshold,
decision type, children) and leaf values. Thresholds and leaf values are
printed by LightGBM with 17 significant digits and parsed here with Python's
correctly rounded `float`, so they are the same doubles LightGBM holds.

Anything this module cannot represent exactly raises `Unsupported`, so the
caller keeps LightGBM's own predictor instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from model_store.native_model import MalformedModel, split_model_text

# LightGBM's decision_type bit layout (include/LightGBM/tree.h).
_CATEGORICAL_MASK = 1
_DEFAULT_LEFT_MASK = 2


# The generated code copies a row onto the stack (twice for the nested layout).
MAX_FEATURES = 16384


class Unsupported(ValueError):
    """A model feature the compiler does not handle (the caller falls back to LightGBM)."""


class MissingType(IntEnum):
    NONE = 0  # NaN is read as 0.0, then compared
    ZERO = 1  # 0.0 (and NaN, read as 0.0) goes the default way
    NAN = 2  # NaN goes the default way; 0.0 is compared


@dataclass(frozen=True)
class Split:
    feature: int
    threshold: float
    missing: MissingType
    default_left: bool
    left: int  # >= 0: internal node index; < 0: leaf ~index
    right: int


@dataclass(frozen=True)
class Tree:
    splits: tuple[Split, ...]  # empty for a single-leaf tree
    leaf_values: tuple[float, ...]


@dataclass(frozen=True)
class Forest:
    objective: str  # "binary" or "multiclass"
    sigmoid: float  # binary only
    num_class: int  # 1 for binary
    num_features: int
    trees: tuple[Tree, ...]  # tree i adds to class i % num_class

    @property
    def num_outputs(self) -> int:
        """Probability columns returned to callers: binary reports both classes."""
        return 2 if self.objective == "binary" else self.num_class


def parse_model_text(text: str) -> Forest:
    """Parse LightGBM's `model_to_string()` output; raise Unsupported for what we cannot compile."""
    try:
        model = split_model_text(text)
    except MalformedModel as exc:
        raise Unsupported(str(exc)) from None
    header = model.header
    if "average_output" in header:
        raise Unsupported("random-forest models (average_output) are not compiled")
    objective, sigmoid = _objective(header.get("objective", ""))
    num_class = int(header.get("num_class", "1"))
    per_iteration = int(header.get("num_tree_per_iteration", "1"))
    if per_iteration != num_class:
        raise Unsupported(f"num_tree_per_iteration={per_iteration} differs from num_class={num_class}")
    if (objective == "binary") != (num_class == 1):
        raise Unsupported(f"objective {objective} with num_class={num_class}")
    num_features = int(header["max_feature_idx"]) + 1
    if num_features > MAX_FEATURES:
        raise Unsupported(f"{num_features} features: the compiled row copies are kept to {MAX_FEATURES}")

    trees = tuple(_parse_tree(kv, num_features) for kv in model.trees)
    if len(trees) % num_class:
        raise Unsupported(f"{len(trees)} trees is not a multiple of num_class={num_class}")
    return Forest(objective, sigmoid, num_class, num_features, trees)


def _objective(line: str) -> tuple[str, float]:
    name, *params = line.split()
    options = dict(p.split(":", 1) for p in params if ":" in p)
    if name == "multiclass":
        return name, 0.0
    if name == "binary":
        return name, float(options.get("sigmoid", "1"))
    raise Unsupported(f"objective {line!r} is not compiled (only binary and multiclass softmax)")


def _parse_tree(kv: dict[str, str], num_features: int) -> Tree:
    where = f"Tree={kv.get('Tree', '?')}"
    if kv.get("is_linear", "0") != "0":
        raise Unsupported(f"{where}: linear trees are not compiled")
    if kv.get("num_cat", "0") != "0":
        raise Unsupported(f"{where}: categorical splits are not compiled")
    num_leaves = int(kv["num_leaves"])
    leaves = tuple(float(v) for v in kv["leaf_value"].split())
    if len(leaves) != num_leaves:
        raise Unsupported(f"{where}: {len(leaves)} leaf values for num_leaves={num_leaves}")
    if num_leaves == 1:
        return Tree((), leaves)

    columns = [kv[k].split() for k in ("split_feature", "threshold", "decision_type", "left_child", "right_child")]
    if any(len(c) != num_leaves - 1 for c in columns):
        raise Unsupported(f"{where}: split arrays do not have num_leaves-1 entries")
    splits = []
    for feature_s, threshold_s, decision_s, left_s, right_s in zip(*columns, strict=True):
        decision = int(decision_s)
        if decision & _CATEGORICAL_MASK:
            raise Unsupported(f"{where}: categorical splits are not compiled")
        if (decision >> 2) & 3 not in tuple(MissingType):
            raise Unsupported(f"{where}: unknown missing type in decision_type={decision}")
        feature = int(feature_s)
        if not 0 <= feature < num_features:
            raise Unsupported(f"{where}: split on feature {feature} outside 0..{num_features - 1}")
        splits.append(
            Split(
                feature=feature,
                threshold=float(threshold_s),
                missing=MissingType((decision >> 2) & 3),
                default_left=bool(decision & _DEFAULT_LEFT_MASK),
                left=int(left_s),
                right=int(right_s),
            )
        )
    return Tree(tuple(splits), leaves)
