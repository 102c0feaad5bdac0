"""A minimal HorizontalPodAutoscaler controller for the local stack (no metrics server here).

What a real HPA does before it reads any metric: a target scaled to zero disables it; replicas
below minReplicas or above maxReplicas are brought back into the range; and the status says how
many replicas there are and how many it wants. Without metrics it never scales within the range
(ScalingActive is False), which is what a cluster without metrics-server does too.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from devstack.kube_client import KubeApiError, KubeClient

log = logging.getLogger(__name__)
HPAS = "/apis/autoscaling/v2/horizontalpodautoscalers"


def desired_replicas(hpa: Mapping[str, Any], current: int) -> int:
    """The HPA's answer without metrics: the current count, clamped into [minReplicas, maxReplicas]."""
    spec = hpa.get("spec") or {}
    if current == 0:
        return 0  # scaling is disabled while the target is at zero
    return max(int(spec.get("minReplicas") or 1), min(int(spec["maxReplicas"]), current))


def hpa_status(hpa: Mapping[str, Any], current: int, desired: int, now: str) -> dict[str, Any]:
    old = hpa.get("status") or {}
    scaled = desired != current
    able = "ScalingDisabled" if current == 0 else "ReadyForNewScale"
    return {
        "currentReplicas": current,
        "desiredReplicas": desired,
        "lastScaleTime": now if scaled else old.get("lastScaleTime"),
        "conditions": [
            {"type": "AbleToScale", "status": "True" if current else "False", "reason": able,
             "lastTransitionTime": now},
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
             "message": "the local stack has no metrics server: replicas are only kept within min and max",
             "lastTransitionTime": now},
        ],
    }  # fmt: skip


async def run(client: KubeClient, period: float = 2.0) -> None:
    """Every `period` seconds, each HPA's target is kept within its range and its status written."""
    while True:
        try:
            for hpa in await client.list(HPAS):
                await _sync(client, hpa)
        except (KubeApiError, aiohttp.ClientError, OSError) as exc:
            log.debug("event=autoscalers_failed error=%r", exc)
        await asyncio.sleep(period)


async def _sync(client: KubeClient, hpa: dict[str, Any]) -> None:
    meta, ref = hpa["metadata"], (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    if ref.get("kind") != "Deployment":
        return
    path = f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{ref.get('name')}"
    deployment = await client.find(path)
    if deployment is None:
        return
    current = int((deployment.get("spec") or {}).get("replicas", 1))
    desired = desired_replicas(hpa, current)
    if desired != current:
        log.info("event=hpa_rescaled deployment=%s/%s from=%d to=%d", meta["namespace"], ref["name"], current, desired)
        await client.patch(path + "/scale", {"spec": {"replicas": desired}})
    status = hpa_status(hpa, current, desired, datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    old = hpa.get("status") or {}
    if (old.get("currentReplicas"), old.get("desiredReplicas")) != (current, desired) or not old.get("conditions"):
        await client.patch(f"{HPAS.rsplit('/', 1)[0]}/namespaces/{meta['namespace']}/horizontalpodautoscalers/"
                           f"{meta['name']}/status", {"status": status})  # fmt: skip
