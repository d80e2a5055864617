"""Write ``store.db`` and ``expected.json`` with the lightning_otlp found on ``sys.path``.

Run once with a released version's source first on ``PYTHONPATH``; the test then opens that
file with today's code (an upgrade) and compares every record it reads back with the ones the
release read from it. Usage: ``python write_store.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from lightning_otlp.forward.store import ForwardingStore
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store.lightning import Query
from lightning_otlp.store.sqlite import SQLiteStore
from lightning_otlp.store.sqlite_api import SQLiteLightningStore

T0 = 1_760_000_000_000_000_000  # ns
REWARD = "agentlightning.reward.0.value"
SESSION = {"session.id": "s-1"}


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _span(n: int, name: str, trace: int, attributes: dict[str, Any], parent: int = 0) -> Span:
    span = Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=n.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=T0 + n * 1_000_000,
        end_time_unix_nano=T0 + n * 1_000_000 + 500_000,
    )
    span.attributes.extend(KeyValue(key=k, value=_value(v)) for k, v in attributes.items())
    return span


def _request(spans: list[Span]) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=_value("golden")))
    rs.scope_spans.add().spans.extend(spans)
    return request.SerializeToString()


def _chat(n: int, trace: int, parent: int, **ids: str) -> Span:
    return _span(
        n,
        "chat gpt-4o-mini",
        trace,
        {
            "gen_ai.system": "openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 3,
            "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"Hi?"}]}]',
            "gen_ai.output.messages": (
                '[{"role":"assistant","parts":[{"type":"text","content":"Hi."}]}]'
            ),
            **ids,
        },
        parent,
    )


def write(out: Path) -> None:
    store = SQLiteStore(str(out / "store.db"))
    store.open()
    pipeline = Pipeline(store, RoutingConfig(rollout_keys=("session.id",)))
    api = SQLiteLightningStore(store)
    api.open()
    # The API's queue: one rollout finished by a worker, one left queued, resources.
    resources = api.add_resources({"prompt": {"template": "Q: {q}"}})
    done, waiting = api.enqueue_rollouts(
        [
            {"input": {"q": 1}, "mode": "train", "config": {"max_attempts": 2}},
            {"input": {"q": 2}, "metadata": {"k": "v"}},
        ]
    )
    [claimed] = api.dequeue_rollouts(1, "worker-1")
    attempt = claimed["attempt"]["attempt_id"]
    rollout = claimed["rollout_id"]
    # OTLP: spans of the API's rollout, with an outcome; a per-trace rollout; a keyed one.
    ids = {"agentlightning.rollout_id": rollout, "agentlightning.attempt_id": attempt}
    pipeline.export_traces(
        _request(
            [
                _span(1, "agentlightning.rollout", 1, {**ids}),
                _chat(2, 1, 1, **ids),
                _span(
                    3,
                    "agentlightning.annotation",
                    1,
                    {"agentlightning.reward.0.value": 0.5, **ids},
                    1,
                ),
                _span(4, "tool", 1, {"agentlightning.attempt.status": "failed", **ids}, 1),
            ]
        ),
        None,
        "application/x-protobuf",
    )
    pipeline.export_traces(
        _request([_span(5, "root", 2, {"x": 1}), _chat(6, 2, 5)]), None, "application/x-protobuf"
    )
    pipeline.export_traces(
        _request(
            [_span(7, "step", 3, {"session.id": "s-1"}), _span(8, "step", 4, {"session.id": "s-1"})]
        ),
        None,
        "application/x-protobuf",
    )
    api.update_worker("worker-1", {"cpu": 1})
    pipeline.close()
    expected = read(store, api)
    expected["made"] = {
        "resources_id": resources["resources_id"],
        "queued": waiting["rollout_id"],
        "done": done["rollout_id"],
    }
    store.close()
    expected["outbox"] = write_outbox(out)
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


def write_outbox(out: Path) -> dict[str, Any]:
    """A forwarder's outbox holding spans not yet delivered (its server never answered)."""
    forwarder = ForwardingStore("http://127.0.0.1:9", str(out / "outbox.db"), forward=False)
    forwarder.open()
    pipeline = Pipeline(forwarder, RoutingConfig())
    pipeline.export_traces(
        _request([_span(9, "root", 5, {}), _chat(10, 5, 9)]), None, "application/x-protobuf"
    )
    pipeline.close()
    pending = forwarder.outbox.pending()
    forwarder.close()
    return {"pending": list(pending)}


def read(store: Any, api: Any) -> dict[str, Any]:
    """Everything the read commands and the API give back of the store."""
    everything = Query()
    rollouts = list(store.rollouts())
    return {
        "rollouts": rollouts,
        "spans": list(store.spans()),
        "summaries": store.summaries(),
        "status": {k: v for k, v in store.status().items() if k != "store"},
        "api": {
            # Uptime is the reader's own, not the store's.
            "statistics": {k: v for k, v in api.statistics().items() if k != "uptime"},
            "rollouts": api.query_rollouts(
                status_in=None,
                rollout_id_in=None,
                rollout_id_contains=None,
                filter_logic="and",
                query=everything,
            ).as_dict(),
            "attempts": {
                r["rollout_id"]: api.query_attempts(r["rollout_id"], everything).as_dict()
                for r in rollouts
            },
            "spans": {
                r["rollout_id"]: api.query_spans(
                    r["rollout_id"], None, filters={}, filter_logic="and", query=everything
                ).as_dict()
                for r in rollouts
            },
            "workers": api.query_workers(
                status_in=None, worker_id_contains=None, filter_logic="and", query=everything
            ).as_dict(),
            "resources": api.query_resources(
                resources_id=None, resources_id_contains=None, query=everything
            ).as_dict(),
        },
    }


if __name__ == "__main__":
    write(Path(sys.argv[1]))
