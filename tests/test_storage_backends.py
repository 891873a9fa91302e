"""The log's storage on both backends, SQLite files and a real PostgreSQL: the same sequencer writes byte-identical
tiles, bundles and checkpoints to each, the start-up trust check and lookups work on both, and PostgreSQL's own
guarantees hold (one writer per size, versioned schema, nothing left by a refused init)."""

from __future__ import annotations

import hashlib
import socket
import time

import psycopg
import pytest

from pacspace.checkpoint import open_checkpoint
from pacspace.datadir import init_log, load_signer, load_state, open_log
from pacspace.errors import CheckpointConflict, LogExists, LogLocked, UntrustedState
from pacspace.merkle import inclusion_proof, leaf_hash, verify_inclusion
from pacspace.records.seal import entry_from_ct_hash, record_tag
from pacspace.storage.base import Batch
from pacspace.storage.migrations import LATEST
from pacspace.storage.database_url import redact
from pacspace.storage.postgres import PostgresLog
from tcp_relay import TcpRelay, shut

ORIGIN = "backends.example/log"
T0 = 1_780_000_000


def _record_entry(i: int) -> bytes:
    """Every third entry a record's (so it has a tag), the others plain; the same bytes on every call."""
    if i % 3:
        return b"not a record %d" % i
    return entry_from_ct_hash(hashlib.sha256(b"tag%d" % i).digest(), hashlib.sha256(b"ct%d" % i).digest())


async def _sequence(store, signer, batches: list[list[bytes]], clock=None) -> None:  # type: ignore[no-untyped-def]
    from helpers import sequence

    ticks = iter(range(T0, T0 + 10_000))
    await sequence(store, signer, batches, clock or (lambda: float(next(ticks))))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):  # type: ignore[no-untyped-def]
    """(data dir, database URL or None) of a new log on each backend, with one key for both."""
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    init_log(tmp_path / "data", ORIGIN, T0, database)
    return tmp_path / "data", database


async def test_the_sequencer_writes_the_same_log_to_both_backends(tmp_path, postgres_url):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pacspace.durable import write_new_file
    from pacspace.note import NoteSigner

    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    stores = []
    for name, database in (("sqlite", None), ("postgres", postgres_url)):
        data = tmp_path / name
        data.mkdir()
        write_new_file(data / "log.key", (signer.private_key_text() + "\n").encode(), mode=0o600)
        init_log(data, ORIGIN, T0, database)
        store = open_log(data, database)
        await _sequence(store, signer, [[_record_entry(i) for i in range(a, b)] for a, b in
                                        ((0, 1), (1, 300), (300, 301), (301, 1000), (1000, 1300))])
        stores.append(store)
    sqlite, postgres = stores
    assert list(sqlite.checkpoints()) == list(postgres.checkpoints())
    assert [c.decode().split("\n")[1] for c in postgres.checkpoints()] == ["0", "1", "300", "301", "1000", "1300"]
    assert list(sqlite.tile_rows()) == list(postgres.tile_rows())
    assert [sqlite.read_bundle(n) for n in range(6)] == [postgres.read_bundle(n) for n in range(6)]
    assert sqlite.max_bundle() == postgres.max_bundle() == 5
    for store in stores:
        store.close()


async def test_each_backend_reopens_proves_and_finds_what_it_committed(backend):
    data, database = backend
    signer = load_signer(data)
    store = open_log(data, database)
    entries = [_record_entry(i) for i in range(700)]
    await _sequence(store, signer, [entries[:1], entries[1:513], entries[513:]])
    store.close()
    # A new process's view: the start-up check reproduces the root from the stored tiles.
    store = open_log(data, database)
    state = load_state(store, signer)
    checkpoint = open_checkpoint(store.latest_checkpoint(), signer.verifier)
    assert state.size == checkpoint.size == 700
    for i in (0, 255, 256, 511, 512, 699):
        h = leaf_hash(entries[i])
        assert store.find_leaf(h, 700) == i
        assert store.find_leaf(h, i) is None  # not below its own index
        verify_inclusion(i, 700, h, inclusion_proof(i, 700, store), checkpoint.root_hash)  # raises if not
    tags = [record_tag(entries[i]) for i in (0, 3, 698)]
    assert all(tags[:2]) and tags[2] is None
    assert store.tags_in_log([tags[0], tags[1], b"\x07" * 32]) == [True, True, False]
    assert store.read_entries(510, 515) == entries[510:515]
    assert store.checkpoint_in(600, 701) and not store.checkpoint_in(2, 513)
    store.close()
    # Read-only, as an HTTP worker or a frontend opens it.
    reader = open_log(data, database, readonly=True)
    assert reader.read_tile(0, 2) == b"".join(leaf_hash(e) for e in entries[512:700])
    with pytest.raises(UntrustedState, match="read-only"):
        reader.replace_checkpoint(700, b"x")
    reader.close()


def _new_postgres_log(data, url: str):  # type: ignore[no-untyped-def]
    """A new log in the database at ``url`` (its key in ``data``): its signer, and a read-only store of it."""
    init_log(data, ORIGIN, T0, url)
    return load_signer(data), PostgresLog(url, readonly=True)


def _batch_after(store, signer, old_size: int, payload: bytes) -> Batch:  # type: ignore[no-untyped-def]
    """The batch a sequencer at ``old_size`` would commit for one entry (built the way sequencer.py does)."""
    from pacspace.checkpoint import Checkpoint, sign_checkpoint
    from pacspace.tiles import encode_bundle, extend, pack_interior

    state = load_state(store, signer)
    assert state.size == old_size
    h = leaf_hash(payload)
    update = extend(state.size, state.edge, [h])
    checkpoint = sign_checkpoint(Checkpoint(ORIGIN, old_size + 1, update.root), signer, T0 + 1)
    tiles = {key: (b"".join(levels[0]), pack_interior(levels)) for key, levels in update.expanded.items()}
    return Batch(old_size, old_size + 1, tiles, {0: encode_bundle([*state.edge_entries, payload])}, [h],
                 checkpoint.format(), [payload])


