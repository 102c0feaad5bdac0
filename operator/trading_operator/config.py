"""Every operator setting, read from the environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class OperatorConfig:
    serving_image: str = "ghcr.io/example/tradingmodel-operator:0.1.0"
    watch_namespace: str = ""  # empty: all namespaces
    drift_check_seconds: int = 60
    history_limit: int = 10
    serving_port: int = 8080
    retry_base_seconds: int = 5
    retry_max_seconds: int = 60  # a spec change made during a backoff waits for it (kopf)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            serving_image=os.environ.get("SERVING_IMAGE", cls.serving_image),
            watch_namespace=os.environ.get("WATCH_NAMESPACE", ""),
            drift_check_seconds=_int("DRIFT_CHECK_SECONDS", cls.drift_check_seconds, minimum=1),
            history_limit=_int("HISTORY_LIMIT", cls.history_limit, minimum=1),
            serving_port=_int("SERVING_PORT", cls.serving_port, minimum=1),
            retry_base_seconds=_int("RETRY_BASE_SECONDS", cls.retry_base_seconds, minimum=1),
            retry_max_seconds=_int("RETRY_MAX_SECONDS", cls.retry_max_seconds, minimum=1),
        )
