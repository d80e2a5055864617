"""Span records prepared ahead of reads: each OTLP span's record as JSON, built in the background.

Building a record (protobuf to attributes, translation) costs far more than reading it, so
reading one rollout's spans back (the trainer's ``query_spans``, the dashboard) would spend most
of its time there. The store builds the records in the background, between commits, newest
spans first, and keeps them in ``span_views``; a read splices the span's current rollout,
attempt and sequence id in front (they change when a trace's spans move) and sends the bytes
as they are.

A view is only a cache: it is used when its version matches this code (any change to the
record or translation code makes another version), when its span id matches the span it is
keyed by, and when the span has no GenAI log records (those are joined at read time, whichever
arrives first) and no model-call children (``records.mark_enclosing``: they may arrive after its
view was built). Anything else is built at read time as before, so a view can never be wrong,
only missing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson

from .. import otlp
from .. import translate as translate_package
from . import records
from .dialect import Conn
from .logs import joined_events
from .records import SPAN_COLUMNS, enclosing_spans, resource_bodies, span_records

_IDS: Final = ("rollout_id", "attempt_id", "sequence_id")


def _code_version() -> int:
    """A digest of the code that shapes a span's record: views built by other code are stale."""
    digest = hashlib.blake2b(digest_size=8)
    package = Path(translate_package.__file__).parent
    for path in [Path(records.__file__), Path(otlp.__file__), *sorted(package.glob("*.py"))]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return int.from_bytes(digest.digest(), "big", signed=True)


VERSION: Final = _code_version()
_CHUNK: Final = 500


def encode(record: dict[str, Any]) -> bytes:
    """A record as the API sends it (orjson, as ``api.bodies.json_response``)."""
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)


def current(conn: Conn, spans: dict[int, tuple[str, bytes]]) -> dict[int, bytes]:
    """The current views of these spans (rowid: their rollout and span id), by rowid; a view
    of another version, rollout or span id (a rowid reused, a span moved) is not one."""
    out: dict[int, bytes] = {}
    by_rollout: dict[str, list[int]] = {}
    for rowid, (rollout_id, _) in spans.items():
        by_rollout.setdefault(rollout_id, []).append(rowid)
    for rollout_id, rowids in by_rollout.items():
        for start in range(0, len(rowids), _CHUNK):
            chunk = rowids[start : start + _CHUNK]
            for rowid, span_id, body in conn.execute(
                "SELECT span_rowid, span_id, body FROM span_views WHERE rollout_id = ?"
                f" AND version = ? AND span_rowid IN ({', '.join('?' * len(chunk))})",
                (rollout_id, VERSION, *chunk),
            ):
                if spans[rowid][1] == span_id:
                    out[rowid] = body
    return out


def spliced(rollout_id: str, attempt_id: str, sequence_id: int, body: bytes) -> bytes:
    """A view's body with the span's current ids in front: the whole record's JSON."""
    return b'{"rollout_id":%b,"attempt_id":%b,"sequence_id":%d,%b' % (
        orjson.dumps(rollout_id),
        orjson.dumps(attempt_id),
        sequence_id,
        body[1:],
    )


