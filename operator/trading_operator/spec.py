"""The TradingModel spec as a typed value, checked again here because not every API server
(e.g. a local emulator) enforces the CRD schema."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from model_store.layout import InvalidName, ModelLocation, Stage, check_ticker, check_version
from trading_operator.quantity import InvalidQuantity, parse_quantity

ARCHIVED = "Archived"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENDPOINT_RE = re.compile(r"^https?://[^\s/]+(/.*)?$")
_DNS_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class InvalidSpec(ValueError):
    """A spec the operator cannot act on; the message says which field to fix."""


@dataclass(frozen=True)
class Autoscaling:
    """spec.serving.autoscaling: a HorizontalPodAutoscaler owns the serving replicas."""

    min_replicas: int
    max_replicas: int
    cpu_utilization: int | None  # percent of the pods' CPU request
    requests_per_second: float | None  # per pod, through the pods metric (needs a metrics adapter)


DEFAULT_CPU_UTILIZATION = 80


@dataclass(frozen=True)
class ShadowSpec:
    """spec.shadow: the challenger production pods score beside the model, never answering with it.
    Either a pinned version, or whatever another stage of the same model holds (from_stage)."""

    version: str | None
    from_stage: str | None  # "Staging": followed as the staging TradingModel promotes
    fraction: float = 1.0

    def describe(self) -> str:
        return self.version or f"whatever {self.from_stage} holds"


@dataclass(frozen=True)
class TradingModelSpec:
    ticker: str
    asset_class: str
    version: str
    stage: str  # Staging | Production | Archived
    bucket: str
    endpoint: str | None
    region: str
    secret_name: str | None
    replicas: int
    image: str | None
    resources: dict[str, Any] = field(default_factory=dict)
    tickers: tuple[str, ...] = ()  # stock only: every ticker the universal model serves, ticker first
    service_account: str | None = None  # the serving pods' (e.g. an IRSA role); None: the namespace's default
    image_pull_secrets: tuple[str, ...] = ()
    progress_deadline_seconds: int | None = None  # a rollout without progress this long is reported
    autoscaling: Autoscaling | None = None
    shadow: ShadowSpec | None = None  # Production only

    @property
    def location(self) -> ModelLocation:
        return ModelLocation.of(self.ticker, self.asset_class)

    @property
    def archived(self) -> bool:
        return self.stage == ARCHIVED

    @property
    def s3_stage(self) -> Stage:
        return Stage.parse(self.stage)

    def claim(self) -> str:
        """What two TradingModels must not both own: one stage prefix of one model family."""
        return f"s3://{self.bucket}/{self.location.stage_prefix(self.s3_stage)}"


_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def check_name(name: str) -> None:
    """The TradingModel's name also names its Deployment and Service, so it must be a DNS label."""
    if not _DNS_LABEL_RE.match(name) or len(name) > 63:
        raise InvalidSpec(
            f"metadata.name {name!r} must be a DNS label (lower-case letters, digits and '-', starting "
            "with a letter, at most 63 characters): it names the serving Deployment and Service"
        )


LABEL_VALUE_MAX = 63  # spec.version becomes a label value of the serving pods


def check_resources(resources: Any) -> dict[str, Any]:
    """spec.serving.resources as a cluster would accept it: quantities, and no request above its limit."""
    if not isinstance(resources, dict):
        raise InvalidSpec("spec.serving.resources must be an object with requests and limits")
    parsed: dict[str, dict[str, Any]] = {}
    for section in ("requests", "limits"):
        values = resources.get(section) or {}
        if not isinstance(values, dict):
            raise InvalidSpec(f"spec.serving.resources.{section} must map resource names to quantities")
        for key, value in values.items():
            try:
                parsed.setdefault(section, {})[key] = parse_quantity(value)
            except InvalidQuantity as exc:
                raise InvalidSpec(f"spec.serving.resources.{section}.{key} {value!r}: {exc} (e.g. 500m, 1Gi)") from None
    for key, request in (parsed.get("requests") or {}).items():
        limit = (parsed.get("limits") or {}).get(key)
        if limit is not None and request > limit:
            raise InvalidSpec(f"spec.serving.resources.requests.{key} must be less than or equal to its limit")
    return dict(resources)


