"""Reading model versions from S3: which manifest to trust, and verified downloads.

boto3 costs ~0.2 s to import, so the client is made on first use: a pod that
starts from a warm disk cache with a pinned digest never imports it.

Which version folder serves a model (`resolve`):
  * digest pinned: the stage prefix if its manifest has that digest, else
    archive/<MODEL_VERSION>/, whose manifest must have that digest;
  * only a version pinned: archive/<MODEL_VERSION>/;
  * nothing pinned: the stage prefix through its manifest, waiting a bounded
    time if the manifest is missing (a promotion takes it away while copying).
A stage file that does not match the stage manifest (a promotion half done,
a hand edit) is taken from archive/<version>/ instead, whose manifest must
carry the same digest; if that fails too, the load is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from model_serving.errors import LoadError
from model_serving.metrics import Metrics
from model_store.layout import ASSET_REGISTRY_KEY, MANIFEST_NAME, InvalidName, ModelLocation, Stage
from model_store.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What to serve for one model family: where, and optionally a pinned version/digest."""

    location: ModelLocation
    stage: Stage
    version: str | None = None
    digest: str | None = None

    @property
    def key(self) -> tuple[str, str, str | None, str | None]:
        # The ticker is not part of it: every stock ticker names the same universal model.
        return (self.location.model_key, self.stage.value, self.version, self.digest)


@dataclass
class Resolved:
    manifest: Manifest
    prefix: str
    stage: str  # "production", "staging" or "archive"
    fallback_prefix: str | None = None
    _fallback_checked: bool | None = field(default=None, repr=False)


