"""A move of a stage is recorded exactly once, with the right from/to, wherever it is interrupted.

The process "dies" at every S3 write of a promotion in turn (a wrapper over the real client that
raises at the k-th write, as SIGKILL would stop it there), then a fresh pass runs to completion.
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

import joblib
import pytest

from devstack.demo_model import DemoModel
from model_store.errors import CorruptVersion, InvalidArtifacts
from model_store.layout import (
    ASSET_REGISTRY_KEY,
    DEPLOYMENT_HISTORY_KEY,
    INTENTS_PREFIX,
    MANIFEST_NAME,
    METADATA,
    MODEL_NATIVE,
    MODEL_PICKLE,
    MODEL_REGISTRY_KEY,
    ModelLocation,
    Stage,
)
from model_store.manifest import Manifest
from model_store.promotion import promote
from model_store.publish import publish_version
from model_store.registry import deployment_history, read_document, sync_registries

SPY = ModelLocation.of("SPY", "etf")
PROD = "etfs/SPY/production/"
_WRITES = ("put_object", "copy_object", "delete_object")

pytestmark = pytest.mark.s3_stores


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no except clause catches it."""


class DiesAtWrite:
    def __init__(self, client: Any, at: int) -> None:
        self._client, self._at, self.writes = client, at, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in _WRITES:
            return attr

        def write(**kwargs: Any) -> Any:
            self.writes += 1
            if self.writes == self._at:
                raise Killed(f"{name} {kwargs.get('Key')}")
            return attr(**kwargs)

        return write


def stage_files(s3: Any, bucket: str) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=PROD).get("Contents", [])
    return {o["Key"][len(PROD) :]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def moves(s3: Any, bucket: str) -> list[tuple[str, str | None, str]]:
    return [(e["action"], e["from_version"], e["to_version"]) for e in deployment_history(s3, bucket)]


def same_size_edit(data: bytes) -> bytes:
    edited = bytearray(data)
    edited[-2] = ord("7") if edited[-2] != ord("7") else ord("8")
    return bytes(edited)


@pytest.mark.parametrize("target", ["v1.1", "v1.0"])
def test_a_move_killed_at_any_write_is_recorded_once_with_the_right_versions(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel, target: str
) -> None:
    """v1.1 in production; the move to `target` (a repair of v1.1 as a rollback probe, or v1.0)."""
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    publish_version(s3, bucket, SPY, "v1.1", demo_v2.files)
    promote(s3, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="setup")
    s3.put_object(Bucket=bucket, Key=PROD + "stray.bin", Body=b"x")  # drift, so a v1.1 pass is a repair
    expected = ("repair", "v1.1", "v1.1") if target == "v1.1" else ("rollback", "v1.1", "v1.0")
    files = demo_v2.files if target == "v1.1" else demo_v1.files
    total = 0
    at = 1
    while True:
        before = len(deployment_history(s3, bucket))
        dying = DiesAtWrite(s3, at)
        try:
            promote(dying, bucket, SPY, target, Stage.PRODUCTION, actor="operator", last_known="v1.1")
        except Killed:
            pass
        else:
            total = dying.writes
            break
        result = promote(s3, bucket, SPY, target, Stage.PRODUCTION, actor="operator", last_known="v1.1")
        assert moves(s3, bucket)[before:] == [expected], f"killed at write {at}"
        assert {n: stage_files(s3, bucket)[n] for n in files} == files
        assert set(stage_files(s3, bucket)) == set(files) | {MANIFEST_NAME}
        assert result.move is not None and result.move["to_version"] == target
        assert not intents(s3, bucket), f"killed at write {at}: the recorded move is still written down"
        # and the pass after that changes nothing
        assert not promote(s3, bucket, SPY, target, Stage.PRODUCTION, actor="operator").changed
        # back to v1.1 with drift for the next instant
        promote(s3, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="setup")
        s3.put_object(Bucket=bucket, Key=PROD + "stray.bin", Body=b"x")
        at += 1
    assert total >= 8 and at == total + 1  # every write of the move was an instant of death


def intents(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=INTENTS_PREFIX).get("Contents", [])]


