from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.receiver.route import RoutingConfig
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.dialect import Conn
from lightning_otlp.store.postgres import PostgresStore

from .forwarding import AglServer
from .ops import TOKENS
from .support import ReceiverProcess

if TYPE_CHECKING:
    from .postgres import PostgresServer


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


# -- the store's policy on every backend ------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A bearer token file listing ``ops.TOKENS``."""
    path = tmp_path / "tokens"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sql_store(request: pytest.FixtureRequest) -> Iterator[SQLiteStore | PostgresStore]:
    """An opened store on each backend: SQLite in memory, and a fresh database on a real
    PostgreSQL server. The policy is written once; its tests run unchanged on both."""
    store: SQLiteStore | PostgresStore
    if request.param == "sqlite":
        store = SQLiteStore(":memory:", synchronous="OFF")
    else:
        store = PostgresStore(request.getfixturevalue("pg_url"))
    store.open()
    yield store
    store.close()


@pytest.fixture
def conn(sql_store: SQLiteStore | PostgresStore) -> Iterator[Conn]:
    """One write transaction on ``sql_store``, as the store's policy functions run in."""
    with sql_store.transaction() as connection:
        yield connection


# -- PostgreSQL (tests/postgres.py imports psycopg, from the postgres extra: imported on use) --


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server per test process (per pytest-xdist worker)."""
    from .postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the shared server: its libpq URL."""
    if not pg_server.running():  # a test that stopped it and failed before starting it again
        pg_server.start()
    return pg_server.create_database()


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    """A server of the test's own, for a test that stops or crashes it."""
    from .postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def agl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AglServer]:
    """``agl store`` 0.3.0, one per test module (importing agentlightning takes seconds)."""
    server = AglServer(tmp_path_factory.mktemp("agl") / "agl-store.log")
    server.start()
    yield server
    server.kill()
    server.http.close()


@pytest.fixture
def forwarding_receiver(
    tmp_path: Path, agl: AglServer
) -> Iterator[Callable[..., tuple[ReceiverProcess, str]]]:
    """Start receivers whose store is the server, each with an outbox in tmp_path."""
    started: list[ReceiverProcess] = []

    def start(
        outbox: str = "outbox.db", flags: tuple[str, ...] = (), **options: Any
    ) -> tuple[ReceiverProcess, str]:
        url = agl.forward_url(tmp_path / outbox, **options)
        proc = ReceiverProcess(tmp_path / f"{outbox}.receiver", "--store", url, *flags).start()
        started.append(proc)
        return proc, url

    yield start
    for proc in started:
        proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used a PostgreSQL server gets the end of the server's log."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for name in ("own_pg", "pg_server"):
        server = getattr(item, "funcargs", {}).get(name)
        if server is not None:
            report.sections.append((f"PostgreSQL log ({name})", server.log_tail()))
