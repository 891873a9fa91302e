"""Clients built before consent and findings keep working against this server: a provider running an older client
is normal, and a customer's older monitor is never shown an invitation it cannot accept.

The older client is this repository's own code at commit 3d326d5 (the last before this change), taken from
the git history and run from its own directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
from helpers import World, cli

OLD = "3d326d5"
REPO = Path(__file__).resolve().parent.parent


def _old_source(into: Path) -> Path:
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"this checkout has no history back to {OLD} (a shallow clone): the older client cannot be rebuilt")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", OLD, "src/pacspace"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def old(*args: str, env: dict[str, str], src: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "pacspace", *args], capture_output=True, text=True, timeout=120,
                            env={**env, "PYTHONPATH": str(src)})
    assert result.returncode == code, (args, result.returncode, result.stderr)
    return result


def test_an_older_provider_and_an_older_monitor_against_this_server(tmp_path, log_database):
    """On each backend of the server's log and records (log_database: SQLite, then PostgreSQL)."""
    src = _old_source(tmp_path / "old")
    probe = subprocess.run([sys.executable, "-c", "import pacspace.client.monitor as m; print(m.__file__)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
    assert probe.stdout.startswith(str(src)), "the older client must be the one that runs"
    w = World(tmp_path, database=log_database)
    w.start()
    try:
        w.party("acme", "provider")
        w.party("mallory", "provider")
        w.party("bob", "customer")
        carol = w.party("carol", "customer")
        acme, bob = w.env["acme"], w.env["bob"]
        # The older provider creates, records, closes and reads, as it always did.
        rid = old("relationship", "create", "--customer", "bob", "--cadence", "hourly", env=acme, src=src).stdout.strip()
        for hour, quantity in ((0, "10"), (1, "20")):
            old("record", "--relationship", rid, "--meter", "m", "--quantity", quantity, "--period", "2026-11",
                "--window", f"2026-11-02T{hour:02d}:00:00Z/2026-11-02T{hour + 1:02d}:00:00Z", env=acme, src=src)
        old("close", "--relationship", rid, "--period", "2026-11", env=acme, src=src)
        rows = json.loads(old("records", "--relationship", rid, "--json", env=acme, src=src).stdout)["rows"]
        assert [r["quantity"] for r in rows if r["kind"] == "close"] == ["30"]
        listed = json.loads(old("relationship", "list", "--json", env=acme, src=src).stdout)
        assert [(r["relationship"], r["state"]) for r in listed] == [(rid, "pending")]  # a field it ignores
        # The current customer accepts it, and checks the bill the older provider closed.
        cli("relationship", "accept", rid, env=bob)
        assert cli("monitor", "--once", env=bob).stdout.startswith("ok:")
        bill = json.loads(cli("bill", "verify", "--relationship", rid, "--period", "2026-11", "--format", "json",
                              env=bob).stdout)
        assert bill["verdict"] == "match" and [x["committed"] for x in bill["lines"]] == ["30"]
        # A rogue invitation to carol, who still runs the older monitor: it never sees it.
        old("keys", "show", env=carol, src=src)
        cli("relationship", "create", "--customer", "carol", env=w.env["mallory"])
        polled = old("monitor", "--once", env=carol, src=src)
        assert polled.stdout.startswith("ok:") and "0 new records verified in 0 relationships" in polled.stdout
        assert json.loads(old("relationship", "list", "--json", env=carol, src=src).stdout) == []
    finally:
        w.stop()
