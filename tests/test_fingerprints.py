"""Party-key fingerprints: 256 bits now; the 128-bit ones given out and stored before keep working."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from helpers import accept_as, hour, served_log_with_two_homes

from pacspace.client.consent import CannotAccept, accept
from pacspace.client.http import PacspaceClient
from pacspace.client.monitor import poll
from pacspace.client.monitor_state import MonitorState
from pacspace.client.records import KeyMismatch, append_body, create_relationship, delta_maker, load_relationship
from pacspace.errors import MalformedInput
from pacspace.keys import PartyKeys, PublicKeys, fingerprint_matches, parse_fingerprint
from pacspace.records.body import Line


def old_fingerprint(keys: PublicKeys) -> str:
    """What pacspace printed before: the first 16 bytes of the same SHA-256, in 8 groups of 4 hex digits."""
    digest = hashlib.sha256(b"pacspace/v1 party keys\n" + keys.x25519 + keys.ed25519).digest()[:16].hex()
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def test_a_fingerprint_is_the_whole_sha256_in_16_groups():
    keys = PartyKeys.generate().public
    fp = keys.fingerprint()
    groups = fp.split(":")
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    assert fp.replace(":", "") == hashlib.sha256(b"pacspace/v1 party keys\n" + keys.x25519 + keys.ed25519).hexdigest()
    assert fp.startswith(old_fingerprint(keys) + ":")


def test_what_a_given_fingerprint_matches():
    keys, other = PartyKeys.generate().public, PartyKeys.generate().public
    fp, old = keys.fingerprint(), old_fingerprint(keys)
    assert fingerprint_matches(fp, fp)
    assert fingerprint_matches(fp, f"  {fp.upper()}\n")
    assert fingerprint_matches(fp, fp.replace(":", " "))  # spaces and separators do not matter
    assert fingerprint_matches(fp, old)  # an old one given as input
    assert fingerprint_matches(old, fp)  # an old one stored, the new one computed
    assert not fingerprint_matches(fp, other.fingerprint())
    assert not fingerprint_matches(fp, old_fingerprint(other))
    # Only the two whole lengths: a shorter prefix is ambiguous, never a match.
    assert not fingerprint_matches(fp, fp[:19])
    assert not fingerprint_matches(fp, fp.replace(":", "")[:48])
    assert not fingerprint_matches(fp, "")
    assert not fingerprint_matches(fp, "zz" + fp[2:])


def test_parse_fingerprint_names_what_it_wants():
    fp = PartyKeys.generate().public.fingerprint()
    assert parse_fingerprint(fp.upper()) == fp
    assert parse_fingerprint(fp.replace(":", "")) == fp
    old = fp[:39]
    assert parse_fingerprint(old) == old
    for bad in ("", "0000", fp[:44], "g" * 64, fp + ":0000"):
        with pytest.raises(MalformedInput, match="16 groups of 4 hex digits"):
            parse_fingerprint(bad)


@pytest.fixture
async def world(aiohttp_client, tmp_path):
    url, acme, bob = await served_log_with_two_homes(aiohttp_client, tmp_path)
    return url, acme, bob


async def test_old_fingerprints_given_as_input(world):
    url, acme, bob = world
    async with PacspaceClient(url, "tok-acme") as c:
        with pytest.raises(KeyMismatch, match="fingerprint"):
            await create_relationship(c, acme.keys(), "acme", "bob", customer_fingerprint=old_fingerprint(acme.keys().public))
        rid = (await create_relationship(c, acme.keys(), "acme", "bob",
                                         customer_fingerprint=old_fingerprint(bob.keys().public)))["relationship"]
    async with PacspaceClient(url, "tok-bob") as c:
        with pytest.raises(CannotAccept, match="fingerprint"):
            await accept(c, bob, rid, bob.log_key(), old_fingerprint(bob.keys().public))
        assert (await accept(c, bob, rid, bob.log_key(), old_fingerprint(acme.keys().public)))["relationship"] == rid
        view = await load_relationship(c, bob, rid, bob.log_key(), old_fingerprint(acme.keys().public))
    assert len(view.records) == 1


async def test_a_home_and_a_monitor_db_from_before_still_verify(world):
    """A home pinned a 128-bit provider fingerprint in chains/<rid>.json, a monitor.db stored one: both still verify,
    and a stored fingerprint of another key is still refused."""
    url, acme, bob = world
    async with PacspaceClient(url, "tok-acme") as c:
        rid = (await create_relationship(c, acme.keys(), "acme", "bob"))["relationship"]
        view = await load_relationship(c, acme, rid, acme.log_key())
        await append_body(c, acme, view, delta_maker("2026-11", hour(0), [Line("llm.requests", "request", "1", {})]))
    await accept_as(url, bob, "tok-bob", rid)
    old = old_fingerprint(acme.keys().public)
    async with PacspaceClient(url, "tok-bob") as c:
        await load_relationship(c, bob, rid, bob.log_key())
        state_file = bob.path / "chains" / f"{rid}.json"
        pinned = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**pinned, "provider_fingerprint": old}))
        assert len((await load_relationship(c, bob, rid, bob.log_key())).records) == 2
        # Verified again, the pin is the whole fingerprint now.
        assert json.loads(state_file.read_text())["provider_fingerprint"] == acme.keys().public.fingerprint()
        state_file.write_text(json.dumps({**pinned, "provider_fingerprint": old_fingerprint(bob.keys().public)}))
        with pytest.raises(KeyMismatch, match="fingerprint"):
            await load_relationship(c, bob, rid, bob.log_key())

        state = MonitorState(bob.path)
        try:
            assert (await poll(c, bob, state, bob.log_key())).new_records == 2
            _store_fingerprint(bob.path, rid, old)
            async with PacspaceClient(url, "tok-acme") as pc:
                await append_body(pc, acme, view, delta_maker("2026-11", hour(1), [Line("llm.requests", "request", "2", {})]))
            report = await poll(c, bob, state, bob.log_key())
            assert (report.new_records, report.detections) == (1, [])
            _store_fingerprint(bob.path, rid, old_fingerprint(bob.keys().public))
            report = await poll(c, bob, state, bob.log_key())
            assert [d.kind for d in report.detections] == ["key_mismatch"]
        finally:
            state.close()


def _store_fingerprint(home, rid: str, fingerprint: str) -> None:
    conn = sqlite3.connect(home / "monitor.db")
    conn.execute("UPDATE relationships SET provider_fingerprint = ? WHERE id = ?", (fingerprint, rid))
    conn.commit()
    conn.close()
