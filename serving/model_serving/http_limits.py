"""Bounded HTTP/1.1 connections: size and time limits in front of uvicorn's httptools protocol, and draining.

uvicorn's httptools protocol applies no limit to the request line or the headers (one 300 MiB
header grew the process by 570 MB) and no time limit on receiving headers or a body (slowloris
connections and stalled bodies stayed open, holding memory, for as long as the client wished).
`LimitedHttpToolsProtocol` keeps httptools' speed (measured against uvicorn's h11 protocol, whose
one size limit costs far more throughput: serving/benchmarks/README.md) and adds:

  request line over `max_request_line_bytes`          414, connection closed
  headers over `max_header_bytes` (in total)          431, connection closed
  more than `max_header_count` headers                431, connection closed
  headers not complete `header_timeout` seconds
  after the first byte of a request (or after the
  connection opened)                                   408 (or closed if nothing was sent), closed
  body not complete `body_timeout` seconds after
  its headers                                          connection closed (the app sees a disconnect)
  an answer sent before the whole body arrived
  (e.g. 413 from the app)                              the rest is read and dropped (not kept), up to
                                                       64 MiB and within the body timeout, then closed

Counting happens per received chunk before httptools keeps any more of a partial header, so what a
connection can hold is bounded by the limit plus one read (256 KiB at most).

Draining (SIGTERM, see __main__): `DRAIN.start()` makes every response from then on carry
`Connection: close` (keep-alive clients reconnect, through the Service, to a pod that is not
stopping), including responses already in progress.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from model_serving import memory

SHUTDOWN_BODY_SECONDS = 1.0
DISCARD_MAX_BYTES = 64 << 20  # the rest of a body already answered (413) that is read and dropped
BIG_BODY_BYTES = 256 << 10  # a connection that received this much body asks glibc to trim when it closes

__all__ = ["DRAIN", "Drain", "LimitedHttpToolsProtocol", "Limits", "limited_protocol"]


@dataclass(frozen=True)
class Limits:
    max_request_line_bytes: int = 8192
    max_header_bytes: int = 32768
    max_header_count: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 15.0


class Drain:
    """Process-wide draining state: set once on SIGTERM."""

    def __init__(self) -> None:
        self.active = False
        self._connections: set[LimitedHttpToolsProtocol] = set()

    def start(self) -> None:
        self.active = True
        for conn in list(self._connections):
            conn.drain()


DRAIN = Drain()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits] = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._began = False  # a request's line and headers are being received
        self._head_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind: str | None = None
        self._body_incomplete = False
        self._body_bytes = 0
        self._discarded = 0

    # -- connection --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        DRAIN._connections.add(self)
        self._arm("idle")

    def connection_lost(self, exc: Exception | None) -> None:
        DRAIN._connections.discard(self)
        self._disarm()
        super().connection_lost(exc)
        if self._body_bytes >= BIG_BODY_BYTES:
            memory.trim_soon(self.loop)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None or self.transport.is_closing():
            return
        super().data_received(data)
        if self._refusal is None and self._began:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes + self.limits.max_request_line_bytes:
                self._refusal = (431, "request headers too large")
        if self._refusal is not None:
            self._refuse(*self._refusal)
            return
        # The usual request arrives whole in one read: no timer is touched for it.
        want = "head" if self._began else "body" if self._body_incomplete else None
        if want != self._timer_kind and not (want is None and self._timer_kind == "idle"):
            self._arm(want)

    def drain(self) -> None:
        """From now on: `Connection: close` on every response, including one being answered."""
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.keep_alive = False

    def shutdown(self) -> None:
        """uvicorn's stop (after the drain): a body still arriving gets one more second, then the
        connection closes (its request was stalled through the whole drain)."""
        if self._body_incomplete and not self.transport.is_closing():
            self._disarm()
            self._timer = self.loop.call_later(SHUTDOWN_BODY_SECONDS, self._timed_out)
            self._timer_kind = "body"
        super().shutdown()

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began = True
        self._header_bytes = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        if self._refusal is not None:
            return
        if len(self.url) + len(url) > self.limits.max_request_line_bytes:
            self._refusal = (414, "request line too long")
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is not None:
            return
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_header_count:
            self._refusal = (431, f"more than {self.limits.max_header_count} request headers")
            return
        if self._header_bytes > self.limits.max_header_bytes:
            self._refusal = (431, "request headers too large")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return
        self._began = False
        self._head_bytes = 0
        self._body_incomplete = True
        super().on_headers_complete()
        if DRAIN.active and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self._refusal is not None:
            return
        if self.cycle is not None and self.cycle.response_complete:
            self._discarded += len(body)
            if self._discarded > DISCARD_MAX_BYTES and not self.transport.is_closing():
                self.transport.close()
            return
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None:
            return
        self._body_incomplete = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._body_incomplete:
            # Answered before the whole body arrived (413, or 404 before reading it): the rest is read
            # and dropped as it comes, so the client, which may still be sending, gets the answer
            # rather than a reset; up to DISCARD_MAX_BYTES, within the body timeout, then closed.
            self._discarded = 0
        super().on_response_complete()

    # -- limits ------------------------------------------------------------------------------------

    def _arm(self, kind: str | None) -> None:
        self._disarm()
        if kind is not None:
            seconds = self.limits.body_timeout if kind == "body" else self.limits.header_timeout
            self._timer = self.loop.call_later(seconds, self._timed_out)
            self._timer_kind = kind

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = None

    def _timed_out(self) -> None:
        kind, self._timer, self._timer_kind = self._timer_kind, None, None
        if self.transport.is_closing():
            return
        if kind == "head":
            self._refuse(408, "request headers not received in time")
        elif kind == "idle" and self.cycle is None:
            self.transport.close()  # a connection that asked nothing
        elif kind == "body" and self._body_incomplete:
            self.transport.close()  # the app reading the body sees a disconnect

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        self._body_bytes += self._head_bytes  # a large head was buffered: trim after it goes
        if self.transport.is_closing():
            return
        body = ('{"error": "' + message + '"}').encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()
        self.headers = []
        self.url = b""


def limited_protocol(limits: Limits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
