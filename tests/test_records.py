"""Sealed records: canonical bodies, the key schedule, sealing round trips, tamper detection, chain rules."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from pacspace.keys import KeyUnusable, PartyKeys, PublicKeys, unwrap_secret, wrap_secret
from pacspace.records import canonical
from pacspace.records.body import (
    GENESIS_PREV,
    Close,
    Common,
    Delta,
    Genesis,
    InvalidBody,
    Line,
    PartyKeys as NamedKeys,
    body_hash,
    canonical_decimal,
    decode_body,
    encode_body,
    totals,
)
from pacspace.records.chain import ChainError, check_chain, check_close
from pacspace.records.seal import (
    ENTRY_SIZE,
    RelationshipKeys,
    SealError,
    open_record,
    open_with_record_key,
    seal,
)

RID = "rel-0001"
PROVIDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEYS = RelationshipKeys(bytes(range(32, 64)))


def named(name: str) -> NamedKeys:
    return NamedKeys(name, "eA==" * 11, "ZQ==" * 11)


def genesis() -> Genesis:
    return Genesis(
        Common(RID, 0, GENESIS_PREV, "r0", "2026-11-01T00:00:00Z"), named("provider"), named("customer"), "hourly"
    )


def delta(seq: int, prev: str, quantity: str = "12.5", period: str = "2026-11", **dims: str) -> Delta:
    return Delta(
        Common(RID, seq, prev, f"r{seq}", "2026-11-02T00:00:00Z"),
        period=period,
        window_start="2026-11-02T00:00:00Z",
        window_end="2026-11-02T01:00:00Z",
        lines=(Line("llm.output.visible_tokens", "token", quantity, dict(dims) or {"model": "m-1"}, 3),),
    )


def chain(n: int):
    records = [seal(genesis(), KEYS, PROVIDER)]
    for seq in range(1, n):
        records.append(seal(delta(seq, body_hash(records[-1].body), str(seq)), KEYS, PROVIDER))
    return records


def opened(records):
    return [open_record(r.seq, r.tag, r.blob, KEYS, PROVIDER.public_key()) for r in records]


def test_canonical_json_round_trip_and_strictness():
    value = {"b": ["x", {"d": None, "c": True}], "a": "é"}
    data = canonical.encode(value)
    assert data == '{"a":"é","b":["x",{"c":true,"d":null}]}'.encode()
    assert canonical.decode(data) == value
    for bad in [b'{"a":1}', b'{"a":1.5}', b'{ "a":"x"}', b'{"b":"x","a":"y"}', b'{"a":"x","a":"y"}', b"\xff", b"[", b'"\\u00e9"']:
        with pytest.raises(canonical.NotCanonical):
            canonical.decode(bad)
    with pytest.raises(canonical.NotCanonical):
        canonical.encode({"a": 1})


@pytest.mark.parametrize(
    "raw,expected", [("1.50", "1.5"), ("0100", "100"), ("-0", "0"), ("1E+3", "1000"), ("0.000", "0"), ("-2.50", "-2.5")]
)
def test_canonical_decimals(raw, expected):
    assert canonical_decimal(raw) == expected


def test_every_kind_round_trips_byte_exact():
    g = genesis()
    d = delta(1, body_hash(encode_body(g)))
    c = Delta(d.common.__class__(RID, 2, body_hash(encode_body(d)), "r2", "2026-11-03T00:00:00Z"), d.period,
              d.window_start, d.window_end, (Line("llm.output.visible_tokens", "token", "-2", {"model": "m-1"}),), corrects=1)
    close = Close(Common(RID, 3, body_hash(encode_body(c)), "r3", "2026-12-01T00:00:00Z"), "2026-11", 1, 2, 2,
                  body_hash(encode_body(c)), totals([d, c]))
    for body in (g, d, c, close):
        data = encode_body(body)
        assert decode_body(data) == body
        assert encode_body(decode_body(data)) == data
    assert close.totals[0].quantity == "10.5"
    assert decode_body(encode_body(c)).kind == "correction"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(seq="01"),
        lambda o: o.update(prev="00"),
        lambda o: o.update(extra="x"),
        lambda o: o.pop("record_id"),
        lambda o: o.update(created_at="2026-11-02 00:00:00"),
        lambda o: o["lines"][0].update(quantity="1.50"),
        lambda o: o["lines"][0].update(quantity="1e3"),
        lambda o: o.update(schema="pacspace.usage_delta/v2"),
        lambda o: o.update(kind="close"),
        lambda o: o.update(lines=[]),
        lambda o: o.update(period="2026-13"),
        lambda o: o["window"].update(end="2026-11-01T00:00:00Z"),
    ],
)
def test_bodies_that_break_the_schema_are_refused(mutate):
    obj = canonical.decode(encode_body(delta(1, "a" * 64)))
    mutate(obj)
    with pytest.raises((InvalidBody, canonical.NotCanonical)):
        decode_body(canonical.encode(obj))


def test_seal_open_round_trip_and_public_entry():
    records = chain(3)
    for sealed, got in zip(records, opened(records)):
        assert got.encoded == sealed.body
        assert len(sealed.entry) == ENTRY_SIZE and sealed.entry[0] == 1
        assert sealed.entry[1:33] == sealed.tag and sealed.entry[33:] == hashlib.sha256(sealed.blob).digest()
        # The blob is padded to a bucket: its size says nothing finer than the bucket.
        assert (len(sealed.blob) - 61) in (256, 512, 1024, 2048)
    check_chain(opened(records))


def test_key_schedule_is_label_separated_and_matches_its_definition():
    tag_key = KEYS.tag_key
    assert KEYS.tag(5) == hmac.new(tag_key, b"pacspace/v1 tag" + (5).to_bytes(8, "big"), hashlib.sha256).digest()
    keys = {KEYS.tag_key, KEYS.record_key(0), KEYS.record_key(1), RelationshipKeys(KEYS.secret, 1).record_key(1)}
    assert len(keys) == 4
    assert len({KEYS.tag(i) for i in range(100)}) == 100


def test_same_body_sealed_twice_never_reuses_a_nonce():
    a, b = seal(genesis(), KEYS, PROVIDER), seal(genesis(), KEYS, PROVIDER)
    assert a.blob[1:13] != b.blob[1:13] and a.tag == b.tag


@pytest.mark.parametrize("where", ["version", "nonce", "commitment", "ciphertext", "gcm_tag"])
def test_any_flipped_blob_byte_is_detected(where):
    sealed = seal(delta(1, "a" * 64), KEYS, PROVIDER)
    at = {"version": 0, "nonce": 5, "commitment": 20, "ciphertext": 60, "gcm_tag": len(sealed.blob) - 1}[where]
    blob = bytearray(sealed.blob)
    blob[at] ^= 1
    with pytest.raises(SealError):
        open_record(1, sealed.tag, bytes(blob), KEYS, PROVIDER.public_key())


def test_wrong_tag_wrong_seq_wrong_key_wrong_signer_are_detected():
    sealed = seal(delta(1, "a" * 64), KEYS, PROVIDER)
    pub = PROVIDER.public_key()
    bad_tag = bytes([sealed.tag[0] ^ 1]) + sealed.tag[1:]
    with pytest.raises(SealError, match="tag"):
        open_record(1, bad_tag, sealed.blob, KEYS, pub)
    with pytest.raises(SealError):
        open_with_record_key(1, bad_tag, sealed.blob, KEYS.record_key(1), pub)
    with pytest.raises(SealError):
        open_record(2, KEYS.tag(2), sealed.blob, KEYS, pub)
    with pytest.raises(SealError, match="tag"):
        open_record(1, sealed.tag, sealed.blob, RelationshipKeys(bytes(32)), pub)
    with pytest.raises(SealError, match="commitment"):
        open_with_record_key(1, sealed.tag, sealed.blob, RelationshipKeys(bytes(32)).record_key(1), pub)
    with pytest.raises(SealError, match="signature"):
        open_record(1, sealed.tag, sealed.blob, KEYS, Ed25519PrivateKey.generate().public_key())


def test_a_signature_over_other_bytes_is_detected():
    """A provider key that signed something else cannot stand in: the signature covers the exact body."""
    body = delta(1, "a" * 64)
    sealed = seal(body, KEYS, PROVIDER)
    other = seal(delta(1, "a" * 64, "99"), KEYS, PROVIDER)
    got = open_record(1, sealed.tag, sealed.blob, KEYS, PROVIDER.public_key())
    assert got.signature != open_record(1, other.tag, other.blob, KEYS, PROVIDER.public_key()).signature


def test_one_record_key_discloses_one_record_only():
    records = chain(3)
    k1 = KEYS.record_key(1)
    got = open_with_record_key(1, records[1].tag, records[1].blob, k1, PROVIDER.public_key())
    assert got.body.common.seq == 1
    with pytest.raises(SealError):
        open_with_record_key(2, records[2].tag, records[2].blob, k1, PROVIDER.public_key())


def test_chain_rules_catch_gaps_forks_reordering_and_second_genesis():
    records = opened(chain(4))
    with pytest.raises(ChainError, match="gap"):
        check_chain([records[0], records[1], records[3]])
    with pytest.raises(ChainError, match="gap"):
        check_chain([records[0], records[2], records[1]])
    with pytest.raises(ChainError, match="genesis"):
        check_chain(records[1:])
    fork = opened([seal(delta(2, "b" * 64), KEYS, PROVIDER)])[0]
    with pytest.raises(ChainError, match="fork"):
        check_chain([records[0], records[1], fork])


def test_close_must_cover_exactly_and_add_up():
    records = opened(chain(4))
    deltas = [r.body for r in records[1:]]
    head = body_hash(records[3].encoded)
    good = Close(Common(RID, 4, head, "c", "2026-12-01T00:00:00Z"), "2026-11", 1, 3, 3, head, totals(deltas))
    check_close(records, good)
    assert good.totals[0].quantity == "6"
    for bad in [
        Close(good.common, "2026-11", 1, 3, 2, head, totals(deltas)),
        Close(good.common, "2026-11", 1, 3, 3, head, totals(deltas[:2])),
        Close(good.common, "2026-11", 1, 2, 2, head, totals(deltas[:2])),
        Close(good.common, "2026-10", 1, 3, 3, head, totals(deltas)),
    ]:
        with pytest.raises(ChainError):
            check_close(records, bad)


def test_hpke_wraps_open_only_for_their_reader_and_relationship():
    customer, other = PartyKeys.generate(), PartyKeys.generate()
    wrap = wrap_secret(KEYS.secret, customer.public, RID, 0)
    assert unwrap_secret(wrap, customer, RID, 0) == KEYS.secret
    for args in [(other, RID, 0), (customer, "rel-0002", 0), (customer, RID, 1)]:
        with pytest.raises(KeyUnusable):
            unwrap_secret(wrap, *args)
    assert KEYS.secret not in wrap


def test_fingerprints_are_stable_and_distinct():
    a = PartyKeys.generate().public
    assert a.fingerprint() == PublicKeys.from_json(a.to_json()).fingerprint()
    assert a.fingerprint() != PartyKeys.generate().public.fingerprint()
    assert len(a.fingerprint().split(":")) == 16


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=2000).filter(lambda b: True), st.integers(min_value=0, max_value=10_000))
def test_property_random_single_byte_changes_are_caught(noise, position):
    sealed = seal(delta(1, "a" * 64, dims_note="x" * (len(noise) % 500)), KEYS, PROVIDER)
    blob = bytearray(sealed.blob)
    at = position % len(blob)
    blob[at] ^= noise[0] or 1
    with pytest.raises(SealError):
        open_record(1, sealed.tag, bytes(blob), KEYS, PROVIDER.public_key())
