"""Stored spans read as records: kept from an earlier read, prepared (``store.views``), or built,
a part at a time in paced turns on read threads.

Building a record (protobuf to attributes, translation) costs far more than reading it, and
views are built only while no request waits for the store thread, so under sustained ingest they
lag. A client that reads a large rollout again and again (a trainer polling, a dashboard left
open, or a hostile client) would pay the build for every span on every read. So each record
built is kept in memory (``ReadCache``), encoded as a view's body (the record less its rollout,
attempt and sequence id, spliced in at read time), under the same rule as a view: used only for
a span with no GenAI log records and no model-call children at the time of the read, and only
while the row it was built from still holds that span.

The cache is bounded by bytes. A read larger than the cache never evicts what it has itself
used: it keeps the part that fits and builds the rest, so a whole rollout read over and over
still finds that part each time (a plain least-recently-used cache would find nothing).

Even with every record kept, a whole rollout of tens of thousands of spans costs the interpreter
a few microseconds a span in lookups and splicing, and a client reading it back to back would
take that from ingest for as long as it likes. On a read thread the whole read therefore goes in
turns of ``views.READ_PACE`` (one to look up each part of ``READ_PART`` spans, one for each
``views.BUILD_CHUNK`` built), so all reads together take at most their share while spans are
being committed.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any, Final

from . import views
from .dialect import Conn, chunks
from .lightning import Record
from .logs import joined_events
from .records import SPAN_COLUMNS, enclosing_spans, given_record, resource_bodies, span_records

# Bytes of encoded records kept per store: about 25,000 model-call spans.
CACHE_BYTES: Final = 32 << 20
# What an entry costs beyond its body (the key, the tuple, the dictionary's slot).
_OVERHEAD: Final = 150
# Spans looked up (kept, prepared, or to build) in one turn: one SQL chunk.
READ_PART: Final = 500
# A span's whole row: ``SPAN_COLUMNS`` then ``record`` (a span added through the API).
SPAN_ROW: Final = ", ".join("s." + c.strip() for c in SPAN_COLUMNS.split(",")) + ", s.record"
_IDS: Final = ("rollout_id", "attempt_id", "sequence_id")

Key = tuple[int, bytes, bytes]  # span rowid, trace id, span id


class ReadCache:
    """Encoded records by span (rowid, trace id, span id), least recently used dropped first;
    safe to share between read threads."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        self.limit = limit
        self.used = 0
        self._entries: OrderedDict[Key, tuple[bytes, int]] = OrderedDict()  # body, read mark
        self._lock = threading.Lock()
        self._reads = itertools.count(1)

    def read(self) -> int:
        """A mark for one read: entries it gets or puts are not evicted by its own puts."""
        return next(self._reads)

    def get(self, keys: list[Key], mark: int) -> dict[Key, bytes]:
        """The bodies kept for these spans."""
        found: dict[Key, bytes] = {}
        with self._lock:
            entries = self._entries
            for key in keys:
                entry = entries.get(key)
                if entry is not None:
                    entries.move_to_end(key)
                    entries[key] = (entry[0], mark)
                    found[key] = entry[0]
        return found

    def put(self, items: list[tuple[Key, bytes]], mark: int) -> None:
        """Keep these bodies while room can be made without evicting this read's entries."""
        with self._lock:
            entries = self._entries
            for key, body in items:
                size = len(body) + _OVERHEAD
                if size > self.limit:
                    continue
                previous = entries.pop(key, None)
                if previous is not None:
                    self.used -= len(previous[0]) + _OVERHEAD
                while self.used + size > self.limit:
                    oldest, (old_body, old_mark) = next(iter(entries.items()))
                    if old_mark == mark:
                        return  # full of this read's own spans: the rest is built each time
                    del entries[oldest]
                    self.used -= len(old_body) + _OVERHEAD
                entries[key] = (body, mark)
                self.used += size

    def __len__(self) -> int:
        return len(self._entries)


