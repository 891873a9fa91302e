"""Typed application keys: what handlers reach through ``request.app``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from ..appending import Appender, SequencerLink
from ..checkpoint import SignedCheckpoint
from ..config import ServerConfig
from ..merkle import RangeHashes
from ..sequencer import Sequencer
from ..storage.base import RecordTables
from ..storage.logtables import LogTables
from .writer import GroupWriter

if TYPE_CHECKING:
    from .remote import RemoteSequencer


RECORD_READERS = 4


@dataclass
class LogService:
    """The log store (reads), the sequencer (the published checkpoint), the records tables, and the append path.

    In an HTTP worker (``serve --workers N``) ``sequencer`` and ``link`` are the
    parent's, reached through ``RemoteSequencer``, and ``store`` is log.db opened
    read-only. Everything that appends goes through ``appender`` (appending.py).
    """

    store: LogTables
    sequencer: Sequencer | RemoteSequencer
    vkey: str
    timestamp_vkey: str
    records: RecordTables
    writer: GroupWriter
    # Admission, sequencing and settling: appending.Sequencing where the sequencer runs, else RemoteSequencer.
    link: SequencerLink
    # Receipts of one batch share most of their inclusion paths.
    proof_ranges: RangeHashes = field(default_factory=RangeHashes)
    # The sequencer's epoch that fences the records' writes (RecordTables.claim_epoch), for its HTTP workers.
    epoch: int | None = None
    appender: Appender = field(init=False)
    # Pages of records read from a database (and their blobs from an object store) wait here, not on the default
    # pool, which the append path also uses: many slow pages hold up other pages, never an append.
    record_reads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(RECORD_READERS, thread_name_prefix="pacspace-record-reads"))

    def __post_init__(self) -> None:
        self.appender = Appender(self.records, self.writer, self.link)

    # The read API's view (LogReads): every process of a `serve` belongs to the log's sequencer.
    role = "sequencer"

    @property
    def latest(self) -> SignedCheckpoint:
        return self.sequencer.latest

    async def newest(self, wanted: int) -> SignedCheckpoint:
        return self.sequencer.latest  # read at each call already

    def problem(self) -> str | None:
        return None  # a stopped sequencer is the app's FATAL

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        return await self.link.find_leaves(hashes, size)

    async def metrics_text(self) -> str:
        return await self.sequencer.metrics_text() + self.records.metrics_text()


class LogReads(Protocol):
    """What the read API (read_api.py) serves from: a `serve`'s LogService, or a frontend's (frontend.py)."""

    store: LogTables
    vkey: str
    timestamp_vkey: str
    # "sequencer": the processes of the `serve` that sequences; "frontend": a read-only one beside it.
    role: str

    @property
    def latest(self) -> SignedCheckpoint:
        """The latest published checkpoint."""
        ...

    async def newest(self, wanted: int) -> SignedCheckpoint:
        """The latest published checkpoint, looked for again first if it is smaller than ``wanted``."""
        ...

    def problem(self) -> str | None:
        """Why this process cannot be trusted to serve the log's newest state (for /health), if it cannot."""
        ...

    async def find_leaves(self, hashes: list[bytes], size: int) -> list[int | None]:
        """Each leaf hash's first index below ``size``, or None."""
        ...

    async def metrics_text(self) -> str: ...


SERVICE = web.AppKey("service", LogService)
READS = web.AppKey("reads", LogReads)
CONFIG = web.AppKey("config", ServerConfig)
# Exceptions that stopped the sequencer; non-empty means the server is exiting.
FATAL = web.AppKey("fatal", list)
ON_FATAL: web.AppKey[Callable[[BaseException], None]] = web.AppKey("on_fatal")
