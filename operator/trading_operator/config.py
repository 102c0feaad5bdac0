"""Every operator setting, read from the environment in one place."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pod_contract import GRPC_PORT, Env
from pod_contract.env import ConfigError

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class OperatorConfig:
    serving_image: str = ""  # required by `tmctl operator`: the manifests set it from their `images:`
    watch_namespace: str = ""  # empty: all namespaces
    drift_check_seconds: int = 60  # list each stage: stray, missing or rewritten files
    drift_checks_per_second: int = 5  # at most this many settled TradingModels checked a second (many: longer)
    deep_check_seconds: int = 3600  # hash each stage file against its manifest
    history_limit: int = 10
    serving_port: int = 8080
    retry_base_seconds: int = 5
    retry_max_seconds: int = 60  # a spec change made during a backoff waits for it (kopf)
    metrics_port: int = 0  # the operator's own /metrics (reconciles, S3 requests); 0: off
    # A rollout's Deployment events within this long after the first one cost one pass (rollouts.py);
    # an event that completes or stalls the rollout starts the pass at once. 0: a pass per step.
    rollout_settle_seconds: float = 1.0
    workers: int = 32  # spec passes at once (they mostly wait on S3); the connection pools follow it
    log_level: str = "WARNING"  # the operator's and kopf's logs; `tmctl operator --verbose` means DEBUG
    # kopf peering (several replicas, one acts): the peering object's name, and how long a
    # replica's keep-alive counts before its peers take over. standalone: no peering (one replica
    # only, for a cluster without the kopf.dev CRDs).
    standalone: bool = False
    peering_name: str = "tradingmodel-operator"
    peering_lifetime_seconds: int = 15
    # The S3 requests the store repeats sent without botocore's per-request pipeline
    # (model_store/lean_s3.py); false: every request through boto3, as a way back.
    lean_s3: bool = True

    @classmethod
    def from_env(cls, source: Mapping[str, str] | None = None) -> OperatorConfig:
        env = Env(source)
        day = 86_400
        serving_port = env.integer("SERVING_PORT", cls.serving_port, 1, 65535)
        if serving_port == int(GRPC_PORT.default):
            raise ConfigError(f"SERVING_PORT {serving_port} is the serving pods' gRPC port; choose another HTTP port")
        return cls(
            serving_image=env.text("SERVING_IMAGE", cls.serving_image),
            watch_namespace=env.text("WATCH_NAMESPACE"),
            drift_check_seconds=env.integer("DRIFT_CHECK_SECONDS", cls.drift_check_seconds, 1, day),
            drift_checks_per_second=env.integer("DRIFT_CHECKS_PER_SECOND", cls.drift_checks_per_second, 1, 10_000),
            deep_check_seconds=env.integer("DEEP_CHECK_SECONDS", cls.deep_check_seconds, 1, 7 * day),
            history_limit=env.integer("HISTORY_LIMIT", cls.history_limit, 1, 1000),
            serving_port=serving_port,
            retry_base_seconds=env.integer("RETRY_BASE_SECONDS", cls.retry_base_seconds, 1, day),
            retry_max_seconds=env.integer("RETRY_MAX_SECONDS", cls.retry_max_seconds, 1, day),
            metrics_port=env.integer("METRICS_PORT", cls.metrics_port, 0, 65535),
            rollout_settle_seconds=env.seconds("ROLLOUT_SETTLE_SECONDS", cls.rollout_settle_seconds, 0, 60),
            workers=env.integer("WORKERS", cls.workers, 1, 256),
            log_level=env.log_level("LOG_LEVEL", cls.log_level),
            standalone=env.flag("STANDALONE", cls.standalone),
            peering_name=_object_name(env.text("PEERING_NAME", cls.peering_name), "PEERING_NAME"),
            peering_lifetime_seconds=env.integer("PEERING_LIFETIME_SECONDS", cls.peering_lifetime_seconds, 2, 600),
            lean_s3=env.flag("S3_LEAN_REQUESTS", cls.lean_s3),
        )


def _object_name(value: str, variable: str) -> str:
    if not _DNS_SUBDOMAIN.match(value):
        raise ConfigError(f"{variable} must be a Kubernetes object name (lower-case letters, digits, '-', '.'), "
                          f"got {value!r}")  # fmt: skip
    return value
