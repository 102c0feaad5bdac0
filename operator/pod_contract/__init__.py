"""The contract between the operator and its serving pods: which environment variables a pod gets,
what each means, and their defaults. The operator renders a `PodModel` into a container's `env`
(`render_env`); the serving process reads it back (`read_pod_model`). Both sides import this module
and nothing of each other, so a name can only change in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.layout import AssetClass, InvalidName, Stage, check_ticker, check_version
from pod_contract.env import ConfigError, Env

__all__ = [
    "CONTRACT",
    "DRAIN_SECONDS",
    "GRACEFUL_SECONDS",
    "GRPC_PORT",
    "MODEL_CACHE_DIR",
    "PRESTOP_SECONDS",
    "ConfigError",
    "Env",
    "PodModel",
    "ShadowPin",
    "Var",
    "read_pod_model",
    "render_env",
    "termination_grace_seconds",
]


@dataclass(frozen=True)
class Var:
    name: str
    meaning: str
    default: str = ""  # "" means unset: see the meaning for what that implies


MODEL_NAME = Var("MODEL_NAME", "the TradingModel's name; an alias of the model in /v2/models/{name}")
MODEL_TICKER = Var("MODEL_TICKER", "the ticker served; unset: any registered ticker, loaded on first use")
MODEL_TICKERS = Var(
    "MODEL_TICKERS",
    "stock pods: every stock ticker the universal model answers, comma-separated (spec.ticker and spec.tickers); "
    "unset: the supported tickers of the asset registry",
)
MODEL_ASSET_CLASS = Var("MODEL_ASSET_CLASS", "etf or stock; unset: looked up in the asset registry")
MODEL_STAGE = Var("MODEL_STAGE", "the stage prefix read (staging or production)", "production")
MODEL_VERSION = Var("MODEL_VERSION", "the pinned version (archive/<version>/); unset: whatever the stage holds")
MODEL_DIGEST = Var("MODEL_DIGEST", "the pinned version digest, sha256:<64 lower-case hex>; checked on load")
S3_BUCKET = Var("S3_BUCKET", "the bucket that holds the models (required)")
S3_ENDPOINT_URL = Var("S3_ENDPOINT_URL", "an S3-compatible endpoint; unset: AWS")
AWS_REGION = Var("AWS_REGION", "the bucket's region (AWS_DEFAULT_REGION is read too)", "us-east-1")
MODEL_CACHE_DIR = Var("MODEL_CACHE_DIR", "the local disk cache, keyed by digest", "/var/cache/models")
PORT = Var("PORT", "the HTTP port (predictions, health, /metrics)", "8080")
GRPC_PORT = Var(
    "GRPC_PORT", "the gRPC port (Open Inference Protocol V2: inference.GRPCInferenceService); 0 turns it off", "8081"
)
OMP_NUM_THREADS = Var("OMP_NUM_THREADS", "LightGBM threads per prediction: 1, requests run side by side", "1")
# The shadow challenger (spec.shadow, production only): loaded from archive/<version>/ beside the model
# and verified like it, scored on the same rows; its answers are compared and counted, never returned.
MODEL_SHADOW_VERSION = Var(
    "MODEL_SHADOW_VERSION", "the challenger version scored in shadow (archive/<version>/); unset: no shadow"
)
MODEL_SHADOW_DIGEST = Var("MODEL_SHADOW_DIGEST", "the challenger's digest, sha256:<64 hex>; required with its version")
MODEL_SHADOW_FRACTION = Var(
    "MODEL_SHADOW_FRACTION", "the share of requests the challenger scores too, from 0 to 1 (spec.shadow.fraction)", "1"
)
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # from the Secret named by spec.storage.secretRef

CONTRACT = (
    MODEL_NAME, MODEL_TICKER, MODEL_TICKERS, MODEL_ASSET_CLASS, MODEL_STAGE, MODEL_VERSION, MODEL_DIGEST,
    S3_BUCKET, S3_ENDPOINT_URL, AWS_REGION, MODEL_CACHE_DIR, PORT, GRPC_PORT, OMP_NUM_THREADS,
    MODEL_SHADOW_VERSION, MODEL_SHADOW_DIGEST, MODEL_SHADOW_FRACTION,
)  # fmt: skip

# Stopping a serving pod without failing a request, in order: the Deployment's preStop pause (the
# endpoints drop the pod while it still answers), then SIGTERM: the server drains (readiness 503,
# `Connection: close` on every response) and then waits for requests in progress. The server reads
# the two SERVING_* defaults from here and the Deployment's terminationGracePeriodSeconds covers all.
PRESTOP_SECONDS = 5
DRAIN_SECONDS = Var("SERVING_DRAIN_SECONDS", "SIGTERM: answer with Connection: close and readiness 503 first", "5")
GRACEFUL_SECONDS = Var("SERVING_GRACEFUL_TIMEOUT_SECONDS", "SIGTERM: then wait this long for requests", "25")


def termination_grace_seconds() -> int:
    """The pod's terminationGracePeriodSeconds: preStop + drain + graceful wait + 5 s to exit."""
    return PRESTOP_SECONDS + int(float(DRAIN_SECONDS.default)) + int(float(GRACEFUL_SECONDS.default)) + 5


