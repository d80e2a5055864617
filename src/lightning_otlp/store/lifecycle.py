"""The rollout and attempt lifecycle, once, for every backend and both ways in (the API and
OTLP-carried outcomes).

Mirrors agentlightning 0.3.0 ``store/collection_based.py``: queuing -> preparing -> running ->
succeeded / failed / cancelled, requeuing by ``RolloutConfig``, the watchdog that times out and
marks unresponsive attempts, and workers' status following the attempt they hold. Every
function runs inside the caller's transaction on a ``dialect.Conn``.

The queue is a column: ``rollouts.queue_seq`` orders queued rollouts; a rollout leaves the queue
when dequeued. Each attempt keeps its span counter (``next_span_seq``), shared by the API and
OTLP; a new attempt starts from its rollout's highest, so numbers rise per rollout as
upstream's do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from ..ids import new_attempt_id
from .dialect import Conn, chunks
from .lightning import NotFound
from .records import (
    ATTEMPT_COLUMNS,
    DEFAULT_ROLLOUT_CONFIG,
    ROLLOUT_COLUMNS,
    attempt_record,
    json_or_none,
    rollout_record,
    worker_record,
)

Record = dict[str, Any]
FINISHED: Final = ("failed", "succeeded", "cancelled")
QUEUED: Final = ("queuing", "requeuing")
RUNNING: Final = ("preparing", "running")
FINISHED_ATTEMPT: Final = ("succeeded", "failed", "timeout")
WORKER_COLUMNS: Final = (
    "worker_id, status, heartbeat_stats, last_heartbeat_time, last_dequeue_time, last_busy_time,"
    " last_idle_time, current_rollout_id, current_attempt_id"
)


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def status_from_attempt(status: str, sequence_id: int, config: Record) -> str:
    """The rollout status an attempt's status implies (upstream ``rollout_status_from_attempt``)."""
    if status in ("preparing", "running", "succeeded"):
        return status
    if status in ("failed", "timeout", "unresponsive"):
        if status in (config.get("retry_condition") or []) and sequence_id < int(
            config.get("max_attempts") or 1
        ):
            return "requeuing"
        return "failed"
    raise ValueError(f"Invalid attempt status: {status}")


# -- reading rows ----------------------------------------------------------------------------


def rollout_row(conn: Conn, rollout_id: str) -> Any:
    return conn.execute(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,)
    ).fetchone()


def rollout(conn: Conn, rollout_id: str) -> Record:
    """The rollout with its latest attempt attached, when it has one."""
    record = rollout_record(rollout_row(conn, rollout_id))
    attempt = latest_attempt(conn, rollout_id)
    if attempt is not None:
        record["attempt"] = attempt
    return record


_ATTEMPT: Final = f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? AND attempt_id = ?"
_ROLLOUT_ATTEMPT: Final = (
    "SELECT "
    + ", ".join(f"r.{c.strip()}" for c in ROLLOUT_COLUMNS.split(","))
    + ", "
    + ", ".join(f"a.{c.strip()}" for c in ATTEMPT_COLUMNS.split(","))
    + " FROM rollouts r JOIN attempts a ON a.rollout_id = r.rollout_id"
    " WHERE a.rollout_id = ? AND a.attempt_id = ?"
)
_LATEST_ATTEMPT: Final = (
    f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE rollout_id = ? ORDER BY sequence_id DESC LIMIT 1"
)


def attempt(conn: Conn, rollout_id: str, attempt_id: str) -> Record | None:
    row = conn.execute(_ATTEMPT, (rollout_id, attempt_id)).fetchone()
    return None if row is None else attempt_record(row)


def latest_attempt(conn: Conn, rollout_id: str) -> Record | None:
    row = conn.execute(_LATEST_ATTEMPT, (rollout_id,)).fetchone()
    return None if row is None else attempt_record(row)


def latest_attempts(conn: Conn, rollout_ids: Sequence[str]) -> dict[str, Record]:
    latest: dict[str, Record] = {}
    for chunk in chunks(rollout_ids):
        for row in conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts"
            f" WHERE rollout_id IN ({', '.join('?' * len(chunk))})"
            " ORDER BY rollout_id, sequence_id",
            chunk,
        ):
            latest[row[0]] = attempt_record(row)
    return latest


