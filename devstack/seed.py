"""Demo content for the local stack: real trained model versions published to the local S3."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.demo_model import train_demo_model
from model_store.layout import ModelLocation
from model_store.publish import publish_version, read_model_dir

log = logging.getLogger(__name__)

# (ticker, asset class, version, seed): two SPY versions to promote and roll back between.
# The samples in manifests/samples ask for SPY v1.1 (production) and v1.2 (staging), QQQ v1.0
# and the universal stock model v1.0.
DEMO_VERSIONS = [
    ("SPY", "etf", "v1.0", 7),
    ("SPY", "etf", "v1.1", 8),
    ("SPY", "etf", "v1.2", 12),
    ("SPY", "etf", "v1.3", 13),  # the PR journey stages it, shadows it in production, promotes it
    ("QQQ", "etf", "v1.0", 9),
    ("AAPL", "stock", "v1.0", 10),
]


def seed_demo_models(
    s3: Any, bucket: str, cache_dir: Path, rounds: int = 100, say: Callable[[str], None] = print
) -> None:
    """Train (once; kept in cache_dir) and publish every demo version."""
    for i, (ticker, asset_class, version, seed) in enumerate(DEMO_VERSIONS, 1):
        location = ModelLocation.of(ticker, asset_class)
        folder = cache_dir / f"{location.root.replace('/', '_')}_{version}_{rounds}"
        if not (folder / "metadata.json").exists():
            say(f"  [{i}/{len(DEMO_VERSIONS)}] training {location.model_key} {version} ({rounds} rounds)…")
            model = train_demo_model(version=version, seed=seed, rounds=rounds)
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in model.files.items():
                (folder / name).write_bytes(data)
        result = publish_version(s3, bucket, location, version, read_model_dir(folder))
        where = f"s3://{bucket}/{location.archive_prefix(version)}"
        say(f"  [{i}/{len(DEMO_VERSIONS)}] published {where} {result.digest[:19]}…")
