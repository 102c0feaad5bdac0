"""The JSON documents under metadata/: asset registry, model registry, deployment history.

Each update is a read-modify-write guarded by the object's ETag (S3 conditional writes), so two
writers never lose each other's entries, and a change that changes nothing writes nothing.
Concurrent updates of one document in a process are a group commit: one read and at most one
write for all of them (see `_Committer`); under load, a document is written at most once per
MIN_WRITE_INTERVAL and the updates meanwhile share that write. A read of a document that did not
change since this process last read or wrote it is a conditional GET that S3 answers with 304 and
no body.

- The deployment history is an append-only audit log: every entry has an `id`, and appending an
  id that is there already is a no-op, so a move retried after any failure is recorded once.
- The registries are level-based: `sync_registries` makes them say what a stage holds, from the
  stage manifest alone, however they were damaged or whatever was missed before.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
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
from model_store.s3 import error_code, is_not_found, lost_conditional_write

log = logging.getLogger(__name__)

Document = dict[str, Any]
_ATTEMPTS = 8
# Under load, the seconds from the end of one write of a document to the start of the next (see
# _Committer). The scale benchmark at N = 300 (300 moves in 25-38 s) wrote each document 131-162
# times without it, 71-81 at 0.2 s, 49-58 at 0.3 s, 38-41 at 0.5 s: past 0.3 s the writes left
# cost ~1 of the operator's 18 CPU seconds, while every update that waits waits longer.
MIN_WRITE_INTERVAL = 0.3
_clock = time.monotonic  # tests replace it
DETAILS = ("accuracy", "trained_date", "training_samples")  # from metadata.json into the asset registry


def read_document(
    client: Any, bucket: str, key: str, parse: Callable[[bytes, str, str], Document] | None = None
) -> tuple[Document, str | None]:
    """The document and its ETag; an empty document and None when it does not exist yet. `parse`
    (raw, bucket, key) replaces the strict default, which refuses anything but a JSON object."""
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_not_found(exc):
            return {}, None
        raise
    return (parse or _parse)(obj["Body"].read(), bucket, key), str(obj["ETag"])


def _parse(raw: bytes, bucket: str, key: str) -> Document:
    try:
        doc = orjson.loads(raw)  # the documents grow with the models: orjson is 2-3x faster than json
    except orjson.JSONDecodeError as exc:
        raise RegistryError(f"s3://{bucket}/{key} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"s3://{bucket}/{key} must hold a JSON object; fix or remove it")
    return doc


def update_document(
    client: Any, bucket: str, key: str, change: Callable[[Document], bool], *, only_reads: bool = False
) -> bool:
    """Apply `change` (True when it changed the document) and write the document back, retrying on
    concurrent writes. Returns whether anything was written: once this returns True, the written
    document holds the change. Concurrent calls for one document share one read and one write.
    `only_reads`: `change` only looks at the document (returns False), so it does not wait for
    the pacing of writes (see _Committer)."""
    committer = _committer(client, bucket, key)
    return committer.read(client, change) if only_reads else committer.update(client, change)


@dataclass(eq=False)
class _Update:
    change: Callable[[Document], bool]
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this caller commits the queue
    finished: bool = False
    changed: bool = False
    error: BaseException | None = None

    def outcome(self) -> bool:
        if self.error is not None:
            raise self.error
        return self.changed


class _Committer:
    """Group commit of one metadata document in this process.

    Every pass of the operator updates the same few documents, and they grow with the number of
    models: one read-modify-write per pass makes each write race all the others (412, retry) and
    moves the whole document for every entry. Here a caller queues its change; the first caller to
    find no commit running leads: it takes the whole queue, reads the document once, applies every
    change in order, writes once (If-Match, as before; a lost race re-reads and re-applies the
    batch), and tells each caller its own outcome, True, False or its own error. A caller returns
    only after the write that holds its change succeeded. When the queue filled meanwhile, the
    oldest waiter leads the next batch.

    Under load, a leader first waits until `min_interval` has passed since the last write of the
    document finished: the updates that queue meanwhile join its batch. Each write moves the whole
    document, so without the wait the batches stay as small as the updates that arrive during one
    write (about 2 in the scale benchmark), and the writes cost O(document size) per update. A
    leader that finds no write in the last interval (a lone update) does not wait. Reads
    (`read`) do not wait either: a pacing leader holds nothing, so a read commits on its own
    between two batches (`_committing` keeps commits apart) and costs a conditional GET, rather
    than holding its caller up to the interval or hurrying the writes queued with it.

    The document and ETag of the last read or write are kept. A batch that changes the kept
    document is written at once on its ETag (no read: a 412 means someone else wrote, and the batch
    is read and applied again). A batch that changes nothing, or fails, asks S3 with a conditional
    GET, which S3 answers with 304 (no body, nothing to parse) while nobody else wrote the
    document, so a document edited or broken by hand is seen at once (the registries stay
    level-based)."""

    def __init__(self, bucket: str, key: str, min_interval: float) -> None:
        self._bucket, self._key = bucket, key  # not the client: the committers are weakly keyed by it
        self._min_interval = min_interval
        self._written = -math.inf  # _clock() when the last write finished
        self._lock = threading.Lock()  # the queue and the leader
        self._committing = threading.Lock()  # one commit at a time: a batch or a read
        self._queue: list[_Update] = []
        self._busy = False
        self._etag: str | None = None
        self._raw = b""
        self._doc: Document | None = None  # _raw parsed, and changed only by what was written since

    def update(self, client: Any, change: Callable[[Document], bool]) -> bool:
        mine = _Update(change)
        with self._lock:
            self._queue.append(mine)
            if not self._busy:
                self._busy = mine.lead = True
        while not mine.finished:
            if not mine.lead:
                mine.wake.wait()
                mine.wake.clear()
                continue
            batch = [mine]  # until the queue is taken: what an interrupted _pace fails
            try:
                self._pace()
                with self._lock:
                    batch, self._queue = self._queue, []
                with self._committing:
                    self._commit(client, batch)
            except BaseException as exc:  # the read or the write failed: every caller in the batch hears it
                for update in batch:
                    if not update.finished:
                        update.error, update.finished = exc, True
                raise
            finally:
                for update in batch:
                    update.wake.set()
                with self._lock:
                    if mine in self._queue:  # _pace interrupted (Ctrl-C): the others need a leader
                        self._queue.remove(mine)
                    if self._queue:
                        self._queue[0].lead = True
                        self._queue[0].wake.set()
                    else:
                        self._busy = False
        return mine.outcome()

    def read(self, client: Any, look: Callable[[Document], bool]) -> bool:
        """A commit of `look` alone, between two batches (see the class)."""
        mine = _Update(look)
        with self._committing:
            self._commit(client, [mine])
        return mine.outcome()

    def _pace(self) -> None:
        wait = self._written + self._min_interval - _clock()
        if wait > 0:
            time.sleep(wait)

    def _commit(self, client: Any, batch: list[_Update]) -> None:
        try:
            self._commit_batch(client, batch)
        except BaseException:
            self._doc = None  # changed in memory, maybe not written: never answer from it again
            raise

    def _commit_batch(self, client: Any, batch: list[_Update]) -> None:
        # The document as last read or written, while its ETag is the object's: a batch with
        # something to write sends the write at once (If-Match makes a stale copy a lost race).
        optimistic = self._doc is not None and self._etag is not None
        for _ in range(_ATTEMPTS):
            doc, etag = (self._doc, self._etag) if optimistic and self._doc is not None else self._read(client)
            outcomes: list[bool | Exception] = []
            for update in batch:
                try:
                    outcomes.append(bool(update.change(doc)))
                except Exception as exc:  # this caller's problem (e.g. a malformed section), not the others'
                    outcomes.append(exc)
            failed = any(isinstance(outcome, Exception) for outcome in outcomes)
            if failed:
                self._doc = None  # a change may have failed half-way through the document: parse it anew
            if optimistic and (failed or not any(outcome is True for outcome in outcomes)):
                # Nothing to write, or an error: what S3 holds decides (an edit by hand shows at once).
                optimistic = False
                continue
            optimistic = False
            if any(outcome is True for outcome in outcomes) and not self._write(client, doc, etag):
                log.debug("concurrent write to %s, retrying %d changes", self._key, len(batch))
                continue
            for update, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    update.error = outcome
                else:
                    update.changed = outcome
                update.finished = True
            return
        raise RegistryError(f"s3://{self._bucket}/{self._key} kept changing under us; gave up after {_ATTEMPTS} tries")

    def _read(self, client: Any) -> tuple[Document, str | None]:
        unchanged = {"IfNoneMatch": self._etag} if self._etag else {}
        try:
            obj = client.get_object(Bucket=self._bucket, Key=self._key, **unchanged)
        except ClientError as exc:
            if is_not_found(exc):
                self._etag, self._raw, self._doc = None, b"", None
                return {}, None
            if not (self._etag and error_code(exc) in _NOT_MODIFIED):
                raise
        else:
            self._etag, self._raw, self._doc = obj["ETag"], obj["Body"].read(), None
        if self._doc is None:
            self._doc = _parse(self._raw, self._bucket, self._key)
        return self._doc, self._etag

    def _write(self, client: Any, doc: Document, etag: str | None) -> bool:
        """False when another writer got there first."""
        # The same bytes json.dumps(indent=2, sort_keys=True) writes, ~50x faster (json's indent is pure Python)
        body = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            written = client.put_object(
                Bucket=self._bucket, Key=self._key, Body=body, ContentType="application/json", **condition
            )
        except ClientError as exc:
            if lost_conditional_write(exc):
                self._etag, self._raw, self._doc = None, b"", None
                return False
            raise
        self._etag, self._raw, self._doc = written.get("ETag"), body, doc
        self._written = _clock()
        return True


_NOT_MODIFIED = frozenset({"304", "NotModified"})
_committers: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], _Committer]] = weakref.WeakKeyDictionary()
_committers_guard = threading.Lock()


def _committer(client: Any, bucket: str, key: str) -> _Committer:
    """One committer per (client, bucket, key): the client's credentials write the batch."""
    with _committers_guard:
        per_client = _committers.setdefault(client, {})
        if (bucket, key) not in per_client:
            per_client[(bucket, key)] = _Committer(bucket, key, MIN_WRITE_INTERVAL)
        return per_client[(bucket, key)]


