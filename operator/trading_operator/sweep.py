"""Periodic passes over every TradingModel, without kopf's timers.

kopf puts a finalizer on every object that has a timer (to stop the timer before the object goes),
and a finalizer outlives the operator: uninstalled first (Argo CD and Flux prune in any order), it
leaves every TradingModel, and so its namespace, Terminating for ever. Nothing else needs one: the
Deployment and Service go with their owner by garbage collection, and a deletion changes nothing in
S3. So the operator keeps its own schedule: kopf's watch tells it which TradingModels exist
(`track`, `forget`), and `run` starts each one's pass when it is due, one pass per object at a time,
the next one `interval` seconds after the last one ended (as kopf's timers did).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


class Sweep:
    def __init__(
        self,
        interval: float,
        run_pass: Callable[[Hashable], Awaitable[None]],
        interval_for: Callable[[Hashable], float] | None = None,
    ) -> None:
        self.interval = interval
        self._interval_for = interval_for  # a key's own interval (the drift sweep's pace), else `interval`
        self._run_pass = run_pass
        self._due: list[tuple[float, int, Hashable]] = []  # (when, tie-breaker, key): a heap
        self._order = itertools.count()
        self._tracked: set[Hashable] = set()
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._tracked)

    def track(self, key: Hashable) -> None:
        """A TradingModel exists: its first pass comes `interval` seconds from now."""
        if key not in self._tracked:
            self._tracked.add(key)
            self._schedule(key)

    def forget(self, key: Hashable) -> None:
        """It was deleted: no more passes (a pass already running finishes and finds it gone)."""
        self._tracked.discard(key)

    def _schedule(self, key: Hashable) -> None:
        interval = self._interval_for(key) if self._interval_for else self.interval
        heapq.heappush(self._due, (asyncio.get_running_loop().time() + interval, next(self._order), key))
        self._changed.set()

    async def run(self) -> None:
        """Start the passes as they fall due, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            now = loop.time()
            while self._due and self._due[0][0] <= now:
                _, _, key = heapq.heappop(self._due)
                if key in self._tracked and key not in self._running:
                    self._running[key] = asyncio.ensure_future(self._one(key))
            timeout = self._due[0][0] - now if self._due else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that comes together
            # with the wake (a key tracked), and the sweep would then outlive the operator's stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()

    async def _one(self, key: Hashable) -> None:
        try:
            await self._run_pass(key)
        except Exception:  # a failed pass is tried again at the next interval, as kopf's timers did
            log.exception("periodic pass of %s failed", key)
        finally:
            self._running.pop(key, None)
            if key in self._tracked:
                self._schedule(key)
