"""A customer's consent over HTTP: pending invitations, acceptance with a signature, declining, and who may do what."""

from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3
from pathlib import Path

import pytest
from helpers import new_log

from pacspace.storage import record_ops
from pacspace.client.home import Home
from pacspace.client.http import PacspaceClient, ServerError
from pacspace.client.records import RelationshipView, append_body, create_relationship, delta_maker, load_relationship, now_utc
from pacspace.config import ServerConfig
from pacspace.records.acceptance import sign_acceptance
from pacspace.records.body import Common, Delta, Line
from pacspace.records.seal import Sealed, entry_from_ct_hash, seal
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app
from pacspace.datadir import open_records

PARTIES = {"acme": "provider", "evil": "provider", "bob": "customer", "carol": "customer"}


def window(hour: int) -> tuple[str, str]:
    return f"2026-11-02T{hour:02d}:00:00Z", f"2026-11-02T{hour:02d}:59:59Z"


def token(who: str) -> str:
    return f"tok-{who}"


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(who)}"}


class World:
    """An in-process server (real storage) with two providers and two customers, each with a registered home."""

    def __init__(self, http, data: Path, base: Path) -> None:  # type: ignore[no-untyped-def]
        self.http = http
        self.data = data
        self.url = str(http.make_url("")).rstrip("/")
        self.homes = {name: Home(base / name) for name in PARTIES}
        self.database: str | None = None

    async def register(self) -> None:
        for name, home in self.homes.items():
            async with PacspaceClient(self.url, token(name)) as c:
                keys = home.create_keys()
                await c.register_keys(keys.public.x25519, keys.public.ed25519)
                home.pin_log_key((await c.log_info())["vkey"])

    async def call(self, method: str, path: str, who: str, **kwargs):  # type: ignore[no-untyped-def]
        resp = await self.http.request(method, path, headers=auth(who), **kwargs)
        return resp.status, await resp.read()

    async def json(self, method: str, path: str, who: str, status: int = 200, **kwargs):  # type: ignore[no-untyped-def]
        resp = await self.http.request(method, path, headers=auth(who), **kwargs)
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def error(self, method: str, path: str, who: str, status: int, code: str, **kwargs):  # type: ignore[no-untyped-def]
        body = await self.json(method, path, who, status, **kwargs)
        assert body["error"] == code and body["message"], body
        return body

    async def create(self, provider: str = "acme", customer: str = "bob") -> str:
        """A relationship made by the real client library: secret, wraps, signed genesis."""
        home = self.homes[provider]
        async with PacspaceClient(self.url, token(provider)) as c:
            created = await create_relationship(c, home.keys(), provider, customer, "hourly")
        return str(created["relationship"])

    async def view(self, rid: str, who: str = "acme") -> RelationshipView:
        home = self.homes[who]
        async with PacspaceClient(self.url, token(who)) as c:
            return await load_relationship(c, home, rid, home.log_key())

    async def append(self, rid: str, hour: int = 0) -> dict:  # type: ignore[type-arg]
        view = await self.view(rid)
        async with PacspaceClient(self.url, token("acme")) as c:
            return await append_body(c, self.homes["acme"], view, delta_maker("2026-11", window(hour), [line(hour)]))

    async def genesis_entry(self, rid: str, who: str = "bob") -> bytes:
        """The genesis record's public entry, as a customer computes it from what the server serves."""
        async with PacspaceClient(self.url, token(who)) as c:
            (row,) = await c.records(rid, -1, 1)
        blob = base64.b64decode(row["ciphertext"])
        return entry_from_ct_hash(base64.b64decode(row["tag"]), hashlib.sha256(blob).digest())

    async def signature(self, rid: str, signer: str = "bob") -> str:
        key = self.homes[signer].keys().ed25519
        return base64.b64encode(sign_acceptance(key, rid, await self.genesis_entry(rid))).decode()

    async def listed(self, who: str, query: str = "") -> list[tuple[str, str]]:
        body = await self.json("GET", f"/v1/relationships{query}", who)
        return [(r["relationship"], r["state"]) for r in body["relationships"]]


