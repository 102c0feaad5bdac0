"""V2 tensors in and out as numpy arrays, whatever carries them: JSON `data`, the binary tensor
extension over HTTP, gRPC `raw_input_contents` or typed `contents`. Pure functions.

One path from declared inputs to feature rows (`rows_from_inputs`): shapes and the row limit are
checked on what the request declares, before any value is decoded, so an oversized request costs
nothing; then each input's values are decoded by the caller's `decode` (a JSON list, or bytes
straight into numpy: no Python object per value). Binary floats can carry NaN, which JSON cannot:
it is refused like JSON's null unless SERVING_NULL_AS_MISSING=1 (then LightGBM reads it as missing).

Outputs: `probabilities` (FP64 [n, classes]) and `strategy` (BYTES [n]); in binary form FP64 is
little-endian row-major and each BYTES element is a 4-byte little-endian length and the UTF-8 text
(the encoding of Triton and KServe).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_serving.errors import BadRequest

# V2 datatype -> the little-endian numpy type of its binary form.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP64": np.dtype("<f8"),
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
}
PROBABILITIES = "probabilities"
LABEL = "strategy"
# Names other V2 servers use for the same outputs, accepted in a request's "outputs".
OUTPUT_ALIASES = {"output-0": PROBABILITIES, "predict_proba": PROBABILITIES, "predict": LABEL, "label": LABEL}
_LIST_LIMIT = 8
ROWS_SETTING = "SERVING_MAX_BATCH_ROWS"


def some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f" (and {len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else "")


@dataclass(frozen=True)
class InputHeader:
    """What a request declares about one input, checked (`header`)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"input {self.name!r}"


def header(name: Any, datatype: Any, shape: Any) -> InputHeader:
    label = f"input {name!r}" if type(name) is str else "an input"
    if type(name) is not str:
        raise BadRequest('every input needs a "name" string')
    if not isinstance(shape, list | tuple) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(f"{label}: shape must be a list of non-negative integers, got {shape!r:.60}")
    if type(datatype) is not str or datatype not in DTYPES:
        raise BadRequest(f"{label}: datatype {datatype!r:.20} is not supported; use one of {', '.join(DTYPES)}")
    return InputHeader(name, datatype, tuple(shape))


def check_rows(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise BadRequest(f"the request has {rows} rows; send at most {max_rows} per request ({ROWS_SETTING})")


# decode(index of the input, its header, values expected) -> flat float64 values
Decode = Callable[[int, InputHeader, int], np.ndarray]


def rows_from_inputs(model: Any, inputs: Sequence[InputHeader], decode: Decode, max_rows: int) -> np.ndarray:
    """Feature rows (n, n_features) from one input of shape [n, n_features] ([n_features] is one row)
    or one input per feature name (shape [n] or [n, 1]), in the model's feature order."""
    names = [i.name for i in inputs]
    width = model.n_features
    if len(inputs) == 1 and names[0] not in model.feature_index:
        tensor = inputs[0]
        shape = tensor.shape
        if len(shape) == 1 and shape[0] == width:
            shape = (1, width)
        if len(shape) != 2 or shape[1] != width:
            raise BadRequest(f"{tensor.label}: shape must be [n, {width}] (rows, features), got {list(tensor.shape)}")
        if shape[0] == 0:
            raise BadRequest(f"{tensor.label}: shape [0, {width}] has no rows to predict")
        check_rows(shape[0], max_rows)
        return decode(0, tensor, shape[0] * width).reshape(shape[0], width)
    if not all(n in model.feature_index for n in names):
        unknown = [str(n) for n in names if n not in model.feature_index]
        raise BadRequest(
            f"send one input of shape [n, {width}] or one input per feature (shape [n]); "
            f"these inputs are not features of the model: {some(unknown)}"
        )
    if len(set(names)) != len(names):
        raise BadRequest("an input name appears twice; send each feature once")
    missing = [n for n in model.feature_names if n not in set(names)]
    if missing:
        raise BadRequest(f"per-feature inputs are missing {len(missing)} feature(s): {some(missing)}")
    for tensor in inputs:
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] == 0:
            raise BadRequest(
                f"{tensor.label}: a per-feature input has shape [n] or [n, 1] with n >= 1, got {list(shape)}"
            )
    lengths = sorted({tensor.shape[0] for tensor in inputs})
    if len(lengths) != 1:
        raise BadRequest(f"per-feature inputs have different row counts {lengths}; send the same n for each")
    check_rows(lengths[0], max_rows)
    columns = {tensor.name: decode(i, tensor, lengths[0]) for i, tensor in enumerate(inputs)}
    return np.column_stack([columns[name] for name in model.feature_names])


