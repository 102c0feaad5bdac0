"""How often the drift sweep checks a TradingModel: every DRIFT_CHECK_SECONDS, stretched at scale.

A drift pass lists the stage and reads two manifests and the TradingModel: with a thousand
TradingModels and a 60 s interval that is 17 passes a second, more than a mass version change
leaves room for. The passes over settled TradingModels (Ready, Archived, or rolling out what a pass
of their generation promoted: Deployment events move those) are kept to DRIFT_CHECKS_PER_SECOND:
each is checked every max(DRIFT_CHECK_SECONDS, N / that rate) seconds. One that is not settled (a
retry due, a Conflict waiting for its stage, a spec change kopf did not hand over) is checked every
DRIFT_CHECK_SECONDS, as before.

Drift passes also give way to the passes a change starts (spec, rollout): while any of those
runs, a due drift pass waits, for one drift interval at most. A mass version change then spends
the operator's CPU on what someone waits for; the checks catch up once it settles. And a drift
pass that falls due less than an interval after a spec pass converged the same TradingModel waits
until an interval has passed since (a spec pass does all a drift pass does): after a mass change,
none runs for an interval.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def seconds_left(since: float | None, seconds: float) -> float:
    """How long until `seconds` have passed since `since` (time.monotonic; None: long ago)."""
    return 0.0 if since is None else since + seconds - time.monotonic()


class Changes:
    """How many passes started by a change (spec, rollout) are running, from any thread."""

    def __init__(self) -> None:
        self._running = 0
        self._guard = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._guard:
            self._running += 1
        try:
            yield
        finally:
            with self._guard:
                self._running -= 1

    def busy(self) -> bool:
        return self._running > 0


async def when_idle(changes: Changes, longest: float, poll: float = 0.5) -> None:
    """Return once no change's pass runs, or after `longest` seconds whatever runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + longest
    while changes.busy() and loop.time() < deadline:
        await asyncio.sleep(min(poll, max(deadline - loop.time(), 0.0)))
