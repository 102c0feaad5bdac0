"""Serving fixtures: published demo models in a real S3 (moto over HTTP) and real server processes.

Models are published with the store's own commands (model_store.publish and
model_store.promotion), so the serving side reads exactly what the operator
writes: archive/<v>/ with its manifest, a stage copy with the stage manifest
written last, and metadata/asset_registry.json.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving_helpers import Server, free_port

from model_store.demo_model import DemoModel, train_demo_model


@pytest.fixture
def start_server(s3_endpoint: str, tmp_path: Path) -> Iterator[Any]:
    """start_server(bucket, **env) -> a ready Server; every server is stopped after the test."""
    servers: list[Server] = []

    def start(bucket: str, wait: bool = True, **extra: str) -> Server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "SERVING_"))},
            "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": s3_endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "PORT": str(free_port()),
            "HOST": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
            "SERVING_COMPILE_TREES": "0",
            "SERVING_GRACEFUL_TIMEOUT_SECONDS": "10",
            **extra,
        }
        server = Server(env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def demo_stock() -> DemoModel:
    """A third, different model for stocks/universal."""
    return train_demo_model(version="v2.0", seed=23, rounds=20, rows=1500)
