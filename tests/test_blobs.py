"""Records' sealed blobs in the object store (storage/blobs.py), through a real ``serve --database --objects``
on a real PostgreSQL and a real S3-compatible server (SeaweedFS): settled blobs leave the database for the
store and come back byte for byte; one tampered with or lost is never served and fsck names it; a store that
is down stops nobody's appends and costs nothing once it is back."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from helpers import add_two_parties, cli, free_port, http_call, post_record, sealed_record, wait_for_health

from pacspace import exitcodes
from pacspace.storage.blobs import pack_key


class Serve:
    def __init__(self, data: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.stderr = data.parent / f"serve-{self.port}.log"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(self.port),
                 "--pool-interval", "0.01", *args], env=env, stdout=subprocess.DEVNULL, stderr=err)
        wait_for_health(f"http://127.0.0.1:{self.port}")

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        return self.stderr.read_text()


def _append(port: int, rid: str, count: int, start: int = 0) -> dict[int, str]:
    """``count`` records of ``rid`` from seq ``start``, each acknowledged; their ciphertexts by seq."""
    sent = {}
    for seq in range(start, start + count):
        record = sealed_record(seq)
        status, body = post_record(port, rid, seq, record)
        assert status in (200, 201), body
        sent[seq] = str(record["ciphertext"])
    return sent


def _page(port: int, rid: str, token: str = "tok-acme") -> tuple[int, dict]:  # type: ignore[type-arg]
    status, body = http_call(port, "GET", f"/v1/relationships/{rid}/records?limit=1000", token=token)
    return status, json.loads(body)


def _inline(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM records WHERE blob IS NOT NULL").fetchone()[0])


def _wait_moved(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _inline(url):
        assert time.monotonic() < deadline, f"{_inline(url)} blobs are still in the database"
        time.sleep(0.1)


def _place(url: str, rid: str, seq: int) -> tuple[str, int, int]:
    """Where the record's blob moved: its pack's key in the bucket, its offset and its length there."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pack, pack_at, pack_length FROM records WHERE relationship = %s AND seq = %s",
                           (rid, seq)).fetchone()
    assert row is not None and row[0] is not None, (rid, seq)
    return pack_key(bytes(row[0])), int(row[1]), int(row[2])


