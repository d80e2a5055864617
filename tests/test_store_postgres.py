"""The PostgreSQL store on a real server: the same records as the embedded store for the same
requests, read by the same commands; its schema made once when receivers start together; a
newer schema refused in one line; its password never shown."""

from __future__ import annotations

import calendar
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.store.postgres import PostgresStore
from lightning_otlp.store.postgres_schema import POSTGRESQL
from lightning_otlp.wiring import open_store

from .payloads import GENAI_ATTRIBUTES, GENAI_CONTENT, make_request, make_span
from .postgres import PostgresServer, execute, query
from .support import ReceiverProcess
from .test_cli import cli

pytestmark = pytest.mark.postgres


def requests() -> list[bytes]:
    """Two rollouts by explicit ids (a chat call with a reward among them), a trace that binds
    late, and a trace with no ids at all: every routing rule the write path has."""
    rollout = {"agentlightning.rollout_id": "ro-pg", "agentlightning.attempt_id": "at-pg"}
    trace, root_id = os.urandom(16), os.urandom(8)
    unbound = os.urandom(16)
    t0 = 1_700_000_000_000_000_000
    first = [
        make_span("root", trace_id=trace, span_id=root_id, attributes=rollout, start_ns=t0),
        make_span(
            "chat gpt-4o-mini",
            trace_id=trace,
            parent_id=root_id,
            attributes={**GENAI_ATTRIBUTES, **GENAI_CONTENT},
            start_ns=t0 + 1_000,
        ),
        make_span("tool", trace_id=unbound, start_ns=t0 + 2_000),
    ]
    late = make_span("step", trace_id=unbound, start_ns=t0 + 3_000)
    binding = make_span(
        "agent",
        trace_id=unbound,
        attributes={"agentlightning.rollout_id": "ro-late"},
        start_ns=t0 + 4_000,
    )
    reward = make_span(
        "agentlightning.reward",
        trace_id=trace,
        parent_id=root_id,
        attributes={"agentlightning.reward": 0.5},
        start_ns=t0 + 5_000,
    )
    return [
        make_request(first).SerializeToString(),
        make_request([late]).SerializeToString(),
        make_request([binding, reward]).SerializeToString(),
        make_request([make_span("orphan", start_ns=t0 + 6_000)]).SerializeToString(),
    ]


def read(url: str) -> dict[str, Any]:
    """What the read commands print for a store."""
    out: dict[str, Any] = {}
    for command in ("rollouts", "spans"):
        result = cli(command, "--store", url)
        assert result.returncode == 0, result.stderr
        out[command] = [json.loads(line) for line in result.stdout.splitlines()]
    for rollout in out["rollouts"]:
        rollout["attempt"].pop("last_heartbeat_time")  # when the receiver stored it
    return out


