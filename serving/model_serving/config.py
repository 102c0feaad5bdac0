"""Every setting of the serving process, read from the environment in one place.

The operator sets the model and S3 variables on the serving container (the pod contract,
`pod_contract`); the SERVING_* knobs have defaults that suit a pod and rarely need touching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from pod_contract import DRAIN_SECONDS, GRACEFUL_SECONDS, ConfigError, Env, PodModel, read_pod_model

__all__ = ["ConfigError", "Settings"]


# The body limit's default lets a request of SERVING_MAX_BATCH_ROWS rows through in every encoding: the
# binary tensor extension and gRPC carry 8 bytes per FP64 value, JSON up to ~26 (a float64 written out
# in full, its separator, and for the seeds' objects the feature name too, ~40 more). 10,000 rows of
# 84 features in JSON are about 22 MB (the seeds' named objects ~45 MB with 30-character names), far
# above the old 1 MiB that refused a 1,000-row JSON batch while 10,000 rows were "allowed". A large
# body no longer risks memory: JSON bodies are counted (values, not bytes) against the row limit
# before they are parsed (payloads.check_value_count), so the body limit only bounds bytes held.
DEFAULT_MAX_BATCH_ROWS = 10_000
DEFAULT_MAX_BODY_BYTES = 64 << 20


@dataclass(frozen=True, kw_only=True)  # kw_only: PodModel ends with defaulted fields
class Settings(PodModel):
    """The pod contract plus the serving knobs."""

    host: str
    log_level: str
    compile_trees: bool
    max_body_bytes: int
    max_batch_rows: int
    null_as_missing: bool
    registry_ttl_seconds: float
    manifest_wait_seconds: float
    graceful_timeout_seconds: float
    load_retry_max_seconds: float
    max_buffered_bytes: int
    cache_versions: int
    cache_max_bytes: int
    max_request_line_bytes: int
    max_header_bytes: int
    max_header_count: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    keepalive_timeout_seconds: float
    drain_seconds: float
    reload_token: str
    shadow_timeout_seconds: float

    @classmethod
    def from_env(cls, source: Mapping[str, str] | None = None) -> Settings:
        env = Env(source)
        pod = read_pod_model(env)
        return cls(
            **{f.name: getattr(pod, f.name) for f in fields(PodModel)},
            host=env.text("HOST", "0.0.0.0"),
            log_level=env.log_level("LOG_LEVEL", "INFO"),
            compile_trees=env.flag("SERVING_COMPILE_TREES", True),
            max_body_bytes=env.integer("SERVING_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 1 << 30),
            max_batch_rows=env.integer("SERVING_MAX_BATCH_ROWS", DEFAULT_MAX_BATCH_ROWS, 1, 10_000_000),
            null_as_missing=env.flag("SERVING_NULL_AS_MISSING", False),
            registry_ttl_seconds=env.seconds("SERVING_REGISTRY_TTL_SECONDS", 60.0),
            manifest_wait_seconds=env.seconds("SERVING_MANIFEST_WAIT_SECONDS", 10.0),
            graceful_timeout_seconds=env.seconds(GRACEFUL_SECONDS.name, float(GRACEFUL_SECONDS.default)),
            load_retry_max_seconds=env.seconds("SERVING_LOAD_RETRY_MAX_SECONDS", 60.0),
            cache_versions=env.integer("SERVING_CACHE_VERSIONS", 2, 1, 1000),
            cache_max_bytes=env.integer("SERVING_CACHE_MAX_BYTES", 1 << 30, 1 << 20, 1 << 40),
            max_buffered_bytes=env.integer("SERVING_MAX_BUFFERED_BYTES", 128 << 20, 1 << 20, 1 << 34),
            max_request_line_bytes=env.integer("SERVING_MAX_REQUEST_LINE_BYTES", 8192, 256, 1 << 20),
            max_header_bytes=env.integer("SERVING_MAX_HEADER_BYTES", 32768, 1024, 1 << 22),
            max_header_count=env.integer("SERVING_MAX_HEADER_COUNT", 100, 8, 10_000),
            header_timeout_seconds=env.seconds("SERVING_HEADER_TIMEOUT_SECONDS", 10.0),
            body_timeout_seconds=env.seconds("SERVING_BODY_TIMEOUT_SECONDS", 15.0),
            keepalive_timeout_seconds=env.seconds("SERVING_KEEPALIVE_TIMEOUT_SECONDS", 5.0),
            drain_seconds=env.seconds(DRAIN_SECONDS.name, float(DRAIN_SECONDS.default)),
            reload_token=env.text("SERVING_RELOAD_TOKEN", ""),
            # a challenger call slower than this (per 1,000 rows) is a timeout: dropped, counted
            shadow_timeout_seconds=env.seconds("SERVING_SHADOW_TIMEOUT_SECONDS", 0.02, 0.0001, 60),
        )
