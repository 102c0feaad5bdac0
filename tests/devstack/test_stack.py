"""The embedded stack itself: the operator reaches it through a kubeconfig like any cluster, and a
test sees at once when the operator process dies under it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devstack.kube_api import LocalKubeAPI
from devstack.stack import IN_CLUSTER_ENV, LocalStack, OperatorExited

CLIENTS = textwrap.dedent("""
    import json, logging
    import kopf
    from trading_operator.kube import KubeApi

    info = kopf.login_via_client(logger=logging.getLogger(), settings=kopf.OperatorSettings())
    listing = KubeApi.connect().request("GET", "/api/v1/namespaces")
    print(json.dumps({"server": info.server, "token": info.token, "kind": listing["kind"]}))
""")


def test_the_products_clients_reach_the_local_api_through_the_kubeconfig(
    kube_api: LocalKubeAPI, tmp_path: Path
) -> None:
    """What the operator does at start-up (kopf's login, then KubeApi.connect), with only KUBECONFIG set."""
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig", namespace="trading")
    env = {**{k: v for k, v in os.environ.items() if k not in IN_CLUSTER_ENV}, "KUBECONFIG": str(kubeconfig)}
    done = subprocess.run([sys.executable, "-c", CLIENTS], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {"server": kube_api.url, "token": None, "kind": "NamespaceList"}


@pytest.mark.slow
def test_a_dead_operator_fails_the_waits_at_once_with_its_exit_code_and_log(tmp_path: Path) -> None:
    with LocalStack(tmp_path, prometheus=False, operator_verbose=True) as stack:
        # the operator logs its start-up (kopf's login, through the kubeconfig) before it is killed
        stack.wait_until(lambda: "kubeconfig" in stack.operator_log.read_text(), "the operator's first lines", 30)
        pid = stack.operator_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the process this stack started, by its PID

        started = time.monotonic()
        with pytest.raises(OperatorExited) as failure:
            stack.wait_for("never-applied", lambda tm: True, timeout=60)
        assert time.monotonic() - started < 5, "the wait must not run into its timeout"
        message = str(failure.value)
        assert "exited with code -9 (killed by SIGKILL)" in message, message
        last_lines = stack.operator_log.read_text().splitlines()[-40:]
        assert str(stack.operator_log) in message and last_lines[-1][:400] in message
        with pytest.raises(OperatorExited):
            stack.check_operator()
