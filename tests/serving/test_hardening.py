"""The serving process under hostile input and bucket contents, through real HTTP to `python -m model_serving`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.demo_model import STRATEGIES, DemoModel, train_demo_model
from helpers.serving import evil_pickle, feature_rows, put_legacy_version

# -- no code from the bucket ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds_pickles() -> DemoModel:
    """The seeds' format: a joblib LGBMClassifier and a LabelEncoder, no text model, no classes list."""
    demo = train_demo_model(version="v1.0", seed=3, rounds=10, rows=800, formats=("pickle",))
    metadata = json.loads(demo.files["metadata.json"])
    del metadata["classes"]
    return DemoModel(dict(demo.files, **{"metadata.json": json.dumps(metadata).encode()}), demo.accuracy, 0)


def test_tmctl_publish_converts_pickles_and_the_pod_serves_only_text(
    start_server: Any, s3: Any, bucket: str, s3_endpoint: str, tmp_path: Path, seeds_pickles: DemoModel
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for name, data in seeds_pickles.files.items():
        (folder / name).write_bytes(data)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    done = subprocess.run(
        [sys.executable, "-c", "from trading_operator.cli import main; main()", "publish", str(folder),
         "--ticker", "SPY", "--version", "v1.0", "--bucket", bucket, "--endpoint", s3_endpoint],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "lightgbm_model.pkl was unpickled on this machine" in done.stderr
    assert "label_encoder.pkl was unpickled on this machine" in done.stderr
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="etfs/SPY/archive/v1.0/")["Contents"]}
    assert {k.rsplit("/", 1)[1] for k in keys} == {
        "lightgbm_model.txt", "feature_names.json", "metadata.json", "manifest.json"
    }  # fmt: skip
    metadata = json.loads(s3.get_object(Bucket=bucket, Key="etfs/SPY/archive/v1.0/metadata.json")["Body"].read())
    assert metadata["classes"] == STRATEGIES

    server = start_server(bucket, MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf", MODEL_VERSION="v1.0")
    reply = server.post("/v1/predict", {"features": feature_rows(seeds_pickles, 1)[0]})
    assert reply.status == 200 and reply.json()["strategy"] in STRATEGIES


def test_a_pickle_in_the_bucket_is_never_run_in_the_pod(
    start_server: Any, s3: Any, bucket: str, tmp_path: Path, seeds_pickles: DemoModel
) -> None:
    marker = tmp_path / "code-from-the-bucket-ran"
    put_legacy_version(s3, bucket, "v0.9", seeds_pickles, evil_pickle(marker))
    server = start_server(bucket, wait=False, MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf", MODEL_VERSION="v0.9")
    deadline = time.monotonic() + 30
    while True:
        try:
            ready = server.get("/v2/health/ready")
            if "publish it again" in ready.body.decode():
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert ready.status == 503
    assert "serving pods never unpickle" in ready.json()["reason"]
    assert server.post("/v1/predict", {"features": feature_rows(seeds_pickles, 1)[0]}).status == 503
    assert not marker.exists(), "the pickle's payload ran in the serving process"
    cached = list((tmp_path / "cache").rglob("*.pkl")) if (tmp_path / "cache").exists() else []
    assert not cached, "no pickle is even downloaded"
    assert server.stop() == 0
