"""Group commit of the metadata documents: many concurrent updates, one read and one write each
batch, every change recorded exactly once, and a document changed by someone else seen at once;
under load a document is written at most once per interval, and a lone update or a read never waits.
Against moto and SeaweedFS: the batching stands on the store's conditional writes and reads."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devstack.s3_servers import S3Server
from model_store import registry
from model_store.errors import RegistryError
from model_store.layout import DEPLOYMENT_HISTORY_KEY, MODEL_REGISTRY_KEY, ModelLocation, Stage
from model_store.registry import deployment_history, read_document, record_once, registered, update_document

pytestmark = pytest.mark.s3_stores


def counting_client(server: S3Server, bucket: str) -> tuple[Any, Counter[str]]:
    client = server.client(bucket)
    sent: Counter[str] = Counter()
    guard = threading.Lock()

    def count(event_name: str = "", **_: Any) -> None:
        with guard:
            sent[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-send.s3", count)
    return client, sent


def entry(i: int) -> dict[str, Any]:
    return {"id": f"move-{i}", "action": "promote", "model": f"etfs/T{i}", "to_version": "v1.1"}


def test_concurrent_appends_are_each_recorded_once_in_fewer_writes(s3_server: S3Server, bucket: str) -> None:
    client, sent = counting_client(s3_server, bucket)
    start = threading.Barrier(32)

    def append(i: int) -> list[bool]:
        start.wait()
        return [record_once(client, bucket, entry(i)), record_once(client, bucket, entry(i))]

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(append, range(32)))
    assert all(first and not again for first, again in outcomes)  # True once, then the id is there
    ids = [e["id"] for e in deployment_history(client, bucket)]
    assert sorted(ids) == sorted(f"move-{i}" for i in range(32))
    assert sent["PutObject"] < 32, f"{sent['PutObject']} writes for 32 concurrent appends: no batching"


def test_a_writer_in_another_process_is_neither_lost_nor_overwritten(s3_server: S3Server, bucket: str) -> None:
    ours, _ = counting_client(s3_server, bucket)
    theirs = s3_server.client(bucket)  # no shared committer
    assert record_once(ours, bucket, entry(1))
    assert record_once(theirs, bucket, entry(2))  # our cached ETag is stale now
    assert record_once(ours, bucket, entry(3))
    assert [e["id"] for e in deployment_history(ours, bucket)] == ["move-1", "move-2", "move-3"]


def test_an_unchanged_document_is_read_without_its_body(s3_server: S3Server, bucket: str) -> None:
    client, _ = counting_client(s3_server, bucket)
    assert update_document(client, bucket, MODEL_REGISTRY_KEY, lambda doc: doc.setdefault("models", {}) == {})
    bodies: list[int] = []
    client.meta.events.register("after-call.s3.GetObject", lambda http_response, **_: bodies.append(
        len(http_response.content or b"")))  # fmt: skip
    assert not update_document(client, bucket, MODEL_REGISTRY_KEY, lambda doc: False)
    assert bodies == [0]  # 304 Not Modified: what we wrote last is what S3 holds


def test_a_document_broken_by_hand_is_reported_and_then_repaired(s3_server: S3Server, bucket: str) -> None:
    client, _ = counting_client(s3_server, bucket)
    assert record_once(client, bucket, entry(1))
    client.put_object(Bucket=bucket, Key=DEPLOYMENT_HISTORY_KEY, Body=b"[not an object")
    with pytest.raises(RegistryError, match="not valid JSON"):
        record_once(client, bucket, entry(2))
    client.delete_object(Bucket=bucket, Key=DEPLOYMENT_HISTORY_KEY)
    assert record_once(client, bucket, entry(2))
    doc, _ = read_document(client, bucket, DEPLOYMENT_HISTORY_KEY)
    assert [e["id"] for e in doc["entries"]] == ["move-2"]


def test_one_callers_error_is_its_own(s3_server: S3Server, bucket: str) -> None:
    client, _ = counting_client(s3_server, bucket)
    start = threading.Barrier(8)

    def change(i: int) -> bool:
        start.wait()

        def apply(doc: dict[str, Any]) -> bool:
            if i == 3:
                raise RegistryError("caller 3 refuses")
            doc.setdefault("seen", []).append(i)
            return True

        try:
            return update_document(client, bucket, MODEL_REGISTRY_KEY, apply)
        except RegistryError:
            return False

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(change, range(8)))
    assert results == [i != 3 for i in range(8)]
    doc, _ = read_document(client, bucket, MODEL_REGISTRY_KEY)
    assert sorted(doc["seen"]) == [0, 1, 2, 4, 5, 6, 7]


def test_a_failed_write_is_not_remembered_as_written(s3_server: S3Server, bucket: str) -> None:
    client, _ = counting_client(s3_server, bucket)
    assert record_once(client, bucket, entry(1))
    failing = {"on": True}

    def refuse(**_: Any) -> None:
        if failing["on"]:
            raise ConnectionError("S3 went away")

    client.meta.events.register("before-send.s3.PutObject", refuse)
    with pytest.raises(ConnectionError):
        record_once(client, bucket, entry(2))
    failing["on"] = False
    assert record_once(client, bucket, entry(2))  # not "already there": it never reached S3
    assert [e["id"] for e in deployment_history(client, bucket)] == ["move-1", "move-2"]


def test_a_change_to_the_document_last_written_here_is_written_without_a_read(s3_server: S3Server, bucket: str) -> None:
    client, sent = counting_client(s3_server, bucket)
    assert record_once(client, bucket, entry(1))
    before = Counter(sent)
    assert record_once(client, bucket, entry(2))
    assert sent - before == Counter({"PutObject": 1})  # If-Match on the ETag of our last write
    assert [e["id"] for e in deployment_history(client, bucket)] == ["move-1", "move-2"]


def test_a_stream_of_updates_shares_few_writes_and_each_is_recorded_once(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in the operator under load: passes that each append one move now and then, not all at once.
    monkeypatch.setattr(registry, "MIN_WRITE_INTERVAL", 0.2)
    client, sent = counting_client(s3_server, bucket)
    threads, each = 12, 6

    def pass_after_pass(thread: int) -> list[bool]:
        work = random.Random(thread)
        appended = []
        for i in range(thread * each, (thread + 1) * each):
            time.sleep(work.uniform(0, 0.05))  # the rest of a pass
            appended.append(record_once(client, bucket, entry(i)))
        return appended

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(pass_after_pass, range(threads)))
    assert all(all(appended) for appended in outcomes)
    ids = Counter(e["id"] for e in deployment_history(client, bucket))
    assert ids == Counter(f"move-{i}" for i in range(threads * each))  # each one there, once
    updates = threads * each
    assert sent["PutObject"] <= updates // 4, f"{sent['PutObject']} writes for {updates} updates"


def test_a_lone_update_and_a_read_do_not_wait_for_the_interval(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An hour between writes, on a clock that moves only when told: waiting would hang the test.
    now = [1000.0]
    monkeypatch.setattr(registry, "_clock", lambda: now[0])
    monkeypatch.setattr(registry, "MIN_WRITE_INTERVAL", 3600.0)
    client, sent = counting_client(s3_server, bucket)
    location = ModelLocation.of("SPY", "etf")

    def register(version: str) -> bool:
        def change(doc: dict[str, Any]) -> bool:
            doc.setdefault("models", {})[location.model_key] = {Stage.PRODUCTION.value: {"version": version}}
            return True

        return update_document(client, bucket, MODEL_REGISTRY_KEY, change)

    assert register("v1.0")  # the first write: none before it to wait for
    assert registered(client, bucket, location, Stage.PRODUCTION) == {"version": "v1.0"}  # within the hour
    now[0] += 3600  # a quiet hour
    assert register("v1.1")
    assert registered(client, bucket, location, Stage.PRODUCTION) == {"version": "v1.1"}
    # A write each, a conditional GET each read, and the GET of the first write (nothing there yet).
    assert (sent["PutObject"], sent["GetObject"]) == (2, 3)


def test_an_id_written_by_another_writer_is_not_appended_again(s3_server: S3Server, bucket: str) -> None:
    """The ids an append checks are those of the document as S3 holds it, not of the one last
    written here: after another writer's write, the document read anew decides."""
    ours, theirs = s3_server.client(bucket), s3_server.client(bucket)
    assert record_once(ours, bucket, entry(1))
    assert record_once(theirs, bucket, entry(2))  # our kept document (and its ids) is stale now
    assert not record_once(ours, bucket, entry(2))
    assert record_once(ours, bucket, entry(3))
    assert not record_once(ours, bucket, entry(3))
    assert [e["id"] for e in deployment_history(ours, bucket)] == ["move-1", "move-2", "move-3"]
