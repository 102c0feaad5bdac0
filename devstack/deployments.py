"""The Deployment and ReplicaSet controllers' decisions, as pure functions.

A Deployment owns one ReplicaSet per pod template (named ``<deployment>-<template hash>``);
a ReplicaSet owns its Pods. Rollouts surge: the new ReplicaSet gets all replicas at once and
the old ones are scaled to zero only when every new pod is ready (``maxUnavailable: 0``), so
a version that never becomes ready never takes traffic from the one that works.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devstack.selectors import labels_match, selector_from_label_selector

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery's rand.SafeEncodeString


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _essence(value: Any) -> Any:
    """Nulls and empty objects dropped: what a client's round trip may add (``creationTimestamp: null``)."""
    if isinstance(value, Mapping):
        kept = {k: _essence(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_essence(v) for v in value]
    return value


_hashes: dict[tuple[str, int], str] = {}  # (uid, generation) -> hash: a pass hashes each Deployment 4 times
_MAX_HASHES = 10_000


def spec_template_hash(obj: Mapping[str, Any]) -> str:
    """`template_hash` of a Deployment's or ReplicaSet's pod template, computed once per generation
    (the spec, template included, changes only with metadata.generation)."""
    meta = _meta(obj)
    template = (obj.get("spec") or {}).get("template") or {}
    if not meta.get("uid") or not meta.get("generation"):
        return template_hash(template)
    key = (str(meta["uid"]), int(meta["generation"]))
    if key not in _hashes:
        if len(_hashes) >= _MAX_HASHES:
            _hashes.clear()
        _hashes[key] = template_hash(template)
    return _hashes[key]


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable short hash of a pod template, in the alphabet Kubernetes uses for pod-template-hash.

    ``kubectl rollout undo`` copies a ReplicaSet's template back after a round trip through Go
    structs; hashing the essence lets the Deployment find that ReplicaSet again.
    """
    digest = hashlib.sha256(json.dumps(_essence(template), sort_keys=True).encode()).digest()
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in digest[:10])


def desired_replicas(obj: Mapping[str, Any]) -> int:
    replicas = (obj.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(owner)
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = _meta(owner).get("uid")
    return any(ref.get("uid") == uid for ref in _meta(obj).get("ownerReferences") or [])


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if is_deleting(pod):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def revision(obj: Mapping[str, Any]) -> int:
    try:
        return int((_meta(obj).get("annotations") or {}).get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def new_replica_set(deployment: Mapping[str, Any], hash_: str, revision_number: int) -> dict[str, Any]:
    meta = _meta(deployment)
    spec = deployment.get("spec") or {}
    template = copy.deepcopy(spec.get("template") or {})
    template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = hash_
    selector = copy.deepcopy(spec.get("selector") or {"matchLabels": dict(template["metadata"]["labels"])})
    selector.setdefault("matchLabels", {})[HASH_LABEL] = hash_
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{hash_}",
            "namespace": meta.get("namespace"),
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {REVISION_ANNOTATION: str(revision_number)},
            "ownerReferences": [owner_reference(deployment)],
        },
        "spec": {"replicas": desired_replicas(deployment), "selector": selector, "template": template},
    }


def new_pod(replica_set: Mapping[str, Any], node_name: str) -> dict[str, Any]:
    meta = _meta(replica_set)
    template = (replica_set.get("spec") or {}).get("template") or {}
    template_meta = template.get("metadata") or {}
    spec = copy.deepcopy(template.get("spec") or {})
    spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{meta['name']}-",
            "namespace": meta.get("namespace"),
            "labels": dict(template_meta.get("labels") or {}),
            "annotations": dict(template_meta.get("annotations") or {}),
            "ownerReferences": [owner_reference(replica_set)],
        },
        "spec": spec,
    }


@dataclass(frozen=True)
class ReplicaSetPlan:
    """What the Deployment controller wants: a ReplicaSet to create, and spec.replicas of the existing ones."""

    create: dict[str, Any] | None
    scale: dict[str, int]  # ReplicaSet name -> replicas


def plan_rollout(
    deployment: Mapping[str, Any],
    replica_sets: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> ReplicaSetPlan:
    """Surge the new ReplicaSet to the desired count; retire old ones once all new pods are ready."""
    hash_ = spec_template_hash(deployment)
    owned = [rs for rs in replica_sets if is_owned_by(rs, deployment) and not is_deleting(rs)]
    current = next((rs for rs in owned if (_meta(rs).get("labels") or {}).get(HASH_LABEL) == hash_), None)
    replicas = desired_replicas(deployment)
    if current is None:
        next_revision = max((revision(rs) for rs in owned), default=0) + 1
        return ReplicaSetPlan(create=new_replica_set(deployment, hash_, next_revision), scale={})
    scale: dict[str, int] = {}
    if desired_replicas(current) != replicas:
        scale[_meta(current)["name"]] = replicas
    ready_new = sum(1 for pod in pods if is_owned_by(pod, current) and pod_ready(pod))
    if ready_new >= replicas:
        for rs in owned:
            if rs is not current and desired_replicas(rs) != 0:
                scale[_meta(rs)["name"]] = 0
    return ReplicaSetPlan(create=None, scale=scale)


@dataclass(frozen=True)
class PodPlan:
    create: int
    delete: tuple[str, ...]  # pod names, the least useful first


def plan_pods(replica_set: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> PodPlan:
    active = [pod for pod in pods if is_owned_by(pod, replica_set) and not is_deleting(pod)]
    diff = desired_replicas(replica_set) - len(active)
    if diff >= 0:
        return PodPlan(create=diff, delete=())
    # Not-ready pods go first, then the youngest, like the ReplicaSet controller.
    youngest_first = sorted(active, key=lambda p: _meta(p).get("creationTimestamp", ""), reverse=True)
    ranked = sorted(youngest_first, key=pod_ready)
    return PodPlan(create=0, delete=tuple(_meta(p)["name"] for p in ranked[:-diff]))


def replica_set_status(replica_set: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    owned = [pod for pod in pods if is_owned_by(pod, replica_set) and not is_deleting(pod)]
    ready = sum(1 for pod in owned if pod_ready(pod))
    return {
        "replicas": len(owned),
        "fullyLabeledReplicas": len(owned),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": _meta(replica_set).get("generation", 1),
    }


def _condition(
    type_: str, status: bool, reason: str, message: str, previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    status_text = "True" if status else "False"
    unchanged = previous is not None and previous.get("status") == status_text
    same_reason = unchanged and previous is not None and previous.get("reason") == reason
    return {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastUpdateTime": previous.get("lastUpdateTime", now) if same_reason and previous else now,
        "lastTransitionTime": previous.get("lastTransitionTime", now) if unchanged and previous else now,
    }


def rollout_progress(
    deployment: Mapping[str, Any], replica_sets: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]
) -> tuple[int, ...]:
    """What moves when a rollout progresses: pods of the current template, ready ones, and all pods
    (old ones retired). The Deployment controller's deadline counts from the last change of these."""
    hash_ = spec_template_hash(deployment)
    owned = [rs for rs in replica_sets if is_owned_by(rs, deployment)]
    current = [rs for rs in owned if (_meta(rs).get("labels") or {}).get(HASH_LABEL) == hash_]
    live = [pod for pod in pods if not is_deleting(pod) and any(is_owned_by(pod, rs) for rs in owned)]
    new = [pod for pod in live if any(is_owned_by(pod, rs) for rs in current)]
    return len(new), sum(1 for pod in new if pod_ready(pod)), len(live)


def deployment_status(
    deployment: Mapping[str, Any],
    replica_sets: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    *,
    rollout_started: datetime.datetime | None,
    now: datetime.datetime,
) -> dict[str, Any]:
    """status of a Deployment from its ReplicaSets' pods, with Available and Progressing conditions."""
    spec = deployment.get("spec") or {}
    hash_ = spec_template_hash(deployment)
    owned = [rs for rs in replica_sets if is_owned_by(rs, deployment)]
    current = next((rs for rs in owned if (_meta(rs).get("labels") or {}).get(HASH_LABEL) == hash_), None)
    all_pods = [pod for pod in pods if not is_deleting(pod) and any(is_owned_by(pod, rs) for rs in owned)]
    new_pods = [pod for pod in all_pods if current is not None and is_owned_by(pod, current)]
    replicas = desired_replicas(deployment)
    ready = sum(1 for pod in all_pods if pod_ready(pod))
    new_ready = sum(1 for pod in new_pods if pod_ready(pod))
    now_text = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = {c.get("type"): c for c in (deployment.get("status") or {}).get("conditions") or []}
    rs_name = _meta(current)["name"] if current else _meta(deployment).get("name", "")

    available = ready >= replicas
    complete = current is not None and new_ready >= replicas and len(all_pods) == len(new_pods) == replicas
    deadline = float(spec.get("progressDeadlineSeconds", 600))
    if complete:
        progressing = (True, "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
    elif rollout_started is not None and (now - rollout_started).total_seconds() > deadline:
        progressing = (False, "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.')
    else:
        progressing = (True, "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
    conditions = [
        _condition(
            "Available",
            available,
            "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            "Deployment has minimum availability." if available else "Deployment does not have minimum availability.",
            previous.get("Available"),
            now_text,
        ),
        _condition("Progressing", *progressing, previous.get("Progressing"), now_text),
    ]
    status: dict[str, Any] = {
        "observedGeneration": _meta(deployment).get("generation", 1),
        "replicas": len(all_pods),
        "updatedReplicas": len(new_pods),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, replicas - ready),
        "conditions": conditions,
    }
    return {k: v for k, v in status.items() if v != 0 or k in ("observedGeneration", "replicas")}


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Whether labels fall under a LabelSelector (an empty selector selects nothing, like Services)."""
    if not selector:
        return False
    return labels_match(selector_from_label_selector(selector), labels)


def pods_of(selector_labels: Mapping[str, str] | None, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods a Service selector (plain label map) selects."""
    if not selector_labels:
        return []
    return [pod for pod in pods if selector_matches({"matchLabels": dict(selector_labels)}, _meta(pod).get("labels"))]
