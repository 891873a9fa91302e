"""What this server published, remembered beside the log key, so that storage rolled back is refused.

A checkpoint the server published may be in any client's hands. If the log's storage later comes back
older (log.db restored from a backup, a PostgreSQL database restored or failed over to a standby that
lagged), the start-up checks pass (an older checkpoint is still validly signed, its tiles still hash to its
root), and the server would go on appending from there: signing, with the same key, a second history for
sizes it already published. A transparency log must never do that.

So the serving process writes the latest published checkpoint's size and root to ``DIR/published`` (at
most a second after it is published, and when it stops), and refuses to start when storage is behind that
size, or holds another root at it. What the file cannot catch is a rollback within that last second; it
turns the common operator mistake into a clear refusal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import open_checkpoint
from .durable import fsync_dir
from .errors import PacspaceError, UntrustedState
from .note import Ed25519Verifier
from .storage.logtables import LogTables

log = logging.getLogger("pacspace.server")

HIGH_WATER_NAME = "published"
INTERVAL = 1.0


@dataclass(frozen=True)
class Published:
    size: int
    root: bytes


def read(data_dir: Path) -> Published | None:
    path = data_dir / HIGH_WATER_NAME
    if not path.exists():
        return None
    try:
        size, root = path.read_text().split()
        return Published(int(size), bytes.fromhex(root))
    except ValueError:
        raise UntrustedState(f"{path} is damaged; it should hold '<size> <root hex>'") from None


def write(data_dir: Path, published: Published) -> None:
    """Replace the file atomically and durably (write, fsync, rename, fsync the directory)."""
    path = data_dir / HIGH_WATER_NAME
    # A name of its own: the last write at shutdown may overlap the periodic one still in its thread.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{published.size} {published.root.hex()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(data_dir)


def check(data_dir: Path, store: LogTables, size: int, verifier: Ed25519Verifier) -> None:
    """Raise UntrustedState if storage (at ``size``) is behind, or beside, what this server published."""
    mark = read(data_dir)
    if mark is None:
        return
    where = data_dir / HIGH_WATER_NAME
    if size < mark.size:
        raise UntrustedState(
            f"the log's storage ({store}) is at size {size:,}, behind size {mark.size:,} that this server published "
            f"({where}): it was restored from an older backup, or failed over to a copy that lagged. Serving it "
            "would sign a second history with the same key; restore storage to at least that size"
        )
    try:
        root = open_checkpoint(store.checkpoint_at(mark.size), verifier).root_hash
    except PacspaceError as exc:
        raise UntrustedState(f"the checkpoint of size {mark.size:,} this server published is not in storage: {exc}") from None
    if root != mark.root:
        raise UntrustedState(f"storage holds another root at size {mark.size:,} than the one this server published "
                             f"({where}): this is not the log it served")


async def remember(data_dir: Path, published: Callable[[], Published], interval: float = INTERVAL) -> None:
    """Until cancelled: write ``published()`` whenever it grew, at most every ``interval`` seconds, and once more
    when cancelled (a clean stop)."""
    last = read(data_dir)
    try:
        while True:
            last = await asyncio.to_thread(_write_if_grown, data_dir, published(), last)
            await asyncio.sleep(interval)
    finally:
        _write_if_grown(data_dir, published(), last)


def _write_if_grown(data_dir: Path, now: Published, last: Published | None) -> Published | None:
    """Write ``now`` if it is beyond ``last``; the newest written. A failed write (a full disk) is logged and
    retried on the next round: it weakens the rollback check, and must not stop serving."""
    if last is None or now.size > last.size:
        try:
            on_disk = read(data_dir)  # another process of this directory (a standby beside) may have written more
            if on_disk is not None and on_disk.size >= now.size:
                return on_disk
            write(data_dir, now)
        except (OSError, UntrustedState) as exc:
            log.error("could not record the published checkpoint in %s: %s", data_dir / HIGH_WATER_NAME, exc)
            return last
        return now
    return last
