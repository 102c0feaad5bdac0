"""LightGBM's native text model (`booster.save_model`), read without LightGBM.

The text is a header of `key=value` lines, then one `Tree=<i>` block of `key=value` lines per
tree, then `end of trees`. `split_model_text` cuts it into those parts (the serving engines build
their compiled trees from them); `check_model_text` checks what LightGBM's own loader needs to
load the model: the header fields it requires, and trees whose arrays have the lengths their
`num_leaves` gives, whose splits use features the model has and whose children are nodes or
leaves of the same tree.

The operator verifies every promotion with this check instead of loading the model in LightGBM:
`import lightgbm` brings scikit-learn and SciPy along (about 100 MB of a process that never
predicts), and the pods, which load the model for real, only turn Ready once it loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class MalformedModel(ValueError):
    """The text is not a LightGBM model LightGBM could load; the message says where."""


# Header fields LightGBM's loader (GBDT::LoadModelFromString) refuses a model without.
REQUIRED_HEADER = ("num_class", "num_tree_per_iteration", "label_index", "max_feature_idx", "feature_names")
# Per tree (Tree::Tree(const char*)): always, and for a tree that splits at all.
REQUIRED_TREE = ("num_leaves", "num_cat", "leaf_value")
REQUIRED_SPLITS = ("split_feature", "threshold", "decision_type", "left_child", "right_child")
_CATEGORICAL = 1  # decision_type bit: a categorical split


@dataclass(frozen=True)
class ModelText:
    header: dict[str, str]
    trees: tuple[dict[str, str], ...]  # the key=value lines of each Tree= block, in order


def native_header(model_text: bytes) -> dict[str, str]:
    """The key=value header of a LightGBM text model (before the first tree), read from its start."""
    head = model_text[: 1 << 16].split(b"\nTree=", 1)[0].decode("utf-8", "replace")
    return {m.group(1): m.group(2) for m in re.finditer(r"^([a-z_]+)=(.*)$", head, re.MULTILINE)}


def key_values(block: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in block.splitlines():
        key, eq, value = line.partition("=")
        pairs[key.strip()] = value.strip() if eq else ""
    return pairs


def split_model_text(text: str) -> ModelText:
    """The header and the tree blocks; MalformedModel when the text has no trees."""
    head, sep, rest = text.partition("\nTree=")
    if not sep:
        raise MalformedModel("the model text has no trees (no 'Tree=' block)")
    body = rest.split("\nend of trees", 1)[0]
    blocks = ("Tree=" + body).split("\nTree=")
    return ModelText(key_values(head), tuple(key_values(block) for block in blocks))


def check_model_text(text: str, feature_count: int | None = None) -> ModelText:
    """Raise MalformedModel unless LightGBM would load the text (taking `feature_count` features
    when given); return it cut into parts."""
    if not text.startswith("tree"):
        raise MalformedModel("a LightGBM text model starts with a 'tree' line")
    model = split_model_text(text)
    header = model.header
    missing = [key for key in REQUIRED_HEADER if key not in header]
    if missing:
        raise MalformedModel(f"the header lacks {', '.join(missing)}")
    num_class = _integer(header, "num_class", "the header", least=1)
    per_iteration = _integer(header, "num_tree_per_iteration", "the header", least=1)
    num_features = _integer(header, "max_feature_idx", "the header", least=0) + 1
    names = header["feature_names"].split()
    if len(names) != num_features:
        raise MalformedModel(f"feature_names lists {len(names)} names, max_feature_idx says {num_features}")
    if "feature_infos" in header and len(header["feature_infos"].split()) != num_features:
        raise MalformedModel(f"feature_infos has {len(header['feature_infos'].split())} entries, not {num_features}")
    if feature_count is not None and num_features != feature_count:
        raise MalformedModel(f"the model takes {num_features} features, not {feature_count}")
    if num_class > 1 and per_iteration != num_class:
        raise MalformedModel(f"num_tree_per_iteration={per_iteration} with num_class={num_class}")
    if len(model.trees) % per_iteration:
        raise MalformedModel(f"{len(model.trees)} trees is not a multiple of num_tree_per_iteration={per_iteration}")
    for index, tree in enumerate(model.trees):
        _check_tree(tree, f"Tree={index}", num_features)
    return model


def _check_tree(tree: dict[str, str], where: str, num_features: int) -> None:
    missing = [key for key in REQUIRED_TREE if key not in tree]
    if missing:
        raise MalformedModel(f"{where} lacks {', '.join(missing)}")
    leaves = _integer(tree, "num_leaves", where, least=1)
    _array(tree, "leaf_value", where, leaves, float)
    if leaves == 1:
        return
    missing = [key for key in REQUIRED_SPLITS if key not in tree]
    if missing:
        raise MalformedModel(f"{where} has {leaves} leaves but lacks {', '.join(missing)}")
    nodes = leaves - 1
    for feature in _array(tree, "split_feature", where, nodes, int):
        if not 0 <= feature < num_features:
            raise MalformedModel(f"{where} splits on feature {feature}, outside 0..{num_features - 1}")
    _array(tree, "threshold", where, nodes, float)
    decisions = _array(tree, "decision_type", where, nodes, int)
    for side in ("left_child", "right_child"):
        for child in _array(tree, side, where, nodes, int):
            if not (0 <= child < nodes or 0 <= ~child < leaves):
                raise MalformedModel(f"{where} {side} {child} is neither a node nor a leaf of the tree")
    categorical = _integer(tree, "num_cat", where, least=0)
    if categorical or any(d & _CATEGORICAL for d in decisions):
        for key in ("cat_boundaries", "cat_threshold"):
            if key not in tree:
                raise MalformedModel(f"{where} has categorical splits but lacks {key}")
        _array(tree, "cat_boundaries", where, categorical + 1, int)


def _integer(values: dict[str, str], key: str, where: str, least: int) -> int:
    try:
        number = int(values[key])
    except ValueError:
        raise MalformedModel(f"{where}: {key}={values[key]!r} is not a whole number") from None
    if number < least:
        raise MalformedModel(f"{where}: {key}={number} is below {least}")
    return number


def _array(values: dict[str, str], key: str, where: str, count: int, parse: Callable[[str], T]) -> list[T]:
    items = values[key].split()
    if len(items) != count:
        raise MalformedModel(f"{where}: {key} has {len(items)} entries, {count} expected")
    try:
        return [parse(item) for item in items]
    except ValueError:
        raise MalformedModel(f"{where}: {key} holds something that is not a number") from None
