"""Giving memory back to the system after large request bodies (glibc malloc).

Bodies arrive in reads of up to 256 KiB; glibc serves such blocks from its heap, and a heap whose
free space sits between live blocks is not returned, so RSS stayed up after stalled clients left.
`configure()` fixes the mmap threshold at 64 KiB (blocks that size and larger are mapped and
unmapped on their own, so freeing them returns the memory at once; single-row requests are a few
KiB and never reach it), and `trim_soon()` asks glibc to release free heap pages (malloc_trim), at
most once a second, after a connection that received a large body closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import time
from typing import Any

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 10

_libc: Any = None
_last_trim = 0.0


def configure() -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc (the process then just keeps its heap)."""
    global _libc
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        _libc = None
        return False


def trim() -> None:
    global _last_trim
    _last_trim = time.monotonic()
    if _libc is not None:
        with contextlib.suppress(AttributeError):
            _libc.malloc_trim(0)


def trim_soon(loop: Any) -> None:
    """malloc_trim shortly, at most once a second."""
    if _libc is None:
        return
    wait = max(0.0, _last_trim + 1.0 - time.monotonic())
    if wait == 0.0:
        loop.call_soon(trim)
    elif not getattr(trim_soon, "pending", False):
        trim_soon.pending = True  # type: ignore[attr-defined]

        def later() -> None:
            trim_soon.pending = False  # type: ignore[attr-defined]
            trim()

        loop.call_later(wait, later)