def _serving_identity(serving: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    account = serving.get("serviceAccountName") or None
    if account is not None and (not _DNS_NAME_RE.match(str(account)) or len(str(account)) > 253):
        raise InvalidSpec(f"spec.serving.serviceAccountName {account!r} is not a valid ServiceAccount name")
    secrets = serving.get("imagePullSecrets") or []
    names = tuple(str((s or {}).get("name") or "") if isinstance(s, dict) else "" for s in secrets)
    if not isinstance(secrets, list) or not all(_DNS_NAME_RE.match(n) for n in names):
        raise InvalidSpec("spec.serving.imagePullSecrets must be a list of {name: <Secret name>}")
    return account, names


def parse_spec(spec: dict[str, Any]) -> TradingModelSpec:
    def need(mapping: dict[str, Any], key: str, where: str) -> Any:
        if mapping.get(key) in (None, ""):
            raise InvalidSpec(f"{where}.{key} is required")
        return mapping[key]

    storage = spec.get("storage") or {}
    serving = spec.get("serving") or {}
    try:
        ticker = check_ticker(str(need(spec, "ticker", "spec")))
        version = check_version(str(need(spec, "version", "spec")))
    except InvalidName as exc:
        raise InvalidSpec(str(exc)) from None
    if len(version) > LABEL_VALUE_MAX:
        raise InvalidSpec(f"spec.version must be at most {LABEL_VALUE_MAX} characters: it is a label of the pods")
    asset_class = spec.get("assetClass") or "etf"
    if asset_class not in ("etf", "stock"):
        raise InvalidSpec(f"spec.assetClass must be etf or stock, got {asset_class!r}")
    stage = need(spec, "stage", "spec")
    if stage not in ("Staging", "Production", ARCHIVED):
        raise InvalidSpec(f"spec.stage must be Staging, Production or Archived, got {stage!r}")
    bucket = str(need(storage, "bucket", "spec.storage"))
    if not _BUCKET_RE.match(bucket):
        raise InvalidSpec(f"spec.storage.bucket {bucket!r} is not a valid S3 bucket name")
    endpoint = storage.get("endpoint") or None
    if endpoint is not None and not _ENDPOINT_RE.match(endpoint):
        raise InvalidSpec(f"spec.storage.endpoint must be an http(s) URL, got {endpoint!r}")
    replicas = serving.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 100:
        raise InvalidSpec(f"spec.serving.replicas must be a whole number from 0 to 100, got {replicas!r}")
    extra = spec.get("tickers") or []
    if extra and asset_class != "stock":
        raise InvalidSpec("spec.tickers lists stock tickers; it is for assetClass stock only")
    if not isinstance(extra, list) or len(extra) > 500:
        raise InvalidSpec("spec.tickers must be a list of at most 500 stock tickers")
    try:
        tickers = tuple(dict.fromkeys([ticker, *(check_ticker(str(t)) for t in extra)]))
    except InvalidName as exc:
        raise InvalidSpec(f"spec.tickers: {exc}") from None
    secret = (storage.get("secretRef") or {}).get("name") or None
    if secret is not None and not _DNS_NAME_RE.match(secret):
        raise InvalidSpec(f"spec.storage.secretRef.name {secret!r} is not a valid Secret name")
    deadline = serving.get("progressDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or isinstance(deadline, bool) or deadline < 1):
        raise InvalidSpec(f"spec.serving.progressDeadlineSeconds must be a whole number of seconds, got {deadline!r}")
    account, pull_secrets = _serving_identity(serving)
    shadow = _parse_shadow(spec.get("shadow"), stage, version)
    return TradingModelSpec(
        ticker=ticker,
        asset_class=asset_class,
        version=version,
        stage=stage,
        bucket=bucket,
        endpoint=endpoint,
        region=storage.get("region") or "us-east-1",
        secret_name=secret,
        replicas=replicas,
        image=serving.get("image") or None,
        resources=check_resources(serving.get("resources") or {}),
        tickers=tickers if asset_class == "stock" else (),
        service_account=account,
        image_pull_secrets=pull_secrets,
        progress_deadline_seconds=deadline,
        autoscaling=parse_autoscaling(serving.get("autoscaling"), serving.get("resources")),
        shadow=shadow,
    )


def parse_autoscaling(raw: Any, resources: Any) -> Autoscaling | None:
    if raw is None:
        return None
    where = "spec.serving.autoscaling"
    if not isinstance(raw, dict):
        raise InvalidSpec(f"{where} must be an object (minReplicas, maxReplicas, a target)")

    def whole(key: str, default: int | None, low: int) -> int:
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 100:
            raise InvalidSpec(f"{where}.{key} must be a whole number from {low} to 100, got {value!r}")
        return value

    low, high = whole("minReplicas", 1, 1), whole("maxReplicas", None, 1)
    if low > high:
        raise InvalidSpec(f"{where}.minReplicas ({low}) must not exceed maxReplicas ({high})")
    cpu, rps = raw.get("targetCPUUtilizationPercentage"), raw.get("targetRequestsPerSecond")
    if cpu is not None and rps is not None:
        raise InvalidSpec(f"{where}: set one target, targetCPUUtilizationPercentage or targetRequestsPerSecond")
    if rps is not None:
        if not isinstance(rps, int | float) or isinstance(rps, bool) or rps <= 0:
            raise InvalidSpec(f"{where}.targetRequestsPerSecond must be a number above 0, got {rps!r}")
        return Autoscaling(low, high, None, float(rps))
    if cpu is None:
        cpu = DEFAULT_CPU_UTILIZATION
    if not isinstance(cpu, int) or isinstance(cpu, bool) or not 1 <= cpu <= 100:
        raise InvalidSpec(f"{where}.targetCPUUtilizationPercentage must be a whole number from 1 to 100, got {cpu!r}")
    if resources and not ((resources.get("requests") or {}).get("cpu")):
        # The HPA divides usage by the request: without one it cannot scale on CPU at all.
        raise InvalidSpec(f"{where}: a CPU target needs spec.serving.resources.requests.cpu (or no resources)")
    return Autoscaling(low, high, int(cpu), None)


def _parse_shadow(raw: Any, stage: str, version: str) -> ShadowSpec | None:
    if raw in (None, {}):
        return None
    if not isinstance(raw, dict):
        raise InvalidSpec("spec.shadow must be an object: {version: v1.3} or {fromStage: Staging}")
    if stage != "Production":
        raise InvalidSpec("spec.shadow is for a Production TradingModel: it scores a challenger beside production")
    pinned, from_stage = raw.get("version") or None, raw.get("fromStage") or None
    if (pinned is None) == (from_stage is None):
        raise InvalidSpec("spec.shadow needs exactly one of version (a published version) or fromStage: Staging")
    if from_stage is not None and from_stage != "Staging":
        raise InvalidSpec(f"spec.shadow.fromStage must be Staging, got {from_stage!r}")
    if pinned is not None:
        try:
            check_version(str(pinned))
        except InvalidName as exc:
            raise InvalidSpec(f"spec.shadow.version: {exc}") from None
        if pinned == version:
            raise InvalidSpec(f"spec.shadow.version is {pinned}, the version production serves: name the challenger")
    fraction = raw.get("fraction", 1)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise InvalidSpec(f"spec.shadow.fraction must be a number from 0 to 1, got {fraction!r}")
    return ShadowSpec(str(pinned) if pinned else None, from_stage, float(fraction))
