"""How GitOps tools read a TradingModel's health: Argo CD's Lua check (run with lupa) and kstatus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "manifests" / "argocd" / "tradingmodel-health.lua"


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health script as Argo CD does: a global `obj`, the script's returned table."""
    import lupa

    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(SCRIPT.read_text())
    return str(result["status"]), str(result["message"])


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus' generic rules (sigs.k8s.io/cli-utils): generation observed, Reconciling, Stalled, Ready."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return "InProgress"
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conditions.get("Stalled") == "True":
        return "Failed"
    if conditions.get("Reconciling") == "True" or conditions.get("Ready") != "True":
        return "InProgress"
    return "Current"
