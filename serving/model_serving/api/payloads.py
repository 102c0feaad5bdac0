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
import orjson

from model_serving.api import tensors
from model_serving.api.tensors import LABEL, PROBABILITIES, InputHeader, OutputRequest
from model_serving.errors import BadRequest
from model_serving.loading.served_model import ServedModel

_NUMBERS: frozenset[type] = frozenset({int, float})
_NUMBERS_OR_NULL: frozenset[type] = frozenset({int, float, type(None)})
_some = tensors.some


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
        raise BadRequest(
            f'"instances" has {len(instances)} rows; send at most {max_rows} per request ({tensors.ROWS_SETTING})'
        )
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


# -- Open Inference Protocol (V2) ---------------------------------------------------------------


def infer_rows(
    model: ServedModel, doc: Any, null_as_missing: bool, max_rows: int, binary: bytes | memoryview | None = None
) -> tuple[np.ndarray, list[OutputRequest]]:
    """(rows, requested outputs) from a V2 inference request: its JSON document and, with the binary
    tensor extension, the bytes after it (`binary`), which inputs claim in order by their
    `parameters.binary_data_size`. An input carries either JSON `data` or binary data."""
    if type(doc) is not dict:
        raise BadRequest(f'the body must be a V2 inference request object with "inputs", got {describe(doc)}')
    inputs = doc.get("inputs")
    if type(inputs) is not list or not inputs or not all(type(i) is dict for i in inputs):
        raise BadRequest('"inputs" must be a non-empty list of tensors {"name", "shape", "datatype", "data"}')
    headers = [tensors.header(i.get("name"), i.get("datatype"), i.get("shape")) for i in inputs]
    outputs = requested_outputs(doc)
    chunks = _binary_chunks(inputs, headers, binary)

    def decode(index: int, tensor: InputHeader, expected: int) -> np.ndarray:
        data = inputs[index].get("data")
        chunk = chunks.get(index)
        if chunk is not None:
            if data is not None:
                raise BadRequest(f"{tensor.label}: send either data or binary data (binary_data_size), not both")
            return tensors.from_bytes(tensor, chunk, expected, null_as_missing)
        if type(data) is not list:
            raise BadRequest(f"{tensor.label}: data must be a list of numbers (flat or nested), got {describe(data)}")
        return _numbers(tensor.label, data, expected, tensors.DTYPES[tensor.datatype], null_as_missing)

    return tensors.rows_from_inputs(model, headers, decode, max_rows), outputs


def _binary_chunks(
    inputs: list[dict[str, Any]], headers: list[InputHeader], binary: bytes | memoryview | None
) -> dict[int, memoryview]:
    """Input index -> its slice of the binary data, in input order (the binary tensor extension)."""
    chunks: dict[int, memoryview] = {}
    view = memoryview(binary) if binary is not None else None
    offset = 0
    for index, (item, tensor) in enumerate(zip(inputs, headers, strict=True)):
        parameters = item.get("parameters")
        size = parameters.get("binary_data_size") if type(parameters) is dict else None
        if size is None:
            continue
        if type(size) is not int or size < 0:
            raise BadRequest(f"{tensor.label}: parameters.binary_data_size must be a byte count, got {size!r:.30}")
        if view is None:
            raise BadRequest(
                f"{tensor.label} has parameters.binary_data_size but the request has no binary part: send the "
                "Inference-Header-Content-Length header with the length of the JSON part"
            )
        if offset + size > len(view):
            raise BadRequest(
                f"{tensor.label}: binary_data_size {size} from byte {offset} runs past the {len(view)} bytes "
                "of binary data after the JSON part"
            )
        chunks[index] = view[offset : offset + size]
        offset += size
    if view is not None and offset != len(view):
        raise BadRequest(
            f"{len(view) - offset} bytes of binary data after the JSON part belong to no input; give each binary "
            "input its parameters.binary_data_size (and Inference-Header-Content-Length the JSON part's length)"
        )
    return chunks


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


def requested_outputs(doc: dict[str, Any]) -> list[OutputRequest]:
    """The outputs a V2 request asks for, each in JSON or binary form (`parameters.binary_data` per
    output, `parameters.binary_data_output` for all); none named: every output."""
    parameters = doc.get("parameters")
    if parameters is not None and type(parameters) is not dict:
        raise BadRequest(f'"parameters" must be an object, got {describe(parameters)}')
    every_binary = _flag(parameters or {}, "binary_data_output", False, "parameters")
    outputs = doc.get("outputs")
    if outputs is None or outputs == []:
        return tensors.every_output(every_binary)
    if type(outputs) is not list or not all(type(o) is dict and type(o.get("name")) is str for o in outputs):
        raise BadRequest('"outputs" must be a list of {"name": ...} objects')
    chosen = []
    for item in outputs:
        options = item.get("parameters") or {}
        where = f"output {item['name']!r}"
        if type(options) is not dict:
            raise BadRequest(f"{where}: parameters must be an object, got {describe(options)}")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in options:
                raise BadRequest(
                    f"{where}: {unsupported} is not supported here; ask for {PROBABILITIES!r} (every class's "
                    f"probability) or {LABEL!r} (the chosen strategy)"
                )
        chosen.append(tensors.output_request(item["name"], _flag(options, "binary_data", every_binary, where)))
    return chosen


def _flag(options: dict[str, Any], name: str, default: bool, where: str) -> bool:
    value = options.get(name, default)
    if type(value) is not bool:
        raise BadRequest(f"{where}: {name} must be true or false, got {describe(value)}")
    return value


def infer_reply(
    model: ServedModel, model_name: str, probabilities: np.ndarray, outputs: list[OutputRequest], request_id: str
) -> tuple[bytes, int | None]:
    """(body, length of its JSON part) of a V2 inference response; the length is None when every
    output is in the JSON, else binary outputs follow the JSON in order (Inference-Header-Content-Length)."""
    n = probabilities.shape[0]
    best = tensors.best_classes(probabilities)
    described, blobs = [], []
    for wanted in outputs:
        if wanted.kind == PROBABILITIES:
            tensor: dict[str, Any] = {
                "name": wanted.name,
                "shape": [n, model.n_classes],
                "datatype": "FP64",
                "parameters": {"classes": model.classes},
            }
            blob = tensors.probabilities_bytes(probabilities) if wanted.binary else None
            data: Any = None if wanted.binary else probabilities.ravel().tolist()
        else:
            tensor = {"name": wanted.name, "shape": [n], "datatype": "BYTES"}
            blob = tensors.labels_bytes(model.classes, best) if wanted.binary else None
            data = None if wanted.binary else [model.classes[i] for i in best.tolist()]
        if blob is not None:
            tensor.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            tensor["data"] = data
        described.append(tensor)
    head = orjson.dumps(
        {
            "model_name": model_name,
            "model_version": model.version,
            "id": request_id,
            "parameters": {"digest": model.digest, "engine": model.engine},
            "outputs": described,
        }
    )
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


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
