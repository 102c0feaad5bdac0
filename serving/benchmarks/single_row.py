"""Single-row prediction cost of each engine, in microseconds per call.

    python serving/benchmarks/single_row.py [--rounds 100] [--calls 2000] [--json out.json]

Engines, all on the same model and the same rows:
  booster.predict        lightgbm.Booster.predict(row[None, :]) (the Python package)
  capi.fast              LGBM_BoosterPredictForMatSingleRowFast through ctypes, arguments prebuilt
  capi.predict_proba     model_serving.engines.lgbm_capi.CApiPredictor.predict_proba (what the server calls)
  compiled.session       compiled_trees RowSession.run() (fill `row`, call; no allocation)
  compiled.row_into      CompiledPredictor.predict_row_into(row, out)
  compiled.predict_proba CompiledPredictor.predict_proba(row[None, :])

Each figure is the best of several repeats of `calls` calls (the machine is
shared; the best repeat is the least disturbed one), rotating through 1000
different rows so branch predictors cannot learn one row; "same row" repeats
one row, the optimistic case.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the checkout: devstack (the demo model)


def best_us_per_call(call: Callable[[int], object], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(calls):
            call(i)
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def _capi_fast(model_text: str, out: np.ndarray) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A bare LGBM_BoosterPredictForMatSingleRowFast call on prebuilt arguments, writing to `out`."""
    from model_serving.engines import lgbm_capi

    lib = lgbm_capi.library()
    handle, fast, iterations = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_int()
    lib.LGBM_BoosterLoadModelFromString(model_text.encode(), ctypes.byref(iterations), ctypes.byref(handle))
    features = ctypes.c_int()
    lib.LGBM_BoosterGetNumFeature(handle, ctypes.byref(features))
    status = lib.LGBM_BoosterPredictForMatSingleRowFastInit(
        handle, 0, 0, -1, 1, features.value, b"num_threads=1", ctypes.byref(fast)
    )
    if status != 0:
        raise RuntimeError(lib.LGBM_GetLastError().decode())
    out_len = ctypes.c_int64()
    by_ref = ctypes.byref(out_len)
    out_pointer = out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
    fn = lib.LGBM_BoosterPredictForMatSingleRowFast

    def call(row_address: int) -> None:
        fn(fast, row_address, by_ref, out_pointer)

    def close() -> None:
        lib.LGBM_FastConfigFree(fast)
        lib.LGBM_BoosterFree(handle)

    return call, close


def measure(model_text: str, calls: int = 2000, repeats: int = 7, progress: Callable[[str], None] = print) -> dict:
    """{engine: {"rotating_us": .., "same_row_us": ..}} plus build facts of the compiled engine."""
    from model_serving.engines.compiled_trees import CompiledPredictor, compile_trees
    from model_serving.engines.lgbm_capi import CApiPredictor
    from model_serving.engines.verify import verify

    capi = CApiPredictor(model_text)
    rng = np.random.default_rng(11)
    rows = rng.normal(size=(1000, capi.n_features))
    rows[rng.random(rows.shape) < 0.03] = np.nan
    results: dict[str, dict[str, float]] = {}

    def record(name: str, make: Callable[[Callable[[int], int]], Callable[[int], object]]) -> None:
        progress(f"single-row: timing {name}")
        results[name] = {
            "rotating_us": round(best_us_per_call(make(lambda i: i % len(rows)), calls, repeats), 2),
            "same_row_us": round(best_us_per_call(make(lambda i: 0), calls, repeats), 2),
        }

    out = np.empty(capi.n_classes)
    row_addresses = [rows[i].ctypes.data for i in range(len(rows))]  # rows is C-contiguous
    fast, close_fast = _capi_fast(model_text, out)
    record("capi.fast", lambda pick: lambda i: fast(row_addresses[pick(i)]))
    close_fast()
    record("capi.predict_proba", lambda pick: lambda i: capi.predict_proba(rows[pick(i) : pick(i) + 1]))

    with tempfile.TemporaryDirectory() as tmp:

        def compile_and_verify() -> CompiledPredictor | None:
            """What the server does in the background: build (or load from the cache), then verify."""
            compiled = compile_trees(model_text, Path(tmp))
            if compiled is None:
                return None
            verdict = verify(capi, compiled, model_text, capi.n_features)
            if not verdict.agrees:
                progress(f"single-row: compiled trees differ from LightGBM by {verdict.max_relative_error:.3g}")
                return None
            return compiled

        started = time.perf_counter()
        compiled = compile_and_verify()
        first_seconds = time.perf_counter() - started
        if compiled is None:
            progress("single-row: compiled trees unavailable (see the log line above)")
        else:
            started = time.perf_counter()
            compile_and_verify()
            cached_seconds = time.perf_counter() - started
            session = compiled.row_session()

            def session_call(index: int) -> object:
                session.row[:] = rows[index]
                return session.run()

            record("compiled.session", lambda pick: lambda i: session_call(pick(i)))
            record("compiled.row_into", lambda pick: lambda i: compiled.predict_row_into(rows[pick(i)], out))
            record("compiled.predict_proba", lambda pick: lambda i: compiled.predict_proba(rows[pick(i) : pick(i) + 1]))
            results["compiled.build"] = {
                "layout": compiled.layout,
                "first_try_compile_seconds": round(first_seconds, 2),
                "cached_try_compile_seconds": round(cached_seconds, 2),
            }

    progress("single-row: importing lightgbm for Booster.predict")
    import lightgbm

    booster = lightgbm.Booster(model_str=model_text)
    record("booster.predict", lambda pick: lambda i: booster.predict(rows[pick(i) : pick(i) + 1]))
    capi.close()
    return results


def format_table(results: dict) -> str:
    lines = [f"{'engine':26} {'rotating rows us':>17} {'same row us':>12}"]
    for name, figures in results.items():
        if "rotating_us" in figures:
            lines.append(f"{name:26} {figures['rotating_us']:17.2f} {figures['same_row_us']:12.2f}")
    build = results.get("compiled.build")
    if build:
        lines.append(
            f"compiled layout {build['layout']}: compile_trees + verify {build['first_try_compile_seconds']} s "
            f"(gcc + check), {build['cached_try_compile_seconds']} s from the disk cache"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds of the demo model (default 100)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat (default 2000)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats; the best is reported (default 7)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from devstack.demo_model import train_demo_model

    print(f"training the demo model ({args.rounds} rounds, 10 classes, 84 features)", flush=True)
    text = train_demo_model(rounds=args.rounds).files["lightgbm_model.txt"].decode()
    results = measure(text, args.calls, args.repeats, progress=lambda m: print(m, flush=True))
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