def found_sent(conn: Conn, rollout_id: str, attempt_id: str) -> Any:
    """Whether the rollout exists, and its attempt (one row of two): one statement, sent and
    not read yet, so a server answers it with the statements sent after it."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM rollouts WHERE rollout_id = ?),"
        " EXISTS (SELECT 1 FROM attempts WHERE rollout_id = ? AND attempt_id = ?)",
        (rollout_id, rollout_id, attempt_id),
    )


def finished(conn: Conn, rollout_id: str, attempt_id: str) -> bool:
    """Whether the attempt or its rollout has an outcome already (finished stays finished)."""
    row = conn.execute(
        "SELECT a.status, r.status FROM attempts a JOIN rollouts r ON r.rollout_id = a.rollout_id"
        " WHERE a.rollout_id = ? AND a.attempt_id = ?",
        (rollout_id, attempt_id),
    ).fetchone()
    return row is not None and (row[0] in FINISHED_ATTEMPT or row[1] in FINISHED)


# -- rollouts and the queue --------------------------------------------------------------------


def insert_rollout(
    conn: Conn,
    rollout_id: str,
    input: Any,
    mode: str | None,
    resources_id: str | None,
    config: Record | None,
    metadata: Record | None,
    status: str,
    now: float,
) -> Any:
    """A rollout the API creates (``managed``), at the back of the queue when queued; its row
    (``ROLLOUT_COLUMNS``) comes back with the insert. Not read back by
    its key: in a serializable transaction that read marks the primary key's page read, and a
    concurrent dequeue, which writes there and reads the queue this insert writes, would
    conflict with it both ways, and one of the two would run again."""
    return conn.execute(
        "INSERT INTO rollouts (rollout_id, input, start_time, mode, resources_id, status,"
        " config, metadata, origin, managed, created_at, queue_seq) VALUES (?, ?, ?, ?, ?, ?,"
        f" ?, ?, 'explicit', 1, ?, CASE WHEN ? THEN {conn.dialect.queue_back} END)"
        f" RETURNING {ROLLOUT_COLUMNS}",
        (
            rollout_id,
            json.dumps(input),
            now,
            mode,
            resources_id,
            status,
            json.dumps(config if config is not None else DEFAULT_ROLLOUT_CONFIG),
            json.dumps(dict(metadata) if metadata is not None else {}),
            now,
            status in QUEUED,
        ),
    )


def set_rollout_status(conn: Conn, rollout_id: str, status: str, now: float) -> None:
    """Status, end time when finished, and back into the queue when (re)queuing: at the back,
    even where its old place is still marked (several receivers leave a place behind until
    one takes a rollout after it), as upstream's queue drops such places on the way."""
    conn.execute(
        "UPDATE rollouts SET status = ?,"
        " end_time = CASE WHEN ? THEN ? ELSE end_time END,"
        " queue_seq = CASE WHEN ? AND (queue_seq IS NULL"
        f"  OR status NOT IN ('queuing', 'requeuing')) THEN {conn.dialect.queue_back}"
        " ELSE queue_seq END"
        " WHERE rollout_id = ?",
        (status, status in FINISHED, now, status in QUEUED, rollout_id),
    )


def take_from_queue(conn: Conn) -> str | None:
    """The rollout at the front of the queue, taken off it; None when the queue is empty.

    Entries ahead of it belong to rollouts no longer queuing: upstream pops and drops those on
    the way. Where several receivers take from one queue, a rollout another transaction is
    taking is passed over (``skip_locked``), so each is handed out once.
    """
    dialect = conn.dialect
    found = conn.execute(
        f"SELECT rollout_id, queue_seq FROM rollouts {dialect.queue_index}"
        " WHERE queue_seq IS NOT NULL"
        f" AND status IN ('queuing', 'requeuing') ORDER BY queue_seq LIMIT 1 {dialect.skip_locked}"
    ).fetchone()
    if found is None:
        return None
    rollout_id, position = found
    if dialect.shared:  # entries ahead may be held by another transaction: leave them to it
        conn.execute("UPDATE rollouts SET queue_seq = NULL WHERE rollout_id = ?", (rollout_id,))
    else:
        conn.execute(
            "UPDATE rollouts SET queue_seq = NULL WHERE queue_seq IS NOT NULL AND queue_seq <= ?",
            (position,),
        )
    return str(rollout_id)


