"""Swap compiled trees in for the C-API predictor, once they exist and agree with it.

`model_serving.engines.compiled_trees.try_compile(model_text, cache_dir)` (a separate
module) builds a shared library with gcc, which takes seconds: this runs in a
background thread after the server is ready. The swap is one reference
assignment, so a request sees either engine, never a mix. An ImportError or
None keeps the C-API predictor, and so does any difference in outputs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model_serving.engines.predictor import Predictor, engine_name, probe_rows, same_outputs
from model_serving.loading.served_model import ServedModel
from model_serving.metrics import Metrics

log = logging.getLogger(__name__)

Reference = Callable[[np.ndarray], np.ndarray]
# (model_text, cache_dir, reference) -> predictor or None; reference is the C-API predictor's
# predict_proba, so the compiler's own self-check need not load the model a second time.
CompileFn = Callable[[str, Path, Reference], Predictor | None]


def default_compiler() -> CompileFn | None:
    try:
        module = importlib.import_module("model_serving.engines.compiled_trees")
    except ImportError:
        return None
    try_compile = getattr(module, "try_compile", None)
    if try_compile is None:
        return None
    if "reference" in inspect.signature(try_compile).parameters:
        return lambda text, cache_dir, reference: try_compile(text, cache_dir, reference=reference)
    return lambda text, cache_dir, _reference: try_compile(text, cache_dir)


def try_swap(model: ServedModel, cache_dir: Path, metrics: Metrics, compile_fn: CompileFn | None = None) -> str:
    """Compile, check and swap; returns the outcome (swapped, unavailable, mismatch, error)."""
    outcome = _attempt(model, cache_dir, compile_fn if compile_fn is not None else default_compiler())
    metrics.engine_swaps.labels(outcome).inc()
    log.info(
        "prediction engine",
        extra={"model": model.key, "version": model.version, "outcome": outcome, "engine": model.engine},
    )
    return outcome


def _attempt(model: ServedModel, cache_dir: Path, compile_fn: CompileFn | None) -> str:
    if compile_fn is None:
        return "unavailable"
    reference = model.predictor
    try:
        candidate = compile_fn(model.content.model_text, cache_dir, reference.predict_proba)
    except ImportError:
        return "unavailable"
    except Exception:
        log.exception("compiling the trees failed; keeping the C-API predictor", extra={"model": model.key})
        return "error"
    if candidate is None:
        return "unavailable"
    try:
        rows = probe_rows(model.content.model_text, model.n_features)
        equal = same_outputs(reference, candidate, rows)
    except Exception:
        log.exception("checking the compiled trees failed; keeping the C-API predictor", extra={"model": model.key})
        return "error"
    if not equal:
        log.error(
            "compiled trees disagree with LightGBM; keeping the C-API predictor",
            extra={"model": model.key, "candidate": engine_name(candidate)},
        )
        return "mismatch"
    model.predictor = candidate
    return "swapped"
