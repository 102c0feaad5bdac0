"""Versions, verification and promotion into a stage prefix.

A promotion is one *move* of a stage from one version to another, recorded exactly once in the
audit log whatever instant the process dies at:

1. verify archive/<version>/ against its manifest (every file's size and sha256, and that the
   files make a loadable model);
2. write the move down (metadata/intents/<model>/<stage>.json: id, from, to, action) before the
   stage is touched, so a retry after a crash continues the same move with the same id and the
   same "from" even though the stage manifest is gone by then;
3. take the stage manifest away (the stage is then "no version" rather than a mix of two),
   server-side copy every file, delete anything else under the prefix, and write the stage
   manifest last, carrying the move and the ETag S3 gave each copied file;
4. append the move to the deployment history, which ignores an id it holds already.

Whether the stage still holds a version is decided by content: the listing must show exactly the
manifest's files with the ETags of the copy (a `deep` check also hashes every file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from model_store.artifacts import check_artifacts
from model_store.errors import CorruptVersion, InvalidArtifacts, PromotionInProgress, RegistryError, VersionNotFound
from model_store.layout import MANIFEST_NAME, METADATA, ModelLocation, Stage, check_version
from model_store.manifest import Manifest, ManifestError
from model_store.publish import content_type, utc_now
from model_store.registry import DETAILS, deployment_history, read_document, record_once, registered, sync_registries
from model_store.s3 import get_bytes, lost_conditional_write, read_manifest

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# One pool for the file requests of every promotion in the process: a pool per call started and
# joined up to 9 threads per promotion (16 promotions at once: 140 threads fighting for the GIL).
# Its tasks wait on S3 only, never on each other, so sharing it cannot deadlock; its threads start
# on first use.
_FILE_REQUEST_THREADS = 32
_file_requests = ThreadPoolExecutor(_FILE_REQUEST_THREADS, thread_name_prefix="s3-files")

ACTIONS = ("promote", "rollback", "repair")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    complete: bool  # a manifest is present and readable
    digest: str | None


@dataclass(frozen=True)
class PromotionResult:
    copied: bool  # this call moved files into the stage
    recorded: bool  # this call appended the move to the deployment history
    version: str
    digest: str
    move: dict[str, Any] | None  # the audit entry of the move that brought this version (None: unknown)
    audit_error: str | None = None  # the stage holds the version but the history could not be written
    stage_manifest: Manifest | None = field(default=None, compare=False)

    @property
    def changed(self) -> bool:
        return self.copied or self.recorded

    @property
    def action(self) -> str:
        return str(self.move["action"]) if self.move and self.changed else "none"

    @property
    def previous_version(self) -> str | None:
        return self.move.get("from_version") if self.move else None


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

    return dict(_in_pool(fetch, sorted(manifest.files)))


def verify_version(client: Any, bucket: str, location: ModelLocation, version: str) -> Manifest:
    """A published version whose files match its manifest and make a servable model."""
    return verified_files(client, bucket, location, version)[0]


def _in_pool(fn: Callable[[str], _T], names: list[str]) -> list[_T]:
    """fn over names in the shared pool, in order; the first error is raised."""
    futures = [_file_requests.submit(fn, name) for name in names]
    return [future.result() for future in futures]


def verified_files(
    client: Any, bucket: str, location: ModelLocation, version: str
) -> tuple[Manifest, dict[str, bytes]]:
    """`verify_version`, with the verified files."""
    manifest = archived_manifest(client, bucket, location, version)
    files = verify_files(client, bucket, location.archive_prefix(version), manifest)
    _check_servable(files, location, version)
    return manifest, files


def _check_servable(files: dict[str, bytes], location: ModelLocation, version: str) -> None:
    try:
        check_artifacts(files, version)
    except InvalidArtifacts as exc:
        raise CorruptVersion(f"{location.model_key} {version} is not a servable version: {exc}") from None


def stage_manifest(client: Any, bucket: str, location: ModelLocation, stage: Stage) -> Manifest | None:
    try:
        return read_manifest(client, bucket, location.stage_prefix(stage))
    except ManifestError:
        return None  # an unreadable stage manifest is no version: promotion rewrites it


def stage_holds(
    client: Any, bucket: str, prefix: str, manifest: Manifest, current: Manifest | None, deep: bool = False
) -> bool:
    """The stage prefix holds exactly the version of `manifest`: its manifest names that digest,
    the listing shows exactly its files with the sizes and the ETags the copy produced (any
    rewrite changes an ETag), and with `deep` every file hashes to the manifest's sha256."""
    if current is None or (current.model, current.version, current.digest) != (
        manifest.model,
        manifest.version,
        manifest.digest,
    ):
        return False
    listing: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            listing[obj["Key"][len(prefix) :]] = (int(obj["Size"]), _etag(obj.get("ETag")))
    if set(listing) != set(manifest.files) | {MANIFEST_NAME}:
        return False
    etags = {name: _etag(etag) for name, etag in (current.extra.get("etags") or {}).items()}
    if any(listing[name][0] != entry.size for name, entry in manifest.files.items()):
        return False
    rewritten = any(etags.get(name) != listing[name][1] for name in manifest.files)
    # A rewritten file, or a stage copied before ETags were recorded: the content decides (a store
    # whose ETags are not stable across copies costs a download per check, never a false repair).
    if deep or rewritten:
        try:
            verify_files(client, bucket, prefix, manifest)
        except CorruptVersion:
            return False
    return True


