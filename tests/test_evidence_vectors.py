"""The evidence-bundle known answers (tests/vectors/pacspace-evidence.json): made by pacspace's own code, checked by
the Python verifier here and by verifier.html in tests/test_verifier_browser.py, with the same answer each time."""

from __future__ import annotations

import json

import pytest
from evidence_vectors import PATH, document

from pacspace.client.evidence import verify_bundle
from pacspace.errors import PacspaceError
from pacspace.note import parse_vkey

STORED = json.loads(PATH.read_text())


def test_the_vectors_are_what_the_code_makes():
    assert json.loads(json.dumps(document())) == STORED, "regenerate with: python3 tests/evidence_vectors.py"


def verdict(case) -> str:
    """What `pacspace evidence verify` and verifier.html say: ok (exit 0), findings (exit 7; the page says
    "failed" and lists them) or failed (exit 6 or 2)."""
    return "ok" if case["valid"] else "findings" if case["findings"] else "failed"


@pytest.mark.parametrize("case", STORED["cases"], ids=[c["name"] for c in STORED["cases"]])
def test_the_python_verifier_gives_each_vectors_answer(case):
    bundle = case["bundle"]
    vkey = case["vkey"] or bundle.get("log_vkey")
    if vkey is None:
        assert verdict(case) == "failed"  # nothing to check a bundle against: it proves nothing
        return
    if verdict(case) == "failed":
        with pytest.raises(PacspaceError):
            verify_bundle(bundle, parse_vkey(vkey))
        return
    result = verify_bundle(bundle, parse_vkey(vkey))
    assert [f.to_json() for f in result.findings] == case["findings"]
    if verdict(case) == "findings":
        return
    totals = sorted((t.meter, t.unit, json.dumps(t.dimensions, sort_keys=True), t.quantity) for t in result.totals)
    assert totals == sorted((t["meter"], t["unit"], json.dumps(t["dimensions"], sort_keys=True), t["quantity"])
                            for t in STORED["expected_totals"])


def test_the_vectors_hold_every_kind_of_finding_and_bodies_the_schema_refuses():
    from pacspace.records.rules import KINDS

    kinds = {f["kind"] for case in STORED["cases"] for f in case["findings"]}
    assert kinds == set(KINDS)
    assert sum(case["name"].startswith("a signed ") for case in STORED["cases"]) >= 8


@pytest.mark.parametrize("case", [c for c in STORED["cases"] if c["findings"]], ids=lambda c: c["name"])
def test_evidence_verify_exits_7_and_lists_each_finding(case, tmp_path, monkeypatch):
    """The command line's words for a bundle with findings: the same findings, exit 7 (RULE_BROKEN)."""
    from pacspace import exitcodes
    from pacspace.cli.main import main

    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(case["bundle"]))
    monkeypatch.setenv("PACSPACE_HOME", str(tmp_path / "home"))
    code = main(["evidence", "verify", str(path), "--log-key", case["vkey"]])
    assert code == exitcodes.RULE_BROKEN


@pytest.mark.parametrize("kind", [["delta"], {"delta": "x"}, None])
def test_a_body_whose_kind_is_not_a_string_is_refused_not_a_crash(kind):
    """records.body.decode_body looked an unhashable kind up in a dict: a TypeError, which stopped a verifier (and
    a customer's monitor) on a body a rogue provider signed. Now an InvalidBody, as verifier.html says too."""
    from pacspace.records.body import InvalidBody, decode_body

    with pytest.raises(InvalidBody, match="unknown kind or schema"):
        decode_body(json.dumps({"kind": kind, "schema": "pacspace.usage_delta/v1"}).encode())


@pytest.mark.parametrize("size", ["²", "٣", "-1", "01", " 5"])
def test_a_checkpoint_size_that_is_not_a_plain_whole_number_is_refused_not_a_crash(size):
    from pacspace.errors import MalformedInput

    case = next(c for c in STORED["cases"] if c["valid"])
    bundle = json.loads(json.dumps(case["bundle"]))
    bundle["checkpoints"] = {size: note for note in bundle["checkpoints"].values()}
    with pytest.raises(MalformedInput):
        verify_bundle(bundle, parse_vkey(case["vkey"] or bundle["log_vkey"]))
