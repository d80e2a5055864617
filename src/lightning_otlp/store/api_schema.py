"""The LightningStore API's schema, beside the receiver's own tables in the same SQLite file.

Its steps are entries of every SQLite store's migration list (``store.migrations``), so readers
(``lightning-otlp spans``) know the ``record`` column of spans added through the API.
"""

from __future__ import annotations

from typing import Final

API_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    ALTER TABLE rollouts ADD COLUMN queue_seq INTEGER;
    ALTER TABLE spans ADD COLUMN record TEXT;
    CREATE INDEX rollouts_queue ON rollouts (queue_seq) WHERE queue_seq IS NOT NULL;
    CREATE INDEX rollouts_status ON rollouts (status);
    CREATE TABLE agl_workers (
        worker_id          TEXT PRIMARY KEY,
        status             TEXT NOT NULL DEFAULT 'unknown',
        heartbeat_stats    TEXT,
        last_heartbeat_time REAL,
        last_dequeue_time  REAL,
        last_busy_time     REAL,
        last_idle_time     REAL,
        current_rollout_id TEXT,
        current_attempt_id TEXT
    );
    CREATE TABLE agl_resources (
        resources_id TEXT PRIMARY KEY,
        resources    TEXT NOT NULL,
        create_time  REAL NOT NULL,
        update_time  REAL NOT NULL,
        version      INTEGER NOT NULL,
        touched      INTEGER NOT NULL
    );
    CREATE TABLE agl_span_counters (
        rollout_id TEXT PRIMARY KEY,
        next_seq   INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO resources (resource_id, body)
        VALUES ('agl-api', '{"attributes": {}, "schema_url": ""}')
    """,
    # Rollouts the API created: OTLP spans never start their attempts or change their status.
    # Earlier ones are recognized by what only the API sets (a queue place, resources, a worker).
    # The latest resources are found by index, never by reading past large resources.
    """
    ALTER TABLE rollouts ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
    UPDATE rollouts SET managed = 1 WHERE queue_seq IS NOT NULL OR resources_id IS NOT NULL
        OR status IN ('queuing', 'requeuing')
        OR rollout_id IN (SELECT rollout_id FROM attempts WHERE worker_id IS NOT NULL);
    CREATE INDEX agl_resources_touched ON agl_resources (touched, resources_id)
    """,
)

API_RESOURCE_ID: Final = "agl-api"  # the OTLP-resource row API spans point at
