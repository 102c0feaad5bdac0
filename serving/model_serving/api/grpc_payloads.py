"""V2 gRPC messages in, feature rows out; predictions in, messages out. Pure functions over the
generated `open_inference_pb2` types, sharing the tensor rules of the HTTP side (tensors.py).

Inputs come as `raw_input_contents` (one bytes entry per input, little-endian, what tritonclient
sends) or as typed `contents` (fp64_contents...); a reply answers in kind: raw outputs for a raw
request, typed contents otherwise. `probabilities` carries its class names, comma-separated, in
the output's `classes` parameter (a parameter holds no list).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_serving.api import tensors
from model_serving.api.tensors import LABEL, PROBABILITIES, InputHeader, OutputRequest
from model_serving.api.v2_grpc import open_inference_pb2 as pb
from model_serving.errors import BadRequest
from model_serving.loading.served_model import ServedModel

# datatype -> the typed field of InferTensorContents that carries it (FP16 has none: raw only)
_TYPED_FIELDS = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents", "INT32": "int_contents"}


def infer_rows(
    model: ServedModel, request: pb.ModelInferRequest, null_as_missing: bool, max_rows: int
) -> tuple[np.ndarray, list[OutputRequest]]:
    """(rows, requested outputs) of a ModelInferRequest; outputs are raw when the inputs were."""
    if not request.inputs:
        raise BadRequest("inputs is empty: send one tensor of shape [n, features] or one per feature")
    headers = [tensors.header(i.name, i.datatype, list(i.shape)) for i in request.inputs]
    raw = request.raw_input_contents
    if raw:
        if len(raw) != len(request.inputs):
            raise BadRequest(
                f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input, "
                "in the order of inputs"
            )
        typed = [h.label for h, i in zip(headers, request.inputs, strict=True) if i.HasField("contents")]
        if typed:
            raise BadRequest(f"{typed[0]}: send its values in contents or in raw_input_contents, not both")
    outputs = _requested_outputs(request, raw=bool(raw))

    def decode(index: int, tensor: InputHeader, expected: int) -> np.ndarray:
        if raw:
            return tensors.from_bytes(tensor, raw[index], expected, null_as_missing)
        return _typed_values(tensor, request.inputs[index].contents, expected, null_as_missing)

    return tensors.rows_from_inputs(model, headers, decode, max_rows), outputs


def _typed_values(tensor: InputHeader, contents: pb.InferTensorContents, expected: int, null_ok: bool) -> np.ndarray:
    field = _TYPED_FIELDS.get(tensor.datatype)
    if field is None:
        raise BadRequest(
            f"{tensor.label}: {tensor.datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(contents, field)
    if len(values) != expected:
        raise BadRequest(
            f"{tensor.label}: contents.{field} has {len(values)} values but shape {list(tensor.shape)} needs {expected}"
        )
    array = np.array(values, dtype=tensors.DTYPES[tensor.datatype]).astype(np.float64)
    if not null_ok and tensor.datatype.startswith("FP"):
        tensors.refuse_nan(tensor.label, array)
    return array


def _requested_outputs(request: pb.ModelInferRequest, raw: bool) -> list[OutputRequest]:
    if not request.outputs:
        return tensors.every_output(raw)
    chosen = []
    for output in request.outputs:
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in output.parameters:
                raise BadRequest(
                    f"output {output.name!r}: {unsupported} is not supported here; ask for {PROBABILITIES!r} "
                    f"(every class's probability) or {LABEL!r} (the chosen strategy)"
                )
        chosen.append(tensors.output_request(output.name, raw))
    return chosen


def infer_response(
    model: ServedModel,
    request: pb.ModelInferRequest,
    probabilities: np.ndarray,
    outputs: list[OutputRequest],
) -> pb.ModelInferResponse:
    n = probabilities.shape[0]
    best = tensors.best_classes(probabilities)
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=model.version, id=request.id)
    response.parameters["digest"].string_param = model.digest
    response.parameters["engine"].string_param = model.engine
    for wanted in outputs:
        if wanted.kind == PROBABILITIES:
            tensor = response.outputs.add(name=wanted.name, datatype="FP64", shape=[n, model.n_classes])
            tensor.parameters["classes"].string_param = ",".join(model.classes)
            if wanted.binary:
                response.raw_output_contents.append(tensors.probabilities_bytes(probabilities))
            else:
                tensor.contents.fp64_contents.extend(probabilities.ravel().tolist())
        else:
            tensor = response.outputs.add(name=wanted.name, datatype="BYTES", shape=[n])
            if wanted.binary:
                response.raw_output_contents.append(tensors.labels_bytes(model.classes, best))
            else:
                tensor.contents.bytes_contents.extend([model.classes[i].encode() for i in best.tolist()])
    return response


def model_metadata(document: dict[str, Any]) -> pb.ModelMetadataResponse:
    """The gRPC form of payloads.model_metadata's document (its parameters have no place in it)."""
    return pb.ModelMetadataResponse(
        name=document["name"],
        versions=document["versions"],
        platform=document["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in document["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in document["outputs"]],
    )