def _etag(value: Any) -> str:
    return str(value or "").strip('"').lower()


def promote(
    client: Any,
    bucket: str,
    location: ModelLocation,
    version: str,
    stage: Stage,
    actor: str,
    reason: str = "",
    *,
    last_known: str | None = None,
    recorded: frozenset[str] = frozenset(),
    deep: bool = False,
) -> PromotionResult:
    """Make the stage prefix hold `version`, recording the move once.

    `last_known` is the version the caller last saw in the stage (the "from" of a repair when the
    stage manifest is gone and no registry says more); `recorded` are move ids the caller knows
    are in the history already (so a pass that changes nothing reads no history)."""
    prefix = location.stage_prefix(stage)
    staged = _file_requests.submit(stage_manifest, client, bucket, location, stage)  # both at once
    manifest = archived_manifest(client, bucket, location, version)
    current = staged.result()
    if stage_holds(client, bucket, prefix, manifest, current, deep):
        assert current is not None
        move = current.extra.get("move")
        if not isinstance(move, dict) or move.get("id") in recorded:
            return PromotionResult(False, False, version, manifest.digest, move or None, stage_manifest=current)
        done, error = _record(client, bucket, move, location.intent_key(stage))
        return PromotionResult(False, done, version, manifest.digest, move, error, current)

    source = location.archive_prefix(version)
    files = verify_files(client, bucket, source, manifest)
    _check_servable(files, location, version)
    last_move = current.extra.get("move") if current is not None else None
    if isinstance(last_move, dict) and last_move.get("id") not in recorded:
        # The stage manifest is the only record of its move until the history holds it: overwriting
        # it before then would lose that move for good.
        done, error = _record(client, bucket, last_move, location.intent_key(stage))
        if error:
            raise RegistryError(
                f"the audit log cannot record the stage's last move ({error}); fix "
                f"s3://{bucket}/metadata/deployment_history.json before the next move"
            )
    move, intent_etag = _intended_move(client, bucket, location, stage, manifest, current, last_known, actor, reason)
    log.info("promoting", extra={"model": location.model_key, "version": version, "stage": stage.value})

    client.delete_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)
    etags = dict(
        _in_pool(
            lambda name: (name, _copy(client, bucket, source + name, prefix + name, manifest.files[name].sha256)),
            sorted(manifest.files),
        )
    )
    _delete_leftovers(client, bucket, prefix, keep=set(manifest.files) | {MANIFEST_NAME})
    metadata = _json_or_empty(files.get(METADATA, b"{}"))
    stage_doc = manifest.with_extra(
        stage=stage.value,
        promoted_at=move["at"],
        promoted_by=actor,
        source=source,
        move=move,
        etags=etags,
        details={k: metadata[k] for k in DETAILS if k in metadata},
    )
    client.put_object(
        Bucket=bucket, Key=prefix + MANIFEST_NAME, Body=stage_doc.to_json(), ContentType="application/json"
    )
    done, error = _record(client, bucket, move, location.intent_key(stage), intent_etag)
    return PromotionResult(True, done, version, manifest.digest, move, error, stage_doc)


def promote_and_register(
    client: Any,
    bucket: str,
    location: ModelLocation,
    version: str,
    stage: Stage,
    actor: str,
    reason: str = "",
    tickers: Iterable[str] = (),
) -> PromotionResult:
    """`promote`, then bring the registries to what the stage holds (for callers without a status
    to report a registry problem in: RegistryError is raised after the stage was moved)."""
    result = promote(client, bucket, location, version, stage, actor, reason)
    if result.stage_manifest is not None:
        sync_registries(client, bucket, location, stage, result.stage_manifest, tickers)
    return result


