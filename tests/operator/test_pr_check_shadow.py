"""`tmctl check --prometheus-url`: the shadow agreement in the PR report, read from a real Prometheus
that scraped a real serving process scoring the proposed version in shadow (S3: moto over HTTP)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_pr_check import manifest, published, run_check

from devstack.demo_model import DemoModel
from devstack.pod_runtime import free_port
from devstack.prometheus import LocalPrometheus, find_prometheus
from helpers.serving import Server, booster_predict, feature_rows, publish, server_env

__all__ = ["published"]  # the fixture: v1.0 in production, v1.1 staged

SHADOW_LABELS = 'model="etfs/SPY",champion="v1.0",challenger="v1.1"'


def _until(what: str, probe: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return found


@pytest.fixture
def shadowed(
    s3: Any, bucket: str, s3_endpoint: str, demo_v1: DemoModel, demo_v2: DemoModel, tmp_path: Path
) -> Iterator[Server]:
    """A production pod serving v1.0 and scoring the staged v1.1 in shadow."""
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    v2 = publish(s3, bucket, "SPY", "etf", demo_v2, stage="staging")
    env = server_env(
        bucket, s3_endpoint, tmp_path / "cache", MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf",
        MODEL_VERSION=v1.version, MODEL_DIGEST=v1.digest, MODEL_SHADOW_VERSION=v2.version,
        MODEL_SHADOW_DIGEST=v2.digest,
    )  # fmt: skip
    server = Server(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        _until("the challenger to load", lambda: b'state="scoring"' in server.get("/metrics").body)
        yield server
    finally:
        server.stop()


def test_the_report_shows_what_the_shadow_measured(
    shadowed: Server, tmp_path: Path, bucket: str, s3_endpoint: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    binary = find_prometheus()
    if binary is None:
        pytest.skip("no prometheus binary (Debian package 'prometheus'; .ci/run installs it)")
    targets = [{"targets": [f"127.0.0.1:{shadowed.port}"], "labels": {"namespace": "trading"}}]
    prometheus = LocalPrometheus(tmp_path / "prometheus", lambda: targets, scrape_seconds=1)
    prometheus.start(binary)
    try:
        # the counters exist at 0 before any request, so increase() counts every comparison
        _until(
            "a scrape of the idle counters",
            lambda: prometheus.query(f"tradingmodel_shadow_predictions_total{{{SHADOW_LABELS}}}"),
        )
        rows = feature_rows(demo_v1, 120, seed=21)
        for row in rows[:20]:
            assert shadowed.post("/v1/predict", {"features": row}).status == 200
        assert shadowed.post("/v1/predict", {"ticker": "SPY", "instances": rows[20:]}).status == 200
        total = f"sum(tradingmodel_shadow_predictions_total{{{SHADOW_LABELS}}})"
        _until(
            "Prometheus to scrape 120 comparisons",
            lambda: [r for r in prometheus.query(total) if float(r["value"][1]) == 120],
        )

        ours, theirs = booster_predict(demo_v1, rows), booster_predict(demo_v2, rows)
        rate = float((ours.argmax(axis=1) == theirs.argmax(axis=1)).mean())
        mean_difference = float(np.abs(ours - theirs).mean(axis=1).mean())
        code, report = run_check(
            tmp_path, bucket, s3_endpoint, manifest("spy-production", "v1.1"),
            flags=("--prometheus-url", prometheus.url, "--prometheus-window", "1h"),
        )  # fmt: skip
    finally:
        prometheus.stop()
    assert code == 0, report
    assert "| `trading/spy-production` | etfs/SPY | Production | v1.0 → v1.1 | ✅ |" in report
    assert "**Shadow agreement**: production pods scored v1.1 beside v1.0 on " in report
    # Prometheus' increase() extrapolates each counter to the window's edges from its own samples, so
    # the ratio it gives can differ from the pods' exact one by a little (78.5% for 94/120 seen).
    said = re.search(r"same strategy ([0-9.]+)% of the time, mean absolute probability difference ([0-9.]+)", report)
    assert said is not None, report
    assert abs(float(said.group(1)) / 100 - rate) < 0.01, (rate, report)
    assert abs(float(said.group(2)) - mean_difference) < 0.002, (mean_difference, report)


@pytest.mark.usefixtures("published")
def test_an_unreachable_prometheus_is_said_and_fails_nothing(tmp_path: Path, bucket: str, s3_endpoint: str) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    code, report = run_check(tmp_path, bucket, s3_endpoint, manifest("spy-production", "v1.1"),
                             flags=("--prometheus-url", gone))  # fmt: skip
    assert code == 0, report
    assert f"the shadow agreement could not be read: cannot query Prometheus at {gone}" in report


def test_a_bad_window_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trading_operator.cli", "check", str(tmp_path), "--prometheus-url",
         "http://127.0.0.1:9", "--prometheus-window", "a week"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--prometheus-window 'a week' must be a Prometheus duration such as 30m, 24h or 7d" in done.stderr
