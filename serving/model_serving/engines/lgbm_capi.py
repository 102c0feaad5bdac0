"""LightGBM's C API through ctypes: the default prediction engine.

The `lightgbm` Python package costs about two seconds to import (it pulls in
pandas, scikit-learn and friends); the serving hot start only needs
lib_lightgbm.so, so the library is found with importlib without importing
the package and called directly. Single rows go through the FastInit/Fast
pair (predictor setup hoisted out of the call), batches through
LGBM_BoosterPredictForMat; both ask for num_threads=1 because the pod runs
one server process per core budget and OpenMP fan-out costs more than it
gives on a row.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

_C_API_DTYPE_FLOAT64 = 1
_C_API_PREDICT_NORMAL = 0
_ROW_MAJOR = 1
_PARAMETERS = b"num_threads=1"
_LIB_NAMES = ("lib_lightgbm.so", "lib_lightgbm.dylib", "lib_lightgbm.dll")

_c_double_p = ctypes.POINTER(ctypes.c_double)
_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


class LightGBMError(RuntimeError):
    """LightGBM refused a call; the message is LightGBM's own."""


def find_library() -> Path:
    """Where lib_lightgbm lives, without importing the lightgbm package.

    LIGHTGBM_LIB_PATH overrides the search (e.g. a custom build in the image).
    """
    override = os.environ.get("LIGHTGBM_LIB_PATH")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        raise LightGBMError("the lightgbm package is not installed: pip install lightgbm")
    package = Path(next(iter(spec.submodule_search_locations)))
    # The same places lightgbm/libpath.py looks in.
    for folder in (package / "lib", package.parent, package / "bin"):
        for name in _LIB_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise LightGBMError(f"lib_lightgbm not found under {package}; set LIGHTGBM_LIB_PATH")


def library() -> ctypes.CDLL:
    """The loaded library with argument types declared (so ctypes converts quickly and safely)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _declare(ctypes.CDLL(str(find_library())))
        return _lib


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i32, i64p, ip = ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int)
    lib.LGBM_GetLastError.restype = ctypes.c_char_p
    lib.LGBM_GetLastError.argtypes = []
    signatures: dict[str, list[type]] = {
        "LGBM_BoosterLoadModelFromString": [ctypes.c_char_p, ip, ctypes.POINTER(vp)],
        "LGBM_BoosterFree": [vp],
        "LGBM_BoosterGetNumClasses": [vp, ip],
        "LGBM_BoosterGetNumFeature": [vp, ip],
        "LGBM_BoosterCalcNumPredict": [vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, i64p],
        "LGBM_BoosterPredictForMatSingleRowFastInit": [
            vp,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            i32,
            ctypes.c_char_p,
            ctypes.POINTER(vp),
        ],
        "LGBM_BoosterPredictForMatSingleRowFast": [vp, vp, i64p, vp],
        "LGBM_BoosterPredictForMat": [
            vp,
            vp,
            ctypes.c_int,
            i32,
            i32,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            i64p,
            _c_double_p,
        ],
        "LGBM_FastConfigFree": [vp],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return lib


def _check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        message = lib.LGBM_GetLastError() or b"unknown error"
        raise LightGBMError(message.decode("utf-8", "replace"))


class CApiPredictor:
    """Class probabilities from a LightGBM text model, via the C API.

    predict_proba(rows) takes a float64 array of shape (n, n_features) and
    returns (n, n_classes); a binary model reports [1 - p, p] like
    LGBMClassifier.predict_proba.
    """

    engine = "lightgbm-capi"

    def __init__(self, model_text: str) -> None:
        lib = library()
        self._lib = lib
        self._handle = ctypes.c_void_p()
        self._fast = ctypes.c_void_p()
        iterations = ctypes.c_int()
        _check(
            lib,
            lib.LGBM_BoosterLoadModelFromString(
                model_text.encode(), ctypes.byref(iterations), ctypes.byref(self._handle)
            ),
        )
        classes, features = ctypes.c_int(), ctypes.c_int()
        _check(lib, lib.LGBM_BoosterGetNumClasses(self._handle, ctypes.byref(classes)))
        _check(lib, lib.LGBM_BoosterGetNumFeature(self._handle, ctypes.byref(features)))
        self.num_iterations = iterations.value
        self.n_features = features.value
        self._raw_outputs = classes.value  # 1 for binary
        self.n_classes = 2 if classes.value == 1 else classes.value
        _check(
            lib,
            lib.LGBM_BoosterPredictForMatSingleRowFastInit(
                self._handle,
                _C_API_PREDICT_NORMAL,
                0,
                -1,
                _C_API_DTYPE_FLOAT64,
                self.n_features,
                _PARAMETERS,
                ctypes.byref(self._fast),
            ),
        )
        # A FastConfig holds per-call scratch space: one caller at a time. The single-row
        # buffers live as long as the predictor, so their addresses are looked up once
        # (numpy's .ctypes.data costs more than copying 84 doubles).
        self._fast_lock = threading.Lock()
        self._fast_fn = lib.LGBM_BoosterPredictForMatSingleRowFast
        self._row = np.zeros(self.n_features, dtype=np.float64)
        self._out = np.zeros(self._raw_outputs, dtype=np.float64)
        self._row_addr, self._out_addr = self._row.ctypes.data, self._out.ctypes.data
        self._out_len = ctypes.c_int64()
        self._out_len_ref = ctypes.byref(self._out_len)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"rows must have shape (n, {self.n_features}), got {rows.shape}")
        n = rows.shape[0]
        if n == 1:
            with self._fast_lock:
                self._row[:] = rows[0]
                status = self._fast_fn(self._fast, self._row_addr, self._out_len_ref, self._out_addr)
                raw, produced = self._out.copy(), self._out_len.value
        else:
            raw, produced = self._predict_batch(rows)
            status = 0
        _check(self._lib, status)
        if produced != raw.size:
            raise LightGBMError(f"LightGBM returned {produced} values, expected {raw.size}")
        if self._raw_outputs == 1:
            return np.column_stack((1.0 - raw, raw))
        return raw.reshape(n, self._raw_outputs)

    def _predict_batch(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        n = rows.shape[0]
        raw = np.empty(n * self._raw_outputs, dtype=np.float64)
        out_len = ctypes.c_int64()
        status = self._lib.LGBM_BoosterPredictForMat(
            self._handle,
            rows.ctypes.data,
            _C_API_DTYPE_FLOAT64,
            n,
            self.n_features,
            _ROW_MAJOR,
            _C_API_PREDICT_NORMAL,
            0,
            -1,
            _PARAMETERS,
            ctypes.byref(out_len),
            raw.ctypes.data_as(_c_double_p),
        )
        _check(self._lib, status)
        return raw, out_len.value

    def close(self) -> None:
        """Free the native objects (also done when the predictor is garbage collected)."""
        lib = self._lib
        if self._fast:
            lib.LGBM_FastConfigFree(self._fast)
            self._fast = ctypes.c_void_p()
        if self._handle:
            lib.LGBM_BoosterFree(self._handle)
            self._handle = ctypes.c_void_p()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
