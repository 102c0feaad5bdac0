"""The real server (`python -m model_serving`) over real HTTP, reading a real S3 (moto over HTTP)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.demo_model import DemoModel
from devstack.pod_runtime import free_port
from helpers.serving import (
    S3Log,
    Server,
    booster_predict,
    feature_rows,
    publish,
    register_stocks,
    server_env,
)
from model_store.s3 import S3Settings, make_client


def metric_samples(server: Server) -> dict[str, list[tuple[dict[str, str], float]]]:
    reply = server.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def metric(server: Server, name: str, **labels: str) -> float:
    return sum(v for found, v in metric_samples(server).get(name, []) if labels.items() <= found.items())


def probabilities(reply: dict[str, Any], classes: list[str]) -> list[float]:
    return [reply["probabilities"][c] for c in classes]


def classes_of(demo: DemoModel) -> list[str]:
    return json.loads(demo.files["metadata.json"])["classes"]


# -- one bucket and one lazily loading server for the read-only tests -----------------------------


@pytest.fixture(scope="module")
def shared_bucket(s3_endpoint: str, demo_v1: DemoModel, demo_stock: DemoModel) -> dict[str, Any]:
    name = f"serving-http-{os.getpid()}"
    s3 = make_client(S3Settings(bucket=name, endpoint_url=s3_endpoint))
    s3.create_bucket(Bucket=name)
    spy = publish(s3, name, "SPY", "etf", demo_v1)
    stocks = publish(s3, name, "AAPL", "stock", demo_stock)
    register_stocks(s3, name, "TSLA")
    return {"name": name, "spy": spy, "stocks": stocks}


@pytest.fixture(scope="module")
def lazy_server(
    shared_bucket: dict[str, Any], s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """No MODEL_TICKER: serves every registered ticker, loading each model on first use; a 1 MiB body limit."""
    tmp = tmp_path_factory.mktemp("lazy")
    env = server_env(shared_bucket["name"], s3_endpoint, tmp / "cache", SERVING_MAX_BODY_BYTES=str(1 << 20))
    server = Server(env, tmp / "server.log")
    server.wait_ready()
    yield server
    server.stop()


def test_etf_predictions_equal_lightgbm(lazy_server: Server, shared_bucket: dict[str, Any], demo_v1: DemoModel) -> None:
    rows = feature_rows(demo_v1, 25, seed=4)
    expected = booster_predict(demo_v1, rows)
    classes = classes_of(demo_v1)
    for row, want in zip(rows[:5], expected[:5], strict=True):
        reply = lazy_server.post("/v1/predict", {"ticker": "SPY", "features": row})
        assert reply.status == 200, reply.body
        doc = reply.json()
        np.testing.assert_allclose(probabilities(doc, classes), want, rtol=0, atol=1e-9)
        assert doc["strategy"] == classes[int(np.argmax(want))] and doc["confidence"] == pytest.approx(want.max())
        assert doc["ticker"] == "SPY" and doc["model_type"] == "etf_specific"
        assert doc["model_path"] == "etfs/SPY/production/" and doc["model_version"] == "v1.0"
        assert doc["digest"] == shared_bucket["spy"].digest
    batch = lazy_server.post("/predict", {"ticker": "spy", "instances": rows}).json()
    got = [probabilities(p, classes) for p in batch["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert [p["strategy"] for p in batch["predictions"]] == [classes[i] for i in expected.argmax(axis=1)]


def test_stock_tickers_share_one_universal_model(
    lazy_server: Server, demo_stock: DemoModel, demo_v1: DemoModel, s3_log: S3Log
) -> None:
    rows = feature_rows(demo_stock, 6, seed=5)
    expected = booster_predict(demo_stock, rows)
    classes = classes_of(demo_stock)

    def ask(ticker: str) -> list[dict[str, Any]]:
        reply = lazy_server.post("/v1/predict", {"ticker": ticker, "instances": rows})
        assert reply.status == 200, reply.body
        doc = reply.json()
        assert doc["model_type"] == "stock_universal" and doc["model_path"] == "stocks/universal/production/"
        return doc["predictions"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["AAPL", "TSLA"] * 4))
    for predictions in answers:
        np.testing.assert_allclose([probabilities(p, classes) for p in predictions], expected, rtol=0, atol=1e-9)
    assert s3_log.gets("stocks/universal/production/lightgbm_model.txt") == 1, "one download for all stock tickers"
    assert not np.allclose(expected, booster_predict(demo_v1, rows)), "the ETF model is a different model"
    infos = [labels for labels, _ in metric_samples(lazy_server)["tradingmodel_model_info"]]
    assert [i["model"] for i in infos].count("stocks/universal") == 1


def test_v2_protocol(lazy_server: Server, shared_bucket: dict[str, Any], demo_v1: DemoModel) -> None:
    assert lazy_server.get("/v2/health/live").json() == {"live": True}
    assert lazy_server.get("/v2/health/ready").json() == {"ready": True}
    assert lazy_server.get("/v2").json()["extensions"] == ["model_repository", "binary_tensor_data"]

    rows = feature_rows(demo_v1, 3, seed=6)
    expected = booster_predict(demo_v1, rows)
    meta = lazy_server.get("/v2/models/SPY")
    assert meta.status == 200
    names = meta.json()["parameters"]["feature_names"]
    assert meta.json()["versions"] == ["v1.0"] and meta.json()["parameters"]["digest"] == shared_bucket["spy"].digest
    assert meta.json()["inputs"][0]["shape"] == [-1, 84] and meta.json()["parameters"]["engine"] == "lightgbm-capi"
    assert lazy_server.get("/v2/models/SPY/ready").json()["ready"] is True

    matrix = [[row[n] for n in names] for row in rows]
    data = [value for row in matrix for value in row]
    flat = {"id": "r1", "inputs": [{"name": "input-0", "shape": [3, 84], "datatype": "FP64", "data": data}]}
    nested = {"inputs": [{"name": "input-0", "shape": [3, 84], "datatype": "FP64", "data": matrix}]}
    columns = {"inputs": [{"name": n, "shape": [3], "datatype": "FP64", "data": [r[n] for r in rows]} for n in names]}
    for path, body in [
        ("/v2/models/SPY/infer", flat),
        ("/v2/models/spy/infer", nested),
        ("/v2/models/SPY/versions/v1.0/infer", columns),
    ]:
        reply = lazy_server.post(path, body)
        assert reply.status == 200, reply.body
        doc = reply.json()
        probs, labels = doc["outputs"]
        assert probs["name"] == "probabilities" and probs["shape"] == [3, 10] and probs["datatype"] == "FP64"
        np.testing.assert_allclose(np.reshape(probs["data"], (3, 10)), expected, rtol=0, atol=1e-9)
        assert labels["datatype"] == "BYTES" and labels["data"] == [
            probs["parameters"]["classes"][i] for i in expected.argmax(1)
        ]
        assert doc["model_version"] == "v1.0" and doc["id"]
    assert lazy_server.post("/v2/models/SPY/infer", flat).json()["id"] == "r1"
    assert lazy_server.post("/v2/models/SPY/versions/v0.9/infer", flat).status == 404

    index = lazy_server.post("/v2/repository/index", {}).json()
    assert {"name": "SPY", "version": "v1.0", "state": "READY"}.items() <= next(
        m for m in index if m["name"] == "SPY"
    ).items()


def test_kserve_v1_protocol(lazy_server: Server, demo_v1: DemoModel) -> None:
    rows = feature_rows(demo_v1, 3, seed=7)
    names = lazy_server.get("/v2/models/SPY").json()["parameters"]["feature_names"]
    expected = booster_predict(demo_v1, rows)
    assert lazy_server.get("/v1/models/SPY").json() == {"name": "SPY", "ready": True}
    for body in ({"instances": [[r[n] for n in names] for r in rows]}, {"inputs": rows}):
        reply = lazy_server.post("/v1/models/SPY:predict", body)
        assert reply.status == 200, reply.body
        np.testing.assert_allclose(reply.json()["predictions"], expected, rtol=0, atol=1e-9)
    assert lazy_server.post("/v1/models/SPY:explain", {"instances": []}).status == 404
    assert lazy_server.post("/v1/models/SPY:predict", {"instances": [[1.0]]}).status == 400


BIG = b'{"ticker": "SPY", "features": {"x": "' + b"a" * (2 << 20) + b'"}}'


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/predict", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/predict", b"", 400, "body is empty"),
        ("POST", "/v1/predict", b'{"ticker": "SPY", "features": {"x": NaN}}', 400, "not valid JSON"),
        ("POST", "/v1/predict", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/v1/predict", b'{"ticker": "SPY"}', 400, 'either "features"'),
        ("POST", "/v1/predict", b'{"ticker": "SPY", "features": {"iv_rank": 1}}', 400, "missing 83 of the model's 84"),
        ("POST", "/v1/predict", "FEATURES+bogus", 400, "unknown feature(s): bogus"),
        ("POST", "/v1/predict", "FEATURES:vix=str", 400, "feature 'vix' is a string"),
        ("POST", "/v1/predict", "FEATURES:vix=null", 400, "feature 'vix' is null"),
        ("POST", "/v1/predict", "FEATURES:vix=bool", 400, "feature 'vix' is a boolean"),
        ("POST", "/v1/predict", b'{"ticker": "NOPE", "features": {}}', 404, "not in the asset registry"),
        ("POST", "/v1/predict", b'{"ticker": "not a ticker", "features": {}}', 400, "is not valid"),
        ("POST", "/v1/predict", BIG, 413, "larger than SERVING_MAX_BODY_BYTES (1048576 bytes)"),
        ("GET", "/v1/predict", None, 405, "GET is not allowed"),
        ("DELETE", "/v2/models/SPY", None, 405, "use GET"),
        ("GET", "/v3/nothing", None, 404, "no such endpoint"),
        ("GET", "/v2/models/NOPE", None, 404, "not in the asset registry"),
        (
            "POST",
            "/v2/models/SPY/infer",
            b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}',
            400,
            "shape must be [n, 84]",
        ),
        ("POST", "/v2/models/SPY/infer", b'{"inputs": "x"}', 400, "non-empty list of tensors"),
    ],
)
def test_bad_requests_get_4xx_that_say_what_to_fix(
    lazy_server: Server, demo_v1: DemoModel, method: str, path: str, body: Any, status: int, message: str
) -> None:
    if isinstance(body, str):  # a valid row, changed as the marker says
        row = feature_rows(demo_v1, 1)[0]
        if body == "FEATURES+bogus":
            row["bogus"] = 1.0
        else:
            row["vix"] = {"str": "high", "null": None, "bool": True}[body.split("=")[1]]
        body = json.dumps({"ticker": "SPY", "features": row}).encode()
    reply = lazy_server.request(method, path, raw=body)
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"] == "application/json"
    assert message in reply.json()["error"]
    if status == 405:
        assert reply.headers["allow"]
    # ... and the server is still up and serving.
    assert lazy_server.post("/v1/predict", {"ticker": "SPY", "features": feature_rows(demo_v1, 1)[0]}).status == 200


def test_metrics_show_loads_requests_and_the_model(lazy_server: Server, demo_v1: DemoModel) -> None:
    row = feature_rows(demo_v1, 1)[0]
    before = metric(lazy_server, "tradingmodel_requests_total", endpoint="predict", code="200")
    for _ in range(3):
        assert lazy_server.post("/v1/predict", {"ticker": "SPY", "features": row}).status == 200
    assert lazy_server.post("/v1/predict", {"ticker": "SPY", "features": {}}).status == 400
    samples = metric_samples(lazy_server)
    assert metric(lazy_server, "tradingmodel_requests_total", endpoint="predict", code="200") == before + 3
    assert metric(lazy_server, "tradingmodel_requests_total", endpoint="predict", code="400") >= 1
    assert metric(lazy_server, "tradingmodel_request_duration_seconds_count", endpoint="predict") >= before + 4
    assert any(labels.get("le") == "0.001" for labels, _ in samples["tradingmodel_request_duration_seconds_bucket"])
    assert metric(lazy_server, "tradingmodel_model_load_seconds_count", source="s3") >= 1
    assert metric(lazy_server, "tradingmodel_model_cache_misses_total", tier="disk") >= 1
    assert metric(lazy_server, "tradingmodel_s3_downloaded_bytes_total") > 0
    assert metric(lazy_server, "tradingmodel_predictions_total", model="etfs/SPY") >= 3
    info = {labels["model"]: labels for labels, value in samples["tradingmodel_model_info"] if value == 1}
    assert info["etfs/SPY"]["version"] == "v1.0" and info["etfs/SPY"]["engine"] == "lightgbm-capi"
    assert info["etfs/SPY"]["digest"].startswith("sha256:")
    assert metric(lazy_server, "tradingmodel_ready") == 1


def test_logs_are_json_lines_without_an_access_log(lazy_server: Server, demo_v1: DemoModel) -> None:
    lazy_server.post("/v1/predict", {"ticker": "SPY", "features": feature_rows(demo_v1, 1)[0]})
    lines = lazy_server.log_lines()
    assert lines and all("unparsed" not in line for line in lines), lines[:3]
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert not [line for line in lines if "/v1/predict" in json.dumps(line)], "no per-request log at INFO"


# -- servers of their own ---------------------------------------------------------------------------


def test_fifty_concurrent_first_requests_cause_one_download(
    start_server: Any, shared_bucket: dict[str, Any], demo_v1: DemoModel, s3_log: S3Log
) -> None:
    server = start_server(shared_bucket["name"])  # nothing loaded yet
    row = feature_rows(demo_v1, 1)[0]
    before = s3_log.gets("etfs/SPY/production/lightgbm_model.txt")
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: server.post("/v1/predict", {"ticker": "SPY", "features": row}), range(50)))
    assert [r.status for r in replies] == [200] * 50
    assert len({r.body for r in replies}) == 1
    assert s3_log.gets("etfs/SPY/production/lightgbm_model.txt") == before + 1
    assert metric(server, "tradingmodel_model_load_seconds_count", source="s3") == 1


@pytest.mark.s3_stores  # also on SeaweedFS
def test_reload_swaps_versions_and_refuses_a_corrupted_one(
    start_server: Any, s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel, demo_stock: DemoModel
) -> None:
    publish(s3, bucket, "SPY", "etf", demo_v1)
    publish(s3, bucket, "SPY", "etf", demo_v2, stage=None)  # v1.1 in the archive
    server = start_server(
        bucket, MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf", MODEL_NAME="spy-production", SERVING_RELOAD_TOKEN="s3cret"
    )
    rows = feature_rows(demo_v1, 4, seed=8)
    bearer = {"Authorization": "Bearer s3cret"}

    def predict() -> dict[str, Any]:
        reply = server.post("/v1/predict", {"instances": rows})  # the pod's own ticker by default
        assert reply.status == 200, reply.body
        return reply.json()

    assert predict()["model_version"] == "v1.0"
    from model_store.layout import ModelLocation, Stage
    from model_store.promotion import promote

    promote(s3, bucket, ModelLocation.of("SPY", "etf"), "v1.1", Stage.PRODUCTION, actor="tests")
    reload = server.request("POST", "/v2/repository/models/spy-production/load", {}, headers=bearer)
    assert reload.status == 200 and reload.json()["version"] == "v1.1", reload.body
    now = predict()
    assert now["model_version"] == "v1.1"
    classes = classes_of(demo_v2)
    got = [probabilities(p, classes) for p in now["predictions"]]
    np.testing.assert_allclose(got, booster_predict(demo_v2, rows), rtol=0, atol=1e-9)

    # A broken promotion to v2.0: the stage manifest names v2.0, the stage files are still v1.1's,
    # and the archived v2.0 model file was overwritten after publishing. No manifest vouches for it.
    publish(s3, bucket, "SPY", "etf", demo_stock, stage=None)
    s3.put_object(Bucket=bucket, Key="etfs/SPY/archive/v2.0/lightgbm_model.txt", Body=b"tree\nversion=v4\n")
    manifest = s3.get_object(Bucket=bucket, Key="etfs/SPY/archive/v2.0/manifest.json")["Body"].read()
    s3.put_object(Bucket=bucket, Key="etfs/SPY/production/manifest.json", Body=manifest)
    refused = server.request("POST", "/v2/repository/models/SPY/load", {}, headers=bearer)
    assert refused.status == 503
    assert "refusing etfs/SPY v2.0" in refused.json()["error"] and "still serving v1.1" in refused.json()["error"]
    assert predict()["predictions"] == now["predictions"], "the verified model keeps serving"
    assert server.get("/v2/health/ready").status == 200
    assert metric(server, "tradingmodel_model_load_failures_total", model="etfs/SPY", reason="verification") == 1
    assert server.request("POST", "/v2/repository/models/NOPE/load", {}, headers=bearer).status == 404

    # Rollback: production gets v1.0 again and SIGHUP reloads (v1.0 is still in memory).
    promote(s3, bucket, ModelLocation.of("SPY", "etf"), "v1.0", Stage.PRODUCTION, actor="tests")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while predict()["model_version"] != "v1.0":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert metric(server, "tradingmodel_model_cache_hits_total", tier="memory") >= 1


@pytest.mark.s3_stores  # also on SeaweedFS
def test_pinned_pod_restarts_from_its_disk_cache_without_s3(
    start_server: Any, s3: Any, bucket: str, demo_v1: DemoModel, tmp_path: Path
) -> None:
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    pin = {"MODEL_TICKER": "SPY", "MODEL_ASSET_CLASS": "etf", "MODEL_VERSION": v1.version, "MODEL_DIGEST": v1.digest}
    cold = start_server(bucket, MODEL_NAME="spy-production", **pin)
    cold_seconds = cold.wait_ready()
    row = feature_rows(demo_v1, 1)[0]
    first = cold.post("/v1/predict", {"features": row}).json()
    other = cold.post("/v1/predict", {"ticker": "QQQ", "features": row})
    assert other.status == 404 and "serves SPY only" in other.json()["error"]
    alias = cold.post(
        "/v2/models/spy-production/infer",
        {"inputs": [{"name": n, "shape": [1], "datatype": "FP64", "data": [row[n]]} for n in row]},
    )
    assert alias.status == 200 and alias.json()["model_name"] == "spy-production"
    assert cold.stop() == 0

    warm = start_server(bucket, S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", **pin)  # S3 unreachable
    warm_seconds = warm.wait_ready()
    assert warm.post("/v1/predict", {"features": row}).json() == first
    assert metric(warm, "tradingmodel_model_load_seconds_count", source="disk") == 1
    assert metric(warm, "tradingmodel_s3_downloaded_bytes_total") == 0
    assert metric(warm, "tradingmodel_s3_requests_total") == 0
    print(f"start to ready: cold S3 {cold_seconds:.3f} s, warm disk cache {warm_seconds:.3f} s")


def test_stock_pod_serves_registered_stock_tickers_only(
    start_server: Any, s3: Any, bucket: str, demo_stock: DemoModel, demo_v1: DemoModel
) -> None:
    publish(s3, bucket, "AAPL", "stock", demo_stock)
    publish(s3, bucket, "SPY", "etf", demo_v1)
    register_stocks(s3, bucket, "TSLA")
    server = start_server(bucket, MODEL_TICKER="AAPL", MODEL_ASSET_CLASS="stock")
    row = feature_rows(demo_stock, 1)[0]
    answers = {t: server.post("/v1/predict", {"ticker": t, "features": row}) for t in ("AAPL", "TSLA", "NVDA", "SPY")}
    assert answers["AAPL"].status == answers["TSLA"].status == 200
    assert answers["AAPL"].json()["probabilities"] == answers["TSLA"].json()["probabilities"]
    assert answers["NVDA"].status == 404 and "not a registered stock ticker" in answers["NVDA"].json()["error"]
    assert answers["SPY"].status == 404


def test_sigterm_lets_an_in_flight_request_finish(start_server: Any, s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish(s3, bucket, "SPY", "etf", demo_v1)
    server = start_server(bucket, MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf")
    body = json.dumps({"ticker": "SPY", "features": feature_rows(demo_v1, 1)[0]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body[:100])
        deadline = time.monotonic() + 30
        while metric(server, "tradingmodel_requests_in_flight") < 2:  # that request and this scrape
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc.poll() is None, "the server waits for the request in flight"
        conn.sendall(body[100:])
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert server.proc.wait(20) == 0


def test_compiled_trees_are_swapped_in_after_ready(start_server: Any, s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    import shutil

    if shutil.which(os.environ.get("CC", "gcc")) is None:
        pytest.skip("no C compiler on this machine: the server keeps the C-API engine")
    publish(s3, bucket, "SPY", "etf", demo_v1)
    server = start_server(bucket, MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf", SERVING_COMPILE_TREES="1")
    deadline = time.monotonic() + 180
    while server.get("/v2/models/SPY").json()["parameters"]["engine"] != "compiled":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    rows = feature_rows(demo_v1, 10, seed=9)
    classes = classes_of(demo_v1)
    got = [probabilities(server.post("/v1/predict", {"features": r}).json(), classes) for r in rows]
    np.testing.assert_allclose(got, booster_predict(demo_v1, rows), rtol=0, atol=1e-9)
    assert metric(server, "tradingmodel_model_info", engine="compiled", model="etfs/SPY") == 1
    assert metric(server, "tradingmodel_engine_swaps_total", outcome="swapped") == 1


def test_mangled_requests_never_cause_a_5xx(lazy_server: Server, demo_v1: DemoModel) -> None:
    """Valid requests with random parts replaced by other JSON (seeded, so a failure reproduces)."""
    rng = np.random.default_rng(11)
    row = feature_rows(demo_v1, 1)[0]
    names = list(row)
    oddities: list[Any] = [None, True, "x", "", [], {}, [1.0], {"a": 1}, -1, 1e308, 2**70, "SPY", [[1.0]], 0]
    matrix = [row[n] for n in names]
    templates: list[tuple[str, dict[str, Any]]] = [
        ("/v1/predict", {"ticker": "SPY", "features": row}),
        ("/v1/predict", {"ticker": "SPY", "instances": [row, row]}),
        (
            "/v2/models/SPY/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 84], "datatype": "FP64", "data": matrix}]},
        ),
    ]

    def mangle(value: Any, rate: float, depth: int = 0) -> Any:
        if rng.random() < rate or depth > 4:
            return oddities[rng.integers(len(oddities))]
        if isinstance(value, dict):
            return {k: mangle(v, rate, depth + 1) for k, v in value.items() if rng.random() >= rate / 2}
        if isinstance(value, list):
            return [mangle(v, rate, depth + 1) for v in value if rng.random() >= rate / 2]
        return value

    statuses = []
    for i in range(300):
        path, body = templates[i % len(templates)]
        rate = (0.0, 0.003, 0.02, 0.1)[i % 4]
        reply = lazy_server.request("POST", path, raw=json.dumps(mangle(body, rate)).encode())
        statuses.append(reply.status)
        assert reply.status < 500, (reply.status, reply.body[:300])
        assert "error" in reply.json() or reply.status == 200
    assert 200 in statuses and 400 in statuses
    assert lazy_server.get("/v2/health/live").status == 200


def test_not_ready_until_s3_answers_then_ready(start_server: Any, s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    """S3 down at start: the probe says why it is not ready, and the load is retried with backoff."""
    from moto.server import ThreadedMotoServer

    publish(s3, bucket, "SPY", "etf", demo_v1)
    port = free_port()
    server = start_server(
        bucket, wait=False, S3_ENDPOINT_URL=f"http://127.0.0.1:{port}", MODEL_TICKER="SPY", MODEL_ASSET_CLASS="etf",
        SERVING_LOAD_RETRY_MAX_SECONDS="1",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while "cannot read s3://" not in (reply := _ready_reply(server)).get("reason", ""):
        assert time.monotonic() < deadline, (reply, server.log())
        time.sleep(0.05)
    assert server.get("/v2/health/live").status == 200
    assert server.post("/v1/predict", {"features": feature_rows(demo_v1, 1)[0]}).status == 503

    late_s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)  # same in-process buckets
    late_s3.start()
    try:
        server.wait_ready()
        assert server.post("/v1/predict", {"features": feature_rows(demo_v1, 1)[0]}).status == 200
    finally:
        late_s3.stop()


def _ready_reply(server: Server) -> dict[str, Any]:
    try:
        return server.get("/v2/health/ready").json()
    except OSError:
        return {}


def test_stock_pod_answers_exactly_the_declared_tickers(
    start_server: Any, s3: Any, bucket: str, demo_stock: DemoModel
) -> None:
    """MODEL_TICKERS (spec.ticker + spec.tickers) decides, whatever the asset registry lists."""
    publish(s3, bucket, "AAPL", "stock", demo_stock)
    register_stocks(s3, bucket, "TSLA")
    server = start_server(bucket, MODEL_TICKER="AAPL", MODEL_ASSET_CLASS="stock", MODEL_TICKERS="AAPL,MSFT")
    row = feature_rows(demo_stock, 1)[0]
    answers = {t: server.post("/v1/predict", {"ticker": t, "features": row}) for t in ("AAPL", "MSFT", "TSLA")}
    assert answers["AAPL"].status == answers["MSFT"].status == 200
    assert answers["MSFT"].json()["probabilities"] == answers["AAPL"].json()["probabilities"]
    refused = answers["TSLA"]
    assert refused.status == 404 and "(AAPL, MSFT)" in refused.json()["error"]
    assert "spec.tickers" in refused.json()["error"]
