"""Start and stop the two transports around one pipeline and one store."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from .config import Settings, split_address
from .export import Pipeline
from .route import RoutingConfig
from .store import Store, open_store
from .transport.grpc import build_server
from .transport.http import HTTPReceiver

log = logging.getLogger("lightning_otlp")


def build_pipeline(settings: Settings, store: Store | None = None) -> Pipeline:
    store = store or open_store(settings.store)
    store.open()
    routing = RoutingConfig(
        rollout_keys=settings.rollout_keys,
        fallback=settings.fallback,  # type: ignore[arg-type]
    )
    return Pipeline(
        store,
        routing,
        max_request_bytes=settings.max_request_bytes,
        max_in_flight=settings.max_in_flight,
    )


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM; every request answered before exit is committed."""
    pipeline = build_pipeline(settings)
    grpc_server, grpc_port = build_server(pipeline, settings.grpc)
    await grpc_server.start()
    http_host, http_port = split_address(settings.http)
    config = uvicorn.Config(
        HTTPReceiver(pipeline),
        host=http_host,
        port=http_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
    http_server = uvicorn.Server(config)
    serving = asyncio.ensure_future(http_server.serve())
    while not http_server.started and not serving.done():
        await asyncio.sleep(0.01)
    if http_server.started:
        bound = http_server.servers[0].sockets[0].getsockname()[1]
        grpc_host = split_address(settings.grpc)[0]
        _announce(f"OTLP/gRPC listening on {grpc_host}:{grpc_port}")
        _announce(f"OTLP/HTTP listening on http://{http_host}:{bound}/v1/traces")
        _announce(f"store: {pipeline.store.url}")
    try:
        await serving
    finally:
        await grpc_server.stop(grace=5)
        pipeline.close()
        pipeline.store.close()
        _announce("stopped")


def _announce(text: str) -> None:
    print(f"lightning-otlp: {text}", file=sys.stderr, flush=True)
