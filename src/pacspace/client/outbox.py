"""The provider's outbox: every sealed record it sends, kept until it holds the receipt.

A write whose answer is lost (a timeout, a 503 while the witnesses are away, a
crash of the client or of the server) leaves the provider unsure whether its
record is in the log. Re-sealing the same seq would make another ciphertext,
which the server must refuse (``record_conflict``): the chain would be stuck.
So the client writes each sealed record here, durably, before sending it, and
removes it only once a receipt for exactly that entry verified. The next
command for the relationship sends what is left first: the server answers a
resent record with its receipt, and nothing stays in doubt.

Layout, under ``PACSPACE_HOME``::

    outbox/<relationship>/<seq>.json          waiting for its receipt (mode 0600)
    outbox/<relationship>/<seq>.json.dropped  refused for good (another record holds the seq), kept to read

A relationship's creation (its genesis, wraps and secret) waits here too, as seq 0.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..durable import fsync_dir, write_new_file
from ..errors import PacspaceError

# Answers that say the record is not in the log and never will be at this seq.
REFUSED_FOR_GOOD = {"record_conflict", "duplicate_tag", "relationship_declined", "relationship_exists", "forbidden",
                    "not_found", "malformed", "too_large", "entry_too_large"}


class OutboxPending(PacspaceError):
    """A record sent earlier is still not acknowledged; it stays in the outbox and is sent again next time."""

    code = "outbox_pending"


@dataclass(frozen=True)
class Waiting:
    """One sealed record waiting for its receipt; ``create`` holds a relationship's creation request."""

    relationship: str
    seq: int
    tag: bytes
    blob: bytes
    create: dict[str, Any] | None = None
    secret: bytes | None = None  # with ``create``: the relationship secret drawn, kept by the home once created
    head: str | None = None  # with ``create``: the genesis body's hash, the chain's head once created

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"relationship": self.relationship, "seq": self.seq,
                               "tag": base64.b64encode(self.tag).decode(), "ciphertext": base64.b64encode(self.blob).decode()}
        if self.create is not None:
            out["create"] = self.create
        if self.secret is not None:
            out["secret"] = base64.b64encode(self.secret).decode()
        if self.head is not None:
            out["head"] = self.head
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Waiting:
        secret = obj.get("secret")
        return cls(obj["relationship"], int(obj["seq"]), base64.b64decode(obj["tag"]), base64.b64decode(obj["ciphertext"]),
                   obj.get("create"), None if secret is None else base64.b64decode(secret), obj.get("head"))


class Outbox:
    """Files under ``<home>/outbox``: written whole and fsynced before a record is sent (durable.write_new_file)."""

    def __init__(self, home: Path) -> None:
        self.path = home / "outbox"

    def _dir(self, rid: str) -> Path:
        return self.path / rid

    def put(self, item: Waiting) -> None:
        folder = self._dir(item.relationship)
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
            fsync_dir(folder.parent)
        path = folder / f"{item.seq}.json"
        if path.exists():
            raise OutboxPending(f"seq {item.seq} of {item.relationship} is already waiting in {path}")
        write_new_file(path, json.dumps(item.to_json()).encode(), mode=0o600)

    def waiting(self, rid: str | None = None) -> list[Waiting]:
        """What waits, by relationship and seq."""
        if not self.path.exists():
            return []
        folders = [self._dir(rid)] if rid is not None else sorted(p for p in self.path.iterdir() if p.is_dir())
        items = []
        for folder in folders:
            if folder.is_dir():
                for path in folder.glob("*.json"):
                    try:
                        items.append(Waiting.from_json(json.loads(path.read_text())))
                    except FileNotFoundError:
                        continue  # another command settled it meanwhile
        return sorted(items, key=lambda w: (w.relationship, w.seq))

    def done(self, item: Waiting) -> None:
        """The receipt is held: forget the record (another command may have done so already)."""
        path = self._dir(item.relationship) / f"{item.seq}.json"
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def drop(self, item: Waiting) -> Path:
        """Refused for good: keep the file aside, never send it again (if another command has not already)."""
        path = self._dir(item.relationship) / f"{item.seq}.json"
        aside = path.with_name(path.name + ".dropped")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return aside
        fsync_dir(path.parent)
        return aside
