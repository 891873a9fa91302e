"""Typed application keys: what handlers reach through ``request.app``."""

from __future__ import annotations

from collections.abc import Callable
import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config import ServerConfig
from ..sequencer import Sequencer
from ..storage.records import RecordStore
from ..storage.sqlite import SqliteLog
from .writer import GroupWriter

log = logging.getLogger("pacspace.server")


@dataclass
class LogService:
    """The log store (reads), the sequencer (writes, the published checkpoint), and the records tables."""

    store: SqliteLog
    sequencer: Sequencer
    vkey: str
    timestamp_vkey: str
    records: RecordStore
    writer: GroupWriter
    # Settle writes (a row's log index) queued after their records were acknowledged; see settle_later.
    settling: set[asyncio.Task[Any]] = field(default_factory=set)

    def settle_later(self, ops: list[Any]) -> None:
        """Queue settle ops without waiting for their fsync.

        The records they settle are already durable twice over: the row and blob
        in records.db (before sequencing) and the entry in the log (the
        sequencer's commit). If the process dies before this write, start-up
        settles the rows from the log (RecordStore.reconcile), so an
        acknowledgement never waits on it. The writer runs ops in queue order,
        so any later write to the same relationship comes after it.
        """
        task = asyncio.ensure_future(self.writer.write(ops))
        self.settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self.settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling records failed (start-up will settle them from the log): %s", task.exception())

    async def settled(self) -> None:
        """Wait for every settle queued so far: readers of indexes see each acknowledged record."""
        if self.settling:
            await asyncio.gather(*list(self.settling), return_exceptions=True)


SERVICE = web.AppKey("service", LogService)
CONFIG = web.AppKey("config", ServerConfig)
# Exceptions that stopped the sequencer; non-empty means the server is exiting.
FATAL = web.AppKey("fatal", list)
ON_FATAL = web.AppKey("on_fatal", Callable[[BaseException], None])
