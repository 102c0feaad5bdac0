"""A real Prometheus for the local stack, when the machine has one (Debian package `prometheus`).

Serving pods are local processes on changing ports, so discovery is a file (file_sd) that the
stack rewrites from the kubelet's view of ready pods; the labels mirror what the PodMonitor in
manifests/prometheus gives on a cluster (namespace, tradingmodel).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devstack.pod_runtime import DIE_WITH_PARENT, free_port

Targets = Callable[[], list[dict[str, Any]]]  # file_sd groups: [{"targets": [...], "labels": {...}}]


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


class LocalPrometheus:
    def __init__(self, workdir: Path, targets: Targets, scrape_seconds: int = 2, operator: str | None = None) -> None:
        self.dir = workdir
        self._operator = operator  # host:port of the operator's /metrics (job tradingmodel-operator)
        self._targets = targets
        self._scrape_seconds = scrape_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_targets, name="prometheus-targets", daemon=True)
        self.url = ""

    def start(self, binary: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        config: dict[str, Any] = {
            "global": {"scrape_interval": f"{self._scrape_seconds}s", "evaluation_interval": "5s"},
            "scrape_configs": [
                {
                    "job_name": "tradingmodel-serving",
                    "metrics_path": "/metrics",
                    "file_sd_configs": [{"files": [str(self.dir / "targets.json")], "refresh_interval": "1s"}],
                }
            ],
        }
        if self._operator:
            config["scrape_configs"].append(
                {"job_name": "tradingmodel-operator", "static_configs": [{"targets": [self._operator]}]}
            )
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.dir / "prometheus.log").open("ab")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=DIE_WITH_PARENT,
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Prometheus did not start; see {self.dir / 'prometheus.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        return list(body["data"]["result"])

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """The result matrix of a range query (unix times)."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"}
        with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}", timeout=10) as r:
            body = json.loads(r.read())
        return list(body["data"]["result"])

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _write_targets(self) -> None:
        path = self.dir / "targets.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._targets()))
        os.replace(tmp, path)  # Prometheus must never read a half-written file

    def _refresh_targets(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._write_targets()
            except Exception:  # a transient API error must not stop discovery
                continue
