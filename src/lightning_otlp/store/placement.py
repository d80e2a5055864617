"""Where a request's spans go, the same on every backend: spans without explicit ids follow
their trace's binding, a binding moves its trace's per-trace rollout (inside the affinity
window), rollouts and attempts are made as spans first name them, spans for attempts the
LightningStore API never started are refused, and outcomes spans carry go through the one
lifecycle rule (``store.lifecycle``). Each function runs in the caller's transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, NamedTuple

from ..batch import Destination, RolloutInfo, RoutedSpan, SpanBatch
from ..ids import attempt_id_for, rollout_id_for_trace
from . import lifecycle
from .affinity import Changes, TraceAffinity
from .dialect import Conn, chunks
from .records import DEFAULT_ROLLOUT_CONFIG
from .sequence import attempt_counter

_DEFAULT_CONFIG_JSON: Final = json.dumps(DEFAULT_ROLLOUT_CONFIG)
_STARTED: Final = ("queuing", "preparing", "requeuing")
NO_SUCH_ATTEMPT: Final = (
    "not stored: they name an attempt that does not exist on a rollout the LightningStore API"
    " manages (its attempts start through the API: dequeue or start_attempt)"
)

Groups = dict[Destination, list[RoutedSpan]]


class MovedSpan(NamedTuple):
    """A stored span a binding moves to its trace's rollout, numbered there with the request's
    spans (``sequence.sequence_ids``)."""

    start: float
    sequence_id: None
    rowid: int


def follow_bindings(
    affinity: TraceAffinity, batch: SpanBatch
) -> tuple[Groups, dict[Destination, Destination]]:
    """Send spans without explicit ids to the rollout their trace is bound to."""
    known = affinity.bindings
    fresh = batch.bindings
    rollouts = batch.rollouts
    groups: Groups = {}
    retarget: dict[Destination, Destination] = {}
    for dest, group in batch.groups.items():
        info = rollouts.get(dest[0])
        if info is None or info.origin == "explicit":
            groups.setdefault(dest, []).extend(group)
            continue
        stay = []
        for entry in group:
            trace_id = entry[2].trace_id  # (start, sequence_id, row)
            target = known.get(trace_id) or fresh.get(trace_id)
            if target is None:
                stay.append(entry)
            else:
                groups.setdefault(target, []).append(entry)
                retarget[dest] = target
        if stay:
            groups.setdefault(dest, []).extend(stay)
    return groups, retarget


def by_rollout(batch: SpanBatch, known: Mapping[bytes, Destination]) -> dict[str, SpanBatch]:
    """The request split into one batch per rollout its spans go to (``follow_bindings`` with
    ``known``, the bindings the database held when asked), each with the rollouts, bindings,
    outcomes and rewards its spans need, so each can commit in a transaction of its own.

    A span keeps its destination in its part: ``follow_bindings`` sends it on again in the
    part's transaction, by the bindings then, which are these unless one was made meanwhile."""
    fresh = batch.bindings
    parts: dict[str, SpanBatch] = {}
    retarget: dict[Destination, Destination] = {}

    def part(rollout_id: str) -> SpanBatch:
        found = parts.get(rollout_id)
        if found is None:
            found = parts[rollout_id] = SpanBatch(calls=batch.calls)
        return found

    for dest, group in batch.groups.items():
        info = batch.rollouts.get(dest[0])
        if info is None or info.origin == "explicit":
            part(dest[0]).groups.setdefault(dest, []).extend(group)
            continue
        for entry in group:
            trace_id = entry[2].trace_id
            target = known.get(trace_id) or fresh.get(trace_id)
            if target is not None:
                retarget[dest] = target
            part(target[0] if target else dest[0]).groups.setdefault(dest, []).append(entry)
    for rollout_id, piece in parts.items():
        named = {dest[0] for dest in piece.groups} | {rollout_id}
        piece.rollouts = {r: batch.rollouts[r] for r in named if r in batch.rollouts}
        used = {entry[2].resource_id for group in piece.groups.values() for entry in group}
        piece.resources = {r: batch.resources[r] for r in used if r in batch.resources}
        piece.accepted = sum(len(group) for group in piece.groups.values())
    for trace_id, dest in fresh.items():
        if dest[0] in parts:
            parts[dest[0]].bindings[trace_id] = dest
    for dest, outcome in batch.outcomes.items():
        if (owner := parts.get(retarget.get(dest, dest)[0])) is not None:
            owner.outcomes[dest] = outcome
    for dest, outcome in batch.root_outcomes.items():
        # A per-trace rollout's own outcome, only while it stays one.
        if dest not in retarget and (owner := parts.get(dest[0])) is not None:
            owner.root_outcomes[dest] = outcome
    for dest, reward in batch.rewards.items():
        if (owner := parts.get(retarget.get(dest, dest)[0])) is not None:
            owner.rewards[dest] = reward
    return parts


