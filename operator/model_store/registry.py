"""The JSON documents under metadata/: asset registry, model registry, deployment history.

Each update is a read-modify-write guarded by the object's ETag (S3 conditional
writes), so two writers never lose each other's entries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from model_store.errors import RegistryError
from model_store.layout import (
    ASSET_REGISTRY_KEY,
    DEPLOYMENT_HISTORY_KEY,
    MODEL_REGISTRY_KEY,
    AssetClass,
    ModelLocation,
    Stage,
)
from model_store.s3 import is_not_found, is_precondition_failed

log = logging.getLogger(__name__)

Document = dict[str, Any]
_ATTEMPTS = 8


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
    except json.JSONDecodeError as exc:
        raise RegistryError(f"s3://{bucket}/{key} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"s3://{bucket}/{key} must hold a JSON object; fix or remove it")
    return doc, obj["ETag"]


def update_document(client: Any, bucket: str, key: str, change: Callable[[Document], None]) -> Document:
    """Apply `change` to the document in place and write it back, retrying on concurrent writes."""
    for _ in range(_ATTEMPTS):
        doc, etag = read_document(client, bucket, key)
        change(doc)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=json.dumps(doc, indent=2, sort_keys=True).encode(),
                ContentType="application/json",
                **condition,
            )
            return doc
        except ClientError as exc:
            if is_precondition_failed(exc):
                log.debug("concurrent write to %s, retrying", key)
                continue
            raise
    raise RegistryError(f"s3://{bucket}/{key} kept changing under us; gave up after {_ATTEMPTS} tries")


def record_promotion(
    client: Any,
    bucket: str,
    location: ModelLocation,
    stage: Stage,
    entry: dict[str, Any],
    metadata: dict[str, Any],
) -> None:
    """Append `entry` to the audit log and point the registries at the new version."""

    def set_model(doc: Document) -> None:
        stages = doc.setdefault("models", {}).setdefault(location.model_key, {})
        stages[stage.value] = {
            "version": entry["to_version"],
            "digest": entry["digest"],
            "promoted_at": entry["at"],
            "by": entry["actor"],
        }

    def set_asset(doc: Document) -> None:
        path = location.stage_prefix(Stage.PRODUCTION)
        details = {k: metadata[k] for k in ("accuracy", "trained_date", "training_samples") if k in metadata}
        if location.asset_class is AssetClass.ETF:
            etf = doc.setdefault("etfs", {}).setdefault(location.ticker, {})
            etf.update(model_type="etf_specific", model_path=path)
            if stage is Stage.PRODUCTION:
                etf.update(status="active", version=entry["to_version"], **details)
            else:
                etf.setdefault("status", "staging")
        else:
            stocks = doc.setdefault("stocks", {})
            info = stocks.setdefault("model_info", {})
            info.update(type="universal", model_path=path, note="ONE model handles ALL stocks")
            if stage is Stage.PRODUCTION:
                info.update(status="active", version=entry["to_version"], **details)
            else:
                info.setdefault("status", "staging")
            tickers = stocks.setdefault("supported_tickers", {})
            tickers.setdefault(location.ticker, {})["uses_model"] = location.model_key

    record_event(client, bucket, entry)
    update_document(client, bucket, MODEL_REGISTRY_KEY, set_model)
    update_document(client, bucket, ASSET_REGISTRY_KEY, set_asset)


def registered(client: Any, bucket: str, location: ModelLocation, stage: Stage) -> dict[str, Any]:
    """What the model registry says this stage holds ({} when nothing): version, digest, …"""
    doc, _ = read_document(client, bucket, MODEL_REGISTRY_KEY)
    return dict(((doc.get("models") or {}).get(location.model_key) or {}).get(stage.value) or {})


def deployment_history(client: Any, bucket: str) -> list[dict[str, Any]]:
    doc, _ = read_document(client, bucket, DEPLOYMENT_HISTORY_KEY)
    return list(doc.get("entries", []))


def record_event(client: Any, bucket: str, entry: dict[str, Any]) -> None:
    """Append an entry that changes no stage (e.g. a model archived)."""
    update_document(client, bucket, DEPLOYMENT_HISTORY_KEY, lambda d: d.setdefault("entries", []).append(entry))
