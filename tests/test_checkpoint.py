"""C2SP tlog-checkpoint bodies, and signed checkpoints with the log's timestamped cosignature."""

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pacspace.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    open_checkpoint,
    parse_checkpoint_text,
    sign_checkpoint,
)
from pacspace.errors import MalformedNote, PacspaceError, SignatureError
from pacspace.merkle import EMPTY_ROOT
from pacspace.note import MAX_TIMESTAMP, Note, NoteSignature, NoteSigner, parse_note, parse_vkey

ORIGIN = "example.com/log"
ROOT = hashlib.sha256(b"root").digest()
ROOT64 = base64.b64encode(ROOT).decode()
TS = 1_700_000_000

KAT_SEED = bytes(range(32))
KAT_NAME = "example.com/billing-log"
KAT_VKEY = "example.com/billing-log+edb7f3e8+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
KAT_TEXT = "example.com/billing-log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
KAT_SIG_LINE = (
    "\u2014 example.com/billing-log "
    "7bfz6GHD9KBteVvcdGrYW45NbGnk06NYv9arJA/OT/wwO8uDdPQ+F3B0UF/j3bEslDSFBHeWjHYxCL7Lv2/W1OfZSgA=\n"
)

SIGNER = NoteSigner.from_seed(ORIGIN, bytes([1]) * 32)
LOG_KEY = SIGNER.verifier


def _urlsafe_root() -> str:
    for i in range(256):
        enc = base64.urlsafe_b64encode(hashlib.sha256(bytes([i])).digest()).decode()
        if set(enc) & set("-_"):
            return enc
    raise AssertionError("unreachable")


def body(origin: str = ORIGIN, size: str = "5", root: str = ROOT64) -> str:
    return f"{origin}\n{size}\n{root}\n"


# ---------------------------------------------------------------- checkpoint bodies


@pytest.mark.parametrize("size", [0, 1, 5, 10, 256, 2**63, 2**64 - 1])
def test_checkpoint_text_round_trip(size):
    text = body(size=str(size))
    cp = parse_checkpoint_text(text)
    assert cp == Checkpoint(ORIGIN, size, ROOT)
    assert cp.origin == ORIGIN and cp.size == size and cp.root_hash == ROOT
    assert cp.text() == text


def test_empty_tree_known_answer_body():
    cp = Checkpoint(KAT_NAME, 0, EMPTY_ROOT)
    assert cp.text() == KAT_TEXT
    assert parse_checkpoint_text(KAT_TEXT) == cp


NON_CANONICAL = {
    "leading zero": body(size="01"),
    "double zero": body(size="00"),
    "plus sign": body(size="+1"),
    "negative": body(size="-1"),
    "negative zero": body(size="-0"),
    "empty size": body(size=""),
    "space before size": body(size=" 5"),
    "size with underscore": body(size="1_000"),
    "hex size": body(size="0x5"),
    "fullwidth digit": body(size="\uff15"),
    "arabic-indic digit": body(size="\u0665"),
    "size 2**64": body(size=str(2**64)),
    "21-digit size": body(size="1" + "0" * 20),
    "trailing space on root": body(root=ROOT64 + " "),
    "trailing space on size": body(size="5 "),
    "trailing space on origin": body(origin=ORIGIN + " "),
    "extension line": body() + "extension\n",
    "empty extension line": body() + "\n",
    "missing trailing newline": body()[:-1],
    "CRLF": body().replace("\n", "\r\n"),
    "unpadded root": body(root=ROOT64.rstrip("=")),
    "url-safe root": body(root=_urlsafe_root()),
    "root 31 bytes": body(root=base64.b64encode(ROOT[:31]).decode()),
    "root 33 bytes": body(root=base64.b64encode(ROOT + b"\x00").decode()),
    "empty root": body(root=""),
    "origin with space": body(origin="example.com log"),
    "origin with nbsp": body(origin="example.com\u00a0log"),
    "origin with plus": body(origin="example.com+log"),
    "empty origin": body(origin=""),
    "two lines only": f"{ORIGIN}\n5\n",
    "empty": "",
}


