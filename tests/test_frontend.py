"""Read-only frontends (``serve --frontend --database URL``) beside the serve that sequences a log in PostgreSQL,
with its bundles in a real S3-compatible store: real processes, a stranger's checks, and a frontend killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


from pacspace.datadir import load_signer
from pacspace.merkle import leaf_hash, verify_inclusion
from pacspace.storage.postgres import PostgresLog
from pacspace.tiles import iter_bundle


def _get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _fill(database: str, data, count: int) -> None:  # type: ignore[no-untyped-def]
    """``count`` plain entries, through the real sequencer, before any server runs."""
    from helpers import sequence

    store = PostgresLog(database)
    try:
        await sequence(store, load_signer(data), [[b"plain entry %d" % i for i in range(count)]])
    finally:
        store.close()


def _stranger_checks(base: str, vkey: str) -> int:
    """What a stranger holding only the log's key checks on one server: the checkpoint (a strict C2SP verifier
    sharing no code with pacspace), then every entry's inclusion, from the served bundles and proofs."""
    from strict_c2sp import open_checkpoint

    status, note = _get(f"{base}/checkpoint")
    assert status == 200
    checkpoint = open_checkpoint(note, vkey, [])
    size = checkpoint.size
    entries: list[bytes] = []
    for n in range((size + 255) // 256):
        width = min(256, size - 256 * n)
        status, bundle = _get(f"{base}/tile/entries/{n:03d}" + (f".p/{width}" if width < 256 else ""))
        assert status == 200, (n, status, bundle)
        entries += list(iter_bundle(bundle))
    assert len(entries) == size
    for index in (0, 1, 255, 256, size // 2, size - 1):
        status, body = _get(f"{base}/v1/proof/inclusion?index={index}&size={size}")
        assert status == 200
        proof = json.loads(body)
        import base64

        verify_inclusion(index, size, leaf_hash(entries[index]), [base64.b64decode(h) for h in proof["hashes"]],
                         checkpoint.root)
    return size


async def test_frontends_serve_the_published_log_to_strangers_and_nothing_else(tmp_path, postgres_url, s3, s3_env):
    from helpers import add_two_parties, cli, free_port, register_two_homes, wait_for_health

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import append_body, create_relationship, delta_maker, load_relationship
    from pacspace.records.body import Line

    def delta(hour: int):  # type: ignore[no-untyped-def]
        window = (f"2026-11-02T{hour:02d}:00:00Z", f"2026-11-02T{hour:02d}:59:59Z")
        return delta_maker("2026-11", window, [Line("llm.requests", "request", str(hour + 1), {})])

    data = tmp_path / "data"
    env = {**os.environ, **s3_env, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(data), env=env)
    await _fill(postgres_url, data, 600)
    add_two_parties(data)
    # A frontend of a log whose serve never recorded its keys: refused, saying what to do.
    refused = cli("serve", "--frontend", "--data", str(tmp_path / "nowhere"), "--port", str(free_port()), env=env,
                  code=1)
    assert "start its `pacspace serve --database ...`" in refused.stderr and len(refused.stderr.splitlines()) == 1
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [subprocess.Popen(
        [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port), "--workers", "0",
         "--objects", f"s3://{s3.bucket()}/log"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for_health(url)
        fronts = []
        for i in range(2):  # on other machines: no data directory of the log's
            front_port = free_port()
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "pacspace", "serve", "--frontend", "--data", str(tmp_path / f"front{i}"),
                 "--port", str(front_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            fronts.append(f"http://127.0.0.1:{front_port}")
        for front in fronts:
            wait_for_health(front)
        acme, bob = await register_two_homes(url, tmp_path)
        log_key = acme.log_key()
        vkey = log_key.vkey()
        async with PacspaceClient(url, "tok-acme") as c:
            rid = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"]
            for hour in range(3):
                view = await load_relationship(c, acme, rid, log_key)
                await append_body(c, acme, view, delta(hour))
        status, body = _get(f"{url}/checkpoint")
        size = int(body.split(b"\n")[1])
        assert size > 600
        # The bundles the object store took are read back from it, checked, by the frontends too.
        deadline = time.monotonic() + 30
        while True:
            with __import__("psycopg").connect(postgres_url, autocommit=True) as conn:
                if conn.execute("SELECT count(*) FROM bundles WHERE n < 2").fetchone()[0] == 0:
                    break
            assert time.monotonic() < deadline, "the store never took the full bundles"
            time.sleep(0.1)
        for front in fronts:
            deadline = time.monotonic() + 10
            while json.loads(_get(f"{front}/health")[1])["size"] < size:  # it follows the sequencer
                assert time.monotonic() < deadline
                time.sleep(0.05)
            health = json.loads(_get(f"{front}/health")[1])
            assert health == {"status": "ok", "size": size, "role": "frontend", "storage": "postgresql"}
            assert json.loads(_get(f"{front}/v1/log")[1])["vkey"] == vkey
            assert _get(f"{front}/tile/entries/001") == _get(f"{url}/tile/entries/001")
            assert _stranger_checks(front, vkey) == size
            # Records, relationships and parties are the sequencer's: one answer for every party and path.
            answers = {_get(f"{front}/v1/relationships/{rid}", "tok-bob"), _get(f"{front}/v1/relationships/nope", "tok-bob"),
                       _get(f"{front}/v1/relationships/{rid}"), _get(f"{front}/v1/records", "tok-acme", "POST")}
            assert len(answers) == 1
            status, body = answers.pop()
            assert status == 421 and json.loads(body)["error"] == "frontend_read_only"
        assert _get(f"{url}/v1/relationships/{rid}", "tok-bob")[0] == 200  # the sequencer serves it
        # One frontend is killed: the log, the customer's verification and the other frontend go on.
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait(timeout=10)
        async with PacspaceClient(url, "tok-acme") as c:
            view = await load_relationship(c, acme, rid, log_key)
            await append_body(c, acme, view, delta(3))
        async with PacspaceClient(url, "tok-bob") as c:
            seen = await load_relationship(c, bob, rid, bob.log_key())
            assert [r.seq for r in seen.records] == [0, 1, 2, 3, 4]
        deadline = time.monotonic() + 10
        while json.loads(_get(f"{fronts[1]}/health")[1])["size"] <= size:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _stranger_checks(fronts[1], vkey) > size
        # A frontend without the store's credentials serves all but the bundles only the store holds, and
        # says why, at start and for those: the server's configuration, not the client's request.
        bare = {k: v for k, v in env.items() if k != "AWS_SECRET_ACCESS_KEY"}
        front_port = free_port()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "pacspace", "serve", "--frontend", "--port", str(front_port)], env=bare,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        wait_for_health(f"http://127.0.0.1:{front_port}")
        assert _get(f"http://127.0.0.1:{front_port}/tile/entries/002.p/{size - 512}")[0] == 200
        status, body = _get(f"http://127.0.0.1:{front_port}/tile/entries/000")
        assert status == 503 and json.loads(body)["error"] == "object_store_failed"
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait(timeout=30)
    errors = [p.stderr.read() for p in processes[1:] if p.stderr]
    assert not any(b"Traceback" in e for e in errors), errors
    assert b"cannot use the log's object store" in errors[-1] and b"AWS_SECRET_ACCESS_KEY" in errors[-1]


def _start_frontend(tmp_path, env, *extra: str):  # type: ignore[no-untyped-def]
    from helpers import free_port, wait_for_health

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--frontend", "--data",
                                str(tmp_path / "front"), "--port", str(port), *extra], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base)
    except TimeoutError:
        process.kill()
        raise AssertionError(process.communicate(timeout=10)[1].decode()) from None
    return process, base


async def test_a_frontend_publishes_under_the_recorded_policy_and_refuses_keys_that_do_not_match(tmp_path, postgres_url):
    """The sequencing serve records its keys and witness policy; a frontend given no policy publishes what the
    sequencer does (here: nothing the witness never cosigned), and refuses to start, in one line, on a
    different policy, a timestamp key that is not the log key's, or a log key that does not verify the log."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from helpers import cli, free_port

    from pacspace.datadir import init_log
    from pacspace.note import NoteSigner

    data = tmp_path / "data"
    signer = init_log(data, "frontends.example/log", int(time.time()), postgres_url)
    await _fill(postgres_url, data, 50)
    witness = NoteSigner("w0.example", Ed25519PrivateKey.generate())
    policy = f"witness w0 {witness.cosignature_verifier.vkey()} http://127.0.0.1:9/\nquorum w0\n"
    vkey, ts_vkey = signer.verifier.vkey(), signer.cosignature_verifier.vkey()

    def record(*keys: str) -> None:
        store = PostgresLog(postgres_url)
        store.record_keys(*keys)
        store.close()

    env = {**os.environ, "PACSPACE_DATABASE": postgres_url}
    record(vkey, ts_vkey, policy)
    process, base = _start_frontend(tmp_path, env)
    try:
        assert _get(f"{base}/checkpoint")[1].split(b"\n")[1] == b"0"  # 50 entries stored, none cosigned
        assert json.loads(_get(f"{base}/health")[1])["size"] == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
    (tmp_path / "other-policy").write_text("quorum none\n")
    other = NoteSigner("frontends.example/log", Ed25519PrivateKey.generate())
    for keys, extra, said in [
        ((vkey, ts_vkey, policy), ("--witness-policy", str(tmp_path / "other-policy")), "is not the policy"),
        ((vkey, other.cosignature_verifier.vkey(), ""), (), "timestamp key recorded in the database is not"),
        ((other.verifier.vkey(), other.cosignature_verifier.vkey(), ""), (), "does not verify its stored checkpoints"),
    ]:
        record(*keys)
        refused = cli("serve", "--frontend", "--data", str(tmp_path / "f"), "--port", str(free_port()), *extra,
                      env=env, code=1)
        assert said in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    refused = cli("serve", "--frontend", "--workers", "2", "--port", str(free_port()), env=env, code=2)
    assert "leave out --workers" in refused.stderr
    # A role that may not read the tables: one line naming what to grant, not a bug report.
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE noread_{os.getpid()} LOGIN")
    owner = postgres_url.split("://", 1)[1].split("@", 1)[0]
    refused = cli("serve", "--frontend", "--port", str(free_port()), env={
        **env, "PACSPACE_DATABASE": postgres_url.replace(f"//{owner}@", f"//noread_{os.getpid()}@")}, code=1)
    assert "may not read the log's tables" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    sqlite_env = {k: v for k, v in env.items() if k != "PACSPACE_DATABASE"}
    refused = cli("serve", "--frontend", "--port", str(free_port()), env=sqlite_env, code=2)
    assert "--frontend needs --database" in refused.stderr
    record(vkey, ts_vkey, "")  # no witnesses: every stored checkpoint is published
    process, base = _start_frontend(tmp_path, env)
    try:
        assert json.loads(_get(f"{base}/health")[1])["size"] == 50
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_a_stuck_database_stalls_no_frontend_request_that_does_not_need_it(tmp_path, postgres_url):
    """The checkpoints table locked by another session (a migration, VACUUM FULL, a stuck query): the frontend
    goes on answering from what it read, /health says it is failing after STALE_AFTER, and recovers."""
    import psycopg

    from pacspace.datadir import init_log
    from pacspace.server.frontend import STALE_AFTER

    data = tmp_path / "data"
    signer = init_log(data, "frontends.example/log", int(time.time()), postgres_url)
    await _fill(postgres_url, data, 300)
    store = PostgresLog(postgres_url)
    store.record_keys(signer.verifier.vkey(), signer.cosignature_verifier.vkey(), "")
    store.close()
    process, base = _start_frontend(tmp_path, {**os.environ, "PACSPACE_DATABASE": postgres_url})
    try:
        with psycopg.connect(postgres_url) as locker:
            locker.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            for path in ("/checkpoint", "/health", "/v1/proof/inclusion?index=7&size=300", "/tile/0/000",
                         "/v1/records"):
                status, _ = _get(base + path)
                assert status in (200, 421), path
            assert time.monotonic() - started < 2.0
            time.sleep(STALE_AFTER + 0.5)
            status, body = _get(f"{base}/health")
            assert status == 503 and json.loads(body)["status"] == "failing", body
            assert "has not answered" in json.loads(body)["problem"]
            assert _get(f"{base}/checkpoint")[0] == 200
            locker.rollback()
        deadline = time.monotonic() + 5
        while _get(f"{base}/health")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_failed_walk_is_walked_again(tmp_path, postgres_url, monkeypatch):
    """The newest stored checkpoint changed, and reading the older ones failed once (a dropped connection): the
    next look finds the published one, not the old one for good."""
    import asyncio

    from pacspace.datadir import init_log
    from pacspace.server.published import PublishedView

    data = tmp_path / "data"
    signer = init_log(data, "frontends.example/log", int(time.time()), postgres_url)
    reader = PostgresLog(postgres_url, readonly=True)
    view = PublishedView(reader, signer.verifier, None)
    assert view.latest.size == 0
    asyncio.run(_fill(postgres_url, data, 10))
    real = PostgresLog.checkpoints_newest_first
    failures = iter([True])

    def once(self):  # type: ignore[no-untyped-def]
        if next(failures, False):
            raise __import__("psycopg").OperationalError("the connection was lost")
        return real(self)

    monkeypatch.setattr(PostgresLog, "checkpoints_newest_first", once)
    with pytest.raises(Exception, match="connection was lost"):
        view.latest
    assert view.latest.size == 10
    reader.close()


async def test_a_frontend_needs_only_the_log_tables_that_operations_md_grants(tmp_path, postgres_url):
    """The read-only role from docs/operations.md serves a frontend, and cannot read parties, relationships or
    records: a frontend's host holds nothing a party told the log in confidence."""
    import re

    import psycopg

    from pacspace.datadir import init_log

    data = tmp_path / "data"
    signer = init_log(data, "frontends.example/grants", int(time.time()), postgres_url)
    await _fill(postgres_url, data, 20)
    store = PostgresLog(postgres_url)
    store.record_keys(signer.verifier.vkey(), signer.cosignature_verifier.vkey(), "")
    store.close()
    docs = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    grants = re.search(r"CREATE ROLE reader LOGIN;.*?\n\s*(GRANT SELECT ON pacspace_schema[^\n]*)", docs, re.S)
    assert grants is not None, "operations.md no longer gives the frontend's grants"
    name = "reader_" + os.urandom(4).hex()
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
        conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {name}")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {name}")
        conn.execute(grants.group(1).replace("TO reader", f"TO {name}"))
    reader_url = re.sub(r"//[^@/]*@", f"//{name}@", postgres_url)
    process, base = _start_frontend(tmp_path, {**os.environ, "PACSPACE_DATABASE": reader_url})
    try:
        assert _get(f"{base}/checkpoint")[1].split(b"\n")[1] == b"20"
    finally:
        process.terminate()
        process.wait(timeout=30)
    with psycopg.connect(reader_url, autocommit=True) as conn:
        for table in ("parties", "relationships", "wraps", "records", "unsettled", "settled"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT 1 FROM {table}")
    # fsck with that role says, in one line, what it may not read (it checks the records too).
    from helpers import cli

    refused = cli("fsck", "--data", str(data), "--database", reader_url, env=dict(os.environ), code=1)
    assert "may not read the records' tables" in refused.stderr and "internal error" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("pacspace: error:"), refused.stderr  # after progress
