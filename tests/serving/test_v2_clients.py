"""V2 through clients no one here wrote: tritonclient.http (JSON and the binary tensor extension) and
tritonclient.grpc (inference.GRPCInferenceService), against the real server process.

Every answer is compared with LightGBM's own predictions for the same rows; every client mistake
must come back as a 400 / INVALID_ARGUMENT or 404 / NOT_FOUND that says what to fix, never a 500 or
INTERNAL; the two protocols count into the same metrics, told apart by `protocol`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from devstack.demo_model import DemoModel
from helpers.serving import Server, booster_predict, feature_rows, publish
from model_store.s3 import S3Settings, make_client


def classes_of(demo: DemoModel) -> list[str]:
    return json.loads(demo.files["metadata.json"])["classes"]


def rows_of(demo: DemoModel, count: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(rows in the model's feature order, LightGBM's probabilities for them)."""
    named = feature_rows(demo, count, seed)
    names = json.loads(demo.files["feature_names.json"])
    return np.array([[row[n] for n in names] for row in named]), booster_predict(demo, named)


def as_float32(demo: DemoModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows rounded to float32 (what an FP32 tensor carries) and LightGBM's probabilities for those."""
    rounded = rows.astype(np.float32).astype(np.float64)
    names = json.loads(demo.files["feature_names.json"])
    return rounded, booster_predict(demo, [dict(zip(names, r, strict=True)) for r in rounded])


@pytest.fixture(scope="module")
def bucket_name(s3_endpoint: str, demo_v1: DemoModel) -> str:
    name = f"v2-clients-{os.getpid()}"
    s3 = make_client(S3Settings(bucket=name, endpoint_url=s3_endpoint))
    s3.create_bucket(Bucket=name)
    publish(s3, name, "SPY", "etf", demo_v1)
    return name


@pytest.fixture(scope="module")
def server(bucket_name: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from helpers.serving import server_env

    tmp = tmp_path_factory.mktemp("v2-clients")
    env = server_env(bucket_name, s3_endpoint, tmp / "cache", MODEL_TICKER="SPY", MODEL_NAME="spy-production")
    started = Server(env, tmp / "server.log")
    started.wait_ready()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def http_client(server: Server) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120)


@pytest.fixture(scope="module")
def grpc_client(server: Server) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def http_input(rows: np.ndarray, datatype: str = "FP64", binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(np.float32 if datatype == "FP32" else np.float64), binary_data=binary)
    return tensor


def grpc_input(rows: np.ndarray, datatype: str = "FP64") -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(np.float32 if datatype == "FP32" else np.float64))
    return tensor


def assert_answers(result: Any, expected: np.ndarray, classes: list[str]) -> None:
    probabilities = result.as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)
    # binary BYTES come back as bytes, JSON ones as str
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("strategy")]
    assert labels == [classes[i] for i in expected.argmax(axis=1)]


# -- HTTP: health, metadata, JSON and the binary tensor extension ---------------------------------------


def test_http_health_and_metadata(http_client: triton_http.InferenceServerClient, demo_v1: DemoModel) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("SPY") and http_client.is_model_ready("spy-production")
    assert "binary_tensor_data" in http_client.get_server_metadata()["extensions"]
    metadata = http_client.get_model_metadata("SPY")
    assert metadata["inputs"][0]["shape"] == [-1, 84]
    assert metadata["parameters"]["classes"] == classes_of(demo_v1)


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_http_binary_request_and_binary_outputs(
    http_client: triton_http.InferenceServerClient, demo_v1: DemoModel, datatype: str
) -> None:
    rows, expected = rows_of(demo_v1, 25)
    if datatype == "FP32":  # what the client's float32 tensor holds is what is scored
        rows, expected = as_float32(demo_v1, rows)
    result = http_client.infer("SPY", [http_input(rows, datatype)])  # no outputs named: all, in binary
    response = result.get_response()
    assert all("binary_data_size" in output["parameters"] for output in response["outputs"])
    assert_answers(result, expected, classes_of(demo_v1))


