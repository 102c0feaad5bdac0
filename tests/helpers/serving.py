"""For the serving tests: publish demo models, run and talk to real server processes.

Models are published with the store's own commands (model_store.publish and
model_store.promotion), so the serving side reads exactly what the operator
writes: archive/<v>/ with its manifest, a stage copy with the stage manifest
written last, and metadata/asset_registry.json.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.demo_model import DemoModel
from devstack.pod_runtime import free_ports
from model_store.layout import ASSET_REGISTRY_KEY, ModelLocation, Stage
from model_store.promotion import promote_and_register
from model_store.publish import publish_version
from model_store.registry import update_document


class S3Log(logging.Handler):
    """The request lines moto's server logs (it runs in this process): proof of what was downloaded."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def gets(self, key_suffix: str) -> int:
        return sum(1 for line in self.lines if '"GET ' in line and key_suffix + " HTTP" in line)


@dataclass(frozen=True)
class Published:
    location: ModelLocation
    version: str
    digest: str


def publish(
    s3: Any, bucket: str, ticker: str, asset_class: str, demo: DemoModel, stage: str | None = "production"
) -> Published:
    """Publish `demo` under archive/<its version>/ and, unless stage is None, promote it there."""
    location = ModelLocation.of(ticker, asset_class)
    version = json.loads(demo.files["metadata.json"])["version"]
    result = publish_version(s3, bucket, location, version, demo.files)
    if stage is not None:
        promote_and_register(s3, bucket, location, version, Stage.parse(stage), actor="tests", tickers=[ticker])
    return Published(location, version, result.digest)


def register_stocks(s3: Any, bucket: str, *tickers: str) -> None:
    def add(doc: dict[str, Any]) -> bool:
        supported = doc.setdefault("stocks", {}).setdefault("supported_tickers", {})
        for ticker in tickers:
            supported.setdefault(ticker, {"uses_model": "stocks/universal"})
        return True

    update_document(s3, bucket, ASSET_REGISTRY_KEY, add)


def server_env(bucket: str, endpoint: str, cache_dir: Path, **extra: str) -> dict[str, str]:
    """The pod contract's environment for a test server (compiled trees off unless asked for)."""
    port, grpc_port = free_ports(2)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "SERVING_"))},
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        # the keys of the test's S3 server (tests/conftest.py sets them per server)
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "MODEL_CACHE_DIR": str(cache_dir),
        "PORT": str(port),
        "GRPC_PORT": str(grpc_port),  # pods share 127.0.0.1 here: never the contract's fixed 8081
        "HOST": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "SERVING_COMPILE_TREES": "0",
        "SERVING_GRACEFUL_TIMEOUT_SECONDS": "10",
        "SERVING_DRAIN_SECONDS": "0",  # tests that drain ask for it
        **extra,
    }


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """`python -m model_serving` as a child process, spoken to over real HTTP."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["PORT"])
        self.grpc_port = int(env.get("GRPC_PORT") or 0)  # 0: gRPC off
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "model_serving"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers=headers or {})
            reply = conn.getresponse()
            return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
        finally:
            conn.close()

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Response:
        return self.request("POST", path, body)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from process start to the first 200 from /v2/health/ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/v2/health/ready").status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def rss_mb(self) -> float:
        """The server process's resident memory now, in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def log_lines(self) -> list[dict[str, Any]]:
        self._log.flush()
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"unparsed": line})
        return lines

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def feature_rows(demo: DemoModel, count: int, seed: int = 1) -> list[dict[str, float]]:
    """Rows as the seeds' callers send them: {feature name: value}."""
    from devstack.demo_model import synthetic_market

    names = json.loads(demo.files["feature_names.json"])
    x, _ = synthetic_market(count, seed, len(names))
    return [dict(zip(names, map(float, row), strict=True)) for row in x]


def served_model(demo: DemoModel, ticker: str = "SPY", asset_class: str = "etf") -> Any:
    """A ServedModel built in-process from the demo files (for tests of pure request handling)."""
    from model_serving.engines.lgbm_capi import CApiPredictor
    from model_serving.loading.model_files import read_content
    from model_serving.loading.served_model import ServedModel
    from model_store.manifest import Manifest

    manifest = Manifest.build(f"etfs/{ticker}", "v1.0", demo.files, created="2024-12-06T00:00:00Z")
    content = read_content(manifest, demo.files.__getitem__)
    return ServedModel(
        ModelLocation.of(ticker, asset_class), manifest.version, manifest.digest, f"etfs/{ticker}/production/",
        "production", "s3", content, CApiPredictor(content.model_text),
    )  # fmt: skip


def booster_predict(demo: DemoModel, rows: list[dict[str, float]]) -> Any:
    """LightGBM's own predictions for the same rows: the reference every test compares with."""
    import lightgbm as lgb
    import numpy as np

    booster = lgb.Booster(model_str=demo.files["lightgbm_model.txt"].decode())
    names = booster.feature_name()
    return booster.predict(np.array([[row[n] for n in names] for row in rows], dtype=np.float64))


def evil_pickle(marker: Path) -> bytes:
    """A pickle whose loading creates `marker` (what any code from the bucket could do)."""

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    return pickle.dumps(Exploit())


def put_legacy_version(s3: Any, bucket: str, version: str, demo: DemoModel, model_pickle: bytes) -> str:
    """archive/<version>/ as an older publisher (or anyone with write access) left it: pickles and a
    manifest that vouches for them, written without model_store's checks. Returns the digest."""
    from model_store.manifest import Manifest

    metadata = json.loads(demo.files["metadata.json"])
    metadata.pop("classes", None)
    metadata["version"] = version
    files = {
        "lightgbm_model.pkl": model_pickle,
        "label_encoder.pkl": model_pickle,
        "feature_names.json": demo.files["feature_names.json"],
        "metadata.json": json.dumps(metadata).encode(),
    }
    manifest = Manifest.build("etfs/SPY", version, files, created="2024-01-01T00:00:00Z")
    prefix = f"etfs/SPY/archive/{version}/"
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=data)
    s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=manifest.to_json())
    return manifest.digest