_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class PodModel:
    """What a serving pod serves and where it finds it."""

    bucket: str
    endpoint_url: str | None
    region: str
    ticker: str | None
    asset_class: AssetClass | None
    stage: Stage
    version: str | None
    digest: str | None
    model_name: str | None
    cache_dir: Path
    port: int
    tickers: tuple[str, ...]  # stock pods: the declared set; empty: the asset registry decides
    shadow: ShadowPin | None  # the challenger scored in shadow, if any
    grpc_port: int = int(GRPC_PORT.default)  # 0: no gRPC server


@dataclass(frozen=True)
class ShadowPin:
    """A challenger version, pinned like the model itself, and the share of requests it scores."""

    version: str
    digest: str
    fraction: float = 1.0


def render_env(pod: PodModel, secret_name: str | None = None) -> list[dict[str, Any]]:
    """The container's `env`: only what is set, credentials by reference to the Secret."""
    values = {
        MODEL_NAME: pod.model_name,
        MODEL_TICKER: pod.ticker,
        MODEL_TICKERS: ",".join(pod.tickers),
        MODEL_ASSET_CLASS: pod.asset_class.value if pod.asset_class else None,
        MODEL_STAGE: pod.stage.value,
        MODEL_VERSION: pod.version,
        MODEL_DIGEST: pod.digest,
        S3_BUCKET: pod.bucket,
        S3_ENDPOINT_URL: pod.endpoint_url,
        AWS_REGION: pod.region,
        MODEL_CACHE_DIR: str(pod.cache_dir),
        PORT: str(pod.port),
        GRPC_PORT: str(pod.grpc_port),
        OMP_NUM_THREADS: OMP_NUM_THREADS.default,
        MODEL_SHADOW_VERSION: pod.shadow.version if pod.shadow else None,
        MODEL_SHADOW_DIGEST: pod.shadow.digest if pod.shadow else None,
        MODEL_SHADOW_FRACTION: f"{pod.shadow.fraction:g}" if pod.shadow and pod.shadow.fraction != 1 else None,
    }
    env: list[dict[str, Any]] = [{"name": var.name, "value": value} for var, value in values.items() if value]
    if secret_name:
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}} for key in CREDENTIALS]
    return env


