"""Compiled trees against LightGBM itself: real models, real gcc, real ctypes.

Expected values always come from lightgbm.Booster.predict on the same model
text; the rows are built here from the model's own dump (dump_model JSON, not
our parser), so both sides of each comparison are independent.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from model_serving.engines.codegen.quickscorer_block import BLOCK_ROWS
from model_serving.engines.compiled_trees import CompiledPredictor, compile_trees
from model_serving.engines.lgbm_text import MissingType, parse_model_text
from model_serving.engines.verify import verify

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed: nothing to compile with")

K_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float literal widened)


def dumped_thresholds(booster: lgb.Booster) -> dict[int, list[float]]:
    """Every numeric threshold per feature, read from LightGBM's own JSON dump."""
    found: dict[int, set[float]] = {}

    def visit(node: dict) -> None:
        if "split_feature" in node:
            found.setdefault(node["split_feature"], set()).add(float(node["threshold"]))
            visit(node["left_child"])
            visit(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        visit(tree["tree_structure"])
    return {f: sorted(v) for f, v in found.items()}


def awkward_rows(booster: lgb.Booster, count: int = 400, seed: int = 3) -> np.ndarray:
    """Thresholds exactly and one ulp away, NaN, +-0, values LightGBM reads as 0, infinities."""
    rng = np.random.default_rng(seed)
    nf = booster.num_feature()
    rows = rng.normal(size=(count, nf))
    for feature, values in dumped_thresholds(booster).items():
        exact = rng.choice(values, size=count)
        pick = rng.random(count)
        column = rows[:, feature]
        column[pick < 0.35] = exact[pick < 0.35]
        up = (pick >= 0.35) & (pick < 0.45)
        column[up] = np.nextafter(exact[up], np.inf)
        down = (pick >= 0.45) & (pick < 0.55)
        column[down] = np.nextafter(exact[down], -np.inf)
    specials = [np.nan, 0.0, -0.0, K_ZERO, -K_ZERO, 5e-36, np.nextafter(K_ZERO, 1.0), np.inf, -np.inf]
    mask = rng.random(rows.shape) < 0.15
    rows[mask] = rng.choice(specials, size=int(mask.sum()))
    rows[0], rows[1], rows[2] = np.nan, 0.0, -K_ZERO
    return rows


def lightgbm_proba(booster: lgb.Booster, rows: np.ndarray) -> np.ndarray:
    probs = booster.predict(rows)
    return np.column_stack([1.0 - probs, probs]) if probs.ndim == 1 else probs


class BoosterPredictor:
    """lightgbm.Booster as a Predictor; `off` makes one probability wrong by that much, relative."""

    def __init__(self, booster: lgb.Booster, off: float = 0.0) -> None:
        self.booster, self.off = booster, off

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        probs = lightgbm_proba(self.booster, rows)
        probs[min(7, len(rows) - 1), 1] *= 1.0 + self.off
        return probs


def assert_same_as_lightgbm(text: str, cache: Path) -> str:
    booster = lgb.Booster(model_str=text)
    predictor = compile_trees(text, cache)
    assert predictor is not None, "a supported model must compile"
    assert predictor.engine == "compiled"
    verdict = verify(BoosterPredictor(booster), predictor, text, booster.num_feature())
    assert verdict.max_relative_error == 0.0, "the verifier's rows, too, come out bit for bit"
    rows = awkward_rows(booster)
    expected = lightgbm_proba(booster, rows)
    got = predictor.predict_proba(rows)
    assert got.shape == expected.shape
    # The per-class sums follow LightGBM's order, so they agree to the bit, not just 1e-12.
    np.testing.assert_array_equal(got, expected)
    session = predictor.row_session()
    out = np.empty(predictor.num_outputs)
    for i in range(25):
        session.row[:] = rows[i]
        np.testing.assert_array_equal(session.run(), expected[i])
        predictor.predict_row_into(np.ascontiguousarray(rows[i]), out)
        np.testing.assert_array_equal(out, expected[i])
    assert_batches_match(predictor, booster)
    return predictor.layout


def cpu_has_avx512() -> bool:
    """What the block kernel needs, read from the kernel's view of the CPU (not from our own check)."""
    found = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    flags = set(found[1].split()) if found else set()
    return {"avx512f", "avx512bw", "avx512vl", "avx512cd"} <= flags


def assert_batches_match(predictor: CompiledPredictor, booster: lgb.Booster) -> None:
    """Every batch size around the block (1..BLOCK_ROWS + 1, at several starts, so partial last
    blocks repeat different rows) and 1000 rows: the same bits as LightGBM and as the row path."""
    blocks_expected = predictor.layout == "quickscorer" and cpu_has_avx512()
    assert predictor.batch_blocks == blocks_expected, "blocks run for QuickScorer where the CPU has AVX-512"
    rows = awkward_rows(booster, count=1000, seed=11)
    expected = lightgbm_proba(booster, rows)
    np.testing.assert_array_equal(predictor.predict_proba(rows), expected)
    session = predictor.row_session()
    for i in range(len(rows)):
        session.row[:] = rows[i]
        np.testing.assert_array_equal(session.run(), expected[i], err_msg=f"row {i} alone")
    for n in range(1, BLOCK_ROWS + 2):
        for start in (0, 3, 2 * BLOCK_ROWS + 1, 997 - n):
            got = predictor.predict_proba(rows[start : start + n])
            np.testing.assert_array_equal(got, expected[start : start + n], err_msg=f"{n} rows from row {start}")


def train(params: dict, x: np.ndarray, y: np.ndarray, rounds: int = 25, **dataset: object) -> str:
    params = {"verbose": -1, "num_threads": 1, "seed": 1, **params}
    return lgb.train(params, lgb.Dataset(x, y, **dataset), num_boost_round=rounds).model_to_string()


def binary_data(nan: float = 0.0, zero: float = 0.0, n: int = 2000, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.3, size=n) > 0).astype(int)
    x[rng.random(x.shape) < nan] = np.nan
    x[rng.random(x.shape) < zero] = 0.0
    return x, y


