"""The private recordation API over HTTP: auth, isolation between parties, every bad input, idempotent retries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import pytest
from helpers import new_log

from pacspace.checkpoint import open_checkpoint
from pacspace.config import ServerConfig
from pacspace.keys import PartyKeys, wrap_secret
from pacspace.note import parse_vkey
from pacspace.receipt import verify_receipt
from pacspace.records.body import GENESIS_PREV, Common, Delta, Genesis, Line, body_hash
from pacspace.records.body import PartyKeys as NamedKeys
from pacspace.records.seal import RelationshipKeys, seal
from pacspace.sequencer import SequencerConfig
from pacspace.server.app import create_app
from pacspace.server.context import SERVICE
from pacspace.datadir import open_records
from pacspace.storage.records import RecordStore

B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731


class World:
    """A server with a provider, a customer and an outsider provider, each with real keys."""

    def __init__(self, client, vkey, tmp_path, database=None):
        self.http = client
        self.vkey = parse_vkey(vkey)
        store = open_records(tmp_path, database)
        self.tokens = {}
        for name, role in [("acme", "provider"), ("bob", "customer"), ("evil", "provider"), ("carol", "customer")]:
            self.tokens[name] = f"tok-{name}"
            store.add_party(name, role, self.tokens[name], int(time.time()))
        store.close()
        self.keys = {name: PartyKeys.generate() for name in self.tokens}
        self.rkeys = RelationshipKeys.generate()

    def auth(self, who):
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def register(self, who):
        pub = self.keys[who].public
        resp = await self.http.put("/v1/me/keys", json={"x25519": B64(pub.x25519), "ed25519": B64(pub.ed25519)}, headers=self.auth(who))
        assert resp.status == 200, await resp.text()

    def named(self, who):
        j = self.keys[who].public.to_json()
        return NamedKeys(who, j["x25519"], j["ed25519"])

    def genesis(self, rid="acme:rel-1", provider="acme", customer="bob"):
        body = Genesis(Common(rid, 0, GENESIS_PREV, "g", "2026-11-01T00:00:00Z"), self.named(provider), self.named(customer))
        return seal(body, self.rkeys, self.keys[provider].ed25519)

    def delta(self, seq, prev, rid="acme:rel-1", quantity="10", provider="acme"):
        body = Delta(
            Common(rid, seq, prev, f"r{seq}", "2026-11-02T00:00:00Z"), "2026-11",
            "2026-11-02T00:00:00Z", "2026-11-02T01:00:00Z", (Line("llm.requests", "request", quantity, {}),),
        )
        return seal(body, self.rkeys, self.keys[provider].ed25519)

    async def create(self, rid="acme:rel-1", provider="acme", customer="bob"):
        if rid != "acme:rel-1":
            self.rkeys = RelationshipKeys.generate()
        g = self.genesis(rid, provider, customer)
        body = {
            "relationship": rid, "customer": customer, "cadence": "hourly",
            "wraps": {
                "provider": B64(wrap_secret(self.rkeys.secret, self.keys[provider].public, rid, 0)),
                "customer": B64(wrap_secret(self.rkeys.secret, self.keys[customer].public, rid, 0)),
            },
            "genesis": {"seq": 0, "tag": B64(g.tag), "ciphertext": B64(g.blob)},
        }
        resp = await self.http.post("/v1/relationships", json=body, headers=self.auth(provider))
        self.last_create = body
        return resp, g

    async def post(self, sealed, rid="acme:rel-1", who="acme", seq=None):
        body = {"seq": sealed.seq if seq is None else seq, "tag": B64(sealed.tag), "ciphertext": B64(sealed.blob)}
        return await self.http.post(f"/v1/relationships/{rid}/records", json=body, headers=self.auth(who))


@pytest.fixture
async def world(aiohttp_client, tmp_path, log_database):
    """The records API on each backend of the log's tables (log_database: SQLite, then PostgreSQL)."""
    vkey = new_log(tmp_path, database=log_database)
    app = create_app(ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.01),
                                  database=log_database))
    client = await aiohttp_client(app)
    w = World(client, vkey, tmp_path, log_database)
    w.app = app
    w.database, w.data_dir = log_database, tmp_path
    for who in w.tokens:
        await w.register(who)
    return w