# -- attempts ---------------------------------------------------------------------------------


def new_attempt(conn: Conn, rollout_id: str, worker_id: str | None, now: float) -> Record:
    """A ``preparing`` attempt numbered after the rollout's others; the rollout follows it."""
    made = attempt(conn, rollout_id, add_attempt(conn, rollout_id, worker_id, now))
    assert made is not None
    return made


def started_rollout(conn: Conn, rollout_id: str, worker_id: str | None, now: float) -> Record:
    """``new_attempt``, answered as the rollout with it as its latest attempt, read at once."""
    attempt_id = add_attempt(conn, rollout_id, worker_id, now)
    row = conn.execute(_ROLLOUT_ATTEMPT, (rollout_id, attempt_id)).fetchone()
    split = len(ROLLOUT_COLUMNS.split(","))
    return {**rollout_record(row[:split]), "attempt": attempt_record(row[split:])}


def add_attempt(conn: Conn, rollout_id: str, worker_id: str | None, now: float) -> str:
    """``new_attempt`` not read back: its id."""
    attempt_id = new_attempt_id()
    conn.execute(
        "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, start_time, status,"
        " worker_id, next_span_seq) VALUES (?, ?,"
        " (SELECT COUNT(*) + 1 FROM attempts WHERE rollout_id = ?), ?, 'preparing', ?,"
        f" {_counter_sql(conn)})",
        (rollout_id, attempt_id, rollout_id, now, worker_id, rollout_id, rollout_id),
    )
    set_rollout_status(conn, rollout_id, "preparing", now)
    return attempt_id


def _counter_sql(conn: Conn) -> str:
    """The next span sequence id of a rollout (two parameters: its id twice): the highest of
    its attempts' counters."""
    return (
        f"{conn.dialect.greatest}(COALESCE((SELECT MAX(next_span_seq) FROM attempts"
        " WHERE rollout_id = ?), 1), COALESCE((SELECT next_seq FROM agl_span_counters"
        " WHERE rollout_id = ?), 1))"
    )


def rollout_counter(conn: Conn, rollout_id: str) -> int:
    """The next span sequence id of the rollout: the highest of its attempts' counters."""
    return int(rollout_counter_sent(conn, rollout_id).fetchone()[0])


def rollout_counter_sent(conn: Conn, rollout_id: str) -> Any:
    """``rollout_counter``'s statement, sent and not read yet (one row, one value)."""
    return conn.execute(f"SELECT {_counter_sql(conn)}", (rollout_id, rollout_id))


def raise_counter(conn: Conn, rollout_id: str, attempt_id: str, at_least: int) -> None:
    """Raise the attempt's counter to ``at_least``; the rollout's own counter only when the
    attempt is not stored (an id asked for an attempt not there), as the rollout's counter
    is the highest of both (``_counter_sql``). So a rollout's calls write no counter row in
    the usual case: its key, new to the table's index, would land on the index page other
    rollouts' calls read in their serializable transactions."""
    greatest = conn.dialect.greatest
    conn.execute(
        f"UPDATE attempts SET next_span_seq = {greatest}(next_span_seq, ?)"
        " WHERE rollout_id = ? AND attempt_id = ?",
        (at_least, rollout_id, attempt_id),
    )
    conn.execute(
        "INSERT INTO agl_span_counters (rollout_id, next_seq) SELECT ?, ? WHERE NOT EXISTS"
        " (SELECT 1 FROM attempts WHERE rollout_id = ? AND attempt_id = ?)"
        " ON CONFLICT (rollout_id) DO UPDATE SET"
        f" next_seq = {greatest}(agl_span_counters.next_seq, excluded.next_seq)",
        (rollout_id, at_least, rollout_id, attempt_id),
    )


