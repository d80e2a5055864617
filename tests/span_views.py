"""The span-view tests' helpers: reads as the API sends them, every view built at once, and
the stores both backends give (``tests/test_store_views*.py``, ``tests/test_span_reads.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest

from lightning_otlp.api.bodies import json_response
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore, span_reads, views
from lightning_otlp.store.lightning import LightningStoreBackend, Query
from lightning_otlp.store.sql_store import SQLStore
from lightning_otlp.wiring import lightning_api, open_store

OTHER = ("ro-00000000cafe", "at-0000cafe")


def read_items(
    api: LightningStoreBackend, rollout_id: str, encoded: bool, **query: Any
) -> list[dict[str, Any]]:
    """A page as the API sends it, parsed back."""
    filters = query.pop("filters", {})
    page = api.query_spans(
        rollout_id, None, filters=filters, filter_logic="and", query=Query(**query), encoded=encoded
    )
    items: list[dict[str, Any]] = json.loads(json_response(page.as_dict()).body)["items"]
    return items


def encoded_count(api: LightningStoreBackend, rollout_id: str) -> int:
    """How many of a rollout's spans a read sends as prepared records (a view, or kept by an
    earlier read): those it does not build."""
    built: list[bytes | None] = []

    def kept(record: dict[str, Any]) -> bytes | None:
        built.append(view_body(record))
        return built[-1]

    view_body = span_reads._view_body
    with mock.patch.object(span_reads, "_view_body", kept):
        page = api.query_spans(
            rollout_id, None, filters={}, filter_logic="and", query=Query(), encoded=True
        )
    sent = sum(isinstance(item, bytes) for item in page.items)
    return sent - sum(body is not None for body in built)


def build_all(store: SQLiteStore) -> int:
    """Every view, as once ingest pauses (under ingest older spans wait their turn)."""
    store._written_at = float("-inf")
    steps = 0
    while store.idle_work():
        steps += 1
    return steps


def view_count(store: SQLStore) -> int:
    """How many span views the store holds."""
    with store.reader() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM span_views").fetchone()[0])


def api_of(store: SQLStore) -> LightningStoreBackend:
    """The store's LightningStore API."""
    api = lightning_api(store)  # type: ignore[arg-type]
    assert api is not None
    return api


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest) -> Iterator[SQLStore]:
    """The embedded store and PostgreSQL: records are prepared the same way on both."""
    url = "memory://" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = open_store(url)
    store.open()
    yield store  # type: ignore[misc]
    store.close()


@pytest.fixture
def any_pipeline(any_store: SQLStore) -> Iterator[Pipeline]:
    pipeline = Pipeline(any_store, RoutingConfig())  # type: ignore[arg-type]
    yield pipeline
    pipeline.close()


def counted_turns(monkeypatch: Any) -> list[float | None]:
    """Reads' turns (``views.READ_PACE``) counted, one entry each (the share it asked for),
    none resting."""
    turns: list[float | None] = []

    class Counting(views.Pace):
        @contextmanager
        def turn(self, share: float | None = None) -> Iterator[None]:
            turns.append(share)
            with super().turn():
                yield

    monkeypatch.setattr(views, "READ_PACE", Counting(share=1.0))
    return turns
