"""Batches: our server side by side with MLServer 1.7.1 (REST and gRPC), in one run, on one core.

    ./dev bench batch [--seconds 5] [--rounds 3] [--sizes 100,1000,5000] [--json out.json]
    python serving/benchmarks/batch_vs_mlserver.py [same options]

What it does, printing each step:
  1. trains the demo model (100 rounds, 10 classes, 84 features), publishes it to a local S3
     (moto server) and promotes it to production/, as serve_vs_mlserver.py does;
  2. starts ours (`python -m model_serving`, pod contract, compiled trees; waits until they serve)
     and MLServer (`parallel_workers: 0`, OMP_NUM_THREADS=1, its REST and gRPC ports), each pinned
     to the server CPU with taskset; this process (the load) runs on the other CPU;
  3. per batch size, builds the same request once per encoding, identical bytes for both servers:
       json    POST /v2/models/SPY/infer, one FP64 input [n, 84], values written in full
               (what json.dumps writes for float64, as tritonclient's JSON requests do)
       binary  the same with the binary tensor extension: a JSON header, Inference-Header-Content-Length,
               then the n x 84 float64 values; every output asked for in binary
       grpc    inference.GRPCInferenceService/ModelInfer with raw_input_contents
     checks that every server answers each with the same probabilities (MLServer's REST refuses the
     binary extension: reported, not measured);
  4. closed-loop load (batch_load.py): --concurrency clients send the request back to back for
     --seconds after --warmup; every (size, encoding, server) cell is run in turn, and the whole
     sweep --rounds times, so drift on a shared machine hits every cell alike; the median round is
     reported;
  5. times the compiled trees alone in this process on the same rows (the floor: what scoring
     costs without any protocol), and prints the table: rows/s, requests/s, p50/p99 latency, ours
     against MLServer's best encoding, ours against the floor, and the load average.

Everything binds to 127.0.0.1; every process it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the checkout: devstack (the demo model)

import batch_load
import servers
from serve_vs_mlserver import BUCKET, TICKER, V2_PATH, VERSION, download_production, local_s3_with, say

ENCODINGS = ("json", "binary", "grpc")
SERVER_NAMES = ("ours", "mlserver")


# ----------------------------------------------------------------------------- requests


def json_body(rows: np.ndarray) -> bytes:
    doc = {
        "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]
    }
    return json.dumps(doc).encode()


def binary_body(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(rows, dtype="<f8").tobytes()
    head = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(head).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(text))}
    return text + raw, headers


def grpc_request(rows: np.ndarray) -> bytes:
    from model_serving.api.v2_grpc import open_inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=TICKER)
    request.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    request.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f8").tobytes())
    return request.SerializeToString()


def probabilities_of(encoding: str, reply: bytes, json_length: int | None, n: int) -> np.ndarray:
    """The (n, 10) probabilities in an answer of either server, whatever its encoding."""
    if encoding == "grpc":
        from model_serving.api.v2_grpc import open_inference_pb2 as pb

        response = pb.ModelInferResponse.FromString(reply)
        for index, output in enumerate(response.outputs):
            if output.datatype == "FP64":
                if response.raw_output_contents:
                    return np.frombuffer(response.raw_output_contents[index], dtype="<f8").reshape(n, -1)
                return np.array(output.contents.fp64_contents).reshape(n, -1)
        raise ValueError("no FP64 output")
    doc = json.loads(reply if json_length is None else reply[:json_length])
    offset = json_length or 0
    for output in doc["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if output["datatype"] == "FP64":
            if size is not None:
                return np.frombuffer(reply[offset : offset + size], dtype="<f8").reshape(n, -1)
            return np.array(output["data"], dtype=np.float64).reshape(n, -1)
        offset += size or 0
    raise ValueError("no FP64 output")


# ----------------------------------------------------------------------------- one request, once


def ask_once(port: int, grpc_port: int, encoding: str, request: Any) -> tuple[int, bytes, int | None]:
    """(status: 200 or the failure's code, body, JSON part length) of one request."""
    if encoding == "grpc":
        import grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", -1)])
        try:
            return 200, channel.unary_unary(batch_load.GRPC_INFER)(request, timeout=120), None
        except grpc.RpcError as exc:
            return exc.code().value[0], str(exc.details()).encode(), None
        finally:
            channel.close()
    import http.client

    body, headers = request
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", V2_PATH, body=body, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        length = reply.getheader("Inference-Header-Content-Length")
        return reply.status, data, int(length) if length else None
    finally:
        conn.close()


def sender(port: int, grpc_port: int, encoding: str, request: Any) -> Any:
    if encoding == "grpc":
        return batch_load.grpc_sender(grpc_port, request)
    body, headers = request
    return batch_load.http_sender(port, V2_PATH, body, headers)


# ----------------------------------------------------------------------------- the floor


def compiled_floor(model_text: str, sizes: list[int], n_features: int, cache: Path) -> dict[int, float]:
    """Rows per CPU-second of the compiled trees alone (predict_proba on the benchmark's rows, this
    thread's CPU time, best of 15): scoring without any protocol."""
    from model_serving.engines.compiled_trees import compile_trees

    predictor = compile_trees(model_text, cache)
    if predictor is None:
        return {}
    floor = {}
    for n in sizes:
        rows = request_rows(n, n_features)
        best = float("inf")
        for _ in range(15):
            started = time.thread_time()
            predictor.predict_proba(rows)
            best = min(best, time.thread_time() - started)
        floor[n] = n / best
    return floor


def _per_cpu(runs: list[batch_load.BatchResult], n: int) -> float:
    """Rows per CPU-second of the server over every round (its CPU time, not the wall clock)."""
    cpu = sum(r.server_cpu_seconds for r in runs)
    return sum(r.requests for r in runs) * n / cpu if cpu > 0 else float("nan")


def request_rows(n: int, n_features: int) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, n_features))