def test_http_json_from_the_same_client_and_mixed_forms(
    http_client: triton_http.InferenceServerClient, demo_v1: DemoModel
) -> None:
    rows, expected = rows_of(demo_v1, 7, seed=5)
    classes = classes_of(demo_v1)
    as_json = [triton_http.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "strategy")]
    result = http_client.infer("SPY", [http_input(rows, binary=False)], outputs=as_json, request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    assert "data" in result.get_response()["outputs"][0]
    assert_answers(result, expected, classes)
    # binary in, JSON out; JSON in, binary out; aliases other V2 servers use
    assert_answers(http_client.infer("SPY", [http_input(rows)], outputs=as_json), expected, classes)
    binary_out = [triton_http.InferRequestedOutput(n, binary_data=True) for n in ("probabilities", "strategy")]
    assert_answers(http_client.infer("SPY", [http_input(rows, binary=False)], outputs=binary_out), expected, classes)
    alias = http_client.infer("SPY", [http_input(rows)], outputs=[triton_http.InferRequestedOutput("predict_proba")])
    np.testing.assert_allclose(alias.as_numpy("predict_proba"), expected, rtol=0, atol=1e-12)


def test_http_client_mistakes_are_400s_that_say_what_to_fix(
    http_client: triton_http.InferenceServerClient, demo_v1: DemoModel
) -> None:
    rows, _ = rows_of(demo_v1, 3)
    cases = [
        ([http_input(rows[:, :83])], None, r"shape must be \[n, 84\]"),
        ([http_input(np.where(np.arange(84) == 5, np.nan, rows))], None, "value 5 is NaN.*SERVING_NULL_AS_MISSING"),
        ([http_input(rows)], [triton_http.InferRequestedOutput("shap")], "unknown output 'shap'"),
        ([http_input(rows)], [triton_http.InferRequestedOutput("probabilities", class_count=3)], "classification"),
    ]
    for inputs, outputs, message in cases:
        with pytest.raises(InferenceServerException, match=message) as caught:
            http_client.infer("SPY", inputs, outputs=outputs)
        assert caught.value.status() == "400", message
    with pytest.raises(InferenceServerException, match="this pod serves SPY only") as missing:
        http_client.infer("QQQ", [http_input(rows)])
    assert missing.value.status() == "404"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_compressed_requests(
    http_client: triton_http.InferenceServerClient, demo_v1: DemoModel, algorithm: str
) -> None:
    rows, expected = rows_of(demo_v1, 6, seed=12)
    result = http_client.infer("SPY", [http_input(rows)], request_compression_algorithm=algorithm)
    assert_answers(result, expected, classes_of(demo_v1))


def test_an_unknown_or_broken_content_encoding_is_refused(server: Server) -> None:
    body = json.dumps({"inputs": []}).encode()
    unknown = server.request("POST", "/v2/models/SPY/infer", raw=body, headers={"Content-Encoding": "br"})
    assert unknown.status == 415 and "send the body uncompressed, gzip or deflate" in unknown.json()["error"]
    broken = server.request("POST", "/v2/models/SPY/infer", raw=body, headers={"Content-Encoding": "gzip"})
    assert broken.status == 400 and "not valid gzip data" in broken.json()["error"]


def binary_request(rows: np.ndarray, size: int | None = None, extra: bytes = b"") -> tuple[bytes, bytes]:
    raw = rows.astype("<f8").tobytes()
    header = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64"}
    header["parameters"] = {"binary_data_size": len(raw) if size is None else size}
    text = json.dumps({"inputs": [header]}).encode()
    return text, text + raw + extra


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: binary_request(r, size=100), "belong to no input"),
        (lambda r: binary_request(r, size=10**7), "runs past"),
        (lambda r: binary_request(r[:, :80].copy(), size=None), r"shape must be \[n, 84\]"),
        (lambda r: (b"", binary_request(r)[1]), "not valid JSON"),  # no header: the body is not JSON
    ],
)
def test_raw_binary_mistakes(server: Server, demo_v1: DemoModel, build: Any, message: str) -> None:
    rows, _ = rows_of(demo_v1, 2)
    text, body = build(rows)
    headers = {"Inference-Header-Content-Length": str(len(text))} if text else {}
    reply = server.request("POST", "/v2/models/SPY/infer", raw=body, headers=headers)
    assert reply.status == 400, reply.body
    assert re.search(message, reply.json()["error"]), reply.json()


def test_a_bad_inference_header_length_is_a_400(server: Server, demo_v1: DemoModel) -> None:
    rows, _ = rows_of(demo_v1, 1)
    _, body = binary_request(rows)
    for value in ("abc", str(len(body) + 1)):
        reply = server.request(
            "POST", "/v2/models/SPY/infer", raw=body, headers={"Inference-Header-Content-Length": value}
        )
        assert reply.status == 400 and "Inference-Header-Content-Length" in reply.json()["error"]


# -- gRPC ---------------------------------------------------------------------------------------------


