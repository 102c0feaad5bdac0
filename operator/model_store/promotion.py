"""Versions, verification and promotion into a stage prefix.

Promotion: verify archive/<version>/ against its manifest, take the stage's
manifest away (the stage is then "no version" rather than a mix of two),
server-side copy every file, delete leftovers, write the stage manifest last,
and record the move in metadata/.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from model_store.errors import CorruptVersion, VersionNotFound
from model_store.layout import MANIFEST_NAME, METADATA, ModelLocation, Stage, check_version
from model_store.manifest import Manifest, ManifestError
from model_store.publish import content_type, utc_now
from model_store.registry import record_promotion, registered
from model_store.s3 import get_bytes, is_not_found, read_manifest

log = logging.getLogger(__name__)

_PARALLEL = 4


@dataclass(frozen=True)
class VersionInfo:
    version: str
    complete: bool  # a manifest is present and readable
    digest: str | None


@dataclass(frozen=True)
class PromotionResult:
    changed: bool
    action: str  # "promote", "rollback", "repair" or "none"
    version: str
    digest: str
    previous_version: str | None


def version_key(version: str) -> tuple[Any, ...]:
    """Sort key: v1.10 after v1.9, v1.2 equal to v1.2.0, a release after its -rc suffixes."""
    core, _, suffix = version.lstrip("v").partition("-")
    numbers = [int(p) for p in core.split(".")]
    return (*numbers, *[0] * (3 - len(numbers)), suffix == "", suffix)


def list_versions(client: Any, bucket: str, location: ModelLocation) -> list[VersionInfo]:
    root = location.archive_root()
    names: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root, Delimiter="/"):
        names += [p["Prefix"][len(root) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
    infos = []
    for name in sorted(names, key=_safe_version_key):
        try:
            manifest = read_manifest(client, bucket, f"{root}{name}/")
        except ManifestError:
            manifest = None
        infos.append(VersionInfo(name, manifest is not None, manifest.digest if manifest else None))
    return infos


def _safe_version_key(name: str) -> tuple[Any, ...]:
    try:
        return (0, *version_key(name))
    except ValueError:
        return (1, name)


def archived_manifest(client: Any, bucket: str, location: ModelLocation, version: str) -> Manifest:
    """The manifest of a published version; VersionNotFound (with the versions there are) if none."""
    check_version(version)
    prefix = location.archive_prefix(version)
    try:
        manifest = read_manifest(client, bucket, prefix)
    except ManifestError as exc:
        raise CorruptVersion(str(exc)) from None
    if manifest is None:
        available = [v.version for v in list_versions(client, bucket, location) if v.complete]
        raise VersionNotFound(
            f"{location.model_key} {version} is not published: s3://{bucket}/{prefix}{MANIFEST_NAME} "
            f"does not exist. Published versions: {', '.join(available) or 'none'}"
        )
    if manifest.version != version or manifest.model != location.model_key:
        raise CorruptVersion(
            f"s3://{bucket}/{prefix}{MANIFEST_NAME} describes {manifest.model} {manifest.version}, "
            f"not {location.model_key} {version}"
        )
    return manifest


def verify_files(client: Any, bucket: str, prefix: str, manifest: Manifest) -> dict[str, bytes]:
    """Download every file and check size and sha256; CorruptVersion names the first bad file."""

    def fetch(name: str) -> tuple[str, bytes]:
        data = get_bytes(client, bucket, prefix + name)
        if data is None:
            raise CorruptVersion(f"s3://{bucket}/{prefix}{name} is listed in the manifest but missing")
        try:
            manifest.check_file(name, data)
        except ManifestError as exc:
            raise CorruptVersion(f"{exc} (s3://{bucket}/{prefix}{name})") from None
        return name, data

    with ThreadPoolExecutor(_PARALLEL) as pool:
        return dict(pool.map(fetch, sorted(manifest.files)))


def verify_version(client: Any, bucket: str, location: ModelLocation, version: str) -> Manifest:
    manifest = archived_manifest(client, bucket, location, version)
    verify_files(client, bucket, location.archive_prefix(version), manifest)
    return manifest


def stage_manifest(client: Any, bucket: str, location: ModelLocation, stage: Stage) -> Manifest | None:
    try:
        return read_manifest(client, bucket, location.stage_prefix(stage))
    except ManifestError:
        return None  # an unreadable stage manifest is no version: promotion rewrites it


def _stage_holds(
    client: Any, bucket: str, location: ModelLocation, stage: Stage, manifest: Manifest, current: Manifest | None
) -> bool:
    """Cheap drift check: the stage manifest names this digest and every file's size and
    recorded sha256 (object metadata, set by the copy) still match."""
    if current is None or current.digest != manifest.digest:
        return False
    prefix = location.stage_prefix(stage)
    for name, entry in manifest.files.items():
        try:
            head = client.head_object(Bucket=bucket, Key=prefix + name)
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise
        if head["ContentLength"] != entry.size or head.get("Metadata", {}).get("sha256") != entry.sha256:
            return False
    return True


def promote(
    client: Any,
    bucket: str,
    location: ModelLocation,
    version: str,
    stage: Stage,
    actor: str,
    reason: str = "",
) -> PromotionResult:
    """Make the stage prefix hold `version`; a no-op when it already does."""
    manifest = archived_manifest(client, bucket, location, version)
    current = stage_manifest(client, bucket, location, stage)
    previous = current.version if current else None
    source = location.archive_prefix(version)
    if _stage_holds(client, bucket, location, stage, manifest, current):
        record = registered(client, bucket, location, stage)
        if record.get("digest") == manifest.digest:
            return PromotionResult(False, "none", version, manifest.digest, previous)
        # The copy finished but its record did not (or someone copied by hand): record it now.
        metadata = _json_or_empty(get_bytes(client, bucket, source + METADATA) or b"{}")
        previous = record.get("version")
        action = _action(version, previous)
        entry = _entry(location, stage, action, previous, manifest, actor, reason)
        record_promotion(client, bucket, location, stage, entry, metadata)
        return PromotionResult(True, action, version, manifest.digest, previous)

    files = verify_files(client, bucket, source, manifest)
    target = location.stage_prefix(stage)
    log.info("promoting", extra={"model": location.model_key, "version": version, "stage": stage.value})

    client.delete_object(Bucket=bucket, Key=target + MANIFEST_NAME)
    with ThreadPoolExecutor(_PARALLEL) as pool:
        list(
            pool.map(
                lambda name: _copy(client, bucket, source + name, target + name, manifest.files[name].sha256),
                sorted(manifest.files),
            )
        )
    _delete_leftovers(client, bucket, target, keep=set(manifest.files) | {MANIFEST_NAME})
    at = utc_now()
    stage_doc = manifest.with_extra(stage=stage.value, promoted_at=at, promoted_by=actor, source=source)
    client.put_object(
        Bucket=bucket, Key=target + MANIFEST_NAME, Body=stage_doc.to_json(), ContentType="application/json"
    )

    action = _action(version, previous)
    entry = _entry(location, stage, action, previous, manifest, actor, reason, at)
    record_promotion(client, bucket, location, stage, entry, _json_or_empty(files.get(METADATA, b"{}")))
    return PromotionResult(True, action, version, manifest.digest, previous)


def _action(version: str, previous: str | None) -> str:
    if previous == version:
        return "repair"
    if previous is not None and _is_older(version, previous):
        return "rollback"
    return "promote"


def _entry(
    location: ModelLocation,
    stage: Stage,
    action: str,
    previous: str | None,
    manifest: Manifest,
    actor: str,
    reason: str,
    at: str | None = None,
) -> dict[str, Any]:
    return {
        "at": at or utc_now(),
        "action": action,
        "model": location.model_key,
        "ticker": location.ticker,
        "stage": stage.value,
        "from_version": previous,
        "to_version": manifest.version,
        "digest": manifest.digest,
        "actor": actor,
        **({"reason": reason} if reason else {}),
    }


def _copy(client: Any, bucket: str, source_key: str, target_key: str, sha256: str) -> None:
    # Server-side: the bytes never leave S3. The sha256 is set from the verified manifest, so the
    # cheap drift check works for archives uploaded by other tools too.
    client.copy_object(
        Bucket=bucket,
        Key=target_key,
        CopySource={"Bucket": bucket, "Key": source_key},
        MetadataDirective="REPLACE",
        Metadata={"sha256": sha256},
        ContentType=content_type(target_key),
    )


def _delete_leftovers(client: Any, bucket: str, prefix: str, keep: set[str]) -> None:
    stale = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        stale += [o["Key"] for o in page.get("Contents", []) if o["Key"][len(prefix) :] not in keep]
    for key in stale:
        client.delete_object(Bucket=bucket, Key=key)


def _is_older(version: str, than: str) -> bool:
    try:
        return version_key(version) < version_key(than)
    except ValueError:
        return False


def _json_or_empty(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