def test_a_reader_that_loaded_the_state_sees_the_writers_later_commits(backend):
    """A read-only store (an HTTP worker, fsck beside a live server) keeps no right-edge rows of its own: the
    writer, in another process, rewrites them with each batch."""
    data, database = backend
    signer = load_signer(data)
    reader, writer = open_log(data, database, readonly=True), open_log(data, database)
    writer.commit(_batch_after(reader, signer, 0, b"one"))
    assert load_state(reader, signer).size == 1
    writer.commit(_batch_after(writer, signer, 1, b"two"))
    state = load_state(reader, signer)
    assert state.size == 2 and state.edge_entries == [b"one", b"two"]
    writer.close()
    reader.close()


def test_postgres_has_one_writer_and_a_stale_one_never_commits_a_second_checkpoint_of_a_size(tmp_path, postgres_url):
    signer, reader = _new_postgres_log(tmp_path, postgres_url)
    # Both batches extend size 0: the second is what a writer holding stale state would commit.
    mine, theirs = _batch_after(reader, signer, 0, b"mine"), _batch_after(reader, signer, 0, b"theirs")
    first = PostgresLog(postgres_url)
    with pytest.raises(LogLocked, match="another process is the writer"):
        PostgresLog(postgres_url)
    first.commit(mine)
    first.close()  # its session, and with it the writer's lock, ends (as when its process dies)
    second = PostgresLog(postgres_url)
    with pytest.raises(CheckpointConflict, match="size 1"):
        second.commit(theirs)
    # The refused batch left nothing: one checkpoint of size 1, and its leaf is not findable.
    assert reader.checkpoint_count() == 2
    assert reader.find_leaf(leaf_hash(b"mine"), 1) == 0 and reader.find_leaf(leaf_hash(b"theirs"), 1) is None
    assert load_state(reader, signer).size == 1
    for store in (second, reader):
        store.close()


def _end_the_writers_session(url: str) -> None:
    """What a PostgreSQL restart or failover does to the writer: its connection, and the lock its session held, end."""
    from pacspace.storage.pgconnect import WRITER_NAME

    with psycopg.connect(url, autocommit=True) as admin:
        ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                              "AND datname = current_database()", (WRITER_NAME,)).fetchall()
    assert ended == [(True,)]


def test_postgres_writer_connects_again_and_takes_its_lock_again_when_its_connection_is_lost(tmp_path, postgres_url):
    signer, reader = _new_postgres_log(tmp_path, postgres_url)
    writer = PostgresLog(postgres_url)
    _end_the_writers_session(postgres_url)
    writer.commit(_batch_after(reader, signer, 0, b"after the restart"))
    assert load_state(reader, signer).size == 1 and reader.find_leaf(leaf_hash(b"after the restart"), 1) == 0
    with pytest.raises(LogLocked):  # the new session holds the writer's lock again
        PostgresLog(postgres_url)
    # A batch whose COMMIT took effect but whose answer was lost with the connection: committing it again finds
    # it already there, and neither fails nor writes it twice.
    again = _batch_after(reader, signer, 1, b"answer lost")
    writer.commit(again)
    _end_the_writers_session(postgres_url)
    writer._write_batch(again)  # what the retry after the lost answer does
    assert load_state(reader, signer).size == 2 and reader.checkpoint_count() == 3
    # Cosignatures stored after a lost connection land too.
    _end_the_writers_session(postgres_url)
    writer.replace_checkpoint(2, again.checkpoint + b"\n")
    assert reader.latest_checkpoint() == again.checkpoint + b"\n"
    writer.close()
    reader.close()


class _CuttableLink(TcpRelay):
    """A TCP relay to PostgreSQL that can cut its links as a failing network does to one side only: ``cut`` closes
    the client's end of every link, while PostgreSQL's ends stay open, so their sessions (and any lock they hold)
    live on until PostgreSQL notices, which can take hours. A misbehaving network, simulated."""

    def __init__(self, port: int) -> None:
        self._links: list[tuple[socket.socket, socket.socket]] = []
        self._kept: list[socket.socket] = []  # PostgreSQL's ends of cut links: open, silent
        super().__init__(port)

    def opened(self, client: socket.socket, server: socket.socket) -> None:
        with self.lock:
            self._links.append((client, server))

    def ended(self, src: socket.socket, dst: socket.socket) -> None:
        pass  # a cut link's PostgreSQL end stays open

    def cut(self) -> None:
        with self.lock:
            links, self._links = self._links, []
        for client, server in links:
            shut(client)
            client.close()
            self._kept.append(server)

    def close(self) -> None:
        super().close()
        for sock in self._kept:
            sock.close()


def test_postgres_writer_ends_its_own_lost_session_that_still_holds_the_lock(tmp_path, postgres, postgres_url):
    """The link to PostgreSQL is cut on the writer's side only: PostgreSQL still sees the writer's old session,
    holding the writer's lock. The writer ends that session (its own, by pid and start time), takes the lock and
    commits; another process's session would never be ended (test_..._cut_off_writes_nothing)."""
    signer, reader = _new_postgres_log(tmp_path, postgres_url)
    link = _CuttableLink(postgres.port)
    writer = PostgresLog(postgres_url.replace(f":{postgres.port}/", f":{link.port}/"))
    try:
        link.cut()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            assert admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone() == (1,)
        writer.commit(_batch_after(reader, signer, 0, b"after the cut"))
        assert reader.find_leaf(leaf_hash(b"after the cut"), 1) == 0 and load_state(reader, signer).size == 1
    finally:
        writer.close()
        reader.close()
        link.close()


