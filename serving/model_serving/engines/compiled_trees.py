"""Compiled trees: a LightGBM text model as a native library, predicting through ctypes.

    predictor = compile_trees(model_text, cache_dir)    # None: keep LightGBM's C API
    probs = predictor.predict_proba(rows)               # (n, n_features) -> (n, n_outputs)
    session = predictor.row_session()                   # one per thread: fastest single row
    session.row[:] = features; probs = session.run()    # a view of session.out

`compile_trees` parses the model (lgbm_text) and loads the library cached in
`cache_dir` under the sha256 of the model text and the generator version, or
generates C (codegen) and builds it with gcc first (gcc_build; written
atomically). A library is mapped only from bytes whose sha256 matches what
this process built (a file this process did not build is rebuilt, not
opened: dlopen runs its code), copied to an anonymous file before dlopen. It returns None, after one
log line saying why, when the model uses something not compiled (categorical
splits, linear trees, other objectives), when there is no compiler, or when
the build fails. What it returns is not trusted yet: `verify.verify` must find
it equal to LightGBM before it serves (loading.engine_swap does both). Safe to
call from a background thread; the C functions release the GIL.

n_outputs is the number of classes, and 2 for a binary model ([1 - p, p]).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from model_serving.engines.codegen.generate import BATCH_BLOCKS, PREDICT_PROBA, PREDICT_PROBA_BATCH, choose_layout
from model_serving.engines.gcc_build import BuildError, build_library, find_compiler, library_name
from model_serving.engines.lgbm_text import Forest, Unsupported, parse_model_text

log = logging.getLogger(__name__)

ENGINE = "compiled"


def compile_trees(model_text: str, cache_dir: Path, *, compiler: str | None = None) -> CompiledPredictor | None:
    """A compiled predictor for `model_text`, or None (logged) to keep LightGBM's; not yet verified.

    compiler: the C compiler (default $CC or gcc); only needed when the cache has no library.
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
            wanted, cc = find_compiler(compiler)
            if cc is None:
                _skipped("no_compiler", f"{wanted} not found on PATH; install gcc to compile", logging.INFO)
                return None
            build_library(forest, so_path, cc)
            lib = _load_built(so_path)
    except (BuildError, OSError, UntrustedLibrary) as exc:
        _skipped("build_failed", str(exc))
        return None
    predictor = CompiledPredictor(lib, forest, so_path, origin)
    log.info(
        "compiled trees loaded",
        extra={
            "origin": origin,
            "layout": predictor.layout,
            "batch_blocks": predictor.batch_blocks,
            "trees": len(forest.trees),
            "seconds": round(time.perf_counter() - started, 3),
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
        self._lib = lib  # keeps the library mapped while the functions are referenced
        self._row_fn = getattr(lib, PREDICT_PROBA)
        self._row_fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._row_fn.restype = None
        self._batch_fn = getattr(lib, PREDICT_PROBA_BATCH)
        self._batch_fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        self._batch_fn.restype = None
        blocks = getattr(lib, BATCH_BLOCKS)
        blocks.restype = ctypes.c_int
        # True when batches run eight rows at a time (quickscorer_block: AVX-512 here), else row by row.
        self.batch_blocks = bool(blocks())

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
        return ctypes.addressof(ctypes.c_char.from_buffer(array))  # type: ignore[arg-type]  # ndarray is a buffer
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


# ----------------------------------------------------------------------------- the library cache


# Libraries this process built: file name -> sha256 of the bytes gcc wrote. A library is only ever
# mapped from bytes whose hash is in here, copied to an anonymous file first (ctypes.CDLL runs the
# library's constructors: a file in the cache folder that this process did not build, e.g. left by
# an earlier container or written by anyone else, is rebuilt rather than opened).
_BUILT: dict[str, str] = {}
_BUILT_LOCK = threading.Lock()


class UntrustedLibrary(OSError):
    """A library file whose bytes are not the ones this process built."""


def _load_built(so_path: Path) -> ctypes.CDLL:
    """Record the hash of a library gcc just wrote and map exactly those bytes."""
    data = so_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with _BUILT_LOCK:
        _BUILT[so_path.name] = digest
    return _map_bytes(data, so_path.name)


def _load_cached(so_path: Path) -> ctypes.CDLL | None:
    with _BUILT_LOCK:
        expected = _BUILT.get(so_path.name)
    if expected is None or not so_path.is_file():
        return None  # not built by this process: build it (again) rather than trust the file
    data = so_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("cached compiled trees changed since they were built, rebuilding", extra={"library": str(so_path)})
        so_path.unlink(missing_ok=True)
        return None
    try:
        return _map_bytes(data, so_path.name)
    except OSError as exc:
        log.warning("cached compiled trees unusable, rebuilding", extra={"library": str(so_path), "detail": str(exc)})
        so_path.unlink(missing_ok=True)
        return None


def _map_bytes(data: bytes, name: str) -> ctypes.CDLL:
    """dlopen the very bytes that were hashed (an anonymous in-memory file: nobody can swap the
    file between the hash check and the mapping)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        written = os.fstat(fd).st_size
        if written != len(data):
            raise UntrustedLibrary(f"{name}: wrote {written} of {len(data)} bytes to the in-memory copy")
        lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
    except BaseException:
        os.close(fd)
        raise
    # Kept open, as libraries are never unloaded: the dynamic loader knows a library by the path it
    # was opened with, so a closed and reused descriptor number would hand back an older library.
    _MAPPED_FDS.append(fd)
    return lib


_MAPPED_FDS: list[int] = []
