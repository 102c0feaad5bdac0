"""The benchmark's load generators against a real keep-alive HTTP server: counts and errors."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

# The benchmark scripts are not a package: import the module next to them.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "serving" / "benchmarks"))

import loadgen


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as both servers under test
    seen: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(body)
        status = 200 if b"good" in body else 503
        reply = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


TOOLS = [
    "asyncio",
    pytest.param("wrk", marks=pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")),
]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_body_is_sent_and_failures_are_counted(tool: str, port: int) -> None:
    _Handler.seen.clear()
    bodies = [b'{"row": "good-1"}', b'{"row": "bad"}', b'{"row": "good-2"}', b'{"row": "good-3"}']
    result = loadgen.run_load(tool, port, "/v2/models/X/infer", bodies, concurrency=2, seconds=1.0)
    assert result.tool == tool and result.concurrency == 2
    assert result.requests > 20
    assert set(_Handler.seen) == set(bodies), "the generator rotates over every body"
    bad_share = _Handler.seen.count(bodies[1]) / len(_Handler.seen)
    assert 0.15 < bad_share < 0.35
    # Every "bad" answer is a 503: counted as errors, with the socket errors (none here) apart.
    assert result.error_detail.get("status", 0) == result.errors > 0
    assert abs(result.errors - result.requests * bad_share) <= max(3, 0.05 * result.requests)
    assert 0 < result.p50_ms <= result.p99_ms


def test_a_refused_connection_is_an_error_not_a_hang() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as closed:
        dead_port = closed.server_address[1]
    result = loadgen.run_load("asyncio", dead_port, "/x", [b"{}"], concurrency=1, seconds=0.3)
    assert result.requests == 0 and result.errors > 0