def test_init_of_a_new_directory_on_a_database_that_holds_a_log_leaves_the_directory_as_it_was(tmp_path, postgres_url):
    """A careless second machine: `init` (or a first `serve`) in a new directory, on the log's database. Refused,
    saying how to run another serve of that log, and no key is left behind to name a log no database holds."""
    import os

    from helpers import cli, free_port

    env = {**os.environ, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(tmp_path / "first"), "--origin", "example.com/the-log", env=env)
    for command in (["init", "--origin", "example.com/the-log"], ["serve", "--port", str(free_port())]):
        fresh = tmp_path / f"fresh-{command[0]}"
        refused = cli(command[0], "--data", str(fresh), *command[1:], env=env, code=1)
        assert "already holds a log (example.com/the-log)" in refused.stderr, refused.stderr
        assert "log.key and database files" in refused.stderr, refused.stderr
        assert not (fresh / "log.key").exists() and not (fresh / "database.pending").exists()
        assert not (fresh / "database").exists()


def test_two_logs_on_one_server_never_take_each_others_writer_for_their_own(tmp_path, postgres, postgres_url):
    """Each log in a database of its own on one PostgreSQL server: one log's writer is no writer of the other
    (its standbys would otherwise wait on it, and never take over)."""
    from pacspace.storage.pgconnect import connect, writer_elsewhere

    other_url = postgres.database()
    _new_postgres_log(tmp_path / "a", postgres_url)[1].close()
    init_log(tmp_path / "b", "example.com/another-log", T0, other_url)
    writer = PostgresLog(postgres_url)
    try:
        mine, theirs = connect(postgres_url), connect(other_url)
        try:
            assert writer_elsewhere(mine) and not writer_elsewhere(theirs)
        finally:
            mine.close()
            theirs.close()
        PostgresLog(other_url).close()  # the other log's writer opens beside it
    finally:
        writer.close()


def test_a_database_outage_is_a_503_that_says_nothing_of_where_the_database_is(tmp_path, postgres, postgres_url):
    """PostgreSQL stops under a real serve: readers get 503 database_unavailable with a message that names
    no host, port or driver error (the server's log has them); once it is back, the same requests answer."""
    import json
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from helpers import cli, free_port, wait_for_health

    env = {**os.environ, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(tmp_path / "d"), env=env)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(tmp_path / "d"), "--port",
                               str(port), "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        wait_for_health(f"http://127.0.0.1:{port}")
        assert get("/checkpoint")[0] == 200
        postgres.halt()
        try:
            answers = [get(path) for path in ("/checkpoint", "/tile/0/000.p/1", "/v1/log") for _ in range(3)]
        finally:
            postgres.resume()
        assert all(status == 503 for status, _ in answers), answers
        for _, body in answers:
            answer = json.loads(body)
            assert answer["error"] == "database_unavailable", answer
            assert str(postgres.port) not in answer["message"] and "127.0.0.1" not in answer["message"], answer
        deadline = time.monotonic() + 30
        while get("/checkpoint")[0] != 200:
            assert time.monotonic() < deadline, "the serve did not read the database again"
            time.sleep(0.2)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert b"cannot connect to" in err  # the operator's log says what the client was not told


def test_postgres_writer_waits_for_a_server_that_is_coming_back(tmp_path, postgres, postgres_url):
    import threading
    import time

    signer, reader = _new_postgres_log(tmp_path, postgres_url)
    batch = _batch_after(reader, signer, 0, b"waited")
    writer = PostgresLog(postgres_url)
    postgres.halt()
    try:
        committing = threading.Thread(target=writer.commit, args=(batch,))
        committing.start()
        time.sleep(1.5)
        assert committing.is_alive()  # waiting for the server, not failed
    finally:
        postgres.resume()
    committing.join(timeout=30)
    assert not committing.is_alive()
    assert reader.find_leaf(leaf_hash(b"waited"), 1) == 0 and load_state(reader, signer).size == 1
    writer.close()
    reader.close()


def test_postgres_writer_whose_lock_was_taken_while_it_was_cut_off_writes_nothing(tmp_path, postgres_url):
    signer, reader = _new_postgres_log(tmp_path, postgres_url)
    stale = PostgresLog(postgres_url)
    _end_the_writers_session(postgres_url)
    successor = PostgresLog(postgres_url)  # another process becomes the writer while the first is cut off
    with pytest.raises(LogLocked, match="another process is the writer"):
        stale.commit(_batch_after(reader, signer, 0, b"stale"))
    successor.commit(_batch_after(reader, signer, 0, b"successor"))
    assert reader.find_leaf(leaf_hash(b"stale"), 1) is None and reader.find_leaf(leaf_hash(b"successor"), 1) == 0
    for store in (stale, successor, reader):
        store.close()


