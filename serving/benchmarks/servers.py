"""The two servers under test as child processes: start, wait until ready, measure, stop.

Every process is started in its own session (process group), so stopping it
also stops anything it forked, and `ProcessSet.stop_all` runs from `finally`
blocks and signal handlers: nothing is left running after the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"

MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-lightgbm==1.7.1", "uvloop<0.22")  # uvloop 0.22+ crashes its workers
DEFAULT_MLSERVER_VENV = Path.home() / ".cache" / "tradingmodel-bench" / "mlserver-venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_post(port: int, path: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Server:
    """One running server process and where it answers."""

    label: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, paths: tuple[str, ...], timeout: float) -> float:
        """Seconds from process start until every path answers 200."""
        deadline = time.monotonic() + timeout
        pending = list(paths)
        while pending:
            if not self.alive():
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}; log: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label} not ready after {timeout:.0f} s; log: {self.log_tail()}")
            try:
                status, _ = http_get(self.port, pending[0], timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                pending.pop(0)
            else:
                time.sleep(0.02)
        return time.monotonic() - self.started_at

    def rss_mb(self) -> float:
        """Resident memory of the process and all its descendants."""
        return sum(_rss_kb(pid) for pid in process_tree(self.process.pid)) / 1024.0

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class ProcessSet:
    """Every server this run started, to stop them all whatever happens."""

    servers: list[Server] = field(default_factory=list)

    def start(
        self, label: str, argv: list[str], env: dict[str, str], port: int, log_path: Path, cpus: str | None = None
    ) -> Server:
        """cpus: a CPU list for taskset (e.g. "0"): the process and all it starts stay on those CPUs."""
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("wb")
        started = time.monotonic()
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        server = Server(label, port, process, log_path, started)
        self.servers.append(server)
        return server

    def stop(self, server: Server, grace: float = 10.0) -> None:
        if server in self.servers:
            self.servers.remove(server)
        if server.process.poll() is not None:
            return
        _signal_group(server.process, signal.SIGTERM)
        try:
            server.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(server.process, signal.SIGKILL)
            server.process.wait(timeout=10)
        # The group may hold workers that outlived their parent.
        _signal_group(server.process, signal.SIGKILL)

    def stop_all(self) -> None:
        for server in list(self.servers):
            try:
                self.stop(server, grace=5.0)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop {server.label}: {exc}", file=sys.stderr)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # the group we created with start_new_session


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Stop(Exception):
    """SIGTERM: unwind like Ctrl-C so every started process is stopped."""


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop()


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs) afterwards")


def bench_environment() -> None:
    """What every server started here inherits: test credentials for the local S3, one OpenMP thread."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ["OMP_NUM_THREADS"] = "1"


def print_results(report: str, results: dict, json_path: Path | None, say: Callable[[str], None]) -> int:
    """The table on stdout and, with --json, the figures in a file; 0 (the benchmark's exit status)."""
    print(report, flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2))
        say(f"figures written to {json_path}")
    return 0


def run_guarded(
    run: Callable[[], int], procs: ProcessSet, started: list[Any], work: Path, keep: bool, say: Callable[[str], None]
) -> int:
    """Run a benchmark's steps: 130 after Ctrl-C or SIGTERM; on a failure the last lines of every
    server's log; whatever happened, every server and whatever is in `started` (e.g. the local S3)
    stopped, and the work folder removed unless `keep`."""
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started from a shell ignoring it
    try:
        return run()
    except (KeyboardInterrupt, Stop):
        say("interrupted: stopping everything this run started")
        return 130
    except Exception as exc:
        say(f"failed: {exc}")
        for server in procs.servers:
            say(f"--- last lines of {server.label} ({server.log_path}) ---\n{server.log_tail()}")
        raise
    finally:
        procs.stop_all()
        for thing in started:
            thing.stop()
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- our server


def ours_env(
    *,
    s3_endpoint: str,
    bucket: str,
    ticker: str,
    version: str,
    digest: str,
    cache_dir: Path,
    port: int,
    extra: dict[str, str] | None = None,
) -> dict:
    """The serving pod contract (serving/model_serving/README.md, "Environment"), pointed at the local S3;
    `extra` adds SERVING_* knobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "S3_", "SERVING_"))}
    env.update(
        MODEL_TICKER=ticker,
        MODEL_ASSET_CLASS="etf",
        MODEL_STAGE="production",
        MODEL_VERSION=version,
        MODEL_DIGEST=digest,
        MODEL_NAME=f"{ticker.lower()}-production",
        S3_BUCKET=bucket,
        S3_ENDPOINT_URL=s3_endpoint,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID=env.get("AWS_ACCESS_KEY_ID", "testing"),
        AWS_SECRET_ACCESS_KEY=env.get("AWS_SECRET_ACCESS_KEY", "testing"),
        MODEL_CACHE_DIR=str(cache_dir),
        PORT=str(port),
        GRPC_PORT=str(free_port()),
        HOST=HOST,
        LOG_LEVEL="INFO",
        OMP_NUM_THREADS="1",
    )
    env.update(extra or {})
    return env


def engine_of(port: int, name: str) -> str:
    try:
        status, body = http_get(port, f"/v2/models/{name}")
    except OSError:
        return "unreachable"
    if status != 200:
        return f"http-{status}"
    doc = json.loads(body)
    return str(doc.get("engine") or doc.get("parameters", {}).get("engine") or "unknown")


def wait_engine(server: Server, name: str, wanted: str, timeout: float) -> tuple[str, float | None]:
    """(engine, seconds from start) once the model reports `wanted`, or the engine at timeout."""
    deadline = time.monotonic() + timeout
    engine = engine_of(server.port, name)
    while engine != wanted and time.monotonic() < deadline and server.alive():
        time.sleep(0.05)
        engine = engine_of(server.port, name)
    return engine, (time.monotonic() - server.started_at) if engine == wanted else None


# ----------------------------------------------------------------------------- MLServer


def ensure_mlserver_venv(venv: Path, say: Callable[[str], None]) -> Path:
    """The `mlserver` executable of a venv holding the pinned MLServer; created when missing."""
    exe = venv / "bin" / "mlserver"
    marker = venv / ".tradingmodel-pins"
    if exe.exists() and marker.exists() and marker.read_text() == "\n".join(MLSERVER_PINS):
        return exe
    say(f"installing {' '.join(MLSERVER_PINS)} into {venv} (once; takes a minute or two)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", *MLSERVER_PINS],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {' '.join(MLSERVER_PINS)} into {venv}:\n{done.stderr[-3000:]}")
    marker.write_text("\n".join(MLSERVER_PINS))
    return exe


def _base_python() -> str:
    # Our own venv's interpreter would do, but the base one keeps MLServer's venv independent of it.
    return getattr(sys, "_base_executable", None) or sys.executable


def write_mlserver_repo(folder: Path, name: str, version: str, model_file: bytes, port: int) -> dict:
    """settings.json (its best setting: one process, no worker pool) and the model folder; returns the settings."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "parallel_workers": 0,  # measured: ~1,000 req/s at c=8 vs ~225 with its default worker pool
        "host": HOST,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "load_models_at_startup": True,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    model_dir = folder / name
    model_dir.mkdir(exist_ok=True)
    (model_dir / "lightgbm_model.txt").write_bytes(model_file)
    model_settings = {
        "name": name,
        "implementation": "mlserver_lightgbm.LightGBMModel",
        "parameters": {"uri": "./lightgbm_model.txt", "version": version},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return settings


def mlserver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSERVER_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["OMP_NUM_THREADS"] = "1"
    return env
