"""A throwaway PostgreSQL server for the tests: its own cluster in a temporary directory, on a free
loopback port, stopped and removed at the end.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``),
installed here when missing and running as root. The server refuses to run as root, so then the
cluster belongs to the ``postgres`` user and every server command runs through ``runuser``.
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg

from .support import free_port

# Several receivers, each with a connection pool, on one server.
MAX_CONNECTIONS = 300
_SERVER_USER = "postgres"
_names = itertools.count(1)


def _bin_dirs() -> list[Path]:
    """Debian's PostgreSQL binary directories, newest version first."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    return sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)[::-1]


def install_postgresql() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``, after installing Debian's package if needed.

    Installing starts Debian's own cluster on 5432 where it can; it is stopped again, and nothing
    here uses it: our cluster has its own directory, port and socket.
    """
    dirs = _bin_dirs()
    if dirs:
        return dirs[0]
    if os.geteuid() != 0:
        raise RuntimeError(
            "PostgreSQL is missing: install Debian's `postgresql` package "
            "(apt-get install postgresql), which puts initdb under /usr/lib/postgresql/*/bin"
        )
    # pytest-xdist workers may all get here at once; apt takes one at a time
    with open(Path(tempfile.gettempdir()) / "lightning-otlp-postgresql-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _bin_dirs()[0] if _bin_dirs() else _apt_install()


def _apt_install() -> Path:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install postgresql failed:\n{done.stdout}{done.stderr}")
    _stop_debian_clusters()
    dirs = _bin_dirs()
    if not dirs:
        raise RuntimeError("Debian's postgresql package installed no initdb")
    return dirs[0]


def _stop_debian_clusters() -> None:
    """Stop the clusters Debian's package started (its ``main`` on 5432)."""
    if shutil.which("pg_lsclusters") is None:
        return
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "online":
            subprocess.run(["pg_ctlcluster", fields[0], fields[1], "stop"], capture_output=True)


class PostgresServer:
    """One PostgreSQL cluster of our own: ``start()``, ``stop()``, ``create_database()``."""

    def __init__(self) -> None:
        self.bin_dir = install_postgresql()
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="lightning-otlp-pg-"))
        if self.as_root:  # the server's user must own its directories
            shutil.chown(self.base, _SERVER_USER, _SERVER_USER)
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "run"
        self.log_path = self.base / "server.log"
        self.port = free_port()
        self._initialized = False

    def _run(self, *args: str, timeout: float = 120.0) -> str:
        """A server command as the server's user; its output, or an error with the server log."""
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", _SERVER_USER, "--", *command]
        done = subprocess.run(
            command, cwd=self.base, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:1])} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"server log:\n{self.log_tail()}"
            )
        return done.stdout

    def _initdb(self) -> None:
        # trust on loopback and the socket: a throwaway cluster that only this machine reaches
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", _SERVER_USER, "--auth=trust", "-E", "UTF8"
        )
        self.socket_dir.mkdir()
        if self.as_root:
            shutil.chown(self.socket_dir, _SERVER_USER, _SERVER_USER)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                f"max_connections = {MAX_CONNECTIONS}\n"
                "logging_collector = off\n"
            )
        self._initialized = True

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Start the server (creating its cluster the first time); returns once it accepts."""
        if not self._initialized:
            self._initdb()
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 10,
        )
        return self

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """``fast`` ends sessions cleanly; ``immediate`` is a crash: recovery on the next start."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        status = [str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)]
        if self.as_root:
            status = ["runuser", "-u", _SERVER_USER, "--", *status]
        return subprocess.run(status, capture_output=True).returncode == 0

    def close(self) -> None:
        """Stop the server if it runs, and remove its directory."""
        if self._initialized and self.running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The libpq URL of one database, as ``--store`` takes it."""
        return f"postgresql://{_SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        name = name or f"test_{os.getpid()}_{next(_names)}"
        with connect(self.url()) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, size: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no server log)"


@contextmanager
def connect(url: str, timeout: float = 5.0) -> Iterator[psycopg.Connection[Any]]:
    """A connection in autocommit mode, closed afterwards."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)))
    try:
        yield conn
    finally:
        conn.close()


def query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """All rows of one statement, for assertions."""
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def execute(url: str, sql: str, params: Sequence[Any] = ()) -> None:
    with connect(url) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]
