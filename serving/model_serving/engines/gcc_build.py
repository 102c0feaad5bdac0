"""Build a parsed forest into a shared library with gcc, and name the library for the cache.

The C comes from codegen; its translation units compile in parallel (as many
as the CPUs this process may use, at most 8). The library is written under a
temporary folder next to its final place and renamed in, so a reader sees no
library or a whole one; build folders left behind by a killed process are
removed by the next build.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from model_serving.engines.codegen.generate import GENERATOR_VERSION, generate_sources
from model_serving.engines.lgbm_text import Forest

log = logging.getLogger(__name__)

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


def find_compiler(compiler: str | None = None) -> tuple[str, str | None]:
    """(the compiler wanted: `compiler`, else $CC, else gcc; its path, None when it is not on PATH)."""
    wanted = compiler or os.environ.get("CC") or "gcc"
    return wanted, shutil.which(wanted)


def library_name(model_text: str) -> str:
    """Cache file name: model text, generator version, flags and machine all change it."""
    key = hashlib.sha256()
    for part in (GENERATOR_VERSION, repr(sorted(_FLAGS.items())), repr(_COMMON_FLAGS), platform.machine()):
        key.update(part.encode() + b"\0")
    key.update(model_text.encode())
    return f"lgbm-compiled-{key.hexdigest()[:40]}.so"


def build_library(forest: Forest, so_path: Path, cc: str) -> float:
    """Generate, compile (translation units in parallel) and atomically place the library; returns seconds."""
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
