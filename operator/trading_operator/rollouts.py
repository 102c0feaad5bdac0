"""Rollout passes coalesced per TradingModel, as a controller's work queue keeps a key once.

A rollout is a burst of Deployment events (the new pod created, ready, the old one retired), each
of which used to start a pass (read the TradingModel, count the new version's ready pods, write
the status). Here an event only queues its owner with the newest Deployment it showed; the pass
starts `settle_seconds` later and takes whatever newer Deployment arrived meanwhile, so a burst
costs one pass. An event that ends a rollout (complete, stalled, or the Deployment deleted) starts
the waiting pass at once: Ready is never late. A key is taken when its pass starts, so an event
during a pass queues another (the pass may have read older state). Event loop only: no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
Deployment = dict[str, Any] | None  # None: deleted (the pass reads it, and re-creates it)
RunPass = Callable[[Deployment], Awaitable[None]]


@dataclass
class _Waiting:
    deployment: Deployment
    run_pass: RunPass
    now: asyncio.Event = field(default_factory=asyncio.Event)


class RolloutQueue:
    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._waiting: dict[Hashable, _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, key: Hashable, deployment: Deployment, final: bool, run_pass: RunPass) -> None:
        """The newest Deployment of `key`'s owner; `final`: it ends the rollout (no waiting).
        `run_pass` runs the pass (the waiting pass keeps the first event's)."""
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = _Waiting(deployment, run_pass)
            task = asyncio.ensure_future(self._one(key, waiting))  # kopf's context is copied with it
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiting.deployment = deployment
        if final or self.settle_seconds <= 0:
            waiting.now.set()

    async def _one(self, key: Hashable, waiting: _Waiting) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel (cancel()) that comes
        # together with the event, and the pass would then run while the operator stops
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settle_seconds):
                await waiting.now.wait()
        del self._waiting[key]  # from here an event queues the next pass
        try:
            await waiting.run_pass(waiting.deployment)
        except Exception:  # as kopf does for an event handler: logged, and the next event tries again
            log.exception("rollout pass of %s failed", key)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
