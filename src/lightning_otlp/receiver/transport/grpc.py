"""OTLP/gRPC: the Trace, Metrics and Logs ``Export`` services on one ``grpc.aio`` server.

Handlers take raw bytes and parse them themselves, so a malformed message answers
INVALID_ARGUMENT (grpcio's own deserializer would answer INTERNAL). Each ``Export`` is served as
a client-streaming call (on the wire a unary call is the same): the handler checks the bearer
token before it asks for the message, so a caller without one never gets a large message taken
in, and the message's bytes are then held against the request memory budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import grpc

from ...defaults import DEFAULT_MAX_CONCURRENT_STREAMS
from ...errors import InvalidRequest, Overloaded
from ..auth import BearerAuth
from ..decode import PROTOBUF
from ..pipeline import Pipeline, Signal
from ..status import answer

TRACE_SERVICE: Final = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE: Final = "opentelemetry.proto.collector.metrics.v1.MetricsService"
LOGS_SERVICE: Final = "opentelemetry.proto.collector.logs.v1.LogsService"

Handler = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]
SERVICES: Final[dict[str, Signal]] = {
    TRACE_SERVICE: "traces",
    METRICS_SERVICE: "metrics",
    LOGS_SERVICE: "logs",
}


def _handler(pipeline: Pipeline, signal: Signal, auth: BearerAuth | None = None) -> Handler:
    async def export(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        held = 0
        try:
            if auth is not None:
                auth.require(_authorization(context))  # before the message is asked for
            request = await _first(requests)
            if not pipeline.budget.reserve(len(request)):
                raise Overloaded("requests in flight hold the request memory budget; retry later")
            held = len(request)
            response = await pipeline.export(signal, request, None, PROTOBUF, "grpc")
        except Exception as exc:  # the client's fault, a retry hint or a defect: ``answer`` says
            result = answer(exc)
            await context.abort(
                result.grpc_code, result.status.message, trailing_metadata=result.grpc_trailers
            )
            raise AssertionError("unreachable") from exc  # abort() raises
        finally:
            pipeline.budget.release(held)
        data: bytes = response.SerializeToString()
        return data

    return export


async def _first(requests: AsyncIterator[bytes]) -> bytes:
    async for request in requests:
        return request
    raise InvalidRequest("the call carried no request message")


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
    idle_timeout: float | None = None,
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
) -> tuple[grpc.aio.Server, int]:
    """A not yet started server bound to ``address``; returns it and the bound port.

    With ``auth`` every call needs a bearer token; with ``credentials`` the port speaks TLS;
    with ``idle_timeout`` a connection with no call for that many seconds is closed.
    """
    limit = pipeline.max_request_bytes
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", max_concurrent_streams),
    ]
    if idle_timeout is not None:
        options.append(("grpc.max_connection_idle_ms", int(idle_timeout * 1000)))
    server = grpc.aio.server(options=options)
    handlers = tuple(
        grpc.method_handlers_generic_handler(
            service,
            {"Export": grpc.stream_unary_rpc_method_handler(_handler(pipeline, signal, auth))},
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
