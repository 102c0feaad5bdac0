"""`tmctl check`: what a promotion PR must prove before it merges, read-only, with a Markdown report.

For every TradingModel in the PR's manifests: the CRD schema and its CEL rules (offline, as the API
server would say it), the version published and verified in S3, staging before production (from
the audit log), no two manifests claiming one stage, and the same features and strategies as the
version production serves now (or exactly what differs). The report shows each change as
from -> to with the metadata deltas, and every failure with what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model_store.errors import StoreError
from model_store.layout import FEATURE_NAMES, METADATA, InvalidName, ModelLocation, Stage
from model_store.promotion import stage_manifest, verified_files
from model_store.registry import DETAILS, deployment_history
from trading_operator import KIND
from trading_operator.shadow_agreement import PrometheusError, ShadowAgreement
from trading_operator.spec import InvalidSpec, TradingModelSpec, check_name, parse_spec

S3For = Callable[[TradingModelSpec], Any]  # spec -> a read-only S3 client for its bucket
# (model key, champion version, challenger version) -> the shadow agreement (trading_operator.shadow_agreement)
AgreementFor = Callable[[str, str, str], "ShadowAgreement"]
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Checked:
    """One TradingModel of the PR and what the check found."""

    source: str  # file (and document) it came from
    name: str
    namespace: str
    model: TradingModelSpec | None = None
    current: str | None = None  # the version its stage holds now
    deltas: list[tuple[str, Any, Any]] = field(default_factory=list)  # (metadata key, current, proposed)
    problems: list[str] = field(default_factory=list)  # each says what is wrong and what to do
    shadow: str | None = None  # the shadow agreement of the proposed version, in words (--prometheus-url)

    @property
    def title(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Options:
    require_staging: bool = True  # Production only for a version Staging of the same model had
    allow_feature_change: bool = False
    agreement: AgreementFor | None = None  # with a Prometheus URL: the shadow agreement of each production change


def load_manifests(paths: Iterable[str], stdin: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every YAML/JSON document under the paths (folders recursively; `-` is standard input)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for raw in paths:
        if raw == "-":
            found += _documents("<stdin>", stdin or "")
            continue
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{raw} does not exist: give manifest files or folders (or - for stdin)")
        files = sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES) if path.is_dir() else [path]
        for file in files:
            found += _documents(str(file), file.read_text())
    return found


def _documents(source: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as exc:
        raise ValueError(f"{source} is not valid YAML: {exc}") from None
    out: list[tuple[str, dict[str, Any]]] = []
    for i, doc in enumerate(docs):
        where = source if len(docs) == 1 else f"{source}#{i + 1}"
        if doc.get("kind") == "List":
            out += [(where, d) for d in doc.get("items") or [] if isinstance(d, dict)]
        else:
            out.append((where, doc))
    return out


def check(
    documents: list[tuple[str, dict[str, Any]]],
    crd: dict[str, Any],
    s3_for: S3For,
    options: Options,
) -> list[Checked]:
    from crd_validation import validation_errors

    checked = []
    for source, doc in documents:
        if doc.get("kind") != KIND:
            continue
        meta = doc.get("metadata") or {}
        item = Checked(source, str(meta.get("name", "?")), str(meta.get("namespace") or "default"))
        checked.append(item)
        errors = validation_errors(crd, doc)
        if errors:
            item.problems += [f"{KIND} {item.title} is invalid: {e}" for e in errors]
            continue
        try:
            check_name(item.name)
            item.model = parse_spec(doc.get("spec") or {})
        except InvalidSpec as exc:
            item.problems.append(f"{exc}")
    _check_claims(checked)
    histories: dict[str, list[dict[str, Any]]] = {}
    for item in checked:
        if item.model is not None and not item.model.archived:
            _check_store(item, item.model, s3_for(item.model), histories, options)
            _shadow_agreement(item, item.model, options)
    return checked


def _shadow_agreement(item: Checked, model: TradingModelSpec, options: Options) -> None:
    """A production change from a known version: what the shadow said of the proposed one."""
    if options.agreement is None or model.s3_stage is not Stage.PRODUCTION:
        return
    if item.current is None or item.current == model.version:
        return
    try:
        item.shadow = options.agreement(model.location.model_key, item.current, model.version).describe()
    except PrometheusError as exc:
        item.shadow = f"the shadow agreement could not be read: {exc}"


def _check_claims(checked: list[Checked]) -> None:
    claims: dict[str, list[Checked]] = {}
    for item in checked:
        if item.model is not None and not item.model.archived:
            claims.setdefault(item.model.claim(), []).append(item)
    for claim, items in claims.items():
        if len(items) > 1:
            names = ", ".join(i.title for i in items)
            for item in items:
                item.problems.append(f"{names} all claim {claim}: a stage has one owner; archive or remove the others")


def _check_store(
    item: Checked, model: TradingModelSpec, s3: Any, histories: dict[str, list[dict[str, Any]]], options: Options
) -> None:
    location, stage = model.location, model.s3_stage
    try:
        _, files = verified_files(s3, model.bucket, location, model.version)
    except (StoreError, InvalidName) as exc:
        item.problems.append(f"{exc}. Publish it first (tmctl publish), or set spec.version to a published version")
        return
    current = stage_manifest(s3, model.bucket, location, stage)
    item.current = current.version if current else None
    if stage is Stage.PRODUCTION and options.require_staging and item.current != model.version:
        if model.bucket not in histories:
            histories[model.bucket] = deployment_history(s3, model.bucket)
        staged = any(
            e.get("model") == location.model_key and e.get("stage") == Stage.STAGING.value
            and e.get("to_version") == model.version
            for e in histories[model.bucket]
        )  # fmt: skip
        if not staged:
            item.problems.append(
                f"{location.model_key} {model.version} was never promoted to Staging: merge a PR that stages it "
                "first (policy: staging before production; --no-require-staging turns it off)"
            )
    production = stage_manifest(s3, model.bucket, location, Stage.PRODUCTION)
    if production is None or production.version == model.version:
        return
    try:
        _, serving = verified_files(s3, model.bucket, location, production.version)
    except (StoreError, InvalidName):
        return  # production itself is broken: the operator reports that; nothing to compare with
    _compare(item, location, production.version, serving, model.version, files, options)


def _compare(
    item: Checked,
    location: ModelLocation,
    old_version: str,
    old: dict[str, bytes],
    new_version: str,
    new: dict[str, bytes],
    options: Options,
) -> None:
    old_meta, new_meta = _json(old.get(METADATA)), _json(new.get(METADATA))
    item.deltas = [(k, old_meta.get(k), new_meta.get(k)) for k in DETAILS if old_meta.get(k) != new_meta.get(k)]
    if item.current is None:
        item.current = old_version
    differences = []
    old_features, new_features = _json(old.get(FEATURE_NAMES), []), _json(new.get(FEATURE_NAMES), [])
    if old_features != new_features:
        gone = [f for f in old_features if f not in new_features]
        added = [f for f in new_features if f not in old_features]
        moved = not gone and not added
        differences.append(
            "features differ: "
            + ("same names in another order" if moved else f"removed {gone or 'none'}, added {added or 'none'}")
        )
    old_labels, new_labels = old_meta.get("classes"), new_meta.get("classes")
    if old_labels != new_labels:
        differences.append(f"strategies differ: {old_labels} -> {new_labels}")
    if differences and not options.allow_feature_change:
        item.problems.append(
            f"{location.model_key} {new_version} is not a drop-in for production's {old_version}: "
            + "; ".join(differences)
            + ". Clients send the current features and read the current strategies: coordinate the change, then "
            "rerun with --allow-feature-change"
        )


def _json(raw: bytes | None, default: Any = None) -> Any:
    if raw is None:
        return {} if default is None else default
    try:
        return json.loads(raw)
    except ValueError:
        return {} if default is None else default


def render_markdown(checked: list[Checked]) -> str:
    failed = [c for c in checked if c.problems]
    head = "❌ this PR must not merge" if failed else "✅ every TradingModel checks out"
    lines = [f"## TradingModel check: {head}", ""]
    if not checked:
        return "\n".join([*lines, "No TradingModel in the manifests given.", ""])
    lines += ["| TradingModel | model | stage | version | result |", "|---|---|---|---|---|"]
    for c in checked:
        model = c.model
        where = model.location.model_key if model else "?"
        stage = model.stage if model else "?"
        move = f"{c.current or '-'} → {model.version}" if model else "?"
        if model and c.current == model.version:
            move = f"{model.version} (unchanged)"
        lines.append(f"| `{c.title}` | {where} | {stage} | {move} | {'❌' if c.problems else '✅'} |")
    for c in checked:
        if not c.deltas and not c.problems and not c.shadow:
            continue
        lines += ["", f"### `{c.title}` ({c.source})"]
        if c.deltas:
            lines += ["", "| metadata | now | proposed |", "|---|---|---|"]
            lines += [f"| {key} | {_cell(old)} | {_cell(new)} |" for key, old, new in c.deltas]
        if c.shadow:
            lines += ["", f"**Shadow agreement**: {c.shadow}"]
        if c.problems:
            lines += ["", *[f"- ❌ {p}" for p in c.problems]]
    return "\n".join([*lines, ""])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)
