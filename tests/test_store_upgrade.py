"""A store written by the previous release opens with today's code and reads back the same.

``tests/upgrade/store.db``, ``outbox.db`` and ``expected.json`` were written by
``tests/upgrade/write_store.py`` running on that release's source: OTLP spans (an API
rollout with an outcome, a per-trace and a keyed rollout, a model call), the API's queue,
workers and resources. Opening the file migrates it; every record the read commands and the
LightningStore API give back must be what the release gave back from the same file.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any

from lightning_otlp.cli import READ_ONLY
from lightning_otlp.forward.outbox import OUTBOX, Outbox
from lightning_otlp.store import SQLiteStore
from lightning_otlp.store.migrations import INGEST, SQLITE, applied
from lightning_otlp.wiring import lightning_api

GOLDEN = Path(__file__).parent / "upgrade"


def _writer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("write_store", GOLDEN / "write_store.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    shutil.copyfile(GOLDEN / "store.db", path)
    return path


def test_a_released_store_reads_back_the_same(tmp_path: Path) -> None:
    expected: dict[str, Any] = json.loads((GOLDEN / "expected.json").read_text())
    expected.pop("made")
    expected.pop("outbox")
    store = SQLiteStore(str(_copy(tmp_path)), READ_ONLY)
    store.open()
    try:
        api = lightning_api(store)
        assert api is not None
        got = json.loads(json.dumps(_writer().read(store, api)))
    finally:
        store.close()
    assert got == expected


def test_a_released_store_takes_new_writes(tmp_path: Path) -> None:
    """After the upgrade the API works on the old rows: the queued rollout is handed out."""
    made = json.loads((GOLDEN / "expected.json").read_text())["made"]
    path = _copy(tmp_path)
    store = SQLiteStore(str(path), READ_ONLY)
    store.open()
    try:
        api = lightning_api(store)
        assert api is not None
        [claimed] = api.dequeue_rollouts(1, "worker-2")
        assert claimed["rollout_id"] == made["queued"]
        assert api.get_resources(made["resources_id"]) is not None
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_released_store_records_its_migrations_by_name(tmp_path: Path) -> None:
    """The release counted steps in ``user_version`` and ``agl_api_schema``; opened today, the
    steps it had are recorded as applied (not run again) and the rest run once."""
    path = _copy(tmp_path)
    with sqlite3.connect(path) as conn:
        counted = conn.execute("PRAGMA user_version").fetchone()[0]
        assert 0 < counted <= len(INGEST)
        assert not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'"
        ).fetchone()
    for _ in range(2):
        store = SQLiteStore(str(path), READ_ONLY)
        store.open()
        store.close()
    with sqlite3.connect(path) as conn:
        names = applied(conn)
    # What the release had comes first (adopted), then what it lacked, each once.
    assert names[:counted] == [m.name for m in INGEST[:counted]]
    assert sorted(names) == sorted(m.name for m in SQLITE)


def test_a_released_outbox_gets_the_outbox_migration(tmp_path: Path) -> None:
    """The release's outbox (its tables made with IF NOT EXISTS, counted nowhere) keeps its
    pending spans, and the outbox's migration is recorded after every SQLite store's."""
    path = tmp_path / "outbox.db"
    shutil.copyfile(GOLDEN / "outbox.db", path)
    expected = json.loads((GOLDEN / "expected.json").read_text())["outbox"]
    outbox = Outbox(str(path), "http://127.0.0.1:9")
    outbox.open()
    try:
        assert list(outbox.pending()) == expected["pending"]
    finally:
        outbox.store.close()
    with sqlite3.connect(path) as conn:
        names = applied(conn)
        assert sorted(names) == sorted(m.name for m in SQLITE + OUTBOX)
        assert names[-1] == OUTBOX[-1].name
        assert conn.execute("SELECT COUNT(*) FROM forward_state").fetchone() == (1,)
