"""One running console: its configuration, the verified copy it reads, its poller, and what it remembers between
two pages (a one-time message, the last invoice checked per period). Held by the aiohttp application, never
globally."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ..client.home import Home
from ..client.invoice_mapping import Mapping
from ..client.invoices import Invoice
from ..client.monitor_state import MonitorState
from ..client.prices import PriceSheet
from ..note import Ed25519Verifier
from .poller import Poller, Server
from .security import Access

MAX_UPLOAD = 32 * 1024 * 1024  # bytes: an invoice, a mapping and a price sheet together


@dataclass(frozen=True)
class ConsoleConfig:
    home: Home
    log_key: Ed25519Verifier
    access: Access
    server: Server | None  # None: no token, so no poll and no answer to invitations
    interval: float  # seconds between background polls
    mapping: Mapping | None = None  # the defaults for an invoice check (a form may give its own)
    prices: PriceSheet | None = None


@dataclass(frozen=True)
class Check:
    """An invoice checked against a period: kept so that the period's downloads include it."""

    invoice: Invoice
    prices: PriceSheet | None
    name: str


@dataclass
class Console:
    config: ConsoleConfig
    state: MonitorState
    poller: Poller
    flash: str | None = None
    checks: dict[tuple[str, str], Check] = field(default_factory=dict)

    def take_flash(self) -> str | None:
        """The one-time message for the next page; kept while a poll runs, since the page reloads when it ends."""
        message = self.flash
        if not self.poller.status.running:
            self.flash = None
        return message


CONSOLE = web.AppKey("console", Console)
CONFIG = web.AppKey("console_config", ConsoleConfig)
