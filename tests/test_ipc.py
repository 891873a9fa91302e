"""The workers' private channel to the sequencing process: what a sequence call carries, byte for byte."""

from __future__ import annotations

import json
import struct

import pytest

from pacspace.errors import EntryTooLarge, MalformedInput
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
    ],
)
def test_a_malformed_call_is_refused(data):
    with pytest.raises(MalformedInput):
        decode_records(data)
