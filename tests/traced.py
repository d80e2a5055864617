"""An SDK provider set up as an agent would (``RolloutSpanProcessor`` and an in-memory
exporter), and the ids a span carries: for the SDK's tests (``tests/test_sdk*.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lightning_otlp import RolloutSpanProcessor, rollout, semconv


class Traced:
    """A provider with the processor and an in-memory exporter, as an agent would set it up."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.processor = RolloutSpanProcessor()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def rollout(self, *args: Any, **kwargs: Any) -> rollout:
        return rollout(*args, tracer_provider=self.provider, **kwargs)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span


def ids_of(span: ReadableSpan) -> tuple[Any, Any]:
    attrs = span.attributes or {}
    return attrs.get(semconv.ROLLOUT_ID), attrs.get(semconv.ATTEMPT_ID)


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.provider.shutdown()