def update_attempt(
    conn: Conn, rollout_id: str, attempt_id: str, fields: Record, now: float
) -> Record:
    """The one outcome rule: an attempt's new fields, its rollout following its latest attempt
    (retried as the rollout's ``RolloutConfig`` says), its worker following it."""
    # Three reads sent before any is read: a server answers them in one round trip.
    reads = [
        conn.execute(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = ?", (rollout_id,)),
        conn.execute(_LATEST_ATTEMPT, (rollout_id,)),
    ]
    if attempt_id != "latest":
        reads.append(conn.execute(_ATTEMPT, (rollout_id, attempt_id)))
    current, latest_row, *target_row = [read.fetchone() for read in reads]
    if current is None:
        raise NotFound(f"Rollout {rollout_id} not found")
    if latest_row is None:
        raise NotFound(f"No attempts found for rollout {rollout_id}")
    latest = attempt_record(latest_row)
    if not target_row:
        target = latest
    elif target_row[0] is None:
        raise NotFound(f"Attempt {attempt_id} not found for rollout {rollout_id}")
    else:
        target = attempt_record(target_row[0])
    sync = False
    if "worker_id" in fields:
        target["worker_id"] = fields["worker_id"]
        sync = sync or bool(fields["worker_id"])
    if "status" in fields:
        target["status"] = fields["status"]
        if fields["status"] in ("failed", "succeeded"):
            target["end_time"] = now
        sync = sync or bool(target["worker_id"])
    if "last_heartbeat_time" in fields:
        target["last_heartbeat_time"] = fields["last_heartbeat_time"]
    if "metadata" in fields:
        target["metadata"] = fields["metadata"]
    conn.execute(
        "UPDATE attempts SET status = ?, end_time = ?, worker_id = ?, last_heartbeat_time = ?,"
        " metadata = ? WHERE rollout_id = ? AND attempt_id = ?",
        (
            target["status"],
            target["end_time"],
            target["worker_id"],
            target["last_heartbeat_time"],
            dump(target["metadata"]),
            rollout_id,
            target["attempt_id"],
        ),
    )
    if target["attempt_id"] == latest["attempt_id"]:
        config = json_or_none(current[7]) or {}
        status = status_from_attempt(target["status"], target["sequence_id"], config)
        if status != current[6]:
            set_rollout_status(conn, rollout_id, status, now)
    if sync:
        sync_worker(conn, target, dequeue=False, now=now)
    return target


def span_outcome(
    conn: Conn, rollout_id: str, attempt_id: str, status: str, end_time: float, now: float
) -> None:
    """An outcome an OTLP span reported (``agentlightning.attempt.status``, the rollout span's
    status): as ``update_attempt`` applies it, so the rollout is retried as its ``RolloutConfig``
    says and the attempt's worker goes idle; times are the span's."""
    update_attempt(conn, rollout_id, attempt_id, {"status": status}, now)
    conn.execute(
        "UPDATE attempts SET end_time = ? WHERE rollout_id = ? AND attempt_id = ?",
        (end_time, rollout_id, attempt_id),
    )
    conn.execute(  # finished by this outcome just now: it finished when the span ended
        "UPDATE rollouts SET end_time = ? WHERE rollout_id = ? AND end_time = ?",
        (end_time, rollout_id, now),
    )


def heartbeat(conn: Conn, rollout_id: str, attempt_id: str, now: float) -> None:
    """A stored span is a heartbeat: the attempt runs, and so does a preparing rollout."""
    conn.execute(
        "UPDATE attempts SET last_heartbeat_time = ?, status = CASE WHEN status IN"
        " ('preparing', 'unresponsive') THEN 'running' ELSE status END"
        " WHERE rollout_id = ? AND attempt_id = ?",
        (now, rollout_id, attempt_id),
    )
    # Upstream spells the queuing state "queueing" here, so a queuing rollout stays put. Only
    # the latest attempt moves its rollout: tested in the statement, one round trip less.
    conn.execute(
        "UPDATE rollouts SET status = 'running'"
        " WHERE rollout_id = ? AND status IN ('preparing', 'requeuing')"
        " AND ? = (SELECT attempt_id FROM attempts WHERE rollout_id = ?"
        " ORDER BY sequence_id DESC LIMIT 1)",
        (rollout_id, attempt_id, rollout_id),
    )


# -- workers ----------------------------------------------------------------------------------


def worker(conn: Conn, worker_id: str) -> Record | None:
    row = conn.execute(
        f"SELECT {WORKER_COLUMNS} FROM agl_workers WHERE worker_id = ?", (worker_id,)
    ).fetchone()
    return None if row is None else worker_record(row)


def upsert_worker(conn: Conn, worker_id: str, values: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO agl_workers (worker_id) VALUES (?) ON CONFLICT DO NOTHING", (worker_id,)
    )
    if values:
        assignments = ", ".join(f"{name} = ?" for name in values)
        conn.execute(
            f"UPDATE agl_workers SET {assignments} WHERE worker_id = ?",
            (*values.values(), worker_id),
        )


def sync_worker(conn: Conn, held: Record, *, dequeue: bool, now: float) -> None:
    """The worker's status follows the attempt it holds (upstream's worker sync)."""
    worker_id = held.get("worker_id")
    if not worker_id:
        return
    values: dict[str, Any] = {}
    if dequeue:
        values["last_dequeue_time"] = now
    status = held["status"]
    if status in ("succeeded", "failed"):
        values.update(last_idle_time=now, status="idle")
        values.update(current_rollout_id=None, current_attempt_id=None)
    elif status in ("timeout", "unresponsive"):
        values.update(last_idle_time=now, status="unknown")
        values.update(current_rollout_id=None, current_attempt_id=None)
    else:
        values.update(last_busy_time=now, status="busy")
        values.update(current_rollout_id=held["rollout_id"], current_attempt_id=held["attempt_id"])
    upsert_worker(conn, worker_id, values)


def mark_idle(conn: Conn, worker_id: str, now: float) -> None:
    found = worker(conn, worker_id)
    if found is None or found["status"] != "idle":
        values = {"status": "idle", "last_idle_time": now, "last_dequeue_time": now}
        upsert_worker(conn, worker_id, values)
    else:
        upsert_worker(conn, worker_id, {"last_dequeue_time": now})


# -- the watchdog -----------------------------------------------------------------------------


def _overdue_sql(conn: Conn) -> str:
    dialect = conn.dialect
    return (
        "SELECT r.rollout_id, r.config, a.attempt_id, a.start_time, a.last_heartbeat_time"
        " FROM rollouts r JOIN attempts a ON a.rollout_id = r.rollout_id"
        " AND a.sequence_id = (SELECT MAX(sequence_id) FROM attempts"
        "   WHERE rollout_id = r.rollout_id)"
        " WHERE r.status IN ('preparing', 'running')"
        f" AND (? - a.start_time > {dialect.json_number('r.config', 'timeout_seconds')}"
        "  OR ? - COALESCE(a.last_heartbeat_time, a.start_time)"
        f"   > {dialect.json_number('r.config', 'unresponsive_seconds')})"
    )


def overdue(conn: Conn, now: float, rollout_ids: Sequence[str] | None) -> list[Any]:
    """The latest attempts of running rollouts (of ``rollout_ids``; None: all) past a
    deadline: a scan reads no config it does not act on."""
    return [row for cursor in overdue_sent(conn, now, rollout_ids) for row in cursor.fetchall()]


def overdue_sent(conn: Conn, now: float, rollout_ids: Sequence[str] | None) -> list[Any]:
    """``overdue``'s statements sent, not read yet: a server answers them together with the
    statements sent after them."""
    sql = _overdue_sql(conn)
    if rollout_ids is None:
        return [conn.execute(sql, (now, now))]
    sent: list[Any] = []
    for chunk in chunks(list(dict.fromkeys(rollout_ids))):
        marks = ", ".join("?" * len(chunk))
        sent.append(conn.execute(f"{sql} AND r.rollout_id IN ({marks})", (now, now, *chunk)))
    return sent


def time_out(conn: Conn, rows: list[Any], now: float) -> None:
    """Time out and mark unresponsive the attempts ``overdue`` found."""
    for rollout_id, config_text, attempt_id, start, heartbeat_time in rows:
        config = json_or_none(config_text) or {}
        timeout = config.get("timeout_seconds")
        unresponsive = config.get("unresponsive_seconds")
        status = None
        if timeout is not None and now - start > timeout:
            status = "timeout"
        elif unresponsive is not None and now - (heartbeat_time or start) > unresponsive:
            status = "unresponsive"
        if status is not None:
            update_attempt(conn, rollout_id, attempt_id, {"status": status}, now)
