"""Where the cached framework environments are (``make framework-envs``), and how to run in one."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORK_AGENT = ROOT / "tests" / "genai" / "framework_agent.py"
# Framework (framework_agent.py's first argument, up to its mode) -> its env under .cache/.
_ENVS = {"litellm": "fw-litellm", "pydantic-ai": "fw-pydantic-ai", "openlit": "fw-openlit"}


def framework_python(framework: str) -> str:
    """The interpreter of the env that has ``framework`` (``litellm-semconv`` -> LiteLLM's)."""
    env = next(v for k, v in _ENVS.items() if framework.startswith(k))
    path = ROOT / ".cache" / env / "bin" / "python"
    if not path.exists():
        raise RuntimeError(f"{framework} environment missing at {path}: run `make framework-envs`")
    return str(path)


def framework_env() -> dict[str, str]:
    """This tree's package first on the path (the envs hold the frameworks only),
    and LiteLLM kept off the network (it fetches a price list at import otherwise)."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
