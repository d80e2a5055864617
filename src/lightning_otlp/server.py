"""Start and stop the two transports around one pipeline and one store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import grpc
import uvicorn

from .api import APILimits, build_http_app
from .receiver.auth import BearerAuth, load_tokens
from .receiver.health import HealthApp
from .receiver.status import rejections
from .receiver.transport.grpc import build_server
from .receiver.transport.guard import uvicorn_options
from .receiver.transport.http import HTTPReceiver
from .settings import ENV_PREFIX, Address, Settings
from .wiring import build_pipeline

# Seconds a thread holds the interpreter before another waiting for it gets it (Python's
# default is 0.005): measured in `make bench BENCH=ingest`, reads kept up at 0.001.
SWITCH_INTERVAL: Final = 0.001

log = logging.getLogger("lightning_otlp")


class _Server(uvicorn.Server):
    """uvicorn minus its own signal handling: ``serve`` stops every server on one signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(settings: Settings) -> None:
    """Serve until a signal: on uvloop where it is installed, else on asyncio's own loop."""
    uvloop = _uvloop()
    if uvloop is None:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


def _uvloop() -> ModuleType | None:
    """uvloop, where it is installed: it is not made for Windows or PyPy.

    uvloop runs the event loop (accepting, reading and writing sockets, timers) in C, so each
    connection, hostile ones above all, costs the interpreter less. grpc.aio polls on a thread
    of its own and takes any asyncio loop.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then drain: every request answered is committed.

    Shutdown stops both transports accepting, lets in-flight requests finish (for at most
    ``shutdown_timeout`` seconds), waits for the store thread, then closes the store.
    """
    auth = BearerAuth(load_tokens(settings.auth_token_file)) if settings.auth_token_file else None
    _warn_if_open(settings, auth)
    _raise_file_limit()
    # Bind before anything starts, so a port in use is one clean error.
    http_socket = _bind(settings.http, "OTLP/HTTP", "http")
    health_socket = (
        _bind(settings.health, "health", "health") if settings.health is not None else None
    )
    if settings.grpc.port:  # grpcio binds its own socket: try the port first, for a clean line
        _bind(settings.grpc, "OTLP/gRPC", "grpc").close()
    pipeline = build_pipeline(settings)
    # Before any server starts, so a missing dashboard is one clean error.
    http_app = build_http_app(
        HTTPReceiver(pipeline, auth, body_timeout=settings.body_timeout),
        pipeline,
        dashboard=settings.dashboard,
        watchdog_interval=settings.watchdog_interval,
        auth=auth,
        limits=APILimits(
            max_request_bytes=settings.max_request_bytes,
            body_timeout=settings.body_timeout,
            max_json_values=settings.max_json_values,
            max_batch=settings.max_api_batch,
            max_wait=settings.max_wait,
            # Other receivers' commits wake no wait here: look again every half second.
            wait_recheck=0.5 if pipeline.store.shared else max(settings.watchdog_interval, 0.5),
        ),
    )
    grpc_server, grpc_port = build_server(
        pipeline,
        str(settings.grpc),
        auth=auth,
        credentials=_grpc_credentials(settings),
        idle_timeout=settings.idle_timeout,
        max_concurrent_streams=settings.max_grpc_streams,
    )
    await grpc_server.start()
    limits = uvicorn_options(
        settings.header_timeout, settings.idle_timeout, settings.max_connections, pipeline.budget
    )
    http_server = _asgi_server(
        http_app,
        settings.http,
        grace=max(1, round(settings.shutdown_timeout)),
        **limits,
        **_uvicorn_tls(settings),
    )
    health_server: _Server | None = None
    if settings.health is not None:
        health_server = _asgi_server(HealthApp(pipeline), settings.health, grace=1, **limits)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, stopping, http_server)
    # What exists now (modules, the app, the store) lives as long as the process: frozen out
    # of the collector's way, a full collection under load scans only what requests made
    # since, instead of pausing every thread for tens of milliseconds each time.
    gc.collect()
    gc.freeze()
    # Threads that wait on SQLite or the network (span records prepared for reads, API reads)
    # give up the interpreter at each statement and, under ingest, wait up to the switch
    # interval to get it back each time: at Python's 5 ms they fell behind the spans arriving.
    sys.setswitchinterval(SWITCH_INTERVAL)
    serving = asyncio.ensure_future(http_server.serve(sockets=[http_socket]))
    background = asyncio.ensure_future(pipeline.idle_work())
    health = None
    if health_server is not None and health_socket is not None:
        health = asyncio.ensure_future(health_server.serve(sockets=[health_socket]))
    try:
        if await _started(http_server, serving) and (
            health_server is None or health is None or await _started(health_server, health)
        ):
            scheme = "https" if settings.tls_cert else "http"
            tls = " (TLS)" if settings.tls_cert else ""
            _announce(f"OTLP/gRPC listening on {Address(settings.grpc.host, grpc_port)}{tls}")
            http_at = Address(settings.http.host, _port(http_server))
            _announce(f"OTLP/HTTP listening on {scheme}://{http_at}/v1/traces")
            if health_server is not None and settings.health is not None:
                health_at = Address(settings.health.host, _port(health_server))
                _announce(f"health listening on http://{health_at}/health")
            if http_app.api is not None:
                _announce(f"LightningStore API on {scheme}://{http_at}/v1/agl")
            if http_app.dashboard is not None:
                _announce(f"dashboard on {scheme}://{http_at}/")
            _announce(f"store: {pipeline.store.url}")
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({stop, serving}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
        _announce("shutting down: draining in-flight requests")
        pipeline.draining = True
        http_server.should_exit = True
        await asyncio.gather(grpc_server.stop(grace=settings.shutdown_timeout), serving)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await grpc_server.stop(grace=None)
        background.cancel()
        pipeline.close()
        if http_app.api is not None:
            http_app.api.close()
        pipeline.store.close()
        rejections.flush()
        if health_server is not None and health is not None:
            health_server.should_exit = True
            await health
        _announce("stopped")


def _asgi_server(app: Any, address: Address, *, grace: int, **options: Any) -> _Server:
    host, port = address
    return _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=grace,
            **{"http": "httptools", **options},
        )
    )


