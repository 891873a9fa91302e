"""The blob segment files on their own: durable appends, one segment per writer, reads of any segment."""

from __future__ import annotations

import errno
import os

import pytest

from pacspace.storage import segments as segments_module
from pacspace.storage.segments import Placed, Segments, segment_name


@pytest.fixture
def segments(tmp_path):
    s = Segments(tmp_path)
    yield s
    s.close()


def test_appends_are_read_back_where_they_were_placed(segments, tmp_path):
    first = segments.append(b"alpha")
    second = segments.append(b"beta" * 1000)
    assert first == Placed(first.segment, 0) and second == Placed(first.segment, 5)
    assert segments.read(first.segment, 0, 5) == b"alpha"
    assert segments.read(second.segment, 5, 4000) == b"beta" * 1000
    reader = Segments(tmp_path, readonly=True)
    try:
        assert reader.read(second.segment, 5 + 3996, 4) == b"beta"
        with pytest.raises(PermissionError):
            reader.append(b"x")
    finally:
        reader.close()


def test_each_writer_has_its_own_segment_private_to_the_user(segments, tmp_path):
    other = Segments(tmp_path)
    try:
        a, b = segments.append(b"from a"), other.append(b"from b")
        assert a.segment != b.segment and a.offset == b.offset == 0
        assert segments.read(b.segment, 0, 6) == b"from b" and other.read(a.segment, 0, 6) == b"from a"
    finally:
        other.close()
    assert (tmp_path / "blobs").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "blobs").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600


def test_a_missing_or_short_segment_reads_as_none(segments, tmp_path):
    placed = segments.append(b"0123456789")
    assert segments.read(placed.segment, 8, 3) is None  # past the end
    assert segments.read(placed.segment ^ 1, 0, 1) is None  # no such segment
    os.truncate(tmp_path / "blobs" / segment_name(placed.segment), 4)
    reader = Segments(tmp_path, readonly=True)
    assert reader.read(placed.segment, 0, 10) is None
    reader.close()


def test_a_full_segment_is_followed_by_a_new_one(segments, monkeypatch):
    monkeypatch.setattr(segments_module, "SEGMENT_LIMIT", 10)
    a = segments.append(b"123456")
    b = segments.append(b"7890")
    c = segments.append(b"abc")  # would pass the limit: a new segment
    d = segments.append(b"x" * 50)  # larger than a segment: alone in a new one
    assert a.segment == b.segment and b.offset == 6
    assert len({a.segment, c.segment, d.segment}) == 3 and c.offset == d.offset == 0
    assert segments.read(d.segment, 0, 50) == b"x" * 50


def test_a_failed_append_is_never_continued(segments, monkeypatch):
    """After a write error (here a full disk), the segment's end is unknown: the next append starts a new one."""
    before = segments.append(b"kept")
    real_write = os.write

    def full_disk(fd, data):  # type: ignore[no-untyped-def]
        real_write(fd, bytes(data)[:2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments_module.os, "write", full_disk)
    with pytest.raises(OSError):
        segments.append(b"lost")
    monkeypatch.setattr(segments_module.os, "write", real_write)
    after = segments.append(b"next")
    assert after.segment != before.segment and after.offset == 0
    assert segments.read(before.segment, 0, 4) == b"kept" and segments.read(after.segment, 0, 4) == b"next"


def test_readers_keep_a_bounded_number_of_segments_open(tmp_path, monkeypatch):
    monkeypatch.setattr(segments_module, "OPEN_READERS", 2)
    placed = []
    for k in range(4):
        writer = Segments(tmp_path)
        placed.append((writer.append(bytes([k]) * 3), bytes([k]) * 3))
        writer.close()
    reader = Segments(tmp_path, readonly=True)
    try:
        for _ in range(2):
            for at, data in placed:
                assert reader.read(at.segment, at.offset, 3) == data
        assert len(reader._readers) == 2
    finally:
        reader.close()
