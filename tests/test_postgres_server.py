"""tests/postgres.py: the throwaway PostgreSQL server the shared-store tests run against."""

from __future__ import annotations

import os
import pwd

import psycopg
import pytest

from .postgres import MAX_CONNECTIONS, PostgresServer, connect, execute, query

pytestmark = [pytest.mark.postgres]


def test_two_fresh_databases_each_keep_their_own_rows(pg_server: PostgresServer) -> None:
    first, second = pg_server.create_database(), pg_server.create_database()
    assert first != second
    assert first.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/")
    for url, word in ((first, "one"), (second, "two")):
        execute(url, "CREATE TABLE t (k int PRIMARY KEY, v text)")
        execute(url, "INSERT INTO t VALUES (1, %s)", [word])
    assert query(first, "SELECT k, v FROM t") == [(1, "one")]
    assert query(second, "SELECT k, v FROM t") == [(1, "two")]


def test_the_fixture_database_is_empty_and_the_server_takes_a_fleet(pg_url: str) -> None:
    assert query(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert query(pg_url, "SHOW max_connections") == [(str(MAX_CONNECTIONS),)]
    assert query(pg_url, "SHOW listen_addresses") == [("127.0.0.1",)]
    assert query(pg_url, "SHOW synchronous_commit") == [("on",)]


def test_the_server_never_runs_as_root(pg_server: PostgresServer) -> None:
    with connect(pg_server.url()) as conn:  # the backend lives as long as its connection
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        owner = os.stat(f"/proc/{pid}").st_uid
    assert owner != 0
    if os.geteuid() == 0:
        assert pwd.getpwuid(owner).pw_name == "postgres"
        assert pwd.getpwuid(pg_server.data_dir.stat().st_uid).pw_name == "postgres"
    assert pg_server.port != 5432


def test_data_survives_a_stop_and_start(own_pg: PostgresServer) -> None:
    url = own_pg.create_database()
    execute(url, "CREATE TABLE t (k int)")
    execute(url, "INSERT INTO t SELECT generate_series(1, 1000)")
    own_pg.stop("fast")
    assert not own_pg.running()
    own_pg.start()
    assert query(url, "SELECT count(*), sum(k) FROM t") == [(1000, 500500)]


def test_an_immediate_stop_refuses_connections_until_started_again(
    own_pg: PostgresServer,
) -> None:
    url = own_pg.create_database()
    execute(url, "CREATE TABLE t (k int)")
    with connect(url) as conn:
        conn.execute("INSERT INTO t VALUES (1)")  # committed (autocommit)
        own_pg.stop("immediate")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # the open session is gone too
    with pytest.raises(psycopg.OperationalError):
        query(url, "SELECT 1")
    own_pg.start()  # crash recovery from the WAL
    assert query(url, "SELECT k FROM t") == [(1,)]
    own_pg.restart("immediate")
    assert query(url, "SELECT count(*) FROM t") == [(1,)]
