"""Peering of operator replicas (trading_operator/peering.py): priorities, kopf's settings, the
`tradingmodel_operator_active` gauge driven by kopf's own peering decisions, and the peering
object made on the local API (or a clear error when its CRD is missing)."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles  # kopf's pause toggle: what its peering turns on and off
from kopf._core.engines import peering as kopf_peering
from prometheus_client import REGISTRY

from devstack.kube_api import BackgroundLoop, LocalKubeAPI
from devstack.pod_runtime import DIE_WITH_PARENT, free_port
from devstack.stack import CRD_PATH, PEERING_CRD_PATH, kube_client
from trading_operator.config import OperatorConfig
from trading_operator.kube import KubeApi
from trading_operator.peering import (
    TIE_BREAK,
    PeeringUnavailable,
    configure_peering,
    ensure_peering_object,
    peering_path,
    priority_for,
)


def active() -> float | None:
    return REGISTRY.get_sample_value("tradingmodel_operator_active")


# -- priorities and settings ----------------------------------------------------------------------


def test_older_replicas_rank_higher_and_ties_are_broken() -> None:
    started = 1_800_000_000.0
    assert priority_for(started, 0) > priority_for(started + 0.001, 0)  # a millisecond older wins
    assert priority_for(started, 0) > priority_for(started, TIE_BREAK - 1)  # same millisecond: distinct
    assert priority_for(started + 0.001, 0) < priority_for(started, TIE_BREAK - 1)  # the tie-break never crosses
    assert priority_for(started, 0) < 666  # kopf's --dev mode (a developer's laptop) still pauses every replica


def test_peering_settings_start_paused_and_standalone_acts_at_once() -> None:
    settings = kopf.OperatorSettings()
    configure_peering(settings, name="tm-peers", lifetime=15, standalone=False, priority=-42)
    assert (settings.peering.standalone, settings.peering.mandatory) == (False, True)
    assert (settings.peering.name, settings.peering.priority, settings.peering.lifetime) == ("tm-peers", -42, 15)
    assert active() == 0  # until kopf has seen the peering object

    alone = kopf.OperatorSettings()
    configure_peering(alone, name="tm-peers", lifetime=15, standalone=True, priority=-42)
    assert alone.peering.standalone is True
    assert active() == 1


def test_peering_config_is_read_from_the_environment_with_clear_errors() -> None:
    config = OperatorConfig.from_env({"PEERING_NAME": "tm-peers", "PEERING_LIFETIME_SECONDS": "30"})
    assert (config.peering_name, config.peering_lifetime_seconds, config.standalone) == ("tm-peers", 30, False)
    assert OperatorConfig.from_env({"STANDALONE": "true"}).standalone is True
    with pytest.raises(ValueError, match="PEERING_NAME must be a Kubernetes object name"):
        OperatorConfig.from_env({"PEERING_NAME": "TM Peers"})
    with pytest.raises(ValueError, match="PEERING_LIFETIME_SECONDS must be between 2 and 600"):
        OperatorConfig.from_env({"PEERING_LIFETIME_SECONDS": "1"})


# -- the gauge follows kopf's own decisions --------------------------------------------------------


def _peering_event(**peers: int) -> dict[str, object]:
    """A watch event of the peering object holding live keep-alives of these identities and priorities."""
    now = datetime.datetime.now(datetime.UTC).isoformat()
    status = {identity: {"priority": priority, "lifetime": 60, "lastseen": now} for identity, priority in peers.items()}
    return {"type": "MODIFIED", "object": {"metadata": {"name": "tm-peers"}, "status": status}}


def test_the_active_gauge_follows_kopfs_pause_and_resume() -> None:
    """kopf's real peering step decides; the gauge must agree with the toggle it turns."""
    settings = kopf.OperatorSettings()
    configure_peering(settings, name="tm-peers", lifetime=60, standalone=False, priority=-100)

    async def decide(toggle: aiotoggles.Toggle, **peers: int) -> None:
        woken = asyncio.Event()
        woken.set()  # kopf waits for the blocking peers' expiry unless woken: no wait here
        await kopf_peering.process_peering_event(
            raw_event=_peering_event(**peers), namespace=None, resource=None, identity=kopf_peering.Identity("me"),
            settings=settings, autoclean=False, stream_pressure=woken, conflicts_found=toggle,
        )  # type: ignore[arg-type]  # fmt: skip

    async def scenario() -> list[tuple[bool, float | None]]:
        toggle = aiotoggles.Toggle(True)  # peering is mandatory: a replica starts paused
        seen = []
        for peers in ({"me": -100}, {"me": -100, "older": -50}, {"me": -100, "younger": -200}):
            await decide(toggle, **peers)
            seen.append((toggle.is_on(), active()))
        return seen

    assert asyncio.run(scenario()) == [(False, 1), (True, 0), (False, 1)]


