"""Every setting of the serving process, read from the environment in one place.

The operator sets the MODEL_* and S3 variables on the serving container (see
notes/COMMON.md, "Serving pod contract"); the SERVING_* knobs have defaults
that suit a pod and rarely need touching.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from model_store.layout import AssetClass, InvalidName, Stage, check_ticker, check_version

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting that cannot work; the message names the variable and what to set."""


@dataclass(frozen=True)
class Settings:
    bucket: str
    endpoint_url: str | None
    region: str
    ticker: str | None  # None: serve any registered ticker, loaded on first use
    asset_class: AssetClass | None  # None: looked up in the asset registry
    stage: Stage
    version: str | None  # pinned version (archive/<version>/)
    digest: str | None  # pinned digest (sha256:...)
    model_name: str | None  # the TradingModel name, an alias in /v2/models/{name}
    cache_dir: Path
    host: str
    port: int
    log_level: str
    compile_trees: bool
    max_body_bytes: int
    max_batch_rows: int
    null_as_missing: bool
    registry_ttl_seconds: float
    manifest_wait_seconds: float
    graceful_timeout_seconds: float
    load_retry_max_seconds: float

    @property
    def pinned(self) -> bool:
        return self.digest is not None or self.version is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        bucket = e.get("S3_BUCKET", "").strip()
        if not bucket:
            raise ConfigError("S3_BUCKET is not set: name the bucket that holds the models")
        ticker = e.get("MODEL_TICKER", "").strip().upper() or None
        version = e.get("MODEL_VERSION", "").strip() or None
        digest = e.get("MODEL_DIGEST", "").strip() or None
        try:
            if ticker:
                check_ticker(ticker)
            if version:
                check_version(version)
        except InvalidName as exc:
            raise ConfigError(f"MODEL_TICKER/MODEL_VERSION: {exc}") from None
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ConfigError(f"MODEL_DIGEST {digest!r} is not a version digest: expected sha256:<64 hex digits>")
        if (version or digest) and not ticker:
            raise ConfigError("MODEL_VERSION/MODEL_DIGEST pin one model: set MODEL_TICKER as well")
        asset = e.get("MODEL_ASSET_CLASS", "").strip().lower() or None
        if asset is not None and asset not in {a.value for a in AssetClass}:
            raise ConfigError(f"MODEL_ASSET_CLASS must be etf or stock, got {asset!r}")
        try:
            stage = Stage.parse(e.get("MODEL_STAGE", "production").strip() or "production")
        except ValueError as exc:
            raise ConfigError(f"MODEL_STAGE: {exc}") from None
        return cls(
            bucket=bucket,
            endpoint_url=e.get("S3_ENDPOINT_URL", "").strip() or None,
            region=e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1",
            ticker=ticker,
            asset_class=AssetClass(asset) if asset else None,
            stage=stage,
            version=version,
            digest=digest,
            model_name=e.get("MODEL_NAME", "").strip() or None,
            cache_dir=Path(e.get("MODEL_CACHE_DIR", "").strip() or "/var/cache/models"),
            host=e.get("HOST", "0.0.0.0").strip() or "0.0.0.0",
            port=_int(e, "PORT", 8080, 0, 65535),
            log_level=(e.get("LOG_LEVEL", "INFO").strip() or "INFO").upper(),
            compile_trees=_bool(e, "SERVING_COMPILE_TREES", True),
            max_body_bytes=_int(e, "SERVING_MAX_BODY_BYTES", 1 << 20, 1024, 1 << 30),
            max_batch_rows=_int(e, "SERVING_MAX_BATCH_ROWS", 10_000, 1, 10_000_000),
            null_as_missing=_bool(e, "SERVING_NULL_AS_MISSING", False),
            registry_ttl_seconds=_float(e, "SERVING_REGISTRY_TTL_SECONDS", 60.0),
            manifest_wait_seconds=_float(e, "SERVING_MANIFEST_WAIT_SECONDS", 10.0),
            graceful_timeout_seconds=_float(e, "SERVING_GRACEFUL_TIMEOUT_SECONDS", 25.0),
            load_retry_max_seconds=_float(e, "SERVING_LOAD_RETRY_MAX_SECONDS", 60.0),
        )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return int(_number(env, name, default, int, low, high, "a whole number"))


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, 0, 1e6, "a number of seconds")


def _number(env: Mapping[str, str], name: str, default: float, kind: type, low: float, high: float, what: str) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value
