"""Trainable spans: a realistic GenAI mix, ingested and read with translation on and off.

One span in five is a chat call carrying about 2 KB of messages as the current GenAI conventions
write them (``gen_ai.input.messages`` / ``gen_ai.output.messages``); the rest are agent, tool and
HTTP spans. Translation happens when records are read, so ingest should not move; reading
(what the CLI, a trainer or the forwarder does) pays for it, and is measured too.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import Run, say, timed
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.base import StoreOptions
from tests.payloads import make_request, make_span
from tests.support import ReceiverProcess

SPANS = int(os.environ.get("BENCH_GENAI_SPANS", "51200"))
PER_REQUEST = 512
ROLLOUTS_PER_REQUEST = 8
PROTOBUF = {"content-type": "application/x-protobuf"}


def _messages(i: int) -> tuple[str, str]:
    question = f"Step {i}: " + "summarise the findings so far and choose the next tool. " * 14
    system = "You are a research agent. " * 8
    prompt = [
        {"role": "system", "parts": [{"type": "text", "content": system}]},
        {"role": "user", "parts": [{"type": "text", "content": question}]},
    ]
    answer = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "The findings point to option B. " * 12}],
            "finish_reason": "stop",
        }
    ]
    return json.dumps(prompt), json.dumps(answer)


def payloads(seed: int) -> list[bytes]:
    out = []
    base = time.time_ns()
    for r in range(SPANS // PER_REQUEST):
        spans = []
        for i in range(PER_REQUEST):
            n = r * PER_REQUEST + i
            rollout = f"ro-{(seed + n % ROLLOUTS_PER_REQUEST + r * 31):012x}"
            attrs: dict[str, object] = {
                "agentlightning.rollout_id": rollout,
                "agentlightning.attempt_id": "at-00000001",
            }
            if i % 5 == 0:
                prompt, answer = _messages(n)
                attrs.update(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.response.id": f"chatcmpl-{seed}-{n}",
                        "gen_ai.input.messages": prompt,
                        "gen_ai.output.messages": answer,
                        "gen_ai.usage.input_tokens": 812,
                        "gen_ai.usage.output_tokens": 164,
                    }
                )
                name = "chat gpt-4o-mini"
            else:
                name = ("agent step", "execute_tool search", "GET /search", "plan")[i % 4]
                attrs["gen_ai.operation.name" if i % 4 == 1 else "step"] = (
                    "execute_tool" if i % 4 == 1 else i
                )
            spans.append(make_span(name, attributes=attrs, start_ns=base + n * 1000))
        out.append(make_request(spans).SerializeToString())
    return out


def _ingest(tmpdir: Path, label: str, body: list[bytes], translate: str) -> tuple[Run, Path]:
    db = tmpdir / f"genai-{translate}.db"
    receiver = ReceiverProcess(db, "--translate", translate).start()
    try:
        with httpx.Client(timeout=60) as client:

            def send(b: bytes) -> None:
                response = client.post(receiver.traces_url, content=b, headers=PROTOBUF)
                response.raise_for_status()

            return timed(label, body, PER_REQUEST, send), db
    finally:
        receiver.stop()


def _read(db: Path, translate: bool) -> float:
    store = SQLiteStore(str(db), StoreOptions(translate=translate))
    store.open()
    try:
        started = time.perf_counter()
        count = sum(1 for _ in store.spans())
        return count / (time.perf_counter() - started)
    finally:
        store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        body = payloads(7_000_000)
        say(
            f"payload: {PER_REQUEST} spans a request, 1 in 5 a chat call,"
            f" {sum(map(len, body)) / SPANS:.0f} bytes a span on average"
        )
        off, db = _ingest(tmpdir, "ingest, translate off", body, "false")
        say(off.line())
        on, _ = _ingest(tmpdir, "ingest, translate on", body, "true")
        say(on.line())
        say(f"ingest ratio on/off: {on.rate / off.rate:.2f}")
        raw = _read(db, translate=False)
        translated = _read(db, translate=True)
        say(f"read as received:   {raw:>10,.0f} spans/s")
        say(f"read translated:    {translated:>10,.0f} spans/s  ({translated / raw:.2f} of raw)")