# -- the peering object on the local API -----------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[BackgroundLoop]:
    with BackgroundLoop() as running:
        yield running


def _api(loop: BackgroundLoop, folder: Path, crds: list[Path]) -> tuple[LocalKubeAPI, KubeApi]:
    api = LocalKubeAPI(port=0, crds=crds)
    loop.run(api.start())
    return api, kube_client(api.write_kubeconfig(folder / "kubeconfig"))


def test_the_peering_object_is_made_once_cluster_wide_or_in_the_watched_namespace(
    loop: BackgroundLoop, tmp_path: Path
) -> None:
    api, kube = _api(loop, tmp_path, [PEERING_CRD_PATH])
    try:
        assert ensure_peering_object(kube, "tm-peers", None) is True
        assert ensure_peering_object(kube, "tm-peers", None) is False  # there already: left as it is
        made = kube.request("GET", peering_path("tm-peers", None))
        assert made is not None and made["kind"] == "ClusterKopfPeering"

        kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": "desk"}})  # fmt: skip
        assert ensure_peering_object(kube, "tm-peers", "desk") is True
        made = kube.request("GET", peering_path("tm-peers", "desk"))
        assert made is not None and (made["kind"], made["metadata"]["namespace"]) == ("KopfPeering", "desk")
    finally:
        loop.run(api.stop())


def test_without_the_peering_crd_the_operator_stops_at_startup_saying_what_to_install(
    loop: BackgroundLoop, tmp_path: Path
) -> None:
    api, kube = _api(loop, tmp_path, [CRD_PATH])
    try:
        with pytest.raises(PeeringUnavailable, match=r"crds/kopf-peering.yaml .* or set STANDALONE=true"):
            ensure_peering_object(kube, "tm-peers", None)
        # the real operator process: it must end (not sit paused) and say the same
        env = {"KUBECONFIG": str(tmp_path / "kubeconfig"), "PATH": "/usr/bin:/bin", "SERVING_IMAGE": "local-process"}
        done = subprocess.run([sys.executable, "-m", "trading_operator.cli", "operator"], env=env,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
        assert done.returncode != 0
        assert "crds/kopf-peering.yaml" in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        loop.run(api.stop())


def test_an_operator_watching_one_namespace_peers_there_and_withdraws_when_stopped(
    loop: BackgroundLoop, tmp_path: Path
) -> None:
    api, kube = _api(loop, tmp_path, [CRD_PATH, PEERING_CRD_PATH])
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig"), "POD_ID": "desk-replica",
           "METRICS_PORT": str(port), "SERVING_IMAGE": "local-process"}  # fmt: skip
    env.pop("KUBERNETES_SERVICE_HOST", None)
    kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "desk"}})
    command = [sys.executable, "-m", "trading_operator.cli", "operator", "--namespace", "desk"]
    with (tmp_path / "operator.log").open("wb") as log:
        operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=DIE_WITH_PARENT)  # fmt: skip
    try:

        def peers() -> dict[str, object]:
            return dict((kube.request("GET", peering_path("tradingmodel-operator", "desk")) or {}).get("status") or {})

        def acting() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return b"tradingmodel_operator_active 1.0" in response.read()
            except OSError:
                return False

        deadline = time.monotonic() + 120
        while not ("desk-replica" in peers() and acting()):
            assert operator.poll() is None and time.monotonic() < deadline, (tmp_path / "operator.log").read_text()
            time.sleep(0.2)
        assert kube.request("GET", peering_path("tradingmodel-operator", None)) is None  # not cluster-wide
        os.killpg(operator.pid, signal.SIGTERM)
        assert operator.wait(60) == 0
        assert "desk-replica" not in peers(), "a replica that stops must withdraw its keep-alive"
    finally:
        if operator.poll() is None:
            os.killpg(operator.pid, signal.SIGKILL)
        loop.run(api.stop())
