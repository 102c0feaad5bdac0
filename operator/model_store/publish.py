"""Publishing a trained model version to archive/<version>/ (the seeds' upload script, done right)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from model_store.artifacts import KNOWN_FILES, OPTIONAL_FILES, check_artifacts
from model_store.convert import check_loads_in_lightgbm, convert_pickles
from model_store.errors import CorruptVersion, PublishConflict
from model_store.layout import MANIFEST_NAME, ModelLocation, check_version
from model_store.manifest import Manifest, ManifestError
from model_store.s3 import get_bytes, is_precondition_failed, read_manifest

log = logging.getLogger(__name__)

CONTENT_TYPES = {".json": "application/json", ".txt": "text/plain", ".pkl": "application/octet-stream"}


@dataclass(frozen=True)
class PublishResult:
    location: ModelLocation
    version: str
    digest: str
    created: bool  # False when the identical version was there already
    warnings: tuple[str, ...] = ()  # e.g. pickles converted to text and JSON on this machine


def content_type(key: str) -> str:
    return CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream")


def _upload_once(client: Any, bucket: str, key: str, data: bytes, sha256: str) -> None:
    """Upload unless the key exists; an existing object is accepted only with the same content,
    so two publishers racing on one version can never overwrite each other's files."""
    try:
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type(key),
            Metadata={"sha256": sha256},
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if not is_precondition_failed(exc):
            raise
        existing = client.head_object(Bucket=bucket, Key=key)
        if existing.get("Metadata", {}).get("sha256") != sha256 or existing["ContentLength"] != len(data):
            raise PublishConflict(
                f"s3://{bucket}/{key} exists with other content (an unfinished or concurrent publish of this "
                "version); publish under a new version, or delete that folder by hand if it is abandoned"
            ) from None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_model_dir(path: Path) -> dict[str, bytes]:
    """The version files found in a local folder (the seeds' models/ layout)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder with model files")
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name in KNOWN_FILES + OPTIONAL_FILES}


def _check_archive_holds(client: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    """Same manifest is not enough to call a version identical: the archived bytes must be too."""
    for name, data in sorted(files.items()):
        if get_bytes(client, bucket, prefix + name) != data:
            raise CorruptVersion(
                f"s3://{bucket}/{prefix}{name} differs from its manifest (edited or removed after publishing): "
                "the archived version is damaged; publish under a new version and tell whoever owns the bucket"
            )


def publish_version(
    client: Any, bucket: str, location: ModelLocation, version: str, files: dict[str, bytes]
) -> PublishResult:
    """Upload the files, then the manifest. Publishing the same content again is a no-op;
    different content under an existing version is refused (archive versions are immutable).

    A pickled model and label encoder are converted here, on the publisher's machine, to LightGBM's
    text model and a `classes` list in metadata.json (model_store.convert): serving pods never
    unpickle, so only text and JSON are uploaded (the result's `warnings` say what was converted)."""
    check_version(version)
    check_artifacts(files, version)  # before converting: a pickle of the wrong class is never unpickled
    converted = convert_pickles(files)
    for warning in converted.warnings:
        log.warning("converted", extra={"detail": warning})
    files = converted.files
    check_artifacts(files, version)
    check_loads_in_lightgbm(files)
    prefix = location.archive_prefix(version)
    manifest = Manifest.build(location.model_key, version, files, created=utc_now())

    try:
        existing = read_manifest(client, bucket, prefix)
    except ManifestError as exc:
        raise CorruptVersion(f"{exc}; remove s3://{bucket}/{prefix} by hand before publishing again") from None
    if existing is not None:
        if existing.digest == manifest.digest:
            _check_archive_holds(client, bucket, prefix, files)
            log.info("already published", extra={"model": location.model_key, "version": version})
            return PublishResult(location, version, existing.digest, created=False, warnings=tuple(converted.warnings))
        raise PublishConflict(
            f"{location.model_key} {version} is already published with different content "
            f"({existing.digest[:19]}…, yours {manifest.digest[:19]}…); archived versions are "
            "immutable: publish under a new version"
        )

    for i, (name, data) in enumerate(sorted(files.items()), 1):
        log.info(
            "uploading",
            extra={"file": name, "bytes": len(data), "step": f"{i}/{len(files)}", "to": f"s3://{bucket}/{prefix}"},
        )
        _upload_once(client, bucket, prefix + name, data, manifest.files[name].sha256)
    try:
        # Written last, and only if nobody else finished publishing this version meanwhile.
        client.put_object(
            Bucket=bucket,
            Key=prefix + MANIFEST_NAME,
            Body=manifest.to_json(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if is_precondition_failed(exc):
            raise PublishConflict(f"{location.model_key} {version} was published by someone else meanwhile") from None
        raise
    return PublishResult(location, version, manifest.digest, created=True, warnings=tuple(converted.warnings))
