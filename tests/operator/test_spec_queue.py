"""The spec queue: a pass per new generation (and one per TradingModel first seen), never one for
our own status writes or an older event, retries on their backoff, cut short by a newer spec."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from trading_operator.spec_queue import Attempt, SpecQueue

KEY = ("ns", "spy")


def tm(generation: int, observed: int | None = None, phase: str = "Ready") -> dict[str, Any]:
    return {
        "metadata": {"name": "spy", "namespace": "ns", "generation": generation},
        "status": {"phase": phase, "observedGeneration": observed if observed is not None else generation},
    }


class Passes:
    """Records each pass; answers each with the next of `answers` (None: done; seconds: retry),
    then None. A pass can be held open to send events while it runs."""

    def __init__(self, *answers: float | Exception | None) -> None:
        self.attempts: list[tuple[Hashable, Attempt]] = []
        self.answers = list(answers)
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()
        self.ended = asyncio.Event()

    async def run(self, key: Hashable, attempt: Attempt) -> float | None:
        self.attempts.append((key, attempt))
        self.started.set()
        await self.release.wait()
        self.ended.set()
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer

    def generations(self) -> list[int]:
        return [attempt.body["metadata"]["generation"] for _, attempt in self.attempts]


async def settle(queue: SpecQueue) -> None:
    """Until no pass runs nor waits (bounded: a stuck queue fails the test, not hangs it)."""
    async with asyncio.timeout(30):
        while len(queue):
            await asyncio.sleep(0.01)


def test_first_sight_passes_once_and_our_own_writes_and_older_events_do_not() -> None:
    async def scenario() -> Passes:
        passes = Passes()
        queue = SpecQueue(passes.run, failure_delay=lambda retry: 3600)
        queue.offer(KEY, tm(3, observed=2))  # the operator starts: every TradingModel once (resume)
        await settle(queue)
        queue.offer(KEY, tm(3))  # the status that pass wrote
        queue.offer(KEY, tm(2, observed=1))  # an older event, late
        await settle(queue)
        return passes

    passes = asyncio.run(scenario())
    assert [(key, attempt.first, attempt.retry) for key, attempt in passes.attempts] == [(KEY, True, 0)]


def test_each_new_generation_passes_and_one_seen_during_a_pass_passes_again() -> None:
    async def scenario() -> Passes:
        passes = Passes()
        queue = SpecQueue(passes.run, failure_delay=lambda retry: 3600)
        queue.offer(KEY, tm(1))
        await settle(queue)
        passes.release.clear()
        passes.started.clear()
        queue.offer(KEY, tm(2, observed=1))  # a spec change
        await asyncio.wait_for(passes.started.wait(), 30)
        queue.offer(KEY, tm(3, observed=1))  # another, while the pass for generation 2 runs
        queue.offer(KEY, tm(3, observed=1))  # the same event twice: still one more pass
        passes.release.set()
        await settle(queue)
        return passes

    passes = asyncio.run(scenario())
    assert passes.generations() == [1, 2, 3]
    assert [attempt.first for _, attempt in passes.attempts] == [True, False, False]


def test_a_retry_waits_its_backoff_and_a_newer_spec_cuts_it_short_with_retries_from_zero() -> None:
    async def scenario() -> Passes:
        passes = Passes(None, 0.01, 0.01, 3600.0)  # first seen; generation 2 fails twice, then waits an hour
        queue = SpecQueue(passes.run, failure_delay=lambda retry: 3600)
        queue.offer(KEY, tm(1))
        await settle(queue)
        queue.offer(KEY, tm(2, observed=1))
        async with asyncio.timeout(30):
            while len(passes.attempts) < 4:  # 2, its two retries; the third asked for an hour
                await asyncio.sleep(0.01)
        assert len(queue) == 1  # waiting
        queue.offer(KEY, tm(3, observed=2))  # a fix, pushed: no hour's wait
        await settle(queue)
        return passes

    passes = asyncio.run(scenario())
    assert passes.generations() == [1, 2, 2, 2, 3]
    assert [attempt.retry for _, attempt in passes.attempts] == [0, 0, 1, 2, 0]


def test_a_pass_that_raises_is_retried_on_the_failure_backoff() -> None:
    async def scenario() -> tuple[Passes, list[int]]:
        asked: list[int] = []

        def failure_delay(retry: int) -> float:
            asked.append(retry)
            return 0.01

        passes = Passes(RuntimeError("connection reset"), RuntimeError("again"), None)
        queue = SpecQueue(passes.run, failure_delay)
        queue.offer(KEY, tm(1))
        await settle(queue)
        return passes, asked

    passes, asked = asyncio.run(scenario())
    assert [attempt.retry for _, attempt in passes.attempts] == [0, 1, 2]
    assert asked == [0, 1]


def test_a_deleted_tradingmodel_gets_no_more_passes_and_a_new_one_by_that_name_does() -> None:
    async def scenario() -> Passes:
        passes = Passes(3600.0)  # the first pass asks for a retry in an hour
        queue = SpecQueue(passes.run, failure_delay=lambda retry: 3600)
        queue.offer(KEY, tm(5))
        async with asyncio.timeout(30):
            while len(passes.attempts) < 1:
                await asyncio.sleep(0.01)
        queue.forget(KEY)  # deleted: the waiting retry ends at once
        await settle(queue)
        queue.offer(KEY, tm(1))  # created again: generations start over
        await settle(queue)
        return passes

    passes = asyncio.run(scenario())
    assert passes.generations() == [5, 1]
    assert [attempt.first for _, attempt in passes.attempts] == [True, True]


def test_tradingmodels_do_not_share_passes() -> None:
    async def scenario() -> Passes:
        passes = Passes()
        queue = SpecQueue(passes.run, failure_delay=lambda retry: 3600)
        for name in ("spy", "qqq", "iwm"):
            queue.offer(("ns", name), tm(1))
        await settle(queue)
        return passes

    assert sorted(key for key, _ in asyncio.run(scenario()).attempts) == [("ns", "iwm"), ("ns", "qqq"), ("ns", "spy")]


def test_in_pass_while_a_pass_runs_or_waits_its_turn_not_while_a_retry_waits() -> None:
    """What the drift sweep asks before a drift pass: a spec pass in flight is about to read S3 and
    the cluster (a drift pass then would mostly repeat it); one waiting out a backoff is not."""

    async def scenario() -> list[bool]:
        passes = Passes(3600.0)  # the first pass asks for a retry in an hour
        queue = SpecQueue(passes.run, failure_delay=lambda retry: 3600)
        seen = [queue.in_pass(KEY)]  # never offered
        passes.release.clear()
        queue.offer(KEY, tm(1))
        await asyncio.wait_for(passes.started.wait(), 30)
        seen.append(queue.in_pass(KEY))  # running
        passes.release.set()
        async with asyncio.timeout(30):
            while queue.in_pass(KEY):
                await asyncio.sleep(0.01)
        seen.append(len(queue) == 1)  # waiting out its hour, no longer in a pass
        queue.forget(KEY)
        await settle(queue)
        return seen

    assert asyncio.run(scenario()) == [False, True, True]