def test_grpc_health_metadata_and_readiness(grpc_client: triton_grpc.InferenceServerClient, demo_v1: DemoModel) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("SPY") and grpc_client.is_model_ready("spy-production")
    assert not grpc_client.is_model_ready("SPY", "v0.0")
    assert grpc_client.get_server_metadata().name == "tradingmodel-serving"
    metadata = grpc_client.get_model_metadata("SPY")
    assert metadata.versions == ["v1.0"] and list(metadata.inputs[0].shape) == [-1, 84]
    assert [o.name for o in metadata.outputs] == ["probabilities", "strategy"]


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_grpc_infer_with_raw_contents(
    grpc_client: triton_grpc.InferenceServerClient, demo_v1: DemoModel, datatype: str
) -> None:
    rows, expected = rows_of(demo_v1, 30, seed=9)
    if datatype == "FP32":
        rows, expected = as_float32(demo_v1, rows)
    result = grpc_client.infer("SPY", [grpc_input(rows, datatype)], request_id="g-1")
    assert result.get_response().id == "g-1" and result.get_response().model_version == "v1.0"
    assert_answers(result, expected, classes_of(demo_v1))
    one = grpc_client.infer("SPY", [grpc_input(rows[0], datatype)])  # shape [84]: one row
    np.testing.assert_allclose(one.as_numpy("probabilities"), expected[:1], rtol=0, atol=1e-12)


