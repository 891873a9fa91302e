"""C2SP tlog-policy files: one witness counts once, whatever names and key IDs it is listed under."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import free_port

from pacspace.checkpoint import Checkpoint, sign_checkpoint
from pacspace.errors import MalformedInput
from pacspace.merkle import EMPTY_ROOT
from pacspace.note import ALG_COSIGNATURE_V1, CosignatureVerifier, NoteSignature, NoteSigner, key_id
from pacspace.policy import parse_policy
from pacspace.witness import parse_log_policy

LOG = NoteSigner("example.com/log", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
W1 = NoteSigner("witness.example/w1", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
W2 = NoteSigner("witness.example/w2", Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34))))


def _same_key_other_name(signer: NoteSigner, name: str) -> str:
    """A vkey that wraps ``signer``'s public key under another name (so another key ID)."""
    return CosignatureVerifier(name, signer.cosignature_verifier.public_key).vkey()


def test_one_witness_under_two_names_would_meet_a_two_of_two_quorum():
    """Why the rule exists: an Ed25519 cosignature does not commit to the cosigner's name, so the
    log can relabel one witness's line under the second name and key ID and it verifies."""
    alias = _same_key_other_name(W1, "witness.example/alias")
    text = f"witness a {W1.cosignature_verifier.vkey()}\nwitness b {alias}\ngroup both all a b\nquorum both\n"
    with pytest.raises(MalformedInput, match="same public key") as refused:
        parse_policy(text)
    assert "line 2" in str(refused.value) and "'a'" in str(refused.value)
    # The forgery the refusal prevents: one real cosignature, relabelled.
    signed = sign_checkpoint(Checkpoint(LOG.name, 0, EMPTY_ROOT), LOG, 1_800_000_000)
    real = W1.cosign(signed.note.text, 1_800_000_000)
    relabelled = NoteSignature("witness.example/alias",
                               key_id("witness.example/alias", ALG_COSIGNATURE_V1, W1.cosignature_verifier.public_key),
                               real.signature)
    assert CosignatureVerifier("witness.example/alias", W1.cosignature_verifier.public_key).timestamp(
        signed.note.text, relabelled.signature) == 1_800_000_000


@pytest.mark.parametrize("second", [
    W1.cosignature_verifier.vkey(),  # the very same vkey
    _same_key_other_name(W1, "witness.example/other"),  # same key, another name and key ID
])
def test_duplicate_witnesses_are_refused(second):
    text = f"witness a {W1.cosignature_verifier.vkey()}\nwitness b {second}\nquorum a\n"
    with pytest.raises(MalformedInput, match="duplicate witness"):
        parse_policy(text)


def test_duplicate_logs_are_refused():
    from pacspace.note import Ed25519Verifier

    renamed = Ed25519Verifier("example.com/renamed", LOG.verifier.public_key).vkey()
    for text in (f"log {LOG.verifier.vkey()}\nlog {LOG.verifier.vkey()}\nquorum none\n",
                 f"log {LOG.verifier.vkey()}\nlog {renamed}\nquorum none\n"):
        with pytest.raises(MalformedInput, match="duplicate log"):
            parse_policy(text)
        with pytest.raises(MalformedInput, match="duplicate log"):
            parse_log_policy(text)  # `pacspace witness serve --policy` reads the same file


def test_a_witness_may_not_be_the_log_itself():
    """The log signs its own timestamped cosignature (type 0x04) with its key: listed as a witness, it would witness itself."""
    as_witness = CosignatureVerifier("witness.example/log", LOG.verifier.public_key).vkey()
    with pytest.raises(MalformedInput, match="the log's own key"):
        parse_policy(f"log {LOG.verifier.vkey()}\nwitness w {as_witness}\nquorum w\n")
    with pytest.raises(MalformedInput, match="the log's own key"):  # in either order
        parse_policy(f"witness w {as_witness}\nlog {LOG.verifier.vkey()}\nquorum w\n")


def test_a_member_counts_once():
    """C2SP tlog-policy: "Each defined name can be listed as a group member at most once"."""
    head = f"witness a {W1.cosignature_verifier.vkey()}\nwitness b {W2.cosignature_verifier.vkey()}\n"
    with pytest.raises(MalformedInput, match="member 'a' is listed twice"):
        parse_policy(head + "group g 2 a a\nquorum g\n")
    with pytest.raises(MalformedInput, match="already a member"):
        parse_policy(head + "group g any a b\ngroup h any a\ngroup top all g h\nquorum top\n")


def test_none_is_predefined():
    with pytest.raises(MalformedInput, match="'none' is predefined"):
        parse_policy(f"witness none {W1.cosignature_verifier.vkey()}\nquorum none\n")
    with pytest.raises(MalformedInput):
        parse_policy(f"witness a {W1.cosignature_verifier.vkey()}\ngroup none any a\nquorum a\n")
    with pytest.raises(MalformedInput, match="unknown member 'none'"):
        parse_policy(f"witness a {W1.cosignature_verifier.vkey()}\ngroup g any a none\nquorum g\n")


def test_a_sound_policy_still_parses():
    text = (f"# the log and two witnesses\nlog {LOG.verifier.vkey()} https://log.example\n"
            f"witness a {W1.cosignature_verifier.vkey()} http://127.0.0.1:1\n\twitness b {W2.cosignature_verifier.vkey()}\n"
            "group g 2 a b\nquorum g\n")
    policy = parse_policy(text)
    assert set(policy.witnesses) == {"a", "b"} and policy.groups == {"g": (2, ("a", "b"))} and policy.quorum == "g"
    assert policy.satisfied({"a", "b"}) and not policy.satisfied({"a"})
    assert base64.b64decode(policy.witnesses["a"].verifier.vkey().split("+", 2)[2])[0] == ALG_COSIGNATURE_V1


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacspace", *args], capture_output=True, text=True,
                          env=env if env is not None else {**os.environ}, timeout=120)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (result.args[3:], result.stderr)


