"""Pure helpers for the TradingModel status: conditions, history, phases."""

from __future__ import annotations

from typing import Any

ROLLING_OUT, READY, ARCHIVED, CONFLICT, FAILED = (
    "RollingOut",
    "Ready",
    "Archived",
    "Conflict",
    "Failed",
)


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """A new condition list; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }
    return [c for c in conditions if c.get("type") != type_] + [new]


def condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def append_history(history: list[dict[str, Any]], entry: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The last `limit` entries; an entry whose id is there already is not added twice."""
    if entry.get("id") and any(h.get("id") == entry["id"] for h in history):
        return history
    return [*history, entry][-limit:]
