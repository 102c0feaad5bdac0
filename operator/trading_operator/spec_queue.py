"""Spec passes started from `metadata.generation`, not from kopf's change detection.

kopf's on.create/on.update/on.resume handlers kept the last handled spec in an annotation: a
patch per change (and so one more watch event per change for every watcher), a diff of every
event of every TradingModel against it, and the handler run again whenever the watch brought our
own status writes before that annotation. The API server says what changed already: the
generation grows with every spec change and with nothing else. So the watch offers each
TradingModel with its generation, and a pass runs

- once for every TradingModel the operator sees first (created, or there when it started: kopf's
  resume), and
- for every generation newer than the last one offered,

one pass per TradingModel at a time: a newer generation that arrives during a pass runs another
(the pass may have read the older spec). A pass that asks for a retry runs again after its
backoff, at once when a newer generation arrives meanwhile (whose first pass counts retries from
zero again). A failure of the pass itself is logged and retried the same way. Event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """What a pass is told: `first` (no pass ran for this TradingModel in this process), and how
    many passes for this generation asked for a retry before (`retry`)."""

    first: bool
    retry: int
    body: dict[str, Any]  # the newest body the watch showed (what an Event is about)


# Seconds until the pass should run again, or None when it converged or failed for good.
RunPass = Callable[[Hashable, Attempt], Awaitable[float | None]]
FailureDelay = Callable[[int], float]  # retry count -> seconds, when the pass itself raised


@dataclass(eq=False)
class _State:
    generation: int
    body: dict[str, Any]
    retry: int = 0
    passes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    in_pass: bool = False  # a pass runs or waits for its turn (not: waits out a retry's backoff)


class SpecQueue:
    def __init__(self, run_pass: RunPass, failure_delay: FailureDelay) -> None:
        self._run_pass = run_pass
        self._failure_delay = failure_delay
        self._states: dict[Hashable, _State] = {}

    def __len__(self) -> int:
        """TradingModels with a pass running or a retry waiting."""
        return sum(state.task is not None for state in self._states.values())

    def in_pass(self, key: Hashable) -> bool:
        """A pass of this TradingModel runs or waits for its turn (not: waits out a retry's backoff)."""
        state = self._states.get(key)
        return state is not None and state.in_pass

    def offer(self, key: Hashable, body: dict[str, Any]) -> None:
        """The watch showed this TradingModel (not deleted)."""
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State(generation, body)
        else:
            state.body = body
            if generation <= state.generation:  # our own status write, or an older event
                return
            state.generation, state.retry = generation, 0
            state.wake.set()  # a retry waiting for its backoff runs now
        if state.task is None:
            # kopf's context is copied with it: kopf.event works in the passes
            state.task = asyncio.ensure_future(self._work(key, state))

    def forget(self, key: Hashable) -> None:
        """It was deleted: no more passes (one running finishes and finds it gone)."""
        state = self._states.pop(key, None)
        if state is not None:
            state.wake.set()

    def cancel(self) -> None:
        for state in self._states.values():
            if state.task is not None:
                state.task.cancel()

    async def _work(self, key: Hashable, state: _State) -> None:
        try:
            while self._states.get(key) is state:
                generation = state.generation
                state.wake.clear()
                attempt = Attempt(first=state.passes == 0, retry=state.retry, body=state.body)
                state.passes += 1
                state.in_pass = True
                try:
                    delay = await self._run_pass(key, attempt)
                except Exception:  # as kopf did with a handler that raised: logged, tried again later
                    delay = self._failure_delay(attempt.retry)
                    log.exception("spec pass of %s failed; retrying in %.0f s", key, delay)
                finally:
                    state.in_pass = False
                if state.generation != generation:
                    continue  # a newer spec arrived during the pass
                if delay is None:
                    return
                state.retry += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):  # not wait_for: see rollouts.py
                        await state.wake.wait()
        finally:
            state.task = None