def missing_types(text: str) -> set[tuple[MissingType, bool]]:
    return {(s.missing, s.default_left) for t in parse_model_text(text).trees for s in t.splits}


def test_demo_model_matches_lightgbm(demo_v1, tmp_path: Path) -> None:
    text = demo_v1.files["lightgbm_model.txt"].decode()
    assert assert_same_as_lightgbm(text, tmp_path) == "quickscorer"


@pytest.mark.parametrize(
    ("params", "nan", "zero", "rule"),
    [
        ({}, 0.1, 0.05, MissingType.NAN),
        ({"zero_as_missing": True}, 0.05, 0.2, MissingType.ZERO),
        ({"use_missing": False}, 0.1, 0.1, MissingType.NONE),
        ({"sigmoid": 2.5}, 0.1, 0.0, MissingType.NAN),
    ],
    ids=["nan-missing", "zero-missing", "no-missing", "sigmoid-2.5"],
)
def test_binary_models_match_lightgbm(params: dict, nan: float, zero: float, rule: MissingType, tmp_path: Path) -> None:
    text = train({"objective": "binary", **params}, *binary_data(nan, zero))
    kinds = missing_types(text)
    assert {m for m, _ in kinds} == {rule}, "the model should exercise the missing-value rule under test"
    if rule is not MissingType.NONE:
        assert {d for _, d in kinds} == {True, False}, "both default directions should occur"
    assert assert_same_as_lightgbm(text, tmp_path) == "quickscorer"


@pytest.mark.parametrize("leaves", [31, 60], ids=["32-bit-masks", "64-bit-masks"])
def test_wider_quickscorer_masks_match(leaves: int, tmp_path: Path) -> None:
    x, y = binary_data(0.1, 0.1, n=3000)
    text = train({"objective": "binary", "num_leaves": leaves, "min_data_in_leaf": 3}, x, y, rounds=6)
    widest = max(len(t.leaf_values) for t in parse_model_text(text).trees)
    assert widest > (16 if leaves == 31 else 32), "the trees should need the wider mask"
    assert assert_same_as_lightgbm(text, tmp_path) == "quickscorer"


