"""The loader against a real S3 (moto over HTTP; those marked s3_stores on SeaweedFS too): which
version it picks, what it refuses, its caches. (The tests that count downloads read moto's request
log, so they run on moto only.)"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devstack.demo_model import STRATEGIES, DemoModel, train_demo_model
from devstack.s3_servers import S3Server
from helpers.serving import S3Log, booster_predict, evil_pickle, feature_rows, publish, put_legacy_version, server_env
from model_serving.errors import LoadError
from model_serving.loading.disk_cache import DiskCache
from model_serving.loading.loader import ModelLoader
from model_serving.loading.s3_source import ModelSpec, S3Source
from model_serving.loading.served_model import ServedModel
from model_serving.metrics import Metrics
from model_store.layout import MODEL_NATIVE, MODEL_PICKLE, ModelLocation, Stage

SPY = ModelLocation.of("SPY", "etf")
PROD = Stage.PRODUCTION


def make_loader(endpoint: str, bucket: str, cache_dir: Path, wait: float = 0.3) -> tuple[ModelLoader, Metrics]:
    metrics = Metrics()
    cache = DiskCache(cache_dir, on_corrupt=lambda _path: metrics.cache_corrupt.inc())
    return ModelLoader(S3Source(bucket, endpoint, "us-east-1", metrics, wait), cache, metrics), metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def assert_predicts_like(model: ServedModel, demo: DemoModel) -> None:
    rows = feature_rows(demo, 20)
    matrix = np.array([[row[n] for n in model.feature_names] for row in rows])
    np.testing.assert_allclose(model.predict_proba(matrix), booster_predict(demo, rows), rtol=0, atol=1e-9)


def put(s3: Any, bucket: str, key: str, data: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=data)


@pytest.mark.s3_stores
def test_pinned_digest_on_the_stage_loads_from_the_stage(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel
) -> None:
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    loader, metrics = make_loader(s3_server.endpoint, bucket, tmp_path)
    model = loader.load(ModelSpec(SPY, PROD, v1.version, v1.digest))
    assert (model.version, model.digest, model.model_path, model.stage) == (
        "v1.0",
        v1.digest,
        "etfs/SPY/production/",
        "production",
    )
    assert model.source == "s3" and model.classes == STRATEGIES and model.model_type == "etf_specific"
    assert_predicts_like(model, demo_v1)
    assert value(metrics, "tradingmodel_model_load_seconds_count", source="s3") == 1


@pytest.mark.s3_stores
def test_pinned_digest_not_on_the_stage_loads_the_archived_version(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    publish(s3, bucket, "SPY", "etf", demo_v2)  # production moves on to v1.1
    loader, _ = make_loader(s3_server.endpoint, bucket, tmp_path)
    model = loader.load(ModelSpec(SPY, PROD, v1.version, v1.digest))
    assert (model.version, model.model_path, model.stage) == ("v1.0", "etfs/SPY/archive/v1.0/", "archive")
    assert_predicts_like(model, demo_v1)


@pytest.mark.s3_stores
def test_a_pin_that_does_not_match_the_archive_is_refused(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    publish(s3, bucket, "SPY", "etf", demo_v1)
    v2 = publish(s3, bucket, "SPY", "etf", demo_v2, stage=None)
    loader, metrics = make_loader(s3_server.endpoint, bucket, tmp_path)
    with pytest.raises(LoadError, match=r"MODEL_DIGEST pins .*refusing it") as err:
        loader.load(ModelSpec(SPY, PROD, "v1.0", v2.digest))
    assert err.value.reason == "verification"
    with pytest.raises(LoadError, match=r"v9\.9 is not published") as err:
        loader.load(ModelSpec(SPY, PROD, "v9.9", v2.digest))
    assert err.value.reason == "not_found"
    assert value(metrics, "tradingmodel_model_load_failures_total", model="etfs/SPY", reason="verification") == 1


@pytest.mark.s3_stores
def test_unpinned_waits_for_a_promotion_in_progress(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel
) -> None:
    loader, _ = make_loader(s3_server.endpoint, bucket, tmp_path, wait=0.3)
    with pytest.raises(LoadError, match=r"manifest\.json is missing .*promote a version"):
        loader.load(ModelSpec(SPY, PROD))

    loader, _ = make_loader(s3_server.endpoint, bucket, tmp_path, wait=20)
    promoter = threading.Timer(0.5, publish, (s3, bucket, "SPY", "etf", demo_v1))
    promoter.start()
    try:
        model = loader.load(ModelSpec(SPY, PROD))
    finally:
        promoter.join()
    assert model.version == "v1.0" and model.model_path == "etfs/SPY/production/"


@pytest.mark.s3_stores
def test_a_stage_file_that_changed_is_taken_from_the_archive(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    publish(s3, bucket, "SPY", "etf", demo_v1)
    put(s3, bucket, "etfs/SPY/production/lightgbm_model.txt", demo_v2.files[MODEL_NATIVE])  # half a promotion
    loader, metrics = make_loader(s3_server.endpoint, bucket, tmp_path)
    model = loader.load(ModelSpec(SPY, PROD))
    assert model.version == "v1.0"
    assert_predicts_like(model, demo_v1)
    assert value(metrics, "tradingmodel_s3_requests_total", kind="artifact", outcome="mismatch") == 1


@pytest.mark.s3_stores
def test_files_that_match_no_manifest_are_refused(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    publish(s3, bucket, "SPY", "etf", demo_v1)
    for prefix in ("etfs/SPY/production/", "etfs/SPY/archive/v1.0/"):
        put(s3, bucket, prefix + "lightgbm_model.txt", demo_v2.files[MODEL_NATIVE])
    loader, metrics = make_loader(s3_server.endpoint, bucket, tmp_path)
    refused = r"refusing etfs/SPY v1.0 .*manifest says .*archived copy: .*manifest says"
    with pytest.raises(LoadError, match=refused) as err:
        loader.load(ModelSpec(SPY, PROD))
    assert err.value.reason == "verification"
    assert value(metrics, "tradingmodel_model_load_failures_total", model="etfs/SPY", reason="verification") == 1
    assert not list(tmp_path.rglob("lightgbm_model.txt")), "a refused file must not reach the disk cache"


@pytest.fixture(scope="module")
def demo_pickle() -> DemoModel:
    """The seeds' format: a joblib LGBMClassifier and a LabelEncoder, no native text, no classes list."""
    demo = train_demo_model(version="v1.0", seed=3, rounds=10, rows=800, formats=("pickle",))
    metadata = json.loads(demo.files["metadata.json"])
    del metadata["classes"]
    return DemoModel(dict(demo.files, **{"metadata.json": json.dumps(metadata).encode()}), demo.accuracy, 0)