def build(conn: Conn, after: int, *, window: int, limit: int) -> tuple[int, int]:
    """Build the missing views of spans with rowids in ``(after, after + window]``, at most
    ``limit`` of them, in the caller's transaction; return the rowid reached and how many were
    built. The window bounds the rows one step scans, whatever is already built."""
    top = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM spans").fetchone()[0]
    if after >= top:
        return after, 0
    columns = ", ".join("s." + c.strip() for c in SPAN_COLUMNS.split(","))
    rows = conn.execute(
        f"SELECT s.rowid, {columns}, s.record FROM spans s LEFT JOIN span_views v"
        " ON v.rollout_id = s.rollout_id AND v.span_rowid = s.rowid AND v.version = ?"
        " AND v.span_id = s.span_id"
        " WHERE s.rowid > ? AND s.rowid <= ? AND s.record IS NULL AND v.span_rowid IS NULL"
        " ORDER BY s.rowid LIMIT ?",
        (VERSION, after, after + window, limit),
    ).fetchall()
    reached = rows[-1][0] if len(rows) == limit else min(after + window, top)
    if not rows:
        return reached, 0
    resources = resource_bodies(conn, {row[12] for row in rows})
    traces = {row[4] for row in rows}
    logs = joined_events(conn, traces)
    enclosing = enclosing_spans(conn, traces)
    built = []
    for row in rows:
        if (row[4], row[5]) in logs or (row[4], row[5]) in enclosing:
            continue  # built at read time: log records joined, or never a model call
        record = span_records(row[1:], resources, {})
        for key in _IDS:
            del record[key]
        try:
            body = encode(record)
        except TypeError:
            continue  # an integer past 64 bits: read time writes it with the stdlib
        built.append((row[1], row[0], VERSION, row[5], body))
    conn.executemany(
        "INSERT INTO span_views (rollout_id, span_rowid, version, span_id, body)"
        f" VALUES (?, ?, ?, ?, ?) ON CONFLICT ({conn.dialect.view_key}) DO UPDATE SET"
        " rollout_id = excluded.rollout_id, version = excluded.version,"
        " span_id = excluded.span_id, body = excluded.body",
        built,
    )
    return reached, len(built)


# -- reads building what has no view -------------------------------------------------------
#
# A bound on the interpreter time that reads spend building span records: a span without a
# current view is built in Python at read time, and a read of a whole rollout (``limit=-1``,
# which upstream allows) may build tens of thousands. The read threads would then hold the
# interpreter lock most of the time, and the event loop and the store thread, which hand the
# lock back and forth around every SQLite call, would wait up to a switch interval (5 ms) for
# it each time: ingest slows far more than the read's CPU share suggests. So records are built
# in chunks, one chunk at a time across all read threads, and after each the builder rests for
# a multiple of the CPU time the chunk took, while the store is ingesting: a client reading whole
# rollouts over and over then takes a tenth of the interpreter, not the honest exports' share. A
# read of a few hundred spans is barely slowed; a whole large rollout takes longer while spans
# arrive, and as long as it needs when none have for a second (nothing to give way to).

# Records built per turn; the share of the interpreter all reads' building may take while spans
# are being committed, and the smaller share of a whole-rollout read's later slices (a bulk
# export, never a trainer's page: it gives way more); and how long after a commit the store
# still counts as ingesting.
BUILD_CHUNK: Final = 100
BUILD_SHARE: Final = 0.1
SLICE_SHARE: Final = 0.05
INGEST_SECONDS: Final = 1.0


class Pace:
    """Turns to build records: one thread at a time, a rest between turns while the store
    ingests (``ingesting`` marks each commit). The rest a turn earns is taken before the next
    turn, not after its own: a read of one turn (a trainer's rollout) is answered at once, and
    turns one after another (a whole large rollout, many readers) still keep to the share."""

    def __init__(self, share: float = BUILD_SHARE) -> None:
        self._rest = _rest(share)
        self._lock = threading.Lock()
        self._ingested_at = -INGEST_SECONDS
        self._next_at = 0.0  # monotonic time before which no turn starts while ingesting

    def ingesting(self) -> None:
        """Spans were just committed: reads give way for the next ``INGEST_SECONDS``."""
        self._ingested_at = time.monotonic()

    def _giving_way(self) -> bool:
        return time.monotonic() - self._ingested_at < INGEST_SECONDS

    @contextmanager
    def turn(self, share: float | None = None) -> Iterator[None]:
        """Build inside; the turn waits out the rest the previous one earned, holding the
        turn, so several read threads together never build for more than their share. A turn
        may ask for a smaller ``share`` than the pace's (it then earns a longer rest), never a
        larger one."""
        rest = self._rest if share is None else max(self._rest, _rest(share))
        with self._lock:
            if self._giving_way():
                wait = self._next_at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            started = time.thread_time()
            try:
                yield
            finally:
                used = time.thread_time() - started
                giving_way = self._giving_way()
                self._next_at = time.monotonic() + used * rest if giving_way else 0.0


def _rest(share: float) -> float:
    """The rest a turn earns per second of CPU time it took, to keep to ``share``."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share}")
    return (1 - share) / share


READ_PACE: Final = Pace()
