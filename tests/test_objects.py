"""The log's object store (``--objects s3://...``) on a real S3-compatible server (SeaweedFS) and a real
PostgreSQL: bundles move there and come back checked, the bucket alone verifies as a log, a tampered object is
detected and never served, and a store that is down or a round cut short loses nothing."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest

from pacspace.checkpoint import open_checkpoint
from pacspace.datadir import init_log, load_signer, load_state
from pacspace.errors import MalformedInput, ObjectCorrupt, ObjectStoreFailed, UntrustedState
from pacspace.fsck import fsck
from pacspace.merkle import HASH_SIZE, leaf_hash, node_hash
from pacspace.storage.objects import STEP_ENTRIES, STORE_MARK, checkpoint_size, new_objects, next_target, partial_objects
from pacspace.storage.postgres import PostgresLog
from pacspace.storage.s3 import EMPTY_SHA256, TIMEOUT, Credentials, S3Location, sign_v4
from pacspace.tiles import TILE_WIDTH, TileRef, encode_bundle, full_tile_count, iter_bundle, root_from_edge, \
    tile_levels, tiles_for_size
from tcp_relay import TcpRelay, shut

ORIGIN = "objects.example/log"
T0 = 1_780_000_000


# --- pure parts --------------------------------------------------------------------------------------------


def test_requests_are_signed_as_aws_signs_its_published_example():
    """AWS's Signature Version 4 example "GET Object" (sig-v4-header-based-auth), byte for byte."""
    credentials = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    header = sign_v4("GET", "examplebucket.s3.amazonaws.com", "/test.txt", {"Range": "bytes=0-9"}, EMPTY_SHA256,
                     datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc), "us-east-1", credentials)
    assert header == ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                      "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
                      "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_object_store_urls():
    assert S3Location.parse("s3://my-bucket") == S3Location("my-bucket", "")
    assert S3Location.parse("s3://my-bucket/logs/one/") == S3Location("my-bucket", "logs/one/")
    assert str(S3Location.parse("s3://my-bucket/logs/one/")) == "s3://my-bucket/logs/one"
    for bad in ("my-bucket", "https://my-bucket/x", "s3://", "s3://UPPER", "s3://a_b/c", "s3://x" * 30,
                "s3://my-bucket/x/../y", "s3://my-bucket/./y"):
        with pytest.raises(MalformedInput):
            S3Location.parse(bad)


