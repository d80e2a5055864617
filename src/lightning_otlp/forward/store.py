"""Forward into a LightningStore server (``agl store``) through a durable local outbox.

``write`` commits to the outbox exactly as the embedded store commits a request, so an
acknowledged request is durable before the server has seen it; a delivery thread then sends
pending spans to the server (``delivery.py``) and takes them out of the outbox once delivered.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from ..batch import SpanBatch
from ..defaults import (
    DEFAULT_BATCH_SPANS,
    DEFAULT_LOG_WAIT,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_OUTBOX_BYTES,
    DEFAULT_MAX_OUTBOX_SPANS,
    DEFAULT_OUTBOX,
)
from ..errors import StoreUnavailable
from ..store.affinity import TraceAffinity
from ..store.base import DEFAULT_OPTIONS, Metric, StoreOptions, WriteResult
from ..store.logs import LogRows
from ..store.url import StoreURL
from .client import HTTPLightningClient, LightningClient
from .delivery import Delivery
from .outbox import Outbox
from .queue import span_bytes

log = logging.getLogger("lightning_otlp.forward")

_OUTBOX_FULL_RETRY_AFTER: Final = 2

__all__ = ["DEFAULT_OUTBOX", "ForwardingStore"]


class ForwardingStore:
    """A store whose spans wait in an outbox until a delivery thread hands them to a server.

    Args:
        server_url: the server's base URL, e.g. ``http://127.0.0.1:4747``.
        outbox: the outbox's SQLite file.
        max_outbox_spans: pending spans at which new requests are refused (retryable).
        max_outbox_bytes: pending span bytes (OTLP encoded) at which requests are refused.
        batch_spans: most spans per ``/v1/traces`` request.
        max_backoff: cap, in seconds, of the wait between failed deliveries.
        synchronous: SQLite's ``synchronous`` pragma for the outbox.
        forward: start the delivery thread on ``open`` (off for read-only tools).
        url: the store URL, for messages.
        options: what every store takes (``StoreOptions``), for the outbox: its affinity window
            is also how long a span of a trace not yet bound waits there, in case its trace is
            bound to another rollout; ``translate`` forwards model calls in Agent Lightning's
            shape.
        client: makes the server's client (default: HTTP to ``server_url``); tests pass a fake.
        log_wait: seconds a model call whose messages come as GenAI log records is held for
            them, unless they are already here; 0 forwards every span at once.
        clock: the wall clock of the outbox's own times (tests move it by hand).
    """

    shared = False  # its outbox is this process's own

    def __init__(
        self,
        server_url: str,
        outbox: str = DEFAULT_OUTBOX,
        *,
        max_outbox_spans: int = DEFAULT_MAX_OUTBOX_SPANS,
        max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES,
        batch_spans: int = DEFAULT_BATCH_SPANS,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        synchronous: str = "FULL",
        forward: bool = True,
        url: str | None = None,
        options: StoreOptions = DEFAULT_OPTIONS,
        client: Callable[[], LightningClient] | None = None,
        log_wait: float = DEFAULT_LOG_WAIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("max_outbox_spans", max_outbox_spans),
            ("max_outbox_bytes", max_outbox_bytes),
            ("batch_spans", batch_spans),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if max_backoff <= 0:
            raise ValueError("max_backoff must be positive")
        self.server_url = server_url.rstrip("/")
        self.outbox = Outbox(
            outbox,
            self.server_url,
            synchronous=synchronous,
            url=url,
            options=options,
            log_wait=log_wait,
            clock=clock,
        )
        self.url = self.outbox.store.url
        self.max_outbox_spans = max_outbox_spans
        self.max_outbox_bytes = max_outbox_bytes
        self.batch_spans = batch_spans
        self.max_backoff = max_backoff
        self._forward = forward
        self._client = client or (lambda: HTTPLightningClient(self.server_url))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: int | None = None

    @classmethod
    def from_url(
        cls,
        url: StoreURL,
        options: StoreOptions = DEFAULT_OPTIONS,
        *,
        forward: bool = True,
        log_wait: float = DEFAULT_LOG_WAIT,
    ) -> ForwardingStore:
        """The store an ``agl+http://HOST:PORT?outbox=…&max_outbox_spans=…`` URL names."""
        if url.server is None:
            raise ValueError(f"store URL {url.url!r} names no LightningStore server")
        values = url.values  # parsed and checked by the URL parser
        return cls(
            url.server,
            url.path,
            max_outbox_spans=values.get("max_outbox_spans", DEFAULT_MAX_OUTBOX_SPANS),
            max_outbox_bytes=values.get("max_outbox_bytes", DEFAULT_MAX_OUTBOX_BYTES),
            batch_spans=values.get("batch_spans", DEFAULT_BATCH_SPANS),
            max_backoff=values.get("max_backoff", DEFAULT_MAX_BACKOFF),
            synchronous=values.get("synchronous", "FULL"),
            forward=forward,
            url=url.url,
            options=options,
            log_wait=log_wait,
        )

    @property
    def path(self) -> str:
        return self.outbox.path

    @property
    def affinity(self) -> TraceAffinity:
        """The outbox's trace affinity (the receiver sets its window)."""
        return self.outbox.local.affinity

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self.outbox.local.ready():
            return
        self.outbox.open()
        if logging.getLogger("httpx").level == logging.NOTSET:
            # One line per request would drown the receiver's own log.
            logging.getLogger("httpx").setLevel(logging.WARNING)
        if self._forward and self._claim():
            self._stop.clear()
            delivery = Delivery(
                self.outbox,
                self._client(),
                batch_spans=self.batch_spans,
                max_backoff=self.max_backoff,
            )
            self._thread = threading.Thread(
                target=self._deliver, args=(delivery,), name="lightning-otlp-forward", daemon=True
            )
            self._thread.start()

    def _deliver(self, delivery: Delivery) -> None:
        try:
            delivery.run(self._stop, self._wake)
        finally:
            delivery.client.close()

    def _claim(self) -> bool:
        """One forwarder per outbox: two would race to create the same server rollouts."""
        fd = os.open(os.path.abspath(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.warning("another process forwards from %s; this one only writes to it", self.path)
            return False
        self._lock_file = fd
        return True

    def close(self) -> None:
        """Stop the delivery thread (what is pending stays in the outbox), then close."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=15)
            if thread.is_alive():
                log.warning("forwarder still waiting on the server at shutdown; outbox kept")
        self.outbox.close()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def ready(self) -> bool:
        return self.outbox.local.ready()

    # -- writes ----------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        if not batch.groups:
            return WriteResult(0, 0)
        spans, size = self.outbox.pending()
        size += self.outbox.log_bytes()
        if (spans or size) and (
            spans + batch.accepted > self.max_outbox_spans or size >= self.max_outbox_bytes
        ):
            raise self._full(spans, size)
        result = self.outbox.write(batch)
        self._wake.set()
        return result

    def _full(self, spans: int, size: int) -> StoreUnavailable:
        return StoreUnavailable(
            f"outbox full ({spans} spans, {size} bytes of spans and GenAI log records pending"
            f" for {self.server_url})",
            retry_after=_OUTBOX_FULL_RETRY_AFTER,
        )

    def write_many(self, batches: Sequence[SpanBatch]) -> list[WriteResult]:
        """One outbox transaction for the group (one sync to disk), all or none.

        A group that might not fit the outbox whole is refused whole, before any work: the
        pipeline then writes its requests one at a time, and each is let in or refused exactly
        as it would have been alone. The group fits when the pending spans plus all it accepts
        stay within the span limit and the pending bytes plus every span byte it carries stay
        under the byte limit (an upper bound: duplicates are not stored).
        """
        if len(batches) == 1:
            return [self.write(batches[0])]
        spans, size = self.outbox.pending()
        size += self.outbox.log_bytes()
        accepted = sum(batch.accepted for batch in batches if batch.groups)
        carried = sum(span_bytes(batch) for batch in batches)
        if spans + accepted > self.max_outbox_spans or size + carried >= self.max_outbox_bytes:
            raise self._full(spans, size)
        results = self.outbox.write_many(batches)
        self._wake.set()
        return results

    def write_logs(self, rows: LogRows) -> int:
        """GenAI log records go in the outbox beside the spans they belong to (see
        ``Outbox.write_logs``); a span they release is sent at once."""
        spans, size = self.outbox.pending()
        size += self.outbox.log_bytes()
        if size >= self.max_outbox_bytes or spans >= self.max_outbox_spans:
            # Log records wait for spans like spans wait for the server: one byte limit for both.
            raise self._full(spans, size)
        kept = self.outbox.write_logs(rows)
        if self.outbox.held():
            self._wake.set()
        return kept

    # -- reads: what is still in the outbox -------------------------------------------------

    def rollouts(self) -> Iterator[dict[str, Any]]:
        return self.outbox.store.rollouts()

    def spans(
        self, rollout_id: str | None = None, attempt_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        return self.outbox.store.spans(rollout_id, attempt_id)

    def summaries(self) -> list[dict[str, Any]]:
        return self.outbox.store.summaries()

    def check(self, full: bool = False) -> list[str]:
        return self.outbox.store.check(full)

    def idle_work(self) -> bool:
        """Nothing: the forwarder does its work on its own thread."""
        return False

    def status(self) -> dict[str, Any]:
        """Outbox depth, oldest pending age, forwarded counts and the last error."""
        report = self.outbox.status()
        report["forwarding"] = self._thread is not None and self._thread.is_alive()
        return report

    def metrics(self) -> list[Metric]:
        """The outbox's trace-affinity counters, its depth and its log-record joins; never
        waits for the lock."""
        spans, size = self.outbox.pending()
        outbox = self.outbox
        return [
            *outbox.store.metrics(),
            Metric(
                "lightning_otlp_late_logs_total",
                "GenAI log records dropped: they came after their span was forwarded.",
                "counter",
                outbox.late_logs,
            ),
            Metric(
                "lightning_otlp_pruned_logs_total",
                "GenAI log records pruned from the outbox: their span never came.",
                "counter",
                outbox.pruned_logs,
            ),
            Metric(
                "lightning_otlp_outbox_held_spans",
                "Model-call spans held in the outbox for their GenAI log records.",
                "gauge",
                outbox.held(),
            ),
            Metric("lightning_otlp_outbox_spans", "Spans waiting to be forwarded.", "gauge", spans),
            Metric(
                "lightning_otlp_outbox_bytes",
                "Bytes of spans waiting to be forwarded.",
                "gauge",
                size,
            ),
            Metric(
                "lightning_otlp_outbox_log_bytes",
                "Bytes of GenAI log records kept in the outbox for their spans.",
                "gauge",
                outbox.log_bytes(),
            ),
        ]
