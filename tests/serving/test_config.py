"""Settings from the environment: defaults, and errors that name the variable to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_serving.config import ConfigError, Settings
from model_store.layout import AssetClass, Stage

DIGEST = "sha256:" + "ab" * 32


def test_pod_contract_and_defaults() -> None:
    env = {
        "S3_BUCKET": "models", "MODEL_TICKER": "spy", "MODEL_ASSET_CLASS": "ETF", "MODEL_STAGE": "Staging",
        "MODEL_VERSION": "v1.2", "MODEL_DIGEST": DIGEST, "MODEL_NAME": "spy-staging",
    }  # fmt: skip
    s = Settings.from_env(env)
    assert (s.ticker, s.asset_class, s.stage, s.version, s.digest) == (
        "SPY",
        AssetClass.ETF,
        Stage.STAGING,
        "v1.2",
        DIGEST,
    )
    assert s.model_name == "spy-staging" and s.endpoint_url is None
    assert (s.port, s.cache_dir, s.max_body_bytes, s.compile_trees, s.null_as_missing) == (
        8080,
        Path("/var/cache/models"),
        64 << 20,
        True,
        False,
    )
    lazy = Settings.from_env({"S3_BUCKET": "models", "SERVING_COMPILE_TREES": "off", "PORT": "9000"})
    assert lazy.ticker is None and lazy.version is None and lazy.digest is None
    assert not lazy.compile_trees and lazy.port == 9000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "S3_BUCKET is not set"),
        ({"MODEL_TICKER": "not a ticker"}, "MODEL_TICKER/MODEL_VERSION"),
        ({"MODEL_TICKER": "SPY", "MODEL_VERSION": "1.2"}, "version '1.2' is not valid"),
        ({"MODEL_TICKER": "SPY", "MODEL_DIGEST": "abc"}, "MODEL_DIGEST 'abc' is not a version digest"),
        ({"MODEL_TICKER": "SPY", "MODEL_DIGEST": "sha256:" + "AB" * 32}, "is not a version digest"),
        ({"MODEL_VERSION": "v1.0"}, "set MODEL_TICKER as well"),
        ({"MODEL_ASSET_CLASS": "bond"}, "MODEL_ASSET_CLASS must be etf or stock"),
        ({"MODEL_STAGE": "prod"}, "MODEL_STAGE"),
        ({"PORT": "http"}, "PORT must be a whole number"),
        ({"PORT": "70000"}, "PORT must be between"),
        ({"SERVING_COMPILE_TREES": "maybe"}, "SERVING_COMPILE_TREES must be 1/0"),
        ({"SERVING_MANIFEST_WAIT_SECONDS": "-1"}, "SERVING_MANIFEST_WAIT_SECONDS must be between"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    full = {"S3_BUCKET": "models", **env} if env else {}
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(full)


def test_the_server_exits_with_a_clear_error_on_bad_settings(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MODEL_CACHE_DIR": str(tmp_path), "PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "model_serving"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["level"] == "error" and "S3_BUCKET is not set" in line["error"]
