"""Checks that a set of files makes a servable model version, without unpickling anything."""

from __future__ import annotations

import io
import json
import pickletools
from typing import Any

from model_store.errors import InvalidArtifacts
from model_store.layout import FEATURE_NAMES, LABEL_ENCODER, METADATA, MODEL_NATIVE, MODEL_PICKLE
from model_store.native_model import MalformedModel, check_model_text, native_header

KNOWN_FILES = (MODEL_NATIVE, MODEL_PICKLE, LABEL_ENCODER, FEATURE_NAMES, METADATA)
# Optional extras the seeds mention (e.g. stock_embeddings.pkl) are allowed if listed here.
OPTIONAL_FILES = ("stock_embeddings.pkl",)


MODEL_CLASSES = {
    "lightgbm.sklearn LGBMClassifier",
    "lightgbm.sklearn LGBMModel",
    "lightgbm.basic Booster",
}


def pickled_class(data: bytes) -> str | None:
    """The class of the object a pickle builds, read from its opcodes without running any of them
    ("module name"), or None when the bytes are no pickle or build no object of a class."""
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "SHORT_BINSTRING", "BINSTRING"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                return str(arg)
            elif op.name == "STACK_GLOBAL":
                return " ".join(strings[-2:])
    except (ValueError, EOFError, UnicodeDecodeError):
        return None
    return None


def check_model_loads(files: dict[str, bytes], feature_count: int) -> None:
    """The model file is a LightGBM model: the text model has the structure LightGBM's loader
    needs and takes the declared features (model_store.native_model: no `import lightgbm` in the
    operator); a pickled model builds a LightGBM model class (its opcodes are read, never run: a
    pickle from the bucket executes whatever it names when loaded)."""
    if MODEL_NATIVE in files:
        try:
            check_model_text(files[MODEL_NATIVE].decode("utf-8"), feature_count)
        except (MalformedModel, UnicodeDecodeError) as exc:
            raise InvalidArtifacts(f"{MODEL_NATIVE} does not load as a LightGBM model: {exc}") from None
    else:
        found = pickled_class(files[MODEL_PICKLE])
        if found not in MODEL_CLASSES:
            raise InvalidArtifacts(
                f"{MODEL_PICKLE} is not a pickled LightGBM model (it builds {found or 'no object of a class'}); "
                f"publish {MODEL_NATIVE} (booster.save_model) or a joblib-pickled LGBMClassifier"
            )


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """metadata.json as a JSON object; InvalidArtifacts says what is wrong with it."""
    try:
        metadata = json.loads(raw)
    except ValueError as exc:
        raise InvalidArtifacts(f"{METADATA} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise InvalidArtifacts(f"{METADATA} must be a JSON object")
    return metadata


def check_artifacts(files: dict[str, bytes], version: str) -> dict[str, Any]:
    """Raise InvalidArtifacts naming what to fix; return the parsed metadata."""
    unknown = sorted(set(files) - set(KNOWN_FILES) - set(OPTIONAL_FILES))
    if unknown:
        raise InvalidArtifacts(
            f"unexpected files {unknown}: a version holds {', '.join(KNOWN_FILES)} "
            f"(and optionally {', '.join(OPTIONAL_FILES)})"
        )
    if MODEL_NATIVE not in files and MODEL_PICKLE not in files:
        raise InvalidArtifacts(f"no model: add {MODEL_NATIVE} (LightGBM text, preferred) or {MODEL_PICKLE}")
    for required in (FEATURE_NAMES, METADATA):
        if required not in files:
            raise InvalidArtifacts(f"{required} is missing")

    try:
        names = json.loads(files[FEATURE_NAMES])
    except ValueError as exc:
        raise InvalidArtifacts(f"{FEATURE_NAMES} is not valid JSON: {exc}") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidArtifacts(f"{FEATURE_NAMES} must be a non-empty JSON list of feature names")
    if len(set(names)) != len(names):
        raise InvalidArtifacts(f"{FEATURE_NAMES} lists a feature twice")

    metadata = parse_metadata(files[METADATA])
    if str(metadata.get("version", version)) != version:
        raise InvalidArtifacts(
            f"{METADATA} says version {metadata.get('version')!r} but you are publishing {version!r}"
        )
    classes = metadata.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise InvalidArtifacts(f"{METADATA} 'classes' must be a list of strategy names")
    if classes is None and LABEL_ENCODER not in files:
        raise InvalidArtifacts(f"add {LABEL_ENCODER} or a 'classes' list in {METADATA} to name the strategies")

    if MODEL_NATIVE in files:
        header = native_header(files[MODEL_NATIVE])
        if "tree" not in files[MODEL_NATIVE][:64].decode("utf-8", "replace"):
            raise InvalidArtifacts(f"{MODEL_NATIVE} is not a LightGBM text model")
        model_features = header.get("feature_names", "").split()
        if model_features and model_features != names:
            raise InvalidArtifacts(
                f"{FEATURE_NAMES} does not match the features the model was trained on "
                f"({len(names)} vs {len(model_features)} names, first difference at "
                f"{next((i for i, (a, b) in enumerate(zip(names, model_features, strict=False)) if a != b), 0)})"
            )
        try:
            num_class = int(header.get("num_class", "1"))
        except ValueError:
            raise InvalidArtifacts(f"{MODEL_NATIVE} has num_class={header.get('num_class')!r}, not a number") from None
        if classes is not None and num_class > 1 and len(classes) != num_class:
            raise InvalidArtifacts(f"{METADATA} lists {len(classes)} classes, the model has {num_class}")
    check_model_loads(files, len(names))
    return metadata