async def error(resp, status, code):
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"] == code, body
    assert body["message"]
    return body


async def test_create_append_read_and_verify_receipts(world):
    resp, g = await world.create()
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["relationship"] == "acme:rel-1" and created["receipt"]["seq"] == 0
    d1 = world.delta(1, body_hash(g.body))
    resp = await world.post(d1)
    assert resp.status == 201
    receipt = await resp.json()
    assert receipt["seq"] == 1 and receipt["index"] == 1
    verified = verify_receipt(receipt["proof"], world.vkey)
    assert verified.entry == d1.entry and len(verified.entry) == 65
    assert open_checkpoint(receipt["checkpoint"].encode(), world.vkey).size == 2
    # Retrying the same record answers the same receipt with 200 and appends nothing.
    again = await world.post(d1)
    assert again.status == 200
    assert (await again.json())["index"] == 1
    for who in ("acme", "bob"):
        resp = await world.http.get("/v1/relationships/acme:rel-1/records", headers=world.auth(who))
        rows = (await resp.json())["records"]
        assert [r["seq"] for r in rows] == [0, 1]
        assert base64.b64decode(rows[1]["ciphertext"]) == d1.blob
    resp = await world.http.get("/v1/relationships/acme:rel-1/records?after_seq=0&limit=1", headers=world.auth("bob"))
    assert [r["seq"] for r in (await resp.json())["records"]] == [1]
    info = await (await world.http.get("/v1/relationships/acme:rel-1", headers=world.auth("bob"))).json()
    assert info["customer_keys"]["fingerprint"] == world.keys["bob"].public.fingerprint()
    assert info["wrap"] and info["provider"] == "acme"


async def test_the_server_never_sees_plaintext_or_keys(world):
    resp, g = await world.create()
    d1 = world.delta(1, body_hash(g.body), quantity="987654321")
    await world.post(d1)
    everything = b"".join(p.read_bytes() for p in world.data_dir.rglob("*") if p.is_file() and p.name != "log.key")
    if world.database is not None:  # and every row of every table the log keeps in PostgreSQL
        import psycopg

        with psycopg.connect(world.database) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            assert "bundles" in tables
            for table in tables:
                for row in conn.execute(f"SELECT * FROM {table}"):
                    everything += b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    assert b"987654321" not in everything
    assert b"llm.requests" not in everything
    assert world.rkeys.secret not in everything
    assert world.keys["acme"].ed25519.private_bytes_raw() not in everything


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic dG9rLWFjbWU=", "Bearer ", "tok-acme"])
async def test_missing_or_wrong_token_is_401(world, header):
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [("GET", "/v1/relationships"), ("GET", "/v1/me"), ("POST", "/v1/records"), ("GET", "/v1/relationships/acme:rel-1/records")]:
        resp = await world.http.request(method, path, headers=headers)
        await error(resp, 401, "unauthorized")
        assert "Bearer" in resp.headers["WWW-Authenticate"]


async def test_revoked_token_stops_at_once(world):
    resp, _ = await world.create()
    assert (await world.http.get("/v1/relationships", headers=world.auth("bob"))).status == 200
    store = world.app[SERVICE].records
    store.revoke_party("bob", int(time.time()))
    await error(await world.http.get("/v1/relationships", headers=world.auth("bob")), 401, "unauthorized")


