"""The shadow agreement a promotion PR shows: how production pods that scored the proposed version
beside the one serving (spec.shadow) compared, read from Prometheus' HTTP API (read-only).

The serving pods export counters per model, champion and challenger version (model_serving
metrics, `tradingmodel_shadow_*`); over the window, summed over every pod:

    agreement rate      increase(agreements) / increase(predictions)
    mean |Δp|           increase(probability_abs_difference) / increase(predictions)
    failures            increase(failures)   (errors, timeouts, incompatible rows)
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

_WINDOW_RE = re.compile(r"^[1-9][0-9]*[smhdw]$")
SERIES = {
    "compared": "tradingmodel_shadow_predictions_total",
    "agreements": "tradingmodel_shadow_agreements_total",
    "abs_difference": "tradingmodel_shadow_probability_abs_difference_total",
    "failures": "tradingmodel_shadow_failures_total",
}


class PrometheusError(Exception):
    """Prometheus could not be read; the message says where and why."""


@dataclass(frozen=True)
class ShadowAgreement:
    champion: str
    challenger: str
    window: str
    compared: float
    agreements: float
    abs_difference: float
    failures: float

    @property
    def agreement_rate(self) -> float | None:
        return self.agreements / self.compared if self.compared else None

    @property
    def mean_abs_difference(self) -> float | None:
        return self.abs_difference / self.compared if self.compared else None

    def describe(self) -> str:
        rate, mean = self.agreement_rate, self.mean_abs_difference
        if rate is None or mean is None:
            return (
                f"no shadow data: no production pod scored {self.challenger} beside {self.champion} in the last "
                f"{self.window} (set spec.shadow on the production TradingModel and let it see traffic first)"
            )
        failed = f"; {self.failures:,.0f} challenger failures (see tradingmodel_shadow_failures_total)"
        return (
            f"production pods scored {self.challenger} beside {self.champion} on {self.compared:,.0f} predictions "
            f"(last {self.window}): same strategy {rate:.1%} of the time, mean absolute probability difference "
            f"{mean:.4f}" + (failed if self.failures else "")
        )


def check_window(window: str) -> str:
    if not _WINDOW_RE.match(window):
        raise ValueError(f"--prometheus-window {window!r} must be a Prometheus duration such as 30m, 24h or 7d")
    return window


def query_agreement(
    url: str, model: str, champion: str, challenger: str, window: str = "7d", timeout: float = 10.0
) -> ShadowAgreement:
    """The shadow counters of (model, champion, challenger) over `window`, from Prometheus at `url`."""
    selector = f'{{model="{model}",champion="{champion}",challenger="{challenger}"}}'
    values = {
        name: _scalar(url, f"sum(increase({series}{selector}[{check_window(window)}]))", timeout)
        for name, series in SERIES.items()
    }
    return ShadowAgreement(champion, challenger, window, **values)


def _scalar(url: str, promql: str, timeout: float) -> float:
    endpoint = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as reply:
            doc = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise PrometheusError(f"{url} answered {exc.code} to {promql!r}: {exc.read()[:300]!r}") from None
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"cannot query Prometheus at {url}: {exc}") from None
    if doc.get("status") != "success":
        raise PrometheusError(f"{url} refused {promql!r}: {doc.get('error') or doc}")
    result = (doc.get("data") or {}).get("result") or []
    return float(result[0]["value"][1]) if result else 0.0
