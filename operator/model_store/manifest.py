"""Version manifests: the sha256 and size of every file, written last.

A folder without a complete manifest whose entries match its files is not a
version. The version digest is the sha256 of the canonical file list, so two
folders with the same digest hold byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "tradingmodel-manifest/v1"


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or does not match its files."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_digest(files: Mapping[str, FileEntry]) -> str:
    canonical = json.dumps(
        {name: [entry.sha256, entry.size] for name, entry in sorted(files.items())},
        separators=(",", ":"),
    )
    return "sha256:" + sha256_hex(canonical.encode())


@dataclass(frozen=True)
class Manifest:
    model: str  # e.g. etfs/SPY or stocks/universal
    version: str
    files: dict[str, FileEntry]
    created: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. promotion details on a stage copy

    @property
    def digest(self) -> str:
        return files_digest(self.files)

    @classmethod
    def build(cls, model: str, version: str, contents: Mapping[str, bytes], created: str) -> Manifest:
        files = {name: FileEntry(sha256_hex(data), len(data)) for name, data in contents.items()}
        return cls(model=model, version=version, files=files, created=created)

    def with_extra(self, **extra: Any) -> Manifest:
        return Manifest(self.model, self.version, dict(self.files), self.created, {**self.extra, **extra})

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "model": self.model,
            "version": self.version,
            "created": self.created,
            "digest": self.digest,
            "files": {n: {"sha256": e.sha256, "size": e.size} for n, e in sorted(self.files.items())},
            **({"extra": self.extra} if self.extra else {}),
        }
        return json.dumps(doc, indent=2, sort_keys=False).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str = "manifest") -> Manifest:
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ManifestError(f"{where} is not a {FORMAT} manifest")
        try:
            files = {
                str(name): FileEntry(str(entry["sha256"]), int(entry["size"])) for name, entry in doc["files"].items()
            }
            manifest = cls(
                model=str(doc["model"]),
                version=str(doc["version"]),
                files=files,
                created=str(doc["created"]),
                extra=dict(doc.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"{where} is incomplete: {exc!r}") from None
        if not files:
            raise ManifestError(f"{where} lists no files")
        if doc.get("digest") != manifest.digest:
            raise ManifestError(f"{where} digest {doc.get('digest')} does not match its file list")
        return manifest

    def check_file(self, name: str, data: bytes) -> None:
        """Raise ManifestError unless `data` is exactly the file the manifest names."""
        entry = self.files.get(name)
        if entry is None:
            raise ManifestError(f"{name} is not listed in the manifest of {self.model} {self.version}")
        if len(data) != entry.size:
            raise ManifestError(
                f"{name} of {self.model} {self.version} has {len(data)} bytes, manifest says {entry.size}"
            )
        actual = sha256_hex(data)
        if actual != entry.sha256:
            raise ManifestError(
                f"{name} of {self.model} {self.version} has sha256 {actual[:12]}…, manifest says {entry.sha256[:12]}…"
            )
