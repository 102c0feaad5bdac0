"""A stand-in for the serving process: answers the probe paths and shows its environment.

The local kubelet runs it instead of ``python -m model_serving`` in these tests. Knobs (env):
STANDIN_EXIT_CODE  exit at once with this code (a crashing container);
STANDIN_NEVER_READY  answer 503 on /v2/health/ready forever (a version that never loads).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/v2/health/live":
            self._send(200, {"live": True})
        elif self.path == "/v2/health/ready":
            never = os.environ.get("STANDIN_NEVER_READY") == "1"
            self._send(503 if never else 200, {"ready": not never})
        elif self.path == "/env":
            self._send(200, dict(os.environ))
        else:
            self._send(404, {"error": "not found"})

    def _send(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)


def main() -> None:
    if "STANDIN_EXIT_CODE" in os.environ:
        print("stand-in: exiting as asked", flush=True)
        sys.exit(int(os.environ["STANDIN_EXIT_CODE"]))
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"stand-in: serving on {server.server_address[1]} as {os.environ.get('HOSTNAME')}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        print("stand-in: stopped", flush=True)


if __name__ == "__main__":
    main()
