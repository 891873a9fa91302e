"""The private channel between ``pacspace serve --workers N``'s HTTP workers and the process that sequences.

The parent process owns the sequencer and serves these routes only on a Unix
socket in a directory only its user can enter (supervisor.py); they are never
added to an application listening on TCP.

A sequence call carries records' entries, each with the records.db row it
belongs to: ``len(4, big-endian) header | header | entries``, where the header
is JSON ``{"rows": [[relationship id, seq], ...], "sizes": [entry length, ...]}``
and the entries follow concatenated in the same order. (JSON and one join: a
batch of thousands costs a few C calls, not several Python steps per record.)
The parent runs steps 2 to 4 of the append protocol on them
(appending.Sequencing, as for its own requests): it admits them (a
relationship whose tag repeats is refused whole), sequences the rest as one
batch, settles their rows (their log index into records.db) and only then
answers, in JSON: a row a worker reads after its answer is settled, whichever
worker wrote it. An error keeps its ``error`` code across the channel, so a
worker raises the same typed exception the sequencer raised.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..appending import SETTLE_WAIT, Row, leaves_below
from ..errors import AdmissionFailed, EntryTooLarge, MalformedInput, PacspaceError, PoolFull, SequencerStopped
from ..tiles import MAX_ENTRY_SIZE
from .context import SERVICE
from .witnessing import WitnessQuorumFailed

SEQUENCE_PATH = "/internal/v1/sequence"
_HEADER_LENGTH = struct.Struct(">I")
# A sequence call waits for its rows' settle at most SETTLE_WAIT, as readers do (Appender.settled).
FIND_LEAVES_PATH = "/internal/v1/find-leaves"
SETTLED_PATH = "/internal/v1/settled"




def encode_records(entries: list[bytes], rows: list[Row]) -> bytes:
    if len(entries) != len(rows):
        raise MalformedInput("one row per entry")
    sizes = [len(entry) for entry in entries]
    if max(sizes, default=0) > MAX_ENTRY_SIZE:
        raise EntryTooLarge(f"entry of {max(sizes)} bytes exceeds {MAX_ENTRY_SIZE}")
    header = json.dumps({"rows": rows, "sizes": sizes}, separators=(",", ":")).encode()
    return _HEADER_LENGTH.pack(len(header)) + header + b"".join(entries)


def decode_records(data: bytes) -> tuple[list[bytes], list[Row]]:
    try:
        (length,) = _HEADER_LENGTH.unpack_from(data)
        header = json.loads(data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
        rows, sizes = header["rows"], header["sizes"]
        well_formed = (
            isinstance(rows, list)
            and isinstance(sizes, list)
            and len(rows) == len(sizes)
            and all(type(n) is int and 0 <= n <= MAX_ENTRY_SIZE for n in sizes)
            and all(type(r) is list and len(r) == 2 and type(r[0]) is str and type(r[1]) is int and 0 <= r[1] < 1 << 63 for r in rows)
        )
    except (struct.error, ValueError, TypeError, KeyError, RecursionError):
        well_formed = False
    if not well_formed:
        raise MalformedInput("malformed sequence call")
    at = _HEADER_LENGTH.size + length
    if at + sum(sizes) != len(data):
        raise MalformedInput("truncated or malformed record")
    entries = []
    for size in sizes:
        entries.append(data[at : at + size])
        at += size
    return entries, [(rid, seq) for rid, seq in rows]


@dataclass(frozen=True)
class SequencedRange:
    """What the sequencer answers one call: the relationships refused (a tag repeats), and the
    other entries' consecutive indexes from ``first_index``, in checkpoint ``note`` (empty if none)."""

    first_index: int
    count: int
    note: bytes
    refused: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "first_index": self.first_index,
            "count": self.count,
            "checkpoint": self.note.decode(),
            "refused": sorted(self.refused),
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SequencedRange:
        refused = body.get("refused", [])
        if not isinstance(refused, list) or not all(isinstance(r, str) for r in refused):
            raise ValueError("refused is a list of relationship ids")
        return cls(int(body["first_index"]), int(body["count"]), str(body["checkpoint"]).encode(), frozenset(refused))


class RemoteFailure(PacspaceError):
    """The sequencing process answered with an error this worker has no type for."""

    code = "sequencer_unavailable"
    http_status = 503


_ERRORS: dict[str, type[PacspaceError]] = {
    cls.code: cls
    for cls in (PoolFull, SequencerStopped, WitnessQuorumFailed, MalformedInput, EntryTooLarge, AdmissionFailed)
}


def error_from_json(body: dict[str, Any]) -> PacspaceError:
    """The typed exception an error answer stands for."""
    cls = _ERRORS.get(str(body.get("error")), RemoteFailure)
    message = str(body.get("message", "the sequencing process failed"))
    if cls is PoolFull:
        return PoolFull(message, retry_after=int(body.get("retry_after", 1)))
    return cls(message)


def add_internal_routes(app: web.Application) -> None:
    app.router.add_post(SEQUENCE_PATH, post_sequence)
    app.router.add_post(FIND_LEAVES_PATH, post_find_leaves)
    app.router.add_post(SETTLED_PATH, post_settled)


async def post_sequence(request: web.Request) -> web.Response:
    """Sequence the body's entries as one batch and settle their rows; answers once both are durable."""
    entries, rows = decode_records(await request.read())
    if not entries:
        raise MalformedInput("no entries to sequence")
    service = request.app[SERVICE]
    try:
        commit = await service.link.commit(entries, rows)
    except PoolFull as exc:
        return web.json_response({"error": exc.code, "message": str(exc), "retry_after": exc.retry_after}, status=503)
    except PacspaceError as exc:
        return web.json_response({"error": exc.code, "message": exc.public_message or str(exc)}, status=exc.http_status)
    placed = [index for index in commit.indexes if index is not None]
    refused = frozenset(rid for (rid, _), i in zip(rows, commit.indexes) if i is None) if len(placed) < len(rows) else frozenset()
    if not placed or commit.checkpoint is None:
        return web.json_response(SequencedRange(0, 0, b"", refused).to_json())
    if commit.settling is not None:
        # Committed: the rows' indexes are being written. Waits (bounded) like a single-process server's
        # readers do; a write records.db will not take is retried behind us, and start-up settles from the log.
        await asyncio.wait([commit.settling], timeout=SETTLE_WAIT)
    return web.json_response(SequencedRange(placed[0], len(placed), commit.checkpoint.format(), refused).to_json())


async def post_find_leaves(request: web.Request) -> web.Response:
    """The log index of each leaf hash (null if absent) below the published size."""
    body = await request.json()
    service = request.app[SERVICE]
    size = service.sequencer.latest.size
    hashes = [base64.b64decode(h) for h in body["hashes"]]
    # Off the event loop: the sequencer's own task runs on it.
    found = await asyncio.to_thread(leaves_below, service.store, hashes, size)
    return web.json_response({"size": size, "indexes": found})


async def post_settled(request: web.Request) -> web.Response:
    """Answers once every settle queued so far is written (or ``timeout`` passed): a worker's readers
    wait here, as a single process's readers wait for its own settles."""
    body = await request.json()
    await request.app[SERVICE].appender.settled(min(float(body.get("timeout", SETTLE_WAIT)), SETTLE_WAIT))
    return web.json_response({})