def test_postgres_schema_is_versioned_and_a_newer_one_is_refused(tmp_path, postgres_url):
    init_log(tmp_path, ORIGIN, T0, postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM pacspace_schema").fetchone()[0] == LATEST
        conn.execute("INSERT INTO pacspace_schema (version, description) VALUES (%s, 'from the future')", (LATEST + 1,))
    with pytest.raises(UntrustedState, match="newer than this pacspace knows"):
        PostgresLog(postgres_url)


def test_postgres_init_refuses_a_database_that_holds_a_log_and_changes_nothing(tmp_path, postgres_url):
    init_log(tmp_path / "a", ORIGIN, T0, postgres_url)
    before = PostgresLog(postgres_url, readonly=True)
    first = before.latest_checkpoint()
    before.close()
    with pytest.raises(LogExists, match=r"already holds a log \(backends.example/log\)"):
        init_log(tmp_path / "b", "other.example/log", T0, postgres_url)
    assert not (tmp_path / "b" / "log.key").exists()  # the key made for the refused log is gone with it
    after = PostgresLog(postgres_url, readonly=True)
    assert after.origin == ORIGIN and after.latest_checkpoint() == first and after.checkpoint_count() == 1
    after.close()


def test_postgres_a_database_without_a_log_or_unreachable_is_refused_clearly(postgres):
    with pytest.raises(UntrustedState, match="no pacspace log in this database"):
        PostgresLog(postgres.database())
    url = postgres.url("nowhere").replace("pacspace@", "pacspace:secret-pw@")
    with pytest.raises(UntrustedState, match="cannot connect") as refused:
        PostgresLog(url)
    assert "secret-pw" not in str(refused.value) and "***" in str(refused.value)
    assert redact(url) == url.replace("secret-pw", "***")


def test_the_command_line_keeps_the_log_where_it_was_made(tmp_path, postgres_url):
    import os

    from helpers import cli, free_port

    from pacspace.note import parse_vkey

    env = {k: v for k, v in os.environ.items() if k != "PACSPACE_DATABASE"}
    # Trust authentication ignores the password; it is here to show it never reaches a file or a message.
    url = postgres_url.replace("pacspace@", "pacspace:hunter2@")
    pg, lite = tmp_path / "pg", tmp_path / "lite"
    made = cli("init", "--data", str(pg), "--database", url, env=env)
    parse_vkey(made.stdout.strip())  # the log's verifier key, as from a SQLite init
    assert "hunter2" not in made.stderr and "***" in made.stderr
    assert (pg / "database").read_text().strip() == redact(url) and "hunter2" not in (pg / "database").read_text()
    assert not (pg / "log.db").exists()
    assert "fsck: ok: size 0" in cli("fsck", "--data", str(pg), env={**env, "PACSPACE_DATABASE": url}).stdout
    # The key's log is in the database: without --database, nothing creates a second log beside it.
    refused = cli("serve", "--data", str(pg), "--port", str(free_port()), env=env, code=2)
    assert "is in the database" in refused.stderr and not (pg / "log.db").exists()
    again = cli("init", "--data", str(tmp_path / "other"), "--database", url, env=env, code=None)
    assert again.returncode != 0 and "already holds a log" in again.stderr and "hunter2" not in again.stderr
    cli("init", "--data", str(lite), env=env)
    refused = cli("serve", "--data", str(lite), "--database", url, "--port", str(free_port()), env=env, code=2)
    assert "holds a SQLite log" in refused.stderr
    refused = cli("init", "--data", str(tmp_path / "x"), "--database", "mysql://db/x", env=env, code=2)
    assert "postgresql://" in refused.stderr


def test_postgres_reads_survive_the_server_dropping_their_connection(tmp_path, postgres_url):
    init_log(tmp_path, ORIGIN, T0, postgres_url)
    reader = PostgresLog(postgres_url, readonly=True)
    first = reader.latest_checkpoint()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                              "'pacspace' AND pid <> pg_backend_pid() AND datname = current_database()").fetchall()
    assert ended == [(True,)]
    assert reader.latest_checkpoint() == first  # a new connection, the same answer
    reader.close()


