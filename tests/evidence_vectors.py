"""Known-answer evidence bundles: tests/vectors/pacspace-evidence.json, made by pacspace's own Python code.

Every key is derived from a fixed seed, every nonce and time is fixed, so the file is the same at each run
(tests/test_evidence_vectors.py regenerates it and compares). Each case is a bundle, the log key to check it with
(null: the one the bundle names), whether it verifies (``valid``: `pacspace evidence verify` exits 0), and its
``findings``: for a bundle that proves what it claims but whose records break a protocol rule (records.rules),
each finding as the Python verifier words it (`evidence verify` exits 7; the page says "failed" and lists them).
The Python verifier (client.evidence.verify_bundle) and the browser page (verifier.html) must agree on every case.
Some bundles hold records that a rogue provider signed and logged although pacspace's schema refuses them
(records.body.decode_body): both verifiers must refuse those. Regenerate with ``python3 tests/evidence_vectors.py``.
"""

from __future__ import annotations

import base64
import copy
import json
import pathlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pacspace.checkpoint import Checkpoint, sign_checkpoint
from pacspace.merkle import ListHashReader, inclusion_proof, leaf_hash, tree_hash
from pacspace.note import NoteSigner
from pacspace.receipt import Receipt
from pacspace.records import canonical
from pacspace.records.body import (GENESIS_PREV, Body, Close, Common, Delta, Genesis, Line, PartyKeys, body_hash,
                                   to_json)
from pacspace.records.rules import Finding, Ledger
from pacspace.records.seal import Opened, RelationshipKeys, Sealed, seal

