"""The binary batch encoding: what is encoded decodes the same however the bytes are cut, every malformed body is
refused as soon as its bytes show it (the same errors and limits as JSON), and a trickling body costs a few joins a
record and is never held whole."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacspace.errors import MalformedInput
from pacspace.records import batchwire
from pacspace.records.batchwire import (
    MAX_CIPHERTEXT,
    MAX_RECORDS,
    MIN_CIPHERTEXT,
    BatchRecord,
    CiphertextTooLarge,
    RecordsDecoder,
    decode_results,
    encode_records,
    encode_results,
)
from pacspace.server import records_api

MAX_RECORD = 1 + batchwire.MAX_ID + 8 + 32 + 4 + MAX_CIPHERTEXT


def record(rid: str = "acme:r1", seq: int = 1, size: int = 100) -> BatchRecord:
    return BatchRecord(rid, seq, os.urandom(32), os.urandom(size))


def decode(body: bytes, cuts: list[int] = ()) -> list[BatchRecord]:  # type: ignore[assignment]
    decoder, records, at = RecordsDecoder(), [], 0
    for cut in sorted({c % (len(body) + 1) for c in cuts}):
        records += decoder.feed(body[at:cut])
        at = cut
        assert decoder.held < MAX_RECORD
    records += decoder.feed(body[at:])
    return records + decoder.end()


def header(count: int) -> bytes:
    return batchwire.REQUEST_MAGIC + struct.pack(">I", count)


def raw_record(rid: bytes = b"acme:r1", seq: int = 1, tag: bytes = bytes(32), blob: bytes = bytes(100),
               length: int | None = None) -> bytes:
    return bytes([len(rid)]) + rid + struct.pack(">Q", seq) + tag + struct.pack(">I", len(blob) if length is None else length) + blob


_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True)
_records = st.builds(BatchRecord, _ids, st.integers(0, batchwire.MAX_SEQ), st.binary(min_size=32, max_size=32),
                     st.binary(min_size=MIN_CIPHERTEXT, max_size=400))


@settings(max_examples=200, deadline=None)
@given(st.lists(_records, min_size=1, max_size=12), st.lists(st.integers(min_value=0), max_size=20))
def test_any_cut_of_any_batch_decodes_to_what_was_encoded(records, cuts):
    assert decode(encode_records(records), cuts) == records


def test_the_largest_records_round_trip():
    records = [record("a" * 128, batchwire.MAX_SEQ, MAX_CIPHERTEXT), record("b", 0, MIN_CIPHERTEXT)]
    assert decode(encode_records(records), [5, 70_000, 70_001]) == records


def test_a_body_fed_a_byte_at_a_time_is_joined_a_few_times_a_record_and_never_held_whole():
    records = [record(f"acme:r{i}", i, 60_000) for i in range(3)]
    body = encode_records(records)
    decoder, out = RecordsDecoder(), []
    for at in range(len(body)):
        out += decoder.feed(body[at : at + 1])
        assert decoder.held < MAX_RECORD
    assert out + decoder.end() == records
    assert decoder.joins <= 1 + 3 * len(records)  # the header; each record's id length, fixed fields, whole


def test_the_limits_are_the_json_routes():
    assert MAX_RECORDS == records_api.MAX_BATCH
    assert MAX_CIPHERTEXT == records_api.MAX_BLOB
    assert batchwire._ID_TEXT.pattern == records_api._RID.pattern


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "shorter than its 12-byte header"),
        (header(1)[:11], "shorter than its 12-byte header"),
        (b'{"records": [{"relationship": "acme:r1"}]}', "does not start with"),
        (header(0), "1 to 10000 records, not 0"),
        (header(MAX_RECORDS + 1) + raw_record(), "1 to 10000 records, not 10001"),
        (header(1) + b"\x00" + bytes(44), "1 to 128 bytes, not 0"),
        (header(1) + raw_record(rid=b"a" * 129), "1 to 128 bytes, not 129"),
        (header(1) + raw_record(rid=b".acme"), "not a relationship id"),
        (header(1) + raw_record(rid=b"acme r1"), "not a relationship id"),
        (header(1) + raw_record(rid="acmé".encode()), "not a relationship id"),
        (header(1) + raw_record(seq=1 << 62), "not below 2^62"),
        (header(1) + raw_record(blob=bytes(MIN_CIPHERTEXT - 1)), "too short to be a sealed record"),
        (header(1) + raw_record()[:-1], "ends inside record 1 of the 1"),
        (header(1) + raw_record()[:30], "ends inside record 1 of the 1"),
        (header(1) + raw_record()[:1], "ends inside record 1 of the 1"),
        (header(2) + raw_record(), "ends inside record 2 of the 2"),
        (header(1) + raw_record() + b"\x00", "bytes after the last of the 1 records"),
        (header(1) + raw_record() + raw_record(), "bytes after the last of the 1 records"),
    ],
)
@pytest.mark.parametrize("trickle", [False, True])
def test_what_is_not_a_batch_is_malformed(body, says, trickle):
    with pytest.raises(MalformedInput, match=says.replace("^", r"\^")) as refused:
        decode(body, list(range(len(body))) if trickle else [])
    assert refused.value.code == "malformed" and refused.value.http_status == 400
    assert "not JSON" not in str(refused.value)  # a client would take it for a server without the encoding


@pytest.mark.parametrize("trickle", [False, True])
def test_a_ciphertext_over_the_largest_sealed_blob_is_too_large(trickle):
    body = header(1) + raw_record(length=MAX_CIPHERTEXT + 1)
    with pytest.raises(CiphertextTooLarge) as refused:
        decode(body, list(range(len(body))) if trickle else [])
    assert (refused.value.code, refused.value.http_status) == ("too_large", 413)


def test_a_bad_record_is_refused_before_the_rest_of_the_body_arrives():
    decoder = RecordsDecoder()
    good = raw_record()
    assert len(decoder.feed(header(3) + good)) == 1
    with pytest.raises(CiphertextTooLarge):
        decoder.feed(raw_record(length=1 << 31)[:60])  # only the fixed fields of a 2 GiB ciphertext
    decoder = RecordsDecoder()
    with pytest.raises(MalformedInput):
        decoder.feed(header(3) + b"\xff")  # an id length no id has, before the id
    with pytest.raises(MalformedInput):
        RecordsDecoder().feed(b"x" * 12)  # not the magic


def test_bytes_after_the_last_record_are_refused_in_a_later_chunk_too():
    decoder = RecordsDecoder()
    assert len(decoder.feed(header(1) + raw_record())) == 1
    with pytest.raises(MalformedInput, match="bytes after the last"):
        decoder.feed(b"\x00")


@pytest.mark.parametrize(
    "bad",
    [
        BatchRecord("acme r1", 1, bytes(32), bytes(100)),
        BatchRecord("a" * 129, 1, bytes(32), bytes(100)),
        BatchRecord("acme:r1", -1, bytes(32), bytes(100)),
        BatchRecord("acme:r1", 1 << 62, bytes(32), bytes(100)),
        BatchRecord("acme:r1", True, bytes(32), bytes(100)),
        BatchRecord("acme:r1", 1, bytes(31), bytes(100)),
        BatchRecord("acme:r1", 1, bytes(32), bytes(MIN_CIPHERTEXT - 1)),
        BatchRecord("acme:r1", 1, bytes(32), bytes(MAX_CIPHERTEXT + 1)),
    ],
)
def test_the_encoder_refuses_what_the_server_would(bad):
    with pytest.raises(MalformedInput):
        encode_records([bad])


def test_the_encoder_refuses_an_empty_or_oversized_batch():
    with pytest.raises(MalformedInput):
        encode_records([])
    with pytest.raises(MalformedInput):
        encode_records([record()] * (MAX_RECORDS + 1))


def test_the_bytes_are_as_documented():
    """docs/api.md's example, byte by byte."""
    body = encode_records([BatchRecord("acme:r1", 7, bytes(range(32)), b"\xab" * 61)])
    assert body.hex() == (
        "70616373726563" "01" "00000001"  # "pacsrec" 0x01, one record
        "07" "61636d653a7231"  # the id's length and "acme:r1"
        "0000000000000007"  # seq
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # tag
        "0000003d" + "ab" * 61  # the ciphertext's length and bytes
    )


def test_results_round_trip():
    error = {"relationship": "acme:r2", "seq": 4, "status": "error", "error": "seq_conflict", "message": "m",
             "expected_seq": 3}
    data = encode_results(b"note\n", [17, error, 18])
    decoded = decode_results(data)
    assert (decoded.accepted, decoded.rejected, decoded.checkpoint, decoded.results) == (2, 1, b"note\n", [17, error, 18])
    assert data[:8] == b"pacsres\x01" and data[8:20] == struct.pack(">III", 2, 1, 5)
    assert decode_results(encode_results(None, [error])).checkpoint is None


@pytest.mark.parametrize("cut", [0, 8, 19, 22, 30, -1])
def test_malformed_results_are_refused(cut):
    data = encode_results(b"note\n", [17, {"error": "x", "message": "m"}])
    with pytest.raises(MalformedInput):
        decode_results(data[:cut])
    with pytest.raises(MalformedInput):
        decode_results(data + b"\x00")
    with pytest.raises(MalformedInput):
        decode_results(b"pacsreX\x01" + data[8:])