class DiesDroppingTheIntent:
    """Dies at the DELETE of the intent: the move is in the history, its intent is still there."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != "delete_object":
            return attr

        def delete(**kwargs: Any) -> Any:
            if kwargs["Key"].startswith(INTENTS_PREFIX):
                raise Killed(kwargs["Key"])
            return attr(**kwargs)

        return delete


@pytest.mark.parametrize("leftover", ["retry-after-kill", "intent-put-back"])
def test_a_recorded_move_left_written_down_never_swallows_a_later_repair(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel, leftover: str
) -> None:
    """v1.0 -> v1.1 -> rollback to v1.0, whose intent outlives its record (killed before dropping
    it, or a DELETE that never landed); then the stage manifest is deleted: the repair is a new
    move, logged as repair v1.0 -> v1.0, not the old rollback's id taken up again (and lost)."""
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    publish_version(s3, bucket, SPY, "v1.1", demo_v2.files)
    promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="setup")
    promote(s3, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="setup")
    if leftover == "retry-after-kill":
        with pytest.raises(Killed):
            promote(DiesDroppingTheIntent(s3), bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
        assert intents(s3, bucket)
        again = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
        assert not again.copied and not again.recorded
        assert not intents(s3, bucket)  # the retry found the move recorded and dropped its intent
    else:
        done = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
        assert done.move is not None
        s3.put_object(Bucket=bucket, Key=SPY.intent_key(Stage.PRODUCTION), Body=json.dumps(done.move).encode())
    rollback = ("rollback", "v1.1", "v1.0")
    assert moves(s3, bucket) == [("promote", None, "v1.0"), ("promote", "v1.0", "v1.1"), rollback]

    s3.delete_object(Bucket=bucket, Key=PROD + MANIFEST_NAME)
    repaired = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator", last_known="v1.0")
    assert (repaired.action, repaired.previous_version, repaired.recorded) == ("repair", "v1.0", True)
    assert moves(s3, bucket)[-2:] == [rollback, ("repair", "v1.0", "v1.0")]
    assert not intents(s3, bucket)


def test_a_deleted_stage_manifest_is_repaired_and_logged_as_a_repair(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    done = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="setup")
    assert done.stage_manifest is not None
    sync_registries(s3, bucket, SPY, Stage.PRODUCTION, done.stage_manifest)
    s3.delete_object(Bucket=bucket, Key=PROD + MANIFEST_NAME)
    again = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
    assert (again.action, again.previous_version) == ("repair", "v1.0")
    assert moves(s3, bucket) == [("promote", None, "v1.0"), ("repair", "v1.0", "v1.0")]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s3, b: s3.put_object(Bucket=b, Key=PROD + "extra.json", Body=b"{}"), id="stray-file"),
        pytest.param(
            lambda s3, b: s3.put_object(  # same size, same x-amz-meta-sha256, other bytes
                Bucket=b,
                Key=PROD + MODEL_NATIVE,
                Body=same_size_edit(s3.get_object(Bucket=b, Key=PROD + MODEL_NATIVE)["Body"].read()),
                Metadata=s3.head_object(Bucket=b, Key=PROD + MODEL_NATIVE)["Metadata"],
            ),
            id="rewritten-same-metadata",
        ),
    ],
)
def test_drift_is_found_by_content(s3: Any, bucket: str, demo_v1: DemoModel, edit: Any) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="setup")
    edit(s3, bucket)
    repaired = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
    assert (repaired.copied, repaired.action) == (True, "repair")
    assert set(stage_files(s3, bucket)) == set(demo_v1.files) | {MANIFEST_NAME}


def test_a_same_size_edit_is_found_by_the_deep_check(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="setup")
    manifest = Manifest.from_json(stage_files(s3, bucket)[MANIFEST_NAME])
    # rewrite the file and its recorded ETag, as a careful hand edit of the manifest would
    etag = s3.put_object(Bucket=bucket, Key=PROD + MODEL_NATIVE, Body=same_size_edit(demo_v1.files[MODEL_NATIVE]))[
        "ETag"
    ]
    forged = manifest.with_extra(etags={**manifest.extra["etags"], MODEL_NATIVE: etag})
    s3.put_object(Bucket=bucket, Key=PROD + MANIFEST_NAME, Body=forged.to_json())
    assert not promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator").changed
    deep = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator", deep=True)
    assert deep.action == "repair" and stage_files(s3, bucket)[MODEL_NATIVE] == demo_v1.files[MODEL_NATIVE]


