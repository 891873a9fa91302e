"""The loop that brings an object store up to the database, a round at a time, in a thread of its own.

Two mirrors run one: the log's tiles and bundles (storage/objects.py) and the records' sealed blobs
(storage/blobs.py). Each round only copies committed, immutable bytes and is safe to repeat, so a failure (the
store or the database down) loses nothing: it is logged, and the next round tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod

from ..errors import PacspaceError
from .s3 import S3Bucket

log = logging.getLogger("pacspace.storage")

# A round at most this often once the store has caught up; back to back while it is behind.
ROUND_INTERVAL = 1.0
FAILURE_LOG_INTERVAL = 60.0
STOP_WAIT = 2.0  # seconds a shutdown waits for the round in flight
MAX_BACKOFF = 30.0


class MirrorThread(ABC):
    """Runs ``run_round`` after notify(), at start, and while idle until it has caught up. Subclasses say what
    they mirror (``what``, for the log) and do one round."""

    what = "objects"

    def __init__(self, bucket: S3Bucket) -> None:
        self.bucket = bucket
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failing: str | None = None
        self._failing_logged = 0.0
        self._failures = 0  # rounds failed in a row
        self._checked = False
        self._thread = threading.Thread(target=self._run, name=f"pacspace-{self.what}", daemon=True)

    @abstractmethod
    def run_round(self) -> bool:
        """One round; whether the store is still behind after it."""

    @abstractmethod
    def check_store(self) -> bool:
        """Raise unless the bucket this process reaches is the log's (objects.check_mark); run before the first
        round, and again before each round until it returns True (False: not known yet, nothing to report)."""

    @property
    def failing(self) -> bool:
        return self._failing is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """There is more to copy: a round is due (at most one per ROUND_INTERVAL once the store has caught up)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop between two objects. A round still waiting on the store after STOP_WAIT is left to end with the
        process, like a crash (the next start repeats it): a store that hangs never holds up a shutdown."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_WAIT)

    def _run(self) -> None:
        while not self._stop.is_set():
            behind = self._round()
            if self._failures:  # rounds that keep failing are tried less and less often: 1, 2, 4 ... MAX_BACKOFF s
                self._stop.wait(min(MAX_BACKOFF, ROUND_INTERVAL * 2 ** (self._failures - 1)))
            elif not behind:
                self._wake.wait(ROUND_INTERVAL)
                self._stop.wait(ROUND_INTERVAL)  # a floor between rounds once caught up, however often woken
                self._wake.clear()

    def _round(self) -> bool:
        """A round; a failure is logged (once until it changes) and retried later (_run's backoff)."""
        try:
            if not self._checked:
                self._checked = self.check_store()
                if not self._checked:
                    return False
            behind = self.run_round()
        except Exception as exc:  # the store or the database: nothing is lost, the next round tries again
            if self._stop.is_set():
                return False  # the connections closed under a round the shutdown did not wait for
            kind = type(exc).__name__
            message = f"{kind}: {exc}" if not isinstance(exc, PacspaceError) else str(exc)
            # Once for each kind of failure, and again every FAILURE_LOG_INTERVAL while it lasts: its details
            # (the object a round stopped at) change from round to round.
            if kind != self._failing or time.monotonic() - self._failing_logged >= FAILURE_LOG_INTERVAL:
                log.error("the log's %s were not brought to the object store %s: %s", self.what, self.bucket, message)
                self._failing_logged = time.monotonic()
            self._failing = kind
            self._failures += 1
            return False
        self._failures = 0
        if self._failing is not None:
            log.info("the log's %s are being brought to the object store %s again", self.what, self.bucket)
            self._failing = None
        return behind


def gauges(lines: list[tuple[str, str, int]]) -> str:
    """Prometheus text of (name, help, value) gauges."""
    return "".join(f"# HELP {n} {h}\n# TYPE {n} gauge\n{n} {v}\n" for n, h, v in lines)
