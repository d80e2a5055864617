"""The spans routes: add one, query and search a rollout's, issue the next sequence id."""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from ..store.lightning import Page, Query
from . import wire
from .bodies import (
    SlicedResponse,
    guarded,
    json_response,
    large_page_response,
    query_fields,
)
from .calls import APICalls
from .wire import Fields

# Spans read and sent at a time when a page holds every span of a large rollout: a few MiB.
SEND_SLICE: Final = 2000


class SpanRoutes(APICalls):
    """Spans as upstream's API takes and answers them."""

    async def add_span(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            return json_response(await self.call(self.backend.add_span, wire.span(body)), 201)

        return await guarded(go)

    async def query_spans(self, request: Request) -> Response:
        return await guarded(lambda: self._spans(query_fields(request)))

    async def search_spans(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            return await self._spans(Fields(body, "body"))

        return await guarded(go)

    async def _spans(self, fields: Fields) -> Response:
        rollout_id = fields.string("rollout_id", required=True)
        attempt_id = fields.string("attempt_id")
        filters = {
            name: {"exact": fields.string(name), "contains": fields.string(name + "_contains")}
            for name in wire.SPAN_FILTERS
        }
        logic = wire.filter_logic(fields)
        query = wire.query(fields, wire.SPAN_FIELDS, "sequence_id")
        filtered = any(value is not None for ops in filters.values() for value in ops.values())
        if query.limit == -1 and query.sort_by in (None, "sequence_id") and not filtered:
            return await self._every_span(rollout_id, attempt_id, query)
        page = await self.call(
            self.backend.query_spans,
            rollout_id,
            attempt_id,
            filters=filters,
            filter_logic=logic,
            query=query,
            encoded=True,
        )
        return await large_page_response(page)

    async def _every_span(self, rollout_id: str, attempt_id: str | None, query: Query) -> Response:
        """Every span past the offset, in insertion or sequence order (a trainer reading a whole
        rollout): past ``SEND_SLICE`` spans, read and sent a slice at a time, so a read of any
        size holds a slice of records, not all of them."""
        order = await self.call(self.backend.span_order, rollout_id, attempt_id, query, SEND_SLICE)
        if not order.rest:
            return await large_page_response(
                Page(order.first, query.limit, query.offset, order.total)
            )
        return SlicedResponse(
            order, query, lambda rowids: self.read_more(self.backend.spans_at, rowids), SEND_SLICE
        )

    async def next_sequence_id(self, request: Request) -> Response:
        async def go() -> Response:
            body = wire.body_object(await self.read_json(request), required=True) or {}
            f = Fields(body, "body")
            rollout_id = f.string("rollout_id", required=True)
            attempt_id = f.string("attempt_id", required=True)
            value = await self.call(self.backend.next_span_sequence_id, rollout_id, attempt_id)
            return json_response({"sequence_id": value})

        return await guarded(go)