def span_items(
    conn: Conn,
    leads: list[Any],
    *,
    encoded: bool,
    translate: bool,
    cache: ReadCache,
    share: float | None,
) -> list[Record | bytes]:
    """Spans (rows of ``rowid, rollout_id, attempt_id, sequence_id, trace_id, span_id,
    record``) as agentlightning ``Span`` dicts, model calls translated with ``translate``;
    with ``encoded`` (and ``translate``), a span kept or prepared is its JSON, ready to send,
    and each one built is kept. A span added through the API is its ``record``, read with its
    lead: no second round trip for it. With a ``share`` (on a read thread), in turns of
    ``views.READ_PACE`` keeping to that share."""
    turn: Callable[[], AbstractContextManager[None]] = (
        nullcontext if share is None else partial(views.READ_PACE.turn, share)
    )
    mark = cache.read()
    out: list[Record | bytes] = []
    for start in range(0, len(leads), READ_PART):
        with turn():
            part = _Part(conn, leads[start : start + READ_PART], encoded, translate)
            part.look_up(cache, mark)
        todo = list(part.build.items())
        for first in range(0, len(todo), views.BUILD_CHUNK):
            with turn():
                part.built(conn, todo[first : first + views.BUILD_CHUNK], cache, mark)
        out.extend(item for item in part.items if item is not None)
    return out


class _Part:
    """Up to ``READ_PART`` spans of one read: what is kept or prepared, then what is built."""

    def __init__(self, conn: Conn, leads: list[Any], encoded: bool, translate: bool) -> None:
        self.leads = leads
        self.logs: dict[Any, list[dict[str, Any]]] | None = None
        self.enclosing: set[tuple[bytes, bytes]] = set()
        if translate:
            traces = {lead[4] for lead in leads if lead[6] is None}
            self.logs = joined_events(conn, traces)
            self.enclosing = enclosing_spans(conn, traces)
        self.conn = conn
        self.encoded = encoded
        self.keep: dict[int, Key] = {}  # spans whose records may be kept once built, by rowid
        self.items: list[Record | bytes | None] = []
        self.build: dict[int, int] = {}  # position in ``items``: rowid

    def look_up(self, cache: ReadCache, mark: int) -> None:
        bodies: dict[int, bytes] = {}
        logs, enclosing = self.logs, self.enclosing
        if self.encoded and logs is not None:
            self.keep = {
                lead[0]: (lead[0], lead[4], lead[5])
                for lead in self.leads
                if lead[6] is None
                and (lead[4], lead[5]) not in logs
                and (lead[4], lead[5]) not in enclosing
            }
            kept = cache.get(list(self.keep.values()), mark)
            bodies = {key[0]: body for key, body in kept.items()}
            wanted = {
                lead[0]: (lead[1], lead[5])
                for lead in self.leads
                if lead[0] in self.keep and lead[0] not in bodies
            }
            bodies.update(views.current(self.conn, wanted))
        for lead in self.leads:
            body = bodies.get(lead[0])
            if body is not None:
                self.items.append(views.spliced(lead[1], lead[2], lead[3], body))
            elif lead[6] is not None:
                self.items.append(given_record(lead[6], lead[1:4]))
            else:
                self.build[len(self.items)] = lead[0]
                self.items.append(None)

    def built(self, conn: Conn, chunk: list[tuple[int, int]], cache: ReadCache, mark: int) -> None:
        """Build these (position, rowid) spans' records; keep those that may be kept."""
        rows = {
            rowid: row[1:]
            for rowid, row in span_rows(conn, f"s.rowid, {SPAN_ROW}", [r for _, r in chunk]).items()
        }
        wanted = {row[11] for row in rows.values() if row[12] is None}
        resources = resource_bodies(conn, wanted)
        kept: list[tuple[Key, bytes]] = []
        for i, rowid in chunk:
            row = rows.get(rowid)
            if row is None:  # deleted since the page was read (its snapshot may have ended)
                continue
            record = span_records(row, resources, self.logs, self.enclosing)
            self.items[i] = record
            if rowid in self.keep:
                body = _view_body(record)
                if body is not None:  # sent as kept: encoded once, not again for the answer
                    kept.append((self.keep[rowid], body))
                    ids = record["rollout_id"], record["attempt_id"], record["sequence_id"]
                    self.items[i] = views.spliced(*ids, body)
        cache.put(kept, mark)


def _view_body(record: Record) -> bytes | None:
    """A record as a view's body, to keep; None when orjson cannot write it (an integer past
    64 bits: the stdlib writes it at each read)."""
    body = dict(record)
    for key in _IDS:
        del body[key]
    try:
        return views.encode(body)
    except TypeError:
        return None


def span_rows(conn: Conn, columns: str, rowids: list[int]) -> dict[int, Any]:
    """``columns`` (the first one ``s.rowid``) of these spans, by rowid."""
    rows: dict[int, Any] = {}
    for chunk in chunks(rowids):
        for row in conn.execute(
            f"SELECT {columns} FROM spans s WHERE s.rowid IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            rows[row[0]] = row
    return rows


__all__ = ["CACHE_BYTES", "READ_PART", "ReadCache", "span_items", "span_rows"]
