"""A model call's end at the resolution of the clock that timed its start.

OpenTelemetry JS (2.x) starts every span at ``Date.now()``, whole milliseconds, and ends it at
that start plus a sub-millisecond duration. A span begun right after a model call ended (the
call's reward: Agent Lightning gives a reward to the latest call that ended before the reward
started) can then start up to 1 ms before the call's recorded end, and its reward is lost or
lands on an earlier call. A start in whole milliseconds marks such a clock; cutting the call's
end to whole milliseconds too keeps "ended before" true for spans of that clock.
"""

from __future__ import annotations

from typing import Final

_MS: Final = 1_000_000


def call_end_ns(start_ns: int, end_ns: int) -> int:
    """``end_ns`` in whole milliseconds when ``start_ns`` is, else unchanged."""
    if start_ns and start_ns % _MS == 0 and end_ns >= start_ns:
        return end_ns - end_ns % _MS
    return end_ns
