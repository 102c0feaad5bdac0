"""Closed-loop HTTP load: `concurrency` keep-alive connections, each sending its next request
as soon as the previous answer arrived, for a fixed time.

Two generators, the same measurement:
  wrk      (preferred; Debian package `wrk`): C, one event-loop thread, requests
           prebuilt in Lua; costs a few microseconds per request, so it is never the
           bottleneck at the few thousand requests per second measured here.
  asyncio  (fallback when wrk is missing): raw sockets on uvloop when installed, run
           in its own process. It costs ~30-60 us of CPU per request, which on a
           2-core machine competes with the server: figures are lower bounds.

Both rotate through the same list of request bodies, count non-2xx answers and
socket errors, and report requests/s and latency percentiles. Run as a script
it prints one JSON result (this is how the benchmark calls the asyncio client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass
class LoadResult:
    tool: str
    concurrency: int
    seconds: float
    requests: int
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # non-2xx answers + socket errors (connect, read, write, timeout)
    error_detail: dict[str, int]


def available_tool(prefer: str = "auto") -> str:
    if prefer == "asyncio":
        return "asyncio"
    if shutil.which("wrk"):
        return "wrk"
    if prefer == "wrk":
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (or use --loadgen asyncio)")
    return "asyncio"


def run_load(tool: str, port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        if tool == "wrk":
            return _run_wrk(Path(tmp), port, path, bodies, concurrency, seconds)
        bodies_file = Path(tmp) / "bodies.json"
        bodies_file.write_text(json.dumps([b.decode() for b in bodies]))
        argv = [sys.executable, __file__, "--port", str(port), "--path", path, "--bodies", str(bodies_file)]
        argv += ["--concurrency", str(concurrency), "--seconds", str(seconds)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
        if done.returncode != 0:
            raise RuntimeError(f"asyncio load generator failed: {done.stderr[-2000:]}")
        return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- wrk

_WRK_SCRIPT = """
local bodies = {%(bodies)s}
local requests = {}
local n = 0
init = function(args)
  for k, body in ipairs(bodies) do
    requests[k] = wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, body)
  end
  n = math.random(#requests)
end
request = function()
  n = n %% #requests + 1
  return requests[n]
end
done = function(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'WRKRESULT {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,' ..
    '"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def _lua_long_string(text: str) -> str:
    level = "="
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def _run_wrk(tmp: Path, port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float) -> LoadResult:
    script = tmp / "load.lua"
    script.write_text(_WRK_SCRIPT % {"bodies": ",\n".join(_lua_long_string(b.decode()) for b in bodies), "path": path})
    argv = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(script), f"http://{HOST}:{port}{path}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"^WRKRESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
    r = json.loads(match.group(1))
    # wrk's `status` counts answers >= 400; the socket errors are counted apart.
    detail = {k: int(r[k]) for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    duration = r["duration_us"] / 1e6
    return LoadResult(
        tool="wrk",
        concurrency=concurrency,
        seconds=round(duration, 3),
        requests=int(r["requests"]),
        requests_per_second=round(r["requests"] / duration, 1),
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        errors=sum(detail.values()),
        error_detail=detail,
    )


# ----------------------------------------------------------------------------- asyncio fallback


async def _one_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        await reader.readexactly(int(lower[at + 15 : lower.index(b"\r\n", at)]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _client(
    port: int, requests: list[bytes], start: int, deadline: float, latencies: list[int], errors: dict[str, int]
) -> None:
    index = start
    writer = None
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            began = time.perf_counter_ns()
            writer.write(requests[index])
            status = await asyncio.wait_for(_one_response(reader), timeout=10)
            latencies.append(time.perf_counter_ns() - began)
            if not 200 <= status < 300:
                errors["status"] = errors.get("status", 0) + 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "read"
            errors[kind] = errors.get(kind, 0) + 1
            if writer is not None:
                writer.close()
            writer = None
        index = (index + 1) % len(requests)
    if writer is not None:
        writer.close()


async def _asyncio_load(port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float) -> LoadResult:
    requests = [
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(b)}\r\n\r\n".encode()
        + b
        for b in bodies
    ]
    latencies: list[int] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_client(port, requests, i * 7 % len(requests), deadline, latencies, errors) for i in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] / 1e6 if latencies else float("nan")

    count = len(latencies)
    return LoadResult(
        tool="asyncio",
        concurrency=concurrency,
        seconds=round(elapsed, 3),
        requests=count,
        requests_per_second=round(count / elapsed, 1),
        p50_ms=round(pct(50), 3),
        p90_ms=round(pct(90), 3),
        p99_ms=round(pct(99), 3),
        errors=sum(errors.values()),
        error_detail=errors,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="asyncio closed-loop load (prints one JSON result)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    bodies = [b.encode() for b in json.loads(args.bodies.read_text())]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_asyncio_load(args.port, args.path, bodies, args.concurrency, args.seconds))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
