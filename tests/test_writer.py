"""Group commit: queued ops share a transaction, and a caller that stops waiting does not stop its ops."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pacspace.server.writer import GroupWriter


class Store:
    """A store whose transactions can be held open, to queue ops behind one."""

    def __init__(self) -> None:
        self.transactions: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def write(self, ops):  # type: ignore[no-untyped-def]
        self.gate.wait(5)
        results = []
        for op in ops:
            try:
                results.append(op(None))
            except Exception as exc:  # noqa: BLE001 - the writer's contract: the exception is the result
                results.append(exc)
        self.transactions.append([r for r in results if isinstance(r, str)])
        return results


async def test_ops_queued_during_a_transaction_share_the_next_and_a_cancelled_caller_still_runs():
    store = Store()
    writer = GroupWriter(store)
    runner = asyncio.create_task(writer.run())
    try:
        store.gate.clear()
        first = asyncio.create_task(writer.write([lambda _: "a"]))
        await asyncio.sleep(0.05)  # the first transaction starts (and, in a thread, waits at the gate)
        second = asyncio.create_task(writer.write([lambda _: "b", lambda _: "c"]))
        gone = asyncio.create_task(writer.write([lambda _: "d"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        store.gate.set()
        assert await first == ["a"]
        assert await second == ["b", "c"]
        with pytest.raises(asyncio.CancelledError):
            await gone
        for _ in range(100):
            if any("d" in t for t in store.transactions):
                break
            await asyncio.sleep(0.01)
        assert store.transactions[-1] == ["b", "c", "d"]  # the cancelled caller's op ran, in the shared transaction
        failing = await writer.write([lambda _: 1 // 0, lambda _: "e"])
        assert isinstance(failing[0], ZeroDivisionError) and failing[1] == "e"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_inline_ops_queued_together_share_a_transaction_even_if_a_caller_stopped_waiting():
    store = Store()
    writer = GroupWriter(store, inline=lambda ops: True)
    first = asyncio.create_task(writer.write([lambda _: "a"]))
    gone = asyncio.create_task(writer.write([lambda _: "b"]))
    await asyncio.sleep(0)  # both queued; the writer has not run yet
    gone.cancel()
    runner = asyncio.create_task(writer.run())
    try:
        assert await first == ["a"]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert store.transactions == [["a", "b"]]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


class PoisonedStore(Store):
    """A store whose whole transaction fails if it holds a poisoned op: the failure is not any one op's result."""

    def write(self, ops):  # type: ignore[no-untyped-def]
        if any(getattr(op, "poison", False) for op in ops):
            raise IndexError("list index out of range")
        return super().write(ops)


def poisoned(_):  # type: ignore[no-untyped-def]
    return "never"


poisoned.poison = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("inline", [None, lambda ops: True])
async def test_a_transaction_that_fails_is_logged_once_and_each_caller_retried_alone(inline, caplog):
    from pacspace.errors import PacspaceError

    store = PoisonedStore()
    writer = GroupWriter(store, inline=inline)
    calls = [asyncio.ensure_future(writer.write(ops)) for ops in ([lambda _: "a"], [poisoned, lambda _: "b"], [lambda _: "c"])]
    await asyncio.sleep(0)  # all three queued before the writer runs: one shared transaction
    runner = asyncio.create_task(writer.run())
    try:
        with caplog.at_level("ERROR", logger="pacspace.server"):
            done = await asyncio.gather(*calls, return_exceptions=True)
        assert done[0] == ["a"] and done[2] == ["c"]
        assert isinstance(done[1], PacspaceError) and done[1].http_status == 500
        assert isinstance(done[1].__cause__, IndexError)
        assert [t for t in store.transactions if t] == [["a"], ["c"]]
        assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
        assert "IndexError" in caplog.text
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


class ThreadNoting(Store):
    def write(self, ops):  # type: ignore[no-untyped-def]
        self.threads = getattr(self, "threads", []) + [threading.get_ident()]
        return super().write(ops)


async def test_inline_says_of_each_transaction_whether_it_runs_on_the_loop():
    """A worker's small transactions (single appends) run in a thread, so its loop answers and parses while one
    waits for records.db's lock and the disk; a large batch's runs on the loop (worker.INLINE_RECORDS)."""
    from pacspace.server.worker import INLINE_RECORDS, _large
    from pacspace.storage.record_ops import Drop, ReserveMany

    def records(n: int) -> ReserveMany:
        return ReserveMany([("acme:r", [(seq, bytes(32), bytes(32), b"") for seq in range(1, n + 1)])])

    assert not _large([records(1)] * (INLINE_RECORDS - 1)) and _large([records(INLINE_RECORDS)])
    assert _large([Drop("acme:r", list(range(INLINE_RECORDS)))])  # forgetting a refused batch is as long
    store = ThreadNoting()
    writer = GroupWriter(store, inline=lambda ops: len(ops) > 1)
    runner = asyncio.create_task(writer.run())
    try:
        assert await writer.write([lambda _: "small"]) == ["small"]
        assert await writer.write([lambda _: "x", lambda _: "y"]) == ["x", "y"]
        loop_thread = threading.get_ident()
        assert store.threads[0] != loop_thread and store.threads[1] == loop_thread
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


class SlowStore(Store):
    def __init__(self) -> None:
        super().__init__()
        self.finished = threading.Event()

    def write(self, ops):  # type: ignore[no-untyped-def]
        results = super().write(ops)
        self.finished.set()
        return results


async def test_a_cancelled_writer_waits_for_the_transaction_its_thread_runs():
    """At shutdown the writer is cancelled, then the store closed: never while a transaction is in its thread."""
    store = SlowStore()
    store.gate.clear()  # the transaction blocks in its thread until the gate opens
    writer = GroupWriter(store)
    runner = asyncio.create_task(writer.run())
    call = asyncio.ensure_future(writer.write([lambda _: "a"]))
    for _ in range(100):  # until the writer has taken the op into its thread
        await asyncio.sleep(0.01)
        if not writer._queue:
            break
    runner.cancel()
    await asyncio.sleep(0.05)
    assert not runner.done()  # still waiting for its thread
    store.gate.set()
    await asyncio.gather(runner, return_exceptions=True)
    assert store.finished.is_set() and store.transactions == [["a"]]
    call.cancel()