async def test_other_parties_relationships_are_invisible(world):
    resp, g = await world.create()
    assert resp.status == 201
    nonexistent = await world.http.get("/v1/relationships/acme:rel-nope", headers=world.auth("evil"))
    foreign = await world.http.get("/v1/relationships/acme:rel-1", headers=world.auth("evil"))
    assert foreign.status == nonexistent.status == 404
    assert (await foreign.json()) == (await nonexistent.json())
    for who in ("evil", "carol"):
        assert (await (await world.http.get("/v1/relationships", headers=world.auth(who))).json())["relationships"] == []
        await error(await world.http.get("/v1/relationships/acme:rel-1/records", headers=world.auth(who)), 404, "not_found")
        await error(await world.post(world.delta(1, body_hash(g.body)), who=who), 404, "not_found")


async def test_auth_matrix(world):
    """Each role against each private endpoint."""
    resp, g = await world.create()
    d1 = world.delta(1, body_hash(g.body))
    expect = {
        # (who, method, path): status
        ("acme", "GET", "/v1/relationships/acme:rel-1"): 200,
        ("bob", "GET", "/v1/relationships/acme:rel-1"): 200,
        ("evil", "GET", "/v1/relationships/acme:rel-1"): 404,
        ("carol", "GET", "/v1/relationships/acme:rel-1"): 404,
        ("acme", "GET", "/v1/parties/bob/keys"): 200,
        ("bob", "GET", "/v1/parties/acme/keys"): 404,
        ("carol", "GET", "/v1/parties/bob/keys"): 404,
        ("evil", "GET", "/v1/parties/acme/keys"): 404,
        ("bob", "GET", "/v1/me"): 200,
    }
    for (who, method, path), status in expect.items():
        resp = await world.http.request(method, path, headers=world.auth(who))
        assert resp.status == status, (who, path, await resp.text())
    await error(await world.post(d1, who="bob"), 403, "forbidden")
    resp = await world.http.post("/v1/relationships", json={}, headers=world.auth("bob"))
    await error(resp, 403, "forbidden")
    assert (await world.post(d1, who="acme")).status == 201


async def _next_seq(world):
    rows = (await (await world.http.get("/v1/relationships/acme:rel-1/records", headers=world.auth("acme"))).json())["records"]
    return len(rows)


@pytest.mark.parametrize(
    "body,status,code",
    [
        (b"not json", 400, "malformed"),
        (b"[1, 2]", 400, "malformed"),
        (b'{"seq": "1", "tag": "AA==", "ciphertext": "AA=="}', 400, "malformed"),
        (b'{"seq": true, "tag": "AA==", "ciphertext": "AA=="}', 400, "malformed"),
        (b'{"seq": 1, "tag": "!!!", "ciphertext": "AA=="}', 400, "malformed"),
        (b'{"seq": 1, "tag": "AAAA", "ciphertext": "AA=="}', 400, "malformed"),
        (b'{"seq": 1}', 400, "malformed"),
        (b'{"seq": -1, "tag": "AA==", "ciphertext": "AA=="}', 400, "malformed"),
    ],
)
async def test_bad_bodies_get_4xx_and_change_nothing(world, body, status, code):
    await world.create()
    resp = await world.http.post("/v1/relationships/acme:rel-1/records", data=body, headers={**world.auth("acme"), "Content-Type": "application/json"})
    await error(resp, status, code)
    assert await _next_seq(world) == 1


async def test_oversized_record_is_413(world):
    await world.create()
    big = {"seq": 1, "tag": B64(bytes(32)), "ciphertext": B64(bytes(70_000))}
    await error(await world.http.post("/v1/relationships/acme:rel-1/records", json=big, headers=world.auth("acme")), 413, "too_large")
    huge = b"x" * (300 * 1024)
    await error(await world.http.post("/v1/relationships/acme:rel-1/records", data=huge, headers=world.auth("acme")), 413, "too_large")
    assert await _next_seq(world) == 1


