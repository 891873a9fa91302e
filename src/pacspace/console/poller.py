"""The console's background poll: the monitor's own poll (client.monitor.poll), on an interval or on request, with
its progress and its outcome for the pages to show.

The poll is the only time the console talks to the log server, with
``accept`` and ``decline``; everything the pages show comes from the verified
copy it leaves in monitor.db. A server that is down makes the poll fail, and
says so; the pages go on showing what was verified.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import PacspaceError
from ..note import Ed25519Verifier
from ..client.consent import Invitation, invitations
from ..client.home import Home
from ..client.http import PacspaceClient
from ..client.monitor import Detection, PollReport, poll
from ..client.monitor_state import MonitorState

SERVER_TIMEOUT = 30.0  # seconds for one request to the log server
log = logging.getLogger("pacspace.console")


@dataclass(frozen=True)
class Server:
    """Where the log server is, and this party's token for it (PACSPACE_URL, PACSPACE_TOKEN)."""

    url: str
    token: str = field(repr=False)

    def client(self) -> PacspaceClient:
        return PacspaceClient(self.url, self.token, timeout=SERVER_TIMEOUT)


@dataclass
class PollStatus:
    running: bool = False
    stage: str = ""
    done: int = 0
    total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    ok: bool | None = None  # None: no poll has finished yet
    message: str = ""
    invitations: list[Invitation] | None = None  # None: not known (no poll reached the server yet)

    def to_json(self) -> dict[str, Any]:
        return {"running": self.running, "stage": self.stage, "done": self.done, "total": self.total,
                "started_at": self.started_at, "finished_at": self.finished_at, "ok": self.ok,
                "message": self.message,
                "invitations": None if self.invitations is None else len(self.invitations)}


class Poller:
    def __init__(self, home: Home, state: MonitorState, log_key: Ed25519Verifier, server: Server | None,
                 interval: float) -> None:
        self.home, self.state, self.log_key, self.server, self.interval = home, state, log_key, server, interval
        self.status = PollStatus()
        self._wake = asyncio.Event()
        self._logged: set[tuple[str, str]] = set()  # the unexpected failures logged already: each is logged once

    def request(self) -> bool:
        """Poll now (the background loop wakes); False if a poll is running already."""
        if self.status.running:
            return False
        self._wake.set()
        return True

    async def run(self) -> None:
        """Poll at once, then every ``interval`` seconds or when asked, until cancelled."""
        while True:
            await self.poll_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def poll_once(self) -> None:
        status = self.status
        status.running, status.started_at, status.stage, status.done, status.total = True, time.time(), "the log", 0, 0
        try:
            status.ok, status.message = await self._poll()
        except Detection as found:
            status.ok, status.message = False, f"DETECTED {found.kind}: {found} (nothing of this poll was stored)"
        except PacspaceError as exc:
            status.ok, status.message = False, f"the poll failed: {exc}"
        except (OSError, asyncio.TimeoutError) as exc:
            status.ok, status.message = False, f"the poll failed: {type(exc).__name__}"
        except Exception as exc:  # noqa: BLE001 - a bug, or an answer no check foresaw: the next poll runs all the same
            status.ok, status.message = False, (f"the poll failed: an unexpected error ({type(exc).__name__}); the "
                                                "console's log has the details, and it polls again as usual")
            self._log_once(exc)
        finally:
            status.running, status.finished_at, status.stage = False, time.time(), ""

    def _log_once(self, exc: Exception) -> None:
        """Log an unexpected failure with its traceback, once: the same one at every interval is not logged again.
        The traceback names code and the exception's message, never the party's token (only the HTTP client holds
        it, in a header)."""
        seen = (type(exc).__name__, str(exc)[:200])
        if seen in self._logged:
            return
        if len(self._logged) >= 64:  # bounded, whatever the messages
            self._logged.clear()
        self._logged.add(seen)
        log.error("the console's poll failed unexpectedly (logged once; it polls again): %s: %s", seen[0], seen[1],
                  exc_info=exc)

    async def _poll(self) -> tuple[bool, str]:
        if self.server is None:
            return False, "no poll: PACSPACE_TOKEN was not set when the console started (it shows the verified copy)"
        async with self.server.client() as client:
            report = await poll(client, self.home, self.state, self.log_key, self._progress)
            self.status.stage = "invitations"
            self.status.invitations = await invitations(client) if report.pending else []
        return report.exit_code == 0, summary(report)

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.status.stage, self.status.done, self.status.total = stage, done, total


def summary(report: PollReport) -> str:
    """One sentence about a poll, as `pacspace monitor` prints it, with what needs a look."""
    text = (f"checkpoint {report.checkpoint_size}: {report.new_records} new records verified in "
            f"{report.relationships} relationships")
    found = [f"{len(report.detections)} detection(s)"] if report.detections else []
    found += [f"{len(report.findings)} new finding(s)"] if report.findings else []
    errors = [o.error for o in report.outcomes if o.error is not None]
    found += [f"{len(errors)} relationship(s) not read: {errors[0]}"] if errors else []
    return text + ("; " + "; ".join(found) if found else "")