@pytest.mark.parametrize("params", [{"zero_as_missing": True}, {}], ids=["zero-missing", "nan-missing"])
def test_trees_wider_than_the_masks_use_nested_code_and_match(params: dict, tmp_path: Path) -> None:
    text = train({"objective": "binary", "num_leaves": 90, "min_data_in_leaf": 3, **params}, *binary_data(0.1, 0.2), 4)
    assert max(len(t.leaf_values) for t in parse_model_text(text).trees) > 64
    assert assert_same_as_lightgbm(text, tmp_path) == "nested"


def test_multiclass_with_nan_and_plain_features_in_one_model_matches(tmp_path: Path) -> None:
    # Features with NaN in training get missing type NaN, the others None: both lists in one forest.
    x, y = binary_data(n=3000, seed=9)
    x[np.random.default_rng(9).random(3000) < 0.2, :5] = np.nan
    y = y + (x[:, 6] > 0.8)
    text = train({"objective": "multiclass", "num_class": 3}, x, y, rounds=15)
    assert {m for m, _ in missing_types(text)} == {MissingType.NAN, MissingType.NONE}
    assert assert_same_as_lightgbm(text, tmp_path) == "quickscorer"


def test_multiclass_with_single_leaf_trees_matches(tmp_path: Path) -> None:
    # A split must gain a lot: class 2's tree finds none and LightGBM writes a one-leaf tree.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 10))
    y = np.where(x[:, 0] > 0.5, 1, 0)
    y[x[:, 1] > 1.2] = 2
    text = train({"objective": "multiclass", "num_class": 3, "min_gain_to_split": 120}, x, y, rounds=5)
    trees = parse_model_text(text).trees
    assert any(not t.splits for t in trees) and any(t.splits for t in trees)
    assert_same_as_lightgbm(text, tmp_path)


@pytest.mark.parametrize("kind", ["categorical", "regression", "linear_tree"])
def test_unsupported_models_return_none(kind: str, tmp_path: Path) -> None:
    x, y = binary_data()
    if kind == "categorical":
        x[:, 3] = np.random.default_rng(0).integers(0, 6, len(x))
        y = (y + (x[:, 3] > 3)) % 2
        text = train({"objective": "binary", "min_data_per_group": 5}, x, y, categorical_feature=[3])
        assert re.search(r"^num_cat=[1-9]", text, re.MULTILINE), "the model should use a categorical split"
    elif kind == "regression":
        text = train({"objective": "regression"}, x, x[:, 0] * 2.0)
    else:
        text = train({"objective": "binary", "linear_tree": True}, x, y, rounds=3)
    assert compile_trees(text, tmp_path) is None
    assert not list(tmp_path.glob("*.so")), "nothing is built for an unsupported model"


def test_too_many_features_for_the_stack_returns_none(tmp_path: Path) -> None:
    text = train({"objective": "binary"}, *binary_data(), rounds=2)
    assert "\nmax_feature_idx=9\n" in text
    assert compile_trees(text.replace("\nmax_feature_idx=9\n", "\nmax_feature_idx=20000\n"), tmp_path) is None


def test_second_call_loads_the_cached_library_without_a_compiler(tmp_path: Path) -> None:
    text = train({"objective": "binary"}, *binary_data(0.1), rounds=10)
    first = compile_trees(text, tmp_path)
    assert first is not None and first.origin == "built"
    libraries = list(tmp_path.glob("*.so"))
    assert libraries == [first.so_path]
    mtime = first.so_path.stat().st_mtime_ns
    # A compiler that does not exist: the second call can only succeed from the disk cache.
    second = compile_trees(text, tmp_path, compiler=str(tmp_path / "no-such-gcc"))
    assert second is not None and second.origin == "disk"
    assert second.so_path == first.so_path and first.so_path.stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")], "no build leftovers"


