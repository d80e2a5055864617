"""The LightningStore API over the embedded SQLite store: the shared API (``store.api_store``)
with SQLite's storage primitives (``store.sqlite``)."""

from __future__ import annotations

from .api_store import SQLLightningStore


class SQLiteLightningStore(SQLLightningStore):
    """agentlightning's LightningStore semantics over an opened ``SQLiteStore``."""

    name = "SQLiteLightningStore"


__all__ = ["SQLiteLightningStore"]