async def test_seq_gaps_duplicates_and_conflicts_are_409(world):
    _, g = await world.create()
    d1 = world.delta(1, body_hash(g.body))
    gap = world.delta(3, body_hash(d1.body))
    body = await error(await world.post(gap), 409, "seq_conflict")
    assert body["expected_seq"] == 1
    assert (await world.post(d1)).status == 201
    other = world.delta(1, body_hash(g.body), quantity="11")
    await error(await world.post(other), 409, "record_conflict")
    # A new seq reusing a committed tag.
    d2 = world.delta(2, body_hash(d1.body))
    forged = {"seq": 2, "tag": B64(d1.tag), "ciphertext": B64(d2.blob)}
    await error(await world.http.post("/v1/relationships/acme:rel-1/records", json=forged, headers=world.auth("acme")), 409, "duplicate_tag")
    assert await _next_seq(world) == 2
    assert (await world.post(d2)).status == 201


async def test_relationship_creation_errors(world):
    resp, _ = await world.create()
    assert resp.status == 201
    first = await resp.json()
    # Retrying the very same creation answers the same receipt; another genesis for the id is a conflict.
    retry = await world.http.post("/v1/relationships", json=world.last_create, headers=world.auth("acme"))
    assert retry.status == 200
    assert (await retry.json())["receipt"]["index"] == first["receipt"]["index"]
    again, _ = await world.create()
    await error(again, 409, "record_conflict")
    # Ids are namespaced by provider: another provider cannot even name acme's.
    resp = await world.http.post("/v1/relationships", json={**world.last_create, "relationship": "acme:rel-9"}, headers=world.auth("evil"))
    await error(resp, 403, "forbidden")
    resp = await world.http.post("/v1/relationships", json={**world.last_create, "relationship": "nobody:rel-9"},
                                 headers=world.auth("evil"))
    await error(resp, 403, "forbidden")  # the same whether the namespace is a party's or nobody's
    # A genesis that fails (its tag is already in the log) leaves no relationship behind.
    resp, _ = await world.create("acme:rel-3")
    assert resp.status == 201
    world.rkeys_3 = world.rkeys
    g = world.genesis("acme:rel-4")
    body = {"relationship": "acme:rel-4", "customer": "bob", "wraps": {"provider": "AA==", "customer": "AA=="},
            "genesis": {"seq": 0, "tag": B64(g.tag), "ciphertext": B64(g.blob)}}
    await error(await world.http.post("/v1/relationships", json=body, headers=world.auth("acme")), 409, "duplicate_tag")
    await error(await world.http.get("/v1/relationships/acme:rel-4", headers=world.auth("acme")), 404, "not_found")
    listed = (await (await world.http.get("/v1/relationships", headers=world.auth("acme"))).json())["relationships"]
    assert [r["relationship"] for r in listed] == ["acme:rel-1", "acme:rel-3"]
    resp = await world.http.post("/v1/relationships", json={"relationship": "acme:rel-2", "customer": "nobody"}, headers=world.auth("acme"))
    await error(resp, 404, "not_found")
    resp = await world.http.post("/v1/relationships", json={"relationship": "bad id!", "customer": "bob"}, headers=world.auth("acme"))
    await error(resp, 400, "malformed")