def test_non_canonical_cases_are_really_different():
    # Guard the table: its url-safe case must contain url-safe characters.
    assert set(NON_CANONICAL["url-safe root"].split("\n")[2]) & set("-_")


@pytest.mark.parametrize("case", sorted(NON_CANONICAL))
def test_parse_checkpoint_text_rejects(case):
    with pytest.raises(MalformedNote):
        parse_checkpoint_text(NON_CANONICAL[case])


def test_parse_checkpoint_text_rejects_non_canonical_root_padding_bits():
    # 32 bytes -> 43 significant chars + "="; the last char carries 2 padding bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(ROOT64[42])
    assert last & 3 == 0
    tweaked = ROOT64[:42] + alphabet[last | 1] + "="
    assert base64.b64decode(tweaked) == ROOT
    with pytest.raises(MalformedNote):
        parse_checkpoint_text(body(root=tweaked))


@pytest.mark.parametrize(
    "args",
    [(ORIGIN, -1, ROOT), (ORIGIN, 2**64, ROOT), (ORIGIN, 1, ROOT[:31]), (ORIGIN, 1, ROOT + b"x"), ("a b", 1, ROOT)],
)
def test_checkpoint_constructor_validates(args):
    with pytest.raises(MalformedNote):
        Checkpoint(*args)


# ---------------------------------------------------------------- signing and opening


def test_sign_checkpoint_known_answer():
    signer = NoteSigner.from_seed(KAT_NAME, KAT_SEED)
    signed = sign_checkpoint(Checkpoint(KAT_NAME, 0, EMPTY_ROOT), signer, TS)
    data = signed.format().decode()
    assert data.startswith(KAT_TEXT + "\n" + KAT_SIG_LINE)
    opened = open_checkpoint(signed.format(), parse_vkey(KAT_VKEY))
    assert opened.checkpoint == Checkpoint(KAT_NAME, 0, EMPTY_ROOT)
    assert opened.timestamp == TS


def test_sign_open_round_trip():
    cp = Checkpoint(ORIGIN, 5, ROOT)
    signed = sign_checkpoint(cp, SIGNER, TS)
    assert isinstance(signed, SignedCheckpoint)
    assert signed.timestamp == TS and signed.size == 5 and signed.root_hash == ROOT
    data = signed.format()
    opened = open_checkpoint(data, LOG_KEY)
    assert opened.checkpoint == cp
    assert opened.timestamp == TS
    assert opened.size == 5 and opened.root_hash == ROOT
    assert opened.format() == data
    # Two signature lines: Ed25519 (0x01) then the log's own cosignature (0x04), same name.
    note = parse_note(data)
    assert note.text == cp.text()
    assert [s.name for s in note.signatures] == [ORIGIN, ORIGIN]
    assert note.signatures[0].key_id == SIGNER.verifier.key_id
    assert note.signatures[1].key_id == SIGNER.cosignature_verifier.key_id
    # And independently: both signatures verify with cryptography directly.
    pub = Ed25519PublicKey.from_public_bytes(LOG_KEY.public_key)
    pub.verify(note.signatures[0].signature, cp.text().encode())
    cosig = note.signatures[1].signature
    assert int.from_bytes(cosig[:8], "big") == TS
    pub.verify(cosig[8:], f"cosignature/v1\ntime {TS}\n{cp.text()}".encode())


def test_sign_checkpoint_requires_origin_as_key_name():
    other = NoteSigner.from_seed("example.com/other", bytes([1]) * 32)
    with pytest.raises(MalformedNote):
        sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), other, TS)