def claim_moves(
    conn: Conn,
    affinity: TraceAffinity,
    batch: SpanBatch,
    groups: Groups,
    now: float,
    changes: Changes,
) -> dict[Destination, list[MovedSpan]]:
    """The stored spans of per-trace rollouts this request's bindings empty (inside the
    affinity window), by the destination they move to."""
    moves: dict[Destination, list[MovedSpan]] = {}
    if not affinity.autos:
        return moves
    for trace_id, dest in batch.bindings.items():
        if trace_id in affinity.bindings or dest not in groups:
            # bound before: its per-trace rollout, if any, was dealt with then; or its
            # destination refused these spans: the trace's spans stay where they are
            continue
        auto = affinity.movable(trace_id, now, changes)
        if auto is None or auto == dest[0]:
            continue
        stored = conn.execute(
            "SELECT start_time, rowid FROM spans WHERE rollout_id = ?", (auto,)
        ).fetchall()
        moves.setdefault(dest, []).extend(
            MovedSpan(start or 0.0, None, rowid) for start, rowid in stored
        )
        changes.moved.append(trace_id)
        changes.moved_spans += len(stored)
    return moves


def finish_moves(conn: Conn, updates: list[tuple[str, str, int, int]], changes: Changes) -> None:
    # A span already in the target (sent twice) stays behind, and goes with its rollout.
    conn.executemany(
        "UPDATE spans SET rollout_id = ?, attempt_id = ?, sequence_id = ? WHERE rowid = ?"
        " AND NOT EXISTS (SELECT 1 FROM spans t WHERE t.rollout_id = ?"
        " AND t.trace_id = spans.trace_id AND t.span_id = spans.span_id)",
        [(*update, update[0]) for update in updates],
    )
    emptied = [(rollout_id_for_trace(t.hex()),) for t in changes.moved]
    # A moved span's view goes with it (its record is the same; the ids are spliced in when
    # read). Whatever could not move was already in the target (a duplicate): drop it with its
    # emptied per-trace rollout.
    conn.executemany(
        "UPDATE span_views SET rollout_id = COALESCE((SELECT s.rollout_id FROM spans s"
        " WHERE s.rowid = span_views.span_rowid), rollout_id) WHERE rollout_id = ?",
        emptied,
    )
    conn.executemany("DELETE FROM span_views WHERE rollout_id = ?", emptied)
    conn.executemany("DELETE FROM spans WHERE rollout_id = ?", emptied)
    conn.executemany("DELETE FROM attempts WHERE rollout_id = ?", emptied)
    conn.executemany("DELETE FROM rollouts WHERE rollout_id = ?", emptied)


def record_outcomes(
    conn: Conn,
    batch: SpanBatch,
    retarget: dict[Destination, Destination],
    resolved: dict[Destination, str],
    now: float,
    changes: Changes,
) -> None:
    for dest, value in batch.rewards.items():
        target = retarget.get(dest, dest)
        attempt_id = resolved.get(target)
        if attempt_id is not None:
            conn.execute(
                "UPDATE attempts SET reward = ? WHERE rollout_id = ? AND attempt_id = ?",
                (value, target[0], attempt_id),
            )
    outcomes = dict(batch.outcomes)
    for dest, outcome in batch.root_outcomes.items():
        if dest not in retarget:
            outcomes.setdefault(dest, outcome)
    for dest, (status, end) in outcomes.items():
        target = retarget.get(dest, dest)
        attempt_id = resolved.get(target)
        if attempt_id is None:
            continue
        rollout_id = target[0]
        if lifecycle.finished(conn, rollout_id, attempt_id):
            # Finished stays finished: a late span is stored, its claim ignored (counted).
            changes.ignored_outcomes += 1
            continue
        end_time = end if end is not None else now
        lifecycle.span_outcome(conn, rollout_id, attempt_id, status, end_time, now)


def create_rollout(conn: Conn, rollout_id: str, info: RolloutInfo, now: float) -> bool:
    """Create the rollout unless it exists; True when it was created.

    Tried before anything is read of the rollout: a rollout created here is known to be new
    (not the API's, no attempts), so nothing of it is looked up. On PostgreSQL that matters:
    a serializable transaction's index reads mark the pages read, rollouts created at once
    insert beside each other in the same pages, and a read of a row not there yet would
    conflict with them; an insert's own check for the key marks nothing read."""
    start = info.first_start or now
    cursor = conn.execute(
        "INSERT INTO rollouts (rollout_id, input, start_time, mode, status, config,"
        " metadata, origin, created_at) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (
            rollout_id,
            json.dumps(info.input) if info.has_input else None,
            min(start, now),
            info.mode,
            _DEFAULT_CONFIG_JSON,
            json.dumps(info.metadata) if info.metadata is not None else None,
            info.origin,
            now,
        ),
    )
    return bool(cursor.rowcount == 1)


