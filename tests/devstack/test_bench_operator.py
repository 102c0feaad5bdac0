"""The operator scale benchmark runs end to end at a tiny N and prints its table (a smoke test:
the figures themselves are for `./dev bench operator`, on a quiet machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.bench_operator import Result, table, tickers
from devstack.s3_servers import find_weed

ROOT = Path(__file__).resolve().parents[2]


def test_tickers_are_distinct_and_valid() -> None:
    names = tickers(20000)
    assert len(set(names)) == len(names)
    assert all(n.isalnum() and n[0].isalpha() and n.isupper() and len(n) <= 10 for n in names)


def test_the_table_has_a_row_per_run() -> None:
    text = table([Result(n=5, replicas=1, s3="moto", reference_seconds=0.84, mass_change_seconds=1.5,
                         cpu_seconds={"operator": 0.5})])  # fmt: skip
    header, _, row = text.splitlines()
    assert "mass change" in header and "API reads/pass" in header and "op peak RSS" in header
    assert "ref loop" in header and "0.84 s" in row
    assert row.split("|")[0].strip() == "5" and "1.5 s" in row


@pytest.mark.slow
def test_five_tradingmodels_converge_and_the_table_is_printed(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "devstack.bench_operator", "--n", "5", "--timeout", "120", "--dir", str(tmp_path),
         "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Operator scale" in done.stdout and "API reads/pass" in done.stdout
    [result] = json.loads(figures.read_text())
    assert result["s3"] == ("seaweedfs" if find_weed() else "moto")  # the default: SeaweedFS where installed
    assert result["reference_seconds"] > 0 and "machine pace:" in done.stdout
    assert result["n"] == 5 and result["converged"] == 5 and result["mass_change_seconds"] is not None
    assert result["audit_moves"] == 5 and result["audit_duplicates"] == 0  # each move v1.0 -> v1.1 once
    assert result["registry_at_target"] == 5
    assert result["reconciles"] > 0 and result["api_reads_per_reconcile"] > 0
    assert result["operator_peak_rss_mb"] > 0 and set(result["cpu_seconds"]) == {"operator", "api", "kubelet", "s3"}
