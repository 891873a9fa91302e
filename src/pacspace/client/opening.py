"""Opening sealed records in worker processes, when a poll has many to open.

Why: opening a record (tag, key commitment, AES-GCM, the provider's Ed25519
signature, the body's schema) is most of the monitor's CPU when it catches up,
and none of it releases Python's interpreter lock; a customer catching up on a
year of records would wait on one core while the others idle. Records open
independently of one another (the chain and the rules are checked afterwards,
in order, in the monitor's own process), so a round's pages are split across
processes. A handful of records are opened in-process: starting the workers
costs more than it saves.

Each result is either the Opened record or the SealError it raised, rebuilt
with its class and message: a record fails the same way in a worker as here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..cores import helper_processes
from ..records.seal import CiphertextError, Opened, ProviderSignatureError, RelationshipKeys, SealError, TagMismatch, open_record

# Below this many records in one call, opening them here is cheaper than handing them to workers.
MIN_POOLED = 256
_ERRORS: dict[str, type[SealError]] = {c.__name__: c for c in (SealError, TagMismatch, CiphertextError,
                                                                ProviderSignatureError)}
Item = tuple[int, bytes, bytes]  # (seq, tag, blob)
Result = Opened | SealError


class Opener:
    """Opens records of one relationship at a time; in ``workers`` processes (started on first need) when many."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = helper_processes() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None

    async def open_all(self, keys: RelationshipKeys, provider: bytes, items: Sequence[Item]) -> list[Result]:
        if self.workers == 0 or len(items) < MIN_POOLED:
            return open_batch(keys.secret, keys.epoch, provider, items)
        if self._pool is None:
            # spawn, not fork: the monitor's process has threads (asyncio's, SQLite's) that fork would copy mid-step.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        step = -(-len(items) // self.workers)
        parts = await asyncio.gather(*(
            loop.run_in_executor(self._pool, _open_in_worker, keys.secret, keys.epoch, provider, list(items[i : i + step]))
            for i in range(0, len(items), step)
        ))
        return [_result(r) for part in parts for r in part]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def open_batch(secret: bytes, epoch: int, provider: bytes, items: Sequence[Item]) -> list[Result]:
    keys, signer = RelationshipKeys(secret, epoch), Ed25519PublicKey.from_public_bytes(provider)
    out: list[Result] = []
    for seq, tag, blob in items:
        try:
            out.append(open_record(seq, tag, blob, keys, signer))
        except SealError as exc:
            out.append(exc)
    return out


def _open_in_worker(secret: bytes, epoch: int, provider: bytes, items: list[Item]) -> list[Opened | tuple[str, str]]:
    return [r if isinstance(r, Opened) else (type(r).__name__, str(r)) for r in open_batch(secret, epoch, provider, items)]


def _result(r: Opened | tuple[str, str]) -> Result:
    if isinstance(r, Opened):
        return r
    name, message = r
    return _ERRORS.get(name, SealError)(message)
