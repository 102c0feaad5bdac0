"""Our serving process side by side with MLServer 1.7.1, on the same model, load and machine.

    python serving/benchmarks/serve_vs_mlserver.py [--seconds 10] [--json results.json]
    ./dev bench [same options]

What it does, printing each step:
  1. trains the demo model (100 rounds, 10 classes, 84 features), starts a local S3
     (moto server on 127.0.0.1), publishes the version (archive/v1.0 + manifest) and
     promotes it to production/ (metadata/asset_registry.json included);
  2. starts ours (`python -m model_serving`, the pod env contract, OMP_NUM_THREADS=1)
     cold (empty MODEL_CACHE_DIR: from S3) and warm (same cache dir: from disk), timing
     start-to-ready and start-to-compiled-engine; the warm one stays up for the load, and
     so does a second one with SERVING_COMPILE_TREES=0 ("ours-capi": LightGBM's C API
     engine), to show what compiled trees add end to end (--no-capi-row skips it);
  3. installs MLServer 1.7.1 + mlserver-lightgbm into its own venv when missing
     (--mlserver-venv), serves the same native model file with `parallel_workers: 0`
     (its fastest setting) and OMP_NUM_THREADS=1, timing start-to-ready twice;
  4. checks both servers return the same probabilities for one row;
  5. drives both with the same closed-loop load (wrk when installed, else an asyncio
     client: see loadgen.py) at each concurrency: a single-row V2 infer request
     (inputs [{name, shape [1,84], datatype FP64, data}]) rotating over --rows
     different rows, after a warm-up; our seeds' /v1/predict call is an extra row;
  6. reads each server's RSS (process tree) after the load, stops the servers, then
     times single-row compute of each engine in-process (single_row.py);
  7. prints the table and writes the same figures as JSON (--json).

With a shadow challenger (on unless --no-shadow): a second version (v1.1, another seed) is
published to staging/ and a third server of ours ("ours-shadow", compiled trees) scores it
beside v1.0 on every request (MODEL_SHADOW_VERSION/DIGEST); it runs the same load, interleaved
with "ours", so the report gives the shadow's cost per request from the same run: the
challenger's own time (tradingmodel_shadow_duration_seconds, mean per request) and the
difference of the two servers' latency and CPU per request. `--shadow-cost` runs only that
comparison (ours, ours-shadow, MLServer at concurrency 1 and 8):

    ./dev bench --shadow-cost

The load average is printed and recorded before and after: the figures of a loaded machine
say little; rerun on a quiet one.

Everything binds to 127.0.0.1, and every process it starts is stopped on the way
out, also on Ctrl-C, SIGTERM or failure. The machine may be shared: run the full
benchmark once, with short --seconds while developing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the checkout: devstack (the demo model)

import loadgen
import servers
import shadow_row
import single_row

TICKER = "SPY"
VERSION = "v1.0"
CHALLENGER = "v1.1"  # the shadow challenger (another seed): scored beside VERSION by ours-shadow
BUCKET = "tradingmodel-bench"
V2_PATH = f"/v2/models/{TICKER}/infer"
V1_PATH = "/v1/predict"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- payloads


def request_rows(count: int, n_features: int, seed: int = 2024) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, n_features))


def v2_body(row: np.ndarray) -> bytes:
    doc = {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row.tolist()}]}
    return json.dumps(doc).encode()


def v2_batch_body(rows: np.ndarray) -> bytes:
    doc = {
        "inputs": [
            {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().round(6).tolist()}
        ]
    }
    return json.dumps(doc).encode()


def batch_interference(
    server: servers.Server, tool: str, single: list[bytes], batch: bytes, seconds: float
) -> dict[str, Any]:
    """Single-row latency at concurrency 1, alone and while one other client sends large batches back to back."""
    alone = loadgen.run_load(tool, server.port, V2_PATH, single, 1, seconds)
    stop = threading.Event()
    batches = [0, 0]  # answered 200, other

    def hammer() -> None:
        while not stop.is_set():
            try:
                status, _ = servers.http_post(server.port, V2_PATH, batch, timeout=60)
            except OSError:
                status = 0
            batches[0 if status == 200 else 1] += 1

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        loaded = loadgen.run_load(tool, server.port, V2_PATH, single, 1, seconds)
    finally:
        stop.set()
        thread.join(120)
    return {
        "alone": {"p50_ms": alone.p50_ms, "p99_ms": alone.p99_ms, "requests_per_second": alone.requests_per_second},
        "with_batches": {
            "p50_ms": loaded.p50_ms,
            "p99_ms": loaded.p99_ms,
            "requests_per_second": loaded.requests_per_second,
            "errors": loaded.errors,
        },
        "batches_answered": batches[0],
        "batches_failed": batches[1],
    }


def v1_body(row: np.ndarray, names: list[str]) -> bytes:
    return json.dumps({"ticker": TICKER, "features": dict(zip(names, row.tolist(), strict=True))}).encode()


def first_probabilities(body: bytes) -> list[float]:
    """The 10 class probabilities of a V2 answer (ours names the tensor, MLServer calls it predict)."""
    for tensor in json.loads(body)["outputs"]:
        if tensor.get("datatype") == "FP64":
            return [float(v) for v in tensor["data"]]
    raise ValueError("no FP64 output in the answer")


# ----------------------------------------------------------------------------- steps


def publish(s3_endpoint: str, files: dict[str, bytes], version: str = VERSION, stage: str = "production") -> str:
    """archive/<version> with its manifest, promoted to the stage; returns the version digest."""
    from model_store.layout import ModelLocation, Stage
    from model_store.promotion import promote_and_register
    from model_store.publish import publish_version
    from model_store.s3 import S3Settings, make_client

    client = make_client(S3Settings(bucket=BUCKET, endpoint_url=s3_endpoint))
    if version == VERSION:
        client.create_bucket(Bucket=BUCKET)
    location = ModelLocation.of(TICKER, "etf")
    published = publish_version(client, BUCKET, location, version, files)
    promote_and_register(
        client, BUCKET, location, version, Stage.parse(stage), actor="benchmark", reason="serve_vs_mlserver"
    )
    return published.digest


def shadow_metrics(port: int) -> dict[str, float]:
    """The shadow counters of ours-shadow (summed over label sets), read from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = servers.http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    wanted = {
        "tradingmodel_shadow_predictions_total": "compared",
        "tradingmodel_shadow_agreements_total": "agreements",
        "tradingmodel_shadow_duration_seconds_sum": "seconds",
        "tradingmodel_shadow_duration_seconds_count": "calls",
        "tradingmodel_shadow_failures_total": "failures",
        "process_cpu_seconds_total": "cpu_seconds",
        "tradingmodel_requests_total": "requests",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += sample.value
    return out


def wait_shadow_compiled(server: servers.Server, timeout: float) -> bool:
    """True once both versions run compiled trees (two swaps) and the challenger is scoring."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.alive():
        status, body = servers.http_get(server.port, "/metrics")
        text = body.decode() if status == 200 else ""
        if 'tradingmodel_engine_swaps_total{outcome="swapped"} 2.0' in text and 'state="scoring"' in text:
            return True
        time.sleep(0.1)
    return False


def shadow_cost(
    load: list[dict[str, Any]], counters: dict[str, dict[str, float]], cpu_comparable: bool
) -> dict[str, Any]:
    """The shadow's cost per request during the load: the challenger's own time (its histogram)
    and, per concurrency, ours-shadow against ours in the same run (latency, requests/s) and, when
    both served the same requests (`cpu_comparable`: no /v1/predict row for ours), CPU per request."""
    by = {(r["server"], r["concurrency"]): r for r in load if r["endpoint"] == V2_PATH}
    shadow = counters.get("ours-shadow", {})
    out: dict[str, Any] = {
        "challenger_us_per_request": round(1e6 * shadow["seconds"] / shadow["calls"], 2)
        if shadow.get("calls")
        else None,
        "agreement_rate": round(shadow["agreements"] / shadow["compared"], 4) if shadow.get("compared") else None,
        "failures": shadow.get("failures"),
        "by_concurrency": {},
    }
    cpu = {name: c["cpu_seconds"] / c["requests"] for name, c in counters.items() if c.get("requests")}
    if cpu_comparable and "ours" in cpu and "ours-shadow" in cpu:
        out["cpu_us_per_request"] = {name: round(1e6 * v, 1) for name, v in cpu.items()}
        out["cpu_overhead_us_per_request"] = round(1e6 * (cpu["ours-shadow"] - cpu["ours"]), 1)
    for (server, concurrency), row in by.items():
        plain = by.get(("ours", concurrency))
        if server != "ours-shadow" or plain is None:
            continue
        out["by_concurrency"][str(concurrency)] = {
            "p50_ms": [plain["p50_ms"], row["p50_ms"]],
            "requests_per_second": [plain["requests_per_second"], row["requests_per_second"]],
            "p50_overhead_us": round(1000 * (row["p50_ms"] - plain["p50_ms"]), 1),
        }
    return out


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def local_s3_with(files: dict[str, bytes], started: list[Any]) -> tuple[str, str]:
    """A moto S3 server on 127.0.0.1 (appended to `started`, to be stopped) holding the model
    published and promoted to production/; returns (endpoint, version digest)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    started.append(s3_server)
    host, port = s3_server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    return endpoint, publish(endpoint, files)


def download_production(s3_endpoint: str, name: str) -> tuple[bytes, float]:
    from model_store.layout import ModelLocation, Stage
    from model_store.s3 import S3Settings, get_bytes, make_client

    started = time.monotonic()
    client = make_client(S3Settings(bucket=BUCKET, endpoint_url=s3_endpoint))
    data = get_bytes(client, BUCKET, ModelLocation.of(TICKER, "etf").stage_prefix(Stage.PRODUCTION) + name)
    return data, time.monotonic() - started


def start_ours(
    procs: servers.ProcessSet, work: Path, env_args: dict[str, Any], label: str, extra: dict[str, str] | None
) -> servers.Server:
    port = servers.free_port()
    env = servers.ours_env(port=port, extra=extra, **env_args)
    return procs.start(label, [sys.executable, "-m", "model_serving"], env, port, work / f"{label}.log")


def time_ours_start(
    procs: servers.ProcessSet,
    work: Path,
    env_args: dict[str, Any],
    label: str,
    engine_timeout: float,
    extra: dict[str, str] | None = None,
) -> tuple[servers.Server, dict[str, Any]]:
    server = start_ours(procs, work, env_args, label, extra)
    ready = server.wait_ready(("/v2/health/ready",), timeout=180)
    engine, compiled_at = servers.wait_engine(server, TICKER, "compiled", engine_timeout)
    facts = {"ready_seconds": round(ready, 2), "engine": engine}
    facts["compiled_engine_seconds"] = round(compiled_at, 2) if compiled_at is not None else None
    return server, facts


def time_mlserver_start(
    procs: servers.ProcessSet, work: Path, exe: Path, model_file: bytes, label: str
) -> tuple[servers.Server, dict[str, Any]]:
    port = servers.free_port()
    repo = work / label
    servers.write_mlserver_repo(repo, TICKER, VERSION, model_file, port)
    server = procs.start(label, [str(exe), "start", str(repo)], servers.mlserver_env(), port, work / f"{label}.log")
    ready = server.wait_ready(("/v2/health/ready", f"/v2/models/{TICKER}/ready"), timeout=300)
    return server, {"ready_seconds": round(ready, 2), "engine": "lightgbm.Booster.predict"}


def describe_start(facts: dict[str, Any]) -> str:
    compiled = facts.get("compiled_engine_seconds")
    engine = f"engine {facts['engine']}" + (f" from {compiled} s" if compiled is not None else "")
    return f"ready in {facts['ready_seconds']} s, {engine}"


def load_matrix(
    targets: list[tuple[str, str, servers.Server, list[bytes]]],
    concurrencies: list[int],
    tool: str,
    seconds: float,
    warmup: float,
) -> list[dict[str, Any]]:
    """Each concurrency in turn, every target at it (interleaved, so drift on a shared machine
    hits both servers alike)."""
    rows = []
    total = len(targets) * len(concurrencies)
    step = 0
    for concurrency in concurrencies:
        for server_name, path, server, bodies in targets:
            step += 1
            if not server.alive():
                raise RuntimeError(f"{server.label} died; log:\n{server.log_tail()}")
            say(
                f"load {step}/{total}: {server_name} POST {path} concurrency {concurrency} "
                f"({warmup:g} s warm-up + {seconds:g} s)"
            )
            if warmup > 0:
                loadgen.run_load(tool, server.port, path, bodies, concurrency, warmup)
            result = loadgen.run_load(tool, server.port, path, bodies, concurrency, seconds)
            say(
                f"  {result.requests_per_second:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                f"errors {result.errors}"
            )
            rows.append({"server": server_name, "endpoint": path, **asdict(result)})
    return rows


# ----------------------------------------------------------------------------- report


def ratios(load: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """requests/s of each of our V2 rows divided by MLServer's at the same concurrency."""
    theirs = {r["concurrency"]: r["requests_per_second"] for r in load if r["server"] == "mlserver"}
    out: dict[str, dict[str, float]] = {}
    for r in load:
        if r["server"] != "mlserver" and r["endpoint"] == V2_PATH and theirs.get(r["concurrency"]):
            out.setdefault(r["server"], {})[str(r["concurrency"])] = round(
                r["requests_per_second"] / theirs[r["concurrency"]], 2
            )
    return out


def format_report(results: dict[str, Any]) -> str:
    lines = [
        "",
        "== closed-loop load, single-row requests " + f"({results['loadgen']}, {results['seconds']:g} s each) ==",
    ]
    lines.append(f"{'server':9} {'endpoint':24} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for r in results["load"]:
        lines.append(
            f"{r['server']:9} {r['endpoint']:24} {r['concurrency']:4d} {r['requests_per_second']:9,.0f} "
            f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:6d}"
        )
    for server, by_concurrency in results["ratio_to_mlserver"].items():
        pairs = ", ".join(f"c={c}: {v:.2f}x" for c, v in by_concurrency.items())
        lines.append(f"requests/s {server} / MLServer (V2 infer): {pairs}")
    if results.get("shadow"):
        sc = results["shadow"]
        lines.append("")
        lines.append(f"== shadow challenger: ours-shadow scores {CHALLENGER} beside {VERSION} on every request ==")
        if sc.get("in_process"):
            ip = sc["in_process"]
            lines.append(
                f"in-process, best of 7 ({ip['engine']}): score() of one row {ip['score_us']} us alone, "
                f"{ip['score_with_shadow_us']} us with the shadow (+{ip['overhead_us']} us per single-row request)"
            )
    if results.get("shadow", {}).get("challenger_us_per_request") is not None:
        sc = results["shadow"]
        lines.append(
            f"challenger time per request (its histogram): {sc['challenger_us_per_request']} us; "
            f"agreement {sc['agreement_rate']}; failures {sc['failures']:.0f}"
        )
        if "cpu_overhead_us_per_request" in sc:
            lines.append(
                f"server CPU per request: ours {sc['cpu_us_per_request']['ours']} us, ours-shadow "
                f"{sc['cpu_us_per_request']['ours-shadow']} us (+{sc['cpu_overhead_us_per_request']} us)"
            )
        for c, f in sc["by_concurrency"].items():
            lines.append(
                f"c={c}: p50 {f['p50_ms'][0]:.3f} -> {f['p50_ms'][1]:.3f} ms ({f['p50_overhead_us']:+.1f} us), "
                f"req/s {f['requests_per_second'][0]:,.0f} -> {f['requests_per_second'][1]:,.0f}"
            )
    lines.append("")
    lines.append(f"load average (1, 5, 15 min) before: {results.get('load_average_before')}, "
                 f"after: {results.get('load_average_after')}")  # fmt: skip
    lines.append("")
    lines.append("== start to ready (s), RSS after load (MB) ==")
    for name, facts in results["servers"].items():
        starts = "; ".join(f"{k}: {describe_start(v)}" for k, v in facts["starts"].items())
        lines.append(
            f"{name:9} {starts}; engine under load: {facts.get('engine')}; RSS {facts.get('rss_mb', 0):.0f} MB"
        )
    if results.get("mlserver_model_download_seconds") is not None:
        lines.append(
            f"          (MLServer reads a local file: the script fetched it from S3 in "
            f"{results['mlserver_model_download_seconds']:.2f} s before starting it)"
        )
    if results.get("outputs_max_abs_difference") is not None:
        lines.append(
            f"same row through every server: max |p - p_mlserver| = {results['outputs_max_abs_difference']:.3g}"
        )
    if results.get("batch_interference"):
        bi = results["batch_interference"]
        lines.append("")
        lines.append(
            f"== single rows beside large batches (concurrency 1; another client sends {bi['rows']}-row V2 "
            f"batches of {bi['body_bytes'] / 1e6:.1f} MB back to back) =="
        )
        lines.append(f"{'server':9} {'p50 alone':>10} {'p99 alone':>10} {'p50 w/ batches':>15} {'p99 w/ batches':>15}"
                     f" {'batches':>8}")  # fmt: skip
        for name, f in bi["servers"].items():
            lines.append(
                f"{name:9} {f['alone']['p50_ms']:10.2f} {f['alone']['p99_ms']:10.2f} "
                f"{f['with_batches']['p50_ms']:15.2f} {f['with_batches']['p99_ms']:15.2f} {f['batches_answered']:8d}"
            )
    if results.get("single_row"):
        lines.append("")
        lines.append("== single-row compute in-process (us per call, best of repeats) ==")
        lines.append(single_row.format_table(results["single_row"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run (default 2)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated connection counts (default 1,8,32)")
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds of the demo model (default 100)")
    parser.add_argument("--rows", type=int, default=200, help="distinct request rows to rotate over (default 200)")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "asyncio"), default="auto", help="default: wrk if installed"
    )
    parser.add_argument("--mlserver-venv", type=Path, default=servers.DEFAULT_MLSERVER_VENV)
    parser.add_argument("--skip-mlserver", action="store_true", help="benchmark our server only")
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=6000,
        help="step 5b: single-row p99 beside a client sending batches of this many rows (0 skips; default 6000)",
    )
    parser.add_argument("--skip-ours", action="store_true", help="benchmark MLServer only")
    parser.add_argument("--skip-single-row", action="store_true", help="skip the in-process engine timings")
    parser.add_argument(
        "--no-capi-row", action="store_true", help="skip our server with SERVING_COMPILE_TREES=0 (C API engine)"
    )
    parser.add_argument("--engine-timeout", type=float, default=120.0, help="wait this long for compiled trees")
    parser.add_argument("--no-shadow", action="store_true", help="skip ours-shadow (a challenger scored in shadow)")
    parser.add_argument(
        "--shadow-cost",
        action="store_true",
        help="only the shadow's cost: ours, ours-shadow and MLServer at concurrency 1,8 (no batches, no C API row)",
    )
    servers.add_output_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.shadow_cost:
        args.no_shadow, args.no_capi_row, args.batch_rows, args.skip_single_row = False, True, 0, True
        if args.concurrency == "1,8,32":
            args.concurrency = "1,8"
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    tool = loadgen.available_tool(args.loadgen)
    servers.bench_environment()

    work = Path(tempfile.mkdtemp(prefix="tradingmodel-bench-"))
    procs = servers.ProcessSet()
    started: list[Any] = []  # the local S3, stopped on the way out
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "loadgen": tool,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "concurrency": concurrencies,
        "servers": {},
        "load": [],
        "load_average_before": load_average(),
    }
    say(
        f"work folder {work}; load generator: {tool}"
        + ("" if tool == "wrk" else " (wrk not found: apt-get install -y wrk)")
    )

    def run() -> int:

        from devstack.demo_model import train_demo_model

        say(f"step 1/7: training the demo model ({args.rounds} rounds, 10 classes, 84 features)")
        model = train_demo_model(version=VERSION, rounds=args.rounds)
        model_text = model.files["lightgbm_model.txt"].decode()
        names = json.loads(model.files["feature_names.json"])
        s3_endpoint, digest = local_s3_with(model.files, started)
        say(f"  published s3://{BUCKET}/etfs/{TICKER}/archive/{VERSION}/ and production/ ({digest[:19]}…)")

        rows = request_rows(args.rows, len(names))
        v2_bodies = [v2_body(r) for r in rows]
        targets: list[tuple[str, str, servers.Server, list[bytes]]] = []
        challenger_files: dict[str, bytes] | None = None
        running: dict[str, servers.Server] = {}

        if not args.skip_ours:
            env_args = dict(
                s3_endpoint=s3_endpoint, bucket=BUCKET, ticker=TICKER, version=VERSION, digest=digest,
                cache_dir=work / "ours-cache",
            )  # fmt: skip
            say("step 2/7: our server, cold start (empty cache: model from S3, trees compiled by gcc)")
            cold, cold_facts = time_ours_start(procs, work, env_args, "ours-cold", args.engine_timeout)
            say(f"  {describe_start(cold_facts)}")
            procs.stop(cold)
            say("step 2/7: our server, warm start (model and compiled trees from the disk cache)")
            big_bodies = {"SERVING_MAX_BODY_BYTES": str(64 << 20)} if args.batch_rows else None  # for step 5b
            ours, warm_facts = time_ours_start(
                procs, work, env_args, "ours-warm", args.engine_timeout, extra=big_bodies
            )
            say(f"  {describe_start(warm_facts)}")
            results["servers"]["ours"] = {"starts": {"cold_from_s3": cold_facts, "warm_disk_cache": warm_facts}}
            running["ours"] = ours
            targets.append(("ours", V2_PATH, ours, v2_bodies))
            if not args.no_capi_row:
                say("step 2/7: our server with SERVING_COMPILE_TREES=0 (LightGBM's C API), for comparison")
                capi, capi_facts = time_ours_start(
                    procs, work, env_args, "ours-capi", 0.0, extra={"SERVING_COMPILE_TREES": "0"}
                )
                say(f"  {describe_start(capi_facts)}")
                results["servers"]["ours-capi"] = {"starts": {"warm_disk_cache": capi_facts}}
                running["ours-capi"] = capi
                targets.append(("ours-capi", V2_PATH, capi, v2_bodies))
            if not args.no_shadow:
                say(f"step 2/7: our server with a shadow challenger ({CHALLENGER}, another seed, from staging/)")
                challenger_files = train_demo_model(version=CHALLENGER, seed=11, rounds=args.rounds).files
                shadow_digest = publish(s3_endpoint, challenger_files, CHALLENGER, "staging")
                pin = {"MODEL_SHADOW_VERSION": CHALLENGER, "MODEL_SHADOW_DIGEST": shadow_digest}
                shadowed, shadow_facts = time_ours_start(
                    procs, work, env_args, "ours-shadow", args.engine_timeout, extra=pin
                )
                if not wait_shadow_compiled(shadowed, args.engine_timeout):
                    raise RuntimeError("ours-shadow: the challenger never ran on compiled trees")
                say(f"  {describe_start(shadow_facts)}; challenger loaded and compiled")
                results["servers"]["ours-shadow"] = {"starts": {"warm_disk_cache": shadow_facts}}
                running["ours-shadow"] = shadowed
                targets.append(("ours-shadow", V2_PATH, shadowed, v2_bodies))

        if not args.skip_mlserver:
            say("step 3/7: MLServer 1.7.1 (parallel_workers 0, OMP_NUM_THREADS=1)")
            exe = servers.ensure_mlserver_venv(args.mlserver_venv, say)
            model_file, fetched = download_production(s3_endpoint, "lightgbm_model.txt")
            results["mlserver_model_download_seconds"] = round(fetched, 3)
            first, first_facts = time_mlserver_start(procs, work, exe, model_file, "mlserver-first")
            say(f"  first start ready in {first_facts['ready_seconds']} s")
            procs.stop(first)
            mlserver, second_facts = time_mlserver_start(procs, work, exe, model_file, "mlserver")
            say(f"  second start ready in {second_facts['ready_seconds']} s")
            results["servers"]["mlserver"] = {"starts": {"first": first_facts, "second": second_facts}}
            running["mlserver"] = mlserver
            targets.append(("mlserver", V2_PATH, mlserver, v2_bodies))

        say("step 4/7: the same row through each server")
        answers = {}
        for name, path, server, bodies in targets:
            status, body = servers.http_post(server.port, path, bodies[0])
            if status != 200:
                raise RuntimeError(f"{name} answered {status} to a V2 infer request: {body[:300]!r}")
            answers[name] = np.array(first_probabilities(body))
        if "mlserver" in answers and len(answers) > 1:
            results["outputs_max_abs_difference"] = max(
                float(np.abs(answers[name] - answers["mlserver"]).max()) for name in answers
            )
        if "ours" in running and not args.shadow_cost:  # --shadow-cost: ours serves what ours-shadow serves
            status, body = servers.http_post(running["ours"].port, V1_PATH, v1_body(rows[0], names))
            if status != 200:
                raise RuntimeError(f"ours answered {status} to /v1/predict: {body[:300]!r}")
            targets.append(("ours", V1_PATH, running["ours"], [v1_body(r, names) for r in rows]))

        shadowing = "ours-shadow" in running and "ours" in running
        before = {name: shadow_metrics(running[name].port) for name in ("ours", "ours-shadow")} if shadowing else {}
        say(f"step 5/7: load, concurrency {concurrencies}")
        results["load"] = load_matrix(targets, concurrencies, tool, args.seconds, args.warmup)
        results["ratio_to_mlserver"] = ratios(results["load"])
        if shadowing:
            after = {name: shadow_metrics(running[name].port) for name in ("ours", "ours-shadow")}
            counters = {name: {k: after[name][k] - before[name][k] for k in after[name]} for name in after}
            results["shadow"] = shadow_cost(results["load"], counters, cpu_comparable=args.shadow_cost)

        if args.batch_rows:
            batch = v2_batch_body(request_rows(args.batch_rows, len(names), seed=7))
            results["batch_interference"] = {"rows": args.batch_rows, "body_bytes": len(batch), "servers": {}}
            for name in ("ours", "mlserver"):
                if name in running:
                    say(
                        f"step 5b/7: {name}: single-row p99 at concurrency 1, alone and beside a client sending "
                        f"{args.batch_rows}-row batches ({len(batch) / 1e6:.1f} MB)"
                    )
                    figures = batch_interference(running[name], tool, v2_bodies, batch, args.seconds)
                    results["batch_interference"]["servers"][name] = figures
                    say(
                        f"  p99 {figures['alone']['p99_ms']:.2f} ms alone, {figures['with_batches']['p99_ms']:.2f} ms "
                        f"with batches ({figures['batches_answered']} batches answered)"
                    )

        say("step 6/7: memory after load, stopping the servers")
        for name, server in running.items():
            results["servers"][name]["rss_mb"] = round(server.rss_mb(), 1)
            results["servers"][name]["engine"] = (
                "lightgbm.Booster.predict" if name == "mlserver" else servers.engine_of(server.port, TICKER)
            )
        procs.stop_all()

        if not args.skip_single_row:
            say("step 7/7: single-row compute per engine, in-process")
            results["single_row"] = single_row.measure(model_text, calls=2000, repeats=7, progress=say)
        if challenger_files is not None:
            say("step 7/7: what the shadow adds to one single-row score() call, in-process")
            results.setdefault("shadow", {})["in_process"] = shadow_row.measure(model.files, challenger_files)

        results["load_average_after"] = load_average()
        return servers.print_results(format_report(results), results, args.json, say)

    return servers.run_guarded(run, procs, started, work, args.keep, say)


if __name__ == "__main__":
    sys.exit(main())