# ----------------------------------------------------------------------------- report


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def format_report(results: dict[str, Any]) -> str:
    lines = [
        "",
        f"== batches, closed loop: {results['concurrency']} clients, {results['seconds']:g} s per cell, "
        f"median of {results['rounds']} interleaved rounds; servers on CPU {results['server_cpu']}, "
        f"load on CPU {results['load_cpu']} ==",
        f"load average at start {results['load_average']['start']}, at end {results['load_average']['end']} "
        f"({os.cpu_count()} CPUs). rows/s: wall clock; rows/CPU-s: rows per second of the server's own CPU "
        "time (its process tree), what one core would do alone",
        f"{'rows':>5} {'encoding':8} {'server':9} {'rows/s':>10} {'rows/CPU-s':>11} {'CPU ms/req':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6}",
    ]
    for cell in results["cells"]:
        head = f"{cell['rows']:5d} {cell['encoding']:8} {cell['server']:9}"
        if cell.get("refused"):
            lines.append(f"{head} refused: {cell['refused'][:80]}")
            continue
        lines.append(
            f"{head} {cell['rows_per_second']:10,.0f} {cell['rows_per_cpu_second']:11,.0f} "
            f"{cell['cpu_ms_per_request']:10.2f} {cell['p50_ms']:8.2f} {cell['p99_ms']:8.2f} {cell['errors']:6d}"
        )
    lines.append("")
    for n, summary in results["summary"].items():
        wall, cpu = summary["rows_per_second"], summary["rows_per_cpu_second"]
        line = (
            f"{n} rows: ours best {wall['ours'][0]:,.0f} rows/s ({wall['ours'][1]}), MLServer best "
            f"{wall['mlserver'][0]:,.0f} ({wall['mlserver'][1]}): {summary['ratio']:.1f}x; per CPU-second "
            f"{cpu['ours'][0]:,.0f} ({cpu['ours'][1]}) vs {cpu['mlserver'][0]:,.0f} ({cpu['mlserver'][1]}): "
            f"{summary['cpu_ratio']:.1f}x"
        )
        if "compiled_trees_rows_per_second" in summary:
            line += (
                f"; compiled trees alone {summary['compiled_trees_rows_per_second']:,.0f} rows/s, "
                f"ours per CPU-s / that {summary['ours_cpu_of_floor']:.2f}"
            )
        lines.append(line)
    if results.get("max_abs_difference") is not None:
        lines.append(
            f"same rows through every server and encoding: max |p - p_first| = {results['max_abs_difference']:.3g}"
        )
    return "\n".join(lines)