def from_bytes(tensor: InputHeader, raw: bytes | memoryview, expected: int, null_as_missing: bool) -> np.ndarray:
    """Flat float64 values from the binary form of `tensor` (little-endian, row-major, no padding)."""
    dtype = DTYPES[tensor.datatype]
    if len(raw) != expected * dtype.itemsize:
        raise BadRequest(
            f"{tensor.label}: {len(raw)} bytes of binary data, but shape {list(tensor.shape)} of "
            f"{tensor.datatype} needs {expected * dtype.itemsize} ({expected} x {dtype.itemsize})"
        )
    values = np.frombuffer(raw, dtype=dtype)
    if values.dtype != np.float64:  # FP64 stays a read-only view of the body: no copy for the engine
        values = values.astype(np.float64)
    if dtype.kind == "f" and not null_as_missing:
        refuse_nan(tensor.label, values)
    return values


def refuse_nan(label: str, values: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):  # inf - inf
        total = np.add.reduce(values, axis=None)
    if not np.isnan(total):
        return  # a NaN anywhere makes the sum NaN (a NaN sum without one, from inf - inf, is checked below)
    nan = np.isnan(values)
    if nan.any():
        position = int(np.flatnonzero(nan)[0])
        raise BadRequest(
            f"{label}: value {position} is NaN; send numbers (SERVING_NULL_AS_MISSING=1 makes NaN a missing value)"
        )


# -- outputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputRequest:
    """One output a request asks for: its name as asked (an alias or ours) and whether in binary."""

    name: str
    binary: bool = False

    @property
    def kind(self) -> str:
        return OUTPUT_ALIASES.get(self.name, self.name)


def output_request(name: str, binary: bool) -> OutputRequest:
    wanted = OutputRequest(name, binary)
    if wanted.kind not in (PROBABILITIES, LABEL):
        raise BadRequest(f"unknown output {name!r}; this model returns {PROBABILITIES!r} and {LABEL!r}")
    return wanted


def every_output(binary: bool) -> list[OutputRequest]:
    return [OutputRequest(PROBABILITIES, binary), OutputRequest(LABEL, binary)]


def best_classes(probabilities: np.ndarray) -> np.ndarray:
    return probabilities.argmax(axis=1)


def labels_bytes(classes: Sequence[str], best: np.ndarray) -> bytes:
    """The BYTES tensor of each row's strategy in binary form (4-byte little-endian length, UTF-8)."""
    encoded = [struct.pack("<I", len(b)) + b for b in (c.encode() for c in classes)]
    return b"".join([encoded[i] for i in best.tolist()])


def probabilities_bytes(probabilities: np.ndarray) -> bytes:
    return np.ascontiguousarray(probabilities, dtype="<f8").tobytes()


def count_guard(body: bytes, width: int, max_rows: int) -> None:
    """Refuse, before parsing, a JSON body that holds more values than SERVING_MAX_BATCH_ROWS rows can.

    Every number in a JSON array or object but the last is followed by a comma, so the commas
    bound the values from above (with slack for the envelope). A parse builds a Python object per
    value (~32 bytes for a float), so this keeps a large SERVING_MAX_BODY_BYTES from being a
    memory hazard: what is parsed is bounded by the row limit, not by the body size.
    """
    budget = max_rows * (width + 2) + 4096
    if len(body) > budget and body.count(b",") > budget:
        approx = body.count(b",") // max(width + 1, 1)
        raise BadRequest(
            f"the body holds about {approx:,} rows of {width} features; send at most {max_rows} rows per "
            f"request ({ROWS_SETTING})"
        )