async def test_batch_endpoint_is_all_or_nothing_per_relationship(world):
    _, g1 = await world.create("acme:rel-1")
    _, g2 = await world.create("acme:rel-2", customer="carol")
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    d2 = world.delta(2, body_hash(d1.body), rid="acme:rel-1")
    bad = world.delta(5, body_hash(g2.body), rid="acme:rel-2")
    items = [
        {"relationship": "acme:rel-1", "seq": 1, "tag": B64(d1.tag), "ciphertext": B64(d1.blob)},
        {"relationship": "acme:rel-1", "seq": 2, "tag": B64(d2.tag), "ciphertext": B64(d2.blob)},
        {"relationship": "acme:rel-2", "seq": 5, "tag": B64(bad.tag), "ciphertext": B64(bad.blob)},
        {"relationship": "acme:rel-9", "seq": 1, "tag": B64(bad.tag), "ciphertext": B64(bad.blob)},
        {"relationship": "acme:rel-1", "seq": "x"},
    ]
    resp = await world.http.post("/v1/records", json={"records": items}, headers=world.auth("acme"))
    assert resp.status == 200
    body = await resp.json()
    statuses = [(r["status"], r.get("error")) for r in body["results"]]
    assert statuses == [("ok", None), ("ok", None), ("error", "seq_conflict"), ("error", "not_found"), ("error", "malformed")]
    assert body["accepted"] == 2 and body["results"][2]["expected_seq"] == 1
    checkpoint = open_checkpoint(body["checkpoint"].encode(), world.vkey)
    for r, sealed in zip(body["results"][:2], (d1, d2)):
        assert base64.b64decode(r["leaf_hash"]) == hashlib.sha256(b"\x00" + sealed.entry).digest()
        assert r["index"] < checkpoint.size
    # Each relationship's group is all or nothing: a bad record sinks its whole group only.
    d3 = world.delta(3, body_hash(d2.body), rid="acme:rel-1")
    d5 = world.delta(5, body_hash(d3.body), rid="acme:rel-1")
    items = [
        {"relationship": "acme:rel-1", "seq": 3, "tag": B64(d3.tag), "ciphertext": B64(d3.blob)},
        {"relationship": "acme:rel-1", "seq": 5, "tag": B64(d5.tag), "ciphertext": B64(d5.blob)},
    ]
    body = await (await world.http.post("/v1/records", json={"records": items}, headers=world.auth("acme"))).json()
    assert [r["status"] for r in body["results"]] == ["error", "error"]
    assert await _next_seq(world) == 3
    await error(await world.http.post("/v1/records", json={"records": []}, headers=world.auth("acme")), 400, "malformed")


async def test_a_repeated_tag_in_a_batch_refuses_only_its_relationships_records(world):
    """Tags are unique in the log: a batch record repeating a committed tag, or an earlier record's of the
    same batch, sinks its relationship's group; the other groups are sequenced, and nothing refused is kept."""
    import os

    _, g1 = await world.create("acme:rel-1")
    for rid in ("acme:rel-2", "acme:rel-3", "acme:rel-4"):
        await world.create(rid, customer="carol")
    d1 = world.delta(1, body_hash(g1.body))
    assert (await world.post(d1)).status == 201
    await world.app[SERVICE].appender.settled()
    d2 = world.delta(2, body_hash(d1.body))
    # The server never opens a record: any blob serves, under tags of our choosing.
    blob = B64(d2.blob)
    tags = {name: os.urandom(32) for name in ("2a", "2b", "3")}

    def item(rid, seq, tag):
        return {"relationship": rid, "seq": seq, "tag": B64(tag), "ciphertext": blob}

    items = [
        item("acme:rel-2", 1, tags["2a"]),
        item("acme:rel-2", 2, d1.tag),  # the tag of a committed record
        {"relationship": "acme:rel-1", "seq": 2, "tag": B64(d2.tag), "ciphertext": blob},
        item("acme:rel-3", 1, tags["3"]),
        item("acme:rel-4", 1, tags["3"]),  # repeats the one before
    ]
    body = await (await world.http.post("/v1/records", json={"records": items}, headers=world.auth("acme"))).json()
    statuses = [(r["relationship"], r["status"], r.get("error")) for r in body["results"]]
    assert statuses == [
        ("acme:rel-2", "error", "duplicate_tag"), ("acme:rel-2", "error", "duplicate_tag"),
        ("acme:rel-1", "ok", None), ("acme:rel-3", "ok", None), ("acme:rel-4", "error", "duplicate_tag"),
    ]  # fmt: skip
    assert body["accepted"] == 2
    service = world.app[SERVICE]
    await service.appender.settled()
    assert service.link.tags.claimed == 0 and service.records.unsettled() == []
    for rid in ("acme:rel-2", "acme:rel-4"):
        rows = (await (await world.http.get(f"/v1/relationships/{rid}/records", headers=world.auth("acme"))).json())["records"]
        assert [r["seq"] for r in rows] == [0]
    # The refused relationships' records go in once they are sent with tags of their own.
    retry = [item("acme:rel-2", 1, tags["2a"]), item("acme:rel-2", 2, tags["2b"]), item("acme:rel-4", 1, os.urandom(32))]
    body = await (await world.http.post("/v1/records", json={"records": retry}, headers=world.auth("acme"))).json()
    assert [r["status"] for r in body["results"]] == ["ok", "ok", "ok"]


