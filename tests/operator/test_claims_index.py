"""The claims index as kopf keeps it: a TradingModel that stops claiming a stage (archived, or a
spec the operator cannot read) must leave the index, or its stale claim keeps every newcomer in
Conflict until it is deleted. kopf keeps an object's previous value when the indexing function
returns None, and drops it when the function returns an empty mapping; this test runs kopf's own
indexer so a change of that behaviour shows up here. (It does not import trading_operator.handlers:
that would register the operator's handlers in kopf's global registry, which the in-process kopf
tests in tests/devstack run.)"""

from __future__ import annotations

import copy
from typing import Any

from kopf._cogs.structs import bodies
from kopf._core.actions.execution import Outcome
from kopf._core.engines.indexing import OperatorIndexer, OperatorIndexers

from trading_operator.claims import Claimant, claims_of

CLAIM = "s3://options-trading-models/etfs/SPY/production/"


def tradingmodel(stage: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trading.io/v1alpha1",
        "kind": "TradingModel",
        "metadata": {"name": "spy-a", "namespace": "trading", "uid": "uid-a", "creationTimestamp": "2026-01-01T00:00Z"},
        "spec": {"ticker": "SPY", "version": "v1.0", "stage": stage, "storage": {"bucket": "options-trading-models"}},
        "status": status,
    }


def index_after(*bodies_seen: dict[str, Any]) -> dict[str, list[Claimant]]:
    """kopf's index once it has seen these versions of one object, in order."""
    indexers = OperatorIndexers()
    indexers["claims"] = OperatorIndexer()
    for raw in bodies_seen:
        body = bodies.Body(copy.deepcopy(raw))
        result = claims_of(dict(body))  # what handlers.tradingmodel_claims returns
        indexers.replace(body, {"claims": Outcome(final=True, result=result)})
    index = indexers["claims"].index
    return {key: list(index[key]) for key in index}


def test_a_holder_that_is_archived_leaves_the_claims_index() -> None:
    holding = tradingmodel("Production", claim=CLAIM)
    assert [c.holds for c in index_after(holding)[CLAIM]] == [True]
    assert index_after(holding, tradingmodel("Archived", claim=None)) == {}


def test_a_claimant_whose_spec_turns_unreadable_leaves_the_claims_index() -> None:
    broken = tradingmodel("Production")
    broken["spec"]["version"] = "not-a-version"
    assert index_after(tradingmodel("Production"), broken) == {}


def test_a_holder_keeps_its_stage_through_a_typo_until_its_own_pass_releases_it() -> None:
    typo = tradingmodel("Production", claim=CLAIM)
    typo["spec"]["version"] = "not-a-version"
    assert [c.holds for c in index_after(tradingmodel("Production", claim=CLAIM), typo)[CLAIM]] == [True]
    archived_not_yet_recorded = tradingmodel("Archived", claim=CLAIM)
    assert [c.holds for c in index_after(archived_not_yet_recorded)[CLAIM]] == [True]


def test_a_claimant_moving_to_another_stage_claims_only_the_new_one() -> None:
    moved = index_after(tradingmodel("Production", claim=CLAIM), tradingmodel("Staging"))
    assert list(moved) == [CLAIM.replace("production", "staging")]