def test_open_rejects_checkpoint_signed_by_another_key():
    impostor = NoteSigner.from_seed(ORIGIN, bytes([2]) * 32)
    data = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), impostor, TS).format()
    assert open_checkpoint(data, impostor.verifier).timestamp == TS
    with pytest.raises(SignatureError):
        open_checkpoint(data, LOG_KEY)


def test_open_rejects_origin_other_than_key_name():
    # Signed correctly by a key named like the origin, but opened with a key of another name.
    other_named = NoteSigner.from_seed("example.com/other", bytes([1]) * 32)
    data = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), SIGNER, TS).format()
    with pytest.raises(SignatureError):
        open_checkpoint(data, other_named.verifier)
    # A checkpoint for origin A, validly signed by the key named B.
    text = Checkpoint(ORIGIN, 5, ROOT).text()
    forged = Note(text, (other_named.sign(text), other_named.cosign(text, TS))).format()
    with pytest.raises(SignatureError):
        open_checkpoint(forged, other_named.verifier)


def test_open_rejects_body_altered_after_signing():
    signed = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), SIGNER, TS)
    for altered in (Checkpoint(ORIGIN, 6, ROOT), Checkpoint(ORIGIN, 5, EMPTY_ROOT)):
        data = Note(altered.text(), signed.note.signatures).format()
        assert parse_checkpoint_text(parse_note(data).text) == altered
        with pytest.raises(SignatureError):
            open_checkpoint(data, LOG_KEY)


def test_open_rejects_altered_timestamp_cosignature():
    signed = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), SIGNER, TS)
    sig, cos = signed.note.signatures
    cases = {
        "later time": (TS + 1).to_bytes(8, "big") + cos.signature[8:],
        "earlier time": (0).to_bytes(8, "big") + cos.signature[8:],
        "flipped signature bit": cos.signature[:-1] + bytes([cos.signature[-1] ^ 1]),
        "truncated": cos.signature[:-1],
        "signature of another time": SIGNER.cosign(signed.note.text, TS + 1).signature[:8] + cos.signature[8:],
    }
    for name, payload in cases.items():
        data = Note(signed.note.text, (sig, NoteSignature(cos.name, cos.key_id, payload))).format()
        with pytest.raises(SignatureError):
            open_checkpoint(data, LOG_KEY)
    # A cosignature over other text (another checkpoint) is also refused.
    other = SIGNER.cosign(Checkpoint(ORIGIN, 6, ROOT).text(), TS)
    data = Note(signed.note.text, (sig, other)).format()
    with pytest.raises(SignatureError):
        open_checkpoint(data, LOG_KEY)


def test_open_takes_timestamp_only_from_the_logs_own_cosignature():
    # A witness's cosignature (other name/key) does not set the timestamp.
    witness = NoteSigner.from_seed("witness.example", bytes([3]) * 32)
    signed = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), SIGNER, TS)
    data = signed.note.with_signatures(witness.cosign(signed.note.text, TS + 100)).format()
    assert open_checkpoint(data, LOG_KEY).timestamp == TS


def test_open_without_cosignature_is_refused_unless_not_required():
    signed = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), SIGNER, TS)
    data = Note(signed.note.text, signed.note.signatures[:1]).format()
    with pytest.raises(SignatureError, match="timestamp"):
        open_checkpoint(data, LOG_KEY)
    opened = open_checkpoint(data, LOG_KEY, require_timestamp=False)
    assert opened.checkpoint == signed.checkpoint
    assert opened.timestamp == 0


def test_open_requires_the_log_signature_not_just_the_cosignature():
    signed = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), SIGNER, TS)
    data = Note(signed.note.text, signed.note.signatures[1:]).format()
    with pytest.raises(SignatureError):
        open_checkpoint(data, LOG_KEY)


