"""The C-API predictor against LightGBM's own Booster.predict, and the engine swap rules."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from devstack.demo_model import DemoModel
from helpers.serving import served_model
from model_serving.engines.lgbm_capi import CApiPredictor, LightGBMError, find_library
from model_serving.engines.verify import TOLERANCE, probe_rows, split_thresholds, verify
from model_serving.loading.engine_swap import try_swap
from model_serving.metrics import Metrics


def model_text(demo: DemoModel) -> str:
    return demo.files["lightgbm_model.txt"].decode()


def test_library_is_found_without_importing_the_lightgbm_package() -> None:
    path = find_library()
    assert path.is_file() and path.name.startswith("lib_lightgbm")


def test_single_rows_and_batches_equal_booster_predict(demo_v1: DemoModel) -> None:
    text = model_text(demo_v1)
    booster = lgb.Booster(model_str=text)
    predictor = CApiPredictor(text)
    rows = probe_rows(text, predictor.n_features, count=300, seed=3)  # thresholds, NaN, zeros
    expected = booster.predict(rows)
    assert predictor.n_features == 84 and predictor.n_classes == 10
    np.testing.assert_allclose(predictor.predict_proba(rows), expected, rtol=0, atol=1e-9)
    singles = np.vstack([predictor.predict_proba(rows[i : i + 1]) for i in range(len(rows))])
    np.testing.assert_allclose(singles, expected, rtol=0, atol=1e-9)


def test_binary_model_reports_both_classes_like_the_classifier() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    clf = lgb.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1, n_jobs=1).fit(x, y)
    predictor = CApiPredictor(clf.booster_.model_to_string())
    assert predictor.n_classes == 2
    np.testing.assert_allclose(predictor.predict_proba(x[:50]), clf.predict_proba(x[:50]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(predictor.predict_proba(x[:1]), clf.predict_proba(x[:1]), rtol=0, atol=1e-9)


def test_wrong_shapes_and_bad_model_text_are_refused(demo_v1: DemoModel) -> None:
    predictor = CApiPredictor(model_text(demo_v1))
    with pytest.raises(ValueError, match=r"shape \(n, 84\)"):
        predictor.predict_proba(np.zeros((2, 83)))
    with pytest.raises(LightGBMError):
        CApiPredictor("this is not a model")


def test_probe_rows_sit_on_the_split_thresholds(demo_v1: DemoModel) -> None:
    text = model_text(demo_v1)
    thresholds = split_thresholds(text, 84)
    rows = probe_rows(text, 84, count=200)
    used = [j for j, values in enumerate(thresholds) if values]
    assert used, "the demo model splits on some features"
    for j in used:
        assert np.isin(rows[:, j], thresholds[j]).any(), f"feature {j}: no row exactly on a threshold"
    assert np.isnan(rows).any() and (rows == 0.0).any()


# -- the engine swap and its verifier -----------------------------------------------------------


class Shifted:
    """A predictor that is wrong by a little: the check must catch it."""

    engine = "shifted"

    def __init__(self, inner: CApiPredictor, by: float) -> None:
        self.inner, self.by = inner, by

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.inner.predict_proba(rows) + self.by


def test_equal_compiled_predictor_is_swapped_in(demo_v1: DemoModel, tmp_path: Path) -> None:
    model, metrics = served_model(demo_v1), Metrics()
    calls = []

    def compile_fn(text: str, cache_dir: Path) -> Shifted:
        calls.append((text, cache_dir))
        return Shifted(CApiPredictor(text), 0.0)

    assert try_swap(model, tmp_path, metrics, compile_fn) == "swapped"
    assert model.engine == "shifted" and calls == [(model.content.model_text, tmp_path)]
    assert metrics.engine_swaps.labels("swapped")._value.get() == 1


@pytest.mark.parametrize(
    ("behaviour", "outcome"),
    [("differs", "mismatch"), ("none", "unavailable"), ("import", "unavailable"), ("crash", "error")],
)
def test_compiled_predictor_is_kept_out_unless_it_agrees(
    demo_v1: DemoModel, tmp_path: Path, behaviour: str, outcome: str
) -> None:
    model, metrics = served_model(demo_v1), Metrics()

    def compile_fn(text: str, cache_dir: Path) -> Shifted | None:
        if behaviour == "import":
            raise ImportError("no compiler module")
        if behaviour == "crash":
            raise RuntimeError("gcc exploded")
        return Shifted(CApiPredictor(text), 1e-6) if behaviour == "differs" else None

    assert try_swap(model, tmp_path, metrics, compile_fn) == outcome
    assert model.engine == "lightgbm-capi"


def test_the_verifier_rejects_shape_and_value_differences(demo_v1: DemoModel) -> None:
    text = model_text(demo_v1)
    predictor = CApiPredictor(text)
    same = verify(predictor, Shifted(predictor, 0.0), text, 84)
    assert same.agrees and same.max_relative_error == 0.0
    assert not verify(predictor, Shifted(predictor, 2e-9), text, 84).agrees

    class Scaled:
        def __init__(self, factor: float, columns: slice = slice(None)) -> None:
            self.factor, self.columns = factor, columns

        def predict_proba(self, rows: np.ndarray) -> np.ndarray:
            return predictor.predict_proba(rows)[:, self.columns] * self.factor

    # The tolerance is relative: it holds for tiny probabilities as for large ones.
    assert verify(predictor, Scaled(1 + TOLERANCE / 2), text, 84).agrees
    assert not verify(predictor, Scaled(1 + 2 * TOLERANCE), text, 84).agrees
    assert verify(predictor, Scaled(1.0, slice(0, -1)), text, 84).max_relative_error == float("inf")
