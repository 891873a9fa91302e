"""The log budget: a flood of records costs at most the budget, and one traceback per kind."""

from __future__ import annotations

import logging

from pacspace.server.logbudget import BURST_SECONDS, LogBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("pacspace.server", logging.ERROR, __file__, 1, msg, None, info)


def failure() -> BaseException:
    try:
        raise OSError(24, "Too many open files")
    except OSError as exc:
        return exc


def test_a_flood_is_cut_to_the_budget_and_the_drop_is_reported():
    clock = Clock()
    budget = LogBudget(1000, clock)
    kept = sum(budget.filter(record("x" * 120)) for _ in range(10_000))
    assert kept == 1000 * BURST_SECONDS // 200  # 120 characters and the 80 a line costs beyond its message
    clock.now = 1.0
    passed = record("after")
    assert budget.filter(passed)
    assert "log records dropped" in passed.getMessage()
    assert sum(budget.filter(record("x" * 120)) for _ in range(100)) <= 1000 // 200


def test_one_traceback_per_kind_a_minute():
    clock = Clock()
    budget = LogBudget(1 << 20, clock)
    first, second = record("accept failed", failure()), record("accept failed", failure())
    assert budget.filter(first) and budget.filter(second)
    assert first.exc_info is not None and "Too many open files" in (first.exc_text or "")
    assert second.exc_info is None and "Too many open files" in second.getMessage()
    clock.now = 61.0
    third = record("accept failed", failure())
    assert budget.filter(third) and third.exc_info is not None


def test_a_record_passing_several_handlers_is_charged_once():
    budget = LogBudget(256, Clock())
    r = record("x" * 100)
    assert all(budget.filter(r) for _ in range(100))
