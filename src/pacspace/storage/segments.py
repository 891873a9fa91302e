"""Sealed blobs in append-only segment files, ``<data>/blobs/<segment>.seg``, beside records.db.

A blob is written once and never changed, and records.db names where it lies
(segment, offset, length). Keeping the bytes out of SQLite writes them once: in
records.db each blob was written to the WAL inside the write lock every process
queues on, then read back and written again into the database file by the WAL
checkpoint. Here the blobs of a transaction are appended and made durable before
that lock is taken, while another process holds it.

Each process appends to a segment of its own, named by a random number and
created exclusively, so writers never share a file and need no coordination.
A new segment is started at every start and after SEGMENT_LIMIT bytes; bytes a
crash left at a segment's end, or that a transaction which failed never named,
are never read. Nothing else is stored in the files: records.db says what each
byte range is, and the record's ct_hash (SHA-256 of the blob) checks it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from ..durable import fsync_dir

SEGMENTS_DIR = "blobs"
SEGMENT_LIMIT = 1 << 30
# Segments a reader keeps open; a server restarted many times has many segments.
OPEN_READERS = 64
_SUFFIX = ".seg"


@dataclass(frozen=True)
class Placed:
    """Where appended bytes start: a segment and the offset in it."""

    segment: int
    offset: int


def segment_name(segment: int) -> str:
    return f"{segment:016x}{_SUFFIX}"


class Segments:
    """The blob segment files of one data directory: appends durable once they return; reads of any segment."""

    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        self.directory = data_dir / SEGMENTS_DIR
        self._readonly = readonly
        self._append_lock = threading.Lock()
        self._segment: int | None = None
        self._fd: int | None = None
        self._size = 0
        self._readers: dict[int, int] = {}
        self._readers_lock = threading.Lock()

    def close(self) -> None:
        with self._append_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        with self._readers_lock:
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()

    def append(self, data: bytes) -> Placed:
        """Append ``data`` to this process's segment; durable (fdatasync) once it returns."""
        if self._readonly:
            raise PermissionError(f"{self.directory} was opened read-only")
        with self._append_lock:
            if self._fd is None or (self._size > 0 and self._size + len(data) > SEGMENT_LIMIT):
                self._start_segment()
            assert self._fd is not None and self._segment is not None
            placed = Placed(self._segment, self._size)
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fdatasync(self._fd)
            except BaseException:
                # The file's end is no longer known: later appends go to a new segment.
                self._abandon()
                raise
            self._size += len(data)
            return placed

    def _start_segment(self) -> None:
        self._abandon()
        self.directory.mkdir(mode=0o700, exist_ok=True)
        # Every time, not only when this call made it: another process (or one killed before its
        # fsync) may have made it without the data directory's entry being durable yet.
        fsync_dir(self.directory.parent)
        while True:
            segment = secrets.randbits(63)
            try:
                fd = os.open(self.directory / segment_name(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                break
            except FileExistsError:
                continue
        # The new name must survive a crash before any record names it.
        fsync_dir(self.directory)
        self._segment, self._fd, self._size = segment, fd, 0

    def _abandon(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._segment, self._fd, self._size = None, None, 0

    def read(self, segment: int, offset: int, length: int) -> bytes | None:
        """The bytes written there, or None if the segment is missing or shorter."""
        with self._readers_lock:
            fd = self._readers.get(segment)
            if fd is None:
                try:
                    fd = os.open(self.directory / segment_name(segment), os.O_RDONLY)
                except FileNotFoundError:
                    return None
                if len(self._readers) >= OPEN_READERS:
                    os.close(self._readers.pop(next(iter(self._readers))))
                self._readers[segment] = fd
            data = os.pread(fd, length, offset)
        return data if len(data) == length else None

