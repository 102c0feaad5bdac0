"""Serving fixtures: published demo models in a real S3 (moto over HTTP) and real server processes.

Models are published with the store's own commands (model_store.publish and
model_store.promotion), so the serving side reads exactly what the operator
writes: archive/<v>/ with its manifest, a stage copy with the stage manifest
written last, and metadata/asset_registry.json.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.demo_model import DemoModel, train_demo_model
from devstack.s3_servers import S3Server
from helpers.serving import S3Log, Server, server_env


@pytest.fixture
def start_server(s3_server: S3Server, tmp_path: Path) -> Iterator[Any]:
    """start_server(bucket, **env) -> a ready Server on the test's S3 server; every server is
    stopped after the test."""
    servers: list[Server] = []

    def start(bucket: str, wait: bool = True, **extra: str) -> Server:
        env = server_env(bucket, s3_server.endpoint, tmp_path / "cache", **extra)
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


@pytest.fixture
def s3_log() -> Iterator[S3Log]:
    handler = S3Log()
    logger = logging.getLogger("werkzeug")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)