def rollout_seen_again(conn: Conn, rollout_id: str, info: RolloutInfo) -> None:
    """An existing rollout (not the API's) its spans name again: started, and the input and
    mode they carry kept."""
    conn.execute(
        "UPDATE rollouts SET status = 'running' WHERE rollout_id = ? AND status IN (?, ?, ?)",
        (rollout_id, *_STARTED),
    )
    if info.has_input:
        conn.execute(
            "UPDATE rollouts SET input = ? WHERE rollout_id = ?",
            (json.dumps(info.input), rollout_id),
        )
    if info.mode is not None:
        conn.execute("UPDATE rollouts SET mode = ? WHERE rollout_id = ?", (info.mode, rollout_id))


def ensure_attempt(
    conn: Conn,
    rollout_id: str,
    attempt_id: str | None,
    group: list[RoutedSpan],
    now: float,
) -> tuple[str, int]:
    if attempt_id is None:
        found = conn.execute(
            "SELECT attempt_id, next_span_seq FROM attempts WHERE rollout_id = ?"
            " ORDER BY sequence_id DESC LIMIT 1",
            (rollout_id,),
        ).fetchone()
        if found is not None:
            return found[0], attempt_counter(conn, rollout_id, found[0], found[1])
        attempt_id = attempt_id_for(rollout_id, 1)
    else:
        found = conn.execute(
            "SELECT next_span_seq FROM attempts WHERE rollout_id = ? AND attempt_id = ?",
            (rollout_id, attempt_id),
        ).fetchone()
        if found is not None:
            return attempt_id, attempt_counter(conn, rollout_id, attempt_id, found[0])
    conn.execute(
        "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, start_time, status,"
        " last_heartbeat_time, next_span_seq) VALUES (?, ?,"
        " (SELECT COALESCE(MAX(sequence_id), 0) + 1 FROM attempts WHERE rollout_id = ?),"
        " ?, 'running', ?, 1)",
        (rollout_id, attempt_id, rollout_id, _attempt_start(group, now), now),
    )
    # The rollout follows its newest attempt: running again, whatever the last one ended as.
    conn.execute(
        "UPDATE rollouts SET status = 'running', end_time = NULL WHERE rollout_id = ?",
        (rollout_id,),
    )
    return attempt_id, 1


def first_attempt(
    conn: Conn,
    rollout_id: str,
    attempt_id: str,
    group: list[RoutedSpan],
    next_seq: int,
    now: float,
) -> None:
    """The first attempt of a rollout this transaction created, inserted once its spans are
    numbered (from 1, ``next_seq`` the counter after them): nothing to look up, and nothing
    to update after, which on PostgreSQL would mark the index page read as a lookup does."""
    conn.execute(
        "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, start_time, status,"
        " last_heartbeat_time, next_span_seq) VALUES (?, ?, 1, ?, 'running', ?, ?)",
        (rollout_id, attempt_id, _attempt_start(group, now), now, next_seq),
    )


def _attempt_start(group: list[RoutedSpan], now: float) -> float:
    starts = [start for start, _, _ in group if start]
    return min(min(starts), now) if starts else now


def managed(conn: Conn, rollout_ids: set[str]) -> set[str]:
    """Which of these rollouts the LightningStore API created (or queued)."""
    found: set[str] = set()
    for chunk in chunks(list(rollout_ids)):
        found.update(
            row[0]
            for row in conn.execute(
                "SELECT rollout_id FROM rollouts WHERE (managed = 1 OR status IN"
                f" ('queuing', 'requeuing')) AND rollout_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
        )
    return found


def refuse_unknown_attempts(
    conn: Conn,
    batch: SpanBatch,
    groups: Groups,
    managed: set[str],
) -> Groups:
    """The groups whose attempt exists; spans for an API-managed rollout's missing attempt are
    refused (upstream refuses a span for an unknown attempt too): an OTLP span must not start
    an attempt, which would take a queued rollout off the queue or reopen a finished one."""
    kept: Groups = {}
    for dest, group in groups.items():
        rollout_id, attempt_id = dest
        if rollout_id in managed:
            if attempt_id is None:
                found = conn.execute(
                    "SELECT 1 FROM attempts WHERE rollout_id = ? LIMIT 1", (rollout_id,)
                ).fetchone()
            else:
                found = conn.execute(
                    "SELECT 1 FROM attempts WHERE rollout_id = ? AND attempt_id = ?",
                    (rollout_id, attempt_id),
                ).fetchone()
            if found is None:
                batch.refused[NO_SUCH_ATTEMPT] = batch.refused.get(NO_SUCH_ATTEMPT, 0) + len(group)
                continue
        kept[dest] = group
    return kept
