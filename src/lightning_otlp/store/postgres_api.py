"""The LightningStore API over the shared PostgreSQL store: the shared API
(``store.api_store``) with PostgreSQL's storage primitives (``store.postgres``)."""

from __future__ import annotations

from .api_store import SQLLightningStore


class PostgresLightningStore(SQLLightningStore):
    """agentlightning's LightningStore semantics over an opened ``PostgresStore``: every call a
    serializable transaction, run again whole when another receiver's conflicted with it."""

    name = "PostgresLightningStore"


__all__ = ["PostgresLightningStore"]