def _refused_for_the_duplicate(result: subprocess.CompletedProcess[str]) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("pacspace: error: policy line 3: duplicate witness:"), lines


def test_every_command_that_reads_a_policy_refuses_a_duplicate_witness(tmp_path):
    """serve, witness serve, monitor, receipt verify and evidence verify: one line on stderr, exit 2 (bad input)."""
    dup = tmp_path / "dup-policy"
    alias = _same_key_other_name(W1, "witness.example/alias")
    dup.write_text(f"log {LOG.verifier.vkey()}\nwitness a {W1.cosignature_verifier.vkey()} http://127.0.0.1:9\n"
                   f"witness b {alias} http://127.0.0.1:9\ngroup both all a b\nquorum both\n")
    # A real log with a closed period: a receipt, a monitor's copy and an evidence bundle to check.
    port = free_port()
    data = tmp_path / "pacspace-data"
    _ok(_cli("init", "--data", str(data)))
    server = subprocess.Popen([sys.executable, "-m", "pacspace", "serve", "--data", str(data), "--port", str(port),
                               "--pool-interval", "0.02"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        base = {**os.environ, "PACSPACE_URL": f"http://127.0.0.1:{port}"}
        tokens = {name: _cli("admin", "party", "add", name, "--role", role, "--data", str(data), env=base).stdout.strip()
                  for name, role in (("acme", "provider"), ("bob", "customer"))}
        acme = {**base, "PACSPACE_TOKEN": tokens["acme"], "PACSPACE_HOME": str(tmp_path / "acme")}
        bob = {**base, "PACSPACE_TOKEN": tokens["bob"], "PACSPACE_HOME": str(tmp_path / "bob")}
        _ok(_cli("keys", "init", env=acme))
        bob_key = _cli("keys", "init", env=bob).stdout.strip()
        rid = _cli("relationship", "create", "--customer", "bob", "--customer-key", bob_key, env=acme).stdout.strip()
        acme_key = _cli("keys", "show", env=acme).stdout.strip()
        _ok(_cli("relationship", "accept", rid, "--provider-key", acme_key, env=bob))
        _ok(_cli("record", "--relationship", rid, "--meter", "llm.requests", "--quantity", "3", "--unit", "request",
                    "--period", "2026-11", "--window", "2026-11-02T00:00:00Z/2026-11-03T00:00:00Z", env=acme))
        receipt = tmp_path / "close.tlog-proof"
        _ok(_cli("close", "--relationship", rid, "--period", "2026-11", "--out", str(receipt), env=acme))
        _ok(_cli("monitor", "--once", env=bob))
        bundle = tmp_path / "bundle.json"
        _ok(_cli("evidence", "export", "--relationship", rid, "--period", "2026-11", "--out", str(bundle),
                    env=bob))
        vkey = _cli("log-key", "--data", str(data)).stdout.strip()
        # The same commands accept the files without the policy, and refuse the policy.
        _ok(_cli("receipt", "verify", str(receipt), "--log-key", vkey))
        _ok(_cli("evidence", "verify", str(bundle), "--log-key", vkey))
        _refused_for_the_duplicate(_cli("monitor", "--once", "--policy", str(dup), env=bob))
        _refused_for_the_duplicate(_cli("receipt", "verify", str(receipt), "--log-key", vkey, "--policy", str(dup)))
        _refused_for_the_duplicate(_cli("evidence", "verify", str(bundle), "--log-key", vkey, "--policy", str(dup)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The log server (a log that exists: restarted with a changed policy) and a witness refuse it before serving.
    _refused_for_the_duplicate(_cli("serve", "--data", str(data), "--port", str(free_port()), "--witness-policy", str(dup)))
    witness = tmp_path / "witness"
    _ok(_cli("witness", "init", "--data", str(witness), "--name", "witness.example/w9"))
    _refused_for_the_duplicate(_cli("witness", "serve", "--data", str(witness), "--port", str(free_port()),
                                    "--policy", str(dup)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"log {LOG.verifier.vkey()}\n", "no quorum line"),
        (f"log {LOG.verifier.vkey()}\nquorum none\nquorum none\n", "second quorum line"),
        (f"log {LOG.verifier.vkey()}\r\nquorum none\r\n", "LF line ends"),
        (f"log {LOG.verifier.vkey()}\nquorum\x0bnone\n", "control character"),
        (f"quorum w\nwitness w {W1.cosignature_verifier.vkey()}\n", "unknown quorum"),
    ],
)
def test_c2sp_tlog_policy_wants_exactly_one_quorum_line_and_no_control_characters(text, message):
    with pytest.raises(MalformedInput, match=message):
        parse_policy(text)


def test_c2sp_tlog_policy_comments_are_whole_lines_and_words_split_on_spaces_and_tabs_only():
    w1 = W1.cosignature_verifier.vkey()
    policy = parse_policy(f"  # a comment line\nwitness w\t{w1}  https://w.example/#frag\n\t#another\nquorum w\n")
    assert policy.witnesses["w"].url == "https://w.example/#frag"  # not a comment: a "#" inside a line is a word
    with pytest.raises(MalformedInput, match="'witness <name> <cosignature vkey> \\[url\\]'"):
        parse_policy(f"witness w {w1} https://w.example # a trailing comment is not C2SP\nquorum w\n")
    # A no-break space is part of a word, not a separator: "w\u00a0x" is one (unknown) name.
    with pytest.raises(MalformedInput, match="unknown quorum"):
        parse_policy(f"witness w {w1}\nquorum w\u00a0x\n")
