"""kubectl (the real binary) against the local API over HTTP: the verbs people use every day."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
import yaml

from devstack.kube_api import LocalKubeAPI
from helpers.kube import WIDGET_CRD, HttpApi, Kubectl, wait_for

REPO = pathlib.Path(__file__).resolve().parents[2]
TRADINGMODEL_CRD = REPO / "crds" / "tradingmodel.yaml"


def widget(name: str, **spec: object) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


def header(output: str) -> list[str]:
    return output.splitlines()[0].split()


def row(output: str, name: str) -> dict[str, str]:
    """The cells of one row by column name, cut at the header's column starts (empty cells stay "")."""
    lines = output.splitlines()
    names = lines[0].split()
    starts = [lines[0].index(f" {n}") + 1 if i else 0 for i, n in enumerate(names)]
    line = next(line for line in lines[1:] if line.split()[0] == name)
    ends = [*starts[1:], None]
    return {n: line[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}


@pytest.fixture(scope="module")
def crd_applied(kubectl: Kubectl) -> Kubectl:
    result = kubectl.apply(yaml.safe_dump(WIDGET_CRD))
    assert "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created" in result.stdout
    return kubectl


def test_apply_creates_a_custom_object_with_server_fields_and_defaults(crd_applied: Kubectl) -> None:
    result = crd_applied.apply(widget("alpha", color="red"))  # no --validate=false: openapi v3 is served

    assert "widget.example.com/alpha created" in result.stdout
    obj = json.loads(crd_applied.run("get", "widget", "alpha", "-o", "json").stdout)
    meta = obj["metadata"]
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert obj["spec"] == {"color": "red", "size": 3, "limits": {"cpu": "100m"}}  # schema defaults, nested too


def test_get_by_plural_and_short_name_prints_the_crd_columns(crd_applied: Kubectl) -> None:
    crd_applied.apply(widget("beta", color="blue", size=7, note="wide-only"))

    for resource in ("widgets", "wd"):
        output = crd_applied.run("get", resource).stdout
        assert header(output) == ["NAME", "COLOR", "SIZE", "READY", "AGE"]
        cells = row(output, "beta")
        assert (cells["NAME"], cells["COLOR"], cells["SIZE"], cells["READY"]) == ("beta", "blue", "7", "")
    wide = crd_applied.run("get", "wd", "-o", "wide").stdout
    assert header(wide) == ["NAME", "COLOR", "SIZE", "READY", "NOTE", "AGE"]
    assert row(wide, "beta")["NOTE"] == "wide-only"


def test_patch_merge_bumps_generation_and_describe_shows_events(crd_applied: Kubectl, http_api: HttpApi) -> None:
    crd_applied.apply(widget("gamma", color="green"))
    crd_applied.run("patch", "wd", "gamma", "--type", "merge", "-p", '{"spec":{"size":5}}')
    obj = json.loads(crd_applied.run("get", "wd", "gamma", "-o", "json").stdout)
    assert obj["spec"]["size"] == 5 and obj["metadata"]["generation"] == 2
    http_api.ok(
        "POST",
        "/api/v1/namespaces/default/events",
        {
            "metadata": {"generateName": "gamma-"},
            "involvedObject": {
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "name": "gamma",
                "namespace": "default",
                "uid": obj["metadata"]["uid"],
            },
            "reason": "Resized",
            "message": "size is now 5",
            "type": "Normal",
            "source": {"component": "test"},
            "firstTimestamp": obj["metadata"]["creationTimestamp"],
            "lastTimestamp": obj["metadata"]["creationTimestamp"],
            "count": 1,
        },
    )

    described = crd_applied.run("describe", "wd", "gamma").stdout

    assert "Size:   5" in described or "Size:  5" in described
    events = described.split("Events:")[1]
    assert "Resized" in events and "size is now 5" in events


def test_schema_refuses_a_bad_object_naming_each_field(crd_applied: Kubectl) -> None:
    result = crd_applied.run("apply", "-f", "-", stdin=widget("bad", color="pink", size=11, code="ab"), check=False)

    assert result.returncode != 0
    assert 'The Widget "bad" is invalid' in result.stderr
    assert 'spec.color: Unsupported value: "pink": supported values: "red", "green", "blue"' in result.stderr
    assert "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10" in result.stderr
    assert "spec.code: Invalid value: \"ab\": spec.code in body should match '^[A-Z]{3}$'" in result.stderr
    missing = crd_applied.run("get", "wd", "bad", check=False)
    assert missing.returncode != 0 and 'widgets.example.com "bad" not found' in missing.stderr


def test_unknown_fields_are_refused_by_strict_validation(crd_applied: Kubectl) -> None:
    result = crd_applied.run("apply", "-f", "-", stdin=widget("odd", color="red", colour="red"), check=False)

    assert result.returncode != 0
    assert 'unknown field "spec.colour"' in result.stderr


def test_delete_removes_the_object(crd_applied: Kubectl) -> None:
    crd_applied.apply(widget("delta", color="red"))

    result = crd_applied.run("delete", "wd", "delta")

    assert 'widget.example.com "delta" deleted' in result.stdout
    assert "delta" not in crd_applied.run("get", "wd", "-o", "name").stdout


def test_get_watch_streams_changes(crd_applied: Kubectl) -> None:
    crd_applied.apply(widget("epsilon", color="red"))
    env = {"KUBECONFIG": str(crd_applied.kubeconfig), "KUBECACHEDIR": str(crd_applied.cache_dir)}
    watcher = subprocess.Popen(
        [crd_applied.binary, "get", "wd", "epsilon", "--watch", "--output-watch-events"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        assert first.split()[:2] == ["EVENT", "NAME"]
        assert watcher.stdout.readline().split()[:3] == ["ADDED", "epsilon", "red"]
        crd_applied.run("patch", "wd", "epsilon", "--type", "merge", "-p", '{"spec":{"color":"green"}}')
        assert watcher.stdout.readline().split()[:3] == ["MODIFIED", "epsilon", "green"]
    finally:
        watcher.kill()
        watcher.wait()


def test_built_in_kinds_print_server_side_columns(kubectl: Kubectl) -> None:
    kubectl.apply(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                    },
                },
            }
        )
    )

    output = kubectl.run("get", "deploy").stdout
    assert header(output) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    cells = row(output, "web")
    assert (cells["READY"], cells["UP-TO-DATE"], cells["AVAILABLE"]) == ("0/2", "0", "0")
    kubectl.run("scale", "deploy", "web", "--replicas=3")
    kubectl.run("set", "env", "deploy/web", "MODE=fast")  # a strategic merge patch of the containers list
    deployment = json.loads(kubectl.run("get", "deploy", "web", "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 3
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert (container["name"], container["image"], container["env"]) == (
        "web",
        "nginx",
        [{"name": "MODE", "value": "fast"}],
    )
    assert container["imagePullPolicy"] == "Always"  # server-side defaults, as on a cluster
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "NAME" in kubectl.run("get", "all").stdout
    assert header(kubectl.run("get", "ns").stdout) == ["NAME", "STATUS", "AGE"]


def test_protobuf_requests_get_a_clear_refusal(kubectl: Kubectl) -> None:
    result = kubectl.run("create", "namespace", "proto", check=False)

    assert result.returncode != 0
    assert "kubectl apply" in result.stderr  # the message says what to do instead


@pytest.fixture(scope="module")
def tradingmodel_crd(kubectl: Kubectl) -> Kubectl:
    if not TRADINGMODEL_CRD.exists():
        pytest.skip(f"{TRADINGMODEL_CRD} is not there yet")
    kubectl.run("apply", "-f", str(TRADINGMODEL_CRD))
    return kubectl


def trading_model(name: str, ticker: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "trading.io/v1alpha1",
            "kind": "TradingModel",
            "metadata": {"name": name},
            "spec": {
                "ticker": ticker,
                "version": "v1.2",
                "stage": "Production",
                "storage": {"bucket": "models", "secretRef": {"name": "s3-credentials"}},
            },
        }
    )


def test_tradingmodel_crd_prints_its_columns_under_tm(tradingmodel_crd: Kubectl, kube_api: LocalKubeAPI) -> None:
    tradingmodel_crd.apply(trading_model("spy-production", "SPY"))
    status_path = "/apis/trading.io/v1alpha1/namespaces/default/tradingmodels/spy-production/status"
    HttpApi(kube_api.url).merge(
        status_path,
        {"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}},
    )

    output = tradingmodel_crd.run("get", "tm").stdout

    columns = header(output)
    assert columns[0] == "NAME" and columns[-1] == "AGE"
    assert {"TICKER", "VERSION", "STAGE", "READY"} <= set(columns)
    cells = row(output, "spy-production")
    assert (cells["TICKER"], cells["VERSION"], cells["STAGE"], cells["READY"]) == ("SPY", "v1.2", "Production", "True")


def test_tradingmodel_schema_refuses_a_lower_case_ticker(tradingmodel_crd: Kubectl) -> None:
    result = tradingmodel_crd.run("apply", "-f", "-", stdin=trading_model("spy-bad", "spy"), check=False)

    assert result.returncode != 0
    assert "spec.ticker" in result.stderr and "should match" in result.stderr


def test_tradingmodel_cel_rule_refuses_a_name_that_is_no_dns_label(tradingmodel_crd: Kubectl) -> None:
    pytest.importorskip("celpy", reason="cel-python is not installed (the local extra installs it)")

    result = tradingmodel_crd.run("apply", "-f", "-", stdin=trading_model("spy.production", "SPY"), check=False)

    assert result.returncode != 0
    assert "metadata.name must be a DNS label" in result.stderr


def test_explain_reads_the_crd_schema(tradingmodel_crd: Kubectl) -> None:
    output = tradingmodel_crd.run("explain", "tm.spec.ticker").stdout

    assert "KIND:       TradingModel" in output and "ticker" in output


def test_logs_of_a_pod_come_from_its_log_file(kubectl: Kubectl, http_api: HttpApi, tmp_path: pathlib.Path) -> None:
    log_file = tmp_path / "pod.log"
    log_file.write_text("line 1\nline 2\n")
    http_api.ok(
        "POST",
        "/api/v1/namespaces/default/pods",
        {
            "metadata": {"name": "logger", "annotations": {"local-stack.trading.io/log-file": str(log_file)}},
            "spec": {"containers": [{"name": "main", "image": "x"}]},
        },
    )

    assert kubectl.run("logs", "logger").stdout == "line 1\nline 2\n"
    assert kubectl.run("logs", "logger", "--tail=1").stdout == "line 2\n"
    wait_for(lambda: kubectl.run("delete", "pod", "logger").returncode == 0, what="pod deletion")
