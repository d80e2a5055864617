"""Rollout, attempt and resources ids in Agent Lightning's formats (``ro-`` + 12 hex, ``at-`` +
8 hex, ``rs-`` + 12 hex): every id the project makes is made here."""

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
    return "ro-" + _digest("trace", trace_id_hex)[:12]


def rollout_id_for_key(attribute: str, value: str) -> str:
    """Derive a rollout id from a rollout-key attribute value (for example ``session.id``)."""
    return "ro-" + _digest("key", attribute, value)[:12]


def attempt_id_for(rollout_id: str, sequence_id: int) -> str:
    """Derive the id of an attempt the receiver creates itself, stable across receivers."""
    return "at-" + _digest("attempt", rollout_id, str(sequence_id))[:8]
