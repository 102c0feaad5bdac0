"""Closed-loop load of large requests (batches) over HTTP or gRPC, from threads of this process.

`concurrency` clients, each with its own keep-alive connection (HTTP) or channel (gRPC), send the
same prebuilt request bytes again as soon as the previous answer arrived, for a fixed time. At a
few hundred requests a second of 100 KB-10 MB each, the client's own cost (a send, a receive,
no parsing: the answer is checked for its status only) is a small fraction of the server's.
Both servers get identical bytes: the gRPC request is one serialized ModelInferRequest sent
through a method stub without serializers.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

HOST = "127.0.0.1"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class BatchResult:
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str
    server_cpu_seconds: float  # CPU time the server's processes used in the measured window (user + system)


Send = Callable[[], None]  # one request and its answer; raises on a failed request


def http_sender(port: int, path: str, body: bytes, headers: dict[str, str]) -> Callable[[], Send]:
    """A factory of senders, one keep-alive connection each."""

    def make() -> Send:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)

        def send() -> None:
            conn.request("POST", path, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")

        return send

    return make


def grpc_sender(port: int, request: bytes) -> Callable[[], Send]:
    import grpc

    def make() -> Send:
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        channel = grpc.insecure_channel(f"{HOST}:{port}", options=options)
        call = channel.unary_unary(GRPC_INFER)  # bytes in, bytes out: no (de)serialization here

        def send() -> None:
            call(request, timeout=120)

        return send

    return make


def run(
    make_sender: Callable[[], Send], concurrency: int, seconds: float, warmup: float, cpu_clock: Callable[[], float]
) -> BatchResult:
    """cpu_clock: the server's CPU seconds so far; rows per CPU-second is what one core would do alone,
    a figure that other work on a shared machine disturbs much less than the wall-clock rate."""
    senders = [make_sender() for _ in range(concurrency)]
    for send in senders:  # connect, and the first request out of the way
        send()
    latencies: list[list[float]] = [[] for _ in senders]
    errors = [0] * concurrency
    first_error = [""]
    measuring = threading.Event()
    stop = threading.Event()

    def worker(index: int) -> None:
        send, mine = senders[index], latencies[index]
        while not stop.is_set():
            started = time.perf_counter()
            try:
                send()
            except Exception as exc:
                errors[index] += 1
                first_error[0] = first_error[0] or str(exc)[:300]
                continue
            if measuring.is_set():
                mine.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    cpu_before = cpu_clock()
    measuring.set()
    began = time.perf_counter()
    time.sleep(seconds)
    measuring.clear()
    elapsed = time.perf_counter() - began
    cpu_used = cpu_clock() - cpu_before
    stop.set()
    for thread in threads:
        thread.join(180)
    done = sorted(x for mine in latencies for x in mine)
    return BatchResult(
        requests=len(done),
        seconds=round(elapsed, 3),
        requests_per_second=len(done) / elapsed,
        p50_ms=_percentile(done, 0.50) * 1e3,
        p99_ms=_percentile(done, 0.99) * 1e3,
        errors=sum(errors),
        first_error=first_error[0],
        server_cpu_seconds=cpu_used,
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (from /proc; gone processes count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
