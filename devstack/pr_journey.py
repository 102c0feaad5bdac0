"""The promotion PR journey of `./dev demo`: each PR is a folder of manifests (the repository as
the PR leaves it); `tmctl check` reads it as CI would (its exit code and Markdown report), and a
PR that passes is merged (`kubectl apply`, what Argo CD or Flux would do).

    PR 1  stage SPY v1.3                                 check passes, spy-staging serves v1.3
    PR 2  spy-production shadows Staging (spec.shadow)   its pods score v1.3 beside v1.1
    PR 3  promote v1.3 to production                     the report shows the shadow agreement
    PR 4  a version that was never published             refused by the check
    PR 5  a version that skips staging                   refused by the check
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devstack.demo_model import feature_names, synthetic_market
from devstack.stack import LOCAL_KEYS, ROOT, SAMPLES, LocalStack, predict_at

Say = Callable[[str], None]
CHALLENGER = "v1.3"


def _sample(stack: LocalStack, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    doc["spec"]["storage"]["endpoint"] = stack.s3_endpoint
    return doc


def _pr(stack: LocalStack, number: int, docs: list[dict[str, Any]]) -> Path:
    folder = stack.dir / "prs" / f"pr-{number}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for doc in docs:
        (folder / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def tmctl_check(stack: LocalStack, folder: Path, *flags: str) -> tuple[int, str]:
    """The CI step: `tmctl check <folder>` with read-only S3 credentials; (exit code, report)."""
    done = subprocess.run(
        [sys.executable, "-m", "trading_operator.cli", "check", str(folder), "--crd",
         str(ROOT / "crds" / "tradingmodel.yaml"), "--endpoint", stack.s3_endpoint, *flags],
        capture_output=True, text=True, timeout=120, env={**os.environ, **LOCAL_KEYS},
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise RuntimeError(f"tmctl check failed to run ({done.returncode}): {done.stderr.strip()}")
    return done.returncode, done.stdout


def _show(say: Say, code: int, report: str, full: bool = False) -> None:
    say(f"    $ tmctl check prs/…  -> exit {code}")
    for line in report.strip().splitlines():
        if full or line.startswith(("## ", "| `", "- ❌", "**Shadow")):
            say(f"    {line}")


def _merge(stack: LocalStack, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        stack.kubectl("apply", "-f", "-", input=doc)


def ready_with(version: str) -> Callable[[dict[str, Any]], bool]:
    def check(tm: dict[str, Any]) -> bool:
        status = tm["status"]
        return bool(
            status.get("phase") == "Ready"
            and status.get("observedGeneration") == tm["metadata"].get("generation")
            and status.get("activeVersion") == version
        )

    return check


def _shadow_totals(urls: list[str]) -> dict[str, float]:
    """The shadow series of each pod's /metrics, summed over the pods."""
    totals: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(("tradingmodel_shadow_predictions_total", "tradingmodel_shadow_agreements_total",
                                    "tradingmodel_shadow_probability_abs_difference_total")):  # fmt: skip
                    name, _, value = line.rpartition(" ")
                    totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def journey(stack: LocalStack, say: Say, step: Callable[[], int]) -> None:
    production, staging = _sample(stack, "spy-production"), _sample(stack, "spy-staging")

    say(f"\n[{step()}] PR 1 stages SPY {CHALLENGER} (spy-staging.yaml: version {CHALLENGER}); CI runs tmctl check:")
    staging["spec"]["version"] = CHALLENGER
    docs = [production, staging]
    code, report = tmctl_check(stack, _pr(stack, 1, docs))
    _show(say, code, report)
    _merge(stack, [staging])
    stack.wait_for("spy-staging", ready_with(CHALLENGER), timeout=180)
    say(f"    merged: spy-staging serves {CHALLENGER}")

    say(f"\n[{step()}] PR 2 gives spy-production a shadow challenger (spec.shadow: {{fromStage: Staging}}):")
    production = copy.deepcopy(production)
    production["spec"]["shadow"] = {"fromStage": "Staging"}
    docs = [production, staging]
    code, report = tmctl_check(stack, _pr(stack, 2, docs))
    _show(say, code, report)
    _merge(stack, [production])
    tm = stack.wait_for(
        "spy-production",
        lambda t: ready_with("v1.1")(t) and (t["status"].get("shadow") or {}).get("version") == CHALLENGER,
        timeout=180,
    )
    shadow = next(c for c in tm["status"]["conditions"] if c["type"] == "Shadow")
    say(f"    merged: Shadow {shadow['status']} ({shadow['reason']}): {shadow['message']}")

    def scoring_pods() -> list[str]:
        urls = stack.endpoints("spy-production")
        return urls if len(urls) == 2 and all(b'state="scoring"' in _get(u + "/metrics") for u in urls) else []

    urls = stack.wait_until(scoring_pods, "both spy-production pods to score the challenger", 120)
    prometheus = stack.prometheus
    # these pods only: Prometheus' data in .stack/ keeps the last samples of an earlier run's pods
    instances = "|".join(url.split("://", 1)[1] for url in urls)
    series = (
        f'tradingmodel_shadow_predictions_total{{tradingmodel="spy-production",challenger="{CHALLENGER}",'
        f'instance=~"{instances}"}}'
    )
    if prometheus is not None:  # increase() counts from the first scrape: let it see the counters at 0
        try:
            stack.wait_until(lambda: len(prometheus.query(series)) >= len(urls), "Prometheus to scrape the pods", 90)
        except TimeoutError:
            say("    (Prometheus has not scraped every pod yet: the agreement below counts from its first scrape)")

    shadow_started = time.monotonic()  # the report's window starts here: .stack/ keeps earlier runs' series
    service = stack.wait_until(lambda: stack.service_url("spy-production"), "the spy-production Service", 30)
    rows, _ = synthetic_market(300, seed=31)
    names = feature_names()
    answered = {predict_at(service, "SPY", dict(zip(names, map(float, row), strict=True)))["model_version"]
                for row in rows}  # fmt: skip
    say(f"    300 predictions through the Service, answered by {', '.join(sorted(answered))}; the pods compared "
        f"{CHALLENGER}:")  # fmt: skip
    totals = _shadow_totals(urls)
    for name, value in sorted(totals.items()):
        say(f"      {name} {value:g}")
    compared = next((v for k, v in totals.items() if k.startswith("tradingmodel_shadow_predictions_total")), 0.0)

    say(f"\n[{step()}] PR 3 promotes {CHALLENGER} to production; the check reads the shadow agreement:")
    flags: tuple[str, ...] = ()
    if prometheus is not None:
        try:  # what the pods count now (a pod restarted meanwhile starts again from 0)
            stack.wait_until(lambda: sum(float(r["value"][1]) for r in prometheus.query(series)) >= compared,
                             "Prometheus to scrape the comparisons", 90)  # fmt: skip
        except TimeoutError:
            say("    (Prometheus has not scraped the last comparisons yet: the report counts what it holds)")
        window = f"{int(time.monotonic() - shadow_started) + 10}s"
        flags = ("--prometheus-url", prometheus.url, "--prometheus-window", window)
    else:
        say("    (no Prometheus on this machine: the report has no shadow agreement; apt-get install prometheus)")
    promoted = copy.deepcopy(production)
    promoted["spec"]["version"] = CHALLENGER
    code, report = tmctl_check(stack, _pr(stack, 3, [promoted, staging]), *flags)
    _show(say, code, report, full=True)
    _merge(stack, [promoted])
    tm = stack.wait_for("spy-production", ready_with(CHALLENGER), timeout=180)
    shadow = next(c for c in tm["status"]["conditions"] if c["type"] == "Shadow")
    say(f"    merged: spy-production serves {CHALLENGER}; Shadow {shadow['status']} ({shadow['reason']})")

    say(f"\n[{step()}] PRs the check refuses (they never merge):")
    for number, version, what in ((4, "v9.9", "a version that was never published"),
                                  (5, "v1.0", "a version that was never staged")):  # fmt: skip
        refused = copy.deepcopy(promoted)
        refused["spec"]["version"] = version
        say(f"  PR {number}: spy-production {version} ({what})")
        code, report = tmctl_check(stack, _pr(stack, number, [refused, staging]))
        _show(say, code, report)
        if code != 1:
            raise RuntimeError(f"tmctl check let PR {number} through:\n{report}")


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return bytes(reply.read())
    except OSError:
        return b""
