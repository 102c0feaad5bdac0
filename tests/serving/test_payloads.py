"""Request parsing: every kind of bad input is a 400 that says what to fix; good input keeps its order."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from devstack.demo_model import DemoModel
from helpers.serving import served_model
from model_serving.api import payloads
from model_serving.api.tensors import OutputRequest
from model_serving.errors import BadRequest
from model_serving.loading.served_model import ServedModel


@pytest.fixture(scope="module")
def model(demo_v1: DemoModel) -> ServedModel:
    return served_model(demo_v1)


def features(model: ServedModel, start: float = 0.0) -> dict[str, Any]:
    return {name: start + i / 10 for i, name in enumerate(model.feature_names)}


def test_named_row_follows_the_model_column_order(model: ServedModel) -> None:
    given = features(model)
    shuffled = dict(reversed(list(given.items())))
    row = payloads.named_row(model, shuffled, '"features"', null_as_missing=False)
    assert row == [given[n] for n in model.feature_names]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("iv_rank"), "missing 1 of the model's 84 features: iv_rank"),
        (lambda f: f.update(not_a_feature=1.0), "unknown feature.*not_a_feature"),
        (lambda f: f.update(iv_rank="0.5"), "'iv_rank' is a string .*send a number"),
        (lambda f: f.update(iv_rank=True), "'iv_rank' is a boolean"),
        (lambda f: f.update(iv_rank=None), "'iv_rank' is null.*SERVING_NULL_AS_MISSING"),
        (lambda f: f.update(iv_rank=[1.0]), "'iv_rank' is a JSON array"),
        (lambda f: f.update(iv_rank={"v": 1}), "'iv_rank' is a JSON object"),
    ],
)
def test_bad_features_say_what_to_fix(model: ServedModel, change: Any, message: str) -> None:
    given = features(model)
    change(given)
    with pytest.raises(BadRequest, match=message):
        payloads.named_row(model, given, '"features"', null_as_missing=False)


def test_null_is_a_missing_value_only_when_configured(model: ServedModel) -> None:
    given = dict(features(model), iv_rank=None)
    row = payloads.named_row(model, given, '"features"', null_as_missing=True)
    assert math.isnan(row[model.feature_index["iv_rank"]])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"features": {}}, '"ticker" is missing'),
        ({"ticker": 5, "features": {}}, '"ticker" must be a ticker symbol string'),
        ({"ticker": "SPY"}, 'either "features"'),
        ({"ticker": "SPY", "features": {}, "instances": []}, 'either "features"'),
        ({"ticker": "SPY", "instances": []}, "non-empty list"),
        ({"ticker": "SPY", "instances": {"a": 1}}, "non-empty list"),
    ],
)
def test_bad_envelopes(doc: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        payloads.predict_envelope(doc, default_ticker=None)


def test_envelope_defaults_to_the_pods_ticker_and_upper_cases() -> None:
    assert payloads.predict_envelope({"features": {}}, "SPY") == ("SPY", {}, False)
    assert payloads.predict_envelope({"ticker": "qqq", "instances": [{}]}, None) == ("QQQ", [{}], True)


def test_batches_name_the_bad_row_and_respect_the_row_limit(model: ServedModel) -> None:
    good = features(model)
    rows = payloads.instance_rows(model, [good, features(model, 1.0)], False, max_rows=10)
    assert rows.shape == (2, 84) and rows.dtype == np.float64
    with pytest.raises(BadRequest, match=r"instances\[1\]: feature 'vix' is a string"):
        payloads.instance_rows(model, [good, dict(good, vix="high")], False, max_rows=10)
    positional = payloads.instance_rows(model, [[good[n] for n in model.feature_names]], False, max_rows=10)
    np.testing.assert_array_equal(positional, rows[:1])
    with pytest.raises(BadRequest, match=r"instances\[0\] has 2 values; send 84 numbers"):
        payloads.instance_rows(model, [[1.0, 2.0]], False, max_rows=10)
    with pytest.raises(BadRequest, match="at most 1 per request"):
        payloads.instance_rows(model, [good, good], False, max_rows=1)


# -- V2 ------------------------------------------------------------------------------------------


def tensor(data: Any, shape: list[int], datatype: str = "FP64", name: str = "input-0") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_v2_flat_and_nested_data_give_the_same_rows(model: ServedModel) -> None:
    rows = np.arange(168, dtype=np.float64).reshape(2, 84) / 7
    flat, outputs = payloads.infer_rows(model, {"inputs": [tensor(rows.ravel().tolist(), [2, 84])]}, False, 100)
    nested, _ = payloads.infer_rows(model, {"inputs": [tensor(rows.tolist(), [2, 84])]}, False, 100)
    np.testing.assert_array_equal(flat, rows)
    np.testing.assert_array_equal(nested, rows)
    assert outputs == [OutputRequest("probabilities"), OutputRequest("strategy")]


def test_v2_fp32_is_rounded_like_the_clients_tensor(model: ServedModel) -> None:
    values = [0.1] * 84
    rows, _ = payloads.infer_rows(model, {"inputs": [tensor(values, [1, 84], "FP32")]}, False, 100)
    assert rows.dtype == np.float64 and rows[0, 0] == float(np.float32(0.1)) != 0.1


def test_v2_one_input_per_feature(model: ServedModel) -> None:
    inputs = [tensor([float(i), float(i + 1)], [2], name=n) for i, n in enumerate(model.feature_names)]
    rows, _ = payloads.infer_rows(model, {"inputs": list(reversed(inputs))}, False, 100)
    np.testing.assert_array_equal(rows[0], np.arange(84.0))
    np.testing.assert_array_equal(rows[1], np.arange(84.0) + 1)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("text", "V2 inference request object"),
        ({"inputs": []}, "non-empty list of tensors"),
        ({"inputs": [tensor([1.0] * 84, [1, 83])]}, r"shape must be \[n, 84\]"),
        ({"inputs": [tensor([1.0] * 83, [1, 84])]}, "data has 83 values but its shape needs 84"),
        ({"inputs": [tensor([1.0] * 84, [1, 84], "BYTES")]}, "datatype 'BYTES' is not supported"),
        ({"inputs": [tensor([1.0] * 84, [1, 84], ["FP64"])]}, r"datatype \['FP64'\] is not supported"),
        ({"inputs": [tensor(["1.0"] * 84, [1, 84])]}, "value 0 is a string"),
        ({"inputs": [tensor([True] * 84, [1, 84])]}, "value 0 is a boolean"),
        ({"inputs": [tensor([None] * 84, [1, 84])]}, "value 0 is null.*SERVING_NULL_AS_MISSING"),
        ({"inputs": [tensor([1.5] * 84, [1, 84], "INT64")]}, "value 0 is a JSON float"),
        ({"inputs": [tensor([[[1.0] * 84]], [1, 84])]}, "nested deeper"),
        ({"inputs": [tensor([1.0] * 84, "1,84")]}, "shape must be a list"),
        ({"inputs": [tensor([], [0, 84])]}, "no rows"),
        ({"inputs": [tensor([1.0], [1], name="iv_rank"), tensor([1.0], [1], name="bogus")]}, "not features"),
        ({"inputs": [tensor([1.0] * 84, [1, 84])], "outputs": [{"name": "shap"}]}, "unknown output 'shap'"),
        ({"inputs": [tensor([1.0] * 84, [1, 84], name={"a": 1})]}, 'needs a "name" string'),
        ({"inputs": [tensor([2**40] * 84, [1, 84], "INT32")]}, "does not fit its datatype"),
    ],
)
def test_bad_v2_requests_say_what_to_fix(model: ServedModel, doc: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        payloads.infer_rows(model, doc, False, 100)


def test_v2_missing_feature_inputs_are_named(model: ServedModel) -> None:
    inputs = [tensor([1.0], [1], name=n) for n in model.feature_names if n != "vix"]
    with pytest.raises(BadRequest, match=r"missing 1 feature.*vix"):
        payloads.infer_rows(model, {"inputs": inputs}, False, 100)


def test_v2_response_carries_probabilities_and_labels(model: ServedModel) -> None:
    probabilities = np.array([[0.1] * 9 + [0.1], [0.0] * 9 + [1.0]])
    probabilities[0, 3] = 0.5
    body, json_length = payloads.infer_reply(
        model, "SPY", probabilities, [OutputRequest("output-0"), OutputRequest("strategy")], "req-1"
    )
    assert json_length is None
    doc = json.loads(body)
    assert doc["model_name"] == "SPY" and doc["id"] == "req-1" and doc["model_version"] == model.version
    probs, labels = doc["outputs"]
    assert probs["name"] == "output-0" and probs["shape"] == [2, 10] and probs["datatype"] == "FP64"
    assert probs["data"] == probabilities.ravel().tolist()
    expected_labels = [model.classes[3], model.classes[9]]
    assert labels == {"name": "strategy", "shape": [2], "datatype": "BYTES", "data": expected_labels}


def test_binary_fp64_values_reach_the_engine_without_a_copy_and_nan_is_still_found(model: ServedModel) -> None:
    rows = np.random.default_rng(4).normal(size=(3, model.n_features))
    rows[1, 7], rows[2, 9] = np.inf, -np.inf  # their sum is NaN, but no value is: accepted
    raw = rows.astype("<f8").tobytes()
    doc = {"inputs": [{"name": "x", "shape": [3, model.n_features], "datatype": "FP64"}]}
    doc["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
    got, _ = payloads.infer_rows(model, doc, null_as_missing=False, max_rows=10, binary=raw)
    np.testing.assert_array_equal(got, rows)
    assert np.shares_memory(got, np.frombuffer(raw, dtype=np.uint8)), "FP64 rows are a view of the body"
    single = {"inputs": [{**doc["inputs"][0], "datatype": "FP32", "parameters": {"binary_data_size": len(raw) // 2}}]}
    halves, _ = payloads.infer_rows(model, single, False, 10, binary=rows.astype("<f4").tobytes())
    assert halves.dtype == np.float64 and np.array_equal(halves, rows.astype(np.float32))
    rows[2, 3] = np.nan
    with pytest.raises(BadRequest, match=f"value {2 * model.n_features + 3} is NaN"):
        payloads.infer_rows(model, doc, null_as_missing=False, max_rows=10, binary=rows.astype("<f8").tobytes())
