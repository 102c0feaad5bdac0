"""The S3 client and the few reads every part of the system shares."""

from __future__ import annotations

import datetime
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

from model_store import lean_s3
from model_store.layout import MANIFEST_NAME
from model_store.manifest import Manifest

# Throttling and 5xx are retried by botocore itself with exponential backoff.
POOL = 10  # botocore's default number of kept connections
_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
    signature_version="s3v4",
    s3={"addressing_style": "path"},
    # botocore >= 1.36 adds a CRC32 of the body to every PUT ("when_supported"): 6-9% of a PUT's client
    # CPU. Writes stay checked without it: the SigV4 signature covers the body's SHA-256 (always over
    # HTTP, and over HTTPS once no checksum header is sent). Operations that require a checksum still get one.
    request_checksum_calculation="when_required",
)

_MISSING_KEY = frozenset({"404", "NoSuchKey", "NotFound"})
_MISSING_BUCKET = frozenset({"NoSuchBucket"})
# A conditional write lost to another writer (If-Match / If-None-Match): AWS says 412, some stores 409.
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, bucket: str | None = None) -> S3Settings:
        bucket = bucket or os.environ.get("S3_BUCKET", "")
        if not bucket:
            raise ValueError("no bucket given: pass --bucket or set S3_BUCKET")
        return cls(
            bucket=bucket,
            endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )


# The two forms S3 writes timestamps in: XML bodies (ListObjectsV2, CopyObject) and Last-Modified headers.
_ISO_UTC = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z", re.ASCII)
_HTTP_DATE = re.compile(r"[A-Z][a-z]{2}, (\d\d) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT", re.ASCII)
_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}  # fmt: skip


class _S3Timestamps:
    """botocore's parse_timestamp, same values and tzinfo, without dateutil's generic parser for
    S3's two forms (70-90 µs a timestamp against 3: a third of the client CPU of listing a dozen keys)."""

    def __init__(self) -> None:
        # dateutil's tzinfo depends on the machine's zone (tzlocal() for "...Z" where local time is UTC)
        self._iso_zone = parse_timestamp("2000-01-01T00:00:00Z").tzinfo
        self._http_zone = parse_timestamp("Sat, 01 Jan 2000 00:00:00 GMT").tzinfo

    def __call__(self, value: Any) -> datetime.datetime:
        try:
            if iso := _ISO_UTC.fullmatch(value):
                year, month, day, hour, minute, second, fraction = iso.groups()
                return datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                                         int((fraction or "0").ljust(6, "0")), tzinfo=self._iso_zone)  # fmt: skip
            if (http := _HTTP_DATE.fullmatch(value)) and http[2] in _MONTHS:
                day, month, year, hour, minute, second = http.groups()
                return datetime.datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second),
                                         tzinfo=self._http_zone)  # fmt: skip
        except (TypeError, ValueError):  # not a string, or no such date: botocore's parser says what it is
            pass
        parsed: datetime.datetime = parse_timestamp(value)  # typed here: without botocore-stubs it is Any
        return parsed


_TIMESTAMPS = _S3Timestamps()
_session: boto3.Session | None = None
_session_guard = threading.Lock()


def _shared_session() -> boto3.Session:
    """The session of every client made here (as boto3.client's default session was), with the
    fast timestamp parser: a parser option is a session's, not a client's."""
    global _session
    with _session_guard:
        if _session is None:
            core = botocore.session.get_session()
            core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_TIMESTAMPS)
            _session = boto3.Session(botocore_session=core)
        return _session


def make_client(
    settings: S3Settings,
    access_key: str | None = None,
    secret_key: str | None = None,
    *,
    pool: int = POOL,
    lean: bool = True,
) -> Any:
    """A boto3 S3 client; without explicit keys, credentials come from the usual AWS chain
    (environment, IRSA / instance role, profile). `pool`: connections kept for reuse, at least
    the number of threads that use the client at once (more threads than that reconnect and log
    "Connection pool is full"). `lean`: the requests the store repeats skip botocore's per-request
    pipeline (model_store.lean_s3); False gives the plain boto3 client."""
    config = _CLIENT_CONFIG if pool == POOL else _CLIENT_CONFIG.merge(Config(max_pool_connections=pool))
    client = _shared_session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )
    return lean_s3.lean(client, _TIMESTAMPS, endpoint_given=settings.endpoint_url is not None) if lean else client


def error_code(exc: BaseException) -> str:
    """S3's error code of a failed call ("" for errors that are not S3 answers)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return ""


def is_not_found(exc: BaseException) -> bool:
    """The key does not exist. A missing bucket is not this: it is a setup error, never "no version"."""
    return error_code(exc) in _MISSING_KEY


def is_missing_bucket(exc: BaseException) -> bool:
    return error_code(exc) in _MISSING_BUCKET


def is_precondition_failed(exc: BaseException) -> bool:
    """A conditional write found the object changed (or present) under it: re-read and try again."""
    return error_code(exc) in _PRECONDITION


def lost_conditional_write(exc: BaseException) -> bool:
    """A write made on a condition (If-Match / If-None-Match) found the object changed, created or
    deleted under it: re-read and try again. An If-Match on a key deleted meanwhile is 404
    NoSuchKey on AWS and moto but 412 on SeaweedFS: both mean another writer got there first."""
    return is_precondition_failed(exc) or is_not_found(exc)


def get_bytes(client: Any, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when it does not exist."""
    try:
        data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return data
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def read_manifest(client: Any, bucket: str, prefix: str) -> Manifest | None:
    """The manifest of a version folder or stage prefix, or None when there is none.

    Raises ManifestError when one exists but is unreadable or inconsistent.
    """
    raw = get_bytes(client, bucket, prefix + MANIFEST_NAME)
    if raw is None:
        return None
    return Manifest.from_json(raw, where=f"s3://{bucket}/{prefix}{MANIFEST_NAME}")
