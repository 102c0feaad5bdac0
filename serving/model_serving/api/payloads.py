"""Request bodies in, feature rows out; predictions in, response documents out. Pure functions.

Input rules (a 400 names the feature and what to send instead):
  * every feature the model was trained on, and no other;
  * values are JSON numbers: strings, booleans, objects and lists are refused;
  * null is refused by default: JSON has no NaN, and a silent "missing" would
    change predictions without anyone noticing. With SERVING_NULL_AS_MISSING=1
    a null becomes NaN, which LightGBM treats as a missing value (the trees'
    default direction). Infinity and NaN literals are not JSON and are refused
    by the parser.
  * V2 tensors declared FP32 are rounded to float32 first (what the client's
    tensor held), then widened to float64 like LightGBM does internally.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import numpy as np

from model_serving.errors import BadRequest
from model_serving.loading.served_model import ServedModel

_NUMBERS: frozenset[type] = frozenset({int, float})
_NUMBERS_OR_NULL: frozenset[type] = frozenset({int, float, type(None)})
V2_NUMERIC = {"FP64": np.float64, "FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}
PROBABILITIES = "probabilities"
LABEL = "strategy"
# Names other V2 servers use for the same outputs, accepted in a request's "outputs".
_OUTPUT_ALIASES = {"output-0": PROBABILITIES, "predict_proba": PROBABILITIES, "predict": LABEL, "label": LABEL}
_LIST_LIMIT = 8


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f" (and {len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else "")


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"a string ({value[:20]!r})"
    return f"a JSON {type(value).__name__.replace('dict', 'object').replace('list', 'array')}"


def _bad_value(where: str, name: str, value: Any, null_as_missing: bool) -> BadRequest:
    hint = "" if null_as_missing else " (null is refused: SERVING_NULL_AS_MISSING=1 makes it a missing value)"
    return BadRequest(f"{where}: feature {name!r} is {describe(value)}; send a number{hint if value is None else ''}")


# -- the seeds' call -------------------------------------------------------------------------------


def predict_envelope(doc: Any, default_ticker: str | None) -> tuple[str, Any, bool]:
    """(ticker, features or instances, is_batch) from {"ticker", "features"|"instances"}."""
    if type(doc) is not dict:
        raise BadRequest(
            f'the body must be a JSON object like {{"ticker": "SPY", "features": {{...}}}}, got {describe(doc)}'
        )
    ticker = doc.get("ticker", default_ticker)
    if ticker is None:
        raise BadRequest('"ticker" is missing: name the ticker to predict for, e.g. "SPY"')
    if type(ticker) is not str or not ticker:
        raise BadRequest(f'"ticker" must be a ticker symbol string, got {describe(ticker)}')
    features, instances = doc.get("features"), doc.get("instances")
    if (features is None) == (instances is None):
        raise BadRequest('send either "features" (one row: {name: number}) or "instances" (a list of such rows)')
    if instances is not None:
        if type(instances) is not list or not instances:
            raise BadRequest('"instances" must be a non-empty list of {feature name: number} objects')
        return ticker.upper(), instances, True
    return ticker.upper(), features, False


def named_row(model: ServedModel, features: Any, where: str, null_as_missing: bool) -> list[Any]:
    """One row in the model's column order from {feature name: number}."""
    if type(features) is not dict:
        raise BadRequest(f"{where} must be an object of feature name to number, got {describe(features)}")
    try:
        values = [features[name] for name in model.feature_names]
    except KeyError:
        missing = [n for n in model.feature_names if n not in features]
        raise BadRequest(
            f"{where} is missing {len(missing)} of the model's {model.n_features} features: {_some(missing)}"
        ) from None
    if len(features) != model.n_features:
        unknown = [str(k) for k in features if k not in model.feature_index]
        raise BadRequest(
            f"{where} has {len(unknown)} unknown feature(s): {_some(unknown)}; the model does not use them"
        )
    if not _NUMBERS.issuperset(map(type, values)):
        allowed = _NUMBERS_OR_NULL if null_as_missing else _NUMBERS
        for name, value in zip(model.feature_names, values, strict=True):
            if type(value) not in allowed:
                raise _bad_value(where, name, value, null_as_missing)
        values = [math.nan if v is None else v for v in values]
    return values


