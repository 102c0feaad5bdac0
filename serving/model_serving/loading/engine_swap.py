"""Swap compiled trees in for the C-API predictor, once they exist and the verifier accepts them.

Building the library with gcc takes seconds, so this runs in a background
thread after the server is ready (http.service starts it). The candidate
serves only when `engines.verify.verify` finds it equal to the C-API
predictor serving now; the swap is one reference assignment, so a request
sees either engine, never a mix. No compiler, a model the compiler does not
handle, a failed build (unavailable), any difference (mismatch) or a crash
(error) keeps the C-API predictor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from model_serving.engines.predictor import Predictor, engine_name
from model_serving.engines.verify import TOLERANCE, Verdict, verify
from model_serving.loading.served_model import ServedModel
from model_serving.metrics import Metrics

log = logging.getLogger(__name__)

# (model_text, cache_dir) -> a candidate predictor, or None when there is none to try.
CompileFn = Callable[[str, Path], Predictor | None]


def compile_trees(model_text: str, cache_dir: Path) -> Predictor | None:
    """engines.compiled_trees.compile_trees, imported on first use: starting to serve needs none of gcc's machinery."""
    from model_serving.engines import compiled_trees

    return compiled_trees.compile_trees(model_text, cache_dir)


def try_swap(model: ServedModel, cache_dir: Path, metrics: Metrics, compile_fn: CompileFn = compile_trees) -> str:
    """Compile, verify and swap; returns the outcome (swapped, unavailable, mismatch, error)."""
    outcome, verdict = _attempt(model, cache_dir, compile_fn)
    metrics.engine_swaps.labels(outcome).inc()
    log.info(
        "prediction engine",
        extra={
            "model": model.key,
            "version": model.version,
            "outcome": outcome,
            "engine": model.engine,
            "max_relative_error": verdict.max_relative_error if verdict is not None else None,
        },
    )
    return outcome


def _attempt(model: ServedModel, cache_dir: Path, compile_fn: CompileFn) -> tuple[str, Verdict | None]:
    reference = model.predictor
    try:
        candidate = compile_fn(model.content.model_text, cache_dir)
    except ImportError:
        return "unavailable", None
    except Exception:
        log.exception("compiling the trees failed; keeping the C-API predictor", extra={"model": model.key})
        return "error", None
    if candidate is None:
        return "unavailable", None
    try:
        verdict = verify(reference, candidate, model.content.model_text, model.n_features)
    except Exception:
        log.exception("checking the compiled trees failed; keeping the C-API predictor", extra={"model": model.key})
        return "error", None
    if not verdict.agrees:
        log.error(
            "compiled trees disagree with LightGBM; keeping the C-API predictor",
            extra={
                "model": model.key,
                "candidate": engine_name(candidate),
                "max_relative_error": verdict.max_relative_error,
                "tolerance": TOLERANCE,
            },
        )
        return "mismatch", verdict
    model.predictor = candidate
    return "swapped", verdict
