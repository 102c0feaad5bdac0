"""A fault-injecting TCP proxy for tests: put it in front of a server (the stack's moto S3) and
take the server away, slow it down, or give it back while clients keep the proxy's address.

Modes, switched at runtime from any thread:

- ``forward()``      pass bytes both ways (with ``delay`` seconds before each chunk sent upstream:
                     every request pays it, so a promotion of ~15 requests takes ~15 × delay);
- ``refuse()``       the server is gone: each new connection is reset at once (ECONNRESET), and
                     every open connection is cut;
- ``blackhole()``    the server hangs: connections are accepted and never answered, open ones
                     are cut (clients see their read timeout).

Plain threads and sockets (no event loop), so a test drives it synchronously. It only forwards
to the one upstream it was given and ends only the sockets it opened.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

FORWARD, REFUSE, BLACKHOLE = "forward", "refuse", "blackhole"
_CHUNK = 65536


@dataclass
class ProxyStats:
    accepted: int = 0  # connections accepted and forwarded
    refused: int = 0  # connections reset at accept (REFUSE)
    held: int = 0  # connections accepted and never answered (BLACKHOLE)
    cut: int = 0  # open connections cut by a switch away from FORWARD
    chunks_up: int = 0  # chunks sent to the upstream
    modes: list[tuple[float, str, float]] = field(default_factory=list)  # (monotonic time, mode, delay)


class FaultProxy:
    def __init__(self, upstream: str, *, host: str = "127.0.0.1") -> None:
        """`upstream` is "host:port" or an http URL of the server to stand in front of."""
        target = upstream.split("://", 1)[-1].rstrip("/")
        up_host, _, up_port = target.rpartition(":")
        self.upstream = (up_host, int(up_port))
        self.host = host
        self.stats = ProxyStats()
        self._mode = FORWARD
        self._delay = 0.0
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket | None]] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        self._cut_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._listener is not None, "the proxy is not started"
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def forward(self, delay: float = 0.0) -> None:
        self._switch(FORWARD, delay)

    def refuse(self) -> None:
        self._switch(REFUSE, 0.0)

    def blackhole(self) -> None:
        self._switch(BLACKHOLE, 0.0)

    @contextlib.contextmanager
    def slowed(self, delay: float) -> Iterator[None]:
        """Forward with `delay` inside the block, then at full speed again."""
        self.forward(delay)
        try:
            yield
        finally:
            self.forward(0.0)

    def _switch(self, mode: str, delay: float) -> None:
        with self._lock:
            self._mode, self._delay = mode, delay
            self.stats.modes.append((time.monotonic(), mode, delay))
        if mode != FORWARD:
            self._cut_all()

    def _cut_all(self) -> None:
        with self._lock:
            pairs, self._pairs = set(self._pairs), set()
            self.stats.cut += len(pairs)
        for pair in pairs:
            for sock in pair:
                if sock is not None:
                    _reset(sock)

    # -- plumbing -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            mode = self._mode
            if mode == REFUSE:
                self.stats.refused += 1
                _reset(client)
            elif mode == BLACKHOLE:
                self.stats.held += 1
                with self._lock:
                    self._pairs.add((client, None))
                threading.Thread(target=_swallow, args=(client,), daemon=True).start()
            else:
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        pair = (client, upstream)
        with self._lock:
            if self._mode != FORWARD:  # switched while we connected
                _reset(client)
                _reset(upstream)
                return
            self._pairs.add(pair)
            self.stats.accepted += 1
        threading.Thread(target=self._pump, args=(client, upstream, pair, True), daemon=True).start()
        self._pump(upstream, client, pair, False)

    def _pump(
        self, source: socket.socket, target: socket.socket, pair: tuple[socket.socket, socket.socket | None], up: bool
    ) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if up:
                    delay = self._delay
                    if delay:
                        time.sleep(delay)
                    self.stats.chunks_up += 1
                if self._mode != FORWARD or pair not in self._pairs:
                    break  # cut: the bytes held back are lost, as on a dead link
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            for sock in pair:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()


def _swallow(sock: socket.socket) -> None:
    """Read and drop whatever the client sends until it or the proxy gives up."""
    with contextlib.suppress(OSError):
        while sock.recv(_CHUNK):
            pass
    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the peer sees "connection reset", not a clean end. The
    read side is shut first so a pump thread blocked in recv() on this socket wakes up."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