def _raise_file_limit() -> None:
    """Every connection holds a file descriptor: use all the system allows (Go servers do the
    same), so connection limits, not a 1,024 default, decide when clients are refused."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.debug("cannot raise the open-file limit: %s", exc)


def _bind(address: Address, what: str, setting: str) -> socket.socket:
    """A socket bound to ``address``; failing that, one line naming the setting to change."""
    host, port = address
    hint = f"(set --{setting} or {ENV_PREFIX}{setting.upper()} to a free HOST:PORT)"
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot bind {what} to {address}: {exc} {hint}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {what} to {address}: {exc.strerror or exc} {hint}") from None
    return sock


def _on_signal(stopping: asyncio.Event, http_server: uvicorn.Server) -> None:
    if stopping.is_set():
        http_server.force_exit = True  # a second signal: stop waiting for slow clients
    stopping.set()


async def _started(server: uvicorn.Server, task: asyncio.Future[Any]) -> bool:
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    return server.started


def _port(server: uvicorn.Server) -> int:
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


def _grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert or not settings.tls_key:
        return None
    ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _uvicorn_tls(settings: Settings) -> dict[str, Any]:
    if not settings.tls_cert:
        return {}
    return {
        "ssl_certfile": settings.tls_cert,
        "ssl_keyfile": settings.tls_key,
        "ssl_ca_certs": settings.tls_client_ca,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
    }


def _warn_if_open(settings: Settings, auth: BearerAuth | None) -> None:
    """Anyone who can reach an all-interfaces port can write spans unless a token is required."""
    if auth is not None:
        return
    for name in ("grpc", "http"):
        host = getattr(settings, name).host
        if _all_interfaces(host):
            log.warning(
                "OTLP/%s listens on all interfaces (%s) without authentication: anyone who can "
                "reach it can write spans; set --auth-token-file or bind to 127.0.0.1",
                "gRPC" if name == "grpc" else "HTTP",
                getattr(settings, name),
            )


def _all_interfaces(host: str) -> bool:
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _announce(text: str) -> None:
    print(f"lightning-otlp: {text}", file=sys.stderr, flush=True)