def _intended_move(
    client: Any,
    bucket: str,
    location: ModelLocation,
    stage: Stage,
    manifest: Manifest,
    current: Manifest | None,
    last_known: str | None,
    actor: str,
    reason: str,
) -> tuple[dict[str, Any], str | None]:
    """The move this promotion performs and the ETag of its intent (None: not written by this call):
    the one written down already if a previous attempt at the same version died half-way, else a
    new one, written down before the stage is touched.

    A completed move drops its intent, so there is usually none: the new move is written at once,
    on the condition that no intent exists (fenced as below), and only a refusal costs the read."""
    key = location.intent_key(stage)

    def new_move(previous: str | None) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "at": utc_now(),
            "action": move_action(manifest.version, previous),
            "model": location.model_key,
            "ticker": location.ticker,
            "stage": stage.value,
            "from_version": previous,
            "to_version": manifest.version,
            "digest": manifest.digest,
            "actor": actor,
            **({"reason": reason} if reason else {}),
        }

    def previous_without_intent() -> str | None:
        return (
            current.version
            if current is not None
            else _registered_version(client, bucket, location, stage) or last_known
        )

    move = new_move(previous_without_intent())
    written = _write_intent(client, bucket, key, move, None)
    if written is not None:
        return move, written
    intent, etag = _read_intent(client, bucket, key)
    if intent.get("id") and (
        (current is not None and (current.extra.get("move") or {}).get("id") == intent["id"])
        or (current is None and _in_history(client, bucket, str(intent["id"])))
    ):
        intent = {}  # the move it wrote down completed (its removal was lost): not a move to resume
    if (
        intent.get("id")
        and intent.get("action") in ACTIONS
        and (intent.get("digest"), intent.get("to_version")) == (manifest.digest, manifest.version)
    ):
        return intent, etag
    if intent.get("id") and current is None:  # an unfinished move to another version: the stage last held its "from"
        move = new_move(intent.get("from_version"))
    written = _write_intent(client, bucket, key, move, etag)
    if written is None:
        raise PromotionInProgress(
            f"another move of {location.model_key} {stage.value} started at the same time "
            f"(s3://{bucket}/{key}); retrying"
        )
    return move, written


def _write_intent(client: Any, bucket: str, key: str, move: dict[str, Any], etag: str | None) -> str | None:
    """Write the move down over the intent with `etag` (None: over no intent), fenced, so that two
    writers starting moves of one stage at once cannot both go ahead. Its ETag, or None when
    another writer got there first."""
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        body = json.dumps(move, indent=2).encode()
        written = client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **condition)
    except ClientError as exc:
        if lost_conditional_write(exc):
            return None
        raise
    return str(written.get("ETag") or "")  # "" from a store that gives no ETag: _record reads it


def _read_intent(client: Any, bucket: str, key: str) -> tuple[dict[str, Any], str | None]:
    # An unreadable intent counts as none (the move it described is found again from the stage).
    return read_document(client, bucket, key, parse=lambda raw, _bucket, _key: _json_or_empty(raw))


def _in_history(client: Any, bucket: str, move_id: str) -> bool:
    try:
        return any(isinstance(e, dict) and e.get("id") == move_id for e in deployment_history(client, bucket))
    except RegistryError:
        return False  # unreadable: resuming the move is the safe side (its id is recorded once)


def _registered_version(client: Any, bucket: str, location: ModelLocation, stage: Stage) -> str | None:
    try:
        version = registered(client, bucket, location, stage).get("version")
    except RegistryError:
        return None
    return str(version) if version else None


def _record(
    client: Any, bucket: str, move: dict[str, Any], intent_key: str, intent_etag: str | None = None
) -> tuple[bool, str | None]:
    """Append the move to the history, then drop its intent, whether this call appended the move or
    an attempt that died before dropping the intent did (a recorded move left written down would
    be taken up again by the next move to the same digest, e.g. a repair, which would then go
    unrecorded under the old id). A failure is returned, not raised: the stage holds the version
    already, and the next pass records it.

    The delete is conditional on the intent's ETag (`intent_etag` when this call wrote it, else
    read here), so an intent another writer put there since is never dropped."""
    try:
        done = record_once(client, bucket, move)
    except RegistryError as exc:
        return False, str(exc)
    # In the history now (just added, or found there): its intent, if still there, is spent.
    with contextlib.suppress(ClientError, BotoCoreError):
        if not intent_etag:
            intent, intent_etag = _read_intent(client, bucket, intent_key)
            if intent.get("id") != move.get("id"):
                return done, None
        if intent_etag:
            client.delete_object(Bucket=bucket, Key=intent_key, IfMatch=intent_etag)
    return done, None


def move_action(version: str, previous: str | None) -> str:
    if previous == version:
        return "repair"
    if previous is not None and _is_older(version, previous):
        return "rollback"
    return "promote"


def _copy(client: Any, bucket: str, source_key: str, target_key: str, sha256: str) -> str:
    """Server-side copy (the bytes never leave S3); returns the new object's ETag. The sha256 is
    set from the verified manifest, for readers that check object metadata."""
    response = client.copy_object(
        Bucket=bucket,
        Key=target_key,
        CopySource={"Bucket": bucket, "Key": source_key},
        MetadataDirective="REPLACE",
        Metadata={"sha256": sha256},
        ContentType=content_type(target_key),
    )
    return str(response["CopyObjectResult"]["ETag"])


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