async def test_records_whose_tags_cannot_be_checked_are_refused_and_forgotten(world):
    """The tag index missed a committed batch (its flag says so; on PostgreSQL, its table is gone for a while):
    admission refuses with 503, nothing is kept, and the same record goes in once the index can answer again."""
    _, g = await world.create()
    d1 = world.delta(1, body_hash(g.body))
    service = world.app[SERVICE]

    def tag_index(working: bool) -> None:
        if world.database is None:
            service.store.tags.broken = not working
        else:
            import psycopg

            with psycopg.connect(world.database, autocommit=True) as conn:
                names = ("tag_index_away", "tag_index") if working else ("tag_index", "tag_index_away")
                conn.execute(f"ALTER TABLE {names[0]} RENAME TO {names[1]}")

    tag_index(False)
    await error(await world.post(d1), 503, "admission_failed")
    assert service.records.unsettled() == [] and service.link.tags.claimed == 0
    tag_index(True)
    assert (await world.post(d1)).status == 201


async def test_a_lost_tag_index_is_rebuilt_from_the_log_at_start(aiohttp_client, tmp_path):
    vkey = new_log(tmp_path)
    config = ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.01))
    client = await aiohttp_client(create_app(config))
    world = World(client, vkey, tmp_path)
    for who in world.tokens:
        await world.register(who)
    _, g = await world.create()
    d1 = world.delta(1, body_hash(g.body))
    assert (await world.post(d1)).status == 201
    await client.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"tags.db{suffix}").unlink(missing_ok=True)
    world.http = await aiohttp_client(create_app(config))
    d2 = world.delta(2, body_hash(d1.body))
    forged = {"seq": 2, "tag": B64(d1.tag), "ciphertext": B64(d2.blob)}
    resp = await world.http.post("/v1/relationships/acme:rel-1/records", json=forged, headers=world.auth("acme"))
    await error(resp, 409, "duplicate_tag")
    assert (await world.post(d2)).status == 201


async def test_receipt_leaf_matches_the_public_entry(world):
    _, g = await world.create()
    d1 = world.delta(1, body_hash(g.body))
    receipt = await (await world.post(d1)).json()
    assert base64.b64decode(receipt["leaf_hash"]) == hashlib.sha256(b"\x00" + d1.entry).digest()


async def test_an_acknowledged_record_whose_settle_was_lost_is_settled_at_start(world, aiohttp_client, tmp_path):
    """Receipts do not wait for the index to reach records.db: if the process dies first, start-up settles it."""
    resp, g = await world.create()
    assert resp.status == 201
    service = world.app[SERVICE]
    service.link.settle_later = lambda ops: None  # the process "dies" before this write: it never happens
    d1 = world.delta(1, body_hash(g.body))
    resp = await world.post(d1)
    assert resp.status == 201
    receipt = await resp.json()
    assert [r.seq for r in service.records.unsettled()] == [1]
    await world.http.close()
    app = create_app(ServerConfig(data_dir=tmp_path, sequencer=SequencerConfig(pool_interval=0.01), database=world.database))
    client = await aiohttp_client(app)
    rows = (await (await client.get("/v1/relationships/acme:rel-1/records", headers=world.auth("bob"))).json())["records"]
    assert [(r["seq"], r["index"]) for r in rows] == [(0, 0), (1, receipt["index"])]
    assert base64.b64decode(rows[1]["ciphertext"]) == d1.blob


