"""The HTTP API as a plain ASGI application (no framework: per-request overhead is the budget).

    POST /v1/predict, /predict                     the seeds' call: {"ticker", "features"} or {"ticker", "instances"}
    POST /v1/models/{name}:predict, GET /v1/models/{name}   KServe V1: {"instances": [...]} -> {"predictions"}
    GET  /v2                                       server metadata
    GET  /v2/health/live, /v2/health/ready         probes (ready: 200 only with the model loaded and verified)
    GET  /v2/models/{name}[/versions/{v}]          model metadata (features, classes, digest, engine)
    GET  /v2/models/{name}[/versions/{v}]/ready    model readiness
    POST /v2/models/{name}[/versions/{v}]/infer    Open Inference Protocol inference
    POST /v2/repository/index                      models loaded here
    POST /v2/repository/models/{name}/load         reload: re-resolve, verify, swap (the old one serves on failure)
    GET  /metrics                                  Prometheus text format

Errors are JSON {"error": "..."} with a 4xx status for anything the client can
fix; a 5xx means the server cannot answer now (e.g. 503 while the model loads).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from model_serving.api import content_encoding, payloads
from model_serving.api.offload import INLINE_BODY_BYTES, Offloader, parse_json
from model_serving.api.scoring import Scorer
from model_serving.api.service import ModelService
from model_serving.errors import (
    BadRequest,
    Forbidden,
    HttpError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from model_serving.http_limits import DRAIN
from model_serving.metrics import Metrics

if TYPE_CHECKING:
    from model_serving.api.grpc_server import GrpcServer

log = logging.getLogger(__name__)

SERVER_NAME = "tradingmodel-serving"
SERVER_VERSION = "0.1.0"
# Extensions of the V2 protocol served here ("binary_tensor_data": Triton's binary tensor extension).
EXTENSIONS = ["model_repository", "binary_tensor_data"]
INFERENCE_HEADER = b"inference-header-content-length"
# A reply with JSON outputs for more rows than this is written in the helper process (a few ms of
# orjson and tolist that single rows would otherwise wait behind).
INLINE_JSON_REPLY_ROWS = 2048

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Reply = tuple[int, bytes, bytes]  # status, body, content type
# A reply that carries headers of its own (the binary tensor extension's Inference-Header-Content-Length).
HeadedReply = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]
Handler = Callable[[Scope, Receive, list[str]], Awaitable[Reply | HeadedReply]]
Route = tuple[str, dict[str, Handler]]  # (endpoint label for metrics, handler by method)

_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
Hook = Callable[[], Awaitable[None]]


def body_limit_message(max_body_bytes: int, max_batch_rows: int) -> str:
    """The 413 message: it names both limits, since which one a batch meets first depends on its encoding."""
    return (
        f"the body is larger than SERVING_MAX_BODY_BYTES ({max_body_bytes} bytes); up to SERVING_MAX_BATCH_ROWS "
        f"({max_batch_rows}) rows are accepted per request: send fewer rows per request, or the same rows as "
        "binary tensors (Inference-Header-Content-Length) or over gRPC, 8 bytes per value instead of ~20 in JSON"
    )


def _json_part_length(scope: Scope, body_length: int) -> int | None:
    """Inference-Header-Content-Length (the binary tensor extension), or None when the whole body is JSON."""
    for name, value in scope["headers"]:
        if name == INFERENCE_HEADER:
            if not value.isdigit() or int(value) > body_length:
                raise BadRequest(
                    f"Inference-Header-Content-Length must be the byte length of the JSON part of the body "
                    f"(0 to {body_length}), got {value[:20].decode(errors='replace')!r}"
                )
            return int(value)
    return None


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


def _json(status: int, doc: Any) -> Reply:
    return status, orjson.dumps(doc), _JSON


class ServingApp:
    def __init__(self, service: ModelService, metrics: Metrics, scorer: Scorer | None = None) -> None:
        self.service = service
        self.metrics = metrics
        self.settings = service.settings
        self.scorer = scorer or Scorer(service)  # the one prediction path, shared with the gRPC server
        # Run after the model service starts and before it stops (the gRPC server: __main__).
        self.on_startup: list[Hook] = []
        self.on_shutdown: list[Hook] = []
        self.grpc: GrpcServer | None = None  # the V2 gRPC service beside this app (__main__), if any
        self.offload = Offloader()  # bodies over INLINE_BODY_BYTES: parsed and answered in a helper process
        self._in_flight = metrics.in_flight
        self._buffered = 0  # bytes of request bodies being received, all connections together
        # path -> (endpoint label for metrics, {method: handler})
        self._fixed: dict[str, tuple[str, dict[str, Handler]]] = {
            "/v1/predict": ("predict", {"POST": self._predict}),
            "/predict": ("predict", {"POST": self._predict}),
            "/v2": ("server_metadata", {"GET": self._server_metadata}),
            "/v2/health/live": ("health_live", {"GET": self._live}),
            "/v2/health/ready": ("health_ready", {"GET": self._ready}),
            "/v2/repository/index": ("repository_index", {"POST": self._index, "GET": self._index}),
            "/metrics": ("metrics", {"GET": self._metrics}),
        }
        self._model_routes: dict[str, tuple[str, dict[str, Handler]]] = {
            "": ("model_metadata", {"GET": self._model_metadata}),
            "ready": ("model_ready", {"GET": self._model_ready}),
            "infer": ("infer", {"POST": self._infer}),
        }
        self._v1_model_route: Route = ("v1_model", {"GET": self._v1_model})
        self._v1_predict_route: Route = ("predict", {"POST": self._v1_predict})
        self._load_route: Route = ("repository_load", {"POST": self._load})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    # -- plumbing --------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[str, Handler, list[str]]:
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        found = self._fixed.get(path)
        args: list[str] = []
        if found is None:
            found, args = self._match_model_path(path)
        if found is None:
            raise NotFound(
                f"no such endpoint {path!r}: see POST /v1/predict, /v2/models/{{ticker}}/infer, /v2, /metrics"
            )
        endpoint, methods = found
        handler = methods.get(method)
        if handler is None:
            allowed = tuple(methods)
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {' or '.join(allowed)}", allowed)
        return endpoint, handler, args

    def _match_model_path(self, path: str) -> tuple[tuple[str, dict[str, Handler]] | None, list[str]]:
        parts = path.split("/")
        # KServe V1: ['', 'v1', 'models', 'SPY'] and ['', 'v1', 'models', 'SPY:predict']
        if len(parts) == 4 and parts[1:3] == ["v1", "models"] and parts[3]:
            name, _, verb = parts[3].partition(":")
            if not verb:
                return self._v1_model_route, [name, ""]
            if verb == "predict":
                return self._v1_predict_route, [name, ""]
            return None, []
        # ['', 'v2', 'models', name, ...] and ['', 'v2', 'repository', 'models', name, 'load']
        if len(parts) == 6 and parts[1:4] == ["v2", "repository", "models"] and parts[5] == "load":
            return self._load_route, [parts[4], ""]
        if len(parts) < 4 or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
            return None, []
        name, rest, version = parts[3], parts[4:], ""
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if len(rest) > 1:
            return None, []
        return self._model_routes.get(rest[0] if rest else ""), [name, version]

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._in_flight.inc()
        try:
            await self._answer(scope, receive, send)
        finally:
            self._in_flight.dec()

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        endpoint = "unknown"
        headers: list[tuple[bytes, bytes]] = []
        try:
            endpoint, handler, args = self._route(scope["method"], scope["path"])
            reply = await handler(scope, receive, args)
            status, body, content_type = reply[0], reply[1], reply[2]
            if len(reply) == 4:
                headers += reply[3]
        except HttpError as exc:
            status, body, content_type = _json(exc.status, {"error": exc.message})
            if isinstance(exc, MethodNotAllowed):
                headers.append((b"allow", ", ".join(exc.allow).encode()))
            elif isinstance(exc, Unauthorized):
                headers.append((b"www-authenticate", b'Bearer realm="reload"'))
        except ClientGone:
            return
        except Exception:
            log.exception("unexpected error", extra={"path": scope["path"], "method": scope["method"]})
            status, body, content_type = _json(500, {"error": "internal error; the server log has the details"})
        headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe_request(endpoint, status, time.perf_counter() - started, "http")

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, inflated when the client compressed it (within the same byte limit)."""
        too_large = PayloadTooLarge(body_limit_message(self.settings.max_body_bytes, self.settings.max_batch_rows))
        body = await self._raw_body(scope, receive, too_large)
        encoding = content_encoding.encoding_of(scope["headers"])
        if encoding is None:
            return body
        if len(body) > INLINE_BODY_BYTES:  # zlib releases the GIL: single rows go on meanwhile
            return await asyncio.to_thread(
                content_encoding.inflate, body, encoding, self.settings.max_body_bytes, too_large
            )
        return content_encoding.inflate(body, encoding, self.settings.max_body_bytes, too_large)

    async def _raw_body(self, scope: Scope, receive: Receive, too_large: PayloadTooLarge) -> bytes:
        limit = self.settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                raise too_large if value.isdigit() else BadRequest("the Content-Length header is not a number")
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        if not message.get("more_body", False):  # the usual case: the whole body in one message
            first: bytes = message.get("body", b"")
            if len(first) > limit:
                raise too_large
            return first
        # A body in several parts: all such bodies together stay within SERVING_MAX_BUFFERED_BYTES.
        chunks: list[bytes] = []
        size = 0
        budget = self.settings.max_buffered_bytes
        try:
            while True:
                chunk = message.get("body", b"")
                size += len(chunk)
                self._buffered += len(chunk)
                if size > limit:
                    raise too_large
                if self._buffered > budget:
                    raise Unavailable("too many large request bodies are arriving at once; retry shortly")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
        finally:
            self._buffered -= size

    # -- handlers --------------------------------------------------------------------------------

    async def _predict(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        body = await self._body(scope, receive)
        null_ok, max_rows = self.settings.null_as_missing, self.settings.max_batch_rows
        if len(body) > INLINE_BODY_BYTES:
            return await self._predict_large(body, null_ok, max_rows)
        ticker, payload, batch = payloads.predict_envelope(parse_json(body), self.settings.ticker)
        model = self.service.cached(ticker) or await self.service.model_for(ticker)
        if batch:
            rows = payloads.instance_rows(model, payload, null_ok, max_rows)
        else:
            rows = np.array([payloads.named_row(model, payload, '"features"', null_ok)], dtype=np.float64)
        probabilities = await self.scorer.predict(model, rows)
        return _json(200, payloads.predict_response(model, ticker, probabilities, batch))

    async def _predict_large(self, body: bytes, null_ok: bool, max_rows: int) -> Reply:
        offload = self.offload
        known = dict(self.service.loaded())
        ticker, batch, rows = await offload.predict_rows(body, self.settings.ticker, known, null_ok, max_rows)
        model = self.service.cached(ticker) or await self.service.model_for(ticker)
        if rows is None or known.get(ticker) is not model:  # rows must follow this model's feature order
            ticker, batch, rows = await offload.predict_rows(body, ticker, {ticker: model}, null_ok, max_rows)
            assert rows is not None
        probabilities = await self.scorer.predict(model, rows)
        reply, _ = await offload.respond("predict", model, probabilities, ticker, batch)
        return 200, reply, _JSON

    async def _infer(self, scope: Scope, receive: Receive, args: list[str]) -> Reply | HeadedReply:
        """V2 inference, JSON or with the binary tensor extension (Inference-Header-Content-Length:
        the JSON part's length; binary input data follows it, and binary outputs follow the reply's)."""
        name, version = args
        model = await self.scorer.model(name, version)
        body = await self._body(scope, receive)
        json_length = _json_part_length(scope, len(body))
        null_ok, max_rows = self.settings.null_as_missing, self.settings.max_batch_rows
        if (len(body) if json_length is None else json_length) > INLINE_BODY_BYTES:  # much JSON: the helper parses
            rows, outputs, request_id = await self.offload.infer_rows(body, model, null_ok, max_rows, json_length)
        else:
            doc = parse_json(body if json_length is None else body[:json_length])
            binary = None if json_length is None else memoryview(body)[json_length:]
            rows, outputs = payloads.infer_rows(model, doc, null_ok, max_rows, binary)
            request_id = doc.get("id") if type(doc.get("id")) is str else None
        probabilities = await self.scorer.predict(model, rows)
        request_id = request_id or os.urandom(16).hex()
        if rows.shape[0] > INLINE_JSON_REPLY_ROWS and not all(o.binary for o in outputs):
            reply, reply_json_length = await self.offload.respond(
                "infer", model, probabilities, name, outputs, request_id
            )
        else:
            reply, reply_json_length = payloads.infer_reply(model, name, probabilities, outputs, request_id)
        if reply_json_length is None:
            return 200, reply, _JSON
        return 200, reply, _OCTETS, [(b"inference-header-content-length", str(reply_json_length).encode())]

    async def _v1_predict(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        model = await self.scorer.model(*args)
        body = await self._body(scope, receive)
        null_ok, max_rows = self.settings.null_as_missing, self.settings.max_batch_rows
        if len(body) > INLINE_BODY_BYTES:
            rows = await self.offload.v1_rows(body, model, null_ok, max_rows)
            probabilities = await self.scorer.predict(model, rows)
            reply, _ = await self.offload.respond("v1", model, probabilities)
            return 200, reply, _JSON
        rows = payloads.instance_rows(model, payloads.v1_instances(parse_json(body)), null_ok, max_rows)
        probabilities = await self.scorer.predict(model, rows)
        return _json(200, {"predictions": probabilities.tolist()})

    async def _v1_model(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        ticker = self.service.ticker_for_name(args[0])
        model = self.service.cached(ticker)
        if model is None:
            await self.service.route(ticker)
        return _json(200 if model else 503, {"name": args[0], "ready": model is not None})

    async def _model_metadata(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        model = await self.scorer.model(*args)
        return _json(200, payloads.model_metadata(model, args[0]))

    async def _model_ready(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        name, version = args
        ticker = self.service.ticker_for_name(name)
        model = self.service.cached(ticker)
        if model is None:
            await self.service.route(ticker)  # 404 for a ticker this server will never serve
            return _json(503, {"name": name, "ready": False})
        ready = not version or version == model.version
        return _json(200 if ready else 404, {"name": name, "ready": ready, "version": model.version})

    async def _live(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        return _json(200, {"live": True})

    async def _ready(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        if DRAIN.active:
            return _json(503, {"ready": False, "reason": "shutting down (draining connections)"})
        if self.service.ready:
            return _json(200, {"ready": True})
        return _json(503, {"ready": False, "reason": self.service.not_ready_reason})

    async def _server_metadata(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        return _json(200, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    async def _index(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        models = [
            {"name": ticker, "version": m.version, "state": "READY", "reason": "", "model": m.key, "digest": m.digest}
            for ticker, m in self.service.loaded()
        ]
        own = self.settings.ticker
        if own is not None and not any(m["name"] == own for m in models):
            models.append(
                {
                    "name": own,
                    "version": self.settings.version or "",
                    "state": "UNAVAILABLE",
                    "reason": self.service.not_ready_reason,
                }
            )
        return _json(200, models)

    def _check_reload_credential(self, scope: Scope) -> None:
        """Reload re-reads S3 and swaps models: only with SERVING_RELOAD_TOKEN set, and only for a
        request that presents it (`Authorization: Bearer <token>`). The operator never sets it: it
        changes versions by rolling pods."""
        token = self.settings.reload_token
        if not token:
            raise Forbidden(
                "reload over HTTP is disabled: versions change by rolling pods (the operator does it); "
                "set SERVING_RELOAD_TOKEN to enable it with a bearer token, or send SIGHUP inside the pod"
            )
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        if not hmac.compare_digest(presented, token.encode()):
            raise Unauthorized("reload needs the token of SERVING_RELOAD_TOKEN as `Authorization: Bearer <token>`")

    async def _load(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        self._check_reload_credential(scope)
        name = args[0]
        model = await self.service.reload(self.service.ticker_for_name(name))
        return _json(
            200,
            {
                "name": name,
                "version": model.version,
                "digest": model.digest,
                "source": model.source,
                "engine": model.engine,
                "model_path": model.model_path,
            },
        )

    async def _metrics(self, scope: Scope, receive: Receive, args: list[str]) -> Reply:
        return 200, self.metrics.render(), self.metrics.content_type.encode()

    # -- lifespan -------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.service.start()
                try:
                    for hook in self.on_startup:
                        await hook()
                except Exception as exc:  # e.g. the gRPC port is taken: the pod must not run half a server
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.on_shutdown:
                    await hook()
                await self.service.stop()
                self.scorer.stop()
                self.offload.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