def test_a_broken_registry_never_blocks_the_move_and_converges_once_fixed(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    from model_store.errors import RegistryError

    v10_in_production_v11_published(s3, bucket, demo_v1, demo_v2)
    for key in (MODEL_REGISTRY_KEY, ASSET_REGISTRY_KEY):
        s3.put_object(Bucket=bucket, Key=key, Body=b"[not an object")
    up = promote(s3, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="operator")
    assert up.copied and up.recorded and up.stage_manifest is not None
    with pytest.raises(RegistryError, match="not valid JSON"):
        sync_registries(s3, bucket, SPY, Stage.PRODUCTION, up.stage_manifest)
    for key in (MODEL_REGISTRY_KEY, ASSET_REGISTRY_KEY):
        s3.delete_object(Bucket=bucket, Key=key)  # someone fixes them
    assert sync_registries(s3, bucket, SPY, Stage.PRODUCTION, up.stage_manifest)
    models, _ = read_document(s3, bucket, MODEL_REGISTRY_KEY)
    assets, _ = read_document(s3, bucket, ASSET_REGISTRY_KEY)
    assert models["models"]["etfs/SPY"]["production"]["version"] == "v1.1"
    assert assets["etfs"]["SPY"]["version"] == "v1.1"
    assert moves(s3, bucket) == [("promote", None, "v1.0"), ("promote", "v1.0", "v1.1")]


def test_republishing_over_a_tampered_archive_is_refused(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    s3.put_object(Bucket=bucket, Key="etfs/SPY/archive/v1.0/" + MODEL_NATIVE, Body=b"tampered")
    with pytest.raises(CorruptVersion, match="differs from its manifest"):
        publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)


def _pickled(obj: Any) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    return buf.getvalue()


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this ran",))


@pytest.mark.parametrize(
    ("files_change", "message"),
    [
        (lambda f: {**f, MODEL_NATIVE: b"tree\nversion=v4\nnot a model at all\n"}, "does not load as a LightGBM model"),
        (lambda f: {k: v for k, v in f.items() if k != MODEL_NATIVE} | {MODEL_PICKLE: _pickled({"a": 1})},
         "is not a pickled LightGBM model"),
        (lambda f: {k: v for k, v in f.items() if k != MODEL_NATIVE} | {MODEL_PICKLE: pickle.dumps(_Payload())},
         "builds builtins print"),
    ],
)  # fmt: skip
def test_a_model_file_that_is_no_lightgbm_model_is_refused_at_publish(
    s3: Any, bucket: str, demo_v1: DemoModel, files_change: Any, message: str
) -> None:
    with pytest.raises(InvalidArtifacts, match=message):
        publish_version(s3, bucket, SPY, "v1.0", files_change(demo_v1.files))
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="etfs/SPY/")


def test_a_version_uploaded_by_hand_that_is_no_model_is_refused_at_promotion(
    s3: Any, bucket: str, demo_v1: DemoModel
) -> None:
    files = {**demo_v1.files, MODEL_NATIVE: b"tree\nversion=v4\ngarbage\n"}
    manifest = Manifest.build("etfs/SPY", "v1.0", files, created="2026-01-01T00:00:00Z")
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"etfs/SPY/archive/v1.0/{name}", Body=data)
    s3.put_object(Bucket=bucket, Key="etfs/SPY/archive/v1.0/" + MANIFEST_NAME, Body=manifest.to_json())
    with pytest.raises(CorruptVersion, match="not a servable version"):
        promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=PROD)


def test_an_intent_whose_removal_was_lost_never_hides_a_later_repair(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    done = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="setup")
    assert done.move is not None
    s3.put_object(Bucket=bucket, Key=SPY.intent_key(Stage.PRODUCTION), Body=json.dumps(done.move).encode())
    s3.put_object(Bucket=bucket, Key=PROD + "stray.bin", Body=b"x")
    repaired = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
    assert (repaired.action, repaired.previous_version) == ("repair", "v1.0")
    assert moves(s3, bucket) == [("promote", None, "v1.0"), ("repair", "v1.0", "v1.0")]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="metadata/intents/")


def test_no_move_overwrites_one_the_history_has_not_recorded(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    from model_store.errors import RegistryError

    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    publish_version(s3, bucket, SPY, "v1.1", demo_v2.files)
    first = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="setup")
    assert first.move is not None
    s3.put_object(Bucket=bucket, Key=DEPLOYMENT_HISTORY_KEY, Body=b"{broken")
    # the operator knows from its status that the v1.0 move is recorded
    up = promote(s3, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="operator", recorded=frozenset({first.move["id"]}))
    assert up.copied and up.audit_error
    with pytest.raises(RegistryError, match="cannot record the stage's last move"):
        promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
    assert Manifest.from_json(stage_files(s3, bucket)[MANIFEST_NAME]).version == "v1.1"  # still serving v1.1
    s3.delete_object(Bucket=bucket, Key=DEPLOYMENT_HISTORY_KEY)  # fixed (emptied) by hand
    down = promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="operator")
    assert down.action == "rollback"
    # (the setup's entry went with the document emptied by hand; both moves since are there)
    assert moves(s3, bucket) == [("promote", "v1.0", "v1.1"), ("rollback", "v1.1", "v1.0")]