def test_records_db_from_a_newer_pacspace_is_refused(tmp_path):
    import sqlite3

    from pacspace.errors import UntrustedState

    from pacspace.storage.records_schema import SCHEMA_VERSION

    RecordStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "records.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(UntrustedState, match="schema version 7"):
        RecordStore(tmp_path)
    with pytest.raises(UntrustedState, match="schema version 7"):
        RecordStore(tmp_path, readonly=True)


async def test_a_settle_that_fails_is_retried_until_the_record_reads_back(world, caplog):
    """The records' tables refuse the settle write (another writer holds them past the lock's timeout): the receipt is
    already out, so the server keeps retrying; the record then reads back, and a retry gets its receipt."""
    import sqlite3
    import threading

    resp, g = await world.create()
    assert resp.status == 201
    service = world.app[SERVICE]
    real_submit = service.sequencer.submit_many
    released = threading.Event()

    if world.database is None:
        # The store's busy timeout, 10 s, shortened to 0.2 s so that the blocker below outlasts it in a second.
        service.records._conn.execute("PRAGMA busy_timeout = 200")
    else:
        service.records._write.execute("SET lock_timeout = '200ms'")

    def take_the_write_lock():
        if world.database is None:
            blocker = sqlite3.connect(service.records.path, isolation_level=None, check_same_thread=False)
            blocker.execute("BEGIN IMMEDIATE")
            return lambda: (blocker.execute("ROLLBACK"), blocker.close())
        import psycopg

        from pacspace.storage.pg_records import RECORDS_LOCK

        blocker = psycopg.connect(world.database, autocommit=True)
        blocker.execute("SELECT pg_advisory_lock(%s)", (RECORDS_LOCK,))
        return blocker.close

    async def submit_then_lock(entries):
        done = await real_submit(entries)
        # Another writer takes the records' write lock right after the commit and holds it past the timeout.
        undo = take_the_write_lock()

        def release():
            released.wait(1.0)
            undo()

        threading.Thread(target=release, daemon=True).start()
        return done

    service.sequencer.submit_many = submit_then_lock
    d1 = world.delta(1, body_hash(g.body))
    resp = await world.post(d1)
    assert resp.status == 201  # answered at once; the settle waits behind the lock
    receipt = await resp.json()
    service.sequencer.submit_many = real_submit
    rows = (await (await world.http.get("/v1/relationships/acme:rel-1/records", headers=world.auth("bob"))).json())["records"]
    assert [(r["seq"], r["index"]) for r in rows] == [(0, 0), (1, receipt["index"])]
    again = await world.post(d1)
    assert again.status == 200 and (await again.json())["index"] == receipt["index"]
    assert "settling records failed, retrying" in caplog.text  # the first write really failed


async def test_a_failing_repair_of_one_relationship_does_not_strand_the_others_of_a_batch(world):
    """One relationship has a row whose settle was lost, and looking it up in the log fails (a simulated
    fault): the batch still commits the other relationship's record, and only the stuck one is refused."""
    r1, g1 = await world.create("acme:rel-1")
    assert r1.status == 201
    service = world.app[SERVICE]
    keep = service.link.settle_later
    service.link.settle_later = lambda ops: None  # rel-1's seq 1 settle is lost
    d1 = world.delta(1, body_hash(g1.body), rid="acme:rel-1")
    assert (await world.post(d1, rid="acme:rel-1")).status == 201
    service.link.settle_later = keep
    d2 = world.delta(2, body_hash(d1.body), rid="acme:rel-1")
    r2, g2 = await world.create("acme:rel-2")  # its own keys from here on
    assert r2.status == 201

    async def broken(hashes, size):  # type: ignore[no-untyped-def]
        raise RuntimeError("the leaf index is unreachable")

    service.link.find_leaves = broken
    e1 = world.delta(1, body_hash(g2.body), rid="acme:rel-2")
    items = [{"relationship": rid, "seq": s.seq, "tag": B64(s.tag), "ciphertext": B64(s.blob)}
             for rid, s in (("acme:rel-1", d2), ("acme:rel-2", e1))]
    resp = await world.http.post("/v1/records", json={"records": items}, headers=world.auth("acme"))
    assert resp.status == 200, await resp.text()
    results = (await resp.json())["results"]
    assert results[0]["status"] == "error" and results[0]["error"] == "previous_in_flight"
    assert results[1]["status"] == "ok", results
    await service.appender.settled()
    assert [r.relationship for r in service.records.unsettled()] == ["acme:rel-1"]
    del service.link.find_leaves  # the fault clears: a retry repairs rel-1 and commits its seq 2
    resp = await world.post(d2, rid="acme:rel-1")
    assert resp.status == 201, await resp.text()