async def test_migrate_moves_a_sqlite_log_with_its_records_and_a_pinned_client_sees_one_history(
    tmp_path, postgres_url, aiohttp_client, s3, s3_env
):
    """`pacspace migrate --objects`: same root, the records move too (records.db and its blobs set aside with the
    log's files), fsck passes on the copy, the first serve moves the bundles and blobs to the bucket, and the
    customer whose monitor verified the old log reads the same relationship from the moved one, consistent with
    what it saw before."""
    import os
    import subprocess
    import sys

    from helpers import add_two_parties, cli, fill_log, free_port, hour, register_two_homes, wait_for_health

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import append_body, create_relationship, delta_maker, load_relationship
    from pacspace.config import ServerConfig
    from pacspace.merkle import consistency_proof, verify_consistency
    from pacspace.records.body import Line
    from pacspace.sequencer import SequencerConfig
    from pacspace.server.app import create_app

    env = {k: v for k, v in os.environ.items() if k != "PACSPACE_DATABASE"}
    data = tmp_path / "data"
    cli("init", "--data", str(data), env=env)
    await fill_log(data, 997)
    add_two_parties(data)
    # Real records on the SQLite log: a relationship, its genesis and two deltas, read by the customer.
    app = create_app(ServerConfig(data_dir=data, sequencer=SequencerConfig(pool_interval=0.01)))
    http = await aiohttp_client(app)
    url = str(http.make_url("")).rstrip("/")
    acme, bob = await register_two_homes(url, tmp_path)
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob"))["relationship"]
        view = await load_relationship(c, acme, rid, acme.log_key())
        for n, q in enumerate(("10", "5")):
            await append_body(c, acme, view, delta_maker("2026-11", hour(n), [Line("llm.requests", "request", q, {})]))
    async with PacspaceClient(url, "tok-bob") as c:
        seen = await load_relationship(c, bob, rid, bob.log_key())
    assert len(seen.records) == 3
    await http.close()
    signer = load_signer(data)
    old = open_log(data)
    before = open_checkpoint(old.latest_checkpoint(), signer.verifier)
    old.close()
    assert before.size == 1000
    bucket = f"s3://{s3.bucket()}"
    moved = cli("migrate", "--data", str(data), "--database", postgres_url, "--objects", bucket, env=env)
    assert moved.stdout.strip() == before.root_hash.hex()
    assert "size 1,000" in moved.stderr and "3 records" in moved.stderr and bucket in moved.stderr
    assert not (data / "log.db").exists() and (data / "sqlite-migrated" / "log.db").exists()
    assert not (data / "records.db").exists() and not (data / "blobs").exists()
    assert (data / "sqlite-migrated" / "records.db").exists() and (data / "sqlite-migrated" / "blobs").is_dir()
    env["PACSPACE_DATABASE"] = postgres_url
    checked = cli("fsck", "--data", str(data), env=env).stdout
    assert "fsck: ok: size 1,000" in checked and "3 records verified" in checked
    again = cli("migrate", "--data", str(data), env=env, code=None)  # the mark is there: nothing to move
    assert again.returncode == 0 and again.stdout.strip() == before.root_hash.hex()
    listed = cli("admin", "party", "list", "--data", str(data), env=env).stdout
    assert "acme" in listed and "bob" in listed
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(f"http://127.0.0.1:{port}")
        import json
        import urllib.request

        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
        assert health == {"status": "ok", "size": 1000, "role": "sequencer", "storage": "postgresql"}
        import time

        import psycopg

        deadline = time.monotonic() + 60
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            while conn.execute("SELECT (SELECT count(*) FROM records WHERE blob IS NOT NULL) + "
                               "(SELECT count(*) FROM bundles WHERE n < 3)").fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the serve did not move the bundles and blobs to the bucket"
                time.sleep(0.1)
        moved_url = f"http://127.0.0.1:{port}"
        async with PacspaceClient(moved_url, "tok-acme") as c:
            served = open_checkpoint(await c.checkpoint(), signer.verifier)
            assert (served.size, served.root_hash) == (before.size, before.root_hash)
            view = await load_relationship(c, acme, rid, acme.log_key())
            await append_body(c, acme, view, delta_maker("2026-11", hour(2), [Line("llm.requests", "request", "1", {})]))
        async with PacspaceClient(moved_url, "tok-bob") as c:
            # bob's home holds what it verified on the SQLite log: the moved log must extend it.
            after = await load_relationship(c, bob, rid, bob.log_key())
        assert [r.body for r in after.records[:3]] == [r.body for r in seen.records]
        assert len(after.records) == 4
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The moved log grows like any other; the old checkpoint stays consistent with the new ones.
    grown = open_log(data, postgres_url)
    await _sequence(grown, signer, [[b"after the move %d" % i for i in range(300)]], clock=time.time)
    after_cp = open_checkpoint(grown.latest_checkpoint(), signer.verifier)
    assert after_cp.size == 1301
    verify_consistency(before.size, after_cp.size, before.root_hash, after_cp.root_hash,
                       consistency_proof(before.size, after_cp.size, grown))
    grown.close()


def test_a_directory_whose_log_is_in_a_database_never_gets_a_second_log(tmp_path, postgres, postgres_url):
    """Neither beside it (init without --database), nor again in a database that lost it."""
    import os

    from helpers import cli

    env = {k: v for k, v in os.environ.items() if k != "PACSPACE_DATABASE"}
    data = tmp_path / "data"
    cli("init", "--data", str(data), "--database", postgres_url, env=env)
    refused = cli("init", "--data", str(data), env=env, code=1)
    assert "already has its log, created in" in refused.stderr and not (data / "log.db").exists()
    # The database loses the log (dropped, restored empty, another server behind the URL): never re-created.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE log_meta, log_head, tiles, bundles, checkpoints, leaf_index, tag_index, objects, pacspace_schema")
    refused = cli("init", "--data", str(data), "--database", postgres_url, env=env, code=1)
    assert "restore it from a backup" in refused.stderr
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('log_meta')").fetchone()[0] is None  # nothing created
    # The parties are in the database too: the directory holds only the key.
    other, elsewhere = tmp_path / "other", postgres.database()
    cli("init", "--data", str(other), "--database", elsewhere, env=env)
    added = cli("admin", "party", "add", "acme", "--role", "provider", "--data", str(other), "--database", elsewhere, env=env)
    assert added.stdout.startswith("pst_")
    assert "give --database" in cli("admin", "party", "list", "--data", str(other), env=env, code=2).stderr
    assert "give --database" in cli("fsck", "--data", str(other), env=env, code=2).stderr  # not "no log here"
    with psycopg.connect(elsewhere, autocommit=True) as conn:
        assert conn.execute("SELECT name, role FROM parties").fetchall() == [("acme", "provider")]
    assert not (other / "records.db").exists()


def test_an_init_that_crashed_after_creating_the_tables_is_completed_not_refused(tmp_path, postgres_url):
    from pacspace.datadir import PENDING_NAME

    init_log(tmp_path, ORIGIN, T0, postgres_url)
    # As if the crash came between the tables' commit and the rename of the pending mark.
    (tmp_path / "database").rename(tmp_path / PENDING_NAME)
    init_log(tmp_path, ORIGIN, T0, postgres_url)
    assert (tmp_path / "database").exists() and not (tmp_path / PENDING_NAME).exists()
    store = PostgresLog(postgres_url, readonly=True)
    assert store.checkpoint_count() == 1
    store.close()


def test_postgres_writer_migrates_an_older_schema_and_readers_wait_for_it(tmp_path, postgres_url, monkeypatch):
    from pacspace.storage import migrations

    init_log(tmp_path, ORIGIN, T0, postgres_url)
    newer = migrations.Migration(LATEST + 1, "a column from a newer pacspace", "ALTER TABLE log_meta ADD COLUMN note text")
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, newer))
    monkeypatch.setattr(migrations, "LATEST", LATEST + 1)
    with pytest.raises(UntrustedState, match=f"version {LATEST}; start `pacspace serve"):
        PostgresLog(postgres_url, readonly=True)
    PostgresLog(postgres_url).close()  # the writer migrates
    reader = PostgresLog(postgres_url, readonly=True)
    assert reader.origin == ORIGIN
    reader.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM pacspace_schema").fetchone()[0] == LATEST + 1


