"""The local stack's minimal HorizontalPodAutoscaler: the range kept, zero left alone, status said."""

from __future__ import annotations

from devstack.autoscalers import desired_replicas, hpa_status

HPA = {"spec": {"minReplicas": 2, "maxReplicas": 4}}


def test_replicas_are_kept_within_min_and_max_and_zero_disables_scaling() -> None:
    assert [desired_replicas(HPA, n) for n in (0, 1, 2, 3, 4, 7)] == [0, 2, 2, 3, 4, 4]
    assert desired_replicas({"spec": {"maxReplicas": 3}}, 1) == 1  # minReplicas defaults to 1


def test_status_reports_the_counts_and_that_no_metric_drives_it() -> None:
    status = hpa_status(HPA, 7, 4, "2026-11-28T06:00:00Z")
    assert (status["currentReplicas"], status["desiredReplicas"], status["lastScaleTime"]) == (
        7,
        4,
        "2026-11-28T06:00:00Z",
    )
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"AbleToScale": "True", "ScalingActive": "False"}
    assert hpa_status(HPA, 0, 0, "t")["conditions"][0]["reason"] == "ScalingDisabled"