def summarize(cells: list[dict[str, Any]], floor: dict[int, float]) -> dict[str, dict[str, Any]]:
    """Per size: each server's best encoding by wall-clock rows/s and by rows per CPU-second, the
    ratios ours / MLServer, and ours (per CPU-second) against the compiled trees alone."""
    summary: dict[str, dict[str, Any]] = {}
    for n in sorted({c["rows"] for c in cells}):
        entry: dict[str, Any] = {}
        for metric in ("rows_per_second", "rows_per_cpu_second"):
            best: dict[str, tuple[float, str]] = {name: (0.0, "-") for name in SERVER_NAMES}
            for cell in cells:
                measured = cell["rows"] == n and not cell.get("refused")
                if measured and cell[metric] > best[cell["server"]][0]:
                    best[cell["server"]] = (cell[metric], cell["encoding"])
            entry[metric] = best
        wall, cpu = entry["rows_per_second"], entry["rows_per_cpu_second"]
        entry["ratio"] = wall["ours"][0] / wall["mlserver"][0] if wall["mlserver"][0] else float("nan")
        entry["cpu_ratio"] = cpu["ours"][0] / cpu["mlserver"][0] if cpu["mlserver"][0] else float("nan")
        if n in floor:
            entry["compiled_trees_rows_per_second"] = floor[n]
            entry["ours_cpu_of_floor"] = cpu["ours"][0] / floor[n]
        summary[str(n)] = entry
    return summary


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000", help="rows per request (default 100,1000,5000)")
    parser.add_argument("--encodings", default=",".join(ENCODINGS), help="json,binary,grpc (default all)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell and round (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each cell (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="clients sending back to back (default 2)")
    parser.add_argument("--rounds-of-trees", dest="tree_rounds", type=int, default=100, help="demo model rounds")
    parser.add_argument("--server-cpu", default="0", help="CPU list for the servers (taskset; default 0)")
    parser.add_argument("--load-cpu", default="1", help="CPU list for this process, the load (default 1)")
    parser.add_argument("--mlserver-venv", type=Path, default=servers.DEFAULT_MLSERVER_VENV)
    parser.add_argument("--skip-mlserver", action="store_true", help="measure our server only")
    servers.add_output_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    encodings = [e for e in args.encodings.split(",") if e.strip()]
    servers.bench_environment()
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin the servers and the load to their own CPUs")
    os.sched_setaffinity(0, {int(c) for c in args.load_cpu.split(",")})

    work = Path(tempfile.mkdtemp(prefix="tradingmodel-batch-bench-"))
    procs = servers.ProcessSet()
    started: list[Any] = []  # the local S3, stopped on the way out
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "server_cpu": args.server_cpu,
        "load_cpu": args.load_cpu,
        "load_average": {"start": load_average()},
        "cells": [],
    }
    say(f"work folder {work}; load average {results['load_average']['start']}")

    def run() -> int:

        from devstack.demo_model import train_demo_model

        say(f"step 1/5: training the demo model ({args.tree_rounds} rounds, 10 classes, 84 features)")
        model = train_demo_model(version=VERSION, rounds=args.tree_rounds)
        names = json.loads(model.files["feature_names.json"])
        s3_endpoint, digest = local_s3_with(model.files, started)

        say(f"step 2/5: our server (compiled trees) on CPU {args.server_cpu}")
        ports: dict[str, tuple[int, int]] = {}
        grpc_port = servers.free_port()
        port = servers.free_port()
        env = servers.ours_env(
            s3_endpoint=s3_endpoint, bucket=BUCKET, ticker=TICKER, version=VERSION, digest=digest,
            cache_dir=work / "ours-cache", port=port, extra={"GRPC_PORT": str(grpc_port)},
        )  # fmt: skip
        ours = procs.start(
            "ours", [sys.executable, "-m", "model_serving"], env, port, work / "ours.log", args.server_cpu
        )
        ours.wait_ready(("/v2/health/ready",), timeout=180)
        engine, _ = servers.wait_engine(ours, TICKER, "compiled", 180)
        say(f"  ready; engine {engine}")
        ports["ours"] = (port, grpc_port)
        running = {"ours": ours}
        if not args.skip_mlserver:
            say(f"step 2/5: MLServer 1.7.1 (parallel_workers 0, OMP_NUM_THREADS=1) on CPU {args.server_cpu}")
            exe = servers.ensure_mlserver_venv(args.mlserver_venv, say)
            model_file, _ = download_production(s3_endpoint, "lightgbm_model.txt")
            port = servers.free_port()
            settings = servers.write_mlserver_repo(work / "mlserver", TICKER, VERSION, model_file, port)
            mlserver = procs.start(
                "mlserver", [str(exe), "start", str(work / "mlserver")], servers.mlserver_env(), port,
                work / "mlserver.log", args.server_cpu,
            )  # fmt: skip
            mlserver.wait_ready(("/v2/health/ready", f"/v2/models/{TICKER}/ready"), timeout=300)
            ports["mlserver"] = (port, int(settings["grpc_port"]))
            running["mlserver"] = mlserver
            say("  ready")

        say("step 3/5: one request of each size and encoding through each server")
        requests: dict[tuple[int, str], Any] = {}
        refused: dict[tuple[int, str, str], str] = {}
        reference: dict[int, np.ndarray] = {}
        difference = 0.0
        for n in sizes:
            rows = request_rows(n, len(names))
            built = {
                "json": (json_body(rows), {"Content-Type": "application/json"}),
                "binary": binary_body(rows),
                "grpc": grpc_request(rows),
            }
            for encoding in encodings:
                requests[(n, encoding)] = built[encoding]
                for name, (http_port, rpc_port) in ports.items():
                    status, reply, json_length = ask_once(http_port, rpc_port, encoding, built[encoding])
                    if status != 200:
                        refused[(n, encoding, name)] = f"{status} {reply[:200].decode(errors='replace')}"
                        say(f"  {n} rows {encoding} {name}: refused ({refused[(n, encoding, name)][:100]})")
                        continue
                    got = probabilities_of(encoding, reply, json_length, n)
                    reference.setdefault(n, got)
                    difference = max(difference, float(np.abs(got - reference[n]).max()))
            say(f"  {n} rows: JSON {len(built['json'][0]) / 1e6:.2f} MB, binary {len(built['binary'][0]) / 1e6:.2f} MB")
        results["max_abs_difference"] = difference

        cells_per_round = [(n, e, s) for n in sizes for e in encodings for s in ports if (n, e, s) not in refused]
        say(f"step 4/5: load, {len(cells_per_round)} cells x {args.rounds} rounds ({args.seconds:g} s each)")
        rounds: dict[tuple[int, str, str], list[batch_load.BatchResult]] = {}
        for round_index in range(args.rounds):
            for n, encoding, name in cells_per_round:
                http_port, rpc_port = ports[name]
                if not procs.servers or not all(s.alive() for s in procs.servers):
                    raise RuntimeError("a server died; see its log")
                pid = running[name].process.pid
                result = batch_load.run(
                    sender(http_port, rpc_port, encoding, requests[(n, encoding)]),
                    args.concurrency,
                    args.seconds,
                    args.warmup,
                    lambda pid=pid: batch_load.cpu_seconds(servers.process_tree(pid)),
                )
                rounds.setdefault((n, encoding, name), []).append(result)
                say(
                    f"  round {round_index + 1}: {n:5d} rows {encoding:6} {name:8} "
                    f"{result.requests_per_second * n:10,.0f} rows/s "
                    f"({result.requests * n / max(result.server_cpu_seconds, 1e-9):,.0f} per CPU-s), "
                    f"p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, errors {result.errors}"
                    + (f" ({result.first_error[:80]})" if result.errors else "")
                )
        for n in sizes:
            for encoding in encodings:
                for name in ports:
                    key = (n, encoding, name)
                    if key in refused:
                        results["cells"].append(
                            {"rows": n, "encoding": encoding, "server": name, "refused": refused[key]}
                        )
                        continue
                    runs = sorted(rounds[key], key=lambda r: r.requests_per_second)
                    median = runs[len(runs) // 2]
                    results["cells"].append(
                        {
                            "rows": n,
                            "encoding": encoding,
                            "server": name,
                            "rows_per_second": median.requests_per_second * n,
                            "rows_per_cpu_second": _per_cpu(runs, n),
                            "cpu_ms_per_request": 1e3
                            * sum(r.server_cpu_seconds for r in runs)
                            / max(sum(r.requests for r in runs), 1),
                            "requests_per_second": median.requests_per_second,
                            "p50_ms": median.p50_ms,
                            "p99_ms": median.p99_ms,
                            "errors": sum(r.errors for r in runs),
                            "rounds_rows_per_second": [round(r.requests_per_second * n) for r in rounds[key]],
                            "spread": round(
                                statistics.pstdev([r.requests_per_second for r in runs]) / median.requests_per_second, 3
                            )
                            if median.requests_per_second
                            else None,
                        }
                    )
        procs.stop_all()

        say("step 5/5: the compiled trees alone, in this process, on the same rows")
        os.sched_setaffinity(0, {int(c) for c in args.server_cpu.split(",")})  # where the servers ran
        floor = compiled_floor(model.files["lightgbm_model.txt"].decode(), sizes, len(names), work / "floor-cache")
        results["compiled_trees_rows_per_second"] = {str(n): v for n, v in floor.items()}
        results["summary"] = summarize(results["cells"], floor)
        results["load_average"]["end"] = load_average()
        return servers.print_results(format_report(results), results, args.json, say)

    return servers.run_guarded(run, procs, started, work, args.keep, say)


if __name__ == "__main__":
    sys.exit(main())