def test_urls_lose_their_passwords_in_every_libpq_form():
    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact("postgresql://u:pw@h1:5432,h2:5433/db") == "postgresql://u:***@h1:5432,h2:5433/db"
    assert redact("postgresql://u@h/db?sslmode=require&password=pw") == "postgresql://u@h/db?sslmode=require&password=***"
    assert redact("postgres://u@h/db?sslpassword=x&a=b") == "postgres://u@h/db?sslpassword=***&a=b"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_fsck_on_postgres_finds_a_lost_lookup_row(tmp_path, postgres_url):
    from pacspace.fsck import fsck

    init_log(tmp_path, ORIGIN, T0, postgres_url)
    signer = load_signer(tmp_path)
    store = open_log(tmp_path, postgres_url)
    await _sequence(store, signer, [[_record_entry(i) for i in range(10)]])
    store.close()
    reader = PostgresLog(postgres_url, readonly=True)
    assert fsck(reader, signer.verifier).ok
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DELETE FROM leaf_index WHERE idx = 7")
        conn.execute("DELETE FROM tag_index WHERE idx = 6")
    report = fsck(reader, signer.verifier)
    assert not report.ok
    assert any("entry 7 is not found by its hash" in f for f in report.faults)
    assert any("entry 6 is not found by its tag" in f for f in report.faults)
    reader.close()