PATH = pathlib.Path(__file__).parent / "vectors" / "pacspace-evidence.json"
ORIGIN = "example.com/billing-log"
LOG_SEED = bytes(range(32))
FORGER_SEED = bytes(range(100, 132))
PROVIDER_SEED = bytes(range(0x40, 0x60))
SECRET = bytes(range(0x20, 0x40))
RID = "acme:0000000000000000vectors"
PERIOD = "2026-11"
TIME = 1_796_000_000
HOSTILE = 'm-"2" <b>bold</b> & \'q\''
EXPECTED_TOTALS = [
    ["llm.output.visible_tokens", "token", {"model": "m-1"}, "1998.999"],
    ["llm.output.visible_tokens", "token", {"model": HOSTILE}, "10"],
    ["llm.requests", "request", {}, "3"],
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _provider() -> tuple[Ed25519PrivateKey, bytes]:
    signer = Ed25519PrivateKey.from_private_bytes(PROVIDER_SEED)
    x25519 = X25519PrivateKey.from_private_bytes(bytes(range(0x60, 0x80))).public_key().public_bytes_raw()
    return signer, x25519


def _bodies(keys: RelationshipKeys, signer: Ed25519PrivateKey, x25519: bytes, bad_close: bool) -> list[Sealed]:
    """Genesis, three usage records of 2026-11 (one a correction), its close, and one record of 2026-12."""
    provider = PartyKeys("acme", _b64(x25519), _b64(signer.public_key().public_bytes_raw()))
    customer = PartyKeys("bob", _b64(bytes(32)), _b64(bytes(range(1, 33))))
    day = "2026-11-02T"
    made: list[Sealed] = []
    ledger = Ledger()

    def add(make: Any) -> None:
        prev = body_hash(made[-1].body) if made else GENESIS_PREV
        body = make(Common(RID, len(made), prev, f"r{len(made)}", f"2026-11-30T00:00:0{len(made)}Z"))
        sealed = seal(body, keys, signer, nonce=bytes([len(made) + 1]) * 12)
        ledger.add(Opened(sealed.seq, body, sealed.body, b""))
        made.append(sealed)

    add(lambda c: Genesis(c, provider, customer, "hourly"))
    add(lambda c: Delta(c, PERIOD, day + "00:00:00Z", day + "01:00:00Z", (
        Line("llm.output.visible_tokens", "token", "1234.5", {"model": "m-1"}), Line("llm.requests", "request", "3"))))
    add(lambda c: Delta(c, PERIOD, day + "01:00:00Z", day + "02:00:00Z", (
        Line("llm.output.visible_tokens", "token", "765.249", {"model": "m-1"}),
        Line("llm.output.visible_tokens", "token", "10", {"model": HOSTILE}))))
    add(lambda c: Delta(c, PERIOD, day + "00:00:00Z", day + "01:00:00Z", (
        Line("llm.output.visible_tokens", "token", "-0.75", {"model": "m-1"}),), corrects=1))
    first, last, count, head, totals = ledger.expected_close(PERIOD, len(made))
    if bad_close:
        totals = tuple(Line(t.meter, t.unit, "1999" if t.quantity == "1998.999" else t.quantity, t.dimensions)
                       for t in totals)
    add(lambda c: Close(c, PERIOD, first, last, count, head, totals))
    add(lambda c: Delta(c, "2026-12", "2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z",
                        (Line("llm.requests", "request", "1"),)))
    return made


def bundle(log_seed: bytes = LOG_SEED, bad_close: bool = False) -> dict[str, Any]:
    """A bundle of 2026-11 from a log whose other parties' entries sit between this relationship's."""
    keys = RelationshipKeys(SECRET)
    signer, x25519 = _provider()
    sealed = _bodies(keys, signer, x25519, bad_close)
    filler = [bytes([1]) + bytes([n]) * 64 for n in range(4)]
    entries = [filler[0], sealed[0].entry, filler[1], sealed[1].entry, sealed[2].entry, filler[2], sealed[3].entry,
               sealed[4].entry, filler[3], sealed[5].entry]
    index = {s.seq: entries.index(s.entry) for s in sealed}
    leaves = [leaf_hash(e) for e in entries]
    log = NoteSigner.from_seed(ORIGIN, log_seed)
    signed = {size: sign_checkpoint(Checkpoint(ORIGIN, size, tree_hash(size, ListHashReader(leaves[:size]))), log,
                                    TIME + size) for size in (5, 10)}
    under = {1: 5, 2: 5, 3: 10, 4: 10}

    def proof(seq: int, size: int) -> list[bytes]:
        return list(inclusion_proof(index[seq], size, ListHashReader(leaves[:size])))

    return {
        "format": "pacspace.evidence/v1",
        "log_vkey": log.verifier.vkey(),
        "relationship": RID,
        "period": PERIOD,
        "provider_ed25519": _b64(signer.public_key().public_bytes_raw()),
        "provider_x25519": _b64(x25519),
        "prev_of_first": body_hash(sealed[0].body),
        "checkpoints": {str(size): c.format().decode() for size, c in signed.items()},
        "close_receipt": Receipt(index[4], tuple(proof(4, 10)), signed[10].format(), sealed[4].entry).format(),
        "records": [{"seq": s, "index": index[s], "tag": _b64(sealed[s].tag), "ciphertext": _b64(sealed[s].blob),
                     "record_key": _b64(keys.record_key(s)), "checkpoint_size": under[s],
                     "proof": [_b64(h) for h in proof(s, under[s])]} for s in (1, 2, 3, 4)],
    }


def _flip(text: str, at: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at] ^= 0x01
    return _b64(bytes(raw))


def _changed(good: dict[str, Any], change: Any) -> dict[str, Any]:
    out = copy.deepcopy(good)
    change(out)
    return out


def _old(b: dict[str, Any]) -> None:
    del b["log_vkey"]


def _resign_first_checkpoint(b: dict[str, Any]) -> None:
    """The checkpoint of size 5, signed by another key under the log's name (a forger who lacks the log's key)."""
    forged = bundle(FORGER_SEED)
    b["checkpoints"]["5"] = forged["checkpoints"]["5"]


# --- chains a rogue provider writes: authentic records that break a rule, and signed bodies the schema refuses ---

P = PERIOD


def _seal_bytes(seq: int, encoded: bytes, keys: RelationshipKeys, signer: Ed25519PrivateKey, nonce: bytes) -> Sealed:
    """seal() for bytes no Body encodes to: what a rogue provider's own code can sign and log."""
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from pacspace.records.seal import _bucket, commitment_for

    plain = struct.pack(">I", len(encoded)) + encoded + signer.sign(encoded)
    plain += bytes(_bucket(len(plain)) - len(plain))
    key = keys.record_key(seq)
    blob = bytes([1]) + nonce + commitment_for(key) + AESGCM(key).encrypt(nonce, plain, keys.tag(seq))
    return Sealed(seq, keys.tag(seq), blob, encoded)


class _Chain:
    """One relationship's chain, record by record, sealed with the vectors' fixed keys and nonces."""

    def __init__(self) -> None:
        self.keys = RelationshipKeys(SECRET)
        self.signer, self.x25519 = _provider()
        self.made: list[Sealed] = []
        self.ledger: Ledger | None = Ledger()  # None once a rogue record is in: no rule follows the chain then
        self.findings: list[Finding] = []
        provider = PartyKeys("acme", _b64(self.x25519), _b64(self.signer.public_key().public_bytes_raw()))
        customer = PartyKeys("bob", _b64(bytes(32)), _b64(bytes(range(1, 33))))
        self.add(lambda c: Genesis(c, provider, customer, "hourly"))

    def common(self) -> Common:
        n = len(self.made)
        prev = body_hash(self.made[-1].body) if self.made else GENESIS_PREV
        return Common(RID, n, prev, f"r{n}", f"2026-11-30T00:00:{n:02d}Z")

    def add(self, make: Any) -> None:
        """A record pacspace's own client would write (though not send, if a rule flags it)."""
        body: Body = make(self.common())
        sealed = seal(body, self.keys, self.signer, nonce=bytes([len(self.made) + 1]) * 12)
        if self.ledger is not None:
            self.findings += self.ledger.add(Opened(sealed.seq, body, sealed.body, b""))
        self.made.append(sealed)

    def delta(self, period: str, start: str, end: str, *lines: Line) -> None:
        self.add(lambda c: Delta(c, period, start, end, lines))

    def close(self, period: str) -> None:
        """The close pacspace computes (records.rules.Ledger.expected_close)."""
        assert self.ledger is not None
        first, last, count, head, totals = self.ledger.expected_close(period, len(self.made))
        self.add(lambda c: Close(c, period, first, last, count, head, totals))

    def rogue(self, make: Any, change: Any, replace: tuple[bytes, bytes] | None = None) -> bytes:
        """A record whose signed bytes are ``change(to_json(body))`` (then ``replace`` done on the bytes): the
        schema may refuse it, the log takes it all the same. Its encoded bytes."""
        body = make(self.common())
        obj = to_json(body)
        change(obj)
        encoded = canonical.encode_checked(obj)
        if replace is not None:
            encoded = encoded.replace(*replace)
        seq, self.ledger = len(self.made), None
        self.made.append(_seal_bytes(seq, encoded, self.keys, self.signer, bytes([seq + 1]) * 12))
        return encoded

    def bundle(self, first: int) -> dict[str, Any]:
        """The bundle of the records from ``first`` to the last (a close): each logged after another party's
        entry, under one checkpoint; the close's receipt under the same."""
        entries: list[bytes] = []
        index: dict[int, int] = {}
        for s in self.made:
            entries.append(bytes([1]) + bytes([0x80 + s.seq]) * 64)
            index[s.seq] = len(entries)
            entries.append(s.entry)
        leaves = [leaf_hash(e) for e in entries]
        size = len(entries)
        log = NoteSigner.from_seed(ORIGIN, LOG_SEED)
        signed = sign_checkpoint(Checkpoint(ORIGIN, size, tree_hash(size, ListHashReader(leaves))), log, TIME + size)

        def proof(seq: int) -> list[bytes]:
            return list(inclusion_proof(index[seq], size, ListHashReader(leaves)))

        close = self.made[-1]
        return {
            "format": "pacspace.evidence/v1",
            "log_vkey": log.verifier.vkey(),
            "relationship": RID,
            "period": json.loads(close.body)["period"],
            "provider_ed25519": _b64(self.signer.public_key().public_bytes_raw()),
            "provider_x25519": _b64(self.x25519),
            "prev_of_first": body_hash(self.made[first - 1].body),
            "checkpoints": {str(size): signed.format().decode()},
            "close_receipt": Receipt(index[close.seq], tuple(proof(close.seq)), signed.format(), close.entry).format(),
            "records": [{"seq": s.seq, "index": index[s.seq], "tag": _b64(s.tag), "ciphertext": _b64(s.blob),
                         "record_key": _b64(self.keys.record_key(s.seq)), "checkpoint_size": size,
                         "proof": [_b64(h) for h in proof(s.seq)]} for s in self.made[first:]],
        }


def _t(day: int, hour: int, minute: int = 0, month: str = PERIOD) -> str:
    return f"{month}-{day:02d}T{hour:02d}:{minute:02d}:00Z"


def rules_broken() -> tuple[dict[str, Any], list[Finding]]:
    """A period whose records are all authentic, several of which break a protocol rule, each kind at least once;
    its close is the one pacspace computes (the flagged records it cannot hold left out)."""
    chain = _Chain()
    tokens = lambda q: Line("llm.output.visible_tokens", "token", q, {"model": "m-1"})  # noqa: E731
    requests = lambda q: Line("llm.requests", "request", q)  # noqa: E731
    chain.delta(P, _t(2, 0), _t(2, 1), tokens("100"), requests("3"))                      # 1
    chain.delta(P, _t(2, 0, 30), _t(2, 1, 30), tokens("50"))                              # 2 overlapping_window
    chain.delta(P, "2026-10-31T23:00:00Z", _t(1, 0), requests("1"))                       # 3 window_outside_period
    chain.delta(P, _t(2, 2), _t(2, 3), requests("-1"), Line("llm.a", "request", "-2"))    # 4 negative_quantity
    chain.close("2026-10")                                                                # 5 an empty month, closed
    chain.delta("2026-10", _t(5, 0, month="2026-10"), _t(5, 1, month="2026-10"), requests("2"))  # 6 in a closed period
    chain.delta(P, _t(2, 3), _t(2, 4), requests("1"))                                     # 7 splits 2026-11's run
    chain.close("2026-10")                                                                # 8 closed twice
    chain.delta("2026-12", "2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z", requests("1"))  # 9
    chain.delta(P, _t(2, 5), _t(2, 6), requests("1"))                                     # 10 after the chain moved on
    chain.close(P)                                                                        # 11
    return chain.bundle(1), chain.findings


def one_negative_delta() -> tuple[dict[str, Any], list[Finding]]:
    chain = _Chain()
    chain.delta(P, _t(2, 0), _t(2, 1), Line("llm.requests", "request", "3"))
    chain.delta(P, _t(2, 1), _t(2, 2), Line("llm.requests", "request", "-1"))
    chain.close(P)
    return chain.bundle(1), chain.findings


def schema_refused(change: Any, totals: list[dict[str, Any]] | None = None,
                   replace: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    """Genesis, one delta whose signed body ``change`` makes one pacspace's schema refuses, and the close a lenient
    verifier (one that checks no more than the close's sums) would accept: covering it, with ``totals`` (by default
    the delta's lines as signed). ``replace`` is done on both records' signed bytes."""
    chain = _Chain()
    line = Line("llm.requests", "request", "3")
    encoded = chain.rogue(lambda c: Delta(c, P, _t(2, 0), _t(2, 1), (line,)), change, replace)
    rogue = json.loads(encoded.replace(replace[1], replace[0]) if replace else encoded)
    covered = rogue.get("kind") in ("delta", "correction")
    if totals is None:
        totals = [{k: x[k] for k in ("meter", "unit", "quantity", "dimensions")} for x in rogue["lines"]] \
            if covered else []
    seq = len(chain.made)
    first, last, count = (1, 1, 1) if covered else (seq, seq - 1, 0)
    chain.rogue(lambda c: Close(c, P, first, last, count, body_hash(encoded), ()), _set("totals", totals), replace)
    return chain.bundle(1)


def _set(key: str, value: Any) -> Any:
    return lambda obj: obj.__setitem__(key, value)


def _genesis_again(obj: dict[str, Any]) -> None:
    for key in ("period", "window", "lines"):
        del obj[key]
    obj.update(schema="pacspace.genesis/v1", kind="genesis", cadence="hourly", billing_cycle="monthly",
               provider={"name": "acme", "x25519": "x", "ed25519": "y"}, customer={"name": "bob", "x25519": "x",
                                                                                   "ed25519": "y"})


def _rogue_cases() -> list[tuple[str, dict[str, Any]]]:
    twice = {"meter": "llm.requests", "unit": "request", "quantity": "6", "dimensions": {}}
    return [
        ("a signed delta with a field the schema does not know", schema_refused(_set("discount", "none"))),
        ("a signed delta with the same line twice", schema_refused(
            lambda obj: obj.__setitem__("lines", obj["lines"] * 2), totals=[twice])),
        ("a signed line with a field the schema does not know", schema_refused(
            lambda obj: obj["lines"][0].__setitem__("price", "0.01"))),
        ("a signed delta whose window ends before it starts", schema_refused(
            _set("window", {"start": _t(2, 1), "end": _t(2, 0)}))),
        ("a signed delta whose created_at is not a time", schema_refused(_set("created_at", "yesterday"))),
        ("a signed delta whose meter is not a meter name", schema_refused(
            lambda obj: obj["lines"][0].__setitem__("meter", "llm requests"))),
        ("a signed correction that corrects itself", schema_refused(
            lambda obj: obj.update(schema="pacspace.correction/v1", kind="correction", corrects="1"))),
        ("a signed dimension value holding a lone surrogate", schema_refused(
            lambda obj: obj["lines"][0]["dimensions"].__setitem__("model", "SURROGATE"),
            replace=(b"SURROGATE", b"\\ud800"))),
        ("a signed body whose kind is a list", schema_refused(_set("kind", ["delta"]))),
        ("a signed body that starts with a byte-order mark", schema_refused(
            lambda obj: None, replace=(b'{"created_at"', b'\xef\xbb\xbf{"created_at"'))),
        ("a second genesis record inside the period", schema_refused(_genesis_again)),
    ]


def cases() -> list[dict[str, Any]]:
    good = bundle()
    vkey = good["log_vkey"]
    forged = bundle(FORGER_SEED)
    other = _b64(Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39))).public_key().public_bytes_raw())
    table: list[tuple[str, dict[str, Any], str | None, bool]] = [
        ("good", good, vkey, True),
        ("good, checked with the key the bundle names", good, None, True),
        ("a bundle from before log_vkey, the key given", _changed(good, _old), vkey, True),
        ("a bundle from before log_vkey, no key given", _changed(good, _old), None, False),
        ("one byte flipped in a ciphertext", _changed(good, lambda b: b["records"][1].update(
            ciphertext=_flip(b["records"][1]["ciphertext"], 60))), vkey, False),
        ("a checkpoint signed by another key", _changed(good, _resign_first_checkpoint), vkey, False),
        ("a forged log, checked with the key it names", forged, None, True),
        ("a forged log, checked with the real log's key", forged, vkey, False),
        ("a record left out of the range", _changed(good, lambda b: b["records"].pop(1)), vkey, False),
        ("the first record left out", _changed(good, lambda b: b["records"].pop(0)), vkey, False),
        ("another record's key", _changed(good, lambda b: b["records"][0].update(
            record_key=b["records"][1]["record_key"])), vkey, False),
        ("a flipped tag", _changed(good, lambda b: b["records"][2].update(tag=_flip(b["records"][2]["tag"], 0))),
         vkey, False),
        ("an inclusion proof hash changed", _changed(good, lambda b: b["records"][0]["proof"].__setitem__(
            0, _flip(b["records"][0]["proof"][0], 31))), vkey, False),
        ("another provider key", _changed(good, lambda b: b.update(provider_ed25519=other)), vkey, False),
        ("a close whose totals are not the sum of its records", bundle(bad_close=True), vkey, False),
        ("the receipt of another record", _changed(good, lambda b: b.update(
            close_receipt=b["close_receipt"].replace("index 7\n", "index 6\n"))), vkey, False),
    ]
    table += [(name, b, vkey, False) for name, b in _rogue_cases()]
    out = [{"name": name, "vkey": key, "valid": valid, "findings": [], "bundle": b} for name, b, key, valid in table]
    for name, (b, findings), expected in [
        ("records that break every protocol rule", rules_broken(),
         [("overlapping_window", 2), ("window_outside_period", 3), ("negative_quantity", 4),
          ("usage_in_closed_period", 6), ("usage_out_of_order", 7), ("bad_close", 8), ("usage_out_of_order", 10)]),
        ("a negative delta", one_negative_delta(), [("negative_quantity", 2)]),
    ]:
        assert [(f.kind, f.seq) for f in findings] == expected, findings
        out.append({"name": name, "vkey": vkey, "valid": False, "bundle": b,
                    "findings": [{"kind": f.kind, "seq": f.seq, "period": f.period, "message": f.message,
                                  "fix": f.fix} for f in findings]})
    return out


def document() -> dict[str, Any]:
    return {
        "about": "pacspace evidence-bundle known answers, generated by tests/evidence_vectors.py from fixed seeds and "
                 "nonces: the Python verifier (client.evidence.verify_bundle) and verifier.html must agree on each "
                 "case. vkey null: check with the key the bundle names (log_vkey). valid: the bundle proves what it "
                 "claims and its records break no protocol rule; findings: those it proves but whose records break "
                 "one, as the Python verifier words them.",
        "expected_totals": [{"meter": m, "unit": u, "dimensions": d, "quantity": q} for m, u, d, q in EXPECTED_TOTALS],
        "cases": cases(),
    }


if __name__ == "__main__":
    PATH.write_text(json.dumps(document(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PATH}")
