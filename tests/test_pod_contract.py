"""The operator-to-pod contract: what the builders render is what the serving process reads back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model_serving.config import Settings
from model_store.layout import AssetClass, Stage
from pod_contract import CONTRACT, ConfigError, Env, read_pod_model
from trading_operator.builders import CACHE_DIR, build_deployment
from trading_operator.spec import parse_spec

DIGEST = "sha256:" + "ab" * 32
SECRET_VALUES = {"AWS_ACCESS_KEY_ID": "key-id", "AWS_SECRET_ACCESS_KEY": "key-secret"}


def resolved_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's environment as a kubelet would give it, the Secret's keys filled in."""
    env = {}
    for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = SECRET_VALUES[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"ticker": "SPY", "version": "v1.2", "stage": "Staging",
             "storage": {"bucket": "models", "secretRef": {"name": "s3"}, "region": "eu-west-1"}},
            {"ticker": "SPY", "asset_class": AssetClass.ETF, "stage": Stage.STAGING, "region": "eu-west-1",
             "endpoint_url": None, "tickers": ()},
        ),
        (
            {"ticker": "AAPL", "assetClass": "stock", "version": "v2.0.1", "stage": "Production",
             "tickers": ["MSFT", "BRK.B"], "storage": {"bucket": "models", "endpoint": "http://minio.local:9000"}},
            {"ticker": "AAPL", "asset_class": AssetClass.STOCK, "stage": Stage.PRODUCTION, "region": "us-east-1",
             "endpoint_url": "http://minio.local:9000", "tickers": ("AAPL", "MSFT", "BRK.B")},
        ),
    ],
)  # fmt: skip
def test_what_the_builders_render_the_server_reads_back(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    deployment = build_deployment("spy-staging", "trading", parse_spec(spec), DIGEST, "img:1", 9090)
    env = resolved_env(deployment)
    settings = Settings.from_env(env)
    for field, value in expected.items():
        assert getattr(settings, field) == value, field
    assert (settings.bucket, settings.version, settings.digest) == ("models", spec["version"], DIGEST)
    assert (settings.model_name, settings.port, settings.cache_dir) == ("spy-staging", 9090, Path(CACHE_DIR))
    assert ("AWS_ACCESS_KEY_ID" in env) == ("secretRef" in spec["storage"])
    assert set(env) - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {var.name for var in CONTRACT}


def test_every_contract_variable_has_a_meaning_and_a_unique_name() -> None:
    names = [var.name for var in CONTRACT]
    assert len(names) == len(set(names))
    assert all(var.meaning for var in CONTRACT)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"S3_BUCKET": "m", "PORT": "x"}, "PORT must be a whole number"),
        ({"S3_BUCKET": "m", "MODEL_DIGEST": "sha256:" + "0" * 64}, "set MODEL_TICKER as well"),
        ({"S3_BUCKET": "m", "MODEL_STAGE": "archived"}, "MODEL_STAGE"),
        ({"S3_BUCKET": "m", "PORT": "9000", "GRPC_PORT": "9000"}, "GRPC_PORT and PORT are both 9000"),
        ({"S3_BUCKET": "m", "GRPC_PORT": "70000"}, "GRPC_PORT must be between 0 and 65535"),
    ],
)
def test_a_pod_with_a_broken_contract_is_told_which_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_pod_model(Env(env))


def test_log_level_is_read_by_the_operator_and_the_server_and_refused_when_unknown() -> None:
    import subprocess
    import sys

    from trading_operator.config import OperatorConfig

    assert OperatorConfig.from_env({}).log_level == "WARNING"  # quiet by default
    assert OperatorConfig.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert Settings.from_env({"S3_BUCKET": "models", "LOG_LEVEL": " error "}).log_level == "ERROR"
    with pytest.raises(ConfigError, match="LOG_LEVEL must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG"):
        Env({"LOG_LEVEL": "LOUD"}).log_level()
    # the operator refuses to start with it, saying so (before it reaches any cluster)
    run = subprocess.run(
        [sys.executable, "-m", "trading_operator.cli", "operator"],
        env={"LOG_LEVEL": "chatty", "PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "LOG_LEVEL must be one of" in run.stderr and "'chatty'" in run.stderr, run.stderr


def test_the_operator_refuses_an_http_port_that_is_the_pods_grpc_port() -> None:
    from trading_operator.config import OperatorConfig

    with pytest.raises(ConfigError, match="SERVING_PORT 8081 is the serving pods' gRPC port"):
        OperatorConfig.from_env({"SERVING_PORT": "8081"})
    assert OperatorConfig.from_env({"SERVING_PORT": "9090"}).serving_port == 9090
