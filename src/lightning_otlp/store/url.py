"""The one parser of store URLs: every command and store reads a URL through it."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from ..defaults import DEFAULT_OUTBOX, SYNCHRONOUS
from ..parsers import number, one_of, positive, text, whole

# Each option's parser, the settings' own (``parsers``): a URL option and a flag refuse the same
# values with the same words.
_PARSERS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "synchronous": one_of(SYNCHRONOUS, str.upper),
    "outbox": text,
    "max_outbox_spans": positive(whole),
    "max_outbox_bytes": positive(whole),
    "batch_spans": positive(whole),
    "max_backoff": positive(number),
}
# The options each scheme takes; anything else is a mistake worth a clear error, not a silent
# default.
_SQLITE_OPTIONS: Final = frozenset({"synchronous"})
_FORWARD_OPTIONS: Final = frozenset(
    {"outbox", "max_outbox_spans", "max_outbox_bytes", "batch_spans", "max_backoff", "synchronous"}
)
_OPTIONS: Final[Mapping[str, frozenset[str]]] = {
    "memory": _SQLITE_OPTIONS,
    "sqlite": _SQLITE_OPTIONS,
    "agl+http": _FORWARD_OPTIONS,
    "agl+https": _FORWARD_OPTIONS,
}


POSTGRESQL_SCHEMES: Final = frozenset({"postgresql", "postgres"})


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A store URL taken apart.

    ``path`` is the SQLite file (``:memory:`` for ``memory://``, the outbox for a forwarder);
    ``server`` the LightningStore server's base URL (forwarders only); ``options`` the query,
    last value of each name, as text; ``values`` the same options parsed (``5`` for
    ``batch_spans=5``, ``"NORMAL"`` for ``synchronous=normal``).
    """

    url: str
    scheme: str
    path: str
    server: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def forwards(self) -> bool:
        return self.server is not None


def parse_store_url(url: str) -> StoreURL:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``memory://``,
    ``postgresql://USER@HOST:PORT/DB`` or ``agl+http://HOST:PORT?outbox=path.db``; raises
    ``ValueError`` naming the mistake."""
    parts = urlsplit(url)
    if parts.scheme in POSTGRESQL_SCHEMES:
        # libpq's own URL: its query (sslmode=..., options=...) is libpq's to read.
        return StoreURL(url, "postgresql", "")
    known = _OPTIONS.get(parts.scheme)
    if known is None:
        raise ValueError(
            f"unknown store URL {url!r}: use sqlite:///path/to/file.db, memory://,"
            " postgresql://USER@HOST:PORT/DB (a store several receivers share) or"
            " agl+http://HOST:PORT (a LightningStore server)"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - known)
    if unknown:
        meant = [difflib.get_close_matches(name, sorted(known), n=1) for name in unknown]
        hints = [
            f"{name!r} -> {close[0]!r}" for name, close in zip(unknown, meant, strict=True) if close
        ]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(
            f"store URL {url!r}: unknown option(s) {', '.join(unknown)}{hint};"
            f" known: {', '.join(sorted(known))}"
        )
    values = {}
    for name, raw in options.items():
        try:
            values[name] = _PARSERS[name](raw)
        except ValueError as exc:
            raise ValueError(f"store URL {url!r}: {name} {exc}") from None
    if parts.scheme == "memory":
        return StoreURL(url, parts.scheme, ":memory:", options=options, values=values)
    if parts.scheme == "sqlite":
        # Only sqlite:///relative and sqlite:////absolute: anything else was meant as one of them.
        if not (parts.netloc + parts.path).strip("/"):
            raise ValueError(f"store URL {url!r} names no file (try sqlite:///lightning-otlp.db)")
        if parts.netloc:
            raise ValueError(
                f"store URL {url!r} has a host part ({parts.netloc!r}); a file is named after"
                f" three slashes: sqlite:///{parts.netloc}{parts.path}"
            )
        if not url.startswith("sqlite:///"):
            rest = url.removeprefix("sqlite:").lstrip("/")
            raise ValueError(
                f"store URL {url!r} is ambiguous: write sqlite:///{rest} for ./{rest}"
                f" or sqlite:////{rest} for /{rest}"
            )
        path = parts.path[1:]
        if not path:
            raise ValueError(f"store URL {url!r} names no file (try sqlite:///lightning-otlp.db)")
        return StoreURL(url, parts.scheme, path, options=options, values=values)
    if not parts.netloc:
        raise ValueError(f"store URL {url!r} names no server (try agl+http://127.0.0.1:4747)")
    server = f"{parts.scheme.removeprefix('agl+')}://{parts.netloc}{parts.path.rstrip('/')}"
    outbox = options.get("outbox", DEFAULT_OUTBOX)
    return StoreURL(url, parts.scheme, outbox, server, options, values)
