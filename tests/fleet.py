"""Several ``lightning-otlp serve`` processes at once, as a fleet behind a load balancer runs them:
each on loopback ports of its own that a restart keeps, started side by side, any one killed or
restarted while the others serve."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2ExportTraceServiceRequest,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

from .collectors import CollectorProcess
from .support import ReceiverProcess, free_port


class Fleet:
    """``count`` receivers on one shared store URL, or on one store URL each (``stores`` a list).

    Receiver ``i`` logs to ``workdir/receiver-i.log`` (beside its file for a SQLite store of its
    own, which its ``spans()`` and ``rollouts()`` then read); extra ``flags`` go to every
    receiver.
    """

    def __init__(
        self,
        stores: str | Sequence[str],
        workdir: Path,
        *flags: str,
        count: int = 3,
        env: dict[str, str] | None = None,
    ) -> None:
        urls = [stores] * count if isinstance(stores, str) else list(stores)
        self.receivers = [
            ReceiverProcess(
                _own_sqlite_file(url, urls) or workdir / f"receiver-{i}.db",
                "--grpc",
                f"127.0.0.1:{free_port()}",
                "--http",
                f"127.0.0.1:{free_port()}",
                "--health",
                f"127.0.0.1:{free_port()}",
                *flags,
                env=env,
                store=url,
            )
            for i, url in enumerate(urls)
        ]

    def __len__(self) -> int:
        return len(self.receivers)

    def __getitem__(self, index: int) -> ReceiverProcess:
        return self.receivers[index]

    def __iter__(self) -> Iterator[ReceiverProcess]:
        return iter(self.receivers)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http_urls(self) -> list[str]:
        return [r.http_url for r in self.receivers]

    @property
    def traces_urls(self) -> list[str]:
        return [r.traces_url for r in self.receivers]

    @property
    def grpc_targets(self) -> list[str]:
        return [r.grpc_target for r in self.receivers]

    def start(self, timeout: float = 60.0) -> Fleet:
        """Start every receiver side by side; returns once all are ready."""
        for receiver in self.receivers:
            receiver.launch()
        try:
            for receiver in self.receivers:
                receiver.wait_started(timeout)
            for index in range(len(self.receivers)):
                self.wait_ready(index, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, index: int, timeout: float = 60.0) -> None:
        """Wait until receiver ``index`` answers ready on its health port."""
        receiver = self.receivers[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if receiver.ready():
                return
            if receiver.proc is not None and receiver.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"receiver {index} is not ready:\n{receiver.log()[-4000:]}")

    def kill(self, index: int) -> None:
        """``kill -9`` one receiver: no chance to finish a request or close its store."""
        self.receivers[index].kill()

    def restart(self, index: int, timeout: float = 60.0) -> ReceiverProcess:
        """Stop receiver ``index`` (if it still runs) and start it again on the same ports."""
        receiver = self.receivers[index]
        receiver.stop()
        receiver.start(timeout)
        self.wait_ready(index, timeout)
        return receiver

    def stop(self) -> list[int | None]:
        """Stop every receiver (SIGTERM, then SIGKILL after a grace time): their exit codes."""
        return [receiver.stop() for receiver in self.receivers]

    def tracebacks(self) -> list[str]:
        """The logs of the receivers that logged a traceback."""
        return [r.log() for r in self.receivers if "Traceback" in r.log()]


def _own_sqlite_file(url: str, urls: list[str]) -> Path | None:
    """The SQLite file of a receiver that has one of its own (its log goes beside it)."""
    if url.startswith("sqlite:///") and urls.count(url) == 1:
        return Path(url.removeprefix("sqlite:///"))
    return None


def rollout_spans(http_url: str, rollout_id: str) -> list[dict[str, Any]]:
    """A rollout's spans as the LightningStore API of one receiver answers them."""
    page = httpx.get(
        http_url + "/v1/agl/spans", params={"rollout_id": rollout_id}, timeout=30
    ).raise_for_status()
    items: list[dict[str, Any]] = page.json()["items"]
    return items


class Answer(NamedTuple):
    what: str  # "http", or the name of the transport error
    status: int  # 0 for a transport error
    retry_after: str | None
    seconds: float


class RoundRobinSender:
    """An OTLP/HTTP client of the whole fleet, as a client-side balancer sends: request ``n`` to
    receiver ``n % len``, and a request that fails (refused connection, cut connection, 5xx or
    429) again to the next receiver after a pause, until one acknowledges it, as exporters retry.

    Every answer is kept in ``answers`` (its status and ``Retry-After``, or the error's name, and
    the seconds it took) and the keys of acknowledged spans in ``acknowledged``.
    """

    def __init__(self, fleet: Fleet, pause: float = 0.1) -> None:
        self.urls = fleet.traces_urls
        self.pause = pause
        self.http = httpx.Client(timeout=30)
        self.acknowledged: list[tuple[str, str]] = []
        self.answers: list[Answer] = []
        self._next = 0
        self.lock = threading.Lock()

    def send(self, request: PB2ExportTraceServiceRequest, deadline: float = 120.0) -> None:
        """Send one request until a receiver acknowledges it; raises after ``deadline`` s."""
        body = request.SerializeToString()
        keys = [
            (span.trace_id.hex(), span.span_id.hex())
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            url = self.urls[self._next % len(self.urls)]
            self._next += 1
            started = time.monotonic()
            try:
                reply = self.http.post(
                    url, content=body, headers={"Content-Type": "application/x-protobuf"}
                )
            except httpx.TransportError as exc:
                with self.lock:
                    self.answers.append(
                        Answer(type(exc).__name__, 0, None, time.monotonic() - started)
                    )
                time.sleep(self.pause)
                continue
            retry_after = reply.headers.get("retry-after")
            took = time.monotonic() - started
            with self.lock:
                self.answers.append(Answer("http", reply.status_code, retry_after, took))
            if reply.status_code == 200:
                with self.lock:
                    self.acknowledged.extend(keys)
                return
            if reply.status_code not in (429,) and reply.status_code < 500:
                raise AssertionError(f"{url} refused a request: {reply.status_code} {reply.text}")
            time.sleep(self.pause)
        raise AssertionError(f"no receiver acknowledged a request within {deadline:.0f} s")

    def close(self) -> None:
        self.http.close()


def gateway_for(fleet: Fleet, workdir: Path, config: str = "gateway.yaml") -> CollectorProcess:
    """The Collector on one of the gateway configs, the fleet's receivers its backends (not
    started yet)."""
    backends = {f"LIGHTNING_OTLP_{i}": target for i, target in enumerate(fleet.grpc_targets)}
    return CollectorProcess(config, workdir, {}, backends)


def grpc_tracer(endpoint: str, service: str = "gateway-agent") -> tuple[TracerProvider, Tracer]:
    """An SDK tracer whose spans go in batches to ``endpoint`` over OTLP/gRPC."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, provider.get_tracer(service)
