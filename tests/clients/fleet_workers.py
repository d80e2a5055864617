"""Workers spread over several receivers of one shared store, with agentlightning 0.3.0's own
client: each rollout must be handed to exactly one of them.

Run by the agentlightning 0.3.0 interpreter:
``python fleet_workers.py ENQUEUE_URL COUNT WORKERS URL [URL ...]`` enqueues COUNT rollouts
through ENQUEUE_URL, then runs WORKERS threads, worker ``i`` dequeuing through
``URL[i % len(URLs)]`` and finishing each rollout it is handed (its attempt ``succeeded``) until
COUNT were handed out. Prints ``{"enqueued": [ids], "handed": [[worker, rollout_id,
attempt_id]], "statuses": {rollout_id: status}}``, the statuses read through each URL in turn.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

from agentlightning.store.client_server import LightningStoreClient

DEADLINE_SECONDS = 240


def client(url: str) -> LightningStoreClient:
    return LightningStoreClient(url, retry_delays=(), health_retry_delays=())


async def enqueue(url: str, count: int) -> list[str]:
    store = client(url)
    try:
        return [
            (await store.enqueue_rollout({"task": n}, mode="train")).rollout_id
            for n in range(count)
        ]
    finally:
        await store.close()


def main() -> None:
    enqueue_url, count, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    urls = sys.argv[4:]
    enqueued = asyncio.run(enqueue(enqueue_url, count))
    handed: list[list[Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_SECONDS

    async def work(index: int) -> None:
        store = client(urls[index % len(urls)])
        try:
            while time.monotonic() < deadline:
                with lock:
                    if len(handed) >= count:
                        return
                got = await store.dequeue_rollout(worker_id=f"worker-{index}")
                if got is None:  # an empty queue, or an error the client swallowed
                    await asyncio.sleep(0.05)
                    continue
                with lock:
                    handed.append([index, got.rollout_id, got.attempt.attempt_id])
                await store.update_attempt(
                    got.rollout_id, got.attempt.attempt_id, status="succeeded"
                )
        finally:
            await store.close()

    threads = [threading.Thread(target=asyncio.run, args=(work(i),)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def statuses() -> dict[str, str]:
        stores = [client(url) for url in urls]
        try:
            found = {}
            for n, rollout_id in enumerate(enqueued):
                rollout = await stores[n % len(stores)].get_rollout_by_id(rollout_id)
                found[rollout_id] = rollout.status if rollout else "missing"
            return found
        finally:
            for store in stores:
                await store.close()

    print(json.dumps({"enqueued": enqueued, "handed": handed, "statuses": asyncio.run(statuses())}))


if __name__ == "__main__":
    main()
