"""A real PostgreSQL server for the tests: a throwaway cluster on 127.0.0.1, started once per run.

Debian's packages (`apt-get install postgresql`, which .ci/run does where they are missing) put the
binaries in /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root, so as root the cluster
belongs to the `postgres` user the package creates. fsync stays on: commits are tested as they run.
Each test gets a database of its own (``PostgresServer.database``). Where PostgreSQL is not installed, the tests
that need it fail, saying what to install: they never skip.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

def find_bindir() -> Path | None:
    config = shutil.which("pg_config")
    if config:
        bindir = Path(subprocess.run([config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="pacspace-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "pacspace", "-E", "UTF8", "--no-sync")
        self.resume()
        self._names = itertools.count()

    def resume(self) -> None:
        """Start the server (again, after ``halt``)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=on "
                  "-c max_connections=300 -c shared_buffers=64MB", "start")

    def halt(self) -> None:
        """Stop the server as a restart or a failover does: every connection ends at once (its data stays)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _run(self, program: str, *args: str) -> None:
        argv = [str(self.bindir / program), *args]
        if self._as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{program} failed: {done.stderr.strip() or done.stdout.strip()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://pacspace@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_or_fail() -> PostgresServer:
    """As the browser tests do (tests/browser.py): a missing server fails its tests, saying what to install."""
    bindir = find_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run installs it)")
    return PostgresServer(bindir)
