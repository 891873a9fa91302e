"""The binary encoding of a batch of sealed records (``POST /v1/records``) and of its answer. Pure: no I/O.

Length-prefixed fields, integers big-endian, no base64, no JSON for a record (docs/api.md, "Binary batches").

A request, content type ``application/vnd.pacspace.records.v1``::

    8    "pacsrec" 0x01             magic and version
    u32  n                          records that follow, 1 to 10,000
    n records, each:
      u8   k                        length of the relationship id, 1 to 128
      k    relationship id          ASCII, [A-Za-z0-9][A-Za-z0-9._:-]*
      u64  seq                      below 2^62
      32   tag
      u32  m                        ciphertext length, 61 to 65,597
      m    ciphertext               the sealed blob

An answer, content type ``application/vnd.pacspace.results.v1`` (when the request's Accept names it)::

    8    "pacsres" 0x01
    u32  accepted
    u32  rejected
    u32  c; c bytes                 the signed checkpoint covering the new records (c = 0: none)
    accepted + rejected results, in request order, each:
      u8 0, u64 index               committed at this log index
      u8 1, u32 e, e bytes          refused: the JSON object the JSON answer gives this record

The decoder checks every record's framing and limits as its bytes arrive and holds at most one unfinished
record beside the newest chunk; a body it refuses is refused whole.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import MalformedInput, PacspaceError
from .seal import BLOB_OVERHEAD, MAX_BUCKET

CONTENT_TYPE = "application/vnd.pacspace.records.v1"
RESULTS_TYPE = "application/vnd.pacspace.results.v1"
REQUEST_MAGIC = b"pacsrec\x01"
RESULTS_MAGIC = b"pacsres\x01"

MAX_RECORDS = 10_000
MAX_ID = 128
MAX_SEQ = (1 << 62) - 1
TAG_SIZE = 32
MIN_CIPHERTEXT = BLOB_OVERHEAD
MAX_CIPHERTEXT = MAX_BUCKET + BLOB_OVERHEAD

_HEAD = struct.Struct(">8sI")  # magic, record count
_FIXED = struct.Struct(">Q32sI")  # seq, tag, ciphertext length: what follows a record's id
_COUNTS = struct.Struct(">8sIII")  # magic, accepted, rejected, checkpoint length
_OK = struct.Struct(">BQ")
_LENGTH = struct.Struct(">I")
_ID_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ID_BYTES = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_STATUS_OK, _STATUS_ERROR = 0, 1


class CiphertextTooLarge(PacspaceError):
    """A record announces a ciphertext longer than any sealed blob (413, as in JSON)."""

    code = "too_large"
    http_status = 413


class BatchRecord(NamedTuple):
    """One record of a batch as sent: its relationship's id, seq, 32-byte tag and sealed blob."""

    relationship: str
    seq: int
    tag: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, Any]:
        """The record as an item of the JSON batch (base64 fields)."""
        return {"relationship": self.relationship, "seq": self.seq, "tag": base64.b64encode(self.tag).decode(),
                "ciphertext": base64.b64encode(self.ciphertext).decode()}


_record = tuple.__new__  # a NamedTuple without its Python-level __new__: a third of a record's decoding otherwise


def encode_records(records: Sequence[BatchRecord]) -> bytes:
    """A request body; MalformedInput for a record the format cannot carry (the server would refuse it)."""
    if not 1 <= len(records) <= MAX_RECORDS:
        raise MalformedInput(f"a batch has 1 to {MAX_RECORDS} records, not {len(records)}")
    parts = [_HEAD.pack(REQUEST_MAGIC, len(records))]
    for rid, seq, tag, blob in records:
        if not isinstance(rid, str) or not _ID_TEXT.fullmatch(rid):
            raise MalformedInput(f"{rid!r} is not a relationship id")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise MalformedInput(f"seq {seq!r} is not an integer from 0 to 2^62 - 1")
        if len(tag) != TAG_SIZE:
            raise MalformedInput(f"a tag is {TAG_SIZE} bytes, not {len(tag)}")
        if not MIN_CIPHERTEXT <= len(blob) <= MAX_CIPHERTEXT:
            raise MalformedInput(f"a ciphertext is {MIN_CIPHERTEXT} to {MAX_CIPHERTEXT} bytes, not {len(blob)}")
        raw = rid.encode("ascii")
        parts += (bytes((len(raw),)), raw, _FIXED.pack(seq, tag, len(blob)), blob)
    return b"".join(parts)


