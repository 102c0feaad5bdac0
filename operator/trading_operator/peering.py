"""Several operator replicas, one acting: kopf peering, set up so that exactly one replica works.

Each replica writes a keep-alive (identity, priority, lifetime, last seen) into one peering object
(kopf.dev/v1 ClusterKopfPeering when the operator watches every namespace, KopfPeering in the
watched namespace otherwise: the scope of the peering is the scope of what could be handled
twice). A replica that sees a live peer of a higher priority pauses its watches; when that peer's
record expires (it died without a word) or is withdrawn (it stopped cleanly), the replica resumes.

- Priorities are distinct, and the oldest replica has the highest: a replica that starts (a
  rolling update, a rescheduled pod) never takes the work from one that is acting, so planned
  changes hand over only when the acting replica stops. Two replicas of one priority would both
  pause (kopf's rule), leaving nothing acting: the sub-millisecond tie-break makes that a one in
  a million chance for two replicas started in the same millisecond.
- Peering is mandatory: a replica starts paused and acts only once the peering object shows no
  live peer above it; the object is created when missing, and a missing CRD stops the operator
  at startup with what to install, rather than leaving it paused without a word.
- `tradingmodel_operator_active` follows kopf's own pause and resume (its peering log lines, the
  only place kopf tells them), so an alert can say "no replica is acting".
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from kubernetes.client.rest import ApiException

from trading_operator.kube import KubeApi
from trading_operator.metrics import ACTIVE

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
KOPF_PEERING_LOGGER = "kopf._core.engines.peering"
TIE_BREAK = 1000  # distinct priorities within one millisecond of start time


class PeeringUnavailable(RuntimeError):
    """The peering object can neither be read nor created: what to install or grant."""


def priority_for(started_at: float, tie_break: int) -> int:
    """Older replicas rank higher: minus the start time in milliseconds, refined by a tie-break
    (0 <= tie_break < TIE_BREAK). Negative, so that kopf's `--dev` mode (priority 666) still
    pauses every deployed replica while a developer debugs on a laptop."""
    return -(int(started_at * 1000) * TIE_BREAK + tie_break)


def new_priority(now: float | None = None) -> int:
    return priority_for(time.time() if now is None else now, random.randrange(TIE_BREAK))


def peering_path(name: str, namespace: str | None) -> str:
    base = f"/apis/{PEERING_GROUP}/{PEERING_VERSION}"
    return f"{base}/namespaces/{namespace}/kopfpeerings/{name}" if namespace else f"{base}/clusterkopfpeerings/{name}"


def peering_object(name: str, namespace: str | None) -> dict[str, Any]:
    """The peering object the replicas share (its status holds their keep-alives)."""
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "tradingmodel"}}
    if namespace:
        meta["namespace"] = namespace
    kind = "KopfPeering" if namespace else "ClusterKopfPeering"
    return {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "kind": kind, "metadata": meta}


def ensure_peering_object(kube: KubeApi, name: str, namespace: str | None) -> bool:
    """Create the peering object if it is missing; True if this call created it. Raises
    PeeringUnavailable when the kopf.dev CRD is not installed or RBAC refuses."""
    path = peering_path(name, namespace)
    obj = peering_object(name, namespace)
    where = f"{obj['kind']} {namespace + '/' if namespace else ''}{name}"
    try:
        if kube.request("GET", path) is not None:
            return False
        kube.request("POST", path.rsplit("/", 1)[0], obj)
        return True
    except ApiException as exc:
        if exc.status == 409:  # another replica created it meanwhile
            return False
        if exc.status == 404:
            raise PeeringUnavailable(
                f"the {obj['kind']} kind ({PEERING_GROUP}/{PEERING_VERSION}) is not served: install "
                "crds/kopf-peering.yaml (kubectl apply -k manifests/crd), or set STANDALONE=true to run "
                "one replica without peering"
            ) from None
        if exc.status == 403:
            raise PeeringUnavailable(
                f"RBAC refuses reading or creating {where}: grant get and create on "
                f"{'kopfpeerings' if namespace else 'clusterkopfpeerings'}.{PEERING_GROUP} "
                "(manifests/rbac/role.yaml)"
            ) from None
        raise


def configure_peering(settings: Any, *, name: str, lifetime: int, standalone: bool, priority: int) -> None:
    """kopf's peering settings for one replica (settings: kopf.OperatorSettings)."""
    settings.peering.standalone = standalone
    if standalone:
        ACTIVE.set(1)
        return
    settings.peering.name = name
    settings.peering.mandatory = True  # start paused: act only once the peers are known
    settings.peering.priority = priority
    settings.peering.lifetime = lifetime
    settings.peering.stealth = True  # no log line per keep-alive
    ACTIVE.set(0)
    follow_pauses()


class _PauseFollower(logging.Handler):
    """Sets the active gauge from kopf's peering decisions ("Pausing operations in favour of…",
    "Pausing all operators, including self…", "Resuming operations after the pause…")."""

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith("Pausing"):
            ACTIVE.set(0)
        elif message.startswith("Resuming"):
            ACTIVE.set(1)


_follower = _PauseFollower()


def follow_pauses() -> None:
    logger = logging.getLogger(KOPF_PEERING_LOGGER)
    if _follower not in logger.handlers:
        logger.addHandler(_follower)
    if logger.getEffectiveLevel() > logging.INFO:  # pauses and resumes are rare: worth a log line too
        logger.setLevel(logging.INFO)
