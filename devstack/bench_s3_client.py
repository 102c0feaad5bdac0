"""The S3 client's own CPU per request, the client as make_client built it before and as it builds it now.

    python -m devstack.bench_s3_client [--rounds 9] [--requests 30] [--candidates]

moto's S3 app runs in a process of its own (keep-alive, as in `./dev bench operator`), so that
time.process_time() here counts the client's work only: building, signing and sending the
request, reading and parsing the answer. Each round runs every operation `--requests` times with
each client in turn (the order rotating), so a busy machine weighs on all of them alike; the
figures are the medians over the rounds, with the lowest and highest round.

  before   boto3's default session (timestamps parsed by dateutil), a CRC32 of the body on every PUT
  tuned    boto3 as make_client configures it (the fast timestamp parser, no CRC32 on PUTs):
           what make_client gave before lean_s3
  after    model_store.s3.make_client: the five operations the store repeats sent by
           model_store.lean_s3 (botocore's signer, HTTP session and retry rules, without its
           per-request pipeline), anything else by boto3
  --candidates adds botocore settings measured and left out, on boto3 with make_client's session:
           parameter_validation=False, and response_checksum_validation="when_required".
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack.bench_operator import Children, _s3_up, wait
from devstack.pod_runtime import free_port
from model_store.s3 import _CLIENT_CONFIG, S3Settings, _shared_session, make_client

BUCKET, KEYS = "bench-s3-client", ("bench", "bench-secret")
DOC = b'{"version": "v1.1", "history": []}' * 30  # about a registry document: 1 KB of JSON
LISTED = 6  # keys under the listed prefix: about one published version folder


def clients(endpoint: str, candidates: bool) -> dict[str, Any]:
    def on_shared_session(extra: Config) -> Any:
        return _shared_session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                        aws_access_key_id=KEYS[0], aws_secret_access_key=KEYS[1],
                                        config=_CLIENT_CONFIG.merge(extra))  # fmt: skip

    made = {
        "before": boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEYS[0],
                               aws_secret_access_key=KEYS[1],
                               config=_CLIENT_CONFIG.merge(Config(request_checksum_calculation="when_supported"))),
        "tuned": on_shared_session(Config()),
        "after": make_client(S3Settings(BUCKET, endpoint), *KEYS),
    }  # fmt: skip
    if candidates:
        made["no-validation"] = on_shared_session(Config(parameter_validation=False))
        made["no-get-crc"] = on_shared_session(Config(response_checksum_validation="when_required"))
    return made


def operations(s3: Any, folder: str) -> dict[str, Callable[[], None]]:
    """The calls the store makes, each on keys of its own under `folder`."""
    doc, etag = f"{folder}/doc.json", [s3.put_object(Bucket=BUCKET, Key=f"{folder}/doc.json", Body=DOC)["ETag"]]
    for i in range(LISTED):
        s3.put_object(Bucket=BUCKET, Key=f"{folder}/version/file-{i}", Body=b"x")

    def conditional_get() -> None:
        try:
            s3.get_object(Bucket=BUCKET, Key=doc, IfNoneMatch=etag[0])
        except ClientError as exc:  # 304: the store's "unchanged"
            assert exc.response["Error"]["Code"] in {"304", "NotModified"}, exc

    def put_if_match() -> None:
        etag[0] = s3.put_object(Bucket=BUCKET, Key=doc, Body=DOC, ContentType="application/json",
                                IfMatch=etag[0])["ETag"]  # fmt: skip

    def copy() -> None:
        s3.copy_object(Bucket=BUCKET, Key=f"{folder}/copy.json", CopySource={"Bucket": BUCKET, "Key": doc},
                       MetadataDirective="REPLACE", Metadata={"sha256": "0" * 64},
                       ContentType="application/json")  # fmt: skip

    def listing() -> None:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{folder}/version/"):
            assert len(page["Contents"]) == LISTED

    return {
        "get": lambda: s3.get_object(Bucket=BUCKET, Key=doc)["Body"].read(),
        "conditional get (304)": conditional_get,
        "put If-Match": put_if_match,
        "copy (REPLACE)": copy,
        "delete": lambda: s3.delete_object(Bucket=BUCKET, Key=f"{folder}/gone.json"),
        f"list ({LISTED} keys)": listing,
    }


def measure(variants: dict[str, dict[str, Callable[[], None]]], rounds: int, requests: int) -> dict[Any, list[float]]:
    """CPU µs per request of every (variant, operation), one figure per round; round 0 warms up."""
    names, found = list(variants), dict[Any, list[float]]()
    for number in range(rounds + 1):
        for operation in variants[names[0]]:
            for name in names[number % len(names) :] + names[: number % len(names)]:
                call = variants[name][operation]
                gc.collect()
                started = time.process_time()
                for _ in range(requests):
                    call()
                if number:
                    found.setdefault((name, operation), []).append((time.process_time() - started) / requests * 1e6)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=30, help="requests per operation, client and round")
    parser.add_argument("--candidates", action="store_true", help="also the settings measured and left out")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-s3-client-") as tmp:
        children, port = Children(Path(tmp)), free_port()
        here = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        children.start("s3", [sys.executable, "-m", "devstack.bench_operator", "--serve", "s3", "--dir", tmp,
                              "--api", str(port)], env)  # fmt: skip
        try:
            made = clients(f"http://127.0.0.1:{port}", args.candidates)
            wait(lambda: _s3_up(made["after"]), "S3", children, 30)
            made["after"].create_bucket(Bucket=BUCKET)
            found = measure({name: operations(s3, name) for name, s3 in made.items()}, args.rounds, args.requests)
        finally:
            children.stop_all()
    names = list(made)
    print(f"client CPU per request, µs: median of {args.rounds} rounds of {args.requests} (lowest-highest round) and "
          f"its change from before; botocore {botocore.__version__}, moto over HTTP in another process")  # fmt: skip
    print(f"{'operation':<22}" + "".join(f"{name:>26}" for name in names))
    for operation in dict.fromkeys(operation for _, operation in found):
        before = statistics.median(found["before", operation])
        cells = []
        for name in names:
            rounds = found[name, operation]
            change = "" if name == "before" else f" {statistics.median(rounds) / before - 1:+.0%}"
            cells.append(f"{statistics.median(rounds):.0f} ({min(rounds):.0f}-{max(rounds):.0f}){change}")
        print(f"{operation:<22}" + "".join(f"{cell:>26}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