class RecordsDecoder:
    """Feed a request body's bytes as they arrive; each call returns the records completed so far, checked.

    Raises MalformedInput (or CiphertextTooLarge) as soon as the bytes cannot be a body of this format, without
    waiting for the rest: a wrong magic, a count of 0 or over MAX_RECORDS, an id of bad length or characters,
    a seq of 2^62 or more, a ciphertext length out of bounds, bytes after the last record, or (at ``end``) a
    body that stops short. Bytes are joined only once they can complete the next step (a record's id length,
    its fixed fields, the record), so a body that arrives a byte at a time costs a few joins per record.
    """

    def __init__(self) -> None:
        self.count: int | None = None  # records the header announced
        self.decoded = 0
        self.joins = 0  # times bytes were joined to go on: the work a trickling body costs
        self._tail = b""  # the unfinished record's bytes (or the header's)
        self._parts: list[bytes] = []  # chunks since, not joined yet
        self._have = 0  # bytes in _tail and _parts
        self._need = _HEAD.size  # bytes from the start of _tail the next step needs
        self._ids: dict[bytes, str] = {}  # ids checked already: a batch names each relationship many times

    def feed(self, data: bytes) -> list[BatchRecord]:
        if not data:
            return []
        if self.count is not None and self.decoded == self.count:
            raise MalformedInput(f"bytes after the last of the {self.count} records the body announced")
        self._parts.append(data)
        self._have += len(data)
        if self._have < self._need:
            return []
        parts, self._parts = self._parts, []
        if self._tail:
            parts.insert(0, self._tail)
        self.joins += 1
        return self._decode(parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts))

    @property
    def held(self) -> int:
        """Bytes of the body held between calls: those of the one unfinished record (or header), fewer than it has."""
        return self._have

    def end(self) -> list[BatchRecord]:
        """The body ended; raises if it stopped short of what its header announced."""
        if self.count is None:
            raise MalformedInput(f"the body is not {CONTENT_TYPE}: it is shorter than its {_HEAD.size}-byte header")
        if self.decoded < self.count:
            raise MalformedInput(f"the body ends inside record {self.decoded + 1} of the {self.count} it announced")
        return []

    def _decode(self, buf: bytes) -> list[BatchRecord]:
        pos, end = 0, len(buf)
        if self.count is None:
            magic, count = _HEAD.unpack_from(buf)
            if magic != REQUEST_MAGIC:
                raise MalformedInput(f"the body is not {CONTENT_TYPE}: it does not start with {REQUEST_MAGIC!r}")
            if not 1 <= count <= MAX_RECORDS:
                raise MalformedInput(f"records is a list of 1 to {MAX_RECORDS} records, not {count}")
            self.count, pos = count, _HEAD.size
        records: list[BatchRecord] = []
        append, ids, unpack = records.append, self._ids, _FIXED.unpack_from
        left = self.count - self.decoded
        need = 0
        while left:
            if pos == end:
                need = 1
                break
            k = buf[pos]
            if not 1 <= k <= MAX_ID:
                raise MalformedInput(f"record {self.count - left + 1}: a relationship id is 1 to {MAX_ID} bytes, "
                                     f"not {k}")
            fixed = pos + 1 + k
            stop = fixed + _FIXED.size
            if stop > end:
                need = stop - pos
                break
            raw = buf[pos + 1 : fixed]
            rid = ids.get(raw)
            if rid is None:
                if not _ID_BYTES.fullmatch(raw):
                    raise MalformedInput(f"record {self.count - left + 1}: {raw[:MAX_ID]!r} is not a relationship id "
                                         f"(1 to {MAX_ID} of A-Z a-z 0-9 . _ : -, a letter or digit first)")
                rid = ids[raw] = raw.decode("ascii")
            seq, tag, m = unpack(buf, fixed)
            if seq > MAX_SEQ:
                raise MalformedInput(f"record {self.count - left + 1}: seq {seq} is not below 2^62")
            if not MIN_CIPHERTEXT <= m <= MAX_CIPHERTEXT:
                if m > MAX_CIPHERTEXT:
                    raise CiphertextTooLarge(f"record {self.count - left + 1}: a ciphertext of {m} bytes exceeds "
                                             f"{MAX_CIPHERTEXT} bytes")
                raise MalformedInput(f"record {self.count - left + 1}: a ciphertext of {m} bytes is too short to be "
                                     "a sealed record")
            if stop + m > end:
                need = stop + m - pos
                break
            append(_record(BatchRecord, (rid, seq, tag, buf[stop : stop + m])))
            pos = stop + m
            left -= 1
        else:
            if pos != end:
                raise MalformedInput(f"bytes after the last of the {self.count} records the body announced")
        self.decoded = self.count - left
        self._tail = buf[pos:] if pos else buf
        self._have, self._need = end - pos, need
        return records