@pytest.mark.s3_stores
def test_publishing_pickles_uploads_text_and_json_and_the_loader_reads_only_those(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_pickle: DemoModel
) -> None:
    import joblib

    published = publish(s3, bucket, "SPY", "etf", demo_pickle)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="etfs/SPY/")["Contents"]}
    assert not [k for k in keys if k.endswith(".pkl")], "no pickle reaches the bucket"
    assert "etfs/SPY/archive/v1.0/lightgbm_model.txt" in keys
    loader, _ = make_loader(s3_server.endpoint, bucket, tmp_path)
    model = loader.load(ModelSpec(SPY, PROD))
    assert model.digest == published.digest
    assert model.content.model_file == MODEL_NATIVE and model.classes == STRATEGIES
    classifier = joblib.load(__import__("io").BytesIO(demo_pickle.files[MODEL_PICKLE]))
    rows = np.random.default_rng(2).normal(size=(30, 84))
    np.testing.assert_allclose(model.predict_proba(rows), classifier.booster_.predict(rows), rtol=0, atol=1e-9)


@pytest.mark.s3_stores
def test_a_version_that_has_only_pickles_is_refused_and_never_unpickled(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_pickle: DemoModel
) -> None:
    marker = tmp_path / "pwned"
    put_legacy_version(s3, bucket, "v0.9", demo_pickle, evil_pickle(marker))
    loader, _ = make_loader(s3_server.endpoint, bucket, tmp_path / "cache")
    with pytest.raises(LoadError, match=r"publish it again with `tmctl publish`") as err:
        loader.load(ModelSpec(SPY, PROD, "v0.9"))
    assert err.value.reason == "invalid"
    assert not marker.exists()


@pytest.mark.s3_stores
def test_a_warm_disk_cache_loads_a_pinned_digest_without_s3(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel
) -> None:
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    spec = ModelSpec(SPY, PROD, v1.version, v1.digest)
    make_loader(s3_server.endpoint, bucket, tmp_path)[0].load(spec)
    offline, metrics = make_loader("http://127.0.0.1:9", bucket, tmp_path)  # nothing listens on port 9
    model = offline.load(spec)
    assert model.source == "disk" and model.model_path == "etfs/SPY/production/"
    assert_predicts_like(model, demo_v1)
    assert value(metrics, "tradingmodel_model_cache_hits_total", tier="disk") == 1
    assert value(metrics, "tradingmodel_s3_downloaded_bytes_total") == 0
    assert {p.name for p in (tmp_path / v1.digest.removeprefix("sha256:")).iterdir()} == {
        "manifest.json", "origin.json", "lightgbm_model.txt", "feature_names.json", "metadata.json"
    }, "only finished files (no temporary ones), and no pickle that was not needed"  # fmt: skip


