"""Agent Lightning 0.3.0's LLM proxy in front of a model server, with a runner's view of a store.

    python llm_proxy.py STORE_URL MODEL_URL MODEL_NAME MASTER_KEY

Starts ``LLMProxy`` (LiteLLM, in its own process) with ``LightningStoreClient(STORE_URL)`` as
its store and one model, ``hosted_vllm/MODEL_NAME`` at MODEL_URL. Then, for each line on stdin
(a rollout's input as JSON), does what a runner does: starts a rollout in the store and prints
one JSON line with its ids and ``LLMProxy.as_resource(rollout_id, attempt_id)``. Stops the proxy
when stdin closes. Everything else the proxy and LiteLLM print goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from agentlightning import LLMProxy
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.utils.server_launcher import PythonServerLauncherArgs


async def main(store_url: str, model_url: str, model: str, master_key: str) -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # LiteLLM's banner and logs, here and in the proxy's process
    store = LightningStoreClient(store_url)
    proxy = LLMProxy(
        model_list=[
            {
                "model_name": model,
                "litellm_params": {"model": f"hosted_vllm/{model}", "api_base": model_url},
            }
        ],
        store=store,
        # LiteLLM refuses to serve without a key.
        litellm_config={"general_settings": {"master_key": master_key}},
        # The default health check, /health, needs the key; /health/liveliness does not.
        launcher_args=PythonServerLauncherArgs(
            host="127.0.0.1",
            access_host="127.0.0.1",
            launch_mode="mp",
            healthcheck_url="/health/liveliness",
        ),
    )
    await proxy.start()
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        rollout = await store.start_rollout(input=json.loads(line))
        resource = proxy.as_resource(rollout.rollout_id, rollout.attempt.attempt_id)
        reply = {
            "rollout_id": rollout.rollout_id,
            "attempt_id": rollout.attempt.attempt_id,
            "resource": resource.model_dump(),
        }
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    await proxy.stop()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
