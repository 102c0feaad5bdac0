"""Every alert in manifests/prometheus, as Prometheus reads it: `promtool check rules` accepts the
rule files, `promtool test rules` fires each operator alert on the series the operator exports
(and only there), and each alert has a summary and a runbook section in the README."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "manifests" / "prometheus"
RULE_FILES = ["alerts.yaml", "operator_alerts.yaml"]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: it comes with Prometheus (Debian package prometheus; .ci/run installs it)",
)


def rules(name: str) -> dict[str, Any]:
    rule = yaml.safe_load((PROMETHEUS / name).read_text())
    assert rule["kind"] == "PrometheusRule"
    return dict(rule["spec"])


def alerts() -> list[dict[str, Any]]:
    return [r for name in RULE_FILES for g in rules(name)["groups"] for r in g["rules"] if "alert" in r]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_summary_and_a_runbook_section_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"(?m)^#+ (.+)$", readme)}
    for alert in alerts():
        notes = alert["annotations"]
        assert notes.get("summary"), alert["alert"]
        url = notes.get("runbook_url", "")
        assert url.split("#")[0].endswith("/README.md"), f"{alert['alert']}: runbook_url {url!r}"
        assert url.split("#", 1)[-1] in anchors, f"{alert['alert']}: README has no section #{url.split('#')[-1]}"
        assert alert["labels"]["severity"] in ("info", "warning", "critical")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_accepts_the_operator_rules(tmp_path: Path) -> None:
    """(alerts.yaml, the serving rules, is checked and unit-tested in test_manifests.py.)"""
    path = tmp_path / "operator.rules.yml"
    path.write_text(yaml.safe_dump(rules("operator_alerts.yaml")))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


OPERATOR = 'job="tradingmodel-operator", namespace="trading"'


def status(model: str, phase: str, reason: str, values: str) -> dict[str, str]:
    labels = f'{OPERATOR}, tradingmodel="{model}", phase="{phase}", reason="{reason}"'
    return {"series": f"tradingmodel_operator_model_status{{{labels}}}", "values": values}


def promotions(action: str, result: str, values: str, instance: str = "op-1") -> dict[str, str]:
    labels = f'job="tradingmodel-operator", instance="{instance}", action="{action}", result="{result}"'
    return {"series": f"tradingmodel_operator_promotions_total{{{labels}}}", "values": values}


# 60 one-minute samples. spy is Ready throughout; qqq rolls out, fails, rolls out again (never
# Ready: it must fire); iwm is Failed for 10 minutes only, then Ready; gld is in Conflict.
# Series of a model's former phase end (stale) when its phase changes, as the gauge does.
STATUS_SERIES = [
    status(*row)
    for row in [
        ("spy", "Ready", "RolloutComplete", "1x60"),
        ("qqq", "RollingOut", "RollingOut", "1x20 _x40"),
        ("qqq", "Failed", "VersionNotFound", "_x20 1x20 _x20"),
        ("qqq", "RollingOut", "RollingOut", "_x40 1x20"),
        ("iwm", "Failed", "StorageError", "1x10 _x50"),
        ("iwm", "Ready", "RolloutComplete", "_x10 1x50"),
        ("gld", "Conflict", "Conflict", "1x60"),
    ]
]
# promote: fails for the whole hour; rollback: one success among failures; repair: one 50 minutes in.
PROMOTION_SERIES = [
    promotions("promote", "failure", "0+1x60"),
    promotions("promote", "success", "0x60"),
    promotions("rollback", "failure", "0+1x60"),
    promotions("rollback", "success", "0x55 1x5"),
    promotions("repair", "success", "0x50 1x10"),
]


def fired(alert: str, at: str, labels: list[dict[str, str]], extra: dict[str, str]) -> dict[str, Any]:
    return {
        "alertname": alert,
        "eval_time": at,
        "exp_alerts": [{"exp_labels": {"alertname": alert, **extra, **one}} for one in labels],
    }


def operator_alert_tests() -> list[dict[str, Any]]:
    warning, info = {"severity": "warning"}, {"severity": "info"}
    model = {"namespace": "trading"}
    return [
        # qqq has not been Ready for 59 minutes (through three phases); iwm was not Ready for 10 only.
        fired("TradingModelNotReady", "59m", [{**model, "tradingmodel": "qqq"}], warning),
        fired("TradingModelNotReady", "12m", [], warning),
        fired("TradingModelConflict", "30m", [{**model, "tradingmodel": "gld"}], warning),
        # Every promote fails; rollback failed too until it succeeded once, 55 minutes in.
        fired("TradingModelPromotionsFailing", "40m", [{"action": "promote"}, {"action": "rollback"}], warning),
        fired("TradingModelPromotionsFailing", "58m", [{"action": "promote"}], warning),
        fired("TradingModelDriftRepaired", "45m", [], info),
        fired("TradingModelDriftRepaired", "52m", [{}], info),
    ]


def liveness_tests() -> dict[str, Any]:
    """The operator down (no replica up, then none at all), and up but with no replica acting."""
    up = 'up{job="tradingmodel-operator", instance="op-1"}'
    active = 'tradingmodel_operator_active{job="tradingmodel-operator", instance="op-%d"}'
    return {
        "interval": "1m",
        "input_series": [
            {"series": up, "values": "1x10 0x10 _x20 1x20"},
            {"series": active % 1, "values": "1x40 0x20"},
            {"series": active % 2, "values": "0x60"},
        ],
        "alert_rule_test": [
            fired("TradingModelOperatorDown", "8m", [], {"severity": "critical"}),
            fired("TradingModelOperatorDown", "18m", [{}], {"severity": "critical"}),  # up == 0
            fired("TradingModelOperatorDown", "35m", [{}], {"severity": "critical"}),  # no series at all
            fired("TradingModelOperatorDown", "50m", [], {"severity": "critical"}),
            fired("TradingModelOperatorNoLeader", "38m", [], {"severity": "critical"}),
            fired("TradingModelOperatorNoLeader", "50m", [{}], {"severity": "critical"}),
        ],
    }


def s3_error_tests() -> dict[str, Any]:
    errors = 'tradingmodel_operator_s3_errors_total{job="tradingmodel-operator", operation="%s", error="%s"}'
    return {
        "interval": "1m",
        "input_series": [
            {"series": errors % ("CopyObject", "SlowDown"), "values": "0+3x40"},
            {"series": errors % ("GetObject", "AccessDenied"), "values": "0x20 1x20"},  # one error, long ago
        ],
        "alert_rule_test": [
            fired(
                "TradingModelOperatorS3Errors",
                "30m",
                [{"operation": "CopyObject", "error": "SlowDown"}],
                {"severity": "warning"},
            ),
            fired("TradingModelOperatorS3Errors", "10m", [], {"severity": "warning"}),
        ],
    }


@needs_promtool
def test_operator_alerts_fire_when_and_only_when_they_should(tmp_path: Path) -> None:
    # Without annotations: promtool would compare their rendered text too; this test is about when
    # each alert fires (`promtool check rules` above parses the templates).
    bare = rules("operator_alerts.yaml")
    for group in bare["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "operator.rules.yml").write_text(yaml.safe_dump(bare))
    unit = {
        "rule_files": ["operator.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": STATUS_SERIES + PROMOTION_SERIES,
                "alert_rule_test": operator_alert_tests(),
            },
            liveness_tests(),
            s3_error_tests(),
        ],
    }
    tested = {t["alertname"] for test in unit["tests"] for t in test["alert_rule_test"]}
    assert tested == {a["alert"] for a in rules("operator_alerts.yaml")["groups"][0]["rules"]}, "every alert is tested"
    (tmp_path / "operator_test.yml").write_text(yaml.safe_dump(unit, sort_keys=False))
    result = promtool("test", "rules", tmp_path / "operator_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
