"""Record the golden inputs: each real instrumentation's spans and log records, as exported.

    make golden    (or: python tests/genai/record.py [CASE ...], with the GenAI env and Node)

Each agent (tests/genai/agent.py in the GenAI env, tests/genai/framework_agent.py in each agent
framework's env, tests/node/vercel_agent.mjs in Node.js) runs
against the fake model server with in-memory exporters and writes what its OTLP exporters would
send to tests/golden/<convention>/<case>.json. The expected translations beside them are written
by ``LIGHTNING_OTLP_UPDATE_GOLDEN=1 pytest tests/test_translate.py`` and reviewed by hand.
Naming cases (``vercel/stream_text_legacy``, say) records only those.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.genai.envs import FRAMEWORK_AGENT, framework_env, framework_python  # noqa: E402
from tests.genai.fake_model import FakeModelServer  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"
GENAI_PYTHON = os.environ.get("GENAI_PYTHON") or str(
    ROOT / ".cache" / "genai-py" / "bin" / "python"
)

# (convention directory, case, command after the interpreter)
PYTHON_CASES = [
    ("otel_genai", "openai_v2_log_events", "openai-v2"),
    ("otel_genai", "openai_v2_span_attributes", "openai-v2-span"),
    ("otel_genai", "openai_v2_operation_details", "openai-v2-event"),
    ("openllmetry", "openai_0_62", "openllmetry"),
    ("openinference", "openai_vllm_token_ids", "openinference"),
]
# Agent frameworks, each in its own env (tests/genai/framework_agent.py): three calls each.
FRAMEWORK_CASES = [
    ("litellm", "callbacks_otel", "litellm"),
    ("litellm", "step_spans", "litellm-step"),
    ("litellm", "request_span", "litellm-request-span"),
    ("litellm", "semconv_latest", "litellm-semconv"),
    *[("pydantic_ai", f"format_{v}", f"pydantic-ai-v{v}") for v in range(2, 7)],
    ("openlit", "openai", "openlit"),
]
# Older OpenLLMetry wrote the indexed gen_ai.prompt.{i}.* layout. Its pins clash with the GenAI
# env, so it is recorded only when OLD_OPENLLMETRY_PYTHON names a venv with
# opentelemetry-instrumentation-openai==0.33.12, "openai<2" and opentelemetry-sdk==1.28.2.
OLD_CASE = ("openllmetry", "openai_0_33_indexed", "openllmetry")
# (convention directory, case, integration, call)
NODE_CASES = [
    ("vercel", "generate_text_legacy", "legacy", "generate"),
    ("otel_genai", "vercel_ai_otel", "otel", "generate"),
    ("vercel", "stream_text_legacy", "legacy", "stream"),
    ("otel_genai", "vercel_ai_otel_stream", "otel", "stream"),
]


def main(only: list[str]) -> int:
    def wanted(directory: str, case: str) -> bool:
        return not only or f"{directory}/{case}" in only

    with FakeModelServer() as server:
        for directory, case, instrumentation in PYTHON_CASES:
            if not wanted(directory, case):
                continue
            out = GOLDEN / directory / f"{case}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [GENAI_PYTHON, str(ROOT / "tests" / "genai" / "agent.py"), instrumentation]
                + ["--model-url", server.base_url, "--record", str(out)],
                check=True,
            )
        for directory, case, framework in FRAMEWORK_CASES:
            if not wanted(directory, case):
                continue
            out = GOLDEN / directory / f"{case}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [framework_python(framework), str(FRAMEWORK_AGENT), framework]
                + ["--model-url", server.base_url, "--record", str(out)],
                check=True,
                env=framework_env(),
            )
        old_python = os.environ.get("OLD_OPENLLMETRY_PYTHON")
        if old_python and wanted(*OLD_CASE[:2]):
            directory, case, instrumentation = OLD_CASE
            subprocess.run(
                [old_python, str(ROOT / "tests" / "genai" / "agent.py"), instrumentation]
                + [
                    "--model-url",
                    server.base_url,
                    "--record",
                    str(GOLDEN / directory / f"{case}.json"),
                ],
                check=True,
            )
        for number, (directory, case, integration, call) in enumerate(NODE_CASES, start=1):
            if not wanted(directory, case):
                continue
            out = GOLDEN / directory / f"{case}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                "OTEL_RESOURCE_ATTRIBUTES": f"agentlightning.rollout_id=ro-{number:012d}"
                + ",agentlightning.attempt_id=at-00000001",
            }
            subprocess.run(
                ["node", str(ROOT / "tests" / "node" / "vercel_agent.mjs")]
                + ["--model-url", server.base_url, "--record", str(out)]
                + ["--integration", integration, "--call", call],
                check=True,
                env=env,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
