"""Fixtures shared by every test folder: a real S3 (moto server over HTTP) and real demo models."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.demo_model import DemoModel, train_demo_model
from model_store.s3 import S3Settings, make_client

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket per test, so tests never see each other's objects."""
    name = f"models-{next(_bucket_numbers)}-{os.getpid()}"
    make_client(S3Settings(bucket=name, endpoint_url=s3_endpoint)).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint: str, bucket: str) -> Any:
    return make_client(S3Settings(bucket=bucket, endpoint_url=s3_endpoint))


@pytest.fixture(scope="session")
def demo_v1() -> DemoModel:
    return train_demo_model(version="v1.0", seed=7, rounds=20, rows=1500)


@pytest.fixture(scope="session")
def demo_v2() -> DemoModel:
    return train_demo_model(version="v1.1", seed=11, rounds=20, rows=1500)
