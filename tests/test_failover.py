"""Three ``serve --database`` processes on one log: one sequences, the others are standbys that forward writes
to it and take over when it stops (server/standby.py). The sequencer is SIGKILLed at random moments while
records go in through all three."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from helpers import add_two_parties, cli, free_port, http_call as _call, post_record as _post, sealed_record as _sealed, wait_for_health

from pacspace.checkpoint import open_checkpoint
from pacspace.datadir import load_signer
from pacspace.merkle import verify_consistency
from pacspace.receipt import verify_receipt
from pacspace.storage.pgconnect import WRITER_LOCK

KILLS = 20
APPENDERS = 3
# A record not acknowledged for this long is stuck (409 previous_in_flight for good, 503s that never end).
STUCK = 30.0


def _health(port: int) -> dict | None:  # type: ignore[type-arg]
    try:
        status, body = _call(port, "GET", "/health", timeout=2)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def _appended(port: int, rid: str, seq: int, record: dict, deadline: float, why: str = "") -> None:  # type: ignore[type-arg]
    """Send the record until it is acknowledged; only a serve that is down, a 503, or in-flight may delay it."""
    while True:
        assert time.monotonic() < deadline, f"{rid} seq {seq} never went in{why}"
        try:
            status, body = _post(port, rid, seq, record)
        except OSError:
            status, body = 0, b""
        if status in (200, 201):
            return
        assert status in (0, 503) or json.loads(body)["error"] == "previous_in_flight", body
        time.sleep(0.1)


class Serves:
    """The three serve processes, each with its own copy of the log key, restarted after each kill."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.args = args
        self.dirs = [tmp_path / f"serve{i}" for i in range(3)]
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * 3
        self.logs = [tmp_path / f"serve{i}.log" for i in range(3)]
        for d in self.dirs[1:]:
            d.mkdir(mode=0o700)
            for name in ("log.key", "database"):
                shutil.copy2(self.dirs[0] / name, d / name)

    def start(self, i: int, wait: bool = True) -> None:
        with open(self.logs[i], "ab") as out:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "pacspace", "serve", "--data", str(self.dirs[i]), "--port", str(self.ports[i]),
                 "--workers", "0", "--pool-interval", "0.01", *self.args], env=self.env, stdout=subprocess.DEVNULL, stderr=out)
        if wait:
            wait_for_health(f"http://127.0.0.1:{self.ports[i]}")

    def all_alive(self) -> None:
        """No serve exited by itself: a standby that lost a takeover race, or a deposed sequencer, stays a standby."""
        for proc, log in zip(self.procs, self.logs):
            assert proc is not None and proc.poll() is None, log.read_text()

    def sequencer(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            for i, port in enumerate(self.ports):
                health = _health(port)
                if health is not None and health.get("role") == "sequencer":
                    return i
            time.sleep(0.05)
        raise AssertionError("no serve took over as the sequencer:\n" + "\n".join(p.read_text() for p in self.logs))

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                proc.wait(timeout=60)


def test_three_serves_lose_no_acknowledged_record_over_twenty_kills_of_the_sequencer(tmp_path, postgres_url, s3,
                                                                                       s3_env):
    """Three serves of one log in one PostgreSQL and one bucket, as docs/operations.md runs them. Every
    acknowledged receipt is found afterwards at its index with the ciphertext sent (its blob moved to the
    bucket), every checkpoint a client was given is consistent with the final one, and fsck passes. Each kill,
    a standby takes over by itself."""
    env = {**os.environ, **s3_env, "PACSPACE_DATABASE": postgres_url}
    first = tmp_path / "serve0"
    cli("init", "--data", str(first), env=env)
    add_two_parties(first, postgres_url)
    serves = Serves(tmp_path, env, "--objects", f"s3://{s3.bucket()}")
    receipts: list[tuple[str, int, dict]] = []  # type: ignore[type-arg]
    sent: dict[tuple[str, int], str] = {}
    unexpected: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def append(k: int) -> None:
        rid, seq, pending = f"acme:r{k}", 0, None
        rng = random.Random(k)
        waiting_since, status = time.monotonic(), 0
        while not stop.is_set() and len(unexpected) < 5:
            if time.monotonic() - waiting_since > STUCK:
                unexpected.append(f"{rid} seq {seq}: not acknowledged for {STUCK} s (last answer {status})")
                return
            if pending is None:
                pending = _sealed(seq)
            port = rng.choice(serves.ports)
            status = 0
            try:
                status, body = _post(port, rid, seq, pending)
            except OSError:
                time.sleep(0.05)  # that serve was killed, or is taking over: the same record again, elsewhere
                continue
            if status in (200, 201):
                answer = json.loads(body)
                with lock:
                    receipts.append((rid, seq, answer["receipt"] if seq == 0 else answer))
                    sent[(rid, seq)] = str(pending["ciphertext"])
                seq, pending, waiting_since = seq + 1, None, time.monotonic()
            elif status == 503 or (status == 409 and json.loads(body)["error"] == "previous_in_flight"):
                time.sleep(0.05)
            else:
                unexpected.append(f"{rid} seq {seq}: {status} {body[:300]!r}")

    try:
        serves.start(0)
        serves.start(1)
        serves.start(2)
        assert serves.sequencer(time.monotonic() + 10) == 0
        assert {_health(p)["role"] for p in serves.ports[1:]} == {"frontend"}  # type: ignore[index]
        threads = [threading.Thread(target=append, args=(k,)) for k in range(APPENDERS)]
        for t in threads:
            t.start()
        rng = random.Random(7)
        for _ in range(KILLS):
            current = serves.sequencer(time.monotonic() + 60)
            time.sleep(rng.uniform(0.1, 0.6))  # appends under way through all three
            before = len(receipts)
            proc = serves.procs[current]
            assert proc is not None and proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            serves.sequencer(time.monotonic() + 60)  # another one took over by itself
            deadline = time.monotonic() + 60
            while len(receipts) <= before and not unexpected:  # and records go in again
                assert time.monotonic() < deadline, "no record was acknowledged after the takeover"
                time.sleep(0.05)
            serves.start(current, wait=False)  # back, as a standby
            others = [p for i, p in enumerate(serves.procs) if i != current]
            assert all(p is not None and p.poll() is None for p in others), "a serve exited during a takeover"
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert not unexpected, unexpected
        wait_for_health(f"http://127.0.0.1:{serves.ports[current]}")
        serves.all_alive()
        assert len(receipts) > KILLS * APPENDERS
        sequencing = serves.sequencer(time.monotonic() + 60)
        port = serves.ports[(sequencing + 1) % 3]  # a standby: it serves the reads, and forwards the records' reads
        assert _health(port)["role"] == "frontend"  # type: ignore[index]
        status, body = _call(port, "GET", "/checkpoint")
        assert status == 200
        vkey = load_signer(first).verifier
        final = open_checkpoint(body, vkey)
        # The sequencer moved every blob to the bucket: what follows reads them from there.
        deadline = time.monotonic() + 60
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM records WHERE blob IS NOT NULL").fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "blobs were left in the database"
                time.sleep(0.1)
        # Every acknowledged record is there, at the index its receipt gave, with its entry and its ciphertext.
        for k in range(APPENDERS):
            stored: dict[int, dict] = {}  # type: ignore[type-arg]
            while True:
                status, body = _call(port, "GET", f"/v1/relationships/acme:r{k}/records?limit=1000&after_seq={len(stored) - 1}")
                assert status == 200, body
                page = json.loads(body)["records"]
                stored.update((r["seq"], r) for r in page)
                if len(page) < 1000:
                    break
            for rid, seq, receipt in receipts:
                if rid == f"acme:r{k}":
                    assert stored[seq]["index"] == receipt["index"], (rid, seq)
                    assert stored[seq]["ciphertext"] == sent[(rid, seq)], (rid, seq)
        # Every checkpoint a client was given is consistent with the final one, and includes its record.
        for rid, seq, receipt in receipts:
            given = open_checkpoint(receipt["checkpoint"].encode(), vkey)
            assert given.size <= final.size
            status, body = _call(port, "GET", f"/v1/proof/consistency?old={given.size}&size={final.size}")
            assert status == 200, body
            hashes = [base64.b64decode(h) for h in json.loads(body)["hashes"]]
            verify_consistency(given.size, final.size, given.root_hash, final.root_hash, hashes)
            verified = verify_receipt(receipt["proof"], vkey)  # the record's entry, under that checkpoint
            assert (verified.index, verified.leaf_hash) == (receipt["index"], base64.b64decode(receipt["leaf_hash"]))
    finally:
        stop.set()
        serves.stop()
    checked = cli("fsck", "--data", str(first), env=env)
    assert "fsck: ok" in checked.stdout


def test_a_standby_that_could_never_sequence_is_refused_at_start(tmp_path, postgres_url, s3, s3_env):
    """A serve that could never sequence the log says so at once, in one line: another log's key beside the
    database's mark, another bucket than the log's, or no credentials for the log's bucket."""
    env = {**os.environ, **s3_env, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(tmp_path / "serve0"), env=env)
    bucket = f"s3://{s3.bucket()}"
    serves = Serves(tmp_path, env)
    try:
        serves.args = ("--objects", bucket)
        serves.start(0)
        port = str(serves.ports[1])
        deadline = time.monotonic() + 30  # the sequencer's mirror gives the bucket its mark, which a standby checks
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            while conn.execute("SELECT mark FROM objects").fetchone() in (None, (None,)):
                assert time.monotonic() < deadline, "the bucket was given no mark"
                time.sleep(0.1)
        for args, penv, says in (
                (("--objects", f"s3://{s3.bucket()}"), env, f"the log's objects are in {bucket}, not s3://"),
                ((), {k: v for k, v in env.items() if not k.startswith("AWS_")}, "needs AWS_ACCESS_KEY_ID"),
                ((), {**env, "AWS_ENDPOINT_URL": s3.endpoint + "/"}, "not the store the log's objects went to")):
            if "went to" in says:  # the endpoint leads to a bucket without the log's mark (another store)
                held_mark = s3.client(bucket).get("pacspace-log")
                s3.client(bucket).delete("pacspace-log")
            try:
                refused = cli("serve", "--data", str(serves.dirs[1]), "--port", port, *args, env=penv, code=1)
            finally:
                if "went to" in says:
                    s3.client(bucket).put("pacspace-log", held_mark or b"")
            assert says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        other = tmp_path / "other"
        cli("init", "--data", str(other), "--origin", load_signer(serves.dirs[0]).name,
            env={k: v for k, v in env.items() if k != "PACSPACE_DATABASE"})
        shutil.copy2(other / "log.key", serves.dirs[1] / "log.key")
        refused = cli("serve", "--data", str(serves.dirs[1]), "--port", str(serves.ports[1]), env=env, code=1)
        assert "is not the key of the log in the database" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert _health(serves.ports[0])["role"] == "sequencer"  # type: ignore[index]
    finally:
        serves.stop()


def test_a_restart_of_postgresql_leaves_one_sequencer_and_both_serves_taking_records(tmp_path, postgres, postgres_url):
    """Every session ends at once, the sequencer's included: whichever serve takes the lock first sequences, the
    other (if it was the sequencer, it finds out at its next commit) becomes its standby. Records sent through
    either keep going in; none stays in flight for good (the deposed one's records writes are fenced)."""
    env = {**os.environ, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(tmp_path / "serve0"), env=env)
    add_two_parties(tmp_path / "serve0", postgres_url)
    serves = Serves(tmp_path, env)
    def appended(port: int, rid: str, seq: int, record: dict, deadline: float) -> None:  # type: ignore[type-arg]
        _appended(port, rid, seq, record, deadline, ":\n" + serves.logs[0].read_text())

    try:
        serves.start(0)
        serves.start(1)
        for i, port in enumerate(serves.ports[:2]):
            appended(port, f"acme:p{i}", 0, _sealed(0), time.monotonic() + 30)
        for round_ in range(3):
            postgres.halt()
            postgres.resume()
            for seq in range(1, 4):
                for i, port in enumerate(serves.ports[:2]):
                    appended(port, f"acme:p{i}", round_ * 3 + seq, _sealed(round_ * 3 + seq), time.monotonic() + 60)
            roles = sorted(str((_health(p) or {}).get("role")) for p in serves.ports[:2])
            assert roles == ["frontend", "sequencer"], roles
            for proc, log in zip(serves.procs[:2], serves.logs):
                assert proc is not None and proc.poll() is None, log.read_text()
    finally:
        serves.procs = serves.procs[:2]
        serves.stop()
    checked = cli("fsck", "--data", str(tmp_path / "serve0"), env=env)
    assert "fsck: ok" in checked.stdout


def test_a_standby_never_forwards_in_a_loop_and_refuses_a_database_behind_what_it_saw_published(tmp_path, postgres_url):
    """The URL the sequencer recorded leads back to a standby (a shared address, a stale one): the request is
    answered 503, once, not sent round again. A standby remembers the checkpoint it saw published in its own
    directory, as a sequencer does, so a database that later comes back older is refused before it could take
    over and sign a second history."""
    import psycopg

    from pacspace import highwater
    from pacspace.server.standby import TARGET_TTL

    env = {**os.environ, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(tmp_path / "serve0"), env=env)
    add_two_parties(tmp_path / "serve0", postgres_url)
    serves = Serves(tmp_path, env)
    try:
        serves.start(0)
        serves.start(1)
        status, body = _post(serves.ports[1], "acme:r1", 0, _sealed(0))
        assert status == 201, body  # forwarded to the sequencer
        size = open_checkpoint(json.loads(body)["receipt"]["checkpoint"].encode(), load_signer(serves.dirs[0]).verifier).size
        deadline = time.monotonic() + 10
        while (mark := highwater.read(serves.dirs[1])) is None or mark.size < size:
            assert time.monotonic() < deadline, "the standby did not remember the published checkpoint"
            time.sleep(0.1)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("UPDATE log_meta SET value = %s WHERE key = 'sequencer_url'", (f"http://127.0.0.1:{serves.ports[1]}",))
        time.sleep(TARGET_TTL + 0.2)
        status, body = _call(serves.ports[1], "POST", "/v1/relationships/acme:r1/records", _sealed(1))
        assert status == 503 and json.loads(body)["error"] == "sequencer_unavailable", body
        assert "Pacspace-Forwarded" not in json.loads(body)["message"]
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("UPDATE log_meta SET value = %s WHERE key = 'sequencer_url'", (f"http://127.0.0.1:{serves.ports[0]}",))
        time.sleep(TARGET_TTL + 0.2)
        status, body = _call(serves.ports[1], "POST", "/v1/relationships/acme:r1/records", _sealed(1))
        assert status == 201, body
        # A bad token is refused by the standby itself, before it reads a byte of the body it declared.
        with socket.create_connection(("127.0.0.1", serves.ports[1]), timeout=10) as sock:
            sock.sendall(b"POST /v1/relationships/acme:r1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         b"tok-nobody\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
            assert sock.recv(4096).startswith(b"HTTP/1.1 401 ")
        proc = serves.procs[1]
        assert proc is not None
        proc.terminate()
        proc.wait(timeout=30)
        # The database "comes back older": here, the mark says the standby saw more than it holds.
        highwater.write(serves.dirs[1], highwater.Published(size + 10, os.urandom(32)))
        refused = cli("serve", "--data", str(serves.dirs[1]), "--port", str(serves.ports[1]), env=env, code=1)
        assert "behind size" in refused.stderr, refused.stderr
    finally:
        serves.procs = serves.procs[:2]
        serves.stop()


def test_a_sequencer_whose_session_is_ended_steps_down_or_takes_its_lock_back_and_nothing_stalls(tmp_path, postgres_url):
    """The sequencer's session with PostgreSQL ends (an operator, a cut link) while it is idle, twice: within about a
    second it notices (it checks its lock every second, as an idle sequencer writes nothing); if the standby took
    the lock meanwhile, it becomes a standby itself. Either way one serve sequences, both stay up, and records go
    in through both; none is left answering 503 for good."""
    import psycopg

    env = {**os.environ, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(tmp_path / "serve0"), env=env)
    add_two_parties(tmp_path / "serve0", postgres_url)
    serves = Serves(tmp_path, env)
    def appended(port: int, rid: str, seq: int, record: dict) -> None:  # type: ignore[type-arg]
        _appended(port, rid, seq, record, time.monotonic() + 30)

    try:
        serves.start(0)
        serves.start(1)
        seen = set()
        for round_ in range(2):
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                ended = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     "WHERE application_name IN ('pacspace writer', 'pacspace records') "
                                     "AND datname = current_database()").fetchone()
                assert ended is not None and ended[0] >= 1
                if round_ % 2:
                    # Another session takes the lock at once (as a standby that won the race would): the
                    # sequencer's check finds it held, and it steps down.
                    conn.execute("SELECT pg_advisory_lock(%s)", (WRITER_LOCK,))
                    time.sleep(3)
            time.sleep(3)  # the standby's probe and the sequencer's check both run in this time
            roles = [str((_health(p) or {}).get("role")) for p in serves.ports[:2]]
            deadline = time.monotonic() + 30
            while sorted(roles) != ["frontend", "sequencer"]:
                assert time.monotonic() < deadline, roles
                time.sleep(0.2)
                roles = [str((_health(p) or {}).get("role")) for p in serves.ports[:2]]
            seen.add(roles.index("sequencer"))
            for i, port in enumerate(serves.ports[:2]):
                appended(port, f"acme:s{round_}{i}", 0, _sealed(0))
                appended(port, f"acme:s{round_}{i}", 1, _sealed(1))
            for proc, log in zip(serves.procs[:2], serves.logs):
                assert proc is not None and proc.poll() is None, log.read_text()
    finally:
        serves.procs = serves.procs[:2]
        serves.stop()
    stepped_down = [log.read_text().count("another serve sequences the log now") for log in serves.logs[:2]]
    assert sum(stepped_down) >= 1, stepped_down  # the round that held the lock deposed the sequencer
    checked = cli("fsck", "--data", str(tmp_path / "serve0"), env=env)
    assert "fsck: ok" in checked.stdout
