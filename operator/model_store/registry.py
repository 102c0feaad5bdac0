"""The JSON documents under metadata/: asset registry, model registry, deployment history.

Each update is a read-modify-write guarded by the object's ETag (S3 conditional writes), so two
writers never lose each other's entries, and a change that changes nothing writes nothing.

- The deployment history is an append-only audit log: every entry has an `id`, and appending an
  id that is there already is a no-op, so a move retried after any failure is recorded once.
- The registries are level-based: `sync_registries` makes them say what a stage holds, from the
  stage manifest alone, however they were damaged or whatever was missed before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from model_store.errors import RegistryError
from model_store.layout import (
    ASSET_REGISTRY_KEY,
    DEPLOYMENT_HISTORY_KEY,
    MODEL_REGISTRY_KEY,
    AssetClass,
    ModelLocation,
    Stage,
)
from model_store.manifest import Manifest
from model_store.s3 import is_not_found, is_precondition_failed

log = logging.getLogger(__name__)

Document = dict[str, Any]
_ATTEMPTS = 8
DETAILS = ("accuracy", "trained_date", "training_samples")  # from metadata.json into the asset registry


def read_document(client: Any, bucket: str, key: str) -> tuple[Document, str | None]:
    """The document and its ETag; an empty document and None when it does not exist yet."""
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_not_found(exc):
            return {}, None
        raise
    raw = obj["Body"].read()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"s3://{bucket}/{key} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"s3://{bucket}/{key} must hold a JSON object; fix or remove it")
    return doc, obj["ETag"]


def update_document(client: Any, bucket: str, key: str, change: Callable[[Document], bool]) -> bool:
    """Apply `change` (True when it changed the document) and write the document back, retrying on
    concurrent writes. Returns whether anything was written."""
    for _ in range(_ATTEMPTS):
        doc, etag = read_document(client, bucket, key)
        if not change(doc):
            return False
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=json.dumps(doc, indent=2, sort_keys=True).encode(),
                ContentType="application/json",
                **condition,
            )
            return True
        except ClientError as exc:
            if is_precondition_failed(exc):
                log.debug("concurrent write to %s, retrying", key)
                continue
            raise
    raise RegistryError(f"s3://{bucket}/{key} kept changing under us; gave up after {_ATTEMPTS} tries")


def record_once(client: Any, bucket: str, entry: dict[str, Any]) -> bool:
    """Append `entry` to the audit log unless an entry with its id is there; True when appended."""

    def append(doc: Document) -> bool:
        entries = doc.setdefault("entries", [])
        if not isinstance(entries, list):
            raise RegistryError(f"s3://{bucket}/{DEPLOYMENT_HISTORY_KEY} 'entries' must be a list; fix it")
        if any(isinstance(e, dict) and e.get("id") == entry["id"] for e in entries):
            return False
        entries.append(entry)
        return True

    try:
        return update_document(client, bucket, DEPLOYMENT_HISTORY_KEY, append)
    except (ClientError, BotoCoreError) as exc:
        raise RegistryError(f"cannot update s3://{bucket}/{DEPLOYMENT_HISTORY_KEY}: {exc}") from None


def sync_registries(
    client: Any,
    bucket: str,
    location: ModelLocation,
    stage: Stage,
    holds: Manifest,
    tickers: Iterable[str] = (),
) -> bool:
    """Make both registries say that `stage` holds the version of the stage manifest `holds`;
    for the universal stock model, `tickers` are the stock tickers it serves there. True when
    anything was written; RegistryError when a document cannot be read or written."""
    promoted = {
        "version": holds.version,
        "digest": holds.digest,
        "promoted_at": holds.extra.get("promoted_at"),
        "by": holds.extra.get("promoted_by"),
    }
    declared = sorted(set(tickers))
    if location.asset_class is AssetClass.STOCK and declared:
        promoted["tickers"] = declared

    def set_model(doc: Document) -> bool:
        stages = _section(doc, "models", bucket, MODEL_REGISTRY_KEY).setdefault(location.model_key, {})
        if stages.get(stage.value) == promoted:
            return False
        stages[stage.value] = promoted
        return True

    def set_asset(doc: Document) -> bool:
        before = json.dumps(doc, sort_keys=True)
        path = location.stage_prefix(Stage.PRODUCTION)
        if location.asset_class is AssetClass.ETF:
            entry = _section(doc, "etfs", bucket, ASSET_REGISTRY_KEY).setdefault(location.ticker, {})
            entry.update(model_type="etf_specific", model_path=path)
        else:
            stocks = _section(doc, "stocks", bucket, ASSET_REGISTRY_KEY)
            entry = stocks.setdefault("model_info", {})
            entry.update(type="universal", model_path=path, note="ONE model handles ALL stocks")
            if stage is Stage.PRODUCTION and declared:  # none declared (e.g. tmctl promote): left as they are
                stocks["supported_tickers"] = {t: {"uses_model": location.model_key} for t in declared}
        if stage is Stage.PRODUCTION:
            details = holds.extra.get("details") or {}
            for key in DETAILS:  # the version's own details, none left over from the one before
                entry.pop(key, None)
            entry.update(status="active", version=holds.version, **{k: details[k] for k in DETAILS if k in details})
        else:
            entry.setdefault("status", "staging")
        return json.dumps(doc, sort_keys=True) != before

    try:
        changed = update_document(client, bucket, MODEL_REGISTRY_KEY, set_model)
        return update_document(client, bucket, ASSET_REGISTRY_KEY, set_asset) or changed
    except (ClientError, BotoCoreError) as exc:
        raise RegistryError(f"cannot update the registries in s3://{bucket}/metadata/: {exc}") from None


def _section(doc: Document, name: str, bucket: str, key: str) -> dict[str, Any]:
    section = doc.setdefault(name, {})
    if not isinstance(section, dict):
        raise RegistryError(f"s3://{bucket}/{key} '{name}' must be a JSON object; fix or remove it")
    return section


def registered(client: Any, bucket: str, location: ModelLocation, stage: Stage) -> dict[str, Any]:
    """What the model registry says this stage holds ({} when nothing): version, digest, …"""
    doc, _ = read_document(client, bucket, MODEL_REGISTRY_KEY)
    return dict(((doc.get("models") or {}).get(location.model_key) or {}).get(stage.value) or {})


def deployment_history(client: Any, bucket: str) -> list[dict[str, Any]]:
    doc, _ = read_document(client, bucket, DEPLOYMENT_HISTORY_KEY)
    return list(doc.get("entries", []))