def test_grpc_typed_contents_from_tritons_own_messages(server: Server, demo_v1: DemoModel) -> None:
    """Triton's generated messages (a superset of KServe's proto) on the wire, typed contents in and out."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rows, expected = rows_of(demo_v1, 4, seed=11)
    request = service_pb2.ModelInferRequest(model_name="SPY")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    tensor.contents.fp64_contents.extend(rows.ravel().tolist())
    request.outputs.add(name="strategy")
    request.outputs.add(name="probabilities")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert not response.raw_output_contents  # typed in, typed out
    strategy, probabilities = response.outputs
    got = np.array(probabilities.contents.fp64_contents).reshape(list(probabilities.shape))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    classes = classes_of(demo_v1)
    assert [b.decode() for b in strategy.contents.bytes_contents] == [classes[i] for i in expected.argmax(axis=1)]
    assert probabilities.parameters["classes"].string_param.split(",") == classes


def test_grpc_client_mistakes_are_invalid_argument_or_not_found(
    grpc_client: triton_grpc.InferenceServerClient, demo_v1: DemoModel
) -> None:
    rows, _ = rows_of(demo_v1, 2)
    cases = [
        ("SPY", "", [grpc_input(rows[:, :83])], "INVALID_ARGUMENT", r"shape must be \[n, 84\]"),
        ("SPY", "", [grpc_input(np.where(np.arange(84) == 2, np.nan, rows))], "INVALID_ARGUMENT", "value 2 is NaN"),
        ("SPY", "", [grpc_input(np.tile(rows[:1], (10_001, 1)))], "INVALID_ARGUMENT", "SERVING_MAX_BATCH_ROWS"),
        ("QQQ", "", [grpc_input(rows)], "NOT_FOUND", "this pod serves SPY only"),
        ("not a ticker!", "", [grpc_input(rows)], "NOT_FOUND", "no model named"),
        ("SPY", "v9.9", [grpc_input(rows)], "NOT_FOUND", "version v9.9 of SPY is not loaded"),
    ]
    for name, version, inputs, code, message in cases:
        with pytest.raises(InferenceServerException, match=message) as caught:
            grpc_client.infer(name, inputs, model_version=version)
        assert caught.value.status() == f"StatusCode.{code}", message
    with pytest.raises(InferenceServerException) as unknown:
        grpc_client.is_model_ready("QQQ")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_both_protocols_count_into_the_same_metrics(
    server: Server,
    grpc_client: triton_grpc.InferenceServerClient,
    http_client: triton_http.InferenceServerClient,
    demo_v1: DemoModel,
) -> None:
    from test_server_http import metric  # the Prometheus text parsed by prometheus_client

    rows, _ = rows_of(demo_v1, 5)
    before = {
        p: metric(server, "tradingmodel_requests_total", endpoint="infer", code="200", protocol=p)
        for p in ("http", "grpc")
    }
    predictions = metric(server, "tradingmodel_predictions_total")
    grpc_client.infer("SPY", [grpc_input(rows)])
    http_client.infer("SPY", [http_input(rows)])
    with pytest.raises(InferenceServerException):
        grpc_client.infer("SPY", [grpc_input(rows[:, :10])])
    for protocol in ("http", "grpc"):
        assert (
            metric(server, "tradingmodel_requests_total", endpoint="infer", code="200", protocol=protocol)
            == before[protocol] + 1
        )
    assert metric(server, "tradingmodel_requests_total", endpoint="infer", code="400", protocol="grpc") >= 1
    assert metric(server, "tradingmodel_requests_total", protocol="grpc", code="500") == 0
    assert metric(server, "tradingmodel_predictions_total") == predictions + 10
    assert metric(server, "tradingmodel_request_duration_seconds_count", endpoint="infer", protocol="grpc") >= 2


# -- limits that agree ------------------------------------------------------------------------------


def test_a_maximum_size_batch_passes_in_every_encoding_with_the_defaults(
    server: Server,
    grpc_client: triton_grpc.InferenceServerClient,
    http_client: triton_http.InferenceServerClient,
    demo_v1: DemoModel,
) -> None:
    """SERVING_MAX_BATCH_ROWS (10,000) rows fit SERVING_MAX_BODY_BYTES in JSON written in full, the seeds'
    named objects, binary and gRPC; one row more is refused with a message naming the row limit."""
    rows = np.random.default_rng(1).normal(size=(10_000, 84))
    doc = {"inputs": [{"name": "input-0", "shape": [10_000, 84], "datatype": "FP64", "data": rows.ravel().tolist()}]}
    body = json.dumps(doc).encode()
    reply = server.request("POST", "/v2/models/SPY/infer", raw=body, timeout=300)
    assert reply.status == 200, reply.body[:300]
    from_json = np.array(reply.json()["outputs"][0]["data"]).reshape(10_000, -1)
    names = json.loads(demo_v1.files["feature_names.json"])
    seeds = json.dumps(
        {"ticker": "SPY", "instances": [dict(zip(names, r, strict=True)) for r in rows.tolist()]}
    ).encode()
    assert len(seeds) > len(body) > 16 << 20  # both far over the old 1 MiB
    named = server.request("POST", "/v1/predict", raw=seeds, timeout=300)
    assert named.status == 200 and len(named.json()["predictions"]) == 10_000
    binary = http_client.infer("SPY", [http_input(rows)]).as_numpy("probabilities")
    over_grpc = grpc_client.infer("SPY", [grpc_input(rows)]).as_numpy("probabilities")
    np.testing.assert_array_equal(binary, from_json)
    np.testing.assert_array_equal(over_grpc, from_json)
    with pytest.raises(InferenceServerException, match=r"send at most 10000 per request \(SERVING_MAX_BATCH_ROWS\)"):
        http_client.infer("SPY", [http_input(np.vstack([rows, rows[:1]]))])


def test_a_body_over_the_byte_limit_is_refused_naming_both_limits(
    bucket_name: str, s3_endpoint: str, start_server: Any, demo_v1: DemoModel
) -> None:
    small = start_server(
        bucket_name, MODEL_TICKER="SPY", SERVING_MAX_BODY_BYTES=str(1 << 20), SERVING_MAX_BATCH_ROWS="50"
    )
    rows = np.random.default_rng(2).normal(size=(1_000, 84))
    doc = {"inputs": [{"name": "input-0", "shape": [1_000, 84], "datatype": "FP64", "data": rows.ravel().tolist()}]}
    reply = small.request("POST", "/v2/models/SPY/infer", raw=json.dumps(doc).encode())
    assert reply.status == 413
    assert "SERVING_MAX_BODY_BYTES" in reply.json()["error"] and "SERVING_MAX_BATCH_ROWS" in reply.json()["error"]
    # A compressed body is held to the same limit once inflated, and never inflated further than that
    bomb = gzip.compress(b" " * (8 << 20))
    inflated = small.request("POST", "/v2/models/SPY/infer", raw=bomb, headers={"Content-Encoding": "gzip"})
    assert inflated.status == 413 and "SERVING_MAX_BODY_BYTES" in inflated.json()["error"]
    # Under the byte limit but far over the rows: refused before it is parsed (values counted, not bytes)
    many = b'{"instances": [' + b",".join([b"[" + b",".join([b"0"] * 84) + b"]"] * 2_000) + b"]}"
    refused = small.request("POST", "/v1/models/SPY:predict", raw=many)
    assert (
        refused.status == 400 and "send at most 50 rows per request (SERVING_MAX_BATCH_ROWS)" in refused.json()["error"]
    )


# -- stopping ---------------------------------------------------------------------------------------


def test_sigterm_turns_grpc_readiness_off_and_exits_cleanly(bucket_name: str, start_server: Any) -> None:
    stopping = start_server(bucket_name, MODEL_TICKER="SPY", SERVING_DRAIN_SECONDS="3")
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{stopping.grpc_port}")
    assert client.is_server_ready()
    stopping.proc.send_signal(signal.SIGTERM)
    try:
        ready = client.is_server_ready()
    except InferenceServerException as exc:  # GOAWAY already: the port no longer takes calls
        assert exc.status() == "StatusCode.UNAVAILABLE"
        ready = False
    assert not ready
    assert stopping.proc.wait(60) == 0
