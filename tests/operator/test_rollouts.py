"""The rollout work queue: a burst of Deployment events costs one pass, and Ready is never late."""

from __future__ import annotations

import asyncio
from typing import Any

from trading_operator.rollouts import Deployment, RolloutQueue


def deployment(step: int) -> dict[str, Any]:
    return {"metadata": {"name": "spy-production", "resourceVersion": str(step)}}


class Passes:
    """Records each pass's Deployment; a pass can be held open to send events while it runs."""

    def __init__(self) -> None:
        self.seen: list[Deployment] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.done = asyncio.Event()

    async def run(self, deployment: Deployment) -> None:
        self.seen.append(deployment)
        self.started.set()
        await self.release.wait()
        self.done.set()


def test_a_burst_of_events_runs_one_pass_with_the_newest_deployment_and_a_final_one_does_not_wait() -> None:
    async def scenario() -> Passes:
        passes = Passes()
        queue = RolloutQueue(settle_seconds=3600)  # only the final event can start the pass here
        for step in (1, 2, 3):
            queue.offer(("ns", "spy"), deployment(step), final=False, run_pass=passes.run)
        await asyncio.sleep(0)
        assert passes.seen == [] and len(queue) == 1
        queue.offer(("ns", "spy"), deployment(4), final=True, run_pass=passes.run)
        await asyncio.wait_for(passes.done.wait(), 30)
        return passes

    assert asyncio.run(scenario()).seen == [deployment(4)]


def test_a_quiet_rollout_step_gets_its_pass_after_the_settle_time() -> None:
    async def scenario() -> Passes:
        passes = Passes()
        queue = RolloutQueue(settle_seconds=0.05)
        queue.offer(("ns", "spy"), deployment(1), final=False, run_pass=passes.run)
        await asyncio.wait_for(passes.done.wait(), 30)
        return passes

    assert asyncio.run(scenario()).seen == [deployment(1)]


def test_an_event_during_a_pass_queues_another_and_owners_do_not_share_passes() -> None:
    async def scenario() -> tuple[Passes, Passes]:
        spy, qqq = Passes(), Passes()
        queue = RolloutQueue(settle_seconds=3600)
        spy.release.clear()
        queue.offer(("ns", "spy"), deployment(1), final=True, run_pass=spy.run)
        await asyncio.wait_for(spy.started.wait(), 30)  # the pass runs (it may have read older state)
        queue.offer(("ns", "spy"), deployment(2), final=True, run_pass=spy.run)
        queue.offer(("ns", "qqq"), None, final=True, run_pass=qqq.run)  # deleted: a pass to re-create it
        spy.done.clear()
        spy.release.set()
        await asyncio.wait_for(qqq.done.wait(), 30)
        while len(spy.seen) < 2:
            await asyncio.sleep(0.01)
        return spy, qqq

    spy, qqq = asyncio.run(scenario())
    assert spy.seen == [deployment(1), deployment(2)]
    assert qqq.seen == [None]


def test_a_failed_pass_is_logged_and_the_next_event_queues_a_new_one(caplog: Any) -> None:
    async def scenario() -> Passes:
        passes = Passes()
        queue = RolloutQueue(settle_seconds=3600)

        async def broken(_: Deployment) -> None:
            raise RuntimeError("the API went away")

        queue.offer(("ns", "spy"), deployment(1), final=True, run_pass=broken)
        while len(queue):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        queue.offer(("ns", "spy"), deployment(2), final=True, run_pass=passes.run)
        await asyncio.wait_for(passes.done.wait(), 30)
        return passes

    assert asyncio.run(scenario()).seen == [deployment(2)]
    assert "rollout pass of ('ns', 'spy') failed" in caplog.text