def _setup(tmp_path: Path, postgres_url: str, s3_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    env = {**os.environ, **s3_env, "PACSPACE_DATABASE": postgres_url}
    data = tmp_path / "data"
    cli("init", "--data", str(data), env=env)
    add_two_parties(data, postgres_url)
    return data, env


def test_settled_blobs_move_to_the_store_and_come_back_byte_for_byte(tmp_path, postgres_url, s3, s3_env):
    """Every record's blob leaves the database for a pack in the bucket, the API (and its HTTP workers) serve
    the same bytes from there, a customer sees them too, and fsck checks each against its ct_hash."""
    data, env = _setup(tmp_path, postgres_url, s3_env)
    url = f"s3://{s3.bucket()}/logs/one"
    serve = Serve(data, env, "--objects", url, "--workers", "1")
    try:
        sent = {rid: _append(serve.port, rid, 30) for rid in ("acme:a", "acme:b")}
        _wait_moved(postgres_url)
        bucket = s3.client(url)
        for rid, ciphertexts in sent.items():
            for token in ("tok-acme", "tok-bob"):
                status, page = _page(serve.port, rid, token)
                assert status == 200, page
                assert {r["seq"]: r["ciphertext"] for r in page["records"]} == ciphertexts
            for seq, ct in ciphertexts.items():
                key, at, length = _place(postgres_url, rid, seq)
                assert bucket.get_range(key, at, length) == base64.b64decode(ct)
        # Records sent after the move are served from their rows until they move too, then from the store.
        more = _append(serve.port, "acme:a", 5, start=30)
        status, page = _page(serve.port, "acme:a")
        assert {r["seq"]: r["ciphertext"] for r in page["records"]} == {**sent["acme:a"], **more}
        _wait_moved(postgres_url)
        metrics = http_call(serve.port, "GET", "/metrics")[1].decode()
        assert "pacspace_blobs_moved 65\n" in metrics and "pacspace_blobs_failing 0\n" in metrics
    finally:
        err = serve.stop()
    assert "Traceback" not in err, err
    assert "fsck: ok" in cli("fsck", "--data", str(data), env=env).stdout


def test_a_tampered_or_lost_blob_is_never_served_and_fsck_names_it(tmp_path, postgres_url, s3, s3_env):
    """The store is untrusted: a blob that does not hash to its record's ct_hash fails that relationship's page
    (502 object_corrupt), never another's, even one whose blobs share its pack; a pack that is gone fails the
    pages of the records in it. fsck names each record."""
    data, env = _setup(tmp_path, postgres_url, s3_env)
    url = f"s3://{s3.bucket()}"
    serve = Serve(data, env, "--objects", url, "--workers", "0")
    try:
        sent = {rid: _append(serve.port, rid, 3) for rid in ("acme:a", "acme:b", "acme:c")}
        _wait_moved(postgres_url)
        bucket = s3.client(url)
        key, at, length = _place(postgres_url, "acme:a", 1)
        pack = bytearray(bucket.get(key) or b"")
        pack[at] ^= 1
        bucket.put(key, bytes(pack))
        status, answer = _page(serve.port, "acme:a")
        assert (status, answer["error"]) == (502, "object_corrupt") and "records" not in answer, answer
        assert "s3://" not in answer["message"]  # where the store is stays in the server's log
        for rid in ("acme:b", "acme:c"):
            status, page = _page(serve.port, rid)
            assert status == 200 and {r["seq"]: r["ciphertext"] for r in page["records"]} == sent[rid]
        sent["acme:d"] = _append(serve.port, "acme:d", 2)  # and records keep going in
        _wait_moved(postgres_url)
        for seq in (0, 1):
            bucket.delete(_place(postgres_url, "acme:d", seq)[0])
        status, answer = _page(serve.port, "acme:d")
        assert (status, answer["error"]) == (502, "object_corrupt"), answer
        status, page = _page(serve.port, "acme:c")
        assert status == 200 and {r["seq"]: r["ciphertext"] for r in page["records"]} == sent["acme:c"]
    finally:
        err = serve.stop()
    assert "does not hold the record's blob (tampered with or damaged)" in err and "is missing" in err, err
    checked = cli("fsck", "--data", str(data), env=env, code=exitcodes.VERIFICATION_FAILED)
    assert "fault: relationship acme:a seq 1: the blob does not match its ct_hash" in checked.stderr
    assert "fault: relationship acme:d seq 0: its blob is missing" in checked.stderr
    assert "fault: relationship acme:d seq 1: its blob is missing" in checked.stderr
    assert checked.stderr.count("fault:") == 3, checked.stderr


def test_a_store_that_is_down_stops_no_append_and_the_blobs_move_once_it_is_back(tmp_path, postgres_url, s3, s3_env):
    """With the store unreachable, records still go in and the ones not yet moved are served from their rows;
    only the moved ones wait for it (503 object_store_failed). Back up, the next rounds move the rest."""
    data, env = _setup(tmp_path, postgres_url, s3_env)
    url = f"s3://{s3.bucket()}"
    serve = Serve(data, env, "--objects", url, "--workers", "0")
    moved = _append(serve.port, "acme:moved", 3)
    _wait_moved(postgres_url)
    serve.stop()
    down = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    serve = Serve(data, down, "--workers", "0")
    try:
        waiting = _append(serve.port, "acme:waiting", 4)
        status, page = _page(serve.port, "acme:waiting")
        assert status == 200 and {r["seq"]: r["ciphertext"] for r in page["records"]} == waiting
        status, answer = _page(serve.port, "acme:moved")
        assert (status, answer["error"]) == (503, "object_store_failed"), answer
        assert "127.0.0.1" not in answer["message"] and "Error" not in answer["message"], answer  # the operator's log has it
        deadline = time.monotonic() + 20
        while "pacspace_blobs_failing 1\n" not in http_call(serve.port, "GET", "/metrics")[1].decode():
            assert time.monotonic() < deadline, "no round of the blobs' mirror failed"
            time.sleep(0.1)
        assert _inline(postgres_url) == 4
    finally:
        err = serve.stop()
    assert "the log's sealed blobs were not brought to the object store" in err and "Traceback" not in err, err
    serve = Serve(data, env, "--workers", "0")
    try:
        _wait_moved(postgres_url)
        for rid, ciphertexts in (("acme:moved", moved), ("acme:waiting", waiting)):
            status, page = _page(serve.port, rid)
            assert status == 200 and {r["seq"]: r["ciphertext"] for r in page["records"]} == ciphertexts
    finally:
        serve.stop()
    assert "fsck: ok" in cli("fsck", "--data", str(data), env=env).stdout


def test_no_blob_moves_into_a_bucket_that_does_not_carry_the_logs_mark(tmp_path, postgres_url, s3, s3_env):
    """A sequencer whose endpoint leads to another store (here: the same bucket with the log's mark gone) moves
    nothing out of the database, says why, and moves everything once the bucket is the log's again."""
    from pacspace.storage.objects import STORE_MARK

    data, env = _setup(tmp_path, postgres_url, s3_env)
    url = f"s3://{s3.bucket()}"
    serve = Serve(data, env, "--objects", url, "--workers", "0")
    _append(serve.port, "acme:a", 2)
    _wait_moved(postgres_url)
    serve.stop()
    bucket = s3.client(url)
    mark = bucket.get(STORE_MARK)
    assert mark is not None and mark.startswith(b"localhost/pacspace\n")
    bucket.delete(STORE_MARK)
    serve = Serve(data, env, "--workers", "0")
    try:
        sent = _append(serve.port, "acme:b", 3)
        deadline = time.monotonic() + 20
        while "pacspace_blobs_failing 1\n" not in http_call(serve.port, "GET", "/metrics")[1].decode():
            assert time.monotonic() < deadline, "the blobs' mirror did not stop"
            time.sleep(0.1)
        assert _inline(postgres_url) == 3
        # A blob this store does not give back is no proof of damage here: the store is not the log's (503).
        key = _place(postgres_url, "acme:a", 0)[0]
        pack = bucket.get(key)
        assert pack is not None
        bucket.delete(key)
        status, answer = _page(serve.port, "acme:a")
        assert (status, answer["error"]) == (503, "object_store_failed"), answer
        bucket.put(key, pack)
        bucket.put(STORE_MARK, mark)
        _wait_moved(postgres_url)
        deadline = time.monotonic() + 60  # the tiles' mirror too, which backed off as long (its step 5)
        while bucket.get("checkpoint") is None:
            assert time.monotonic() < deadline, "the tiles' mirror put no checkpoint"
            time.sleep(0.1)
        status, page = _page(serve.port, "acme:b")
        assert status == 200 and {r["seq"]: r["ciphertext"] for r in page["records"]} == sent
    finally:
        err = serve.stop()
    assert "is not the store the log's objects went to" in err, err
    # A log whose bucket was filled before marks (the database records none): the mark is given only to a bucket
    # that holds the log's checkpoint, which this process then reaches.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE objects SET mark = NULL")
    bucket.delete(STORE_MARK)
    checkpoint = bucket.get("checkpoint")
    assert checkpoint is not None
    bucket.delete("checkpoint")
    serve = Serve(data, env, "--workers", "0")
    try:
        sent = _append(serve.port, "acme:c", 1)
        time.sleep(3)  # rounds that find no checkpoint there
        assert _inline(postgres_url) == 1 and bucket.get(STORE_MARK) is None
        bucket.put("checkpoint", checkpoint)
        _wait_moved(postgres_url)
        assert (bucket.get(STORE_MARK) or b"").startswith(b"localhost/pacspace\n")
        status, page = _page(serve.port, "acme:c")
        assert status == 200 and {r["seq"]: r["ciphertext"] for r in page["records"]} == sent
    finally:
        err = serve.stop()
    assert "does not hold the log's objects" in err, err


def test_a_row_whose_blob_does_not_match_is_set_aside_and_the_others_move(tmp_path, postgres_url, s3, s3_env):
    """A damaged row (its blob no longer hashes to its ct_hash) never goes to the store and never holds up the
    rows after it: it is set aside, logged and counted, and fsck names it."""
    data, env = _setup(tmp_path, postgres_url, s3_env)
    serve = Serve(data, env, "--workers", "0")  # no bucket yet: every blob stays in its row
    sent = {rid: _append(serve.port, rid, 3) for rid in ("acme:a", "acme:b")}
    serve.stop()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE records SET blob = '\\x00'::bytea || substring(blob from 2) "
                     "WHERE relationship = 'acme:a' AND seq = 1")
    serve = Serve(data, env, "--objects", f"s3://{s3.bucket()}", "--workers", "0")
    try:
        deadline = time.monotonic() + 30
        while _inline(postgres_url) != 1:
            assert time.monotonic() < deadline, f"{_inline(postgres_url)} blobs are still in the database"
            time.sleep(0.1)
        assert "pacspace_blobs_set_aside 1\n" in http_call(serve.port, "GET", "/metrics")[1].decode()
        status, page = _page(serve.port, "acme:b")
        assert status == 200 and {r["seq"]: r["ciphertext"] for r in page["records"]} == sent["acme:b"]
    finally:
        err = serve.stop()
    assert "does not match its ct_hash" in err, err
    checked = cli("fsck", "--data", str(data), env=env, code=exitcodes.VERIFICATION_FAILED)
    assert "fault: relationship acme:a seq 1: the blob does not match its ct_hash" in checked.stderr
    assert checked.stderr.count("fault:") == 1, checked.stderr
