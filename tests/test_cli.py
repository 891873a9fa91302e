"""The pacspace command as a user runs it: real processes, real files, one-line errors."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers import free_port

from pacspace.checkpoint import open_checkpoint
from pacspace.note import parse_vkey

COMMANDS = [
    "init", "serve", "log-key", "fsck", "admin", "admin party", "admin party add", "admin party revoke",
    "admin party list", "keys", "keys init", "keys show", "relationship", "relationship create",
    "relationship list", "record", "close", "records", "receipt", "receipt verify", "monitor", "bill", "bill verify", "evidence", "evidence export", "evidence verify", "witness", "witness init", "witness serve",
    "recorder", "recorder import", "recorder flush", "recorder status", "recorder serve", "recorder prove-event",
    "evidence verify-event",
]


def pacspace(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pacspace", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)  # not listening yet, or still starting: a connection waits in the backlog until it serves
    raise AssertionError(f"{url} did not answer in {timeout}s")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command):
    result = pacspace(*(command.split() if command else []), "--help")
    assert result.returncode == 0
    assert "usage: pacspace" in result.stdout
    assert len(result.stdout.splitlines()) > 3


def test_init_log_key_fsck(tmp_path):
    data = tmp_path / "log"
    result = pacspace("init", "--data", str(data), "--origin", "example.com/cli-log")
    assert result.returncode == 0, result.stderr
    vkey = result.stdout.strip()
    assert parse_vkey(vkey).name == "example.com/cli-log"
    assert (data / "log.key").stat().st_mode & 0o777 == 0o600
    assert pacspace("log-key", "--data", str(data)).stdout.strip() == vkey
    again = pacspace("init", "--data", str(data))
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    assert "PRIVATE" not in again.stderr
    ok = pacspace("fsck", "--data", str(data))
    assert ok.returncode == 0, ok.stderr
    assert "fsck: ok" in ok.stdout
    os.unlink(data / "log.key")
    audit = pacspace("fsck", "--data", str(data), "--log-key", vkey)
    assert audit.returncode == 0, audit.stderr


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["init", "--origin", "has space"], "invalid origin", 2),
        (["init", "--origin", "https://example.com/x"], "invalid origin", 2),
        (["log-key"], "no log key", 1),
        (["fsck"], "no log", 1),
        (["fsck", "--log-key", "not-a-vkey"], "verifier key", 2),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message, code):
    """Bad input exits 2, a missing log 1 (pacspace.exitcodes)."""
    result = pacspace(*args[:1], "--data", str(tmp_path / "d"), *args[1:])
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pacspace: error:") and message in lines[0]


def test_fsck_reports_a_fault_and_exits_6(tmp_path):
    data = tmp_path / "log"
    assert pacspace("init", "--data", str(data)).returncode == 0
    conn = sqlite3.connect(data / "log.db")
    conn.execute("UPDATE checkpoints SET note = CAST(replace(note, 'localhost', 'localhosx') AS BLOB)")
    conn.commit()
    conn.close()
    result = pacspace("fsck", "--data", str(data))
    assert result.returncode == 6  # a fault proves the stored log does not verify (pacspace.exitcodes)
    assert "fault" in result.stderr


def test_serve_first_run_creates_the_log_and_serves_it(tmp_path):
    """The README's first command, in an empty directory: no set-up beyond it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacspace", "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc)
        vkey = pacspace("log-key", cwd=tmp_path).stdout.strip()
        body = wait_for(f"http://127.0.0.1:{port}/checkpoint", proc)
        checkpoint = open_checkpoint(body, parse_vkey(vkey))
        assert checkpoint.size == 0 and checkpoint.timestamp > 0
        # A second server on the same data directory is refused.
        second = pacspace("serve", "--port", str(free_port()), cwd=tmp_path)
        assert second.returncode == 1
        assert "another process" in second.stderr
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (tmp_path / "pacspace-data" / "log.db").exists()
    assert "PRIVATE" not in err


def test_serve_refuses_untrusted_state(tmp_path):
    data = tmp_path / "log"
    assert pacspace("init", "--data", str(data)).returncode == 0
    conn = sqlite3.connect(data / "log.db")
    conn.execute("INSERT INTO bundles VALUES (0, x'0001ff')")
    conn.commit()
    conn.close()
    result = pacspace("serve", "--data", str(data), "--port", str(free_port()))
    assert result.returncode == 1
    assert "entry bundles" in result.stderr
