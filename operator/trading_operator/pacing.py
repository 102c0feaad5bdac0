"""How often the drift sweep checks a TradingModel: every DRIFT_CHECK_SECONDS, stretched at scale.

A drift pass lists the stage and reads two manifests and the TradingModel: with a thousand
TradingModels and a 60 s interval that is 17 passes a second, more than a mass version change
leaves room for. The passes over settled TradingModels (Ready, Archived, or rolling out what a pass
of their generation promoted: Deployment events move those) are kept to DRIFT_CHECKS_PER_SECOND:
each is checked every max(DRIFT_CHECK_SECONDS, N / that rate) seconds. One that is not settled (a
retry due, a Conflict waiting for its stage, a spec change kopf did not hand over) is checked every
DRIFT_CHECK_SECONDS, as before.
"""

from __future__ import annotations

from typing import Any

from trading_operator.status import ARCHIVED, READY, ROLLING_OUT


def drift_interval(base_seconds: float, population: int, per_second: float) -> float:
    """Seconds between two drift passes over one settled TradingModel among `population`."""
    return max(base_seconds, population / per_second)


def settled(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    return status.get("phase") in (READY, ARCHIVED, ROLLING_OUT) and status.get("observedGeneration") == generation


def drift_seconds(is_settled: bool, base_seconds: float, population: int, per_second: float) -> float:
    """Seconds from the end of one drift pass over a TradingModel to the start of its next."""
    return drift_interval(base_seconds, population, per_second) if is_settled else base_seconds
