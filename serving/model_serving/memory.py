"""Giving memory back to the system after large request bodies (glibc malloc).

Bodies arrive in reads of up to 256 KiB and are copied a few times on their way to the model
(uvloop's read, httptools' body callback, uvicorn's buffer, the join of the parts). glibc's default
sends blocks over 128 KiB to mmap, and each such copy then lands in freshly mapped pages: a third of
the server's CPU on 1,000-row batches went to page faults, zeroing and unmapping them. On the heap
instead, freed space between live blocks is not returned on its own, so stalled clients' bodies
would stay in RSS after they left. Hence both: `configure()` fixes the mmap threshold at 8 MiB
(bodies and their copies reuse heap pages; only blocks larger than the largest binary batch are
mapped), and `trim_soon()` asks glibc to release free heap pages (malloc_trim, every arena), at
most once a second, after a connection that received a large body closes: RSS is back within about
a second of the last one leaving.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import time
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 8 << 20
# Free space at the heap's top that glibc keeps instead of giving back at each free: the default
# 128 KiB returned every batch's pages at its end, to fault them in again for the next one.
TRIM_THRESHOLD_BYTES = 32 << 20

_libc: Any = None
_last_trim = 0.0


def configure() -> bool:
    """Fix glibc's mmap and trim thresholds; False where there is no glibc (the process then just
    keeps its heap)."""
    global _libc
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            _libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
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