def instance_rows(model: ServedModel, instances: list[Any], null_as_missing: bool, max_rows: int) -> np.ndarray:
    """Rows from a list of {feature name: number} objects or of plain lists in the model's column
    order (GET /v2/models/{name} lists it), as the seeds' batches and KServe's V1 protocol send them."""
    if len(instances) > max_rows:
        raise BadRequest(f'"instances" has {len(instances)} rows; send at most {max_rows} per request')
    rows: list[Any] = []
    for i, row in enumerate(instances):
        where = f"instances[{i}]"
        if type(row) is list:
            if len(row) != model.n_features:
                raise BadRequest(
                    f"{where} has {len(row)} values; send {model.n_features} numbers in the model's feature order "
                    "(GET /v2/models/{name} lists it) or an object of feature name to number"
                )
            rows.append(_numbers(where, row, model.n_features, np.float64, null_as_missing))
        else:
            rows.append(named_row(model, row, where, null_as_missing))
    return np.array(rows, dtype=np.float64)


def predict_response(model: ServedModel, ticker: str, probabilities: np.ndarray, batch: bool) -> dict[str, Any]:
    items = [_prediction(model, row) for row in probabilities.tolist()]
    head: dict[str, Any] = {"ticker": ticker}
    tail = {
        "model_version": model.version,
        "model_path": model.model_path,
        "model_type": model.model_type,
        "digest": model.digest,
    }
    if "accuracy" in model.metadata:
        tail["model_accuracy"] = model.metadata["accuracy"]
    if batch:
        return {**head, "predictions": items, **tail}
    return {**head, **items[0], **tail}


def _prediction(model: ServedModel, row: list[float]) -> dict[str, Any]:
    best = row.index(max(row))  # the first of equal maxima, like numpy's argmax
    return {
        "strategy": model.classes[best],
        "confidence": row[best],
        "probabilities": dict(zip(model.classes, row, strict=True)),
    }


def v1_instances(doc: Any) -> list[Any]:
    """KServe's V1 protocol: {"instances": [...]} (or lgbserver's {"inputs": [...]})."""
    if type(doc) is not dict:
        raise BadRequest(f'the body must be a JSON object like {{"instances": [[...], ...]}}, got {describe(doc)}')
    instances = doc.get("instances", doc.get("inputs"))
    if type(instances) is not list or not instances:
        raise BadRequest('"instances" must be a non-empty list of rows (lists of numbers or feature objects)')
    return instances


def best_classes(probabilities: np.ndarray) -> np.ndarray:
    return probabilities.argmax(axis=1)


# -- Open Inference Protocol (V2) ---------------------------------------------------------------


def infer_rows(model: ServedModel, doc: Any, null_as_missing: bool, max_rows: int) -> tuple[np.ndarray, list[str]]:
    """(rows, requested output names) from a V2 inference request."""
    if type(doc) is not dict:
        raise BadRequest(f'the body must be a V2 inference request object with "inputs", got {describe(doc)}')
    inputs = doc.get("inputs")
    if type(inputs) is not list or not inputs or not all(type(i) is dict for i in inputs):
        raise BadRequest('"inputs" must be a non-empty list of tensors {"name", "shape", "datatype", "data"}')
    names = [i.get("name") for i in inputs]
    if not all(type(n) is str for n in names):
        raise BadRequest('every input needs a "name" string')
    if len(inputs) == 1 and names[0] not in model.feature_index:
        rows = _tensor_rows(model, inputs[0], null_as_missing)
    elif all(n in model.feature_index for n in names):
        rows = _column_rows(model, inputs, null_as_missing)
    else:
        unknown = [str(n) for n in names if n not in model.feature_index]
        raise BadRequest(
            f"send one input of shape [n, {model.n_features}] or one input per feature (shape [n]); "
            f"these inputs are not features of the model: {_some(unknown)}"
        )
    if rows.shape[0] > max_rows:
        raise BadRequest(f"the request has {rows.shape[0]} rows; send at most {max_rows} per request")
    return rows, _requested_outputs(doc.get("outputs"))


def _tensor_header(tensor: dict[str, Any]) -> tuple[str, list[int], Any, list[Any]]:
    name, shape, datatype, data = tensor.get("name"), tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    label = f"input {name!r}" if type(name) is str else "an input"
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(f"{label}: shape must be a list of non-negative integers, got {shape!r:.60}")
    if type(datatype) is not str or datatype not in V2_NUMERIC:
        raise BadRequest(f"{label}: datatype {datatype!r:.20} is not supported; use one of {', '.join(V2_NUMERIC)}")
    if type(data) is not list:
        raise BadRequest(f"{label}: data must be a list of numbers (flat or nested), got {describe(data)}")
    return label, shape, V2_NUMERIC[datatype], data