def record_once(client: Any, bucket: str, entry: dict[str, Any]) -> bool:
    """Append `entry` to the audit log unless an entry with its id is there; True when appended."""

    def append(doc: Document) -> bool:
        entries = doc.setdefault("entries", [])
        if not isinstance(entries, list):
            raise RegistryError(f"s3://{bucket}/{DEPLOYMENT_HISTORY_KEY} 'entries' must be a list; fix it")
        return _append_entry(entries, entry)

    try:
        return update_document(client, bucket, DEPLOYMENT_HISTORY_KEY, append)
    except (ClientError, BotoCoreError) as exc:
        raise RegistryError(f"cannot update s3://{bucket}/{DEPLOYMENT_HISTORY_KEY}: {exc}") from None


# The ids in the entries of the histories last appended to, so that an append does not walk the whole
# log (thousands of entries, one walk per append): list id -> (the list, its length, its ids). The
# committer hands every change the same document until it reads it anew, and only appends change it.
_history_ids: dict[int, tuple[list[Any], int, set[Any]]] = {}
_history_ids_guard = threading.Lock()
_HISTORIES_KEPT = 8


def _ids_of(entries: list[Any]) -> set[Any]:
    with _history_ids_guard:
        kept = _history_ids.pop(id(entries), None)
        if kept is None or kept[0] is not entries or kept[1] != len(entries):
            kept = (entries, len(entries), {e.get("id") for e in entries if isinstance(e, dict)})
        _history_ids[id(entries)] = kept
        while len(_history_ids) > _HISTORIES_KEPT:
            _history_ids.pop(next(iter(_history_ids)))
        return kept[2]


