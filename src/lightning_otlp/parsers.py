"""One parser per kind of setting value, shared by flags, environment, config file and store URL.

Each takes text (a flag, an environment variable, a URL option) or a TOML value and returns the
typed value, or raises ``ValueError`` whose words the caller prefixes with where the value came
from; the same mistake therefore reads the same wherever it was made. Imports nothing of the
project.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

T = TypeVar("T", int, float)


def text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {raw!r}")
    return raw


def whole(raw: Any) -> int:
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"must be a whole number, not {raw!r}") from None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"must be a whole number, not {raw!r}")
    return raw


def number(raw: Any) -> float:
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number of seconds, not {raw!r}") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"must be a number, not {raw!r}")
    return float(raw)


def positive(parse: Callable[[Any], T]) -> Callable[[Any], T]:
    def check(raw: Any) -> T:
        value = parse(raw)
        if value <= 0:
            raise ValueError(f"must be positive, not {raw!r}")
        return value

    return check


def not_negative(parse: Callable[[Any], T]) -> Callable[[Any], T]:
    def check(raw: Any) -> T:
        value = parse(raw)
        if value < 0:
            raise ValueError(f"must not be negative, not {raw!r}")
        return value

    return check


def flag(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError(f"must be true or false, not {raw!r}")


def names(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # environment: comma-separated
        return tuple(k.strip() for k in raw.split(",") if k.strip())
    if isinstance(raw, (list, tuple)) and all(isinstance(v, str) for v in raw):
        return tuple(raw)
    raise ValueError(f'must be a list of strings, like ["session.id"], not {raw!r}')


def one_of(
    choices: tuple[str, ...], fold: Callable[[str], str] | None = None
) -> Callable[[Any], str]:
    """One of ``choices``; with ``fold`` (``str.upper``, say), compared and returned folded."""

    def check(raw: Any) -> str:
        value = text(raw) if fold is None else fold(text(raw))
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {raw!r}")
        return value

    return check


def path(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    return text(raw)
