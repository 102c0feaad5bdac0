"""What a verified version folder says: model text, feature order, strategy names.

`read_content` asks `fetch(name)` for each file it needs; fetch returns bytes
that were already checked against the manifest. Only text and JSON are read:
nothing is ever unpickled here (a pickle runs whatever code it names when
loaded, and the manifest only proves the bytes are the published ones). A
version published as pickles only is refused with a message saying to publish
it again: `tmctl publish` converts pickles on the publisher's machine
(model_store.convert).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_store.layout import FEATURE_NAMES, LABEL_ENCODER, METADATA, MODEL_NATIVE, MODEL_PICKLE
from model_store.manifest import Manifest
from model_store.native_model import native_header

_GENERIC_NAME = re.compile(r"^Column_\d+$")


class InvalidModel(ValueError):
    """Verified files that still do not make a servable model (the message says which and why)."""


@dataclass(frozen=True)
class ModelContent:
    model_text: str
    feature_names: list[str]  # in the column order the trees expect
    classes: list[str]  # strategy name of each probability column
    model_file: str  # which file the trees came from
    metadata: dict[str, Any] = field(default_factory=dict)


def files_needed(manifest: Manifest) -> list[str]:
    """The files read_content will ask for (text and JSON only)."""
    return [name for name in (MODEL_NATIVE, METADATA, FEATURE_NAMES) if name in manifest.files]


def _publish_again(where: str, what: str) -> InvalidModel:
    return InvalidModel(
        f"{where} {what}: serving pods never unpickle (a pickle runs whatever code it names); "
        f"publish it again with `tmctl publish`, which converts {MODEL_PICKLE} to {MODEL_NATIVE} and "
        f"{LABEL_ENCODER} to a 'classes' list in {METADATA} on the publisher's machine"
    )


def read_content(manifest: Manifest, fetch: Callable[[str], bytes]) -> ModelContent:
    listed = manifest.files
    where = f"{manifest.model} {manifest.version}"
    if MODEL_NATIVE not in listed:
        if MODEL_PICKLE in listed:
            raise _publish_again(where, f"has only a pickled model ({MODEL_PICKLE})")
        raise InvalidModel(f"{where} has no {MODEL_NATIVE} in its manifest")
    model_file = MODEL_NATIVE
    try:
        text = fetch(MODEL_NATIVE).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidModel(f"{MODEL_NATIVE} of {where} is not UTF-8 text") from None

    metadata = _json(fetch(METADATA), METADATA, where) if METADATA in listed else {}
    if not isinstance(metadata, dict):
        raise InvalidModel(f"{METADATA} of {where} is not a JSON object")
    header = native_header(text.encode())
    names = feature_order(
        _json(fetch(FEATURE_NAMES), FEATURE_NAMES, where) if FEATURE_NAMES in listed else None,
        header.get("feature_names", "").split(),
        where,
    )
    classes = _classes(metadata, listed, where)
    return ModelContent(text, names, classes, model_file, metadata)


def feature_order(listed: Any, in_model: list[str], where: str) -> list[str]:
    """The column order to feed the trees.

    feature_names.json is the published order. When the model text carries
    real names too, they must be the same set; LightGBM reads columns by
    position, so the model's own order wins if the two orders differ.
    """
    model_has_names = bool(in_model) and not all(_GENERIC_NAME.match(n) for n in in_model)
    if listed is None:
        if not model_has_names:
            raise InvalidModel(f"{where}: no {FEATURE_NAMES} and the model names no features")
        return list(in_model)
    if not isinstance(listed, list) or not listed or not all(isinstance(n, str) and n for n in listed):
        raise InvalidModel(f"{FEATURE_NAMES} of {where} must be a non-empty list of names")
    if len(set(listed)) != len(listed):
        raise InvalidModel(f"{FEATURE_NAMES} of {where} lists a feature twice")
    if in_model and len(in_model) != len(listed):
        raise InvalidModel(f"{FEATURE_NAMES} of {where} lists {len(listed)} features, the model has {len(in_model)}")
    if not model_has_names or in_model == listed:
        return list(listed)
    if set(in_model) != set(listed):
        only_file = sorted(set(listed) - set(in_model))[:5]
        only_model = sorted(set(in_model) - set(listed))[:5]
        raise InvalidModel(
            f"{FEATURE_NAMES} of {where} does not name the model's features "
            f"(only in the file: {only_file}, only in the model: {only_model})"
        )
    return list(in_model)


def _classes(metadata: dict[str, Any], listed: dict[str, Any], where: str) -> list[str]:
    classes = metadata.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise InvalidModel(f"'classes' in {METADATA} of {where} must be a list of strategy names")
        return list(classes)
    if LABEL_ENCODER in listed:
        raise _publish_again(where, f"names its strategies only in a pickle ({LABEL_ENCODER})")
    raise InvalidModel(f"{where} names no strategies: add a 'classes' list to {METADATA}")


def _json(raw: bytes, name: str, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidModel(f"{name} of {where} is not valid JSON: {exc}") from None
