"""The shadow challenger: a second version scored on the rows the served model (the champion) just
scored, in the same call, compared, counted, and never returned.

Nothing the challenger does reaches the client: an exception is counted as an error, a call over
its time budget is counted as a timeout (its result dropped, and the challenger rests a few
seconds so that a slow challenger cannot keep slowing requests down), and a challenger that
cannot read the champion's rows (a feature the champion does not have) is counted as
incompatible. What is compared, per row: the strategy each chose (agreement) and the mean
absolute difference of the strategy probabilities (strategies only one of them knows count with
probability 0 on the other side).

No thread and no allocation beyond numpy's per call: with compiled trees the challenger adds a
row's scoring (5-10 us) plus the comparison to a request.
"""

from __future__ import annotations

import logging
import math
import operator
import random
import time
from typing import TYPE_CHECKING

import numpy as np

from model_serving.metrics import Metrics

if TYPE_CHECKING:
    from model_serving.loading.served_model import ServedModel

log = logging.getLogger(__name__)

REST_SECONDS = 5.0  # after a timeout, the challenger sits out this long
_LOG_EVERY = 1000  # a failing challenger logs its first failure and then one in this many


class Incompatible(Exception):
    """The challenger needs a feature the champion's rows do not carry."""


class Shadow:
    """Scores `challenger` beside `champion`; `score` is called with every row the champion scored."""

    def __init__(
        self, champion: ServedModel, challenger: ServedModel, fraction: float, timeout_seconds: float, metrics: Metrics
    ) -> None:
        self.champion = champion
        self.challenger = challenger
        self.fraction = fraction
        self.timeout_seconds = timeout_seconds
        self._tally = metrics.shadow.tally(champion.key, champion.version, challenger.version)
        self._rest_until = 0.0
        self._failed = 0
        self.problem = ""
        try:
            self._columns = _columns(champion.feature_names, challenger.feature_names)
        except Incompatible as exc:
            self._columns = None
            self.problem = str(exc)
            log.error("the shadow challenger cannot score this model's rows", extra=self._extra(self.problem))
        self._width, self._scatter = _class_layout(champion.classes, challenger.classes)

    def score(self, rows: np.ndarray, probabilities: np.ndarray) -> None:
        """Compare the challenger with the champion's `probabilities` for `rows`. Never raises."""
        n = rows.shape[0]
        if self.fraction < 1.0 and random.random() >= self.fraction:
            self._tally.skip("sampled", n)
            return
        started = time.perf_counter()
        if started < self._rest_until:
            self._tally.skip("resting", n)
            return
        try:
            if self.problem:
                raise Incompatible(self.problem)
            theirs = self.challenger.predictor.predict_proba(rows if self._columns is None else rows[:, self._columns])
            elapsed = time.perf_counter() - started
            budget = self.timeout_seconds * max(1.0, n / 1000)
            if elapsed > budget:
                self._rest_until = started + elapsed + REST_SECONDS
                self._fail("timeout", f"took {elapsed * 1000:.1f} ms for {n} rows, over {budget * 1000:.1f} ms")
                return
            agreements, abs_difference = self._compare(probabilities, theirs)
        except Incompatible as exc:
            self._fail("incompatible", str(exc))
            return
        except Exception as exc:  # whatever the challenger does, the champion's answer goes out
            self._fail("error", repr(exc))
            return
        self._tally.compared_rows(n, agreements, abs_difference, time.perf_counter() - started)

    def _compare(self, ours: np.ndarray, theirs: np.ndarray) -> tuple[int, float]:
        if theirs.shape != (ours.shape[0], len(self.challenger.classes)):
            raise ValueError(f"the challenger returned shape {theirs.shape} for {ours.shape[0]} rows")
        if self._scatter is not None:  # other strategies or another order: compare in one column space
            aligned = np.zeros((ours.shape[0], self._width))
            aligned[:, self._scatter] = theirs
            theirs = aligned
            if self._width > ours.shape[1]:
                ours = np.pad(ours, ((0, 0), (0, self._width - ours.shape[1])))
        if ours.shape[0] == 1:  # plain Python: numpy's per-call overhead on ten numbers costs more than the math
            a, b = ours[0].tolist(), theirs[0].tolist()
            agree = a.index(max(a)) == b.index(max(b))  # the first of equal maxima, like argmax
            return int(agree), math.fsum(map(abs, map(operator.sub, a, b))) / len(a)
        agreements = int(np.count_nonzero(ours.argmax(axis=1) == theirs.argmax(axis=1)))
        return agreements, float(np.abs(ours - theirs).mean(axis=1).sum())

    def _fail(self, reason: str, detail: str) -> None:
        self._tally.failed(reason)
        if self._failed % _LOG_EVERY == 0:
            log.warning("shadow challenger failed; the response is not affected", extra=self._extra(detail, reason))
        self._failed += 1

    def _extra(self, detail: str, reason: str = "incompatible") -> dict[str, str]:
        return {
            "model": self.champion.key,
            "champion": self.champion.version,
            "challenger": self.challenger.version,
            "reason": reason,
            "error": detail,
        }


def _columns(champion: list[str], challenger: list[str]) -> np.ndarray | None:
    """Which of the champion's columns the challenger reads, in its order; None: the same columns."""
    if champion == challenger:
        return None
    index = {name: i for i, name in enumerate(champion)}
    missing = [name for name in challenger if name not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise Incompatible(f"the challenger needs features the model's requests do not carry: {shown}")
    return np.array([index[name] for name in challenger], dtype=np.intp)


def _class_layout(champion: list[str], challenger: list[str]) -> tuple[int, np.ndarray | None]:
    """(width of the compared columns, where each challenger column goes; None: same strategies, same order)."""
    if champion == challenger:
        return len(champion), None
    union = list(champion) + [name for name in challenger if name not in champion]
    position = {name: i for i, name in enumerate(union)}
    return len(union), np.array([position[name] for name in challenger], dtype=np.intp)