@pytest.mark.parametrize("extra", ["ext\n", "\n"])
def test_open_rejects_signed_checkpoint_with_extension_lines(extra):
    text = Checkpoint(ORIGIN, 5, ROOT).text() + extra
    data = Note(text, (SIGNER.sign(text), SIGNER.cosign(text, TS))).format()
    assert parse_note(data).text == text
    with pytest.raises(MalformedNote):
        open_checkpoint(data, LOG_KEY)


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    timestamp=st.integers(min_value=0, max_value=MAX_TIMESTAMP),
)
@example(size=0, root=EMPTY_ROOT, timestamp=0)
@example(size=2**64 - 1, root=b"\xff" * 32, timestamp=MAX_TIMESTAMP)
def test_property_round_trip(size, root, timestamp):
    cp = Checkpoint(ORIGIN, size, root)
    assert parse_checkpoint_text(cp.text()) == cp
    data = sign_checkpoint(cp, SIGNER, timestamp).format()
    opened = open_checkpoint(data, LOG_KEY)
    assert opened.checkpoint == cp
    assert (opened.size, opened.root_hash, opened.timestamp) == (size, root, timestamp)
    assert opened.format() == data


FLIP_SIGNED = sign_checkpoint(Checkpoint(ORIGIN, 1234, ROOT), SIGNER, TS)
FLIP_DATA = FLIP_SIGNED.format()


def _cosignature_identity_span() -> range:
    """Bytes of the cosignature line that only say whose it is: the name and the key ID.

    Corrupting them turns the log's cosignature into an unknown signature,
    which C2SP signed-note says to ignore; open_checkpoint then reports
    timestamp 0 (its documented value for a checkpoint without one). Base64
    chars 0-4 encode key-ID bits only and char 5 encodes key-ID bits 30-31 plus
    the first four timestamp bits.
    """
    cos_line = FLIP_SIGNED.note.signatures[1].line().encode()
    assert FLIP_DATA.endswith(cos_line)
    start = len(FLIP_DATA) - len(cos_line)
    name_start = start + len("\u2014 ".encode())
    b64_start = name_start + len(ORIGIN.encode()) + 1
    assert FLIP_DATA[b64_start - 1 : b64_start] == b" "
    return range(name_start, b64_start + 6)


COSIG_IDENTITY = _cosignature_identity_span()


def _check_flip(pos: int, xor: int) -> bool:
    """Flip one byte; assert it is rejected or harmless. Returns whether it was accepted."""
    data = bytearray(FLIP_DATA)
    data[pos] ^= xor
    try:
        opened = open_checkpoint(bytes(data), LOG_KEY)
    except PacspaceError:
        return False
    # Accepted: the checkpoint fields must be untouched...
    assert opened.checkpoint == FLIP_SIGNED.checkpoint
    assert (opened.checkpoint.origin, opened.size, opened.root_hash) == (ORIGIN, 1234, ROOT)
    # ...the log's Ed25519 signature line must be untouched...
    assert opened.note.text == FLIP_SIGNED.note.text
    assert opened.note.signatures[0] == FLIP_SIGNED.note.signatures[0]
    # ...and the only place a flip can land harmlessly is the name/key ID of the
    # cosignature, which then no longer counts as the log's (timestamp 0).
    assert pos in COSIG_IDENTITY, pos
    cos = opened.note.signatures[1]
    assert (cos.name, cos.key_id) != (ORIGIN, SIGNER.cosignature_verifier.key_id)
    assert opened.timestamp == 0
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(min_value=0, max_value=len(FLIP_DATA) - 1), xor=st.integers(min_value=1, max_value=255))
def test_property_single_byte_flip_rejected_or_harmless(pos, xor):
    _check_flip(pos, xor)


def test_every_position_single_bit_flips():
    accepted = set()
    for pos in range(len(FLIP_DATA)):
        for xor in (0x01, 0x02, 0x20):
            if _check_flip(pos, xor):
                accepted.add(pos)
    # pacspace requires the log's timestamp cosignature, so even a flip in its
    # name or key ID (which would make it "unknown" and ignored) is rejected.
    assert accepted == set()
