"""Publishing, verifying and promoting versions against real S3 servers (moto over HTTP, SeaweedFS)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack.demo_model import DemoModel
from model_store.errors import CorruptVersion, InvalidArtifacts, PublishConflict, VersionNotFound
from model_store.layout import (
    ASSET_REGISTRY_KEY,
    FEATURE_NAMES,
    MANIFEST_NAME,
    METADATA,
    MODEL_NATIVE,
    MODEL_REGISTRY_KEY,
    ModelLocation,
    Stage,
)
from model_store.manifest import Manifest
from model_store.promotion import list_versions, promote, verify_version
from model_store.publish import publish_version
from model_store.registry import deployment_history, read_document, sync_registries

SPY = ModelLocation.of("SPY", "etf")

pytestmark = pytest.mark.s3_stores


def keys(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        out[obj["Key"][len(prefix) :]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_publish_writes_files_and_a_manifest_that_matches(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    result = publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    stored = keys(s3, bucket, "etfs/SPY/archive/v1.0/")
    assert set(stored) == set(demo_v1.files) | {MANIFEST_NAME}
    manifest = Manifest.from_json(stored[MANIFEST_NAME])
    assert manifest.digest == result.digest and result.created
    for name, data in demo_v1.files.items():
        assert stored[name] == data
        manifest.check_file(name, data)


def test_publishing_again_is_a_noop_but_other_content_is_refused(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    first = publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    again = publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    assert not again.created and again.digest == first.digest
    other = dict(demo_v2.files, **{METADATA: demo_v1.files[METADATA]})
    with pytest.raises(PublishConflict, match="immutable"):
        publish_version(s3, bucket, SPY, "v1.0", other)
    assert keys(s3, bucket, "etfs/SPY/archive/v1.0/")[MODEL_NATIVE] == demo_v1.files[MODEL_NATIVE]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({FEATURE_NAMES: b'["a", "a"]'}, "twice"),
        ({FEATURE_NAMES: b"not json"}, "not valid JSON"),
        ({METADATA: b'{"version": "v9.9"}'}, "says version"),
        ({"notes.docx": b"x"}, "unexpected files"),
        ({FEATURE_NAMES: json.dumps([f"f{i}" for i in range(84)]).encode()}, "does not match the features"),
    ],
)
def test_invalid_artifacts_are_refused_before_any_upload(
    s3: Any, bucket: str, demo_v1: DemoModel, change: dict[str, bytes], message: str
) -> None:
    with pytest.raises(InvalidArtifacts, match=message):
        publish_version(s3, bucket, SPY, "v1.0", {**demo_v1.files, **change})
    assert keys(s3, bucket, "etfs/") == {}


def test_promote_copies_the_version_and_records_it(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    published = publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    result = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    assert result.changed and result.action == "promote" and result.digest == published.digest
    assert result.stage_manifest is not None
    assert sync_registries(s3, bucket, SPY, Stage.PRODUCTION, result.stage_manifest)
    assert not sync_registries(s3, bucket, SPY, Stage.PRODUCTION, result.stage_manifest)  # converged: no write
    stage = keys(s3, bucket, "etfs/SPY/production/")
    assert {n: stage[n] for n in demo_v1.files} == demo_v1.files
    stage_manifest = Manifest.from_json(stage[MANIFEST_NAME])
    assert stage_manifest.digest == published.digest
    assert stage_manifest.extra["source"] == "etfs/SPY/archive/v1.0/"

    history = deployment_history(s3, bucket)
    assert [(h["action"], h["from_version"], h["to_version"]) for h in history] == [("promote", None, "v1.0")]
    registry, _ = read_document(s3, bucket, MODEL_REGISTRY_KEY)
    assert registry["models"]["etfs/SPY"]["production"]["digest"] == published.digest
    assets, _ = read_document(s3, bucket, ASSET_REGISTRY_KEY)
    assert assets["etfs"]["SPY"]["model_path"] == "etfs/SPY/production/"
    assert assets["etfs"]["SPY"]["status"] == "active"


def test_promote_is_idempotent(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    before = keys(s3, bucket, "")
    second = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    assert not second.changed and second.action == "none"
    assert keys(s3, bucket, "") == before


def test_upgrade_then_rollback_is_recorded_and_leaves_no_mix(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    publish_version(s3, bucket, SPY, "v1.1", demo_v2.files)
    promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    up = promote(s3, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="test")
    assert (up.action, up.previous_version) == ("promote", "v1.0")
    assert keys(s3, bucket, "etfs/SPY/production/")[MODEL_NATIVE] == demo_v2.files[MODEL_NATIVE]
    down = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    assert (down.action, down.previous_version) == ("rollback", "v1.1")
    stage = keys(s3, bucket, "etfs/SPY/production/")
    Manifest.from_json(stage[MANIFEST_NAME]).check_file(MODEL_NATIVE, stage[MODEL_NATIVE])
    assert [h["action"] for h in deployment_history(s3, bucket)] == ["promote", "promote", "rollback"]
    # the archive is untouched by all of it
    assert keys(s3, bucket, "etfs/SPY/archive/v1.1/")[MODEL_NATIVE] == demo_v2.files[MODEL_NATIVE]


def test_missing_version_names_the_published_ones_and_touches_nothing(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    before = keys(s3, bucket, "")
    with pytest.raises(VersionNotFound, match=r"v2.0 is not published.*Published versions: v1.0"):
        promote(s3, bucket, SPY, "v2.0", Stage.PRODUCTION, actor="test")
    assert keys(s3, bucket, "") == before


def test_digest_mismatch_is_refused_and_production_untouched(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    publish_version(s3, bucket, SPY, "v1.1", demo_v2.files)
    promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    s3.put_object(Bucket=bucket, Key="etfs/SPY/archive/v1.1/" + MODEL_NATIVE, Body=b"tampered")
    before = keys(s3, bucket, "etfs/SPY/production/")
    with pytest.raises(CorruptVersion, match=r"lightgbm_model.txt .* has 8 bytes"):
        promote(s3, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="test")
    with pytest.raises(CorruptVersion):
        verify_version(s3, bucket, SPY, "v1.1")
    assert keys(s3, bucket, "etfs/SPY/production/") == before


def test_hand_edited_stage_is_seen_as_drift_and_repaired(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    first = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    s3.put_object(Bucket=bucket, Key="etfs/SPY/production/" + MODEL_NATIVE, Body=b"hand edit")
    repaired = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    assert repaired.changed and repaired.action == "repair" and repaired.digest == first.digest
    assert keys(s3, bucket, "etfs/SPY/production/")[MODEL_NATIVE] == demo_v1.files[MODEL_NATIVE]


def test_stock_tickers_share_the_universal_model(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    aapl = ModelLocation.of("AAPL", "stock")
    publish_version(s3, bucket, aapl, "v1.0", demo_v1.files)
    assert ModelLocation.of("TSLA", "stock").archive_prefix("v1.0") == "stocks/universal/archive/v1.0/"
    result = promote(s3, bucket, aapl, "v1.0", Stage.PRODUCTION, actor="test")
    assert result.stage_manifest is not None
    sync_registries(s3, bucket, aapl, Stage.PRODUCTION, result.stage_manifest, tickers=["AAPL"])
    assets, _ = read_document(s3, bucket, ASSET_REGISTRY_KEY)
    assert assets["stocks"]["model_info"]["model_path"] == "stocks/universal/production/"
    assert assets["stocks"]["supported_tickers"]["AAPL"]["uses_model"] == "stocks/universal"


def test_list_versions_orders_semantically_and_flags_incomplete(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    for v in ("v1.10", "v1.2", "v1.9"):
        files = {**demo_v1.files, METADATA: json.dumps({"version": v, "classes": ["a"] * 1}).encode()}
        files[METADATA] = json.dumps({**json.loads(demo_v1.files[METADATA]), "version": v}).encode()
        publish_version(s3, bucket, SPY, v, files)
    s3.put_object(Bucket=bucket, Key="etfs/SPY/archive/v2.0/" + MODEL_NATIVE, Body=b"half uploaded")
    infos = list_versions(s3, bucket, SPY)
    assert [(i.version, i.complete) for i in infos] == [
        ("v1.2", True),
        ("v1.9", True),
        ("v1.10", True),
        ("v2.0", False),
    ]


def test_a_failed_audit_write_is_recorded_on_the_next_pass(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    from model_store.layout import DEPLOYMENT_HISTORY_KEY

    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    s3.put_object(Bucket=bucket, Key=DEPLOYMENT_HISTORY_KEY, Body=b"{broken")
    first = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    assert first.copied and not first.recorded and "not valid JSON" in (first.audit_error or "")
    assert keys(s3, bucket, "etfs/SPY/production/")[MODEL_NATIVE] == demo_v1.files[MODEL_NATIVE]
    s3.delete_object(Bucket=bucket, Key=DEPLOYMENT_HISTORY_KEY)  # someone fixes the document
    again = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    assert again.changed and again.action == "promote"
    assert [h["to_version"] for h in deployment_history(s3, bucket)] == ["v1.0"]
    assert not promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test").changed


def test_an_archive_uploaded_by_another_tool_is_promoted_once(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    published = publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    for name, data in demo_v1.files.items():  # e.g. `aws s3 cp`: no sha256 metadata on the objects
        s3.put_object(Bucket=bucket, Key="etfs/SPY/archive/v1.0/" + name, Body=data)
    assert promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test").digest == published.digest
    assert not promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test").changed


def test_a_concurrent_publish_never_overwrites_files(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    other = {**demo_v2.files, METADATA: demo_v1.files[METADATA]}
    s3.put_object(
        Bucket=bucket,
        Key="etfs/SPY/archive/v1.0/" + MODEL_NATIVE,
        Body=other[MODEL_NATIVE],
        Metadata={"sha256": "someone-else"},
    )
    with pytest.raises(PublishConflict, match="exists with other content"):
        publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    assert keys(s3, bucket, "etfs/SPY/archive/v1.0/")[MODEL_NATIVE] == other[MODEL_NATIVE]


def test_version_order_pads_missing_parts() -> None:
    from model_store.promotion import version_key

    assert version_key("v1.2") == version_key("v1.2.0") < version_key("v1.10")
    assert version_key("v1") == version_key("v1.0") < version_key("v1.0.1")
    assert version_key("v2.0-rc1") < version_key("v2.0")