@dataclass(frozen=True)
class BatchResults:
    """A decoded answer: per record, in request order, its log index or its error object."""

    accepted: int
    rejected: int
    checkpoint: bytes | None
    results: list[int | dict[str, Any]]


def encode_results(checkpoint: bytes | None, results: Sequence[int | dict[str, Any]]) -> bytes:
    """An answer: ``results`` holds each record's log index (accepted) or its error object (refused)."""
    note = checkpoint or b""
    parts = [b""]
    ok = 0
    for result in results:
        if type(result) is int:
            parts.append(_OK.pack(_STATUS_OK, result))
            ok += 1
        else:
            text = json.dumps(result, separators=(",", ":")).encode()
            parts += (bytes((_STATUS_ERROR,)), _LENGTH.pack(len(text)), text)
    parts[0] = _COUNTS.pack(RESULTS_MAGIC, ok, len(results) - ok, len(note)) + note
    return b"".join(parts)


def decode_results(data: bytes) -> BatchResults:
    """An answer's bytes; MalformedInput if they are not one."""
    if len(data) < _COUNTS.size:
        raise MalformedInput(f"the answer is not {RESULTS_TYPE}: it is shorter than its header")
    magic, accepted, rejected, c = _COUNTS.unpack_from(data)
    if magic != RESULTS_MAGIC:
        raise MalformedInput(f"the answer is not {RESULTS_TYPE}: it does not start with {RESULTS_MAGIC!r}")
    pos = _COUNTS.size + c
    if pos > len(data):
        raise MalformedInput("the answer ends inside its checkpoint")
    checkpoint = data[_COUNTS.size : pos] or None
    results: list[int | dict[str, Any]] = []
    ok = 0
    try:
        for _ in range(accepted + rejected):
            if data[pos] == _STATUS_OK:
                results.append(_OK.unpack_from(data, pos)[1])
                pos += _OK.size
                ok += 1
            elif data[pos] == _STATUS_ERROR:
                (e,) = _LENGTH.unpack_from(data, pos + 1)
                if pos + 5 + e > len(data):
                    raise ValueError
                error = json.loads(data[pos + 5 : pos + 5 + e])
                if not isinstance(error, dict):
                    raise ValueError
                results.append(error)
                pos += 5 + e
            else:
                raise ValueError
    except (IndexError, struct.error, ValueError, RecursionError):
        raise MalformedInput(f"the answer's result {len(results) + 1} is malformed") from None
    if pos != len(data) or ok != accepted:
        raise MalformedInput("the answer's counts do not match its results")
    return BatchResults(accepted, rejected, checkpoint, results)
