"""The model loader: memory, then the local disk cache, then S3; verified; single-flight.

Thread-safe. Concurrent `load` calls for the same spec share one load (the
first caller does the work, the others wait for its result). Every artifact
is checked against the version's manifest before it is used, whichever tier
it came from; only text and JSON are read, nothing is unpickled (model_files).

A pinned digest that is complete in the disk cache is loaded without any S3
call: the digest names the exact bytes, so where they were published does
not matter any more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from model_serving.engines.lgbm_capi import CApiPredictor, LightGBMError
from model_serving.errors import LoadError
from model_serving.loading.disk_cache import DiskCache
from model_serving.loading.model_files import InvalidModel, ModelContent, files_needed, read_content
from model_serving.loading.s3_source import ModelSpec, Resolved, S3Source
from model_serving.loading.served_model import ServedModel
from model_serving.metrics import Metrics
from model_store.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)

# Versions kept in memory per model: the one serving and the one before (a rollback is instant).
_KEEP_PER_MODEL = 2


class _DiskMiss(Exception):
    pass


class ModelLoader:
    def __init__(self, s3: S3Source, cache: DiskCache, metrics: Metrics) -> None:
        self.s3 = s3
        self.cache = cache
        self.metrics = metrics
        self._memory: dict[str, OrderedDict[str, ServedModel]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str, str | None, str | None], Future[ServedModel]] = {}

    def load(self, spec: ModelSpec) -> ServedModel:
        """The model for `spec`; raises LoadError (counted in metrics) when it cannot be served."""
        with self._lock:
            future = self._inflight.get(spec.key)
            leader = future is None
            if leader:
                future = self._inflight[spec.key] = Future()
        assert future is not None
        if not leader:
            return future.result()
        try:
            model = self._load(spec)
        except BaseException as exc:
            if isinstance(exc, LoadError):
                self.metrics.load_failures.labels(spec.location.model_key, exc.reason).inc()
            future.set_exception(exc)
            raise
        else:
            future.set_result(model)
            return model
        finally:
            with self._lock:
                self._inflight.pop(spec.key, None)

    def load_in_background(self, spec: ModelSpec) -> Future[ServedModel]:
        """Start `load(spec)` in a thread now; the future holds the model or the LoadError."""
        result: Future[ServedModel] = Future()

        def run() -> None:
            try:
                result.set_result(self.load(spec))
            except BaseException as exc:
                result.set_exception(exc)

        threading.Thread(target=run, name="early-load", daemon=True).start()
        return result

    def _load(self, spec: ModelSpec) -> ServedModel:
        started = time.perf_counter()
        key = spec.location.model_key
        if spec.digest:
            model = self._from_memory(key, spec.digest)
            if model is not None:
                self._observe("memory", started)
                return model
            model = self._from_disk(spec)
            if model is not None:
                self._observe(model.source, started)
                self._after_load(model)
                return model
        resolved = self.s3.resolve(spec)
        if not spec.digest:
            model = self._from_memory(key, resolved.manifest.digest)
            if model is not None:
                self._observe("memory", started)
                return model
        model = self._from_s3(spec, resolved)
        self._observe(model.source, started)
        self._after_load(model)
        return model

    def _after_load(self, model: ServedModel) -> None:
        """Mark the version used and keep the disk cache bounded (the versions in memory stay)."""
        self.cache.touch(model.digest)
        with self._lock:
            in_use = {digest for kept in self._memory.values() for digest in kept}
        self.cache.prune(in_use | {model.digest})

    def _observe(self, source: str, started: float) -> None:
        self.metrics.load_seconds.labels(source).observe(time.perf_counter() - started)

    # -- tiers ---------------------------------------------------------------------------------

    def _from_memory(self, key: str, digest: str) -> ServedModel | None:
        with self._lock:
            model = self._memory.get(key, OrderedDict()).get(digest)
        self._count("memory", hit=model is not None)
        return model

    def _count(self, tier: str, hit: bool) -> None:
        (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(tier).inc()

    def _from_disk(self, spec: ModelSpec) -> ServedModel | None:
        assert spec.digest is not None
        manifest = self.cache.read_manifest(spec.digest)
        content = None
        if manifest is not None:

            def fetch(name: str) -> bytes:
                data = self.cache.read_file(manifest, name)
                if data is None:
                    raise _DiskMiss(name)
                return data

            try:
                content = self._read_content(manifest, fetch)
            except _DiskMiss:
                content = None
        if content is None or manifest is None:
            return None  # counted as a disk miss by _from_s3, which fetches what is missing
        self._count("disk", hit=True)
        origin = self.cache.read_origin(spec.digest)
        return self._build(
            spec,
            manifest,
            content,
            model_path=str(origin.get("model_path") or spec.location.stage_prefix(spec.stage)),
            stage=str(origin.get("stage") or spec.stage.value),
            source="disk",
        )

    def _from_s3(self, spec: ModelSpec, resolved: Resolved) -> ServedModel:
        manifest = resolved.manifest
        downloaded: list[str] = []

        def fetch(name: str) -> bytes:
            data = self.cache.read_file(manifest, name)
            if data is None:
                data = self.s3.fetch(resolved, name)
                self.cache.write_file(manifest, name, data)
                downloaded.append(name)
            return data

        # The files are independent: fetch them side by side (S3 latency, not bandwidth, dominates).
        wanted = files_needed(manifest)
        with ThreadPoolExecutor(max_workers=len(wanted) or 1, thread_name_prefix="fetch") as pool:
            fetched = dict(zip(wanted, pool.map(fetch, wanted), strict=True))
        content = self._read_content(manifest, lambda name: fetched[name] if name in fetched else fetch(name))
        # The manifest goes in last, like in the bucket: the folder is complete once it is there.
        self.cache.write_manifest(manifest, manifest.to_json())
        self.cache.write_origin(manifest.digest, {"model_path": resolved.prefix, "stage": resolved.stage})
        self._count("disk", hit=not downloaded)
        return self._build(
            spec, manifest, content, resolved.prefix, resolved.stage, source="s3" if downloaded else "disk"
        )

    # -- building ------------------------------------------------------------------------------

    def _read_content(self, manifest: Manifest, fetch: Callable[[str], bytes]) -> ModelContent:
        try:
            return read_content(manifest, fetch)
        except InvalidModel as exc:
            raise LoadError(str(exc), "invalid") from None
        except ManifestError as exc:
            raise LoadError(str(exc), "verification") from None

    def _build(
        self, spec: ModelSpec, manifest: Manifest, content: ModelContent, model_path: str, stage: str, source: str
    ) -> ServedModel:
        where = f"{manifest.model} {manifest.version}"
        try:
            predictor = CApiPredictor(content.model_text)
        except LightGBMError as exc:
            raise LoadError(f"LightGBM cannot load {content.model_file} of {where}: {exc}", "invalid") from None
        if predictor.n_features != len(content.feature_names):
            raise LoadError(
                f"{where}: the model takes {predictor.n_features} features, "
                f"feature_names.json lists {len(content.feature_names)}",
                "invalid",
            )
        if predictor.n_classes != len(content.classes):
            raise LoadError(
                f"{where}: the model predicts {predictor.n_classes} classes, "
                f"{len(content.classes)} strategy names given",
                "invalid",
            )
        model = ServedModel(
            location=spec.location,
            version=manifest.version,
            digest=manifest.digest,
            model_path=model_path,
            stage=stage,
            source=source,
            content=content,
            predictor=predictor,
        )
        with self._lock:
            kept = self._memory.setdefault(spec.location.model_key, OrderedDict())
            kept[manifest.digest] = model
            kept.move_to_end(manifest.digest)
            while len(kept) > _KEEP_PER_MODEL:
                kept.popitem(last=False)
        log.info(
            "model loaded",
            extra={"model": manifest.model, "version": manifest.version, "digest": manifest.digest, "source": source},
        )
        return model