def line(n: int) -> Line:
    return Line("llm.requests", "request", str(n), {"model": "m"})


async def start(aiohttp_client, data: Path, base: Path, database: str | None = None) -> World:  # type: ignore[no-untyped-def]
    app = create_app(ServerConfig(data_dir=data, sequencer=SequencerConfig(pool_interval=0.01), database=database))
    return World(await aiohttp_client(app), data, base)


@pytest.fixture
async def world(aiohttp_client, tmp_path, log_database):  # type: ignore[no-untyped-def]
    """The consent API on each backend (log_database)."""
    data = tmp_path / "log"
    new_log(data, database=log_database)
    store = open_records(data, log_database)
    for name, role in PARTIES.items():
        store.add_party(name, role, token(name), 1)
    store.close()
    w = await start(aiohttp_client, data, tmp_path, log_database)
    w.database = log_database
    await w.register()
    return w


async def test_a_new_relationship_is_an_invitation_the_customer_sees_only_when_asked(world):
    rid = await world.create()
    for who in ("acme", "bob"):
        detail = await world.json("GET", f"/v1/relationships/{rid}", who)
        assert (detail["state"], detail["acceptance"], detail["decided_at"]) == ("pending", None, None)
        assert detail["wrap"] and detail["provider_keys"] and detail["customer_keys"]  # what the customer decides on
    assert await world.listed("bob") == []
    assert await world.listed("bob", "?state=pending") == [(rid, "pending")]
    assert await world.listed("bob", "?state=all") == [(rid, "pending")]
    assert await world.listed("acme") == [(rid, "pending")]
    assert await world.listed("acme", "?state=accepted") == []
    await world.error("GET", "/v1/relationships?state=maybe", "bob", 400, "malformed")
    await world.error("GET", "/v1/relationships?state=", "acme", 400, "malformed")


async def test_the_customer_accepts_with_its_signature_and_then_sees_it_by_default(world):
    rid = await world.create()
    signature = await world.signature(rid)
    accepted = await world.json("POST", f"/v1/relationships/{rid}/acceptance", "bob", json={"signature": signature})
    assert accepted["relationship"] == rid and accepted["state"] == "accepted"
    assert accepted["acceptance"] == signature and isinstance(accepted["decided_at"], int)
    assert accepted == await world.json("GET", f"/v1/relationships/{rid}", "bob")
    assert await world.listed("bob") == [(rid, "accepted")]
    assert await world.listed("bob", "?state=pending") == []
    provider_view = await world.json("GET", f"/v1/relationships/{rid}", "acme")
    assert (provider_view["state"], provider_view["acceptance"]) == ("accepted", signature)
    # A retry with the same signature answers the same. No other signature verifies (Ed25519 is deterministic).
    again = await world.json("POST", f"/v1/relationships/{rid}/acceptance", "bob", json={"signature": signature})
    assert again == accepted
    other = base64.b64encode(bytes(64)).decode()
    await world.error("POST", f"/v1/relationships/{rid}/acceptance", "bob", 422, "bad_acceptance", json={"signature": other})
    await world.error("POST", f"/v1/relationships/{rid}/decline", "bob", 409, "relationship_accepted")
    assert (await world.json("GET", f"/v1/relationships/{rid}", "bob"))["acceptance"] == signature


async def test_a_signature_by_another_key_or_over_another_entry_is_refused_and_changes_nothing(world):
    rid = await world.create()
    other_rid = await world.create()
    entry = await world.genesis_entry(rid)
    forged = [
        sign_acceptance(world.homes["carol"].keys().ed25519, rid, entry),  # another customer's key
        sign_acceptance(world.homes["acme"].keys().ed25519, rid, entry),  # the provider's key
        sign_acceptance(world.homes["bob"].keys().ed25519, other_rid, entry),  # bob's, over another id
    ]
    for signature in forged:
        body = {"signature": base64.b64encode(signature).decode()}
        err = await world.error("POST", f"/v1/relationships/{rid}/acceptance", "bob", 422, "bad_acceptance", json=body)
        assert "does not verify" in err["message"]
    await world.error("POST", f"/v1/relationships/{rid}/acceptance", "bob", 400, "malformed",
                      json={"signature": base64.b64encode(bytes(63)).decode()})
    await world.error("POST", f"/v1/relationships/{rid}/acceptance", "bob", 400, "malformed", json={})
    detail = await world.json("GET", f"/v1/relationships/{rid}", "bob")
    assert (detail["state"], detail["acceptance"], detail["decided_at"]) == ("pending", None, None)


