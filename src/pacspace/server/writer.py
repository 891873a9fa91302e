"""Group commit: concurrent requests' writes share one durable transaction (records.db, the recorder's spool)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import PacspaceError, WriteFailed

# A store's op: a record op (storage/record_ops.py), or a function of the recorder spool's connection.
Op = Any
Waiting = list[tuple[Sequence[Op], "asyncio.Future[list[Any]]"]]

log = logging.getLogger("pacspace.server")


class TransactionalStore(Protocol):
    def write(self, ops: Sequence[Op]) -> list[Any]:
        """Run ops in one durable transaction (durable once it returns); each result is a value or its exception."""
        ...


class GroupWriter:
    """One task owns the store's writes. Ops queued while a transaction runs go in the next one.

    A transaction runs in a thread, so the event loop keeps serving meanwhile (and
    answers the requests whose transaction ended, while the next one waits for the
    lock or the disk), or on the loop itself when ``inline`` says so of its ops. An
    HTTP worker of ``serve --workers`` runs large batches inline: its records.db
    transactions hold a lock every process waits on, and in a thread they ran at the
    pace of the GIL, which the loop held while it parsed request bodies; the other
    workers serve while this one writes (both measured in docs/performance.md).
    """

    def __init__(self, store: TransactionalStore, *, inline: Callable[[Sequence[Op]], bool] | None = None) -> None:
        self._store = store
        self._inline = inline
        self._queue: list[tuple[Sequence[Op], asyncio.Future[list[Any]]]] = []
        self._wake = asyncio.Event()

    async def write(self, ops: Sequence[Op]) -> list[Any]:
        """Run ops (all in the same transaction); each result is a value or the exception it raised.

        A caller cancelled while it waits does not stop its ops: they are queued, and run. If the
        shared transaction fails as a whole, each caller's ops are retried in one of their own.
        """
        return await self.enqueue(ops)

    def enqueue(self, ops: Sequence[Op]) -> asyncio.Future[list[Any]]:
        """Queue ops now (ahead of anything queued later); the future gives :meth:`write`'s answer."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((ops, future))
        self._wake.set()
        return future

    async def run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            queue, self._queue = self._queue, []
            try:
                results = await self._write([op for ops, _ in queue for op in ops])
            except Exception as exc:
                await self._isolate(queue, exc)
                continue
            at = 0
            for ops, future in queue:
                if not future.done():
                    future.set_result(results[at : at + len(ops)])
                at += len(ops)

    async def _write(self, ops: Sequence[Op]) -> list[Any]:
        if self._inline is not None and self._inline(ops):
            return self._store.write(ops)
        running = asyncio.ensure_future(asyncio.to_thread(self._store.write, ops))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            # A cancelled writer (the server stopping) still waits for the transaction its thread runs, so
            # the store is never closed under it.
            await asyncio.wait([running])
            raise

    async def _isolate(self, queue: Waiting, exc: Exception) -> None:
        """A shared transaction failed: log it once, then run each caller's ops in a transaction of their own,
        so that one caller's failure (a bad op, a fault) costs only that caller its write."""
        if not isinstance(exc, PacspaceError):
            log.error("a group write of %d requests failed; retrying each alone", len(queue), exc_info=exc)
        for ops, future in queue:
            try:
                if len(queue) == 1:
                    raise exc
                results = await self._write(ops)
            except Exception as failure:
                if failure is not exc:
                    log.warning("a write failed again alone: %r", failure)
                if not future.done():
                    future.set_exception(_answerable(failure))
                continue
            if not future.done():
                future.set_result(results)


def _answerable(exc: Exception) -> PacspaceError:
    """What a caller gets for a failed write: the store's own error as raised; anything else (logged
    already) as WriteFailed, which the client sees as a plain internal error."""
    if isinstance(exc, PacspaceError):
        return exc
    failed = WriteFailed()
    failed.__cause__ = exc
    return failed
