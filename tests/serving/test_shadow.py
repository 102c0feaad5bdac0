"""The shadow challenger: scored beside the champion on the same rows, compared and counted, never
answering and never failing a request. In process (the Shadow on real ServedModels) and through the
real server process over HTTP, reading a real S3 (moto over HTTP)."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import numpy as np
import pytest
from test_server_http import classes_of, metric, probabilities

from devstack.demo_model import DemoModel
from helpers.serving import booster_predict, feature_rows, publish, served_model
from model_serving.loading.shadow import Shadow
from model_serving.metrics import Metrics


def expected_comparison(champion: DemoModel, challenger: DemoModel, rows: list[dict[str, float]]) -> tuple[int, float]:
    """(rows where both choose the same strategy, summed per-row mean |p - q|), from LightGBM itself."""
    assert classes_of(champion) == classes_of(challenger)
    ours, theirs = booster_predict(champion, rows), booster_predict(challenger, rows)
    agreements = int((ours.argmax(axis=1) == theirs.argmax(axis=1)).sum())
    return agreements, float(np.abs(ours - theirs).mean(axis=1).sum())


def _rows(model: Any, demo: DemoModel, count: int, seed: int = 3) -> np.ndarray:
    return np.array([[r[n] for n in model.feature_names] for r in feature_rows(demo, count, seed)])


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_shadow_counts_agreement_and_probability_difference(demo_v1: DemoModel, demo_v2: DemoModel) -> None:
    metrics = Metrics()
    champion, challenger = served_model(demo_v1), served_model(demo_v2)
    challenger.version = "v1.1"
    champion.shadow = Shadow(champion, challenger, 1.0, 1.0, metrics)
    single, batch = _rows(champion, demo_v1, 1, seed=4), _rows(champion, demo_v1, 300, seed=5)
    for rows in (single, batch):
        assert np.array_equal(champion.score(rows), champion.predict_proba(rows))  # the answer is the champion's
    rows = np.vstack([single, batch])
    agreements, abs_difference = expected_comparison(
        demo_v1, demo_v2, feature_rows(demo_v1, 1, 4) + feature_rows(demo_v1, 300, 5)
    )
    labels = {"model": "etfs/SPY", "champion": "v1.0", "challenger": "v1.1"}
    assert _value(metrics, "tradingmodel_shadow_predictions_total", **labels) == len(rows)
    assert _value(metrics, "tradingmodel_shadow_agreements_total", **labels) == agreements
    assert 0 < agreements < len(rows)  # two different models: they agree often, not always
    assert _value(metrics, "tradingmodel_shadow_probability_abs_difference_total", **labels) == pytest.approx(
        abs_difference, rel=1e-9
    )
    assert _value(metrics, "tradingmodel_shadow_duration_seconds_count", **labels) == 2


def test_a_failing_challenger_is_counted_never_raised(demo_v1: DemoModel, demo_v2: DemoModel) -> None:
    metrics = Metrics()
    champion, challenger = served_model(demo_v1), served_model(demo_v2)
    rows = _rows(champion, demo_v1, 2000)
    expected = champion.predict_proba(rows)

    # timeout: a real 2,000-row scoring over a 0.1 ms budget; then the challenger rests
    champion.shadow = Shadow(champion, challenger, 1.0, 0.0001 / 2, metrics)
    assert np.array_equal(champion.score(rows), expected)
    assert np.array_equal(champion.score(rows[:5]), expected[:5])
    assert _value(metrics, "tradingmodel_shadow_failures_total", reason="timeout") == 1
    assert _value(metrics, "tradingmodel_shadow_skipped_rows_total", reason="resting") == 5
    assert _value(metrics, "tradingmodel_shadow_predictions_total") == 0

    # incompatible: the challenger reads a feature the champion's requests do not carry
    renamed = served_model(demo_v2)
    renamed.feature_names = [*renamed.feature_names[:-1], "vix_term_structure"]
    champion.shadow = Shadow(champion, renamed, 1.0, 1.0, metrics)
    assert "vix_term_structure" in champion.shadow.problem
    assert np.array_equal(champion.score(rows[:3]), expected[:3])
    assert _value(metrics, "tradingmodel_shadow_failures_total", reason="incompatible") == 1

    # error: an engine that answers the wrong shape (here: the champion's model of another width)
    broken = served_model(demo_v2)
    broken.classes = broken.classes[:-1]
    champion.shadow = Shadow(champion, broken, 1.0, 1.0, metrics)
    assert np.array_equal(champion.score(rows[:3]), expected[:3])
    assert _value(metrics, "tradingmodel_shadow_failures_total", reason="error") == 1
    assert _value(metrics, "tradingmodel_shadow_predictions_total") == 0


def test_shadow_fraction_scores_a_share_of_requests(demo_v1: DemoModel, demo_v2: DemoModel) -> None:
    metrics = Metrics()
    champion = served_model(demo_v1)
    champion.shadow = Shadow(champion, served_model(demo_v2), 0.25, 1.0, metrics)
    row = _rows(champion, demo_v1, 1)
    for _ in range(2000):
        champion.score(row)
    compared = _value(metrics, "tradingmodel_shadow_predictions_total")
    assert compared + _value(metrics, "tradingmodel_shadow_skipped_rows_total", reason="sampled") == 2000
    assert 350 < compared < 650  # binomial(2000, 0.25): 500 ± 6 sigma


def test_challenger_with_other_feature_order_and_strategy_order(demo_v1: DemoModel) -> None:
    """A challenger that lists the same features and strategies in another order scores the same rows:
    against itself it agrees on every row, with no probability difference."""
    metrics = Metrics()
    champion = served_model(demo_v1)
    twin = served_model(demo_v1)
    twin.version = "v1.0-reordered"
    order = np.random.default_rng(1).permutation(champion.n_features)
    inner = twin.predictor

    class Reordered:  # the same trees, reading columns in another order and answering classes reversed
        def predict_proba(self, rows: np.ndarray) -> np.ndarray:
            restored = np.empty_like(rows)
            restored[:, order] = rows
            return np.asarray(inner.predict_proba(restored))[:, ::-1]

    twin.predictor = Reordered()
    twin.feature_names = [champion.feature_names[i] for i in order]
    twin.classes = champion.classes[::-1]
    champion.shadow = Shadow(champion, twin, 1.0, 1.0, metrics)
    rows = _rows(champion, demo_v1, 200)
    champion.score(rows)
    assert _value(metrics, "tradingmodel_shadow_agreements_total") == 200
    assert _value(metrics, "tradingmodel_shadow_probability_abs_difference_total") == pytest.approx(0, abs=1e-12)


# -- the real server ---------------------------------------------------------------------------


def _wait_metric(server: Any, name: str, want: float, timeout: float = 180, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while metric(server, name, **labels) != want:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {want}:\n{server.log()}"
        time.sleep(0.2)


def test_server_scores_the_challenger_and_answers_with_the_champion(
    start_server: Any, s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    compile_trees = "1" if shutil.which(os.environ.get("CC", "gcc")) else "0"
    champion = publish(s3, bucket, "SPY", "etf", demo_v1)
    challenger = publish(s3, bucket, "SPY", "etf", demo_v2, stage="staging")
    server = start_server(
        bucket, MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf", MODEL_VERSION=champion.version,
        MODEL_DIGEST=champion.digest, MODEL_SHADOW_VERSION=challenger.version, MODEL_SHADOW_DIGEST=challenger.digest,
        SERVING_COMPILE_TREES=compile_trees,
    )  # fmt: skip
    _wait_metric(server, "tradingmodel_shadow_info", 1, state="scoring", challenger="v1.1")
    if compile_trees == "1":  # both versions get compiled trees, each verified against LightGBM
        _wait_metric(server, "tradingmodel_engine_swaps_total", 2, outcome="swapped")

    rows = feature_rows(demo_v1, 80, seed=12)
    classes = classes_of(demo_v1)
    singles = [probabilities(server.post("/v1/predict", {"features": r}).json(), classes) for r in rows[:10]]
    batch = server.post("/v1/predict", {"ticker": "SPY", "instances": rows[10:]}).json()  # 70 rows: the batch path
    np.testing.assert_allclose(singles, booster_predict(demo_v1, rows[:10]), rtol=0, atol=1e-9)
    got = [probabilities(p, classes) for p in batch["predictions"]]
    np.testing.assert_allclose(got, booster_predict(demo_v1, rows[10:]), rtol=0, atol=1e-9)
    assert batch["model_version"] == "v1.0"

    labels = {"model": "etfs/SPY", "champion": "v1.0", "challenger": "v1.1"}
    agreements, abs_difference = expected_comparison(demo_v1, demo_v2, rows)
    assert metric(server, "tradingmodel_shadow_predictions_total", **labels) == 80
    assert metric(server, "tradingmodel_shadow_agreements_total", **labels) == agreements
    assert metric(server, "tradingmodel_shadow_probability_abs_difference_total", **labels) == pytest.approx(
        abs_difference, rel=1e-6
    )
    assert metric(server, "tradingmodel_shadow_duration_seconds_count", **labels) == 11
    assert metric(server, "tradingmodel_shadow_failures_total") == 0


def test_a_challenger_that_does_not_verify_never_touches_serving(
    start_server: Any, s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    champion = publish(s3, bucket, "SPY", "etf", demo_v1)
    challenger = publish(s3, bucket, "SPY", "etf", demo_v2, stage=None)
    wrong = "sha256:" + "0" * 64
    server = start_server(
        bucket, MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf", MODEL_VERSION=champion.version,
        MODEL_DIGEST=champion.digest, MODEL_SHADOW_VERSION=challenger.version, MODEL_SHADOW_DIGEST=wrong,
    )  # fmt: skip
    _wait_metric(server, "tradingmodel_shadow_info", 1, state="failed", challenger="v1.1")
    row = feature_rows(demo_v1, 1)[0]
    reply = server.post("/v1/predict", {"features": row})
    assert reply.status == 200 and reply.json()["model_version"] == "v1.0"
    assert metric(server, "tradingmodel_model_load_failures_total", model="etfs/SPY", reason="verification") >= 1
    assert metric(server, "tradingmodel_shadow_predictions_total") == 0
    assert "shadow challenger load failed" in server.log()
