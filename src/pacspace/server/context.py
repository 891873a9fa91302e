"""Typed application keys: what handlers reach through ``request.app``."""

from __future__ import annotations

from collections.abc import Callable
import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config import ServerConfig
from ..errors import AdmissionFailed
from ..merkle import RangeHashes
from ..sequencer import Sequenced, Sequencer
from ..storage.records import RecordStore
from ..storage.sqlite import SqliteLog
from .tags import TagGuard
from .writer import GroupWriter

if TYPE_CHECKING:
    from .remote import RemoteSequencer

log = logging.getLogger("pacspace.server")


@dataclass
class LogService:
    """The log store (reads), the sequencer (writes, the published checkpoint), and the records tables.

    In an HTTP worker (``serve --workers N``) ``sequencer`` is the parent's, reached
    through ``RemoteSequencer``, and ``store`` is log.db opened read-only.
    """

    store: SqliteLog
    sequencer: Sequencer | RemoteSequencer
    vkey: str
    timestamp_vkey: str
    records: RecordStore
    writer: GroupWriter
    # Settle writes (a row's log index) queued after their records were acknowledged; see settle_later.
    settling: set[asyncio.Task[Any]] = field(default_factory=set)
    # Receipts of one batch share most of their inclusion paths.
    proof_ranges: RangeHashes = field(default_factory=RangeHashes)
    # In the process that sequences: keeps each tag to one entry of the log.
    tags: TagGuard | None = None

    async def sequence_records(self, entries: list[bytes], rows: list[tuple[str, int]]) -> tuple[list[Any], bool]:
        """Sequence records' entries; returns their answers and whether their rows are settled already.

        An answer is None for each record of a relationship whose records were
        refused because a tag repeats (TagGuard); nothing of it was appended.
        """
        if isinstance(self.sequencer, Sequencer):
            return await self.sequence_unique(entries, rows), False
        return await self.sequencer.submit_records(entries, rows), True

    async def sequence_unique(self, entries: list[bytes], rows: list[tuple[str, int]]) -> list[Sequenced | None]:
        """In the process that sequences: sequence the entries TagGuard admits; None for the others."""
        if not isinstance(self.sequencer, Sequencer) or self.tags is None:
            raise TypeError("only the process that sequences admits entries")
        guard = self.tags
        claim = guard.claim(entries, rows)
        try:
            # Off the event loop: on a cold cache the lookup reads the disk. The claim keeps the tags ours meanwhile.
            found = await asyncio.to_thread(guard.in_log, claim.claimed) if claim.claimed else []
        except Exception as exc:
            guard.abandon(claim)
            # Typed as "nothing appended", so the callers drop their rows rather than wait for the log.
            log.error("could not check records' tags against the log: %s", exc)
            raise AdmissionFailed("could not check the records' tags against the log; nothing was appended") from None
        except BaseException:
            guard.abandon(claim)
            raise
        admitted = guard.decide(claim, found)
        answers: list[Sequenced | None] = [None] * len(entries)
        if not admitted:
            return answers
        claimed = [entries[i] for i in admitted]
        try:
            task = asyncio.ensure_future(self.sequencer.submit_many(claimed))
        except BaseException:
            guard.release(claimed)
            raise

        def release(done: asyncio.Future[Any]) -> None:
            # Held until the sequencer is done with the entries, even if our caller stopped
            # waiting: a committed entry's tag is in the tag index by then.
            guard.release(claimed)
            if not done.cancelled():
                done.exception()  # retrieved here too, in case nobody awaits it any more

        task.add_done_callback(release)
        for i, sequenced in zip(admitted, await asyncio.shield(task)):
            answers[i] = sequenced
        return answers

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        """The first index below ``size`` of each leaf hash, or None."""
        if isinstance(self.sequencer, Sequencer):
            return [self.store.find_leaf(h, size) for h in hashes]
        found = await self.sequencer.find_leaves(hashes)
        return [i if i is not None and i < size else None for i in found]

    async def metrics_text(self) -> str:
        if isinstance(self.sequencer, Sequencer):
            return self.sequencer.metrics.render()
        return await self.sequencer.metrics_text()

    def settle_later(self, ops: list[Any]) -> asyncio.Task[Any]:
        """Queue settle ops now, without waiting for their fsync.

        The records they settle are already durable twice over: the row and blob
        in records.db (before sequencing) and the entry in the log (the
        sequencer's commit). If the process dies before this write, start-up
        settles the rows from the log (RecordStore.reconcile), so an
        acknowledgement never waits on it. The ops are queued before this
        returns and the writer runs its queue in order, so any later write to
        the same relationship comes after them. A failed write (a locked or full
        disk) is retried until it succeeds: until then readers wait (settled).
        """
        task = asyncio.ensure_future(self._settle(ops, self.writer.enqueue(ops)))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)
        return task

    async def _settle(self, ops: list[Any], first: asyncio.Future[list[Any]]) -> None:
        attempt, delay = first, 0.1
        while True:
            try:
                for result in await attempt:
                    if isinstance(result, BaseException):
                        # One op refused (a constraint): retrying cannot help; start-up settles from the log.
                        log.error("a settle write was refused: %s", result)
                return
            except Exception as exc:  # the whole transaction failed; the rows stay unsettled meanwhile
                log.error("settling records failed, retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            attempt = self.writer.enqueue(ops)

    async def settled(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout``) for every settle queued so far: readers of indexes see each acknowledged record."""
        if self.settling:
            await asyncio.wait(list(self.settling), timeout=timeout)
        if not isinstance(self.sequencer, Sequencer):
            # In a worker: the parent settles what it sequences; wait for its queue too.
            await self.sequencer.settled(timeout)


SERVICE = web.AppKey("service", LogService)
CONFIG = web.AppKey("config", ServerConfig)
# Exceptions that stopped the sequencer; non-empty means the server is exiting.
FATAL = web.AppKey("fatal", list)
ON_FATAL = web.AppKey("on_fatal", Callable[[BaseException], None])
