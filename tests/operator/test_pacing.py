"""The drift timer's pace: every tick for few TradingModels or unsettled ones, stretched at scale."""

from __future__ import annotations

from typing import Any

from trading_operator.pacing import drift_due, drift_interval


def _body(phase: str = "Ready", generation: int = 3, observed: int = 3) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": {"phase": phase, "observedGeneration": observed}}


def test_the_interval_is_the_configured_one_until_the_rate_would_be_exceeded() -> None:
    assert drift_interval(60, 100, 5) == 60
    assert drift_interval(60, 1000, 5) == 200


def test_a_rollout_of_what_its_generation_promoted_is_settled() -> None:
    assert not drift_due(_body("RollingOut"), 0.0, 60.0, 60, 1000, 5)


def test_a_settled_model_among_few_is_checked_at_every_tick() -> None:
    assert drift_due(_body(), last_pass=0.0, now=59.0, base_seconds=60, population=100, per_second=5)


def test_a_settled_model_among_many_skips_ticks_until_its_interval_passed() -> None:
    due = [drift_due(_body(), 0.0, tick * 60.0, 60, 1000, 5) for tick in range(1, 5)]
    assert due == [
        False,
        False,
        True,
        True,
    ]  # 200 s at 5 checks a second: from the tick at 180 s (half a tick of slack)


def test_an_unsettled_or_never_checked_model_is_checked_at_every_tick() -> None:
    for body in (_body("Failed"), _body("Conflict"), _body("RollingOut", observed=2), _body(observed=2)):
        assert drift_due(body, 0.0, 60.0, 60, 1000, 5)
    assert drift_due(_body(), None, 60.0, 60, 1000, 5)
