"""Who owns a stage: pure rules over the claims kopf's index keeps (no listing of the cluster).

A TradingModel that is not archived claims one stage prefix (`TradingModelSpec.claim`). The one
whose status records the claim holds it and keeps it until it is archived, deleted or moved to
another claim; any other claimant is in Conflict. When nobody holds a claim (a new stage, or its
holder went away), the oldest claimant takes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trading_operator.spec import InvalidSpec, parse_spec


@dataclass(frozen=True)
class Claimant:
    namespace: str
    name: str
    uid: str
    created: str  # creationTimestamp: the tie-break when nobody holds the claim
    holds: bool  # its status records the claim

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rank(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


def claim_of(body: dict[str, Any]) -> tuple[str, Claimant] | None:
    """The claim a TradingModel makes and how it stands on it; None when it claims nothing."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    try:
        model = parse_spec(body.get("spec") or {})
    except InvalidSpec:
        return None
    if model.archived:
        return None
    claim = model.claim()
    holds = (body.get("status") or {}).get("claim") == claim
    return claim, Claimant(
        meta.get("namespace") or "", meta.get("name") or "", meta.get("uid") or "", meta.get("creationTimestamp") or "",
        holds,
    )  # fmt: skip


def index_entry(body: dict[str, Any]) -> dict[str, Claimant]:
    """What kopf's claims index holds for a TradingModel: {claim: claimant}, or {} when it claims
    nothing (archived, deleting, an unreadable spec). Never None: kopf keeps an object's previous
    entries when the index function returns None, so an archived holder would go on holding its
    stage and keep every newcomer in Conflict; an empty mapping makes kopf drop them."""
    found = claim_of(body)
    return {found[0]: found[1]} if found else {}


def rival(me: Claimant, claimants: Iterable[Claimant]) -> Claimant | None:
    """The claimant that keeps the claim instead of `me`, or None when `me` may hold it."""
    others = [c for c in claimants if (c.namespace, c.name) != (me.namespace, me.name)]
    holders = [c for c in others if c.holds]
    if me.holds:  # two holders can only follow a lost status write: the older keeps it
        return min((h for h in holders if h.rank() < me.rank()), key=Claimant.rank, default=None)
    if holders:
        return min(holders, key=Claimant.rank)
    return min((c for c in others if c.rank() < me.rank()), key=Claimant.rank, default=None)