def _numbers(label: str, data: list[Any], expected: int, dtype: Any, null_as_missing: bool) -> np.ndarray:
    if data and type(data[0]) is list:
        if not all(type(part) is list for part in data):
            raise BadRequest(f"{label}: data mixes nested lists and numbers")
        data = list(chain.from_iterable(data))
        if data and type(data[0]) is list:
            raise BadRequest(f"{label}: data is nested deeper than [rows][features]")
    if len(data) != expected:
        raise BadRequest(f"{label}: data has {len(data)} values but its shape needs {expected}")
    if np.issubdtype(dtype, np.integer):
        allowed: frozenset[type] = frozenset({int})
    else:
        allowed = _NUMBERS_OR_NULL if null_as_missing else _NUMBERS
    if not allowed.issuperset(map(type, data)):
        position, value = next((i, v) for i, v in enumerate(data) if type(v) not in allowed)
        hint = "; SERVING_NULL_AS_MISSING=1 makes null a missing value" if value is None else ""
        raise BadRequest(f"{label}: value {position} is {describe(value)}; send numbers{hint}")
    if type(None) in allowed:
        data = [math.nan if v is None else v for v in data]
    try:
        values = np.array(data, dtype=dtype)
    except OverflowError:
        raise BadRequest(f"{label}: a value does not fit its datatype") from None
    return values.astype(np.float64, copy=False)


def _tensor_rows(model: ServedModel, tensor: dict[str, Any], null_as_missing: bool) -> np.ndarray:
    label, shape, dtype, data = _tensor_header(tensor)
    width = model.n_features
    if len(shape) == 1 and shape[0] == width:
        shape = [1, width]
    if len(shape) != 2 or shape[1] != width:
        raise BadRequest(f"{label}: shape must be [n, {width}] (rows, features), got {shape}")
    if shape[0] == 0:
        raise BadRequest(f"{label}: shape [0, {width}] has no rows to predict")
    return _numbers(label, data, shape[0] * width, dtype, null_as_missing).reshape(shape[0], width)


def _column_rows(model: ServedModel, inputs: list[dict[str, Any]], null_as_missing: bool) -> np.ndarray:
    given = [i["name"] for i in inputs]
    if len(set(given)) != len(given):
        raise BadRequest("an input name appears twice; send each feature once")
    missing = [n for n in model.feature_names if n not in set(given)]
    if missing:
        raise BadRequest(f"per-feature inputs are missing {len(missing)} feature(s): {_some(missing)}")
    columns: dict[str, np.ndarray] = {}
    for tensor in inputs:
        label, shape, dtype, data = _tensor_header(tensor)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] == 0:
            raise BadRequest(f"{label}: a per-feature input has shape [n] or [n, 1] with n >= 1, got {shape}")
        columns[tensor["name"]] = _numbers(label, data, shape[0], dtype, null_as_missing)
    lengths = {len(c) for c in columns.values()}
    if len(lengths) != 1:
        raise BadRequest(f"per-feature inputs have different row counts {sorted(lengths)}; send the same n for each")
    return np.column_stack([columns[name] for name in model.feature_names])


def _requested_outputs(outputs: Any) -> list[str]:
    if outputs is None:
        return [PROBABILITIES, LABEL]
    if type(outputs) is not list or not all(type(o) is dict and type(o.get("name")) is str for o in outputs):
        raise BadRequest('"outputs" must be a list of {"name": ...} objects')
    chosen = []
    for item in outputs:
        name = _OUTPUT_ALIASES.get(item["name"], item["name"])
        if name not in (PROBABILITIES, LABEL):
            raise BadRequest(f"unknown output {item['name']!r}; this model returns {PROBABILITIES!r} and {LABEL!r}")
        chosen.append(item["name"])
    return chosen


def infer_response(
    model: ServedModel, model_name: str, probabilities: np.ndarray, outputs: list[str], request_id: str
) -> dict[str, Any]:
    n = probabilities.shape[0]
    tensors = []
    for name in outputs:
        if _OUTPUT_ALIASES.get(name, name) == PROBABILITIES:
            tensors.append(
                {
                    "name": name,
                    "shape": [n, model.n_classes],
                    "datatype": "FP64",
                    "parameters": {"classes": model.classes},
                    "data": probabilities.ravel().tolist(),
                }
            )
        else:
            best = best_classes(probabilities).tolist()
            tensors.append({"name": name, "shape": [n], "datatype": "BYTES", "data": [model.classes[i] for i in best]})
    return {
        "model_name": model_name,
        "model_version": model.version,
        "id": request_id,
        "parameters": {"digest": model.digest, "engine": model.engine},
        "outputs": tensors,
    }


def model_metadata(model: ServedModel, model_name: str) -> dict[str, Any]:
    return {
        "name": model_name,
        "versions": [model.version],
        "platform": "lightgbm",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, model.n_features]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, model.n_classes]},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "model": model.key,
            "model_type": model.model_type,
            "model_path": model.model_path,
            "stage": model.stage,
            "digest": model.digest,
            "engine": model.engine,
            "source": model.source,
            "feature_names": model.feature_names,
            "classes": model.classes,
        },
    }
