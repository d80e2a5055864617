"""One store-URL parser for every command and store."""

from __future__ import annotations

import pytest

from lightning_otlp.defaults import DEFAULT_OUTBOX
from lightning_otlp.settings import Settings
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.url import parse_store_url
from lightning_otlp.wiring import open_store


@pytest.mark.parametrize(
    ("url", "scheme", "path", "server"),
    [
        ("sqlite:///x.db", "sqlite", "x.db", None),
        ("sqlite:////abs/x.db", "sqlite", "/abs/x.db", None),
        ("memory://", "memory", ":memory:", None),
        ("agl+http://127.0.0.1:4747", "agl+http", DEFAULT_OUTBOX, "http://127.0.0.1:4747"),
        ("agl+https://h/base/?outbox=o.db", "agl+https", "o.db", "https://h/base"),
    ],
)
def test_urls_taken_apart(url: str, scheme: str, path: str, server: str | None) -> None:
    parsed = parse_store_url(url)
    assert (parsed.scheme, parsed.path, parsed.server, parsed.url) == (scheme, path, server, url)


def test_options_last_value_wins() -> None:
    parsed = parse_store_url("agl+http://h:1?batch_spans=5&batch_spans=7&max_backoff=1")
    assert parsed.options == {"batch_spans": "7", "max_backoff": "1"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///x.db?outbox=y.db", "unknown option(s) outbox"),
        ("agl+http://h:1?batch=5", "unknown option(s) batch"),
        ("sqlite://", "names no file"),
        ("sqlite://dir/x.db", "sqlite:///dir/x.db"),  # a host part: three slashes were meant
        ("agl+http:///path", "names no server"),
        ("mysql://db", "unknown store URL"),
    ],
)
def test_mistakes_are_named(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_store_url(url)


def test_postgresql_urls_are_libpq_s_own() -> None:
    """Both schemes libpq takes; the query (sslmode=...) is libpq's, passed through as it is."""
    for url in ("postgresql://u@h:5432/db?sslmode=require", "postgres://u:pw@h/db"):
        parsed = parse_store_url(url)
        assert parsed.scheme == "postgresql" and parsed.url == url and not parsed.forwards
        store = open_store(url)
        assert isinstance(store, PostgresStore) and "pw" not in store.url


def test_open_store_goes_through_the_parser() -> None:
    store = open_store("sqlite:///x.db?synchronous=normal")
    assert isinstance(store, SQLiteStore) and store.path == "x.db"
    with pytest.raises(ValueError, match="unknown option"):
        open_store("memory://?synchronus=off")
    with pytest.raises(ValueError, match="batch_spans must be positive"):
        open_store("agl+http://h:1?batch_spans=0&outbox=o.db", forward=False)


@pytest.mark.parametrize(
    ("url", "setting", "message"),
    [
        ("agl+http://h:1?max_outbox_spans=many", "max_outbox_spans", "must be a whole number"),
        ("agl+http://h:1?max_outbox_bytes=-1", "max_outbox_bytes", "must be positive"),
        ("agl+http://h:1?max_backoff=soon", "max_backoff", "must be a number of seconds"),
        ("memory://?synchronous=sometimes", "synchronous", "must be one of OFF, NORMAL"),
    ],
)
def test_options_refused_in_the_words_of_the_settings(url: str, setting: str, message: str) -> None:
    """A URL option is parsed by the settings' own parsers, so it is refused as a flag is."""
    with pytest.raises(ValueError, match=f"store URL .*: {setting} {message}"):
        parse_store_url(url)
    with pytest.raises(ValueError, match=f"^store: store URL .*: {setting} {message}"):
        Settings(store=url)


def test_options_parsed_once() -> None:
    parsed = parse_store_url("agl+http://h:1?batch_spans=5&max_backoff=1&synchronous=normal")
    assert parsed.values == {"batch_spans": 5, "max_backoff": 1.0, "synchronous": "NORMAL"}
