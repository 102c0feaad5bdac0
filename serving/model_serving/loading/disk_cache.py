"""The local disk cache of verified model files, keyed by version digest.

    <MODEL_CACHE_DIR>/<digest hex>/manifest.json   the manifest the files were checked against
    <MODEL_CACHE_DIR>/<digest hex>/<file>          artifact bytes, exactly as listed
    <MODEL_CACHE_DIR>/<digest hex>/origin.json     where they came from (informational only)
    <MODEL_CACHE_DIR>/<digest hex>/compiled/       compiled trees, if any

Nothing read from here is trusted: the manifest must hash to the directory's
digest and every file must match its manifest entry on every read; a file
that does not is deleted and reported as a miss (so it is downloaded again).
Files are written to a temporary name and renamed, so a crash never leaves a
half-written file under a real name. `prune` keeps it bounded: per model the
`versions` most recently used (the one serving and the one before, by default),
and all of them together within `max_bytes` (below the emptyDir's sizeLimit,
which evicts the pod when reached); the versions being served are never removed.
A cache that cannot be written (read-only volume, disk full) degrades to no
cache, never to a failed load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_store.layout import MANIFEST_NAME
from model_store.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)

ORIGIN_NAME = "origin.json"


def check_file_name(name: str) -> str:
    """A manifest comes from the bucket: never let one of its names escape the cache folder."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name in {MANIFEST_NAME, ORIGIN_NAME}:
        raise ManifestError(f"file name {name!r} is not a plain artifact name")
    return name


def digest_folder(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise ManifestError(f"{digest!r} is not a sha256:<hex> digest")
    return hexdigest


class DiskCache:
    def __init__(
        self,
        root: Path,
        on_corrupt: Callable[[str], None] = lambda _path: None,
        versions: int = 2,
        max_bytes: int = 1 << 30,
    ) -> None:
        self.root = root
        self._on_corrupt = on_corrupt
        self.versions = versions
        self.max_bytes = max_bytes
        self._prune_lock = threading.Lock()
        self.enabled = self._prepare()

    def touch(self, digest: str) -> None:
        """Mark a version as just used (pruning removes the least recently used first)."""
        if self.enabled:
            with contextlib.suppress(OSError):
                os.utime(self.folder(digest))

    def prune(self, in_use: set[str]) -> list[str]:
        """Remove versions beyond `versions` per model and beyond `max_bytes` in all, least recently
        used first, never one of `in_use` (digests); the digests removed."""
        if not self.enabled:
            return []
        with self._prune_lock:
            entries = []  # (last used, digest hex, model, bytes)
            try:
                folders = [p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 64]
            except OSError:
                return []
            for folder in folders:
                model = "?"
                with contextlib.suppress(OSError, ValueError, KeyError):
                    model = str(json.loads((folder / MANIFEST_NAME).read_bytes())["model"])
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                with contextlib.suppress(OSError):
                    entries.append((folder.stat().st_mtime, folder.name, model, size))
            keep = {digest_folder(d) for d in in_use}
            entries.sort(reverse=True)  # most recently used first
            seen: dict[str, int] = {}
            doomed: list[str] = []
            total = 0
            for _, name, model, size in entries:
                seen[model] = seen.get(model, 0) + 1
                if name not in keep and (seen[model] > self.versions or total + size > self.max_bytes):
                    doomed.append(name)
                else:
                    total += size
            for name in doomed:
                log.info("pruning disk cache", extra={"digest": f"sha256:{name}"})
                shutil.rmtree(self.root / name, ignore_errors=True)
            return [f"sha256:{name}" for name in doomed]

    def _prepare(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError as exc:
            log.warning("disk cache disabled", extra={"cache_dir": str(self.root), "error": str(exc)})
            return False

    def folder(self, digest: str) -> Path:
        return self.root / digest_folder(digest)

    def compiled_dir(self, digest: str) -> Path:
        return self.folder(digest) / "compiled"

    def read_manifest(self, digest: str) -> Manifest | None:
        """The cached manifest of `digest`, or None (a wrong one is deleted)."""
        if not self.enabled:
            return None
        path = self.folder(digest) / MANIFEST_NAME
        raw = self._read(path)
        if raw is None:
            return None
        try:
            manifest = Manifest.from_json(raw, where=str(path))
            if manifest.digest != digest:
                raise ManifestError(f"{path} describes {manifest.digest}, not {digest}")
        except ManifestError as exc:
            self._drop(path, str(exc))
            return None
        return manifest

    def read_file(self, manifest: Manifest, name: str) -> bytes | None:
        """The file's bytes if cached and still exactly what the manifest lists, else None."""
        if not self.enabled:
            return None
        path = self.folder(manifest.digest) / check_file_name(name)
        data = self._read(path)
        if data is None:
            return None
        try:
            manifest.check_file(name, data)
        except ManifestError as exc:
            self._drop(path, str(exc))
            return None
        return data

    def write_manifest(self, manifest: Manifest, raw: bytes) -> None:
        self._write(self.folder(manifest.digest), MANIFEST_NAME, raw)

    def write_file(self, manifest: Manifest, name: str, data: bytes) -> None:
        self._write(self.folder(manifest.digest), check_file_name(name), data)

    def write_origin(self, digest: str, origin: dict[str, Any]) -> None:
        self._write(self.folder(digest), ORIGIN_NAME, json.dumps(origin).encode())

    def read_origin(self, digest: str) -> dict[str, Any]:
        raw = self._read(self.folder(digest) / ORIGIN_NAME) if self.enabled else None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("disk cache read failed", extra={"path": str(path), "error": str(exc)})
            return None

    def _drop(self, path: Path, reason: str) -> None:
        log.warning("dropping corrupt cache file", extra={"path": str(path), "reason": reason})
        self._on_corrupt(str(path))
        with contextlib.suppress(OSError):
            path.unlink()

    def _write(self, folder: Path, name: str, data: bytes) -> None:
        if not self.enabled:
            return
        tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / name)
        except OSError as exc:
            log.warning("disk cache write failed", extra={"path": str(folder / name), "error": str(exc)})
            with contextlib.suppress(OSError):
                tmp.unlink()
