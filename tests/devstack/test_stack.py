"""The embedded stack itself: what a test sees when the operator process dies under it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from devstack.stack import LocalStack, OperatorExited

pytestmark = pytest.mark.slow


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
