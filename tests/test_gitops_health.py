"""GitOps tools read the TradingModel's health: Argo CD through our Lua check (run here with the
real Lua interpreter, lupa), Flux through kstatus' conditions; on statuses the operator decides."""

from __future__ import annotations

from typing import Any

import pytest

from helpers.gitops import argocd_health, kstatus
from model_store.errors import CorruptVersion, VersionNotFound
from model_store.promotion import PromotionResult
from trading_operator.config import OperatorConfig
from trading_operator.decide import StoreOutcome, View, decide

DIGEST = "sha256:" + "cd" * 32
SPEC = {"ticker": "SPY", "version": "v1.1", "stage": "Production", "storage": {"bucket": "models"}}
MOVE = {"id": "m", "at": "t", "action": "promote", "from_version": None, "to_version": "v1.1", "digest": DIGEST}


def tradingmodel(status: dict[str, Any] | None = None, generation: int = 2, **spec: Any) -> dict[str, Any]:
    meta = {"name": "spy-production", "namespace": "trading", "uid": "u", "generation": generation}
    return {"metadata": meta, "spec": {**SPEC, **spec}, "status": status or {}}


def decided(obj: dict[str, Any], store: StoreOutcome, **view: Any) -> dict[str, Any]:
    plan = decide(View(body=obj, config=OperatorConfig(), now="2026-11-28T00:00:00Z", **view), store)
    return {**obj, "status": plan.status}


PROMOTED = StoreOutcome(result=PromotionResult(True, True, "v1.1", DIGEST, MOVE))


def test_a_new_tradingmodel_is_progressing_until_the_operator_has_seen_it() -> None:
    assert argocd_health(tradingmodel())[0] == "Progressing"
    assert kstatus(tradingmodel()) == "InProgress"


def test_rolling_out_then_ready() -> None:
    rolling = decided(tradingmodel(), PROMOTED)
    assert argocd_health(rolling) == ("Progressing", "0/1 pods ready with v1.1")
    assert kstatus(rolling) == "InProgress"
    ready = {
        **rolling,
        "status": {**rolling["status"], "phase": "Ready",
                   "conditions": [{"type": "Ready", "status": "True", "message": "1/1 pods serve v1.1"}]},
    }  # fmt: skip
    assert argocd_health(ready) == ("Healthy", "1/1 pods serve v1.1")
    assert kstatus(ready) == "Current"
    newer_spec = {**ready, "metadata": {**ready["metadata"], "generation": 3}}
    assert argocd_health(newer_spec)[0] == "Progressing" and kstatus(newer_spec) == "InProgress"


@pytest.mark.parametrize(
    ("store", "view", "health", "flux"),
    [
        (StoreOutcome(error=CorruptVersion("lightgbm_model.txt has 8 bytes")), {}, "Degraded", "Failed"),
        (StoreOutcome(error=VersionNotFound("v1.1 is not published")), {}, "Degraded", "InProgress"),
        (StoreOutcome(), {"rival": "trading/spy-old"}, "Degraded", "Failed"),
    ],
)
def test_failures_and_conflicts_are_degraded(store: StoreOutcome, view: dict[str, Any], health: str, flux: str) -> None:
    obj = decided(tradingmodel(), store, **view)
    status, message = argocd_health(obj)
    assert status == health and message  # the message says why
    assert kstatus(obj) == flux


def test_archived_is_suspended() -> None:
    obj = decided(tradingmodel(stage="Archived"), StoreOutcome())
    assert argocd_health(obj) == ("Suspended", "Archived: serving scaled to zero, archive/ kept")
