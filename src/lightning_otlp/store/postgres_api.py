"""The LightningStore API over the shared PostgreSQL store: the shared API
(``store.api_store``) with PostgreSQL's storage primitives (``store.postgres``)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import cast

from .api_store import SQLLightningStore
from .dialect import Conn
from .postgres import PostgresStore


class PostgresLightningStore(SQLLightningStore):
    """agentlightning's LightningStore semantics over an opened ``PostgresStore``: every call a
    serializable transaction, run again whole when another receiver's conflicted with it."""

    name = "PostgresLightningStore"

    def _write(self, queue: bool = False) -> AbstractContextManager[Conn]:
        """Pipelined, so a call waits on the server only where it reads; a dequeue holds the
        fleet's queue lock (``store.postgres``)."""
        store = cast(PostgresStore, self.store)
        return cast(AbstractContextManager[Conn], store.transaction(pipelined=True, queue=queue))


__all__ = ["PostgresLightningStore"]
