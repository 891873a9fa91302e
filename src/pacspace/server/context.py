"""Typed application keys: what handlers reach through ``request.app``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ..config import ServerConfig
from ..sequencer import Sequencer
from ..storage.records import RecordStore
from ..storage.sqlite import SqliteLog
from .writer import GroupWriter


@dataclass
class LogService:
    """The log store (reads), the sequencer (writes, the published checkpoint), and the records tables."""

    store: SqliteLog
    sequencer: Sequencer
    vkey: str
    timestamp_vkey: str
    records: RecordStore
    writer: GroupWriter


SERVICE = web.AppKey("service", LogService)
CONFIG = web.AppKey("config", ServerConfig)
# Exceptions that stopped the sequencer; non-empty means the server is exiting.
FATAL = web.AppKey("fatal", list)
ON_FATAL = web.AppKey("on_fatal", Callable[[BaseException], None])
