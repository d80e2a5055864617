"""Sequence ids within an attempt, the same on every backend: explicit ones as given, the
rest from the attempt's counter or from each span's start time, never one already taken."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, cast

from ..batch import MAX_SEQUENCE_ID
from .dialect import Conn

# An attempt's span counter above this was left by an unbounded explicit sequence id (before
# they were bounded): it is rebuilt from the attempt's spans, so it can never overflow a column.
_COUNTER_CEILING: Final = 2**62


# A span to number, ``(start, sequence_id, ...)``: a request's (``batch.RoutedSpan``) or a stored
# one moving in (``placement.MovedSpan``).
Numbered = tuple[float, int | None, Any]


def sequence_ids(
    mode: str,
    conn: Conn,
    rollout_id: str,
    attempt_id: str,
    entries: Sequence[Numbered],
    next_seq: int,
) -> list[int]:
    """Each entry's sequence id: an explicit one as given; otherwise the attempt's counter
    in arrival order, or (``start-time``) the span's start in microseconds, so a span that
    arrives late (an exporter's batch delay) still sorts where it started, stepped past
    every id already taken in the attempt so none repeats."""
    out: list[int | None] = [entry[1] for entry in entries]
    if mode == "counter":
        for i, seq in enumerate(out):
            if seq is None:
                out[i] = next_seq
                next_seq += 1
        return cast(list[int], out)
    # Timed spans in start order, then any without a start time after them, in arrival order.
    starts = [entry[0] for entry in entries]
    timed = sorted(
        (i for i, seq in enumerate(out) if seq is None and starts[i] > 0), key=starts.__getitem__
    )
    untimed = [i for i, seq in enumerate(out) if seq is None and starts[i] <= 0]
    order = timed + untimed
    wanted = [round(start * 1_000_000) for start in map(starts.__getitem__, timed)]
    wanted += [max(next_seq, wanted[-1] if wanted else 0)] * len(untimed)
    explicit = {seq for seq in out if seq is not None}
    # Every id an attempt holds is below its counter (every write raises it past the ids it
    # stores or issues), so on PostgreSQL ids from the counter up are not looked up: a read of
    # the spans index marks its pages read in the serializable transaction, and other
    # rollouts' concurrent writes to those pages would conflict with it. SQLite reads as ever.
    free = next_seq if conn.dialect.shared else None
    issued = free_sequence_ids(conn, rollout_id, attempt_id, wanted, explicit, free)
    for i, seq in zip(order, issued, strict=True):
        out[i] = seq
    return cast(list[int], out)


def attempt_counter(conn: Conn, rollout_id: str, attempt_id: str, stored: int) -> int:
    """An attempt's next sequence id; a counter out of bounds is rebuilt from its spans."""
    if 1 <= stored <= _COUNTER_CEILING:
        return stored
    row = conn.execute(
        "SELECT COALESCE(MAX(sequence_id), 0) + 1 FROM spans"
        " WHERE rollout_id = ? AND attempt_id = ? AND sequence_id BETWEEN 0 AND ?",
        (rollout_id, attempt_id, MAX_SEQUENCE_ID),
    ).fetchone()
    return int(row[0])


def free_sequence_ids(
    conn: Conn,
    rollout_id: str,
    attempt_id: str,
    wanted: list[int],
    taken: set[int] | None = None,
    free_from: int | None = None,
    looked_up: int | None = None,
) -> list[int]:
    """For ``wanted`` (in order, not decreasing), the least ids at or above each, rising, that
    no stored span of the attempt has and ``spans/next`` has not issued (nor ``taken``); ids
    from ``free_from`` up are known to be neither, and are not looked up; nor those from the
    first wanted to ``looked_up`` (``taken`` holds them, from ``taken_sent``).

    At most ``LOOKUP_ROWS`` taken ids, plus two a wanted id, are read: past them the rest take
    ids above every one the attempt holds. Spans that all start at one instant would otherwise
    step past every earlier one, each request reading the whole attempt's ids again."""
    if not wanted:
        return []
    taken = set(taken or ())
    low = wanted[0]
    high = low - 1 if looked_up is None else looked_up
    budget = LOOKUP_ROWS + 2 * len(wanted)
    above: int | None = None  # once the budget is spent: the least id above all taken ones

    def fetch(upper: int) -> None:
        nonlocal high, budget, above
        if free_from is not None and high + 1 >= free_from:
            high = upper
            return
        if free_from is not None:
            upper = max(high + 1, min(upper, free_from - 1))
        rows = [row[0] for row in taken_sent(conn, rollout_id, attempt_id, high + 1, upper, budget)]
        taken.update(rows)
        budget -= len(rows)
        if budget <= 0:
            high = rows[-1]  # read in order: what is taken is known up to the last one read
            above = (
                free_from
                if free_from is not None
                else highest_taken(conn, rollout_id, attempt_id) + 1
            )
        else:
            high = upper

    if high < wanted[-1] + len(wanted):
        fetch(wanted[-1] + len(wanted))
    out = []
    previous = low - 1
    for value in wanted:
        seq = max(value, previous + 1)
        while True:
            if seq > high:
                if above is None:
                    fetch(seq + max(len(wanted), budget))
                else:  # nothing stored from ``above`` up: only this request's own ids
                    seq = max(seq, above)
                    while seq in taken:
                        seq += 1
                    break
            if seq not in taken:
                break
            seq += 1
        out.append(seq)
        previous = seq
    return out


# Taken ids one request reads at most (beyond two a span) when its spans step past them.
LOOKUP_ROWS: Final = 1024


def taken_sent(
    conn: Conn, rollout_id: str, attempt_id: str, low: int, high: int, limit: int | None = None
) -> Any:
    """The attempt's ids from ``low`` to ``high`` that a stored span has or ``spans/next``
    issued (the first ``limit`` of them, in order): sent, not read yet, so a server answers it
    with the statements sent after it."""
    sql = (
        "SELECT sequence_id FROM spans WHERE rollout_id = ? AND attempt_id = ?"
        " AND sequence_id BETWEEN ? AND ? UNION ALL"
        " SELECT sequence_id FROM span_issued WHERE rollout_id = ? AND attempt_id = ?"
        " AND sequence_id BETWEEN ? AND ?"
    )
    parameters: tuple[Any, ...] = (rollout_id, attempt_id, low, high) * 2
    if limit is not None:
        sql += " ORDER BY 1 LIMIT ?"
        parameters += (limit,)
    return conn.execute(sql, parameters)


def highest_taken(conn: Conn, rollout_id: str, attempt_id: str) -> int:
    """The attempt's highest id a stored span has or ``spans/next`` issued (-1 for none)."""
    row = conn.execute(
        "SELECT MAX(m) FROM (SELECT MAX(sequence_id) AS m FROM spans"
        " WHERE rollout_id = ? AND attempt_id = ? UNION ALL SELECT MAX(sequence_id)"
        " FROM span_issued WHERE rollout_id = ? AND attempt_id = ?) AS highest",
        (rollout_id, attempt_id) * 2,
    ).fetchone()
    return -1 if row[0] is None else int(row[0])
