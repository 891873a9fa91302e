"""The client refuses what a misbehaving server shows it: hidden records, rewritten records, another provider
key, a log that rolled back, and closes that do not add up."""

from __future__ import annotations

import sqlite3

import pytest
from helpers import add_two_parties, hour, register_two_homes, new_log

from pacspace.checkpoint import open_checkpoint
from pacspace.client.http import PacspaceClient
from pacspace.client.records import (
    KeyMismatch,
    RollbackDetected,
    append_body,
    close_maker,
    create_relationship,
    delta_maker,
    load_relationship,
    verified_checkpoint,
)
from pacspace.config import ServerConfig
from pacspace.records.body import Close, Common, Delta, Line, body_hash
from pacspace.records.chain import ChainError, check_records
from pacspace.records.seal import seal
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app



@pytest.fixture
async def setup(aiohttp_client, tmp_path, log_database):
    new_log(tmp_path / "log", database=log_database)
    add_two_parties(tmp_path / "log", log_database)
    app = create_app(ServerConfig(data_dir=tmp_path / "log", sequencer=SequencerConfig(pool_interval=0.01),
                                  database=log_database))
    server = await aiohttp_client(app)
    url = str(server.make_url("")).rstrip("/")
    acme, bob = await register_two_homes(url, tmp_path)
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob"))["relationship"]
        view = await load_relationship(c, acme, rid, acme.log_key())
        for n, q in enumerate(("10", "5")):
            await append_body(c, acme, view, delta_maker("2026-11", hour(n), [Line("llm.requests", "request", q, {})]))
        # A decrease is a correction naming the delta it adjusts.
        await append_body(c, acme, view, delta_maker("2026-11", hour(0), [Line("llm.requests", "request", "-2", {})], 1))
        await append_body(c, acme, view, close_maker(view, "2026-11"))
    return url, acme, bob, rid, tmp_path / "log"


async def test_customer_verifies_everything_and_the_close_adds_up(setup):
    url, acme, bob, rid, _ = setup
    async with PacspaceClient(url, "tok-bob") as c:
        view = await load_relationship(c, bob, rid, bob.log_key())
    close = view.records[-1].body
    assert isinstance(close, Close) and close.totals[0].quantity == "13" and close.record_count == 3


@pytest.mark.parametrize("log_database", [None])  # the misbehaving server is simulated in records.db
async def test_hidden_records_are_detected(setup):
    url, acme, bob, rid, data = setup
    async with PacspaceClient(url, "tok-bob") as c:
        await load_relationship(c, bob, rid, bob.log_key())
        # The server now hides the close (a misbehaving server, simulated in its own database).
        conn = sqlite3.connect(data / "records.db")
        conn.execute("DELETE FROM records WHERE relationship = ? AND seq = 4", (rid,))
        conn.commit()
        conn.close()
        with pytest.raises(RollbackDetected, match="verified before"):
            await load_relationship(c, bob, rid, bob.log_key())


async def test_an_unexpected_provider_key_is_refused(setup):
    url, acme, bob, rid, _ = setup
    async with PacspaceClient(url, "tok-bob") as c:
        with pytest.raises(KeyMismatch, match="fingerprint"):
            await load_relationship(c, bob, rid, bob.log_key(), provider_fingerprint="0000:0000:0000:0000:0000:0000:0000:0000")
        view = await load_relationship(c, bob, rid, bob.log_key(), provider_fingerprint=acme.keys().public.fingerprint())
    assert len(view.records) == 5


async def test_a_log_that_rolled_back_is_refused(setup):
    url, acme, bob, rid, _ = setup
    async with PacspaceClient(url, "tok-bob") as c:
        await verified_checkpoint(c, bob, bob.log_key())
        newer = open_checkpoint(bob.last_checkpoint(), bob.log_key())

        class RollingBack:
            """A server that shows an older checkpoint than one it showed before."""

            async def checkpoint(self):
                return older

            async def consistency(self, old, size):
                return await c.consistency(old, size)

        async with PacspaceClient(url, "tok-acme") as pc:
            view = await load_relationship(pc, acme, rid, acme.log_key())
            await append_body(pc, acme, view, delta_maker("2026-12", hour(0, "2026-12-01"), [Line("llm.requests", "request", "1", {})]))
        await verified_checkpoint(c, bob, bob.log_key())
        older = newer.format()
        with pytest.raises(RollbackDetected, match="smaller"):
            await verified_checkpoint(RollingBack(), bob, bob.log_key())


async def test_closes_that_do_not_cover_the_period_are_refused(setup):
    url, acme, bob, rid, _ = setup
    async with PacspaceClient(url, "tok-bob") as c:
        view = await load_relationship(c, bob, rid, bob.log_key())
    opened = [r.opened for r in view.records[:-1]]
    real = view.records[-1].body
    provider = acme.keys().ed25519

    def forged(first, last, count, totals):
        body = Close(real.common, "2026-11", first, last, count, body_hash(opened[last].encoded), totals)
        sealed = seal(body, view.keys, provider)
        from pacspace.records.seal import open_record

        return open_record(sealed.seq, sealed.tag, sealed.blob, view.keys, provider.public_key())

    check_records(opened + [view.records[-1].opened])
    # Leaves out the -2 correction at seq 3, or inflates the totals.
    partial = [Line("llm.requests", "request", "15", {})]
    with pytest.raises(ChainError, match="covers"):
        check_records(opened + [forged(1, 2, 2, tuple(partial))])
    with pytest.raises(ChainError, match="totals"):
        check_records(opened + [forged(1, 3, 3, (Line("llm.requests", "request", "999999", {}),))])
    # Usage for a period after its close.
    close_record = view.records[-1].opened
    late_body = Delta(Common(rid, 5, body_hash(close_record.encoded), "late", "2026-12-01T00:00:00Z"), "2026-11",
                      *hour(5), (Line("llm.requests", "request", "1", {}),))
    late = seal(late_body, view.keys, provider)
    from pacspace.records.seal import open_record

    late_opened = open_record(5, late.tag, late.blob, view.keys, provider.public_key())
    with pytest.raises(ChainError, match="already closed"):
        check_records(opened + [close_record, late_opened])