def read_pod_model(env: Env) -> PodModel:
    """The pod's model settings; ConfigError names the variable to fix."""
    bucket = env.text(S3_BUCKET.name)
    if not bucket:
        raise ConfigError(f"{S3_BUCKET.name} is not set: name the bucket that holds the models")
    ticker = env.text(MODEL_TICKER.name).upper() or None
    version = env.optional(MODEL_VERSION.name)
    digest = env.optional(MODEL_DIGEST.name)
    tickers = tuple(t.strip().upper() for t in env.text(MODEL_TICKERS.name).split(",") if t.strip())
    try:
        if ticker:
            check_ticker(ticker)
        if version:
            check_version(version)
    except InvalidName as exc:
        raise ConfigError(f"{MODEL_TICKER.name}/{MODEL_VERSION.name}: {exc}") from None
    try:
        for declared in tickers:
            check_ticker(declared)
    except InvalidName as exc:
        raise ConfigError(f"{MODEL_TICKERS.name}: {exc}") from None
    if digest and not _DIGEST_RE.fullmatch(digest):
        raise ConfigError(
            f"{MODEL_DIGEST.name} {digest!r} is not a version digest: expected sha256:<64 lower-case hex digits>"
        )
    if (version or digest) and not ticker:
        raise ConfigError(f"{MODEL_VERSION.name}/{MODEL_DIGEST.name} pin one model: set {MODEL_TICKER.name} as well")
    asset = env.text(MODEL_ASSET_CLASS.name).lower() or None
    if asset is not None and asset not in {a.value for a in AssetClass}:
        raise ConfigError(f"{MODEL_ASSET_CLASS.name} must be etf or stock, got {asset!r}")
    try:
        stage = Stage.parse(env.text(MODEL_STAGE.name, MODEL_STAGE.default))
    except ValueError as exc:
        raise ConfigError(f"{MODEL_STAGE.name}: {exc}") from None
    port = env.integer(PORT.name, int(PORT.default), 0, 65535)
    grpc_port = env.integer(GRPC_PORT.name, int(GRPC_PORT.default), 0, 65535)
    if grpc_port and grpc_port == port:
        raise ConfigError(f"{GRPC_PORT.name} and {PORT.name} are both {port}: give gRPC its own port (0 turns it off)")
    return PodModel(
        bucket=bucket,
        endpoint_url=env.optional(S3_ENDPOINT_URL.name),
        region=env.text(AWS_REGION.name) or env.text("AWS_DEFAULT_REGION", AWS_REGION.default),
        ticker=ticker,
        asset_class=AssetClass(asset) if asset else None,
        stage=stage,
        version=version,
        digest=digest,
        model_name=env.optional(MODEL_NAME.name),
        cache_dir=Path(env.text(MODEL_CACHE_DIR.name, MODEL_CACHE_DIR.default)),
        port=port,
        tickers=tickers,
        shadow=_read_shadow(env, ticker, version),
        grpc_port=grpc_port,
    )


def _read_shadow(env: Env, ticker: str | None, champion: str | None) -> ShadowPin | None:
    version = env.optional(MODEL_SHADOW_VERSION.name)
    digest = env.optional(MODEL_SHADOW_DIGEST.name)
    if not version and not digest:
        return None
    what = f"{MODEL_SHADOW_VERSION.name}/{MODEL_SHADOW_DIGEST.name}"
    if not version or not digest:
        raise ConfigError(f"{what} pin the shadow challenger together: set both, or neither for no shadow")
    try:
        check_version(version)
    except InvalidName as exc:
        raise ConfigError(f"{MODEL_SHADOW_VERSION.name}: {exc}") from None
    if not _DIGEST_RE.fullmatch(digest):
        raise ConfigError(
            f"{MODEL_SHADOW_DIGEST.name} {digest!r} is not a version digest: expected sha256:<64 lower-case hex digits>"
        )
    if not ticker:
        raise ConfigError(f"{what}: a challenger shadows one model: set {MODEL_TICKER.name} as well")
    if version == champion:
        raise ConfigError(f"{MODEL_SHADOW_VERSION.name} is {version}, the served version itself: name another one")
    fraction = env.number(MODEL_SHADOW_FRACTION.name, float(MODEL_SHADOW_FRACTION.default), 0.0, 1.0)
    return ShadowPin(version, digest, fraction)