def test_a_corrupt_cache_file_is_dropped_and_downloaded_again(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel, s3_log: S3Log
) -> None:
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    spec = ModelSpec(SPY, PROD, v1.version, v1.digest)
    make_loader(s3_server.endpoint, bucket, tmp_path)[0].load(spec)
    cached = tmp_path / v1.digest.removeprefix("sha256:") / "lightgbm_model.txt"
    data = bytearray(cached.read_bytes())
    data[100] ^= 1
    cached.write_bytes(bytes(data))
    model_gets, names_gets = s3_log.gets("production/lightgbm_model.txt"), s3_log.gets("production/feature_names.json")

    loader, metrics = make_loader(s3_server.endpoint, bucket, tmp_path)
    model = loader.load(spec)
    assert model.source == "s3"
    assert_predicts_like(model, demo_v1)
    assert value(metrics, "tradingmodel_model_cache_corrupt_files_total") == 1
    assert s3_log.gets("production/lightgbm_model.txt") == model_gets + 1
    assert s3_log.gets("production/feature_names.json") == names_gets, "intact cached files are not downloaded again"
    assert cached.read_bytes() == demo_v1.files[MODEL_NATIVE]


def test_concurrent_loads_of_one_model_download_once(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel, s3_log: S3Log
) -> None:
    publish(s3, bucket, "AAPL", "stock", demo_v1)
    loader, metrics = make_loader(s3_server.endpoint, bucket, tmp_path)
    specs = [ModelSpec(ModelLocation.of(t, "stock"), PROD) for t in ("AAPL", "TSLA", "NVDA", "MSFT")] * 5
    barrier = threading.Barrier(len(specs))
    results: list[ServedModel] = []

    def load(spec: ModelSpec) -> None:
        barrier.wait()
        results.append(loader.load(spec))

    threads = [threading.Thread(target=load, args=(spec,)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(specs) and all(r is results[0] for r in results)
    assert results[0].model_type == "stock_universal" and results[0].key == "stocks/universal"
    assert s3_log.gets("/stocks/universal/production/lightgbm_model.txt") == 1
    assert value(metrics, "tradingmodel_model_load_seconds_count", source="s3") == 1


def test_an_unchanged_stage_reloads_from_memory(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel, s3_log: S3Log
) -> None:
    publish(s3, bucket, "SPY", "etf", demo_v1)
    loader, metrics = make_loader(s3_server.endpoint, bucket, tmp_path)
    first = loader.load(ModelSpec(SPY, PROD))
    again = loader.load(ModelSpec(SPY, PROD))
    assert again is first
    assert s3_log.gets("/etfs/SPY/production/lightgbm_model.txt") == 1
    assert value(metrics, "tradingmodel_model_cache_hits_total", tier="memory") == 1


@pytest.mark.s3_stores
def test_a_warm_start_imports_neither_lightgbm_nor_boto3(
    s3: Any, bucket: str, s3_server: S3Server, tmp_path: Path, demo_v1: DemoModel
) -> None:
    """The hot start path: lib_lightgbm through ctypes, no S3 client, no pandas/scikit-learn."""
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    make_loader(s3_server.endpoint, bucket, tmp_path)[0].load(ModelSpec(SPY, PROD, v1.version, v1.digest))
    code = (
        "import json, sys\n"
        "from model_serving.__main__ import build_app\n"
        "from model_serving.config import Settings\n"
        "app = build_app(Settings.from_env())\n"
        "model = app.service._early.result(60)\n"
        "heavy = ('lightgbm', 'sklearn', 'pandas', 'scipy', 'joblib', 'boto3', 'botocore')\n"
        "print(json.dumps([model.source, sorted(m for m in heavy if m in sys.modules)]))\n"
    )
    pin = {"MODEL_TICKER": "SPY", "MODEL_ASSET_CLASS": "etf", "MODEL_VERSION": v1.version, "MODEL_DIGEST": v1.digest}
    env = server_env(bucket, "http://127.0.0.1:9", tmp_path, **pin)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["disk", []]
