"""`tmctl check` on promotion PRs, as CI runs it: the real CLI against S3 (moto over HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.demo_model import DemoModel
from model_store.layout import FEATURE_NAMES, METADATA, MODEL_NATIVE, ModelLocation, Stage
from model_store.promotion import promote_and_register
from model_store.publish import publish_version

ROOT = Path(__file__).resolve().parents[2]
SPY = ModelLocation.of("SPY", "etf")


def manifest(name: str, version: str, stage: str = "Production", ticker: str = "SPY", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trading.io/v1alpha1",
        "kind": "TradingModel",
        "metadata": {"name": name, "namespace": "trading"},
        "spec": {"ticker": ticker, "version": version, "stage": stage, "storage": {"bucket": "b"}, **spec},
    }


def run_check(
    tmp_path: Path, bucket: str, endpoint: str, *docs: dict[str, Any], flags: tuple[str, ...] = ()
) -> tuple[int, str]:
    folder = tmp_path / "pr"
    folder.mkdir(exist_ok=True)
    for i, doc in enumerate(docs):
        doc = json.loads(json.dumps(doc).replace('"bucket": "b"', f'"bucket": "{bucket}"'))
        (folder / f"{i}-{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    report = tmp_path / "report.md"
    crd = ROOT / "crds" / "tradingmodel.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "trading_operator.cli", "check", str(folder), "--crd", str(crd),
         "--endpoint", endpoint, "--report", str(report), *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    assert report.read_text() in done.stdout
    return done.returncode, report.read_text()


@pytest.fixture
def published(s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel) -> None:
    """v1.0 in production, v1.1 staged, v1.2 published only."""
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    publish_version(s3, bucket, SPY, "v1.1", demo_v2.files)
    v12 = dict(demo_v2.files)
    v12[METADATA] = json.dumps({**json.loads(v12[METADATA]), "version": "v1.2"}).encode()
    publish_version(s3, bucket, SPY, "v1.2", v12)
    promote_and_register(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    promote_and_register(s3, bucket, SPY, "v1.1", Stage.STAGING, actor="test")


@pytest.mark.usefixtures("published")
def test_a_staged_version_may_go_to_production(tmp_path: Path, bucket: str, s3_endpoint: str) -> None:
    code, report = run_check(tmp_path, bucket, s3_endpoint, manifest("spy-production", "v1.1"),
                             manifest("spy-staging", "v1.1", stage="Staging"))  # fmt: skip
    assert code == 0, report
    assert "✅ every TradingModel checks out" in report
    assert "| `trading/spy-production` | etfs/SPY | Production | v1.0 → v1.1 | ✅ |" in report
    assert "| accuracy |" in report  # the metadata deltas of the change


@pytest.mark.usefixtures("published")
@pytest.mark.parametrize(
    ("docs", "expected"),
    [
        ([manifest("spy-production", "v9.9")], "etfs/SPY v9.9 is not published"),
        ([manifest("spy-production", "v1.2")], "v1.2 was never promoted to Staging"),
        ([manifest("spy-production", "v1.1"), manifest("spy-prod-2", "v1.1")], "all claim s3://"),
        ([manifest("spy-production", "v1.1", ticker="spy")], "spec.ticker: Invalid value: \"spy\""),
        ([manifest("spy-production", "v1.1", tickers=["MSFT"])], "spec.tickers lists stock tickers"),
    ],
)  # fmt: skip
def test_a_pr_that_must_not_merge_is_refused_with_what_to_do(
    tmp_path: Path, bucket: str, s3_endpoint: str, docs: list[dict[str, Any]], expected: str
) -> None:
    code, report = run_check(tmp_path, bucket, s3_endpoint, *docs)
    assert code == 1, report
    assert "❌ this PR must not merge" in report and expected in report, report


@pytest.mark.usefixtures("published")
def test_staging_first_can_be_turned_off(tmp_path: Path, bucket: str, s3_endpoint: str) -> None:
    code, report = run_check(tmp_path, bucket, s3_endpoint, manifest("spy-production", "v1.2"),
                             flags=("--no-require-staging",))  # fmt: skip
    assert code == 0, report


def test_other_features_or_strategies_are_named_and_refused_unless_allowed(
    tmp_path: Path, s3: Any, bucket: str, s3_endpoint: str, demo_v1: DemoModel
) -> None:
    publish_version(s3, bucket, SPY, "v1.0", demo_v1.files)
    promote_and_register(s3, bucket, SPY, "v1.0", Stage.PRODUCTION, actor="test")
    names = json.loads(demo_v1.files[FEATURE_NAMES])
    renamed = {  # the first feature renamed, in the model and in its feature list
        FEATURE_NAMES: json.dumps([f"{names[0]}_v2", *names[1:]]).encode(),
        MODEL_NATIVE: demo_v1.files[MODEL_NATIVE].replace(
            f"feature_names={names[0]} ".encode(), f"feature_names={names[0]}_v2 ".encode(), 1
        ),
        METADATA: json.dumps({**json.loads(demo_v1.files[METADATA]), "version": "v2.0"}).encode(),
    }
    publish_version(s3, bucket, SPY, "v2.0", {**demo_v1.files, **renamed})
    promote_and_register(s3, bucket, SPY, "v2.0", Stage.STAGING, actor="test")
    code, report = run_check(tmp_path, bucket, s3_endpoint, manifest("spy-production", "v2.0"))
    assert code == 1, report
    assert f"features differ: removed ['{names[0]}'], added ['{names[0]}_v2']" in report, report
    allowed, _ = run_check(tmp_path, bucket, s3_endpoint, manifest("spy-production", "v2.0"),
                           flags=("--allow-feature-change",))  # fmt: skip
    assert allowed == 0
