"""`tmctl`: publish and inspect model versions, run the operator or the server."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from model_store.errors import StoreError
from model_store.layout import InvalidName, ModelLocation, Stage
from model_store.s3 import S3Settings, make_client


def _store_args(p: argparse.ArgumentParser, version: bool = True) -> None:
    p.add_argument("--ticker", required=True, help="e.g. SPY; for --asset-class stock any stock ticker")
    p.add_argument("--asset-class", choices=["etf", "stock"], default="etf")
    if version:
        p.add_argument("--version", required=True, help="e.g. v1.2")
    _bucket_args(p)


def _bucket_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=os.environ.get("S3_BUCKET"), help="default: $S3_BUCKET")
    p.add_argument("--endpoint", default=os.environ.get("S3_ENDPOINT_URL"), help="default: $S3_ENDPOINT_URL")


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    settings = dataclasses.replace(S3Settings.from_env(args.bucket), endpoint_url=args.endpoint or None)
    return make_client(settings), settings.bucket


def _location(args: argparse.Namespace) -> ModelLocation:
    return ModelLocation.of(args.ticker, args.asset_class)


def cmd_publish(args: argparse.Namespace) -> None:
    from model_store.publish import publish_version, read_model_dir

    s3, bucket = _client(args)
    files = read_model_dir(Path(args.folder))
    result = publish_version(s3, bucket, _location(args), args.version, files)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    verb = "published" if result.created else "already published (identical)"
    print(f"{verb}: s3://{bucket}/{_location(args).archive_prefix(args.version)} {result.digest}")


def cmd_versions(args: argparse.Namespace) -> None:
    from model_store.promotion import list_versions, stage_manifest

    s3, bucket = _client(args)
    location = _location(args)
    staged: dict[str, list[str]] = {}
    for stage in Stage:
        manifest = stage_manifest(s3, bucket, location, stage)
        if manifest:
            staged.setdefault(manifest.digest, []).append(stage.value)
    rows = list_versions(s3, bucket, location)
    if not rows:
        print(f"no versions under s3://{bucket}/{location.archive_root()}")
    for info in rows:
        state = ",".join(staged.get(info.digest or "", [])) if info.complete else "INCOMPLETE (no manifest)"
        print(f"{info.version:<12} {(info.digest or '-')[:19]:<20} {state}")


def cmd_verify(args: argparse.Namespace) -> None:
    from model_store.promotion import verify_version

    s3, bucket = _client(args)
    manifest = verify_version(s3, bucket, _location(args), args.version)
    print(f"ok: {len(manifest.files)} files match {manifest.digest}")


def cmd_promote(args: argparse.Namespace) -> None:
    from model_store.promotion import promote_and_register

    s3, bucket = _client(args)
    stage = Stage.parse(args.stage)
    actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    # The stock model's declared tickers live in its TradingModel: the CLI leaves them as they are.
    tickers = [args.ticker] if args.asset_class == "etf" else []
    result = promote_and_register(s3, bucket, _location(args), args.version, stage, actor, args.reason, tickers)
    print(f"{result.action}: {args.version} in {stage.value} (was {result.previous_version})")
    if result.audit_error:
        print(f"warning: not yet in the audit log ({result.audit_error}); run this again to record it", file=sys.stderr)


def cmd_history(args: argparse.Namespace) -> None:
    from model_store.registry import deployment_history

    s3, bucket = _client(args)
    for entry in deployment_history(s3, bucket):
        if args.ticker and entry.get("ticker") != args.ticker:
            continue
        print(json.dumps(entry) if args.json else _history_line(entry))


def _history_line(e: dict[str, Any]) -> str:
    return (
        f"{e.get('at', ''):<21} {e.get('action', ''):<9} {e.get('model', ''):<18} {e.get('stage', ''):<11} "
        f"{e.get('from_version') or '-':>7} -> {e.get('to_version') or '-':<7} {e.get('actor', '')}"
    )


def cmd_check(args: argparse.Namespace) -> None:
    from trading_operator.pr_check import Options, check, load_manifests, render_markdown

    crd = next((d for _, d in load_manifests([args.crd]) if d.get("kind") == "CustomResourceDefinition"), None)
    if crd is None:
        raise ValueError(f"{args.crd} holds no CustomResourceDefinition: pass --crd crds/tradingmodel.yaml")
    stdin = sys.stdin.read() if "-" in args.paths else None
    documents = load_manifests(args.paths, stdin)

    def s3_for(model: Any) -> Any:
        endpoint = args.endpoint or model.endpoint
        return make_client(S3Settings(bucket=model.bucket, endpoint_url=endpoint, region=model.region))

    options = Options(require_staging=not args.no_require_staging, allow_feature_change=args.allow_feature_change)
    if args.prometheus_url:
        from trading_operator.shadow_agreement import check_window, query_agreement

        window = check_window(args.prometheus_window)
        options.agreement = lambda model, champion, challenger: query_agreement(
            args.prometheus_url, model, champion, challenger, window
        )
    checked = check(documents, crd, s3_for, options)
    report = render_markdown(checked)
    if args.report:
        Path(args.report).write_text(report)
    print(report)
    if any(c.problems for c in checked):
        sys.exit(1)


_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives each thread that allocates its own arena, up to 8 per core, and keeps what each
    one freed: the operator's ~30 threads (passes, S3 copies, kopf) grew its RSS by ~8% at 300
    TradingModels for nothing. Called before any thread starts; MALLOC_ARENA_MAX, when set, wins.
    False where it does not apply (another libc)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def cmd_operator(args: argparse.Namespace) -> None:
    limit_malloc_arenas()
    import kopf

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON)
    if args.namespace:  # before the handlers read their configuration
        os.environ["WATCH_NAMESPACE"] = args.namespace
    import trading_operator.handlers  # (registers the handlers; reads the configuration)

    if not args.verbose:
        logging.getLogger().setLevel(trading_operator.handlers.CONFIG.log_level)

    config = trading_operator.handlers.CONFIG
    if not config.serving_image:
        raise ValueError(
            "SERVING_IMAGE is not set: it names the image of the serving pods "
            "(manifests/manager sets it from the `images:` of the kustomization you apply)"
        )
    namespace = args.namespace or config.watch_namespace
    kopf.run(
        clusterwide=not namespace,
        namespaces=[namespace] if namespace else (),
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(watch_namespace=namespace),  # peering follows the watched scope (handlers.configure)
    )


def cmd_serve(args: argparse.Namespace) -> None:
    from model_serving.__main__ import main as serve

    sys.exit(serve())  # 2 for a configuration error, like `python -m model_serving`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    p = add("publish", cmd_publish, "upload a model folder to archive/<version>/, manifest last")
    p.add_argument("folder")
    _store_args(p)
    _store_args(p := add("verify", cmd_verify, "check a published version against its manifest"))
    _store_args(add("versions", cmd_versions, "list published versions and where they are staged"), version=False)
    p = add("promote", cmd_promote, "copy a version into staging/ or production/ (the operator does this for you)")
    _store_args(p)
    p.add_argument("--stage", required=True, choices=["staging", "production", "Staging", "Production"])
    p.add_argument("--reason", default="")
    p = add("history", cmd_history, "the deployment audit log (metadata/deployment_history.json)")
    p.add_argument("--ticker")
    p.add_argument("--json", action="store_true")
    _bucket_args(p)

    p = add("check", cmd_check, "the PR check: validate TradingModel manifests against the CRD and S3 (read-only)")
    p.add_argument("paths", nargs="+", help="manifest files or folders (kustomize build output: -)")
    p.add_argument("--crd", default="crds/tradingmodel.yaml", help="the CRD to validate against")
    p.add_argument("--endpoint", default=os.environ.get("S3_ENDPOINT_URL"), help="S3 endpoint for every manifest")
    p.add_argument("--report", help="also write the Markdown report to this file (e.g. for a PR comment)")
    p.add_argument("--no-require-staging", action="store_true", help="allow Production without Staging first")
    p.add_argument("--allow-feature-change", action="store_true", help="allow features/strategies to differ")
    p.add_argument(
        "--prometheus-url",
        default=os.environ.get("PROMETHEUS_URL"),
        help="add the shadow agreement of each production change (spec.shadow on the production pods) to the report",
    )
    p.add_argument("--prometheus-window", default="7d", help="how far back the shadow counters count (default 7d)")

    p = add("operator", cmd_operator, "run the operator against the current cluster")
    p.add_argument("--namespace", help="watch one namespace (default: $WATCH_NAMESPACE or all)")
    p.add_argument("--liveness", help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--verbose", action="store_true")
    add("serve", cmd_serve, "run the model server (configured from the environment)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command not in ("operator", "serve"):  # those two log JSON lines of their own
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        args.fn(args)
    except (StoreError, InvalidName, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (ClientError, BotoCoreError) as exc:
        print(f"error: S3: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
