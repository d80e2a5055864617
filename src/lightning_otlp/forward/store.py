"""Forward into a LightningStore server (``agl store``) through a durable local outbox.

``write`` commits to the outbox (an embedded SQLite store) exactly as the embedded store does,
so an acknowledged request is durable before the server has seen it. A background thread then
delivers pending spans in batches through the server's ``POST /v1/traces`` (protobuf, ids in
resource attributes, ``agentlightning.span_sequence_id`` on every span), and deletes each batch
from the outbox in the transaction that counts it as delivered.

Exactly once: a batch whose delivery is in doubt (a crash, a lost response) is sent again; the
server keeps one span per (rollout_id, attempt_id, span_id), so the repeat adds nothing. The
local -> server id mapping is committed before it is used, and a rollout creation in doubt is
found again by the ``link`` it wrote into the server rollout's metadata, so a crash never makes
a second server rollout for the same spans.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import httpx
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PB2AnyValue
from opentelemetry.proto.common.v1.common_pb2 import KeyValue as PB2KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PB2Resource

from .. import semconv
from ..batch import SpanBatch
from ..errors import StoreUnavailable
from ..store.affinity import DEFAULT_AFFINITY_WINDOW, Changes
from ..store.base import Metric, WriteResult
from ..store.sqlite import SQLiteStore
from .outbox import create_schema, pending, read_status

log = logging.getLogger("lightning_otlp.forward")

DEFAULT_OUTBOX: Final = "./lightning-otlp-outbox.db"
# A server outage of a few minutes at a busy receiver's rate, and at most 1 GiB of disk.
DEFAULT_MAX_OUTBOX_SPANS: Final = 1_000_000
DEFAULT_MAX_OUTBOX_BYTES: Final = 1 << 30
DEFAULT_BATCH_SPANS: Final = 1000
DEFAULT_BATCH_BYTES: Final = 4 << 20
DEFAULT_MAX_BACKOFF: Final = 5.0
_MIN_BACKOFF: Final = 0.05
_OUTBOX_FULL_RETRY_AFTER: Final = 2
_MIRROR_INTERVAL: Final = 0.5
_TRANSPORT_TRIES: Final = 3
_API: Final = "/v1/agl"
_PROTOBUF: Final = {"content-type": "application/x-protobuf"}
_STARTING: Final = frozenset({"queuing", "preparing", "requeuing"})
_ID_NEEDLE: Final = semconv.ROLLOUT_ID.encode()
# 4xx answers that mean "later", not "never".
_RETRYABLE_4XX: Final = frozenset({408, 409, 425, 429})


class ServerError(Exception):
    """The server answered, but not with success (``status`` is its HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class LightningServer:
    """The few REST and OTLP calls the forwarder makes to a LightningStore server."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=3.0)
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One request; ``retry`` (for repeatable calls) retries at once on a transport error.

        The server drops a connection after a request its handler failed on, so a pooled
        connection may be dead when the next call picks it; the failed one leaves the pool, and
        an immediate retry takes another or a fresh one.
        """
        tries = _TRANSPORT_TRIES if retry else 1
        for attempt in range(1, tries + 1):
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == tries:
                    raise ConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                continue
            except httpx.HTTPError as exc:
                raise ConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if response.status_code >= 300:
                raise ServerError(response.status_code, f"{method} {path}: {response.text[:200]}")
            return response
        raise AssertionError("unreachable")

    def health(self) -> bool:
        try:
            return bool(self._call("GET", _API + "/health").json().get("status") == "ok")
        except (ConnectionError, ServerError, ValueError):
            return False

    def rollouts(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Those of ``ids`` the server knows, as AttemptedRollout dicts."""
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        items = self._call("GET", _API + "/rollouts", params={"rollout_id_in": wanted}).json()
        return {r["rollout_id"]: r for r in items.get("items", []) if r["rollout_id"] in wanted}

    def recent_rollouts(self, offset: int, limit: int) -> list[dict[str, Any]]:
        params = {"sort_by": "start_time", "sort_order": "desc", "limit": limit, "offset": offset}
        items: list[dict[str, Any]] = (
            self._call("GET", _API + "/rollouts", params=params).json().get("items", [])
        )
        return items

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        # Not repeated blindly: a second POST could make a second rollout (see ``link``).
        created: dict[str, Any] = self._call(
            "POST", _API + "/rollouts", retry=False, json=body
        ).json()
        return created

    def attempts(self, rollout_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (
            self._call("GET", f"{_API}/rollouts/{rollout_id}/attempts").json().get("items", [])
        )
        return items

    def create_attempt(self, rollout_id: str) -> dict[str, Any]:
        created: dict[str, Any] = self._call(
            "POST", f"{_API}/rollouts/{rollout_id}/attempts", retry=False, json={}
        ).json()
        return created

    def update_rollout(self, rollout_id: str, status: str) -> None:
        self._call("POST", f"{_API}/rollouts/{rollout_id}", json={"status": status})

    def update_attempt(self, rollout_id: str, attempt_id: str, status: str) -> None:
        self._call(
            "POST", f"{_API}/rollouts/{rollout_id}/attempts/{attempt_id}", json={"status": status}
        )

    def export(self, body: bytes) -> None:
        self._call("POST", "/v1/traces", content=body, headers=_PROTOBUF)


class ForwardingStore(SQLiteStore):
    """An outbox store whose spans a background thread delivers to a LightningStore server.

    Args:
        server_url: the server's base URL, e.g. ``http://127.0.0.1:4747``.
        outbox: the outbox's SQLite file.
        max_outbox_spans: pending spans at which new requests are refused (retryable).
        max_outbox_bytes: pending span bytes (OTLP encoded) at which requests are refused.
        batch_spans: most spans per ``/v1/traces`` request.
        max_backoff: cap, in seconds, of the wait between failed deliveries.
        forward: start the delivery thread on ``open`` (off for read-only tools).
    """

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
        affinity_window: float = DEFAULT_AFFINITY_WINDOW,
    ) -> None:
        if outbox == ":memory:":
            raise ValueError("the outbox must be a file: it is what survives a restart")
        for name, value in (
            ("max_outbox_spans", max_outbox_spans),
            ("max_outbox_bytes", max_outbox_bytes),
            ("batch_spans", batch_spans),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if max_backoff <= 0:
            raise ValueError("max_backoff must be positive")
        super().__init__(outbox, synchronous=synchronous, url=url, affinity_window=affinity_window)
        self.server_url = server_url.rstrip("/")
        self.max_outbox_spans = max_outbox_spans
        self.max_outbox_bytes = max_outbox_bytes
        self.batch_spans = batch_spans
        self.max_backoff = max_backoff
        self._forward = forward
        self._pending = [0, 0]  # spans, bytes; guarded by self._lock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        super().open()
        conn = self._connection()
        try:
            create_schema(conn)
            conn.execute("UPDATE forward_state SET server = ? WHERE id = 1", (self.server_url,))
            self._load_delivered_bindings(conn)
            self._pending = list(pending(conn))
        except sqlite3.Error as exc:
            super().close()
            raise StoreUnavailable(f"cannot prepare outbox {self.path}: {exc}") from exc
        if logging.getLogger("httpx").level == logging.NOTSET:
            # One line per request would drown the receiver's own log.
            logging.getLogger("httpx").setLevel(logging.WARNING)
        if self._forward and self._claim():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="lightning-otlp-forward", daemon=True
            )
            self._thread.start()

    def _load_delivered_bindings(self, conn: sqlite3.Connection) -> None:
        """Trace affinity for traces whose spans already left the outbox (newest kept)."""
        keep = self.affinity.max_traces
        conn.execute(
            "DELETE FROM forward_traces WHERE time < (SELECT time FROM forward_traces"
            " ORDER BY time DESC LIMIT 1 OFFSET ?)",
            (keep,),
        )
        changes = Changes()
        changes.bound.extend(
            (trace_id, (rollout_id, attempt_id))
            for trace_id, rollout_id, attempt_id in conn.execute(
                "SELECT trace_id, rollout_id, attempt_id FROM forward_traces ORDER BY time"
            )
        )
        # Pending spans were loaded first and are newer: they keep their bindings.
        pending_bound = dict(self.affinity.bindings)
        self.affinity.bindings.clear()
        self.affinity.apply(changes, time.time())
        for trace_id, dest in pending_bound.items():
            self.affinity.bindings.setdefault(trace_id, dest)

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
        super().close()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    # -- writes ----------------------------------------------------------------------------

    def write(self, batch: SpanBatch) -> WriteResult:
        if not batch.groups:
            return WriteResult(0, 0)
        spans, size = self._pending
        if spans and (
            spans + batch.accepted > self.max_outbox_spans or size >= self.max_outbox_bytes
        ):
            raise StoreUnavailable(
                f"outbox full ({spans} spans, {size} bytes pending for {self.server_url})",
                retry_after=_OUTBOX_FULL_RETRY_AFTER,
            )
        try:
            result = super().write(batch)
        except StoreUnavailable:
            self._recount()
            raise
        self._wake.set()
        return result

    def _write(self, conn: sqlite3.Connection, batch: SpanBatch, *args: Any, **kwargs: Any) -> int:
        # Runs inside the request's transaction, under self._lock; the embedded store's own
        # write does the rest, whatever else it takes.
        before = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM spans").fetchone()[0]
        stored: int = super()._write(conn, batch, *args, **kwargs)
        count, size, top = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(span)), 0), MAX(rowid) FROM spans"
            " WHERE rowid > ?",
            (before,),
        ).fetchone()
        if count:
            conn.execute(
                "INSERT OR REPLACE INTO forward_marks (max_rowid, time) VALUES (?, ?)",
                (top, time.time()),
            )
            self._pending[0] += count
            self._pending[1] += size
        return stored

    def _recount(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._pending = list(pending(self._conn))

    def status(self) -> dict[str, Any]:
        """Outbox depth, oldest pending age, forwarded counts and the last error."""
        with self._lock:
            report = read_status(self._connection())
        report["forwarding"] = self._thread is not None and self._thread.is_alive()
        return report

    def metrics(self) -> list[Metric]:
        spans, size = self.outbox_depth()
        return [
            *super().metrics(),
            Metric("lightning_otlp_outbox_spans", "Spans waiting to be forwarded.", "gauge", spans),
            Metric(
                "lightning_otlp_outbox_bytes",
                "Bytes of spans waiting to be forwarded.",
                "gauge",
                size,
            ),
        ]

    def outbox_depth(self) -> tuple[int, int]:
        """(spans, bytes) pending, for ``/metrics``; read without the lock, so never waits."""
        spans, size = self._pending
        return spans, size

    # -- the delivery thread ---------------------------------------------------------------

    def _run(self) -> None:
        server = LightningServer(self.server_url)
        forwarder = _Forwarder(self, server)
        backoff = _MIN_BACKOFF
        try:
            while not self._stop.is_set():
                try:
                    moved = forwarder.step()
                except (ConnectionError, ServerError) as exc:
                    self._record_error(str(exc))
                    log.warning(
                        "forwarding to %s failed: %s (retry in %.2fs)",
                        self.server_url,
                        exc,
                        backoff,
                    )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                except StoreUnavailable:
                    if self._stop.is_set():
                        break
                    raise
                backoff = _MIN_BACKOFF
                if not moved:
                    self._wake.wait(_MIRROR_INTERVAL)
                    self._wake.clear()
        except Exception:
            log.exception("forwarder stopped by an unexpected error; pending spans stay queued")
            self._record_error("forwarder stopped by an unexpected error; see the receiver log")
        finally:
            forwarder.close()
            server.close()

    def _record_error(self, message: str) -> None:
        try:
            self._execute(
                "UPDATE forward_state SET last_error = ?, last_error_time = ? WHERE id = 1",
                (message[:500], time.time()),
            )
        except (StoreUnavailable, sqlite3.Error):
            pass

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """One autocommitted statement on the shared connection."""
        with self._lock:
            return self._connection().execute(sql, tuple(params)).fetchall()

    def _commit(self, statements: Sequence[tuple[str, Iterable[Any]]]) -> None:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    conn.execute(sql, tuple(params))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise


# A pending span: (rowid, rollout_id, attempt_id, sequence_id, resource_id, span bytes)
_Row = tuple[int, str, str, int, str, bytes]
# Where a local attempt goes on the server: (server rollout, server attempt)
_Target = tuple[str, str]


class _Forwarder:
    """Delivery state and steps; runs only on the store's delivery thread."""

    def __init__(self, store: ForwardingStore, server: LightningServer) -> None:
        self.store = store
        self.server = server
        self.targets: dict[tuple[str, str], _Target] = {}
        self.resources: dict[tuple[str, str, str], bytes] = {}
        self.id_attrs: dict[_Target, bytes] = {}
        self.next_mirror = 0.0
        self.sender = ThreadPoolExecutor(1, thread_name_prefix="lightning-otlp-send")
        self.in_flight: tuple[Future[None], list[_Row]] | None = None
        self.after = 0  # highest rowid sent or in flight
        # Spans per batch: halved while the server refuses a batch for good, to find the span
        # it refuses; grows back with each delivery.
        self.limit = store.batch_spans

    # One step: settle the batch in flight and send the next (True), or, with nothing pending,
    # mirror statuses (False). The next batch is read and encoded, and the previous one deleted,
    # while a request is with the server; only one request is ever in flight, so batches reach
    # the server in outbox order, and every other call to the server is made with none in
    # flight (a failure then leaves the delivered counts final).
    def step(self) -> bool:
        # Past the batch in flight; with none, from the start (rowids restart once the outbox
        # empties, so an old position would skip new spans).
        rows = self._batch(self.after if self.in_flight is not None else 0)
        locals_ = sorted({(r[1], r[2]) for r in rows})
        if self.in_flight is not None and any(t not in self.targets for t in locals_):
            if not self._settle(None):
                return True
        body = None
        if rows:
            for local in locals_:
                if local not in self.targets:
                    self.targets[local] = self._resolve(*local)
            body = self._encode(rows)
        if self.in_flight is not None:
            if not self._settle((body, rows) if body is not None else None):
                return True
        elif body is not None:
            self._mirror_now_and_then()
            self._send(body, rows)
        if self.in_flight is None:
            if self.store._pending != [0, 0]:
                # Keep the limit honest even if something else removed spans from the outbox.
                self.store._recount()
            self._mirror()
            return False
        return True

    def _settle(self, following: tuple[bytes, list[_Row]] | None) -> bool:
        """Wait for the batch in flight, send ``following``, then record the first delivered.

        False when the server turned out to have forgotten rollouts (their mapping is dropped
        and the spans go again, to re-created rollouts, from the next step), or refused the
        batch for good (it goes again in halves, down to the one span set aside).
        """
        assert self.in_flight is not None
        future, sent = self.in_flight
        self.in_flight = None
        try:
            future.result()
        except ServerError as exc:
            self.after = 0  # resend from the oldest pending span
            if 400 <= exc.status < 500 and exc.status not in _RETRYABLE_4XX:
                self._refused(sent, str(exc))
                return False
            if exc.status >= 500:
                if self._forget_lost({self.targets[(r[1], r[2])][0] for r in sent}):
                    return False
            raise
        except ConnectionError:
            self.after = 0  # resend from the oldest pending span
            raise
        self._mirror_now_and_then()
        if following is not None:
            self._send(*following)
        self._delivered(sent)
        return True

    def _mirror_now_and_then(self) -> None:
        if time.monotonic() >= self.next_mirror:
            self._mirror()

    def _send(self, body: bytes, rows: list[_Row]) -> None:
        self.in_flight = (self.sender.submit(self.server.export, body), rows)
        self.after = rows[-1][0]

    def close(self) -> None:
        """Stop without waiting: a request left in flight is sent again next time."""
        self.sender.shutdown(wait=False, cancel_futures=True)

    def _batch(self, after: int) -> list[_Row]:
        store = self.store
        now = time.time()
        with store._lock:
            if store.affinity.holding(now):
                # Spans of a trace not yet bound wait out the affinity window here, so the
                # server never receives a span in a rollout it is about to leave.
                rows = (
                    store._connection()
                    .execute(
                        "SELECT s.rowid, s.rollout_id, s.attempt_id, s.sequence_id,"
                        " s.resource_id, s.span FROM spans s"
                        " JOIN rollouts r ON r.rollout_id = s.rollout_id"
                        " WHERE s.rowid > ? AND NOT (r.origin = 'trace' AND r.created_at > ?)"
                        " ORDER BY s.rowid LIMIT ?",
                        (after, now - store.affinity.window, self.limit),
                    )
                    .fetchall()
                )
            else:
                rows = (
                    store._connection()
                    .execute(
                        "SELECT rowid, rollout_id, attempt_id, sequence_id, resource_id, span"
                        " FROM spans WHERE rowid > ? ORDER BY rowid LIMIT ?",
                        (after, self.limit),
                    )
                    .fetchall()
                )
        size = 0
        for i, row in enumerate(rows):
            size += len(row[5])
            if size > DEFAULT_BATCH_BYTES and i:
                return rows[:i]
        return rows

    def _refused(self, sent: list[_Row], error: str) -> None:
        """The server refused a batch for good: narrow it down to one span, and set that aside."""
        if len(sent) > 1:
            self.limit = max(1, len(sent) // 2)
            log.warning(
                "the server refused %d spans (%s); sending smaller batches to find the span",
                len(sent),
                error,
            )
            return
        self.limit = self.store.batch_spans
        (row,) = sent
        log.error("the server refused span rowid %d for good (%s); kept as rejected", row[0], error)
        store = self.store
        with store._lock:
            conn = store._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO forward_rejected (rollout_id, attempt_id, sequence_id, trace_id,"
                    " span_id, span, resource_id, error, time) SELECT rollout_id, attempt_id,"
                    " sequence_id, trace_id, span_id, span, resource_id, ?, ? FROM spans"
                    " WHERE rowid = ?",
                    (error[:500], time.time(), row[0]),
                )
                conn.execute("DELETE FROM spans WHERE rowid = ?", (row[0],))
                conn.execute(
                    "UPDATE forward_state SET last_error = ?, last_error_time = ? WHERE id = 1",
                    (f"refused for good, kept as rejected: {error}"[:500], time.time()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            store._pending[0] -= 1
            store._pending[1] -= len(row[5])

    def _delivered(self, rows: list[_Row]) -> None:
        size = sum(len(r[5]) for r in rows)
        self.limit = min(self.store.batch_spans, self.limit * 2)
        store = self.store
        with store._lock:
            conn = store._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                first, last = rows[0][0], rows[-1][0]
                conn.execute(
                    "INSERT OR IGNORE INTO forward_traces (trace_id, rollout_id, attempt_id, time)"
                    " SELECT s.trace_id, s.rollout_id, s.attempt_id, ? FROM spans s"
                    " JOIN rollouts r ON r.rollout_id = s.rollout_id AND r.origin = 'explicit'"
                    " WHERE s.rowid IN (SELECT value FROM json_each(?))",
                    (time.time(), json.dumps([r[0] for r in rows])),
                )
                if last - first + 1 == len(rows):  # the usual case: one contiguous range
                    conn.execute("DELETE FROM spans WHERE rowid BETWEEN ? AND ?", (first, last))
                else:
                    conn.executemany("DELETE FROM spans WHERE rowid = ?", ((r[0],) for r in rows))
                conn.execute(
                    "DELETE FROM forward_marks WHERE max_rowid <"
                    " COALESCE((SELECT MIN(rowid) FROM spans), 9223372036854775807)"
                )
                conn.execute(
                    "UPDATE forward_state SET forwarded_spans = forwarded_spans + ?,"
                    " forwarded_requests = forwarded_requests + 1, last_forward_time = ?"
                    " WHERE id = 1",
                    (len(rows), time.time()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            store._pending[0] -= len(rows)
            store._pending[1] -= size

    # -- encoding: stored span bytes, plus server ids and sequence ids, as OTLP protobuf ---

    def _encode(self, rows: list[_Row]) -> bytes:
        groups: dict[tuple[str, str, str], list[bytes]] = {}
        order = sorted(rows, key=_by_attempt_and_sequence)
        targets = self.targets
        id_attrs = self.id_attrs
        seq_attr = _seq_attr
        for _, rollout_id, attempt_id, seq, resource_id, span in order:
            target = targets[(rollout_id, attempt_id)]
            extra = seq_attr(seq)
            if _ID_NEEDLE in span:
                # Span attributes win over resource ones on the server: point them at it too.
                ids = id_attrs.get(target)
                if ids is None:
                    ids = id_attrs[target] = _kv_str(_ROLLOUT_KEY, target[0]) + _kv_str(
                        _ATTEMPT_KEY, target[1]
                    )
                extra += ids
            key = (target[0], target[1], resource_id)
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            body = span + extra
            group.append(_SPAN_TAG + _varint(len(body)) + body)
        out = []
        for key, spans in groups.items():
            resource = self.resources.get(key)
            if resource is None:
                resource = self.resources[key] = self._resource(*key)
            scope_spans = _field(2, b"".join(spans))
            out.append(_field(1, resource + scope_spans))
        return b"".join(out)

    def _resource(self, server_rollout: str, server_attempt: str, resource_id: str) -> bytes:
        """ResourceSpans' resource and schema_url fields, ids set to the server's."""
        found = self.store._execute(
            "SELECT body FROM resources WHERE resource_id = ?", (resource_id,)
        )
        body: dict[str, Any] = json.loads(found[0][0]) if found else {}
        attrs = {
            k: v
            for k, v in (body.get("attributes") or {}).items()
            if k not in (semconv.ROLLOUT_ID, semconv.ATTEMPT_ID, semconv.SPAN_SEQUENCE_ID)
        }
        attrs[semconv.ROLLOUT_ID] = server_rollout
        attrs[semconv.ATTEMPT_ID] = server_attempt
        resource = PB2Resource(
            attributes=[PB2KeyValue(key=k, value=_any_value(v)) for k, v in attrs.items()]
        )
        out = _field(1, resource.SerializeToString())
        schema_url = body.get("schema_url") or ""
        if schema_url:
            out += _field(3, schema_url.encode())
        return out

    # -- ids: local -> server --------------------------------------------------------------

    def _resolve(self, rollout_id: str, attempt_id: str) -> _Target:
        store = self.store
        found = store._execute(
            "SELECT r.server_rollout_id, a.server_attempt_id FROM forward_rollouts r"
            " JOIN forward_attempts a ON a.rollout_id = r.rollout_id"
            " WHERE r.rollout_id = ? AND a.attempt_id = ?"
            " AND r.server_rollout_id IS NOT NULL AND a.server_attempt_id IS NOT NULL",
            (rollout_id, attempt_id),
        )
        if found:
            return found[0][0], found[0][1]
        server_rollout = self._resolve_rollout(rollout_id)
        return server_rollout, self._resolve_attempt(rollout_id, attempt_id, server_rollout)

    def _resolve_rollout(self, rollout_id: str) -> str:
        store = self.store
        row = store._execute(
            "SELECT server_rollout_id, link, requested FROM forward_rollouts WHERE rollout_id = ?",
            (rollout_id,),
        )
        if row and row[0][0] is not None:
            return str(row[0][0])
        if row:
            # A creation request was in doubt when the last process stopped: look for it.
            adopted = self._find_linked(row[0][1], row[0][2])
            if adopted is not None:
                return self._adopt(rollout_id, adopted, created=True)
        existing = self.server.rollouts([rollout_id]).get(rollout_id)
        if existing is not None:
            # Usually a runner made it and passed its ids to the agent: forward under them.
            return self._adopt(rollout_id, existing, created=False)
        return self._create_rollout(rollout_id)

    def _create_rollout(self, rollout_id: str) -> str:
        store = self.store
        local = store._execute(
            "SELECT input, mode, metadata FROM rollouts WHERE rollout_id = ?", (rollout_id,)
        )
        input_json, mode, metadata_json = local[0] if local else (None, None, None)
        link = uuid.uuid4().hex
        metadata = json.loads(metadata_json) if metadata_json else {}
        if not isinstance(metadata, dict):
            metadata = {"value": metadata}
        ours = dict(metadata.get("lightning_otlp") or {})
        ours.update({"rollout_id": rollout_id, "link": link})
        metadata["lightning_otlp"] = ours
        store._commit(
            [
                ("DELETE FROM forward_rollouts WHERE rollout_id = ?", (rollout_id,)),
                ("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)),
                (
                    "INSERT INTO forward_rollouts (rollout_id, link, requested) VALUES (?, ?, ?)",
                    (rollout_id, link, time.time()),
                ),
            ]
        )
        body: dict[str, Any] = {
            "input": json.loads(input_json) if input_json is not None else None,
            "mode": mode,
            "metadata": metadata,
        }
        created = self.server.create_rollout(body)
        return self._adopt(rollout_id, created, created=True)

    def _adopt(self, rollout_id: str, record: dict[str, Any], *, created: bool) -> str:
        server_rollout = str(record["rollout_id"])
        attempt = record.get("attempt") or {}
        spare = attempt.get("attempt_id") if created else None
        status = _settled(record.get("status"))
        self.store._commit(
            [
                ("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)),
                (
                    "INSERT INTO forward_rollouts (rollout_id, server_rollout_id, spare_attempt_id,"
                    " link, requested, mirrored_status) VALUES (?, ?, ?, '', ?, ?)"
                    " ON CONFLICT (rollout_id) DO UPDATE SET"
                    " server_rollout_id = excluded.server_rollout_id,"
                    " spare_attempt_id = excluded.spare_attempt_id,"
                    " mirrored_status = excluded.mirrored_status",
                    (rollout_id, server_rollout, spare, time.time(), status),
                ),
            ]
            + (
                [
                    (
                        "UPDATE forward_state SET rollouts_created = rollouts_created + 1"
                        " WHERE id = 1",
                        (),
                    )
                ]
                if created
                else []
            )
        )
        return server_rollout

    def _find_linked(self, link: str, since: float) -> dict[str, Any] | None:
        """The server rollout whose metadata carries ``link``, newest first, back to ``since``."""
        offset, page = 0, 200
        while True:
            items = self.server.recent_rollouts(offset, page)
            for item in items:
                ours = (item.get("metadata") or {}).get("lightning_otlp") or {}
                if ours.get("link") == link:
                    return item
            if len(items) < page or (items and items[-1]["start_time"] < since - 60):
                return None
            offset += page

    def _resolve_attempt(self, rollout_id: str, attempt_id: str, server_rollout: str) -> str:
        store = self.store
        row = store._execute(
            "SELECT server_attempt_id, known_attempts FROM forward_attempts"
            " WHERE rollout_id = ? AND attempt_id = ?",
            (rollout_id, attempt_id),
        )
        if row and row[0][0] is not None:
            return str(row[0][0])
        in_doubt = row[0][1] if row else None
        spare = store._execute(
            "SELECT spare_attempt_id FROM forward_rollouts WHERE rollout_id = ?", (rollout_id,)
        )
        if in_doubt is None and spare and spare[0][0] is not None:
            # The first attempt of a rollout created here goes to the first local attempt seen.
            clear = (
                "UPDATE forward_rollouts SET spare_attempt_id = NULL WHERE rollout_id = ?",
                (rollout_id,),
            )
            return self._bind(rollout_id, attempt_id, spare[0][0], "preparing", clear)
        attempts = self.server.attempts(server_rollout)
        if in_doubt is not None and len(attempts) > in_doubt:
            # Our creation request went through before the last process stopped.
            made = sorted(attempts, key=lambda a: a["sequence_id"])[in_doubt]
            return self._bind(rollout_id, attempt_id, made["attempt_id"], made["status"])
        same = next((a for a in attempts if a["attempt_id"] == attempt_id), None)
        if same is not None and server_rollout == rollout_id:
            return self._bind(rollout_id, attempt_id, attempt_id, same["status"])
        store._commit(
            [
                (
                    "INSERT OR REPLACE INTO forward_attempts (rollout_id, attempt_id,"
                    " known_attempts) VALUES (?, ?, ?)",
                    (rollout_id, attempt_id, len(attempts)),
                )
            ]
        )
        made = self.server.create_attempt(server_rollout)["attempt"]
        return self._bind(rollout_id, attempt_id, made["attempt_id"], made["status"])

    def _bind(
        self,
        rollout_id: str,
        attempt_id: str,
        server_attempt: str,
        status: str | None,
        *also: tuple[str, Iterable[Any]],
    ) -> str:
        self.store._commit(
            [
                (
                    "INSERT OR REPLACE INTO forward_attempts (rollout_id, attempt_id,"
                    " server_attempt_id, mirrored_status) VALUES (?, ?, ?, ?)",
                    (rollout_id, attempt_id, server_attempt, _settled(status)),
                ),
                *also,
            ]
        )
        return str(server_attempt)

    def _forget_lost(self, server_rollouts: set[str]) -> bool:
        """After a 5xx: drop the mapping of server rollouts the server no longer knows."""
        known = self.server.rollouts(server_rollouts)
        lost = server_rollouts - known.keys()
        if not lost:
            return False
        marks = ",".join("?" * len(lost))
        store = self.store
        locals_ = [
            r[0]
            for r in store._execute(
                f"SELECT rollout_id FROM forward_rollouts WHERE server_rollout_id IN ({marks})",
                lost,
            )
        ]
        statements: list[tuple[str, Iterable[Any]]] = []
        for rollout_id in locals_:
            statements.append(("DELETE FROM forward_rollouts WHERE rollout_id = ?", (rollout_id,)))
            statements.append(("DELETE FROM forward_attempts WHERE rollout_id = ?", (rollout_id,)))
        statements.append(
            (
                "UPDATE forward_state SET rollouts_recreated = rollouts_recreated + ? WHERE id = 1",
                (len(locals_),),
            )
        )
        store._commit(statements)
        self.targets = {k: v for k, v in self.targets.items() if v[0] not in lost}
        self.resources = {k: v for k, v in self.resources.items() if k[0] not in lost}
        log.warning("server forgot %d rollout(s); re-creating them", len(lost))
        return True

    # -- statuses: local changes mirrored with the server's update endpoints ---------------

    def _mirror(self) -> None:
        self.next_mirror = time.monotonic() + _MIRROR_INTERVAL
        store = self.store
        attempts = store._execute(
            "SELECT a.rollout_id, a.attempt_id, a.status, r.server_rollout_id, f.server_attempt_id"
            " FROM forward_attempts f"
            " JOIN attempts a ON a.rollout_id = f.rollout_id AND a.attempt_id = f.attempt_id"
            " JOIN forward_rollouts r ON r.rollout_id = f.rollout_id"
            " WHERE f.server_attempt_id IS NOT NULL AND r.server_rollout_id IS NOT NULL"
            " AND a.status IS NOT f.mirrored_status"
        )
        for rollout_id, attempt_id, status, server_rollout, server_attempt in attempts:
            self._update(self.server.update_attempt, server_rollout, server_attempt, status)
            self._mirrored(
                "UPDATE forward_attempts SET mirrored_status = ?"
                " WHERE rollout_id = ? AND attempt_id = ?",
                (status, rollout_id, attempt_id),
            )
        rollouts = store._execute(
            "SELECT r.rollout_id, r.status, f.server_rollout_id FROM forward_rollouts f"
            " JOIN rollouts r ON r.rollout_id = f.rollout_id"
            " WHERE f.server_rollout_id IS NOT NULL AND r.status IS NOT f.mirrored_status"
        )
        for rollout_id, status, server_rollout in rollouts:
            self._update(self.server.update_rollout, server_rollout, status)
            self._mirrored(
                "UPDATE forward_rollouts SET mirrored_status = ? WHERE rollout_id = ?",
                (status, rollout_id),
            )

    @staticmethod
    def _update(call: Any, *args: str) -> None:
        """One status update; one the server refuses for good is logged, not retried forever."""
        try:
            call(*args)
        except ServerError as exc:
            if exc.status >= 500:
                raise
            log.warning("server refused status update %s: %s", args, exc)

    def _mirrored(self, sql: str, params: tuple[Any, ...]) -> None:
        self.store._commit(
            [
                (sql, params),
                ("UPDATE forward_state SET status_updates = status_updates + 1 WHERE id = 1", ()),
            ]
        )


def _settled(status: Any) -> str | None:
    """A server status as the receiver would call it: it reports a starting one as running."""
    if status is None:
        return None
    return "running" if status in _STARTING else str(status)


# -- protobuf wire format, for the few fields added to stored span bytes --------------------


_BYTES: Final = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _BYTES[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


_SEQ_KEY: Final = _field(1, semconv.SPAN_SEQUENCE_ID.encode())
_SPAN_TAG: Final = _varint(2 << 3 | 2)  # ScopeSpans.spans
_seq_attrs: dict[int, bytes] = {}


def _seq_attr(seq: int) -> bytes:
    """The ``agentlightning.span_sequence_id`` span attribute, memoised: values repeat a lot."""
    found = _seq_attrs.get(seq)
    if found is None:
        if len(_seq_attrs) > 100_000:
            _seq_attrs.clear()
        found = _seq_attrs[seq] = _kv_int(_SEQ_KEY, seq)
    return found


def _by_attempt_and_sequence(row: _Row) -> tuple[str, str, int]:
    return row[1], row[2], row[3]


_ROLLOUT_KEY: Final = _field(1, semconv.ROLLOUT_ID.encode())
_ATTEMPT_KEY: Final = _field(1, semconv.ATTEMPT_ID.encode())


def _kv_int(key: bytes, value: int) -> bytes:
    """A span attribute (Span field 9) with an int value (AnyValue field 3)."""
    return _field(9, key + _field(2, b"\x18" + _varint(value)))


def _kv_str(key: bytes, value: str) -> bytes:
    return _field(9, key + _field(2, _field(1, value.encode())))


def _any_value(value: Any) -> PB2AnyValue:
    out = PB2AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, (list, tuple)):
        out.array_value.values.extend(_any_value(v) for v in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(
            PB2KeyValue(key=str(k), value=_any_value(v)) for k, v in value.items()
        )
    elif value is not None:
        out.string_value = str(value)
    return out


def forwarding_store(
    url: str, *, forward: bool = True, affinity_window: float = DEFAULT_AFFINITY_WINDOW
) -> ForwardingStore:
    """The store an ``agl+http://HOST:PORT?outbox=…&max_outbox_spans=…`` URL names."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"store URL {url!r} names no server (try agl+http://127.0.0.1:4747)")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - _URL_OPTIONS
    if unknown:
        raise ValueError(
            f"store URL {url!r}: unknown option(s) {', '.join(sorted(unknown))};"
            f" known: {', '.join(sorted(_URL_OPTIONS))}"
        )
    scheme = parts.scheme.removeprefix("agl+")
    try:
        return ForwardingStore(
            f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}",
            query.get("outbox", DEFAULT_OUTBOX),
            max_outbox_spans=int(query.get("max_outbox_spans", DEFAULT_MAX_OUTBOX_SPANS)),
            max_outbox_bytes=int(query.get("max_outbox_bytes", DEFAULT_MAX_OUTBOX_BYTES)),
            batch_spans=int(query.get("batch_spans", DEFAULT_BATCH_SPANS)),
            max_backoff=float(query.get("max_backoff", DEFAULT_MAX_BACKOFF)),
            synchronous=query.get("synchronous", "FULL"),
            forward=forward,
            url=url,
            affinity_window=affinity_window,
        )
    except ValueError as exc:
        raise ValueError(f"store URL {url!r}: {exc}") from None


_URL_OPTIONS: Final = frozenset(
    {"outbox", "max_outbox_spans", "max_outbox_bytes", "batch_spans", "max_backoff", "synchronous"}
)


def store_status(url: str, *, probe: bool = True) -> dict[str, Any]:
    """What ``lightning-otlp status`` prints: read from the outbox, plus a server health probe.

    Reads the file without taking its write lock and never forwards anything, so it is safe
    (and cheap) beside a running receiver.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("agl+http", "agl+https"):
        from ..store import open_store

        plain = open_store(url)
        plain.open()
        try:
            return {"store": url, "spans": sum(1 for _ in plain.spans())}
        finally:
            plain.close()
    store = forwarding_store(url, forward=False)
    path = os.path.abspath(store.path)
    report: dict[str, Any] = {"store": url, "outbox": path}
    if not os.path.exists(path):
        raise ValueError(f"no outbox at {path}: has a receiver with this store URL run here?")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        report.update(read_status(conn))
    except sqlite3.OperationalError as exc:
        raise ValueError(f"{path} is not a lightning-otlp outbox ({exc})") from None
    finally:
        conn.close()
    if probe:
        server = LightningServer(store.server_url, timeout=3.0)
        try:
            report["server_reachable"] = server.health()
        finally:
            server.close()
    return report
