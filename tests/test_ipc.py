"""The workers' private channel to the sequencing process: what a sequence call carries, byte for byte."""

from __future__ import annotations

import json
import struct

import pytest

from pacspace.storage import record_ops
from pacspace.errors import EntryTooLarge, MalformedInput
from pacspace.server.context import SERVICE
from pacspace.server.ipc import decode_records, encode_records
from pacspace.tiles import MAX_ENTRY_SIZE

ENTRIES = [bytes([i]) * 65 for i in range(3)] + [b"x" * 10]
ROWS = [("acme:rel_1", 0), ("acme:rel_1", 1), ("b:r", 7), ("b:r", 2**40)]


def test_a_call_round_trips_entries_and_rows_in_order():
    data = encode_records(ENTRIES, ROWS)
    (length,) = struct.unpack_from(">I", data)
    assert json.loads(data[4 : 4 + length]) == {"rows": [list(r) for r in ROWS], "sizes": [65, 65, 65, 10]}
    assert data[4 + length :] == b"".join(ENTRIES)
    assert decode_records(data) == (ENTRIES, ROWS)
    assert decode_records(encode_records([], [])) == ([], [])


def test_a_call_the_worker_cannot_send_is_refused_before_it_leaves():
    with pytest.raises(MalformedInput):
        encode_records(ENTRIES, ROWS[:2])
    with pytest.raises(EntryTooLarge):
        encode_records([b"x" * (MAX_ENTRY_SIZE + 1)], [("a:r", 0)])


def _call(header: object, tail: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + tail


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00",
        encode_records(ENTRIES, ROWS)[:-1],  # an entry cut short
        encode_records(ENTRIES, ROWS) + b"x",  # bytes after the last entry
        _call({"rows": [["a:r", 0]]}, b"x"),  # no sizes
        _call({"rows": [["a:r", 0]], "sizes": [1, 1]}, b"xx"),  # a size without its row
        _call({"rows": [["a:r", "0"]], "sizes": [1]}, b"x"),  # a seq that is not a number
        _call({"rows": [["a:r", 0, 1]], "sizes": [1]}, b"x"),
        _call({"rows": [["a:r", 0]], "sizes": [-1]}, b"x"),
        _call([], b""),
        struct.pack(">I", 100) + b"{}",  # a header longer than the call
        _call({"rows": [["a:r", -1]], "sizes": [1]}, b"x"),  # a seq out of range
        _call({"rows": [["a:r", 1 << 63]], "sizes": [1]}, b"x"),
        struct.pack(">I", 8000) + b"[" * 8000,  # nested too deep for the parser
    ],
)
def test_a_malformed_call_is_refused(data):
    with pytest.raises(MalformedInput):
        decode_records(data)


async def test_a_call_with_a_refused_relationship_settles_the_others_at_their_indexes(aiohttp_client, tmp_path):
    """The parent, in-process: r1 repeats r0's tag in the same call and is refused whole; r0 and r2 are
    sequenced at consecutive indexes and their rows settled there before the answer."""
    import hashlib
    import os
    import time

    from helpers import new_log

    from pacspace.config import ServerConfig
    from pacspace.records.seal import entry_from_ct_hash
    from pacspace.sequencer import SequencerConfig
    from pacspace.server.app import create_app
    from pacspace.storage.records import RecordStore, Relationship

    new_log(tmp_path)
    app = create_app(ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.001)), internal=True)
    client = await aiohttp_client(app)
    store = app[SERVICE].records  # rows stored before the start would be dropped by its reconcile
    store.add_party("acme", "provider", "t1", int(time.time()))
    store.add_party("bob", "customer", "t2", int(time.time()))
    tags = {"acme:r0": os.urandom(32), "acme:r2": os.urandom(32)}
    entries, rows = [], []
    for rid in ("acme:r0", "acme:r1", "acme:r2"):
        store.add_relationship(Relationship(rid, "acme", "bob", "daily", "monthly", 0), {"acme": b"w", "bob": b"w"})
        blob = os.urandom(300)
        ct_hash = hashlib.sha256(blob).digest()
        tag = tags.get(rid, tags["acme:r0"])
        if rid != "acme:r1":  # the refused one's row is never settled, whether stored or not
            store.write([record_ops.Reserve(rid, [(0, tag, ct_hash, blob)])])
        entries.append(entry_from_ct_hash(tag, ct_hash))
        rows.append((rid, 0))
    resp = await client.post("/internal/v1/sequence", data=encode_records(entries, rows))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["count"] == 2 and answer["refused"] == ["acme:r1"]
    records = app[SERVICE].records
    assert records.record("acme:r0", 0).index == answer["first_index"]
    assert records.record("acme:r2", 0).index == answer["first_index"] + 1
    assert records.record("acme:r1", 0) is None and records.unsettled() == []