def test_an_empty_database_variable_serves_sqlite_from_every_worker(tmp_path):
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    from helpers import cli, free_port, wait_for_health

    env = {**os.environ, "PACSPACE_DATABASE": ""}
    cli("init", "--data", str(tmp_path / "d"), env=env)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(tmp_path / "d"), "--port",
                               str(port), "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(f"http://127.0.0.1:{port}")
        for _ in range(4):  # answered by the workers in turn
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
            assert health["storage"] == "sqlite" and health["status"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_serve_refuses_storage_behind_or_beside_what_it_published(tmp_path, log_database):
    """`DIR/published`: written by a real server, and a storage rollback (a restore, a lagging standby) found at
    start, on each backend, with the operator told why; storage that caught up again serves."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from helpers import free_port

    from pacspace import highwater

    data = tmp_path / "data"
    init_log(data, ORIGIN, T0, log_database)
    signer = load_signer(data)
    store = open_log(data, log_database)
    await _sequence(store, signer, [[b"entry %d" % i for i in range(10)]], clock=time.time)
    root = open_checkpoint(store.latest_checkpoint(), signer.verifier).root_hash
    store.close()
    env = {k: v for k, v in os.environ.items() if k != "PACSPACE_DATABASE"}
    if log_database:
        env["PACSPACE_DATABASE"] = log_database

    def serve() -> subprocess.CompletedProcess[str] | None:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port),
                                 "--workers", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:  # refused: it exits; else it answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is not None:
            return subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.read() if proc.stderr else "")
        proc.terminate()
        proc.wait(timeout=30)
        return None

    assert serve() is None
    assert highwater.read(data) == highwater.Published(10, root)
    highwater.write(data, highwater.Published(11, root))  # as if storage came back one entry short
    refused = serve()
    assert refused is not None and refused.returncode == 1
    assert "behind size 11 that this server published" in refused.stderr
    highwater.write(data, highwater.Published(10, bytes(32)))
    refused = serve()
    assert refused is not None and "another root at size 10" in refused.stderr
    highwater.write(data, highwater.Published(5, root))
    refused = serve()  # size 5 was never published with that root (no checkpoint of size 5 was signed)
    assert refused is not None and "not in storage" in refused.stderr
    highwater.write(data, highwater.Published(10, root))
    assert serve() is None


async def test_serve_rides_out_a_postgresql_restart(tmp_path, postgres, postgres_url):
    """PostgreSQL stops (every connection ends, as in a restart or a failover) under a running
    `serve --database` with workers, then starts again: an append made while it is down is refused with a clear
    retryable error and leaves nothing, the server stays up, and the appends after it continue the chain; fsck
    then passes."""
    import os
    import subprocess
    import sys

    from helpers import add_two_parties, cli, free_port, register_two_homes, wait_for_health

    from pacspace.client.http import PacspaceClient
    from pacspace.client.records import append_body, create_relationship, delta_maker, load_relationship
    from pacspace.client.outbox import OutboxPending
    from pacspace.records.body import Line

    def delta(hour: int):  # type: ignore[no-untyped-def]
        window = (f"2026-11-02T{hour:02d}:00:00Z", f"2026-11-02T{hour:02d}:59:59Z")
        return delta_maker("2026-11", window, [Line("llm.requests", "request", str(hour + 1), {})])

    data, env = tmp_path / "data", {**os.environ, "PACSPACE_DATABASE": postgres_url}
    cli("init", "--data", str(data), env=env)
    add_two_parties(data)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port),
                               "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_health(url)
        acme, bob = await register_two_homes(url, tmp_path)
        async with PacspaceClient(url, "tok-acme") as c:
            rid = (await create_relationship(c, acme.keys(), "acme", "bob", "hourly"))["relationship"]
            view = await load_relationship(c, acme, rid, acme.log_key())
            await append_body(c, acme, view, delta(0))
        postgres.halt()  # (a client of its own after it: stopping PostgreSQL can outlast the server's keep-alive)
        try:
            # Refused at once, saying so (503: the record could not be stored); the client keeps the sealed
            # record in its outbox.
            async with PacspaceClient(url, "tok-acme") as c:
                with pytest.raises(OutboxPending, match=r"database did not answer.*\(HTTP 503, database_unavailable\)"):
                    await append_body(c, acme, view, delta(1))
        finally:
            postgres.resume()
        async with PacspaceClient(url, "tok-acme") as c:
            # The next command sends the outbox again: the record goes in once, at its seq.
            view = await load_relationship(c, acme, rid, acme.log_key())
            assert [r.seq for r in view.records] == [0, 1, 2]
            await append_body(c, acme, view, delta(2))
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        async with PacspaceClient(url, "tok-bob") as c:
            seen = await load_relationship(c, bob, rid, bob.log_key())
            assert [r.seq for r in seen.records] == [0, 1, 2, 3]
    finally:
        server.terminate()
        server.wait(timeout=30)
    cli("fsck", "--data", str(data), env=env)


async def test_records_an_older_pacspace_kept_beside_a_log_in_a_database_move_in_when_serve_starts(
    tmp_path, postgres_url, aiohttp_client
):
    """Before schema 3 a log in PostgreSQL kept its records in DIR/records.db. The first serve of this version
    moves them into the database (blobs checked), sets the files aside, and settles a row a crash left
    unsettled, from the log; nothing is read from two places, and nothing is merged."""
    import base64
    import os
    import time

    from helpers import add_two_parties, sequence

    from pacspace.config import ServerConfig
    from pacspace.datadir import open_records
    from pacspace.logmove import move_records
    from pacspace.records.seal import entry_from_ct_hash
    from pacspace.sequencer import SequencerConfig
    from pacspace.server.app import create_app
    from pacspace.storage import record_ops
    from pacspace.storage.records import RecordStore, Relationship

    data = tmp_path / "data"
    init_log(data, "example.com/old", int(time.time()), postgres_url)
    add_two_parties(data)  # into DIR/records.db, as the older pacspace did
    old = RecordStore(data)
    old.add_relationship(Relationship("acme:r1", "acme", "bob", "daily", "monthly", 1), {"acme": b"wa", "bob": b"wb"})
    blobs = [os.urandom(300) for _ in range(2)]
    recs = [(seq, os.urandom(32), hashlib.sha256(b).digest(), b) for seq, b in enumerate(blobs)]
    old.write([record_ops.Reserve("acme:r1", [recs[0]])])
    log = open_log(data, postgres_url)
    await sequence(log, load_signer(data), [[entry_from_ct_hash(r[1], r[2])] for r in recs])
    log.close()
    old.write([record_ops.settle("acme:r1", [(0, 0)], 1)])
    old.write([record_ops.Reserve("acme:r1", [recs[1]])])  # in the log at 1, but its settle was lost
    old.close()
    with pytest.raises(UntrustedState, match="not in the database yet"):
        open_records(data, postgres_url)  # nothing reads them from the database before they are moved

    app = create_app(ServerConfig(data_dir=data, sequencer=SequencerConfig(pool_interval=0.01), database=postgres_url))
    client = await aiohttp_client(app)
    resp = await client.get("/v1/relationships/acme:r1/records", headers={"Authorization": "Bearer tok-acme"})
    assert resp.status == 200, await resp.text()
    rows = (await resp.json())["records"]
    assert [(r["seq"], r["index"]) for r in rows] == [(0, 0), (1, 1)]
    assert [base64.b64decode(r["ciphertext"]) for r in rows] == blobs
    assert not (data / "records.db").exists() and (data / "sqlite-migrated" / "records.db").exists()
    await client.close()

    # Another records.db appears beside it (a restore of an old backup): never merged with the database's.
    stray = RecordStore(data)
    stray.add_party("carol", "customer", "tok-carol", 1)
    stray.close()
    with pytest.raises(UntrustedState, match="will not merge"):
        move_records(data, postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM parties WHERE name = 'carol'").fetchone()[0] == 0


def test_a_move_of_records_cut_short_after_its_commit_finishes_on_the_next_run(tmp_path, postgres_url):
    """The copy committed, then the process died before records.db was set aside: the next command that opens
    the records (here `admin party list`) finds the same counts in the database and only moves the files."""
    import os
    import time

    from helpers import add_two_parties, cli

    from pacspace.storage.pg_records import PostgresRecordStore
    from pacspace.storage.records import RecordStore

    data = tmp_path / "data"
    init_log(data, "example.com/cut", int(time.time()), postgres_url)
    add_two_parties(data)
    source = RecordStore(data)
    assert PostgresRecordStore.import_from(postgres_url, source) == 0
    source.close()
    env = {**os.environ, "PACSPACE_DATABASE": postgres_url}
    listed = cli("admin", "party", "list", "--data", str(data), env=env).stdout
    assert "acme" in listed and "bob" in listed
    assert not (data / "records.db").exists() and (data / "sqlite-migrated" / "records.db").exists()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM parties").fetchone()[0] == 2


def _records_with_two_parties(url: str, **kwargs):  # type: ignore[no-untyped-def]
    from pacspace.storage.pg_records import PostgresRecordStore
    from pacspace.storage.records import Relationship

    store = PostgresRecordStore(url, **kwargs)
    store.add_party("acme", "provider", "tok-acme", 1)
    store.add_party("bob", "customer", "tok-bob", 1)
    store.add_relationship(Relationship("acme:r1", "acme", "bob", "daily", "monthly", 1), {"acme": b"wa", "bob": b"wb"})
    return store


def _record(seq: int) -> tuple[int, bytes, bytes, bytes]:
    import os

    blob = os.urandom(200)
    return (seq, os.urandom(32), hashlib.sha256(blob).digest(), blob)


def test_a_sequencer_that_another_took_over_from_stores_no_record(tmp_path, postgres_url):
    """Each serve that starts sequencing claims a new epoch; the records' writes of the one before (its processes
    may still live: a session lost to a database restart) then store nothing and say why."""
    import time

    from pacspace.errors import SequencerUnavailable
    from pacspace.storage import record_ops
    from pacspace.storage.pg_records import PostgresRecordStore

    init_log(tmp_path / "d", "example.com/epochs", int(time.time()), postgres_url)
    old = _records_with_two_parties(postgres_url)
    first = old.claim_epoch()
    assert old.write([record_ops.Reserve("acme:r1", [_record(0)])]) == [None]
    worker_of_old = PostgresRecordStore(postgres_url, epoch=first)  # an HTTP worker of the old sequencer
    new = PostgresRecordStore(postgres_url)
    assert new.claim_epoch() == first + 1
    for store in (old, worker_of_old):  # the whole write is refused: its callers answer 503 sequencer_unavailable
        with pytest.raises(SequencerUnavailable, match="no longer sequences"):
            store.write([record_ops.settle("acme:r1", [(0, 0)], 1)])
        with pytest.raises(SequencerUnavailable):
            store.write([record_ops.Reserve("acme:r2", [_record(0)]), record_ops.Drop("acme:r1", [0])])
    assert [r.seq for r in new.unsettled()] == [0]  # what the old one stored before stays, for reconcile
    assert new.write([record_ops.settle("acme:r1", [(0, 0)], 1)]) == [None]
    # An operator's command (admin party) is no sequencer: it writes whatever the epoch.
    admin = PostgresRecordStore(postgres_url)
    admin.add_party("carol", "customer", "tok-carol", 2)
    for store in (old, worker_of_old, new, admin):
        store.close()


class _CutAtCommit(TcpRelay):
    """A TCP proxy to PostgreSQL that ends the first connection to send COMMIT: after passing it on (the answer
    is lost, the transaction committed) or before (it never arrives: the server rolls back). Later connections
    pass untouched. A misbehaving network, simulated; the database is real."""

    def __init__(self, port: int, after: bool) -> None:
        import threading

        self.after, self.cut = after, threading.Event()
        super().__init__(port)

    def forward(self, data: bytes, src: socket.socket, dst: socket.socket, upstream: bool) -> bool:
        if upstream and not self.cut.is_set() and b"COMMIT\x00" in data:
            self.cut.set()
            if self.after:
                dst.sendall(data)
                time.sleep(0.3)  # the server commits; its answer never gets back
            shut(src, dst)
            return False
        dst.sendall(data)
        return True


@pytest.mark.parametrize("landed", [True, False])
def test_a_write_whose_commit_answer_is_lost_is_known_to_have_landed_or_not(tmp_path, postgres, postgres_url, landed):
    """The connection goes while COMMIT is under way. Landed: the write's results are returned (the records are
    stored once, and the client's receipt follows); not landed: 503 database_unavailable, and nothing is
    stored. Either way the relationship goes on, never stuck in flight."""
    import time

    from pacspace.errors import DatabaseUnavailable
    from pacspace.storage import record_ops
    from pacspace.storage.pg_records import PostgresRecordStore

    init_log(tmp_path / "d", "example.com/commits", int(time.time()), postgres_url)
    _records_with_two_parties(postgres_url).close()
    proxy = _CutAtCommit(postgres.port, after=landed)
    through = postgres_url.replace(f":{postgres.port}/", f":{proxy.port}/")
    store = PostgresRecordStore(through)
    record = _record(0)
    try:
        if landed:
            assert store.write([record_ops.Reserve("acme:r1", [record])]) == [None]
        else:
            with pytest.raises(DatabaseUnavailable, match="not stored"):
                store.write([record_ops.Reserve("acme:r1", [record])])
        assert proxy.cut.is_set()
        direct = PostgresRecordStore(postgres_url)
        assert [r.seq for r in direct.unsettled_of("acme:r1")] == ([0] if landed else [])
        direct.close()
        # The next write goes through (a new connection), and the relationship is where the answer said.
        assert store.write([record_ops.Reserve("acme:r1", [record])]) == ([None] if not landed else [store.unsettled_of("acme:r1")])
    finally:
        store.close()
        proxy.close()


def test_a_settle_and_a_repair_of_the_same_row_at_once_both_succeed_and_settle_it_once(tmp_path, postgres_url):
    """Settles lock no relationship (writers of other relationships go on beside them): the sequencer's settle of a
    batch, still uncommitted, and another process's repair of one of its rows (a client's retry) meet on the row.
    The later one waits for it, finds it settled, and does nothing; neither fails, so no row of the batch is
    left unsettled."""
    import threading
    import time

    from pacspace.storage import record_ops
    from pacspace.storage.pg_records import PostgresRecordStore, _compile

    init_log(tmp_path / "d", "example.com/settles", int(time.time()), postgres_url)
    sequencer = _records_with_two_parties(postgres_url)
    records = [_record(0), _record(1)]
    assert sequencer.write([record_ops.Reserve("acme:r1", records)]) == [None]
    worker = PostgresRecordStore(postgres_url)
    settle, _ = _compile(record_ops.SettleRun([r[1] for r in records], 0, 2))

    def slow_settle(conn):  # type: ignore[no-untyped-def]
        settle(conn)
        time.sleep(1.0)  # still uncommitted while the repair arrives

    outcome: list[object] = []
    first = threading.Thread(target=lambda: outcome.append(sequencer.run([slow_settle], rederivable=True)))
    first.start()
    time.sleep(0.3)
    repaired = worker.write([record_ops.settle("acme:r1", [(1, 1)], 2)])
    first.join(timeout=30)
    assert repaired == [None] and outcome == [[None]]
    assert [(r.seq, r.index) for r in worker.records("acme:r1", -1, 10)] == [(0, 0), (1, 1)]
    assert worker.unsettled() == []
    for store in (sequencer, worker):
        store.close()
