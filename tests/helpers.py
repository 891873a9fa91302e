"""Shared test helpers: building logs through the real sequencer, and an independent tile reader."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pacspace.datadir import init_log

ORIGIN = "example.com/test-log"


def entry(i: int) -> bytes:
    """A deterministic 65-byte entry, shaped like pacspace's public entry."""
    digest = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return b"\x01" + digest + hashlib.sha256(digest).digest()


def new_log(path: Path, origin: str = ORIGIN) -> str:
    """Create a log; returns its vkey."""
    return init_log(path, origin, int(time.time())).verifier.vkey()


def reference_tile(leaf_hashes: list[bytes], level: int, n: int, width: int) -> bytes:
    """C2SP tlog-tiles, straight from the definition: hash i is MTH(D[(n*256+i)*256**l : ...])."""
    from pacspace.merkle import ListHashReader, tree_hash

    out = []
    span = 256**level
    for i in range(width):
        start = (n * 256 + i) * span
        out.append(tree_hash(span, ListHashReader(leaf_hashes[start : start + span])))
    return b"".join(out)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the test server binds it next)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
