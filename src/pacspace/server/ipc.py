"""The private channel between ``pacspace serve --workers N``'s HTTP workers and the process that sequences.

The parent process owns the sequencer and serves these routes only on a Unix
socket in a directory only its user can enter (workers.py); they are never
added to an application listening on TCP. Entries travel as raw bytes, each
prefixed by its length (2 bytes, big-endian: no entry exceeds 0xFFFF); answers
are JSON. An error keeps its ``error`` code across the channel, so a worker
raises the same typed exception the sequencer raised.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import EntryTooLarge, MalformedInput, PacspaceError, PoolFull, SequencerStopped
from ..tiles import MAX_ENTRY_SIZE
from .context import SERVICE
from .witnessing import WitnessQuorumFailed

SEQUENCE_PATH = "/internal/v1/sequence"
FIND_LEAVES_PATH = "/internal/v1/find-leaves"


def encode_entries(entries: list[bytes]) -> bytes:
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_SIZE:
            raise EntryTooLarge(f"entry of {len(entry)} bytes exceeds {MAX_ENTRY_SIZE}")
        out += struct.pack(">H", len(entry))
        out += entry
    return bytes(out)


def decode_entries(data: bytes) -> list[bytes]:
    entries, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            raise MalformedInput("truncated entry length")
        (length,) = struct.unpack_from(">H", data, at)
        at += 2
        if at + length > len(data):
            raise MalformedInput("truncated entry")
        entries.append(data[at : at + length])
        at += length
    return entries


@dataclass(frozen=True)
class SequencedRange:
    """What the sequencer answers one call: consecutive indexes from ``first_index``, in checkpoint ``note``."""

    first_index: int
    count: int
    note: bytes

    def to_json(self) -> dict[str, Any]:
        return {"first_index": self.first_index, "count": self.count, "checkpoint": self.note.decode()}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SequencedRange:
        return cls(int(body["first_index"]), int(body["count"]), str(body["checkpoint"]).encode())


class RemoteFailure(PacspaceError):
    """The sequencing process answered with an error this worker has no type for."""

    code = "sequencer_unavailable"
    http_status = 503


_ERRORS: dict[str, type[PacspaceError]] = {
    cls.code: cls for cls in (PoolFull, SequencerStopped, WitnessQuorumFailed, MalformedInput, EntryTooLarge)
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


async def post_sequence(request: web.Request) -> web.Response:
    """Sequence the body's entries as one batch; answers once their checkpoint is durable (and published)."""
    entries = decode_entries(await request.read())
    sequencer = request.app[SERVICE].sequencer
    try:
        sequenced = await sequencer.submit_many(entries)
    except PoolFull as exc:
        return web.json_response({"error": exc.code, "message": str(exc), "retry_after": exc.retry_after}, status=503)
    except PacspaceError as exc:
        return web.json_response({"error": exc.code, "message": str(exc)}, status=exc.http_status)
    if not sequenced:
        raise MalformedInput("no entries to sequence")
    first = sequenced[0]
    return web.json_response(SequencedRange(first.index, len(sequenced), first.checkpoint.format()).to_json())


async def post_find_leaves(request: web.Request) -> web.Response:
    """The log index of each leaf hash (null if absent) below the published size."""
    body = await request.json()
    service = request.app[SERVICE]
    size = service.sequencer.latest.size
    found = [service.store.find_leaf(base64.b64decode(h), size) for h in body["hashes"]]
    return web.json_response({"size": size, "indexes": found})
