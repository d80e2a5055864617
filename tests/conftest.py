from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore

from .support import ReceiverProcess


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    s = SQLiteStore(":memory:", synchronous="OFF")
    s.open()
    yield s
    s.close()


@pytest.fixture
def pipeline(store: SQLiteStore) -> Iterator[Pipeline]:
    p = Pipeline(store, RoutingConfig())
    yield p
    p.close()


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., ReceiverProcess]]:
    """Start ``lightning-otlp serve`` subprocesses with extra flags; all stopped at teardown."""
    started: list[ReceiverProcess] = []

    def start(
        *flags: str, db: str = "receiver.db", env: dict[str, str] | None = None
    ) -> ReceiverProcess:
        proc = ReceiverProcess(tmp_path / db, *flags, env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