def test_a_cached_library_is_opened_only_with_the_hash_this_process_built(tmp_path: Path) -> None:
    import model_serving.engines.compiled_trees as ct

    text = train({"objective": "binary"}, *binary_data(0.1), rounds=10)
    first = compile_trees(text, tmp_path)
    assert first is not None and first.origin == "built"
    # Someone replaces the library in the cache folder: it is rebuilt, never opened.
    first.so_path.write_bytes(first.so_path.read_bytes() + b"tampered")
    assert compile_trees(text, tmp_path, compiler=str(tmp_path / "no-such-gcc")) is None
    assert not first.so_path.exists(), "the changed library is removed"
    # A library this process did not build (an earlier container's): rebuilt rather than opened.
    again = compile_trees(text, tmp_path)
    assert again is not None and again.origin == "built"
    ct._BUILT.clear()
    assert compile_trees(text, tmp_path, compiler=str(tmp_path / "no-such-gcc")) is None
    assert compile_trees(text, tmp_path) is not None


def test_a_build_left_by_a_killed_process_is_cleaned_up(tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".build-killed", tmp_path / ".build-running"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "part.c").write_text("/* half written */")
    long_ago = time.time() - 7 * 24 * 3600
    os.utime(stale, (long_ago, long_ago))
    text = train({"objective": "binary"}, *binary_data(), rounds=2)
    assert compile_trees(text, tmp_path) is not None
    assert not stale.exists() and fresh.exists(), "only builds far older than any live one are removed"


def test_no_compiler_and_no_cache_returns_none(tmp_path: Path) -> None:
    text = train({"objective": "binary"}, *binary_data(), rounds=3)
    assert compile_trees(text, tmp_path, compiler=str(tmp_path / "no-such-gcc")) is None


def test_the_verifier_accepts_them_against_lightgbm_and_refuses_a_reference_that_disagrees(tmp_path: Path) -> None:
    text = train({"objective": "binary"}, *binary_data(0.1), rounds=5)
    booster = lgb.Booster(model_str=text)

    compiled = compile_trees(text, tmp_path)
    assert compiled is not None
    assert verify(BoosterPredictor(booster), compiled, text, booster.num_feature()).agrees
    assert not verify(BoosterPredictor(booster, off=1e-9), compiled, text, booster.num_feature()).agrees


def test_compiles_in_background_threads_sharing_one_cache(demo_v1, tmp_path: Path) -> None:
    text = demo_v1.files["lightgbm_model.txt"].decode()
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(compile_trees(text, tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2 and all(r is not None for r in results)
    assert len(list(tmp_path.glob("*.so"))) == 1


def test_row_entries_refuse_buffers_that_would_be_misread(demo_v1, tmp_path: Path) -> None:
    predictor = compile_trees(demo_v1.files["lightgbm_model.txt"].decode(), tmp_path)
    assert predictor is not None
    out = np.empty(predictor.num_outputs)
    with pytest.raises(ValueError, match="float64"):
        predictor.predict_row_into(np.zeros(predictor.num_features, dtype=np.float32), out)
    with pytest.raises(ValueError, match="shape"):
        predictor.predict_row_into(np.zeros(predictor.num_features + 1), out)
    with pytest.raises(ValueError, match="features"):
        predictor.predict_proba(np.zeros((2, 3)))
    assert predictor.predict_proba(np.zeros((0, predictor.num_features))).shape == (0, predictor.num_outputs)
    rows = np.random.default_rng(2).normal(size=(3, predictor.num_features))
    read_only = np.frombuffer(rows.tobytes(), dtype=np.float64).reshape(rows.shape)
    assert not read_only.flags.writeable
    np.testing.assert_array_equal(predictor.predict_proba(read_only), predictor.predict_proba(rows))
    np.testing.assert_array_equal(predictor.predict_proba(rows[1]), predictor.predict_proba(rows)[1:2])
    np.testing.assert_array_equal(predictor.predict_proba(rows[:, ::-1][:, ::-1]), predictor.predict_proba(rows))
