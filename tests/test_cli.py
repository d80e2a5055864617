"""The CLI as a user runs it: records read back validate with agentlightning's models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_otlp.receiver.decode import PROTOBUF
from lightning_otlp.receiver.pipeline import Pipeline
from lightning_otlp.store import SQLiteStore

from .payloads import genai_request, make_request, make_span
from .support import validate_with_agl


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightning_otlp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cli.db"
    store = SQLiteStore(str(path))
    store.open()
    pipeline = Pipeline(store)
    try:
        pipeline.export_traces(genai_request(30, rollouts=3).SerializeToString(), None, PROTOBUF)
        pipeline.export_traces(
            make_request([make_span("auto")]).SerializeToString(), None, PROTOBUF
        )
    finally:
        pipeline.close()
        store.close()
    return path


@pytest.mark.agl
def test_rollouts_and_spans_print_valid_json_lines(db: Path) -> None:
    url = f"sqlite:///{db}"
    rollouts = [json.loads(line) for line in cli("rollouts", "--store", url).stdout.splitlines()]
    assert len(rollouts) == 4
    assert validate_with_agl("AttemptedRollout", rollouts) == rollouts
    spans = [json.loads(line) for line in cli("spans", "--store", url).stdout.splitlines()]
    assert len(spans) == 31
    assert validate_with_agl("Span", spans) == spans

    target = rollouts[0]
    only = cli(
        "spans",
        "--store",
        url,
        "--rollout",
        target["rollout_id"],
        "--attempt",
        target["attempt"]["attempt_id"],
    ).stdout.splitlines()
    records = [json.loads(line) for line in only]
    assert len(records) == 10
    assert {r["rollout_id"] for r in records} == {target["rollout_id"]}
    seqs = [r["sequence_id"] for r in records]
    assert seqs == sorted(set(seqs))  # increasing, one id each
    assert seqs == [round(r["start_time"] * 1_000_000) for r in records]  # start, in µs


def test_store_from_environment(db: Path) -> None:
    result = cli("rollouts", env={"LIGHTNING_OTLP_STORE": f"sqlite:///{db}"})
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 4


def test_bad_store_url_is_a_clean_error() -> None:
    result = cli("rollouts", "--store", "mysql://nowhere")
    assert result.returncode == 2
    assert "unknown store URL" in result.stderr and "Traceback" not in result.stderr


def test_rollouts_table_for_people(db: Path) -> None:
    result = cli("rollouts", "--store", f"sqlite:///{db}", "--table")
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ROLLOUT",
        "STATUS",
        "ATTEMPTS",
        "SPANS",
        "DURATION",
        "REWARD",
        "MODE",
        "ORIGIN",
    ]
    rows = [line.split() for line in lines[1:-1]]
    assert len(rows) == 4 and lines[-1] == "4 rollout(s)"
    assert sorted(int(r[3]) for r in rows) == [1, 10, 10, 10]
    assert {r[1] for r in rows} == {"running"}
    assert {r[7] for r in rows} == {"explicit", "trace"}


def test_rollouts_default_to_json_lines_into_a_pipe(db: Path) -> None:
    lines = cli("rollouts", "--store", f"sqlite:///{db}").stdout.splitlines()
    assert all(json.loads(line)["attempt"] for line in lines)
    assert cli("rollouts", "--store", f"sqlite:///{db}", "--json").stdout.splitlines() == lines


def test_rollouts_default_to_a_table_on_a_terminal(db: Path) -> None:
    leader, follower = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lightning_otlp", "rollouts", "--store", f"sqlite:///{db}"],
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert proc.returncode == 0
    text = b"".join(chunks).decode()
    assert text.startswith("ROLLOUT") and "4 rollout(s)" in text


def test_reading_an_outbox_does_not_start_forwarding(tmp_path: Path) -> None:
    from lightning_otlp.forward.store import ForwardingStore
    from lightning_otlp.receiver.route import RoutingConfig, route

    outbox = tmp_path / "outbox.db"
    store = ForwardingStore("http://127.0.0.1:9", str(outbox), forward=False)
    store.open()
    store.write(route(genai_request(6, rollouts=2), RoutingConfig()))
    store.close()
    url = f"agl+http://127.0.0.1:9?outbox={outbox}"
    result = cli("rollouts", "--json", "--store", url)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert len(cli("spans", "--store", url).stdout.splitlines()) == 6  # all still pending
    status = json.loads(cli("status", "--json", "--store", url).stdout)
    assert status["pending_spans"] == 6 and status["last_error"] is None


def test_read_commands_take_the_store_from_the_config_file(db: Path, tmp_path: Path) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text(f'store = "sqlite:///{db}"\n')
    by_file = cli("rollouts", "--json", "--config", str(config))
    assert by_file.returncode == 0, by_file.stderr
    assert len(by_file.stdout.splitlines()) == 4
    by_env = cli("spans", env={"LIGHTNING_OTLP_CONFIG": str(config)})
    assert len(by_env.stdout.splitlines()) == 31
    # A flag still beats the file, as for serve.
    other = tmp_path / "other.db"
    empty = SQLiteStore(str(other))
    empty.open()
    empty.close()
    by_flag = cli("spans", "--config", str(config), "--store", f"sqlite:///{other}")
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout == ""


@pytest.mark.parametrize("command", ["rollouts", "spans", "status"])
def test_read_commands_on_a_missing_store_create_nothing(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "not" / "there.db"
    result = cli(command, "--store", f"sqlite:///{missing}")
    assert result.returncode == 2
    assert "no store" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "not").exists()


def _filled_store(path: Path) -> None:
    """20 rollouts of 100 spans each, checkpointed into the file."""
    import sqlite3

    store = SQLiteStore(str(path))
    store.open()
    pipeline = Pipeline(store)
    try:
        for i in range(20):
            body = genai_request(100, rollouts=1, seed=i).SerializeToString()
            pipeline.export_traces(body, None, PROTOBUF)
    finally:
        pipeline.close()
        store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _overwrite_pages(
    path: Path, name: str, pagetype: str, which: slice | Callable[[list[int]], list[int]]
) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [
            row[0]
            for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno",
                (name, pagetype),
            )
        ]
    chosen = which(pages) if callable(which) else pages[which]
    with open(path, "r+b") as f:
        for page in chosen:
            f.seek((page - 1) * size)
            f.write(b"\xa5" * size)


@pytest.mark.slow
def test_salvage_reads_spans_by_rowid_when_the_list_of_rollouts_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "lost.db"
    _filled_store(path)
    _overwrite_pages(path, "rollouts", "leaf", slice(None))
    salvaged = cli("spans", "--store", f"sqlite:///{path}", "--salvage", "--raw")
    assert salvaged.returncode == 0, salvaged.stderr
    read = [json.loads(line) for line in salvaged.stdout.splitlines()]
    assert len(read) == 2000  # every span row is on an intact page
    assert len({s["rollout_id"] for s in read}) == 20


@pytest.mark.slow
def test_salvage_keeps_the_readable_spans_of_a_damaged_rollout(tmp_path: Path) -> None:
    path = tmp_path / "page.db"
    _filled_store(path)
    _overwrite_pages(path, "spans", "leaf", slice(5, 8))
    salvaged = cli("spans", "--store", f"sqlite:///{path}", "--salvage", "--raw")
    assert salvaged.returncode == 0, salvaged.stderr
    read = [json.loads(line) for line in salvaged.stdout.splitlines()]
    # three pages of span rows lost; every other row read back, by rowid where need be
    assert 1500 < len(read) < 2000
    assert len({(s["trace_id"], s["span_id"]) for s in read}) == len(read)


def test_an_empty_file_is_named_not_read_as_an_empty_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    checked = cli("check-store", "--store", f"sqlite:///{empty}")
    assert checked.returncode == 2 and "empty file (0 bytes)" in checked.stderr
    assert "Traceback" not in checked.stderr
    read = cli("rollouts", "--store", f"sqlite:///{empty}")
    assert read.returncode == 2 and "empty file (0 bytes)" in read.stderr
    assert empty.stat().st_size == 0  # reading created nothing in it


def test_serve_refuses_a_store_it_cannot_write(tmp_path: Path) -> None:
    """A read-only store would answer every export 503 for ever: refused at start instead."""
    path = tmp_path / "ro.db"
    store = SQLiteStore(str(path))
    store.open()
    store.close()
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a read-only file here: {made.stderr!r}")
    try:
        again = SQLiteStore(str(path))
        with pytest.raises(Exception, match="cannot write .*readonly"):
            again.open()
        result = cli("serve", "--store", f"sqlite:///{path}", "--grpc", "127.0.0.1:0",
                     "--http", "127.0.0.1:0", "--health", "off")  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "cannot write" in result.stderr and "Traceback" not in result.stderr
        read = cli("rollouts", "--store", f"sqlite:///{path}")
        assert read.returncode == 0, read.stderr
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, int]:
    """A store of 20 rollouts with one page of span rows in the middle overwritten."""
    path = tmp_path / "damaged.db"
    _filled_store(path)
    _overwrite_pages(path, "spans", "leaf", _middle)
    return path, 2000


def _middle(pages: list[int]) -> list[int]:
    return [pages[len(pages) // 2]]


@pytest.mark.slow
def test_check_store_finds_a_damaged_page(damaged: tuple[Path, int], db: Path) -> None:
    path, _ = damaged
    bad = cli("check-store", "--store", f"sqlite:///{path}")
    assert bad.returncode == 1
    assert "damaged" in bad.stderr and "Traceback" not in bad.stderr
    good = cli("check-store", "--store", f"sqlite:///{db}", "--full")
    assert good.returncode == 0 and "ok" in good.stdout


@pytest.mark.slow
def test_spans_salvage_what_is_readable(damaged: tuple[Path, int]) -> None:
    path, total = damaged
    plain = cli("spans", "--store", f"sqlite:///{path}")
    assert plain.returncode == 2
    assert "--salvage" in plain.stderr and "Traceback" not in plain.stderr
    salvaged = cli("spans", "--store", f"sqlite:///{path}", "--salvage")
    assert salvaged.returncode == 0, salvaged.stderr
    read = [json.loads(line) for line in salvaged.stdout.splitlines()]
    assert 0 < len(read) < total
    assert "skipped" in salvaged.stderr