def test_rounds_put_each_object_of_the_log_once_and_the_edge_of_their_target():
    """However the store is brought from 0 to a size, round by round, the full objects put are exactly the
    tree's, each once, and each round's partial objects are exactly its target's edge."""
    for steps in ([70_000], [1, 255, 256, 257, 65_536, 65_537, 70_000], [300, 301, 511, 512, 513, 70_000]):
        full: list[TileRef] = []
        mirrored = 0
        for target in steps:
            refs = list(new_objects(mirrored, target))
            full += [r for r in refs if not r.is_partial]
            partial = {r for r in refs if r.is_partial}
            expected_edge = {r for r in tiles_for_size(target) if r.is_partial}
            expected_edge |= {TileRef(None, target // TILE_WIDTH, target % TILE_WIDTH)} if target % TILE_WIDTH else set()
            assert partial == expected_edge, (mirrored, target)
            mirrored = target
        expected_full = {TileRef(None, n) for n in range(full_tile_count(70_000, 0))}
        expected_full |= {TileRef(level, n) for level in range(tile_levels(70_000) + 1)
                          for n in range(full_tile_count(70_000, level))}
        assert len(full) == len(set(full)) and set(full) == expected_full


def test_a_round_goes_to_a_committed_checkpoint_at_most_one_step_ahead():
    assert next_target(0, []) is None
    assert next_target(0, [5, 9, STEP_ENTRIES, STEP_ENTRIES + 1]) == STEP_ENTRIES
    assert next_target(100, [100 + STEP_ENTRIES + 7]) == 100 + STEP_ENTRIES + 7  # one checkpoint spans more


# --- on real servers ---------------------------------------------------------------------------------------


def _entries(start: int, count: int) -> list[bytes]:
    return [b"entry %d of the object store test" % i for i in range(start, start + count)]


async def _append(store: PostgresLog, signer, batches: list[list[bytes]]) -> None:  # type: ignore[no-untyped-def]
    from helpers import sequence

    await sequence(store, signer, batches)


def _new_log(tmp_path, postgres_url: str):  # type: ignore[no-untyped-def]
    """A new log in the database (its key in tmp_path/data); its signer."""
    init_log(tmp_path / "data", ORIGIN, T0, postgres_url)
    return load_signer(tmp_path / "data")


def _wait_until_mirrored(url: str, size: int, bucket=None, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Until the database records the store at ``size`` (step 4) and, given the ``bucket``, the bucket's
    ``checkpoint`` is of that size too (step 5, which follows)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT size FROM objects").fetchone()
            if row is not None and int(row[0]) >= size and (bucket is None or checkpoint_size(
                    bucket.get("checkpoint") or b"") >= size):
                return
            assert time.monotonic() < deadline, f"the store reached {row} of {size}"
            time.sleep(0.1)


def _stored_bundle_numbers(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [int(r[0]) for r in conn.execute("SELECT n FROM bundles ORDER BY n").fetchall()]


def _verify_bucket_as_a_stranger(bucket, vkey_verifier) -> int:  # type: ignore[no-untyped-def]
    """What a C2SP client holding only the log's key checks, from the bucket alone: the checkpoint's signature,
    every tile against its parent up to the checkpoint's root, every bundle against its level-0 tile. Returns
    the size; raises AssertionError on the first object that does not match."""
    note = bucket.get("checkpoint")
    assert note is not None, "the bucket has no checkpoint"
    checkpoint = open_checkpoint(note, vkey_verifier)
    size = checkpoint.size

    def tile(level: int, n: int) -> bytes:
        width = min(TILE_WIDTH, (size >> (8 * level)) - n * TILE_WIDTH)
        data = bucket.get(TileRef(level, n, width).path())
        assert data is not None and len(data) == width * HASH_SIZE, f"tile {level}/{n} is missing"
        return data

    edge = {}
    for level in range(tile_levels(size) + 1):
        full, width = full_tile_count(size, level), (size >> (8 * level)) % TILE_WIDTH
        edge[level] = [] if not width else [tile(level, full)[i:i + HASH_SIZE] for i in range(0, width * HASH_SIZE, HASH_SIZE)]
        for n in range(full):
            data = tile(level, n)
            parent = tile(level + 1, n // TILE_WIDTH)
            at = (n % TILE_WIDTH) * HASH_SIZE
            hashes = [data[i:i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
            while len(hashes) > 1:  # the tile's 256 hashes up to their subtree's root, a level-8 node
                hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
            assert hashes[0] == parent[at:at + HASH_SIZE], f"tile {level}/{n} does not match its parent"
    assert root_from_edge(size, edge) == checkpoint.root_hash, "the edge tiles do not hash to the checkpoint"
    for n in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        data = bucket.get(TileRef(None, n, width).path())
        assert data is not None, f"entry bundle {n} is missing"
        assert b"".join(leaf_hash(e) for e in iter_bundle(data)) == tile(0, n), f"entry bundle {n} does not match"
    return size


async def test_bundles_move_to_the_store_and_every_process_reads_them_back_checked(tmp_path, postgres_url, s3, s3_env):
    signer = _new_log(tmp_path, postgres_url)
    url = f"s3://{s3.bucket()}/logs/one"
    writer = PostgresLog(postgres_url, objects=url)
    try:
        await _append(writer, signer, [_entries(0, 300), _entries(300, 400), _entries(700, 13)])
        _wait_until_mirrored(postgres_url, 713, s3.client(url))
    finally:
        writer.close()
    # The full bundles left the database; the partial one stays, as the writer extends it.
    assert _stored_bundle_numbers(postgres_url) == [2]
    bucket = s3.client(url)
    assert _verify_bucket_as_a_stranger(bucket, signer.verifier) == 713
    # The partial objects of the sizes before (every round's target is a committed checkpoint) are deleted.
    for size in (300, 700):
        for ref in set(partial_objects(size)) - set(partial_objects(713)):
            assert bucket.get(ref.path()) is None, ref.path()
    assert all(bucket.get(ref.path()) is not None for ref in partial_objects(713))
    # Another process (an HTTP worker, a frontend) is not told where the objects are: the database says.
    reader = PostgresLog(postgres_url, readonly=True)
    try:
        assert reader.read_entries(0, 713) == _entries(0, 713)
        assert str(reader.objects) == url  # opened when a bundle was first read from it
        assert load_state(reader, signer).size == 713
        report = fsck(reader, signer.verifier)
        assert report.ok, report.faults
    finally:
        reader.close()
    # A log keeps its store: another bucket is refused, and so is --objects on a SQLite log.
    with pytest.raises(UntrustedState, match="keeps its object store"):
        PostgresLog(postgres_url, objects=f"s3://{s3.bucket()}")
    from pacspace.datadir import open_log

    with pytest.raises(MalformedInput, match="needs --database"):
        open_log(tmp_path / "elsewhere", None, objects=url)
    # Without credentials, a process opens the log, and says what it needs once it must read the store.
    os.environ.pop("AWS_SECRET_ACCESS_KEY")
    reader = PostgresLog(postgres_url, readonly=True)
    try:
        assert reader.read_entries(600, 713) == _entries(600, 113)  # still in the database
        with pytest.raises(ObjectStoreFailed, match="AWS_SECRET_ACCESS_KEY"):
            reader.read_entries(0, 1)
    finally:
        reader.close()


async def test_a_store_that_is_down_or_a_round_cut_short_loses_nothing(tmp_path, postgres_url, s3, s3_env, monkeypatch):
    from helpers import free_port

    signer = _new_log(tmp_path, postgres_url)
    url = f"s3://{s3.bucket()}"
    # A bucket that cannot be reached is never recorded as the log's store.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ObjectStoreFailed):
        PostgresLog(postgres_url, objects=url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    PostgresLog(postgres_url, objects=url).close()
    # The store goes down: the log goes on, everything stays in the database.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    writer = PostgresLog(postgres_url)
    try:
        await _append(writer, signer, [_entries(0, 600)])
        time.sleep(1.5)  # a round or two, failing
        assert _stored_bundle_numbers(postgres_url) == [0, 1, 2]
        assert writer.read_entries(0, 600) == _entries(0, 600)
    finally:
        writer.close()
    # Back up, with a round cut short after its uploads (a crash before step 3): the next one completes it.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    cut = {"rounds": 0}
    real_advance = PostgresLog.advance_mirror

    def crash_before_commit(self, mirrored: int, target: int) -> bool:  # type: ignore[no-untyped-def]
        cut["rounds"] += 1
        if cut["rounds"] == 1:
            raise psycopg.OperationalError("the process died here")
        return real_advance(self, mirrored, target)

    monkeypatch.setattr(PostgresLog, "advance_mirror", crash_before_commit)
    writer = PostgresLog(postgres_url)
    try:
        _wait_until_mirrored(postgres_url, 600, s3.client(url))
        assert cut["rounds"] >= 2
    finally:
        writer.close()
    assert _stored_bundle_numbers(postgres_url) == [2]
    assert _verify_bucket_as_a_stranger(s3.client(url), signer.verifier) == 600


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_a_tampered_object_is_detected_and_never_served(tmp_path, postgres_url, s3, s3_env):
    """A real `serve --objects`: it brings the bucket up to the log; then a tile and a bundle in the bucket are
    changed behind its back. A stranger's check of the bucket fails, the server never serves the changed bytes
    (the tile from the database, the bundle refused with 502 object_corrupt), and fsck names both."""
    from helpers import cli, free_port, wait_for_health

    signer = _new_log(tmp_path, postgres_url)
    writer = PostgresLog(postgres_url)
    try:
        await _append(writer, signer, [_entries(0, 1000)])
    finally:
        writer.close()
    url = f"s3://{s3.bucket()}/tamper"
    env = {**os.environ, **s3_env, "PACSPACE_DATABASE": postgres_url}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(tmp_path / "data"), "--port", str(port),
                               "--workers", "2", "--objects", url], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base)
        bucket = s3.client(url)
        _wait_until_mirrored(postgres_url, 1000, bucket)
        assert _verify_bucket_as_a_stranger(bucket, signer.verifier) == 1000
        good_tile, good_bundle = bucket.get("tile/0/000"), bucket.get("tile/entries/001")
        assert good_tile is not None and good_bundle is not None
        assert _get(f"{base}/tile/entries/000") == (200, encode_bundle(_entries(0, 256)))
        # Behind the log's back: one hash of a tile, one entry of a bundle (still a well-formed bundle).
        bucket.put("tile/0/000", bytes([good_tile[0] ^ 1]) + good_tile[1:])
        forged = _entries(256, 256)
        forged[7] = b"an entry the log never committed"
        bucket.put("tile/entries/001", encode_bundle(forged))
        with pytest.raises(AssertionError, match="tile 0/0 does not match its parent"):
            _verify_bucket_as_a_stranger(bucket, signer.verifier)
        for _ in range(4):  # every serving process
            assert _get(f"{base}/tile/0/000") == (200, good_tile)
            status, body = _get(f"{base}/tile/entries/001")
            assert status == 502 and json.loads(body)["error"] == "object_corrupt"
        checked = cli("fsck", "--data", str(tmp_path / "data"), env=env, code=6)  # exitcodes.VERIFICATION_FAILED
        text = checked.stdout + checked.stderr
        assert "entry bundle 1: s3://" in text and "tamper/tile/entries/001 does not match the log" in text, text
        assert "tile/0/000 differs from the log's" in text, text
        # A store fsck cannot reach proves nothing about the log: exit 1, not a fault.
        from helpers import free_port as another_port

        unreachable = cli("fsck", "--data", str(tmp_path / "data"), env={
            **env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{another_port()}"}, code=1)
        assert "fault" not in unreachable.stderr and "ConnectionRefusedError" in unreachable.stderr
        # Nor does another store that has a bucket of that name (here: the bucket without the log's mark).
        mark = bucket.get(STORE_MARK)
        assert mark is not None
        bucket.delete(STORE_MARK)
        elsewhere = cli("fsck", "--data", str(tmp_path / "data"), env=env, code=1)
        assert "fault" not in elsewhere.stderr and "not the store the log's objects went to" in elsewhere.stderr
        bucket.put(STORE_MARK, mark)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert b"secret" not in err and s3_env["AWS_SECRET_ACCESS_KEY"].encode() not in err
    # The mirror never overwrote them: the bucket still holds the changed bytes for the operator to see.
    assert bucket.get("tile/entries/001") == encode_bundle(forged)


async def test_a_store_that_hangs_stalls_only_the_bundle_reads_that_wait_for_it(tmp_path, postgres_url, s3, s3_env):
    """A store that takes connections and never answers (a misbehaving party, simulated): a request for a bundle
    the database no longer holds waits for it, and the same process's event loop goes on answering everyone
    else (checkpoints, tiles, proofs) at once; the log goes on taking entries."""
    import socket
    import threading

    from helpers import free_port, wait_for_health

    signer = _new_log(tmp_path, postgres_url)
    url = f"s3://{s3.bucket()}"
    writer = PostgresLog(postgres_url, objects=url)
    try:
        await _append(writer, signer, [_entries(0, 600)])
        _wait_until_mirrored(postgres_url, 600)
    finally:
        writer.close()
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        hung.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(hung.accept()[0])
            except OSError:
                continue

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    env = {**os.environ, **s3_env, "PACSPACE_DATABASE": postgres_url,
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{hung.getsockname()[1]}"}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(tmp_path / "data"), "--port", str(port),
                               "--workers", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base)
        waiting = asyncio.ensure_future(asyncio.to_thread(_get, f"{base}/tile/entries/000"))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # it waits on the store
        started = time.monotonic()
        for path in ("/checkpoint", "/tile/0/000", "/tile/entries/002.p/88", "/v1/proof/inclusion?index=3&size=600"):
            status, _ = await asyncio.to_thread(_get, base + path)
            assert status == 200, path
        assert time.monotonic() - started < 5.0  # not the store's 30 s: nothing waited behind the hung read
        assert not waiting.done()
        # A shutdown waits for the hung read only as long as a request to the store may take (s3.TIMEOUT).
        started = time.monotonic()
        server.terminate()
        server.wait(timeout=30)
        assert time.monotonic() - started < TIMEOUT + 5
    finally:
        server.kill()
        server.wait(timeout=30)
        stop.set()
        holder.join(timeout=5)
        for conn in held:
            conn.close()
        hung.close()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_a_store_that_acknowledges_what_it_did_not_keep_costs_the_log_nothing(tmp_path, postgres_url, s3, s3_env):
    """A store answering 200 to a PUT it dropped (a misbehaving party, simulated over the real one): the round
    reads the bundles back before it deletes them from the database, finds them missing, and deletes nothing."""
    from pacspace.storage.objects import ObjectMirror
    from pacspace.storage.s3 import S3Bucket

    class DroppingBucket(S3Bucket):
        def put_if_absent(self, key: str, data: bytes) -> bool:
            return True if key.startswith("tile/entries/") else super().put_if_absent(key, data)

    signer = _new_log(tmp_path, postgres_url)
    writer = PostgresLog(postgres_url)
    try:
        await _append(writer, signer, [_entries(0, 600)])
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("INSERT INTO objects (url, size) VALUES (%s, 0)", (f"s3://{s3.bucket()}",))
        real = writer._bucket()
        assert real is not None
        mirror = ObjectMirror(DroppingBucket(real.location, endpoint=s3.endpoint, region="us-east-1",
                                             credentials=real._credentials), writer)
        with pytest.raises(ObjectCorrupt, match="does not hold what was put there"):
            mirror.run_round()
        assert _stored_bundle_numbers(postgres_url) == [0, 1, 2] and writer.mirrored_size() == 0
        assert writer.read_entries(0, 600) == _entries(0, 600)
    finally:
        writer.close()
    # A closed writer's mirror never writes again, and never takes the writer's lock back.
    with pytest.raises(UntrustedState, match="closed"):
        writer.advance_mirror(0, 600)
    PostgresLog(postgres_url).close()


class _CutInTheBody(TcpRelay):
    """A relay to the store that cuts the first request after its headers and ``body_bytes`` of its body: a
    writer killed in the middle of a PUT, as the store sees it."""

    def __init__(self, port: int, body_bytes: int) -> None:
        self.body_bytes, self.received, self.done = body_bytes, b"", threading.Event()
        super().__init__(port)

    def forward(self, data: bytes, src: socket.socket, dst: socket.socket, upstream: bool) -> bool:
        if not upstream:
            dst.sendall(data)
            return True
        self.received += data
        end = self.received.find(b"\r\n\r\n")
        if end < 0 or len(self.received) < end + 4 + self.body_bytes:
            return True
        dst.sendall(self.received[:end + 4 + self.body_bytes])
        time.sleep(0.3)  # the store has what was sent; then both sides of the connection close
        shut(src, dst)
        self.done.set()
        return False


@pytest.mark.parametrize("body_bytes", [0, 100_000])
def test_a_put_cut_short_leaves_nothing_in_the_store(s3, body_bytes):
    """The client's Content-MD5 makes the store refuse a body that did not arrive whole (SeaweedFS checks no
    x-amz-content-sha256, and keeps an empty object for a PUT cut after its headers otherwise)."""
    from pacspace.storage.s3 import S3Bucket

    name = s3.bucket()
    data = os.urandom(200_000)
    relay = _CutInTheBody(int(urllib.parse.urlsplit(s3.endpoint).port or 0), body_bytes)
    cut = S3Bucket(S3Location(name), endpoint=f"http://127.0.0.1:{relay.port}", region="us-east-1",
                   credentials=s3.client(f"s3://{name}")._credentials)
    try:
        with pytest.raises(ObjectStoreFailed):
            cut.put_if_absent("tile/entries/000", data)
        assert relay.done.wait(15)
    finally:
        relay.close()
    # What lets the store tell: the PUT says which bytes it carries (SeaweedFS, given none, has kept an empty
    # object for a PUT cut after its headers, on this machine, though not every time).
    headers = relay.received.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-md5: " + base64.b64encode(hashlib.md5(data).digest()).lower() in headers, headers
    time.sleep(0.5)
    assert s3.client(f"s3://{name}").get("tile/entries/000") is None
    # Whole, it is stored.
    assert s3.client(f"s3://{name}").put_if_absent("tile/entries/000", data)
    assert s3.client(f"s3://{name}").get("tile/entries/000") == data


async def test_other_bytes_where_the_mirror_puts_are_replaced_by_the_logs(tmp_path, postgres_url, s3, s3_env, caplog):
    """What a put cut short leaves on a store that keeps part of one (or a tamperer puts ahead of the log):
    an empty bundle, half a tile and half a mark, under names the database has not recorded as moved. The
    mirror puts the log's bytes there (it still holds them), says so, and the bucket verifies."""
    signer = _new_log(tmp_path, postgres_url)
    url = f"s3://{s3.bucket()}/torn"
    bucket = s3.client(url)
    writer = PostgresLog(postgres_url)
    try:
        await _append(writer, signer, [_entries(0, 600)])
        good_tile = writer.committed_tile(0, 0)
    finally:
        writer.close()
    assert good_tile is not None
    bucket.put("tile/entries/000", b"")
    bucket.put("tile/0/000", good_tile[:100])
    bucket.put(STORE_MARK, f"{ORIGIN}\n".encode())
    with caplog.at_level(logging.WARNING, logger="pacspace.storage"):
        writer = PostgresLog(postgres_url, objects=url)
        try:
            _wait_until_mirrored(postgres_url, 600, bucket)
        finally:
            writer.close()
    assert _verify_bucket_as_a_stranger(bucket, signer.verifier) == 600
    held = (bucket.get(STORE_MARK) or b"").decode()
    assert held.startswith(f"{ORIGIN}\n") and held.count("\n") == 2
    replaced = "\n".join(r.getMessage() for r in caplog.records if "put again" in r.getMessage())
    assert "/tile/entries/000 held 0 bytes" in replaced and "/tile/0/000 held 100 bytes" in replaced, replaced
    assert f"/{STORE_MARK} is a mark cut short" in replaced, replaced
    reader = PostgresLog(postgres_url, readonly=True)
    try:
        assert fsck(reader, signer.verifier).ok
    finally:
        reader.close()
    # Bytes that are not the start of the log's are no put cut short: a tamperer's, or another log's that shares
    # the bucket (whose only copy they may be): never overwritten. A pack's name is its hash: only its bytes fit.
    from pacspace.storage.objects import put_object

    bucket.put("tile/entries/999", b"another log's bundle")
    with pytest.raises(ObjectCorrupt, match="not overwritten"):
        put_object(bucket, "tile/entries/999", b"this log's bundle")
    assert bucket.get("tile/entries/999") == b"another log's bundle"
    put_object(bucket, "tile/entries/999", b"this log's bundle", named_by_hash=True)
    assert bucket.get("tile/entries/999") == b"this log's bundle"


async def test_the_bucket_checkpoint_is_put_again_and_fsck_refuses_a_forged_one(tmp_path, postgres_url, s3, s3_env):
    signer = _new_log(tmp_path, postgres_url)
    url = f"s3://{s3.bucket()}"
    # A reader opened before the log had a store finds the store once the bundles moved there.
    early = PostgresLog(postgres_url, readonly=True)
    writer = PostgresLog(postgres_url, objects=url)
    try:
        await _append(writer, signer, [_entries(0, 300)])
        _wait_until_mirrored(postgres_url, 300)
        first = writer.checkpoint_at(300)
        await _append(writer, signer, [_entries(300, 300)])
        _wait_until_mirrored(postgres_url, 600)
    finally:
        writer.close()
    assert early.read_entries(0, 600) == _entries(0, 600)
    early.close()
    bucket = s3.client(url)
    # An older checkpoint in the bucket (a put that failed, a lagging copy): the next start puts the store's own.
    bucket.put("checkpoint", first)
    report = fsck(PostgresLog(postgres_url, readonly=True), signer.verifier)
    assert report.ok and any("behind the store's 600" in w for w in report.warnings), report.warnings
    writer = PostgresLog(postgres_url)
    try:
        deadline = time.monotonic() + 10
        while open_checkpoint(bucket.get("checkpoint") or b"", signer.verifier).size != 600:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        writer.close()
    # One the log never signed, whatever size it claims, is a fault.
    forged = first.replace(b"\n300\n", b"\n999999999\n")
    bucket.put("checkpoint", forged)
    report = fsck(PostgresLog(postgres_url, readonly=True), signer.verifier)
    assert any("checkpoint is not the log's" in f for f in report.faults), report.faults


def test_a_store_that_answers_too_much_or_too_slowly_is_not_waited_on(monkeypatch):
    """A store (simulated: a raw socket) declaring a 1 GiB body, or dripping one byte at a time: refused, without
    reading it into memory, and within the request's deadline. Credentials with a trailing newline (a secret
    mounted from a file) are stripped, and one no header may carry is never quoted."""
    import socket
    import threading

    from pacspace.storage import s3 as s3_module
    from pacspace.storage.s3 import S3Bucket

    monkeypatch.setattr(s3_module, "TIMEOUT", 1.0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                request = conn.recv(65536)
                if b"/huge" in request:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n" + b"x" * 65536)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                    for _ in range(100):
                        if stop.is_set():
                            break
                        try:
                            conn.sendall(b"x")
                        except OSError:
                            break
                        time.sleep(0.1)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{listener.getsockname()[1]}", "AWS_ACCESS_KEY_ID": "AKID\n",
           "AWS_SECRET_ACCESS_KEY": "secret\n", "AWS_SESSION_TOKEN": "token-from-a-file\n"}
    try:
        bucket = S3Bucket.from_env(S3Location.parse("s3://fake-store"), env)
        assert bucket._credentials == Credentials("AKID", "secret", "token-from-a-file")
        with pytest.raises(ObjectStoreFailed, match="more than any object"):
            bucket.get("huge")
        started = time.monotonic()
        with pytest.raises(ObjectStoreFailed, match="took more than"):
            bucket.get("drip")
        assert time.monotonic() - started < 3.0  # the deadline, not 100 bytes x 0.1 s
        broken = S3Bucket.from_env(S3Location.parse("s3://fake-store"), {**env, "AWS_SESSION_TOKEN": "TOPSECRET\nX"})
        with pytest.raises(ObjectStoreFailed) as refused:
            broken.get("anything")
        assert "TOPSECRET" not in str(refused.value)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


async def test_a_writer_killed_at_random_moments_of_the_mirror_loses_nothing(tmp_path, postgres_url, s3, s3_env):
    """`serve --objects` SIGKILLed again and again while its mirror copies a log of 60,000 entries: every start
    goes on from what the database recorded (objects put twice are the same bytes, never a conflict), the
    store ends up holding the whole log, and fsck passes."""
    import random

    from helpers import cli, free_port, wait_for_health

    signer = _new_log(tmp_path, postgres_url)
    writer = PostgresLog(postgres_url)
    try:
        await _append(writer, signer, [_entries(i, 5000) for i in range(0, 60_000, 5000)])
    finally:
        writer.close()
    url = f"s3://{s3.bucket()}/killed"
    env = {**os.environ, **s3_env, "PACSPACE_DATABASE": postgres_url}
    rng = random.Random(18)
    sizes = []
    for attempt in range(6):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(tmp_path / "data"),
                                   "--port", str(port), "--workers", "0", *(["--objects", url] if attempt == 0 else [])],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_health(f"http://127.0.0.1:{port}")
            if attempt < 5:
                time.sleep(rng.uniform(0.05, 3.0))  # inside a round, or between its steps
                server.kill()
            else:
                _wait_until_mirrored(postgres_url, 60_000, s3.client(url))
                server.terminate()
            _, err = server.communicate(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
        assert b"object_corrupt" not in err and b"ObjectCorrupt" not in err and b"holds other bytes" not in err, err
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            sizes.append(int(conn.execute("SELECT size FROM objects").fetchone()[0]))
    assert sizes == sorted(sizes) and sizes[-1] == 60_000
    assert _stored_bundle_numbers(postgres_url) == [234]  # 60,000 = 234 full bundles and 96 entries
    assert _verify_bucket_as_a_stranger(s3.client(url), signer.verifier) == 60_000
    assert "fsck: ok: size 60,000" in cli("fsck", "--data", str(tmp_path / "data"), env=env).stdout


async def test_the_mirror_shows_in_metrics(tmp_path, postgres_url, s3, s3_env):
    """The sequencer's /metrics carries the mirror's gauges (size held, lag, failing), from memory."""
    import re

    signer = _new_log(tmp_path, postgres_url)
    writer = PostgresLog(postgres_url, objects=f"s3://{s3.bucket()}")
    try:
        await _append(writer, signer, [_entries(0, 600)])
        _wait_until_mirrored(postgres_url, 600)
        deadline = time.monotonic() + 5
        while "pacspace_objects_size 600\n" not in writer.metrics_text():
            assert time.monotonic() < deadline, writer.metrics_text()
            time.sleep(0.05)
        text = writer.metrics_text()
        assert re.search(r"^pacspace_objects_lag 0$", text, re.M) and re.search(r"^pacspace_objects_failing 0$", text, re.M)
    finally:
        writer.close()
    plain = PostgresLog(postgres_url, readonly=True)
    assert plain.metrics_text() == ""  # only the writer runs the mirror
    plain.close()
