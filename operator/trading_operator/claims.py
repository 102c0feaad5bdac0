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


def claims_of(body: dict[str, Any]) -> dict[str, Claimant]:
    """The claims a TradingModel makes and how it stands on each: the stage its spec names, and
    the stage its status says it holds until a pass of its own releases it (after scaling down),
    so an archive, a typo in the spec or a move to another stage never frees a stage early."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return {}
    held = (body.get("status") or {}).get("claim")

    def claimant(holds: bool) -> Claimant:
        return Claimant(
            meta.get("namespace") or "", meta.get("name") or "", meta.get("uid") or "",
            meta.get("creationTimestamp") or "", holds,
        )  # fmt: skip

    found = {held: claimant(True)} if held else {}
    wanted = spec_claim(body)
    if wanted is not None:
        found[wanted] = claimant(wanted == held)
    return found


def spec_claim(body: dict[str, Any]) -> str | None:
    """The stage prefix the spec asks for (None: archived or not a valid spec)."""
    try:
        model = parse_spec(body.get("spec") or {})
    except InvalidSpec:
        return None
    return None if model.archived else model.claim()


def rival(me: Claimant, claimants: Iterable[Claimant]) -> Claimant | None:
    """The claimant that keeps the claim instead of `me`, or None when `me` may hold it."""
    others = [c for c in claimants if (c.namespace, c.name) != (me.namespace, me.name)]
    holders = [c for c in others if c.holds]
    if me.holds:  # two holders can only follow a lost status write: the older keeps it
        return min((h for h in holders if h.rank() < me.rank()), key=Claimant.rank, default=None)
    if holders:
        return min(holders, key=Claimant.rank)
    return min((c for c in others if c.rank() < me.rank()), key=Claimant.rank, default=None)
