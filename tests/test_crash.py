"""SIGKILL a real writer process at random moments; nothing acknowledged may be lost or rewritten."""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ORIGIN, new_log

from pacspace.checkpoint import open_checkpoint
from pacspace.datadir import init_log, load_signer, load_state, open_log
from pacspace.fsck import fsck
from pacspace.merkle import consistency_proof, verify_consistency
from pacspace.note import parse_vkey

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 6


def run_round(data: Path, round_no: int, kill_after: float, database: str | None) -> tuple[dict[int, str], list[bytes], int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data), str(round_no), *([database] if database else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().decode()
    if not first.startswith("ready "):
        proc.kill()
        raise AssertionError(f"writer did not start: {proc.communicate()[1].decode()}")
    start_size = int(first.split()[1])
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    acks: dict[int, str] = {}
    checkpoints: list[bytes] = []
    for line in out.decode().splitlines():
        parts = line.split(" ")
        # The last line may be cut mid-write by the kill: only whole lines count.
        if parts[0] == "ack" and len(parts) == 3 and len(parts[2]) == 64:
            acks[int(parts[1])] = parts[2]
        elif parts[0] == "checkpoint" and len(parts) == 2:
            try:
                checkpoints.append(base64.b64decode(parts[1], validate=True))
            except ValueError:
                pass
    return acks, checkpoints, start_size


@pytest.fixture(params=["sqlite", "postgres"])
def database(request) -> str | None:  # type: ignore[no-untyped-def]
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def test_sigkill_loses_nothing_acknowledged(tmp_path, database):
    if database is None:
        vkey = parse_vkey(new_log(tmp_path))
    else:
        vkey = init_log(tmp_path, ORIGIN, int(time.time()), database).verifier
    rng = random.Random(int(time.time()))
    all_acks: dict[int, str] = {}
    seen: list = []
    for round_no in range(ROUNDS):
        acks, notes, start_size = run_round(tmp_path, round_no, rng.uniform(0.3, 1.2), database)
        # Everything acknowledged before this round is still below where this round started.
        assert all(i < start_size for i in all_acks), "an acknowledged index was beyond the recovered size"
        assert acks, "the writer acknowledged nothing in this round"
        for index, leaf in acks.items():
            assert index not in all_acks, f"index {index} was handed out twice"
        all_acks.update(acks)
        for note in notes:
            seen.append(open_checkpoint(note, vkey))

    signer = load_signer(tmp_path)
    store = open_log(tmp_path, database, readonly=True)
    try:
        state = load_state(store, signer)
        final = state.checkpoint
        report = fsck(store, signer.verifier)
        assert report.ok, report.faults
        assert report.entries == final.size
        for index, leaf in all_acks.items():
            assert index < final.size
            assert store.read_hashes([(0, index)])[0].hex() == leaf
            assert store.find_leaf(bytes.fromhex(leaf), final.size) == index
        assert len(seen) > ROUNDS
        for checkpoint in seen:
            assert checkpoint.size <= final.size
            proof = consistency_proof(checkpoint.size, final.size, store)
            verify_consistency(checkpoint.size, final.size, checkpoint.root_hash, final.root_hash, proof)
    finally:
        store.close()
