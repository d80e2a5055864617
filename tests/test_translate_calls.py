"""A span with model-call children is never a call itself, on every read path, whichever of the
spans arrives first and in whichever request: the store's own reader (the CLI's), the API's
pages built at read time, its prepared views, and the forwarder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span

from lightning_otlp.forward.outbox import Outbox
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig, route
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.lightning import LightningStoreBackend, Query
from lightning_otlp.translate import model_call
from lightning_otlp.wiring import lightning_api

from .payloads import make_request, make_span
from .span_views import encoded_count
from .test_affinity import IDS, RID, send

CALL = "openai.chat.completion"


def _call_attributes(answer: str) -> dict[str, Any]:
    """One chat call as OpenLLMetry (and LiteLLM onto the current span) writes it."""
    return {
        **IDS,
        "llm.request.type": "chat",
        "gen_ai.prompt.0.role": "user",
        "gen_ai.prompt.0.content": "What is the weather in Paris?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": answer,
        "gen_ai.response.id": answer,
    }


class Step:
    """A user's "step" span that a library wrote its last call onto, and that call's own span
    (its child): the child is the call, the step is not."""

    def __init__(self) -> None:
        trace_id = os.urandom(16)
        self.step = make_span("step", trace_id=trace_id, attributes=_call_attributes("last"))
        self.call = make_span(
            "chat fake-model",
            trace_id=trace_id,
            parent_id=self.step.span_id,
            attributes=_call_attributes("last"),
        )

    def names(self, records: list[dict[str, Any]]) -> dict[str, str]:
        """Each span's record name, by its original name."""
        by_id = {r["span_id"]: r["name"] for r in records}
        return {
            "step": by_id[self.step.span_id.hex()],
            "call": by_id[self.call.span_id.hex()],
        }


EXPECTED = {"step": "step", "call": CALL}


def _api(store: SQLiteStore) -> LightningStoreBackend:
    api = lightning_api(store)
    assert api is not None
    return api


def _page(store: SQLiteStore, encoded: bool) -> list[dict[str, Any]]:
    page = _api(store).query_spans(
        RID, None, filters={}, filter_logic="and", query=Query(), encoded=encoded
    )
    return [json.loads(i) if isinstance(i, bytes) else i for i in page.items]


def _encoded(store: SQLiteStore) -> int:
    return encoded_count(_api(store), RID)


def _build_views(store: SQLiteStore) -> None:
    store._written_at = float("-inf")  # as once ingest pauses: every view, older ones too
    while store.idle_work():
        pass


def test_the_step_alone_reads_as_the_call_written_onto_it(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    """Until a child says otherwise, a span is read by what it carries."""
    step = Step()
    send(pipeline, [step.step])
    (record,) = store.spans(RID)
    assert record["name"] == CALL
    assert model_call({"name": "step", "attributes": record["attributes"]}) is not None


@pytest.mark.parametrize("order", ["one request", "children later", "children first"])
def test_every_read_path_agrees_whatever_the_order(
    pipeline: Pipeline, store: SQLiteStore, order: str
) -> None:
    step = Step()
    if order == "one request":
        send(pipeline, [step.step, step.call])
    elif order == "children later":
        send(pipeline, [step.step])
        send(pipeline, [step.call])
    else:
        send(pipeline, [step.call])
        send(pipeline, [step.step])
    assert step.names(list(store.spans(RID))) == EXPECTED  # the CLI's reader
    assert step.names(_page(store, encoded=False)) == EXPECTED  # API pages built when read
    _build_views(store)
    assert step.names(_page(store, encoded=True)) == EXPECTED  # prepared views
    raw = {"step": "step", "call": "chat fake-model"}
    assert step.names(list(store.spans(RID, raw=True))) == raw


def test_a_prepared_view_of_the_step_is_not_used_once_its_call_arrives(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    step = Step()
    send(pipeline, [step.step])
    _build_views(store)
    assert _encoded(store) == 1
    assert _page(store, encoded=True)[0]["name"] == CALL  # all that was known then
    send(pipeline, [step.call])
    _build_views(store)
    assert step.names(_page(store, encoded=True)) == EXPECTED
    assert _encoded(store) == 1  # the call's view; the step is built when read
    assert _page(store, encoded=True) == _page(store, encoded=False)


def test_a_child_that_is_no_model_call_changes_nothing(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    step = Step()
    tool = make_span(
        "execute_tool", trace_id=step.step.trace_id, parent_id=step.step.span_id, attributes=IDS
    )
    embedding = make_span(
        "embeddings",
        trace_id=step.step.trace_id,
        parent_id=step.step.span_id,
        attributes={**IDS, "gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e"},
    )
    send(pipeline, [step.step])
    send(pipeline, [tool, embedding])
    names = {r["span_id"]: r["name"] for r in store.spans(RID)}
    assert names[step.step.span_id.hex()] == CALL


def test_a_child_in_agent_lightnings_own_shape_makes_its_parent_no_call(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    """Agent Lightning's tracer's calls and LiteLLM's summary span are calls too, untranslated."""
    for name in (CALL, "litellm_request"):
        step = Step()
        child = make_span(name, trace_id=step.step.trace_id, parent_id=step.step.span_id)
        child.attributes.extend(step.call.attributes)
        send(pipeline, [step.step])
        send(pipeline, [child])
        names = {r["span_id"]: r["name"] for r in store.spans(RID)}
        assert names[step.step.span_id.hex()] == "step", name


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(str(tmp_path / "outbox.db"), "http://127.0.0.1:9", synchronous="OFF", log_wait=0)
    box.open()
    yield box
    box.close()


def _forwarded(outbox: Outbox, after: int = 0) -> tuple[dict[bytes, str], int]:
    """The names the forwarder would send for the pending spans past ``after``."""
    rows, reached = outbox.pending_batch(after, 100, 1 << 30)
    names = {}
    for row in rows:
        span = PB2Span.FromString(outbox.translated(row[5], row[4]))
        names[span.span_id] = span.name
    return names, reached


def test_the_forwarder_sends_the_step_as_what_it_is(outbox: Outbox) -> None:
    step = Step()
    outbox.write(route(make_request([step.step]), RoutingConfig()))
    outbox.write(route(make_request([step.call]), RoutingConfig()))
    names, _ = _forwarded(outbox)
    assert names == {step.step.span_id: "step", step.call.span_id: CALL}


def test_a_step_forwarded_before_its_call_arrived_was_sent_as_known_then(outbox: Outbox) -> None:
    """A span sent on is not taken back: the step goes as what was known when it left."""
    step = Step()
    outbox.write(route(make_request([step.step]), RoutingConfig()))
    first, after = _forwarded(outbox)
    assert first == {step.step.span_id: CALL}
    outbox.write(route(make_request([step.call]), RoutingConfig()))
    later, _ = _forwarded(outbox, after)
    assert later == {step.call.span_id: CALL}


def test_a_child_call_without_captured_content_still_encloses(
    pipeline: Pipeline, store: SQLiteStore
) -> None:
    """A call is one by its kind: its content may be off, or still to come as log records."""
    step = Step()
    child = make_span(
        "chat fake-model",
        trace_id=step.step.trace_id,
        parent_id=step.step.span_id,
        attributes={**IDS, "gen_ai.operation.name": "chat", "gen_ai.request.model": "m"},
    )
    send(pipeline, [step.step, child])
    names = {r["span_id"]: r["name"] for r in store.spans(RID)}
    assert names == {step.step.span_id.hex(): "step", child.span_id.hex(): "chat fake-model"}
