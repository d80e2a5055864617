"""OTLP/gRPC: the Trace, Metrics and Logs ``Export`` services on one ``grpc.aio`` server.

Handlers take raw bytes and parse them themselves, so a malformed message answers
INVALID_ARGUMENT (grpcio's own deserializer would answer INTERNAL).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import grpc

from ...errors import ReceiverError
from ..auth import BearerAuth
from ..decode import PROTOBUF
from ..pipeline import Pipeline, Signal
from ..status import answer

TRACE_SERVICE: Final = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE: Final = "opentelemetry.proto.collector.metrics.v1.MetricsService"
LOGS_SERVICE: Final = "opentelemetry.proto.collector.logs.v1.LogsService"

Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]
SERVICES: Final[dict[str, Signal]] = {
    TRACE_SERVICE: "traces",
    METRICS_SERVICE: "metrics",
    LOGS_SERVICE: "logs",
}


def _handler(pipeline: Pipeline, signal: Signal, auth: BearerAuth | None = None) -> Handler:
    async def export(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            if auth is not None:
                auth.require(_authorization(context))
            response = await pipeline.export(signal, request, None, PROTOBUF, "grpc")
        except ReceiverError as exc:
            result = answer(exc)
            await context.abort(result.grpc_code, str(exc), trailing_metadata=result.grpc_trailers)
            raise AssertionError("unreachable") from exc  # abort() raises
        data: bytes = response.SerializeToString()
        return data

    return export


def _authorization(context: grpc.aio.ServicerContext[bytes, bytes]) -> str | bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value  # type: ignore[no-any-return]
    return None


def build_server(
    pipeline: Pipeline,
    address: str,
    *,
    auth: BearerAuth | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A not yet started server bound to ``address``; returns it and the bound port.

    With ``auth`` every call needs a bearer token; with ``credentials`` the port speaks TLS.
    """
    limit = pipeline.max_request_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    handlers = tuple(
        grpc.method_handlers_generic_handler(
            service,
            {"Export": grpc.unary_unary_rpc_method_handler(_handler(pipeline, signal, auth))},
        )
        for service, signal in SERVICES.items()
    )
    server.add_generic_rpc_handlers(handlers)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind OTLP/gRPC to {address}")
    return server, port