async def test_only_the_customer_decides(world):
    rid = await world.create()
    signature = {"signature": await world.signature(rid)}
    await world.error("POST", f"/v1/relationships/{rid}/acceptance", "acme", 403, "forbidden", json=signature)
    await world.error("POST", f"/v1/relationships/{rid}/decline", "acme", 403, "forbidden")
    assert (await world.json("GET", f"/v1/relationships/{rid}", "bob"))["state"] == "pending"


async def test_a_stranger_learns_nothing_a_made_up_id_would_not_tell(world):
    rid = await world.create()
    signature = {"signature": await world.signature(rid)}
    for stranger in ("evil", "carol"):
        for method, suffix, kwargs in [
            ("GET", "", {}),
            ("POST", "/acceptance", {"json": signature}),
            ("POST", "/decline", {}),
            ("POST", "/decline", {"json": {}}),
        ]:
            real = await world.call(method, f"/v1/relationships/{rid}{suffix}", stranger, **kwargs)
            made_up = await world.call(method, f"/v1/relationships/acme:no-such-thing{suffix}", stranger, **kwargs)
            assert real[0] == 404 and real == made_up
    for suffix in ("/acceptance", "/decline"):
        assert (await world.http.post(f"/v1/relationships/{rid}{suffix}", json=signature)).status == 401  # no token
    assert (await world.json("GET", f"/v1/relationships/{rid}", "bob"))["state"] == "pending"


async def test_a_declined_relationship_takes_no_records_and_the_other_items_of_a_batch_go_in(world):
    declined_rid = await world.create()
    open_rid = await world.create()
    await world.append(declined_rid)  # before any decision: appends work
    declined = await world.json("POST", f"/v1/relationships/{declined_rid}/decline", "bob")
    assert declined["state"] == "declined" and declined["acceptance"] is None and isinstance(declined["decided_at"], int)
    # Declining again is a no-op, with or without an empty object as body.
    assert await world.json("POST", f"/v1/relationships/{declined_rid}/decline", "bob", json={}) == declined
    assert await world.listed("bob", "?state=declined") == [(declined_rid, "declined")]
    assert sorted(await world.listed("acme")) == sorted([(declined_rid, "declined"), (open_rid, "pending")])
    await world.error("POST", f"/v1/relationships/{declined_rid}/acceptance", "bob", 409, "relationship_declined",
                      json={"signature": await world.signature(declined_rid)})
    with pytest.raises(ServerError) as refused:
        await world.append(declined_rid, 1)
    assert (refused.value.http_status, refused.value.code) == (409, "relationship_declined")
    # One batch with both relationships: only the declined one's items fail.
    items = [item(await world.view(declined_rid), world.homes["acme"]), item(await world.view(open_rid), world.homes["acme"])]
    async with PacspaceClient(world.url, token("acme")) as c:
        answer = await c.append_batch(items)
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    failed, ok = answer["results"]
    assert (failed["relationship"], failed["status"], failed["error"]) == (declined_rid, "error", "relationship_declined")
    assert (ok["relationship"], ok["status"], ok["seq"]) == (open_rid, "ok", 1)
    async with PacspaceClient(world.url, token("acme")) as c:
        assert [r["seq"] for r in await c.records(declined_rid)] == [0, 1]
        assert [r["seq"] for r in await c.records(open_rid)] == [0, 1]


def item(view: RelationshipView, home: Home) -> dict[str, object]:
    """The view's next record, sealed as the client library seals it, as an item of POST /v1/records."""
    head = view.head
    assert head is not None
    body = Delta(Common(view.rid, head.next_seq, head.head, secrets.token_hex(8), now_utc()), "2026-11", *window(9), (line(9),))
    sealed: Sealed = seal(body, view.keys, home.keys().ed25519)
    return {"relationship": view.rid, "seq": sealed.seq, "tag": base64.b64encode(sealed.tag).decode(),
            "ciphertext": base64.b64encode(sealed.blob).decode()}


