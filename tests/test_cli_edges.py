"""The pacspace command at its edges, as a new user meets them (real processes, real servers on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import World, cli, free_port

from pacspace import exitcodes
from pacspace.note import NoteSigner


def env_on(database: str | None) -> dict[str, str]:
    """This process's environment, with the log's tables in ``database`` (PACSPACE_DATABASE, as an operator exports
    it) or in the data directory."""
    env = {k: v for k, v in os.environ.items() if k != "PACSPACE_DATABASE"}
    if database is not None:
        env["PACSPACE_DATABASE"] = database
    return env


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pacspace: error: "), result.stderr
    return lines[0]


def test_version():
    result = cli("--version", env=dict(os.environ))
    assert result.stdout.startswith("pacspace ") and result.stdout.split()[1][0].isdigit()


def test_serve_refuses_another_origin_for_an_existing_log(tmp_path, log_database):
    data, env = tmp_path / "log", env_on(log_database)
    cli("init", "--data", str(data), "--origin", "example.com/a", env=env)
    refused = cli("serve", "--data", str(data), "--origin", "example.com/b", "--port", str(free_port()),
                  env=env, code=exitcodes.USAGE)
    assert "is example.com/a, not example.com/b" in one_error_line(refused)


@pytest.fixture
def held_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_port_in_use_leaves_nothing_behind(tmp_path, held_port, log_database):
    env = env_on(log_database)
    served = cli("serve", "--data", str(tmp_path / "new-log"), "--port", str(held_port), env=env,
                 code=exitcodes.FAILURE)
    assert "Address already in use" in one_error_line(served) and "serving on" not in served.stderr
    assert not (tmp_path / "new-log").exists()
    if log_database is not None:  # nor any table in the database
        import psycopg

        with psycopg.connect(log_database) as conn:
            assert conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                                ).fetchall() == []
    (tmp_path / "recorder.toml").write_text('[recorder]\ndata = "spool"\n[[customers]]\nref = "c1"\nrelationship = "acme:r1"\n')
    recorder = cli("recorder", "serve", "--config", str(tmp_path / "recorder.toml"), "--port", str(held_port), env=env,
                   code=exitcodes.FAILURE)
    assert "Address already in use" in one_error_line(recorder) and "recorder on" not in recorder.stderr
    assert not (tmp_path / "spool").exists()
    for interval in ("0", "-1"):
        refused = cli("recorder", "serve", "--config", str(tmp_path / "recorder.toml"), "--flush-interval", interval,
                      env=env, code=exitcodes.USAGE)
        assert "--flush-interval" in one_error_line(refused)
    assert not (tmp_path / "spool").exists()


def test_serving_on_is_said_once_the_port_is_bound(tmp_path, log_database):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env_on(log_database))
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "serving on" in line:
                break
        else:
            raise AssertionError("serve never said it was serving")
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # at once: no retry
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def world(tmp_path, log_database):
    """A real serve, its log and records on each backend (log_database: SQLite, then PostgreSQL)."""
    w = World(tmp_path, database=log_database)
    w.start()
    yield w
    w.stop()


def test_a_failed_keys_init_leaves_no_files(world, tmp_path):
    base = {**world.base, "PACSPACE_HOME": str(tmp_path / "h1")}
    unreachable = cli("keys", "init", env={**base, "PACSPACE_TOKEN": "x", "PACSPACE_URL": f"http://127.0.0.1:{free_port()}"},
                      code=exitcodes.UNREACHABLE)
    assert "cannot reach" in one_error_line(unreachable)
    wrong = cli("keys", "init", env={**base, "PACSPACE_TOKEN": "not-a-token"}, code=exitcodes.USAGE)
    assert "token" in one_error_line(wrong)
    assert not (tmp_path / "h1").exists()
    # The party registered keys from another home already: a second home gets none.
    token = cli("admin", "party", "add", "acme", "--role", "provider", "--data", str(world.data), env=world.base).stdout.strip()
    cli("keys", "init", env={**world.base, "PACSPACE_TOKEN": token, "PACSPACE_HOME": str(tmp_path / "first")})
    (tmp_path / "h2").mkdir()
    (tmp_path / "h2" / "notes.txt").write_text("mine")
    again = cli("keys", "init", env={**world.base, "PACSPACE_TOKEN": token, "PACSPACE_HOME": str(tmp_path / "h2")},
                code=exitcodes.USAGE)
    assert "registered other keys" in one_error_line(again)
    assert sorted(p.name for p in (tmp_path / "h2").iterdir()) == ["notes.txt"]


# On SQLite only, to keep the PostgreSQL run short (it would add some 25-35 s, the most of any test here): its edges are
# the client's (the recorder's refusals, --until and --force, close's totals, receipts and bundles checked with the
# pinned key, a quorum, an older fingerprint). What it asks of the server's storage (create, accept, record, close,
# monitor, export) the same commands ask of PostgreSQL in tests/test_cli_records.py and tests/test_isolation_e2e.py.
@pytest.mark.parametrize("log_database", [None])
def test_the_provider_and_the_customer_at_the_edges(world, tmp_path):
    """recorder flush and status check the server and the token when nothing is due; --until in the future needs
    --force; close prints its totals; receipt verify and evidence verify use the log key pinned in the home."""
    acme, bob = world.party("acme", "provider"), world.party("bob", "customer")
    rid = cli("relationship", "create", "--customer", "bob", "--cadence", "hourly", env=acme).stdout.strip()
    cli("relationship", "accept", rid, env=bob)
    config = tmp_path / "recorder.toml"
    config.write_text(f'[recorder]\ndata = "spool"\n[[customers]]\nref = "c1"\nrelationship = "{rid}"\ncadence = "hourly"\n')
    nothing = json.loads(cli("recorder", "flush", "--config", str(config), env=acme).stdout)
    assert nothing["committed"] == 0 and nothing["errors"] == 0
    assert "answers" in cli("recorder", "status", "--config", str(config), env=acme).stderr
    for command in ("flush", "status"):
        bad_token = cli("recorder", command, "--config", str(config), env={**acme, "PACSPACE_TOKEN": "nope"},
                        code=exitcodes.USAGE)
        assert "token" in bad_token.stderr.splitlines()[-1]
        away = cli("recorder", command, "--config", str(config), env={**acme, "PACSPACE_URL": f"http://127.0.0.1:{free_port()}"},
                   code=exitcodes.UNREACHABLE)
        assert "cannot reach" in away.stderr.splitlines()[-1]
        customer = cli("recorder", command, "--config", str(config), env=bob, code=exitcodes.USAGE)
        assert "as a provider" in customer.stderr.splitlines()[-1]
    future = cli("recorder", "flush", "--config", str(config), "--until", "2027-03-01T00:20:00Z", env=acme,
                 code=exitcodes.USAGE)
    line = one_error_line(future)
    assert "--force" in line and "closes 2026-12, 2027-01, 2027-02" in line
    forced = cli("recorder", "flush", "--config", str(config), "--until", "2027-03-01T00:20:00Z", "--force", env=acme)
    assert "closes 2026-12, 2027-01, 2027-02" in forced.stderr

    for hour, quantity in ((0, "10"), (1, "20.5")):
        cli("record", "--relationship", rid, "--meter", "m", "--quantity", quantity, "--unit", "u", "--dim", "k=v",
            "--period", "2026-11", "--window", f"2026-11-02T{hour:02d}:00:00Z/2026-11-02T{hour + 1:02d}:00:00Z", env=acme)
    closed = cli("close", "--relationship", rid, "--period", "2026-11", "--out", str(tmp_path / "close.proof"), env=acme)
    assert "pacspace: 2026-11 total m k=v 30.5 u" in closed.stderr

    nobody = {**os.environ, "PACSPACE_HOME": str(tmp_path / "nobody")}
    pinned = cli("receipt", "verify", str(tmp_path / "close.proof"), env=bob)  # no --log-key: bob's pinned key
    assert pinned.stdout.startswith("ok: entry at index")
    assert "no pinned log key" in one_error_line(cli("receipt", "verify", str(tmp_path / "close.proof"), env=nobody,
                                                     code=exitcodes.USAGE))
    other_log = World(tmp_path / "other")
    other_log.data.mkdir(parents=True)
    other_vkey = cli("init", "--data", str(other_log.data), env=dict(os.environ)).stdout.strip()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "log.vkey").write_text(other_vkey + "\n")
    cli("receipt", "verify", str(tmp_path / "close.proof"), env={**os.environ, "PACSPACE_HOME": str(stranger)},
        code=exitcodes.VERIFICATION_FAILED)
    # A quorum the receipt lacks: no `ok:` line first.
    witness = NoteSigner("example.com/w1", Ed25519PrivateKey.generate()).cosignature_verifier.vkey()
    log_vkey = (Path(bob["PACSPACE_HOME"]) / "log.vkey").read_text().strip()
    (tmp_path / "policy").write_text(f"log {log_vkey}\nwitness w1 {witness}\nquorum w1\n")
    unwitnessed = cli("receipt", "verify", str(tmp_path / "close.proof"), "--policy", str(tmp_path / "policy"), env=bob,
                      code=exitcodes.VERIFICATION_FAILED)
    assert unwitnessed.stdout == "" and "quorum" in one_error_line(unwitnessed)

    cli("monitor", "--once", env=bob)
    bundle = tmp_path / "2026-11.evidence.json"
    cli("evidence", "export", "--relationship", rid, "--period", "2026-11", "--out", str(bundle), env=bob)
    checked = cli("evidence", "verify", str(bundle), env=bob)
    assert checked.stdout.startswith(f"ok: {rid} 2026-11: 2 records")
    cli("evidence", "verify", str(bundle), env={**os.environ, "PACSPACE_HOME": str(stranger)},
        code=exitcodes.VERIFICATION_FAILED)
    assert "no pinned log key" in one_error_line(cli("evidence", "verify", str(bundle), env=nobody, code=exitcodes.USAGE))
    # An older, 128-bit fingerprint of the provider's keys still names them.
    old = cli("keys", "show", env=acme).stdout.strip()[:39]
    cli("evidence", "verify", str(bundle), "--provider-key", old, env=bob)
    wrong = cli("evidence", "verify", str(bundle), "--provider-key", "0000:" * 7 + "0000", env=bob,
                code=exitcodes.VERIFICATION_FAILED)
    assert "fingerprint" in one_error_line(wrong)
