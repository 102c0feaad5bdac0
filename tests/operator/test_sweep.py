"""The operator's own periodic passes (trading_operator/sweep.py), which replace kopf's timers so
that no TradingModel carries a finalizer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable

from trading_operator.sweep import Sweep


async def until(check: object, what: str) -> None:
    async def poll() -> None:
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), 30)  # a guard against a hang, not a measurement
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


def test_each_tracked_key_gets_passes_one_at_a_time_until_forgotten() -> None:
    async def scenario() -> None:
        passes: Counter[Hashable] = Counter()
        running: set[Hashable] = set()
        overlapped: list[Hashable] = []
        release = asyncio.Event()

        async def run_pass(key: Hashable) -> None:
            if key in running:
                overlapped.append(key)
            running.add(key)
            passes[key] += 1
            if key == "slow":
                await release.wait()  # still running when the next pass would be due
            running.discard(key)

        sweep = Sweep(0.01, run_pass)
        task = asyncio.create_task(sweep.run())
        sweep.track("a")
        sweep.track("slow")
        sweep.track("a")  # tracked twice: still one schedule
        await until(lambda: passes["a"] >= 5, "five passes of a")
        assert passes["slow"] == 1 and overlapped == []  # a pass never overlaps the previous one
        release.set()
        await until(lambda: passes["slow"] >= 2, "slow's next pass once the first one ended")

        sweep.forget("a")
        await asyncio.sleep(0.05)
        after = passes["a"]
        await until(lambda: passes["slow"] >= 4, "slow goes on")
        assert passes["a"] == after  # forgotten: no more passes
        assert len(sweep) == 1
        task.cancel()

    asyncio.run(scenario())


def test_a_failing_pass_is_tried_again() -> None:
    async def scenario() -> None:
        calls = Counter[str]()

        async def run_pass(key: Hashable) -> None:
            calls["x"] += 1
            raise RuntimeError("S3 is away")

        sweep = Sweep(0.01, run_pass)
        task = asyncio.create_task(sweep.run())
        sweep.track("x")
        await until(lambda: calls["x"] >= 3, "three tries")
        task.cancel()

    asyncio.run(scenario())
