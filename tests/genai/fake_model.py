"""A fake OpenAI-compatible model server on loopback that answers like vLLM with token ids.

``POST /v1/embeddings`` answers a fixed vector; ``POST /v1/chat/completions`` answers with
``prompt_token_ids`` at the top of the response and ``token_ids`` in each choice (what vLLM
returns with ``return_token_ids``). When the request offers tools and no tool result is in the
conversation yet, the answer is a call to the first tool; otherwise it is text. Response ids
count up from 1 per server, so a recording is stable.
``"stream": true`` is answered as server-sent events with the same content, in pieces.

Run as a script it prints ``listening on http://HOST:PORT`` and serves until killed.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _tokens(text: str) -> list[int]:
    # Not a tokenizer: a stable stand-in so tests can tell prompt ids from response ids.
    return list(text.encode("utf-8"))[:64]


class FakeModel:
    """The server's state: a counter for response ids, the requests seen and the answers given."""

    def __init__(self) -> None:
        self.count = 0
        self.requests: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.count += 1
            number = self.count
            self.requests.append(request)
        messages = request.get("messages") or []
        tools = request.get("tools") or []
        last_user = next(
            (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        prompt_text = "\n".join(f"{m.get('role')}: {_text(m.get('content'))}" for m in messages)
        has_tool_result = any(m.get("role") == "tool" for m in messages)
        if tools and not has_tool_result:
            function = tools[0].get("function") or {}
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{number}",
                        "type": "function",
                        "function": {
                            "name": function.get("name", "tool"),
                            "arguments": json.dumps({"city": "Paris"}),
                        },
                    }
                ],
            }
            finish = "tool_calls"
            out_text = json.dumps(message["tool_calls"])
        else:
            content = f"Answer {number}: {last_user}"
            message = {"role": "assistant", "content": content}
            finish = "stop"
            out_text = content
        prompt_ids = _tokens(prompt_text)
        token_ids = _tokens(out_text)
        answer = {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": 1_700_000_000 + number,
            "model": request.get("model", "fake-model"),
            "prompt_token_ids": prompt_ids,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish,
                    "logprobs": None,
                    "token_ids": token_ids,
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(token_ids),
                "total_tokens": len(prompt_ids) + len(token_ids),
            },
        }
        with self._lock:
            self.answers.append(answer)
        return answer


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _embedding(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "list",
        "model": request.get("model", "fake-embedding"),
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.75]}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }


def _chunks(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer as stream chunks, in pieces as OpenAI's API sends them: the role (with the
    token ids), the text a word at a time or each tool call's name and then its arguments in
    fragments, and last the finish reason and usage."""
    choice = answer["choices"][0]
    message = choice["message"]
    base = {k: answer[k] for k in ("id", "object", "created", "model")}
    base["object"] = "chat.completion.chunk"
    deltas: list[dict[str, Any]] = []
    content = message.get("content") or ""
    for piece in re.findall(r"\S+\s*|\s+", content):
        deltas.append({"content": piece})
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        head = {"index": index, "id": call["id"], "type": "function"}
        head["function"] = {"name": function["name"], "arguments": ""}
        deltas.append({"tool_calls": [head]})
        arguments = function["arguments"]
        half = len(arguments) // 2
        for fragment in (arguments[:half], arguments[half:]):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    first = dict(base, prompt_token_ids=answer["prompt_token_ids"])
    first["choices"] = [
        {"index": 0, "delta": {"role": "assistant"}, "token_ids": choice["token_ids"]}
    ]
    chunks = [first]
    chunks += [dict(base, choices=[{"index": 0, "delta": d}]) for d in deltas]
    last = dict(base, usage=answer["usage"])
    last["choices"] = [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]
    return [*chunks, last]


def make_handler(model: FakeModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/").endswith("/embeddings"):
                self._send(200, _embedding(request))
                return
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            answer = model.answer(request)
            if request.get("stream"):
                body = b"".join(
                    b"data: " + json.dumps(c).encode() + b"\n\n" for c in _chunks(answer)
                )
                body += b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self._send(200, answer)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


class FakeModelServer:
    """The fake model on a free loopback port, served from a thread (a test fixture)."""

    def __init__(self) -> None:
        self.model = FakeModel()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.model))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":
    server = FakeModelServer()
    with server:
        print(f"listening on {server.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            sys.exit(0)