def _append_entry(entries: list[Any], entry: dict[str, Any]) -> bool:
    """Append `entry` unless an entry with its id is there; True when appended."""
    ids = _ids_of(entries)
    if entry["id"] in ids:
        return False
    entries.append(entry)
    ids.add(entry["id"])
    with _history_ids_guard:
        if id(entries) in _history_ids:
            _history_ids[id(entries)] = (entries, len(entries), ids)
    return True


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
        # Only this model's part of the document is compared (the whole grows with the models).
        if location.asset_class is AssetClass.ETF:
            part, mine = _section(doc, "etfs", bucket, ASSET_REGISTRY_KEY), location.ticker
        else:
            part, mine = doc, "stocks"
        before = orjson.dumps(part.get(mine), option=orjson.OPT_SORT_KEYS)
        path = location.stage_prefix(Stage.PRODUCTION)
        if location.asset_class is AssetClass.ETF:
            entry = part.setdefault(mine, {})
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
        return orjson.dumps(part.get(mine), option=orjson.OPT_SORT_KEYS) != before

    try:
        with ThreadPoolExecutor(1) as other:  # the two documents at once: each waits for its own batch
            models = other.submit(update_document, client, bucket, MODEL_REGISTRY_KEY, set_model)
            assets = update_document(client, bucket, ASSET_REGISTRY_KEY, set_asset)
            return models.result() or assets
    except (ClientError, BotoCoreError) as exc:
        raise RegistryError(f"cannot update the registries in s3://{bucket}/metadata/: {exc}") from None


def _section(doc: Document, name: str, bucket: str, key: str) -> dict[str, Any]:
    section = doc.setdefault(name, {})
    if not isinstance(section, dict):
        raise RegistryError(f"s3://{bucket}/{key} '{name}' must be a JSON object; fix or remove it")
    return section


def registered(client: Any, bucket: str, location: ModelLocation, stage: Stage) -> dict[str, Any]:
    """What the model registry says this stage holds ({} when nothing): version, digest, …
    Read through the document's committer: a conditional GET, between its batches of writes."""
    found: dict[str, Any] = {}

    def look(doc: Document) -> bool:
        found.update(((doc.get("models") or {}).get(location.model_key) or {}).get(stage.value) or {})
        return False

    update_document(client, bucket, MODEL_REGISTRY_KEY, look, only_reads=True)
    return dict(found)


def deployment_history(client: Any, bucket: str) -> list[dict[str, Any]]:
    doc, _ = read_document(client, bucket, DEPLOYMENT_HISTORY_KEY)
    return list(doc.get("entries", []))