class S3Source:
    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        metrics: Metrics,
        manifest_wait_seconds: float = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.metrics = metrics
        self.manifest_wait_seconds = manifest_wait_seconds
        self.stop = stop or threading.Event()
        self._client: Any = None
        self._client_lock = threading.Lock()

    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from model_store.s3 import S3Settings, make_client  # imports boto3

                self._client = make_client(S3Settings(self.bucket, self.endpoint_url, self.region))
            return self._client

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str, kind: str) -> bytes | None:
        """The object's bytes, None if it does not exist; LoadError(s3) if S3 cannot be read."""
        from botocore.exceptions import BotoCoreError, ClientError

        from model_store.s3 import get_bytes

        try:
            data = get_bytes(self.client(), self.bucket, key)
        except (BotoCoreError, ClientError) as exc:
            self.metrics.s3_requests.labels(kind, "error").inc()
            raise LoadError(f"cannot read {self.url(key)}: {exc}", "s3", retryable=True) from None
        self.metrics.s3_requests.labels(kind, "ok" if data is not None else "not_found").inc()
        return data

    def manifest(self, prefix: str) -> Manifest | None:
        raw = self.get(prefix + MANIFEST_NAME, "manifest")
        if raw is None:
            return None
        try:
            return Manifest.from_json(raw, where=self.url(prefix + MANIFEST_NAME))
        except ManifestError as exc:
            raise LoadError(str(exc), "verification") from None

    def registry(self) -> dict[str, Any]:
        """metadata/asset_registry.json ({} when there is none)."""
        import json

        raw = self.get(ASSET_REGISTRY_KEY, "registry")
        if raw is None:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise LoadError(f"{self.url(ASSET_REGISTRY_KEY)} is not valid JSON: {exc}", "invalid") from None
        if not isinstance(doc, dict):
            raise LoadError(f"{self.url(ASSET_REGISTRY_KEY)} must hold a JSON object", "invalid")
        return doc

    # -- which version ------------------------------------------------------------------------

    def resolve(self, spec: ModelSpec) -> Resolved:
        location, stage = spec.location, spec.stage
        stage_prefix = location.stage_prefix(stage)
        if spec.digest:
            current = self.manifest(stage_prefix)
            if current is not None and current.digest == spec.digest:
                self._check_model(current, location, stage_prefix)
                return Resolved(current, stage_prefix, stage.value, self._archive_of(location, current))
            if not spec.version:
                found = f"{current.version} ({current.digest})" if current else "no version"
                raise LoadError(
                    f"{self.url(stage_prefix)} holds {found}, not the pinned MODEL_DIGEST {spec.digest}, and "
                    "MODEL_VERSION is not set to find it under archive/: set MODEL_VERSION as well",
                    "not_found",
                    retryable=True,
                )
            return self._archived(location, spec.version, spec.digest)
        if spec.version:
            return self._archived(location, spec.version, None)
        current = self._wait_for_manifest(stage_prefix)
        self._check_model(current, location, stage_prefix)
        return Resolved(current, stage_prefix, stage.value, self._archive_of(location, current))

    def _archived(self, location: ModelLocation, version: str, digest: str | None) -> Resolved:
        prefix = location.archive_prefix(version)
        manifest = self.manifest(prefix)
        if manifest is None:
            raise LoadError(
                f"{location.model_key} {version} is not published: {self.url(prefix + MANIFEST_NAME)} does not exist",
                "not_found",
                retryable=True,
            )
        self._check_model(manifest, location, prefix)
        if manifest.version != version:
            raise LoadError(
                f"{self.url(prefix + MANIFEST_NAME)} describes version {manifest.version}, not {version}",
                "verification",
            )
        if digest is not None and manifest.digest != digest:
            raise LoadError(
                f"{location.model_key} {version} in the archive has digest {manifest.digest}, but MODEL_DIGEST pins "
                f"{digest}: the pod's pin does not match the published version (was it republished?); refusing it",
                "verification",
            )
        return Resolved(manifest, prefix, "archive")

    def _wait_for_manifest(self, prefix: str) -> Manifest:
        deadline = time.monotonic() + self.manifest_wait_seconds
        delay = 0.1
        while True:
            manifest = self.manifest(prefix)
            if manifest is not None:
                return manifest
            if time.monotonic() + delay > deadline or self.stop.is_set():
                raise LoadError(
                    f"no version at {self.url(prefix)}: {MANIFEST_NAME} is missing "
                    f"(waited {self.manifest_wait_seconds:g} s for a promotion to finish); promote a version "
                    "to this stage or pin MODEL_VERSION",
                    "not_found",
                    retryable=True,
                )
            log.info("stage manifest missing, waiting for a promotion to finish", extra={"prefix": prefix})
            self.stop.wait(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def _archive_of(location: ModelLocation, manifest: Manifest) -> str | None:
        try:
            return location.archive_prefix(manifest.version)
        except InvalidName:
            return None

    def _check_model(self, manifest: Manifest, location: ModelLocation, prefix: str) -> None:
        if manifest.model != location.model_key:
            raise LoadError(
                f"{self.url(prefix + MANIFEST_NAME)} describes {manifest.model}, not {location.model_key}",
                "verification",
            )

    # -- files ----------------------------------------------------------------------------------

    def fetch(self, resolved: Resolved, name: str) -> bytes:
        """The file's bytes, verified against the resolved manifest (stage copy, else archive copy)."""
        problem = self._verified(resolved.manifest, resolved.prefix, name)
        if isinstance(problem, bytes):
            return problem
        if resolved.fallback_prefix and self._fallback_usable(resolved):
            log.warning(
                "stage file does not match its manifest, using the archived copy",
                extra={"file": name, "problem": problem, "archive": resolved.fallback_prefix},
            )
            second = self._verified(resolved.manifest, resolved.fallback_prefix, name)
            if isinstance(second, bytes):
                return second
            problem = f"{problem}; archived copy: {second}"
        raise LoadError(
            f"refusing {resolved.manifest.model} {resolved.manifest.version} ({resolved.manifest.digest}): {problem}",
            "verification",
        )

    def _verified(self, manifest: Manifest, prefix: str, name: str) -> bytes | str:
        """The bytes if they match the manifest, else a sentence saying what is wrong."""
        data = self.get(prefix + name, "artifact")
        if data is None:
            return f"{self.url(prefix + name)} is listed in the manifest but missing"
        self.metrics.s3_bytes.inc(len(data))
        try:
            manifest.check_file(name, data)
        except ManifestError as exc:
            self.metrics.s3_requests.labels("artifact", "mismatch").inc()
            return f"{exc} ({self.url(prefix + name)})"
        return data

    def _fallback_usable(self, resolved: Resolved) -> bool:
        if resolved._fallback_checked is None:
            assert resolved.fallback_prefix is not None
            try:
                archived = self.manifest(resolved.fallback_prefix)
            except LoadError:
                archived = None
            resolved._fallback_checked = archived is not None and archived.digest == resolved.manifest.digest
        return resolved._fallback_checked
