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


def add_two_parties(data_dir: Path) -> None:
    """A provider ``acme`` (token ``tok-acme``) and a customer ``bob`` (``tok-bob``), as the operator adds them."""
    from pacspace.storage.records import RecordStore

    store = RecordStore(data_dir)
    store.add_party("acme", "provider", "tok-acme", 1)
    store.add_party("bob", "customer", "tok-bob", 1)
    store.close()


async def register_two_homes(url: str, base: Path):  # type: ignore[no-untyped-def]
    """Both parties' homes under ``base``: keys created, public halves registered, log key pinned."""
    from pacspace.client.home import Home
    from pacspace.client.http import PacspaceClient

    acme, bob = Home(base / "acme"), Home(base / "bob")
    for home, token in ((acme, "tok-acme"), (bob, "tok-bob")):
        async with PacspaceClient(url, token) as c:
            keys = home.create_keys()
            await c.register_keys(keys.public.x25519, keys.public.ed25519)
            home.pin_log_key((await c.log_info())["vkey"])
    return acme, bob


async def served_log_with_two_homes(aiohttp_client, base: Path):  # type: ignore[no-untyped-def]
    """A log server (in-process, real storage) under ``base/log`` with acme and bob, their homes registered.

    Returns (url, acme's home, bob's home).
    """
    from pacspace.config import ServerConfig
    from pacspace.sequencer import SequencerConfig
    from pacspace.server.app import create_app

    new_log(base / "log")
    add_two_parties(base / "log")
    app = create_app(ServerConfig(data_dir=base / "log", sequencer=SequencerConfig(pool_interval=0.01)))
    url = str((await aiohttp_client(app)).make_url("")).rstrip("/")
    acme, bob = await register_two_homes(url, base)
    return url, acme, bob


def wait_for_health(url: str, attempts: int = 400) -> None:
    """Poll ``url``/health until a server process started a moment ago answers (about 20 s at most)."""
    import urllib.request

    for _ in range(attempts):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no answer from {url}/health")


async def fill_log(data: Path, count: int, chunk: int = 50_000) -> None:
    """Grow the log in ``data`` by ``count`` entries through the sequencer's bulk path (for benchmarks)."""
    import asyncio

    from pacspace.datadir import load_signer, load_state
    from pacspace.sequencer import Sequencer, SequencerConfig
    from pacspace.storage.sqlite import SqliteLog

    signer = load_signer(data)
    store = SqliteLog.open(data)
    seq = Sequencer(store, signer, load_state(store, signer), SequencerConfig(pool_capacity=max(chunk, 262_144)))
    task = asyncio.create_task(seq.run())
    for start in range(0, count, chunk):
        await seq.submit_many([entry(i) for i in range(start, min(count, start + chunk))])
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    store.close()
