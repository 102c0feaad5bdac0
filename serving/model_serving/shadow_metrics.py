"""The shadow challenger's counters, kept as plain numbers under one lock and exported at scrape time.

The challenger is scored on every request, so its bookkeeping is on the hot path: a
prometheus_client child costs a lock per `inc` and more per `observe` (five of them per request
measured ~20 us on a loaded 2-core machine, more than scoring the row). Here a request takes one
lock and adds a few numbers; `ShadowCollector` turns the tallies into the usual series when
Prometheus scrapes:

    tradingmodel_shadow_predictions_total{model,champion,challenger}
    tradingmodel_shadow_agreements_total{...}
    tradingmodel_shadow_probability_abs_difference_total{...}
    tradingmodel_shadow_duration_seconds_bucket/_sum/_count{...}
    tradingmodel_shadow_failures_total{...,reason}      error, timeout, incompatible
    tradingmodel_shadow_skipped_rows_total{...,reason}  sampled, resting
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

PREFIX = "tradingmodel_shadow"
LABELS = ["model", "champion", "challenger"]
FAILURES = ("error", "timeout", "incompatible")
SKIPS = ("sampled", "resting")
# A challenger scores a row in 5-10 us with compiled trees (~50 us with LightGBM's C API).
BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25)


class ShadowTally:
    """The counts of one (model, champion, challenger); monotonic for the life of the process."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.lock = threading.Lock()
        self.compared = 0
        self.agreements = 0
        self.abs_difference = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0
        self.calls = 0
        self.failures = dict.fromkeys(FAILURES, 0)
        self.skipped = dict.fromkeys(SKIPS, 0)

    def compared_rows(self, rows: int, agreements: int, abs_difference: float, seconds: float) -> None:
        slot = bisect.bisect_left(BUCKETS, seconds)
        with self.lock:
            self.compared += rows
            self.agreements += agreements
            self.abs_difference += abs_difference
            self.buckets[slot] += 1
            self.seconds += seconds
            self.calls += 1

    def failed(self, reason: str) -> None:
        with self.lock:
            self.failures[reason] += 1

    def skip(self, reason: str, rows: int) -> None:
        with self.lock:
            self.skipped[reason] += rows


class ShadowCollector:
    """Exports every tally; `tally(labels)` returns the same one for the same labels (a reloaded
    champion continues the counts of the one before)."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str, str], ShadowTally] = {}
        self._lock = threading.Lock()

    def tally(self, model: str, champion: str, challenger: str) -> ShadowTally:
        labels = (model, champion, challenger)
        with self._lock:
            found = self._tallies.get(labels)
            if found is None:
                found = self._tallies[labels] = ShadowTally(labels)
            return found

    def describe(self) -> Iterator[Metric]:
        return iter(self._families([]))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tallies = list(self._tallies.values())
        return iter(self._families(tallies))

    def _families(self, tallies: list[ShadowTally]) -> list[Metric]:
        def counter(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=LABELS + (extra or []))

        predictions = counter(
            "predictions", "Rows scored by both the served model (champion) and its shadow challenger."
        )
        agreements = counter(
            "agreements",
            "Compared rows where the challenger chose the champion's strategy; "
            "divided by tradingmodel_shadow_predictions_total: the agreement rate.",
        )
        difference = counter(
            "probability_abs_difference",
            "Sum over compared rows of the mean absolute difference of the strategy probabilities; "
            "divided by tradingmodel_shadow_predictions_total: the mean.",
        )
        failures = counter(
            "failures",
            "Requests the challenger could not score (error, timeout, incompatible); the answer was the champion's.",
            ["reason"],
        )
        skipped = counter(
            "skipped_rows",
            "Rows the challenger did not score (sampled: outside the fraction; resting: after a timeout).",
            ["reason"],
        )
        duration = HistogramMetricFamily(
            f"{PREFIX}_duration_seconds",
            "Time the challenger added to a request (scoring and comparing).",
            labels=LABELS,
        )
        for tally in tallies:
            labels = list(tally.labels)
            with tally.lock:
                predictions.add_metric(labels, tally.compared)
                agreements.add_metric(labels, tally.agreements)
                difference.add_metric(labels, tally.abs_difference)
                for reason, count in tally.failures.items():
                    failures.add_metric([*labels, reason], count)
                for reason, count in tally.skipped.items():
                    skipped.add_metric([*labels, reason], count)
                cumulative, running = [], 0
                for bound, count in zip([*map(str, BUCKETS), "+Inf"], tally.buckets, strict=True):
                    running += count
                    cumulative.append((bound, running))
                duration.add_metric(labels, cumulative, tally.seconds)
        return [predictions, agreements, difference, failures, skipped, duration]
