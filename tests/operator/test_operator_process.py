"""How `tmctl operator` sets up its own process."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_operator_limits_glibcs_malloc_arenas_unless_told_otherwise() -> None:
    """In a process of its own, as `tmctl operator` calls it before any thread starts."""
    code = "from trading_operator.cli import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    glibc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert unset.stdout.strip() == str(bool(glibc))
    told = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"},
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert told.stdout.strip() == "False"  # the environment's setting stands
