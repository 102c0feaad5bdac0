"""The Open Inference Protocol (V2) over gRPC: `inference.GRPCInferenceService`, as KServe and Triton
define it (ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer), on
GRPC_PORT.

It runs in the serving process's own event loop (grpc.aio beside uvicorn), so it serves the models
the HTTP side loaded, predicts through the same Scorer and counts into the same metrics, with
`protocol="grpc"`. Errors are the HTTP side's, as gRPC status codes: a client mistake is
INVALID_ARGUMENT (400) or NOT_FOUND (404), a model that cannot answer now UNAVAILABLE (503); only a
bug is INTERNAL. The metrics' `code` label is the HTTP status of the same outcome, so one alert
on 5xx covers both protocols.

Limits: a message over SERVING_MAX_BODY_BYTES is refused by gRPC itself (RESOURCE_EXHAUSTED), rows
over SERVING_MAX_BATCH_ROWS like over HTTP. SO_REUSEPORT is off, so a port already taken fails the
start instead of sharing the port with whoever holds it. On SIGTERM the server stops accepting
calls when the drain starts (GOAWAY: clients move to another pod) and lets calls in progress finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from model_serving.api import grpc_payloads, payloads
from model_serving.api.scoring import Scorer
from model_serving.api.service import ModelService
from model_serving.api.v2_grpc import open_inference_pb2 as pb
from model_serving.errors import HttpError
from model_serving.http_limits import DRAIN
from model_serving.metrics import Metrics

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
# The gRPC status of each HTTP status this server answers with, and back (for the metrics' code label).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

Handler = Callable[[Any], Awaitable[Any]]


class GrpcServer:
    def __init__(self, service: ModelService, scorer: Scorer, metrics: Metrics, server_name: str, version: str) -> None:
        self.service = service
        self.scorer = scorer
        self.metrics = metrics
        self.settings = service.settings
        self.server_name, self.version = server_name, version
        self.port = 0  # the bound port, once started
        self._server: aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        server = aio.server(options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, self._handlers()),))
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises this when the port is taken
            raise RuntimeError(f"gRPC cannot listen on {address} (GRPC_PORT): {exc}") from None
        await server.start()
        self._server = server
        log.info("grpc listening", extra={"port": self.port})

    def begin_stop(self, grace: float) -> None:
        """Stop taking calls (GOAWAY) and give those in progress `grace` seconds; idempotent."""
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._server.stop(grace))

    async def stop(self, grace: float) -> None:
        self.begin_stop(grace)
        if self._stopping is not None:
            await self._stopping

    # -- the service -----------------------------------------------------------------------------

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        methods: dict[str, tuple[str, Handler]] = {  # method -> (endpoint label, handler); messages by name
            "ServerLive": ("health_live", self._live),
            "ServerReady": ("health_ready", self._ready),
            "ModelReady": ("model_ready", self._model_ready),
            "ServerMetadata": ("server_metadata", self._server_metadata),
            "ModelMetadata": ("model_metadata", self._model_metadata),
            "ModelInfer": ("infer", self._infer),
        }
        return {
            method: grpc.unary_unary_rpc_method_handler(
                self._measured(endpoint, handler),
                request_deserializer=getattr(pb, f"{method}Request").FromString,
                response_serializer=getattr(pb, f"{method}Response").SerializeToString,
            )
            for method, (endpoint, handler) in methods.items()
        }

    def _measured(self, endpoint: str, handler: Handler) -> Callable[[Any, aio.ServicerContext], Awaitable[Any]]:
        """The handler with metrics and the HTTP side's errors as gRPC status codes."""
        metrics = self.metrics

        async def call(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metrics.in_flight.inc()
            status = 200
            try:
                return await handler(request)
            except HttpError as exc:
                status = exc.status
                await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message)
            except asyncio.CancelledError:
                status = 499  # the client went away (nginx's code for it)
                raise
            except Exception:
                status = 500
                log.exception("unexpected error", extra={"grpc_method": endpoint})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
            finally:
                metrics.in_flight.dec()
                metrics.observe_request(endpoint, status, time.perf_counter() - started, "grpc")

        return call

    async def _live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready and not DRAIN.active)

    async def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        ticker = self.service.ticker_for_name(request.name)  # NOT_FOUND for a name that is no ticker
        model = self.service.cached(ticker)
        if model is None:
            await self.service.route(ticker)  # NOT_FOUND for a ticker this server will never serve
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not request.version or request.version == model.version)

    async def _server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.server_name, version=self.version, extensions=[])

    async def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        model = await self.scorer.model(request.name, request.version)
        return grpc_payloads.model_metadata(payloads.model_metadata(model, request.name))

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = await self.scorer.model(request.model_name, request.model_version)
        s = self.settings
        rows, outputs = grpc_payloads.infer_rows(model, request, s.null_as_missing, s.max_batch_rows)
        probabilities = await self.scorer.predict(model, rows)
        return grpc_payloads.infer_response(model, request, probabilities, outputs)