def test_the_read_commands_give_the_same_records_as_the_embedded_store(
    tmp_path: Path, pg_url: str
) -> None:
    bodies = requests()
    results = {}
    for name, store in (("sqlite", None), ("postgresql", pg_url)):
        receiver = ReceiverProcess(tmp_path / f"{name}.db", store=store).start()
        try:
            for body in bodies:
                response = httpx.post(
                    receiver.traces_url, content=body, headers={"content-type": PROTOBUF}
                )
                assert response.status_code == 200, response.text
        finally:
            assert receiver.stop() == 0, receiver.log()
        results[name] = read(receiver.store_url)
    assert results["postgresql"] == results["sqlite"]
    rollouts = {r["rollout_id"]: r for r in results["postgresql"]["rollouts"]}
    assert "ro-pg" in rollouts and "ro-late" in rollouts  # the late binding moved its trace
    assert len(results["postgresql"]["spans"]) == 7
    status = cli("status", "--store", pg_url, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["spans"] == 7
    check = cli("check-store", "--store", pg_url)
    assert check.returncode == 0, check.stdout + check.stderr


def test_receivers_starting_together_make_the_schema_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    errors: list[BaseException] = []

    def start(store: PostgresStore) -> None:
        try:
            store.open()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors
        names = [row[0] for row in query(pg_url, "SELECT name FROM schema_migrations")]
        assert names == [m.name for m in POSTGRESQL]
    finally:
        for store in stores:
            store.close()


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path, pg_url: str) -> None:
    store = open_store(pg_url)
    store.open()
    store.close()
    execute(pg_url, "INSERT INTO schema_migrations (name, applied_at) VALUES ('postgresql-9', 0)")
    result = cli("serve", "--store", pg_url, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0")
    assert result.returncode != 0
    assert "schema newer than this lightning-otlp" in result.stderr
    assert "Traceback" not in result.stderr
    read_only = cli("rollouts", "--store", pg_url)
    assert read_only.returncode == 2 and "postgresql-9" in read_only.stderr


def test_a_missing_store_is_named_and_never_made_by_a_read(pg_url: str) -> None:
    result = cli("rollouts", "--store", pg_url)
    assert result.returncode == 2 and "no store at" in result.stderr
    assert query(pg_url, "SELECT to_regclass('schema_migrations') IS NULL") == [(True,)]


def test_the_password_is_never_shown(tmp_path: Path, own_pg: PostgresServer) -> None:
    url = own_pg.create_database()
    secret = "s3cret-pw-4711"
    execute(url, f"CREATE ROLE agent LOGIN PASSWORD '{secret}'")
    execute(url, "GRANT ALL ON SCHEMA public TO agent")
    # This role signs in with its password (the first matching line wins); others as before.
    hba = own_pg.data_dir / "pg_hba.conf"
    hba.write_text("host all agent 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    own_pg.restart()
    with_password = url.replace("postgres@", f"agent:{secret}@")
    wrong = cli("status", "--store", url.replace("postgres@", "agent:wrong@"))
    assert wrong.returncode == 2 and "password authentication failed" in wrong.stderr
    receiver = ReceiverProcess(tmp_path / "pw.db", store=with_password).start()
    try:
        body = make_request([make_span("s")]).SerializeToString()
        response = httpx.post(receiver.traces_url, content=body, headers={"content-type": PROTOBUF})
        assert response.status_code == 200
    finally:
        assert receiver.stop() == 0
    assert secret not in receiver.log() and "agent:***@" in receiver.log()
    status = cli("status", "--store", with_password)
    assert status.returncode == 0, status.stderr
    assert secret not in status.stdout + status.stderr
    # libpq's own PGPASSWORD gives it too, the URL without one.
    by_env = cli(
        "status", "--store", url.replace("postgres@", "agent@"), env={"PGPASSWORD": secret}
    )
    assert by_env.returncode == 0, by_env.stderr


def test_spans_are_kept_by_month_so_old_ones_leave_with_their_partition(pg_url: str) -> None:
    from lightning_otlp.receiver.pipeline import Pipeline

    store = open_store(pg_url)
    store.open()
    pipeline = Pipeline(store)
    now = time.time()
    old = now - 400 * 86400  # before every month made: the default partition
    try:
        for start, rollout in ((now, "ro-now"), (old, "ro-old")):
            ids = {"agentlightning.rollout_id": rollout}
            spans = [
                make_span(f"s{i}", attributes=ids, start_ns=int(start * 1e9)) for i in range(3)
            ]
            body = make_request(spans).SerializeToString()
            for _ in range(2):  # sent twice, stored once
                answer = pipeline.export_traces(body, None, PROTOBUF)
                assert answer.partial_success.rejected_spans == 0
    finally:
        pipeline.close()
        store.close()
    month = f"spans_y{time.strftime('%Ym%m', time.gmtime(now))}"
    counts = dict(query(pg_url, "SELECT tableoid::regclass::text, COUNT(*) FROM spans GROUP BY 1"))
    assert counts == {month: 3, "spans_default": 3}
    execute(pg_url, f"ALTER TABLE spans DETACH PARTITION {month}")
    execute(pg_url, f"DROP TABLE {month}")
    left = read(pg_url)
    assert {s["rollout_id"] for s in left["spans"]} == {"ro-old"} and len(left["spans"]) == 3


def test_month_partitions_cross_the_year() -> None:
    from lightning_otlp.store.postgres_schema import month_partitions

    december = calendar.timegm((2026, 12, 5, 12, 0, 0))
    made = month_partitions(december)
    assert [m.split()[5] for m in made] == ["spans_y2026m12", "spans_y2027m01", "spans_y2027m02"]
    assert f"FROM ({calendar.timegm((2027, 1, 1, 0, 0, 0))})" in made[1]
    assert f"TO ({calendar.timegm((2027, 2, 1, 0, 0, 0))})" in made[1]
