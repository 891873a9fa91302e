"""The customer's monitor: poll the log, verify everything new, keep a verified copy, report misbehaviour.

Each poll (docs/monitor.md):

1. the log itself (client.log_check): the checkpoint's signature, the
   witnesses' quorum, its consistency with the last checkpoint verified, a fork
   only with proof. If the log cannot be trusted, nothing of the poll is
   stored; otherwise the checkpoint is.
2. each relationship the party follows, on its own (client.follow): every new
   record fully verified, its inclusion computed from the log's tiles. A record
   that fails is a *detection*: the relationship's copy stops before it and
   every other relationship goes on. A record that verifies but breaks a
   protocol rule (records.rules) is a *finding*: stored, reported, and the copy
   goes on past it.

Relationships are taken some at a time (``CHUNK``), their pages fetched
concurrently (``PARALLEL`` requests in flight) and in rounds, one page of each
per round, so a relationship with a long history delays the others by no more
than its share, and memory holds one page of each. The tiles a round's proofs
need are fetched once; full tiles a verified proof used are kept, so the next
poll fetches only the new right edge.

A customer follows only the relationships it accepted: the server lists them,
and the monitor checks the acceptance is signed by the customer's own key over
the genesis it verifies. Invitations are listed, never followed. A followed
relationship the server leaves out of its list is followed all the same.

Each detection and finding has a stable kind, an exit code (pacspace.exitcodes),
one line for humans, and evidence saved under ``<PACSPACE_HOME>/evidence/``,
once however many polls see it again. One poll runs at a time per home.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedInput, PacspaceError
from ..exitcodes import DETECTIONS, FAILURE, OK, RULE_BROKEN, UNREACHABLE
from ..note import Ed25519Verifier
from ..policy import Policy
from .detections import Detection, save_evidence
from .follow import Follower, Outcome, Poll
from .opening import Opener
from .home import Home
from .http import PacspaceClient, Unreachable
from .log_check import verified_checkpoint
from .monitor_state import MonitorState, StoredFinding
from .tile_reader import TileReader

# Kept for callers that map kinds to codes; the table lives in pacspace.exitcodes.
EXIT_CODES = DETECTIONS
PARALLEL = 16  # requests in flight at once
TILE_PARALLEL = 48  # tile fetches in flight at once: small, immutable, and what a catch-up through latency waits on
CHUNK = 32  # relationships taken together (one page of each in memory)

RelationshipOutcome = Outcome
__all__ = ["Detection", "PollReport", "RelationshipOutcome", "poll", "save_evidence", "EXIT_CODES"]


@dataclass
class PollReport:
    checkpoint_size: int
    outcomes: list[Outcome] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # invitations this party has not accepted
    log_detections: list[Detection] = field(default_factory=list)  # about the log, that did not stop the poll

    @property
    def new_records(self) -> int:
        return sum(o.new_records for o in self.outcomes)

    @property
    def relationships(self) -> int:
        return sum(o.followed for o in self.outcomes)

    @property
    def per_relationship(self) -> dict[str, int]:
        return {o.relationship: o.new_records for o in self.outcomes if o.followed}

    @property
    def detections(self) -> list[Detection]:
        return self.log_detections + [o.detection for o in self.outcomes if o.detection is not None]

    @property
    def findings(self) -> list[StoredFinding]:
        return [f for o in self.outcomes for f in o.findings]

    @property
    def exit_code(self) -> int:
        """The lowest detection code; else RULE_BROKEN for new findings; else an error's; else OK.

        Findings come before errors: an error proves nothing, and must not hide what the poll did prove."""
        if self.detections:
            return min(d.exit_code for d in self.detections)
        if self.findings:
            return RULE_BROKEN
        errors = [o.error for o in self.outcomes if o.error is not None]
        if errors:
            return UNREACHABLE if all(isinstance(e, Unreachable) for e in errors) else FAILURE
        return OK


async def poll(
    client: PacspaceClient,
    home: Home,
    state: MonitorState,
    log_key: Ed25519Verifier,
    progress: Callable[[str, int, int], None] | None = None,
    policy: Policy | None = None,
) -> PollReport:
    """One poll. Raises Detection (its evidence saved) when the log itself cannot be trusted: then nothing is
    stored. Everything about one relationship is in the report, and holds back no other relationship."""
    async with state.polling():
        now = int(time.time())
        try:
            checkpoint, recovered = await verified_checkpoint(client, state.latest_checkpoint(), log_key, policy)
        except Detection as found:
            _note(state, home, found, now)
            raise
        for kept in recovered:
            _note(state, home, kept, now)
        state.save_checkpoint(checkpoint.size, checkpoint.format(), now)
        me = _party(await client.me())
        report = PollReport(checkpoint.size, log_detections=recovered)
        listing = _listing(await client.relationships())
        listed = {info["relationship"] for info in listing}
        for rid in state.relationship_ids():
            if rid not in listed:
                known = state.relationship(rid)
                assert known is not None
                listing.append({"relationship": rid, "provider": known.provider, "customer": known.customer,
                                "listed": False})
        ctx = Poll(client, home, state, checkpoint, me["name"], now, opener=Opener())
        try:
            done = 0
            for start in range(0, len(listing), CHUNK):
                await _chunk(ctx, listing[start : start + CHUNK], report)
                done += min(CHUNK, len(listing) - start)
                if progress is not None:
                    progress("relationships", done, len(listing))
        finally:
            ctx.opener.close()
        if ctx.tiles_wrong is not None:
            wrong = Detection("bad_proof", f"an inclusion proof from the log's tiles (index {ctx.tiles_wrong}) does not "
                              "lead to the signed root, where its proof endpoint's does: this proves nothing about "
                              "the log, but other tlog clients read those tiles",
                              {"index": ctx.tiles_wrong, "checkpoint": checkpoint.format().decode()}, seq=checkpoint.size)
            _note(state, home, wrong, now)
            report.log_detections.append(wrong)
        if me.get("role") == "customer":
            report.pending = _listing(await client.relationships(state="pending"))
        return report


async def _chunk(ctx: Poll, infos: list[dict[str, Any]], report: PollReport) -> None:
    """Some relationships, in rounds: one page of each fetched concurrently, the tiles the round's proofs need
    fetched once, then each page verified and stored on its own."""
    gate = asyncio.Semaphore(PARALLEL)
    followers = [Follower(ctx, info, info.get("listed", True)) for info in infos]

    async def guarded(follower: Follower, step: Callable[[], Any]) -> None:
        async with gate:
            await _isolated(ctx, follower, step)

    await asyncio.gather(*(guarded(f, f.start) for f in followers))
    active = [f for f in followers if not f.done and f.outcome.detection is None and f.outcome.error is None]
    while active:
        # Pages open in worker processes while the round's tiles are fetched, then while the pages opened
        # before them are verified here, in order.
        opening = [asyncio.ensure_future(_isolated(ctx, f, f.open_page)) for f in active]
        reader = TileReader(ctx.client, ctx.checkpoint.size, ctx.state, TILE_PARALLEL)
        tiles: TileReader | None = reader
        try:
            await reader.fetch({node for f in active for node in f.nodes(reader)})
        except PacspaceError:
            tiles = None  # every proof then comes from the log's proof endpoint, checked the same way
        except BaseException:
            for task in opening:
                task.cancel()
            raise
        for follower, opened in zip(active, opening):
            await opened
            if not follower.done:
                await _isolated(ctx, follower, lambda f=follower: f.verify(tiles))  # type: ignore[misc]
        if tiles is not None:
            ctx.state.save_tiles(tiles.new_full_tiles())
        active = [f for f in active if not f.done]
        await asyncio.gather(*(guarded(f, f.next_page) for f in active))
        active = [f for f in active if not f.done and f.outcome.error is None]
    report.outcomes += [f.outcome for f in followers]


async def _isolated(ctx: Poll, follower: Follower, step: Callable[[], Any]) -> None:
    """Run one relationship's step; whatever it raises is that relationship's outcome, never another's."""
    outcome = follower.outcome
    try:
        await step()
    except Detection as found:
        found.relationship = found.relationship or outcome.relationship
        _note(ctx.state, ctx.home, found, ctx.now)
        outcome.detection, follower.done = found, True
    except PacspaceError as exc:
        outcome.error, follower.done = exc, True
    except (TimeoutError, asyncio.TimeoutError):
        outcome.error, follower.done = Unreachable(f"{outcome.relationship}: the server did not answer in time"), True
    except (KeyError, TypeError, ValueError, AttributeError):
        outcome.error = MalformedInput(f"{outcome.relationship}: the server's answer is malformed")
        follower.done = True


def _party(me: Any) -> dict[str, Any]:
    if not isinstance(me, dict) or not isinstance(me.get("name"), str):
        raise MalformedInput("the server's answer to /v1/me is malformed")
    return me


def _listing(items: Any) -> list[dict[str, Any]]:
    """The server's list of relationships, each with a string id, provider and customer."""
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and all(isinstance(i.get(k), str) for k in ("relationship", "provider", "customer"))
        for i in items
    ):
        raise MalformedInput("the server's list of relationships is malformed")
    return list(items)


def _note(state: MonitorState, home: Home, found: Detection, now: int) -> None:
    """Save a detection's evidence the first time it is seen; later polls only count it."""
    earlier = state.detection(found.relationship, found.kind, found.seq)
    found.evidence_path = earlier.evidence if earlier is not None else save_evidence(home, found)
    state.note_detection(found.relationship, found.kind, found.seq, str(found), found.evidence_path, now)