async def test_bad_batch_items_beside_honest_writers_cost_only_their_own_requests(world):
    """One provider floods bad batch items of several shapes (the first is issue 17's: an item of its own
    relationship with an empty tag and an object for a ciphertext) while another provider appends honestly
    through both routes: every honest request succeeds and every honest record is committed."""
    _, g = await world.create("acme:rel-1")
    heads = {}
    for n in range(3):
        rid = f"evil:rel-{n}"
        resp, genesis = await world.create(rid, provider="evil", customer="carol")
        assert resp.status == 201, await resp.text()
        heads[rid] = (world.rkeys, genesis)
    own = "acme:rel-1"
    shapes = [
        {"relationship": own, "seq": 0, "tag": "", "ciphertext": {}},
        {"relationship": own, "seq": 1, "tag": B64(bytes(32)), "ciphertext": []},
        {"relationship": own, "seq": "x"},
        {"relationship": own},
        {"relationship": own, "seq": 1, "tag": B64(bytes(32)), "ciphertext": "AA=="},
        {"relationship": own, "seq": 2**70, "tag": B64(bytes(32)), "ciphertext": B64(bytes(200))},
        {"relationship": 5, "seq": 1},
        {"relationship": "acme:nope", "seq": 1, "tag": B64(bytes(32)), "ciphertext": B64(bytes(200))},
        [], "x", None, 7,
    ]

    honest_done = asyncio.Event()

    async def flood():  # twice through the shapes, then on while the honest writers write
        statuses: list[int] = []
        while len(statuses) < 2 * len(shapes) or not honest_done.is_set():
            for shape in shapes:
                resp = await world.http.post("/v1/records", json={"records": [shape]}, headers=world.auth("acme"))
                statuses.append(resp.status)
                await resp.read()
        return statuses

    async def honest(rid):
        world.rkeys, prev = heads[rid]
        rkeys, statuses, prev_body = world.rkeys, [], prev.body
        for seq in range(1, 16):
            world.rkeys = rkeys
            sealed = world.delta(seq, body_hash(prev_body), rid=rid, provider="evil")
            if seq % 2:
                resp = await world.post(sealed, rid=rid, who="evil")
            else:
                item = {"relationship": rid, "seq": seq, "tag": B64(sealed.tag), "ciphertext": B64(sealed.blob)}
                resp = await world.http.post("/v1/records", json={"records": [item]}, headers=world.auth("evil"))
                body = await resp.json()
                assert body["accepted"] == 1, body
            statuses.append(resp.status)
            prev_body = sealed.body
        return statuses

    async def all_honest():
        try:
            return await asyncio.gather(*(honest(rid) for rid in heads))
        finally:
            honest_done.set()

    floods, honests = await asyncio.gather(asyncio.gather(*(flood() for _ in range(4))), all_honest())
    results = [*floods, *honests]
    bad, good = [s for r in results[:4] for s in r], [s for r in results[4:] for s in r]
    assert all(s < 500 for s in bad), sorted(set(bad))
    assert len([s for s in bad if s != 429]) >= 4 * 2 * len(shapes), "the flood was refused before its items were read"
    assert good == [201 if k % 2 else 200 for _ in heads for k in range(1, 16)]
    for rid in heads:
        rows = (await (await world.http.get(f"/v1/relationships/{rid}/records", headers=world.auth("carol"))).json())["records"]
        assert [r["seq"] for r in rows] == list(range(16))