async def test_a_provider_appends_before_acceptance_and_after(world):
    rid = await world.create()
    first = await world.append(rid, 0)
    await world.json("POST", f"/v1/relationships/{rid}/acceptance", "bob", json={"signature": await world.signature(rid)})
    second = await world.append(rid, 1)
    assert (first["seq"], second["seq"]) == (1, 2)
    bob_view = await world.view(rid, "bob")
    assert [r.seq for r in bob_view.records] == [0, 1, 2]


def back_to_version_4(data: Path) -> None:
    """records.db as pacspace before consent wrote it: the relationships table without the consent columns."""
    conn = sqlite3.connect(data / "records.db")
    conn.execute(
        "CREATE TABLE old_relationships (id TEXT PRIMARY KEY, provider TEXT NOT NULL REFERENCES parties(name), "
        "customer TEXT NOT NULL REFERENCES parties(name), cadence TEXT NOT NULL, billing_cycle TEXT NOT NULL, "
        "created_at INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO old_relationships SELECT id, provider, customer, cadence, billing_cycle, created_at FROM relationships")
    conn.execute("DROP TABLE relationships")
    conn.execute("ALTER TABLE old_relationships RENAME TO relationships")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("log_database", [None])  # records.db's schema history; PostgreSQL's starts with consent
async def test_a_relationship_from_before_consent_is_accepted_and_its_customer_may_sign_it_once(
    aiohttp_client, tmp_path, world
):
    rid = await world.create()
    await world.append(rid)
    await world.http.close()  # stops the server
    back_to_version_4(world.data)
    restarted = await start(aiohttp_client, world.data, tmp_path, world.database)
    restarted.homes = world.homes
    detail = await restarted.json("GET", f"/v1/relationships/{rid}", "bob")
    assert (detail["state"], detail["acceptance"], detail["decided_at"]) == ("accepted", None, None)
    assert await restarted.listed("bob") == [(rid, "accepted")]
    await restarted.error("POST", f"/v1/relationships/{rid}/decline", "bob", 409, "relationship_accepted")
    await restarted.error("POST", f"/v1/relationships/{rid}/acceptance", "bob", 422, "bad_acceptance",
                          json={"signature": base64.b64encode(bytes(64)).decode()})
    signature = await restarted.signature(rid)
    signed = await restarted.json("POST", f"/v1/relationships/{rid}/acceptance", "bob", json={"signature": signature})
    assert (signed["state"], signed["acceptance"]) == ("accepted", signature) and isinstance(signed["decided_at"], int)
    other = sign_acceptance(restarted.homes["bob"].keys().ed25519, rid + "x", await restarted.genesis_entry(rid))
    await restarted.error("POST", f"/v1/relationships/{rid}/acceptance", "bob", 422, "bad_acceptance",
                          json={"signature": base64.b64encode(other).decode()})
    assert (await restarted.append(rid, 1))["seq"] == 2


async def test_accepting_waits_for_the_genesis_to_have_its_log_index(world):
    """A genesis stored but not in the log (its sequencing still under way) cannot be signed against yet."""
    from pacspace.server.context import SERVICE
    from pacspace.storage.records import Relationship

    records = world.http.app[SERVICE].records
    blob = secrets.token_bytes(200)
    rel = Relationship("acme:waiting", "acme", "bob", "daily", "monthly", 1)
    records.write_one(record_ops.Reserve(
        rel.id, [(0, secrets.token_bytes(32), hashlib.sha256(blob).digest(), blob)],
        before=record_ops.AddRelationship(rel, {"acme": b"w", "bob": b"w"}),
    ))
    signature = {"signature": base64.b64encode(bytes(64)).decode()}
    await world.error("POST", f"/v1/relationships/{rel.id}/acceptance", "bob", 409, "previous_in_flight", json=signature)
    assert (await world.json("GET", f"/v1/relationships/{rel.id}", "bob"))["state"] == "pending"
