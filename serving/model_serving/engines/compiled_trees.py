"""Compile a LightGBM text model to a native library and predict through it.

    predictor = try_compile(model_text, cache_dir)      # None: keep LightGBM's C API
    probs = predictor.predict_proba(rows)               # (n, n_features) -> (n, n_outputs)
    session = predictor.row_session()                   # one per thread: fastest single row
    session.row[:] = features; probs = session.run()    # a view of session.out

`try_compile` parses the model (lgbm_text), generates C (tree_codegen), builds
a shared library with gcc, caches it in `cache_dir` under the sha256 of the
model text and the generator version (written atomically, so a restart loads
it without gcc), loads it with ctypes and compares it with LightGBM's own
predictions on a few hundred awkward rows (NaN, zeros, tiny values, values
exactly on thresholds and one ulp either side). It returns None, after one log
line saying why, when the model uses something not compiled (categorical
splits, linear trees, other objectives), when there is no compiler, when the
build fails, or when any output differs from LightGBM's by more than 1e-12
relative. Safe to call from a background thread; the C functions release the GIL.

n_outputs is the number of classes, and 2 for a binary model ([1 - p, p]).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from model_serving.engines.codegen.generate import (
    GENERATOR_VERSION,
    PREDICT_PROBA,
    PREDICT_PROBA_BATCH,
    choose_layout,
    generate_sources,
)
from model_serving.engines.lgbm_text import Forest, Unsupported, parse_model_text
from model_serving.engines.verify import RELATIVE_TOLERANCE, Reference, default_reference, self_check

log = logging.getLogger(__name__)

ENGINE = "compiled"
COMPILE_TIMEOUT_SECONDS = 900.0
STALE_BUILD_SECONDS = 2 * COMPILE_TIMEOUT_SECONDS
_BUILD_PREFIX = ".build-"

# Measured on the demo model: -O2 for the table-driven layout (compiles in <1 s);
# -O1 for nested if/else, whose 1000 trees compile ~30% faster than -O2 and run no slower.
# No -march=native: a cached library may be read by a node with another CPU.
_FLAGS = {
    "quickscorer": ("-O2",),
    "nested": ("-O1",),
}
_COMMON_FLAGS = ("-std=gnu11", "-fPIC", "-ffp-contract=off", "-fno-fast-math")


class BuildError(RuntimeError):
    """gcc failed or timed out; the message carries the tail of its output."""


# ----------------------------------------------------------------------------- public API


def try_compile(
    model_text: str,
    cache_dir: Path,
    *,
    compiler: str | None = None,
    reference: Reference | None = None,
) -> CompiledPredictor | None:
    """A verified compiled predictor for `model_text`, or None (logged) to keep LightGBM's.

    compiler: the C compiler (default $CC or gcc); only needed when the cache has no library.
    reference: rows -> LightGBM probabilities (n, n_outputs); default a lightgbm.Booster
    loaded from `model_text` (LightGBM's C API). Pass the caller's own LightGBM predictor to skip
    loading the model twice.
    """
    started = time.perf_counter()
    try:
        forest = parse_model_text(model_text)
    except (Unsupported, KeyError, ValueError) as exc:
        _skipped("unsupported", str(exc), logging.INFO)
        return None
    cache_dir = Path(cache_dir)
    so_path = cache_dir / library_name(model_text)
    origin = "disk"
    try:
        lib = _load_cached(so_path)
        if lib is None:
            origin = "built"
            cc = shutil.which(compiler or os.environ.get("CC") or "gcc")
            if cc is None:
                wanted = compiler or os.environ.get("CC") or "gcc"
                _skipped("no_compiler", f"{wanted} not found on PATH; install gcc to compile", logging.INFO)
                return None
            build_library(forest, so_path, cc)
            lib = ctypes.CDLL(str(so_path))
    except (BuildError, OSError) as exc:
        _skipped("build_failed", str(exc))
        return None

    predictor = CompiledPredictor(lib, forest, so_path, origin)
    try:
        worst = self_check(predictor, forest, reference or default_reference(model_text))
    except Exception as exc:  # the check must never take the server down with it
        _skipped("check_failed", repr(exc))
        return None
    if not worst <= RELATIVE_TOLERANCE:
        _skipped("mismatch", f"max relative error {worst:.3g} > {RELATIVE_TOLERANCE:g} ({so_path})")
        return None
    predictor.max_relative_error = worst
    log.info(
        "compiled trees ready",
        extra={
            "origin": origin,
            "layout": predictor.layout,
            "trees": len(forest.trees),
            "seconds": round(time.perf_counter() - started, 3),
            "max_relative_error": worst,
            "library": str(so_path),
        },
    )
    return predictor


def _skipped(reason: str, detail: str, level: int = logging.WARNING) -> None:
    log.log(level, "compiled trees not used, keeping LightGBM", extra={"reason": reason, "detail": detail})


class CompiledPredictor:
    """Predictions from the compiled library. Thread-safe except for RowSession objects."""

    engine = ENGINE

    def __init__(self, lib: ctypes.CDLL, forest: Forest, so_path: Path, origin: str) -> None:
        self.num_features = forest.num_features
        self.num_outputs = forest.num_outputs
        self.layout = choose_layout(forest)
        self.so_path = so_path
        self.origin = origin  # "built" now, or "disk" (cache hit, no compiler run)
        self.max_relative_error = float("nan")  # filled in by the self-check
        self._lib = lib  # keeps the library mapped while the functions are referenced
        self._row_fn = getattr(lib, PREDICT_PROBA)
        self._row_fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._row_fn.restype = None
        self._batch_fn = getattr(lib, PREDICT_PROBA_BATCH)
        self._batch_fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        self._batch_fn.restype = None

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """rows (n, n_features) or one row (n_features,) -> float64 (n, n_outputs)."""
        data = np.ascontiguousarray(rows, dtype=np.float64)
        if data.ndim == 1:
            data = data.reshape(1, -1)
        if data.ndim != 2 or data.shape[1] != self.num_features:
            raise ValueError(f"expected rows of {self.num_features} features, got shape {np.shape(rows)}")
        out = np.empty((data.shape[0], self.num_outputs), dtype=np.float64)
        if data.shape[0]:
            self._batch_fn(_address(data), data.shape[0], _address(out))
        return out

    def predict_row_into(self, row: np.ndarray, out: np.ndarray) -> None:
        """Write one row's probabilities into `out`: both C-contiguous float64, no allocation.

        Costs ~1-2 us more than RowSession.run() (argument checks and address lookups).
        """
        for name, array, size in (("row", row, self.num_features), ("out", out, self.num_outputs)):
            if array.dtype != np.float64 or array.shape != (size,) or not array.flags.c_contiguous:
                raise ValueError(f"{name} must be a C-contiguous float64 array of shape ({size},)")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        self._row_fn(_address(row), _address(out))

    def row_session(self) -> RowSession:
        return RowSession(self)


def _address(array: np.ndarray) -> int:
    """Address of a C-contiguous array's data; ~3x cheaper than `array.ctypes.data` when writable."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError, BufferError):  # read-only or empty: the slower, general way
        return int(array.ctypes.data)


class RowSession:
    """Preallocated buffers bound to the library: fill `row`, call run(), read the result.

    The fastest single-row path (no argument conversion, no allocation). Not
    thread-safe: give each thread (or each event loop) its own session.
    """

    def __init__(self, predictor: CompiledPredictor) -> None:
        self.row = np.zeros(predictor.num_features, dtype=np.float64)
        self.out = np.zeros(predictor.num_outputs, dtype=np.float64)
        self._predictor = predictor  # keeps the library alive
        self._fn = predictor._row_fn
        self._args = (ctypes.c_void_p(self.row.ctypes.data), ctypes.c_void_p(self.out.ctypes.data))

    def run(self) -> np.ndarray:
        """Probabilities of `self.row`; returns `self.out` (overwritten by the next run)."""
        self._fn(*self._args)
        return self.out


# ----------------------------------------------------------------------------- build and cache


def library_name(model_text: str) -> str:
    """Cache file name: model text, generator version, flags and machine all change it."""
    key = hashlib.sha256()
    for part in (GENERATOR_VERSION, repr(sorted(_FLAGS.items())), repr(_COMMON_FLAGS), platform.machine()):
        key.update(part.encode() + b"\0")
    key.update(model_text.encode())
    return f"lgbm-compiled-{key.hexdigest()[:40]}.so"


def _load_cached(so_path: Path) -> ctypes.CDLL | None:
    if not so_path.is_file():
        return None
    try:
        return ctypes.CDLL(str(so_path))
    except OSError as exc:
        # A library we cannot map (foreign architecture, damaged disk) is rebuilt, not trusted.
        log.warning("cached compiled trees unusable, rebuilding", extra={"library": str(so_path), "detail": str(exc)})
        so_path.unlink(missing_ok=True)
        return None


def build_library(forest: Forest, so_path: Path, cc: str) -> float:
    """Generate, compile (translation units in parallel) and atomically place the library."""
    started = time.perf_counter()
    sources = generate_sources(forest, parts=_usable_cpus())
    flags = (*_FLAGS[sources.layout], *_COMMON_FLAGS)
    so_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(so_path.parent)
    with tempfile.TemporaryDirectory(prefix=_BUILD_PREFIX, dir=so_path.parent) as tmp:
        work = Path(tmp)
        objects = []
        jobs = []
        for name, text in sources.files:
            (work / name).write_text(text)
            obj = work / (name.removesuffix(".c") + ".o")
            objects.append(str(obj))
            jobs.append([cc, *flags, "-c", str(work / name), "-o", str(obj)])
        _run_parallel(jobs)
        staged = work / so_path.name
        _run_parallel([[cc, "-shared", *flags, "-o", str(staged), *objects, "-lm"]])
        os.replace(staged, so_path)  # atomic: readers see no library or a whole one
    seconds = time.perf_counter() - started
    log.info(
        "compiled trees built",
        extra={
            "layout": sources.layout,
            "units": len(sources.files),
            "trees": len(forest.trees),
            "seconds": round(seconds, 3),
            "library": str(so_path),
        },
    )
    return seconds


def _remove_stale_builds(folder: Path) -> None:
    """Build folders left by a process killed mid-build (a live build is far younger)."""
    cutoff = time.time() - STALE_BUILD_SECONDS
    for stale in folder.glob(_BUILD_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)


def _usable_cpus() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def _run_parallel(commands: list[list[str]]) -> None:
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd in commands]
    deadline = time.monotonic() + COMPILE_TIMEOUT_SECONDS
    failures = []
    try:
        for cmd, proc in zip(commands, procs, strict=True):
            try:
                output, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                failures.append(f"{Path(cmd[0]).name} timed out after {COMPILE_TIMEOUT_SECONDS:.0f} s")
                continue
            if proc.returncode != 0:
                failures.append(f"{' '.join(cmd[:1] + cmd[-3:])} exited {proc.returncode}: {output[-2000:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failures:
        raise BuildError("; ".join(failures))
