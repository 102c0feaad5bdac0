"""Pickled model files -> LightGBM's native text model and a JSON list of labels, on the publisher's machine.

Serving pods never unpickle anything: a pickle runs whatever code it names when loaded, and the
manifest's digest only proves the bytes are the ones published, not that they are safe. The
publisher, who produced the pickle, is the one place where loading it is an informed choice, so
`tmctl publish` converts here and uploads only text and JSON:

    lightgbm_model.pkl (a joblib-pickled LGBMClassifier or Booster) -> lightgbm_model.txt
    label_encoder.pkl  (a joblib-pickled LabelEncoder)            -> "classes" in metadata.json

A model pickle is unpickled only if its opcodes build a LightGBM model class (read without running
them, artifacts.pickled_class); a label encoder only if they build a scikit-learn LabelEncoder.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from model_store.artifacts import MODEL_CLASSES, parse_metadata, pickled_class
from model_store.errors import InvalidArtifacts
from model_store.layout import LABEL_ENCODER, METADATA, MODEL_NATIVE, MODEL_PICKLE

ENCODER_CLASSES = {"sklearn.preprocessing._label LabelEncoder", "sklearn.preprocessing.label LabelEncoder"}


@dataclass
class Converted:
    files: dict[str, bytes]
    warnings: list[str] = field(default_factory=list)


def convert_pickles(files: dict[str, bytes]) -> Converted:
    """The same version with its pickled model and label encoder replaced by text and JSON.

    Files without pickles come back unchanged (same bytes, so the digest does not change)."""
    out = dict(files)
    warnings: list[str] = []
    classifier: Any = None
    if MODEL_PICKLE in out:
        pickled = out.pop(MODEL_PICKLE)
        if MODEL_NATIVE in out:
            warnings.append(f"{MODEL_PICKLE} is not uploaded: {MODEL_NATIVE} is the model (pods never unpickle)")
        else:
            classifier = _unpickle(pickled, MODEL_PICKLE, MODEL_CLASSES)
            booster = getattr(classifier, "booster_", classifier)
            if not hasattr(booster, "model_to_string"):
                raise InvalidArtifacts(f"{MODEL_PICKLE} holds a {type(classifier).__name__}, not a LightGBM model")
            out[MODEL_NATIVE] = str(booster.model_to_string()).encode()
            warnings.append(
                f"{MODEL_PICKLE} was unpickled on this machine and is published as LightGBM's text model "
                f"{MODEL_NATIVE} (serving pods never unpickle); unpickling runs any code a pickle names: "
                "only publish pickles you produced"
            )
    classes: list[str] | None = None
    if LABEL_ENCODER in out:
        encoder = _unpickle(out.pop(LABEL_ENCODER), LABEL_ENCODER, ENCODER_CLASSES)
        if not hasattr(encoder, "classes_"):
            raise InvalidArtifacts(f"{LABEL_ENCODER} holds a {type(encoder).__name__}, not a LabelEncoder")
        classes = [str(c) for c in encoder.classes_]
        warnings.append(
            f"{LABEL_ENCODER} was unpickled on this machine and is published as the 'classes' list of {METADATA} "
            "(serving pods never unpickle)"
        )
    elif classifier is not None and getattr(classifier, "classes_", None) is not None:
        own = [c for c in classifier.classes_]
        if all(isinstance(c, str) for c in own):
            classes = [str(c) for c in own]
    if classes is not None and METADATA in out:
        metadata = parse_metadata(out[METADATA])
        listed = metadata.get("classes")
        if listed is None:
            metadata["classes"] = classes
            out[METADATA] = json.dumps(metadata, indent=2).encode()
        elif listed != classes:
            raise InvalidArtifacts(
                f"{METADATA} lists classes {listed} but {LABEL_ENCODER} holds {classes}: fix one of them"
            )
    return Converted(out, warnings)


def _unpickle(data: bytes, name: str, allowed: set[str]) -> Any:
    found = pickled_class(data)
    if found not in allowed:
        raise InvalidArtifacts(
            f"{name} is not what it should be (it builds {found or 'no object of a class'}); it was not unpickled"
        )
    import joblib

    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise InvalidArtifacts(f"{name} cannot be unpickled here: {exc!r}") from None


def check_loads_in_lightgbm(files: dict[str, bytes]) -> None:
    """The stronger check on the publisher's machine: the text model loads in LightGBM itself, when
    it is installed (the operator checks the text's structure only: model_store.native_model)."""
    if MODEL_NATIVE not in files:
        return
    try:
        import lightgbm
    except ImportError:
        return
    try:
        lightgbm.Booster(model_str=files[MODEL_NATIVE].decode("utf-8"))
    except (lightgbm.basic.LightGBMError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArtifacts(f"{MODEL_NATIVE} does not load as a LightGBM model: {exc}") from None
