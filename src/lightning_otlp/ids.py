"""Rollout, attempt and resources ids in Agent Lightning's formats (``ro-`` + 12 hex, ``at-`` +
8 hex, ``rs-`` + 12 hex): every id the project makes is made here.

Rollout ids derived from a trace or a rollout key carry a whole 128-bit digest (``ro-`` + 32
hex) instead: every receiver derives the same id without talking to the others, so two traces
whose ids collide would silently share a rollout, and 48 bits collide for about one rollout in
500 at a million traces. At 128 bits, 10^9 traces collide with a chance near 10^-21. Rollouts
derived earlier keep their 12-hex ids and stay readable; a trace whose spans arrive on both
sides of an upgrade is stored as two rollouts.
"""

from __future__ import annotations

import hashlib
import secrets


def new_rollout_id() -> str:
    return "ro-" + secrets.token_hex(6)


def new_attempt_id() -> str:
    return "at-" + secrets.token_hex(4)


def new_resources_id() -> str:
    return "rs-" + secrets.token_hex(6)


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def rollout_id_for_trace(trace_id_hex: str) -> str:
    """Derive a per-trace rollout id so that every receiver picks the same one."""
    return "ro-" + _digest("trace", trace_id_hex)


def rollout_id_for_key(attribute: str, value: str) -> str:
    """Derive a rollout id from a rollout-key attribute value (for example ``session.id``)."""
    return "ro-" + _digest("key", attribute, value)


def attempt_id_for(rollout_id: str, sequence_id: int) -> str:
    """Derive the id of an attempt the receiver creates itself, stable across receivers."""
    return "at-" + _digest("attempt", rollout_id, str(sequence_id))[:8]
