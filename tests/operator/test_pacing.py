"""The drift sweep's pace: every DRIFT_CHECK_SECONDS for few TradingModels or unsettled ones,
stretched at scale to DRIFT_CHECKS_PER_SECOND."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from trading_operator.pacing import Changes, drift_interval, drift_seconds, seconds_left, settled, when_idle


def _body(phase: str = "Ready", generation: int = 3, observed: int = 3) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": {"phase": phase, "observedGeneration": observed}}


def test_the_interval_is_the_configured_one_until_the_rate_would_be_exceeded() -> None:
    assert drift_interval(60, 100, 5) == 60
    assert drift_interval(60, 1000, 5) == 200


def test_a_rollout_of_what_its_generation_promoted_is_settled() -> None:
    assert settled(_body("RollingOut")) and settled(_body()) and settled(_body("Archived"))


def test_a_settled_model_among_many_waits_for_the_paced_interval() -> None:
    assert drift_seconds(True, 60, 100, 5) == 60  # few: every DRIFT_CHECK_SECONDS
    assert drift_seconds(True, 60, 1000, 5) == 200  # 1000 at 5 checks a second


def test_an_unsettled_model_is_checked_every_base_interval() -> None:
    for body in (_body("Failed"), _body("Conflict"), _body("RollingOut", observed=2), _body(observed=2), {}):
        assert not settled(body)
        assert drift_seconds(settled(body), 60, 1000, 5) == 60


def test_a_drift_pass_waits_while_a_change_runs_and_no_longer_than_its_interval() -> None:
    """Order, not speed: with nothing running it returns before any change starts; with a change
    running it returns after that change ended; a change that outlasts `longest` does not hold it."""

    async def scenario() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        changes = Changes()
        seen: list[str] = []

        async def change(seconds: float) -> None:
            with changes.running():
                seen.append("change started")
                await asyncio.sleep(seconds)
                seen.append("change ended")

        await when_idle(changes, longest=60)
        seen.append("idle at once")
        task = asyncio.create_task(change(0.3))
        await asyncio.sleep(0)
        await when_idle(changes, longest=60, poll=0.05)
        seen.append("idle after the change")
        await task

        with changes.running():  # a change that outlasts the wait
            started = loop.time()
            await when_idle(changes, longest=0.2, poll=0.05)
            waited = loop.time() - started
        assert not changes.busy()
        return seen, waited

    seen, waited = asyncio.run(scenario())
    assert seen == ["idle at once", "change started", "change ended", "idle after the change"]
    assert waited >= 0.2  # it waited its longest, then went ahead


def test_a_drift_pass_after_a_spec_pass_waits_out_an_interval_from_it() -> None:
    assert seconds_left(None, 60) == 0  # never checked by a spec pass: due as scheduled
    just_now = time.monotonic()
    assert 0 < seconds_left(just_now, 60) <= 60
    assert seconds_left(just_now - 61, 60) < 0  # checked longer ago than an interval: due