def test_the_same_files_under_another_version_name_are_a_move(s3: Any, bucket: str, demo_v1: DemoModel) -> None:
    metadata = {k: v for k, v in json.loads(demo_v1.files[METADATA]).items() if k != "version"}
    files = {**demo_v1.files, METADATA: json.dumps(metadata).encode()}  # no version in metadata
    publish_version(s3, bucket, SPY, "v2.0-rc1", files)
    publish_version(s3, bucket, SPY, "v2.0", files)
    promote(s3, bucket, SPY, "v2.0-rc1", Stage.PRODUCTION, actor="setup")
    final = promote(s3, bucket, SPY, "v2.0", Stage.PRODUCTION, actor="operator")
    assert final.copied and (final.action, final.previous_version) == ("promote", "v2.0-rc1")
    assert Manifest.from_json(stage_files(s3, bucket)[MANIFEST_NAME]).version == "v2.0"


def test_a_stock_promotion_without_declared_tickers_keeps_the_registered_ones(
    s3: Any, bucket: str, demo_v1: DemoModel
) -> None:
    stocks = ModelLocation.of("AAPL", "stock")
    publish_version(s3, bucket, stocks, "v1.0", demo_v1.files)
    result = promote(s3, bucket, stocks, "v1.0", Stage.PRODUCTION, actor="setup")
    assert result.stage_manifest is not None
    sync_registries(s3, bucket, stocks, Stage.PRODUCTION, result.stage_manifest, ["AAPL", "MSFT"])
    sync_registries(s3, bucket, stocks, Stage.PRODUCTION, result.stage_manifest)  # e.g. tmctl promote
    assets, _ = read_document(s3, bucket, ASSET_REGISTRY_KEY)
    assert sorted(assets["stocks"]["supported_tickers"]) == ["AAPL", "MSFT"]


def v10_in_production_v11_published(s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel) -> Any:
    """v1.0 and v1.1 published, v1.0 promoted to production: the promotion's result."""
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    publish_version(s3, bucket, SPY, "v1.1", demo_v2.files)
    return promote(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="setup")


class Recording:
    """The client's S3 requests as (operation, key, conditional headers), in order."""

    def __init__(self, client: Any) -> None:
        self.sent: list[tuple[str, str, dict[str, str]]] = []
        client.meta.events.register("before-send.s3", self._saw)

    def _saw(self, request: Any, event_name: str = "", **_: Any) -> None:
        key = request.url.split("?", 1)[0].split("/", 4)[-1]  # path-style: http://host/bucket/key
        conditions = {k: v for k, v in request.headers.items() if k.lower() in ("if-match", "if-none-match")}
        self.sent.append((event_name.rsplit(".", 1)[-1], key, {k.lower(): str(v) for k, v in conditions.items()}))

    def on(self, key: str) -> list[tuple[str, dict[str, str]]]:
        return [(operation, conditions) for operation, sent_key, conditions in self.sent if sent_key == key]


def test_a_move_writes_its_intent_without_reading_it_and_drops_it_on_its_etag(
    s3_server: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    """The usual move finds no intent (the last one dropped its own): written on If-None-Match *
    with no read first, and dropped on the ETag the write gave, not read again."""
    s3 = s3_server.client(bucket)
    first = v10_in_production_v11_published(s3, bucket, demo_v1, demo_v2)
    assert first.move is not None
    client = s3_server.client(bucket)
    recording = Recording(client)
    # as the operator does: its status names the moves the history holds
    recorded = frozenset({first.move["id"]})
    assert promote(client, bucket, SPY, "v1.1", Stage.PRODUCTION, actor="operator", recorded=recorded).copied
    on_intent = recording.on(SPY.intent_key(Stage.PRODUCTION))
    assert [(operation, sorted(conditions)) for operation, conditions in on_intent] == [
        ("PutObject", ["if-none-match"]),
        ("DeleteObject", ["if-match"]),
    ]
    assert not intents(s3, bucket)
    assert moves(s3, bucket) == [("promote", None, "v1.0"), ("promote", "v1.0", "v1.1")]


class OverwritesTheIntentOnceWritten:
    """Another writer puts its own intent right after ours lands (as a second replica would)."""

    def __init__(self, client: Any, key: str, theirs: bytes) -> None:
        self._client, self._key, self._theirs = client, key, theirs

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != "put_object":
            return attr

        def put(**kwargs: Any) -> Any:
            answer = attr(**kwargs)
            if kwargs["Key"] == self._key and kwargs["Body"] != self._theirs:
                self._client.put_object(Bucket=kwargs["Bucket"], Key=self._key, Body=self._theirs)
            return answer

        return put


def test_an_intent_another_writer_put_since_is_never_dropped(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    v10_in_production_v11_published(s3, bucket, demo_v1, demo_v2)
    key = SPY.intent_key(Stage.PRODUCTION)
    theirs = json.dumps({"id": "theirs", "action": "promote", "to_version": "v1.1"}).encode()
    promote(OverwritesTheIntentOnceWritten(s3, key, theirs), bucket, SPY, "v1.1", Stage.PRODUCTION, actor="operator")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == theirs  # the conditional delete left it
