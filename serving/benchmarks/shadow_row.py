"""What a shadow challenger adds to one single-row request, in process, in microseconds.

`ServedModel.score(row)` (the call every API path makes) on the champion alone, then with a
challenger attached (loading.shadow.Shadow: score the challenger, compare, count), both on
compiled trees when gcc is there (else LightGBM's C API). Best of several repeats, rotating
over different rows, like single_row.py: the least disturbed figure of a shared machine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from single_row import best_us_per_call


def _served(files: dict[str, bytes], version: str, cache: Path) -> object:
    from model_serving.engines.compiled_trees import compile_trees
    from model_serving.engines.lgbm_capi import CApiPredictor
    from model_serving.loading.model_files import read_content
    from model_serving.loading.served_model import ServedModel
    from model_store.layout import ModelLocation
    from model_store.manifest import Manifest

    manifest = Manifest.build("etfs/SPY", version, files, created="2026-01-01T00:00:00Z")
    content = read_content(manifest, files.__getitem__)
    compiled = compile_trees(content.model_text, cache / version)
    predictor = compiled if compiled is not None else CApiPredictor(content.model_text)
    location = ModelLocation.of("SPY", "etf")
    return ServedModel(location, version, manifest.digest, "etfs/SPY/production/", "production", "disk", content,
                       predictor)  # fmt: skip


def measure(
    champion_files: dict[str, bytes], challenger_files: dict[str, bytes], calls: int = 2000, repeats: int = 7
) -> dict[str, Any]:
    from model_serving.loading.shadow import Shadow
    from model_serving.metrics import Metrics

    with tempfile.TemporaryDirectory(prefix="shadow-row-") as folder:
        champion: Any = _served(champion_files, "v1.0", Path(folder))
        challenger: Any = _served(challenger_files, "v1.1", Path(folder))
        rows = np.random.default_rng(5).normal(size=(1000, champion.n_features))
        singles = [rows[i : i + 1] for i in range(len(rows))]
        alone = best_us_per_call(lambda i: champion.score(singles[i % 1000]), calls, repeats)
        champion.shadow = Shadow(champion, challenger, 1.0, 1.0, Metrics())
        shadowed = best_us_per_call(lambda i: champion.score(singles[i % 1000]), calls, repeats)
    return {
        "engine": champion.engine,
        "score_us": round(alone, 2),
        "score_with_shadow_us": round(shadowed, 2),
        "overhead_us": round(shadowed - alone, 2),
    }
