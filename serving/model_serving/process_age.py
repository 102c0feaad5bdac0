"""How long this process has existed, for the start-to-ready figure in the logs."""

from __future__ import annotations

import os


def process_age_seconds() -> float | None:
    """Seconds since the kernel started this process (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    started_ticks = int(fields[19])  # field 22 of stat(5), counted after the ")" of the command name
    return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
