"""Running a container as a local process: start, probe, stop (SIGTERM, then SIGKILL).

The image is ignored (a laptop without Docker cannot run it); the command comes from the
kubelet's command factory. Probes follow the container's ``readinessProbe`` and
``livenessProbe`` (httpGet or tcpSocket) against the port the kubelet assigned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, have the kernel SIGTERM a child when the thread that started it dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return set_signal


DIE_WITH_PARENT = _parent_death_signal()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it); good enough on a laptop."""
    return free_ports(1, host)[0]


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group a child started with start_new_session leads (its pgid is its pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM the group `process` leads, SIGKILL it after the grace period, and reap `process`."""
    if process.poll() is None:
        signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        process.wait()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago. Calls of free_port() one after another
    may give the same port twice (the OS hands a released port out again: seen, weed's master and
    volume server given one port); these are held all at once, so they differ."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass(frozen=True)
class Probe:
    kind: str  # "http" | "tcp" | "none"
    path: str = "/"
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, *, max_period: float) -> Probe | None:
        """A probe from a container's probe spec; periods are capped so a laptop reacts quickly."""
        if not spec:
            return None
        common = {
            "initial_delay": float(spec.get("initialDelaySeconds", 0)),
            "period": min(float(spec.get("periodSeconds", 10)), max_period),
            "timeout": float(spec.get("timeoutSeconds", 1)),
            "failure_threshold": int(spec.get("failureThreshold", 3)),
        }
        if "httpGet" in spec:
            path = str(spec["httpGet"].get("path") or "/")
            return cls(kind="http", path=path if path.startswith("/") else f"/{path}", **common)  # type: ignore[arg-type]
        if "tcpSocket" in spec:
            return cls(kind="tcp", **common)  # type: ignore[arg-type]
        return cls(kind="none", **common)  # type: ignore[arg-type]

    async def check(self, session: aiohttp.ClientSession, port: int) -> bool:
        try:
            if self.kind == "http":
                timeout = aiohttp.ClientTimeout(total=self.timeout)
                async with session.get(f"http://127.0.0.1:{port}{self.path}", timeout=timeout) as response:
                    return 200 <= response.status < 400
            if self.kind == "tcp":
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), self.timeout)
                writer.close()
                return True
            return True  # exec probes cannot run here; a running process counts as healthy
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False


class ContainerProcess:
    """One started process with its output appended to a log file."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(
        cls, command: Sequence[str], *, env: Mapping[str, str], log_file: pathlib.Path, cwd: pathlib.Path
    ) -> ContainerProcess:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                env=dict(env),
                cwd=str(cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops its children too
                preexec_fn=DIE_WITH_PARENT,
            )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    async def stop(self, grace_seconds: float) -> int:
        """SIGTERM the process group, SIGKILL it after the grace period; the exit code."""
        if self._process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._process.wait()), grace_seconds)
            except TimeoutError:
                self._signal(signal.SIGKILL)
        return await self._process.wait()

    def _signal(self, sig: signal.Signals) -> None:
        signal_group(self._process.pid, sig)
