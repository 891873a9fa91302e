"""C2SP signed-note (Ed25519, 0x01), tlog-cosignature/v1 (0x04), verifier keys and private key text.

Everything uses real Ed25519 keys; expected values are either the spec's
known answers or recomputed here independently of pacspace (hashlib,
base64 and cryptography directly).
"""

import base64
import hashlib
import struct
import traceback

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pacspace.errors import MalformedNote, PacspaceError, SignatureError
from pacspace.note import (
    ALG_ED25519,
    MAX_NOTE_SIGNATURES,
    MAX_NOTE_SIZE,
    MAX_TIMESTAMP,
    CosignatureVerifier,
    Ed25519Verifier,
    Note,
    NoteSignature,
    NoteSigner,
    open_note,
    parse_note,
    parse_vkey,
)

EM = "\u2014"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Known answers (C2SP tlog-checkpoint / signed-note test digest).
KAT_SEED = bytes(range(32))
KAT_NAME = "example.com/billing-log"
KAT_VKEY = "example.com/billing-log+edb7f3e8+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
KAT_TEXT = "example.com/billing-log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
KAT_SIG_LINE = (
    "\u2014 example.com/billing-log "
    "7bfz6GHD9KBteVvcdGrYW45NbGnk06NYv9arJA/OT/wwO8uDdPQ+F3B0UF/j3bEslDSFBHeWjHYxCL7Lv2/W1OfZSgA=\n"
)
SPEC_FOO_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"

TEXT = "example.com/log\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"


def signer(name: str = "example.com/log", n: int = 1) -> NoteSigner:
    return NoteSigner.from_seed(name, bytes([n]) * 32)


def raw_public(s: NoteSigner) -> bytes:
    return s.verifier.public_key


def independent_key_id(name: str, alg: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\x0a" + bytes([alg]) + public).digest()[:4]


def sig_payload(line: str) -> bytes:
    """base64-decode the last field of a signature line, independently of pacspace."""
    return base64.b64decode(line.rstrip("\n").split(" ")[-1], validate=True)


def signed_note(text: str = TEXT, *signers: NoteSigner) -> bytes:
    signers = signers or (signer(),)
    return Note(text, tuple(s.sign(text) for s in signers)).format()


def non_canonical_b64(b64: str) -> str:
    """Same decoded bytes under a lenient decoder, but with non-zero padding bits."""
    assert b64.endswith("=")
    i = len(b64.rstrip("=")) - 1
    idx = B64.index(b64[i])
    assert idx & 1 == 0  # canonical encodings have zero padding bits
    out = b64[:i] + B64[idx | 1] + b64[i + 1 :]
    assert base64.b64decode(out) == base64.b64decode(b64)
    return out


# ---------------------------------------------------------------- known answers


def test_kat_vkey_from_seed():
    s = NoteSigner.from_seed(KAT_NAME, KAT_SEED)
    assert s.verifier.vkey() == KAT_VKEY
    assert s.verifier.key_id == bytes.fromhex("edb7f3e8")


def test_kat_vkey_parses_back():
    v = parse_vkey(KAT_VKEY)
    assert isinstance(v, Ed25519Verifier)
    assert v.name == KAT_NAME
    assert v.public_key == Ed25519PrivateKey.from_private_bytes(KAT_SEED).public_key().public_bytes_raw()
    assert v.vkey() == KAT_VKEY


def test_kat_signature_line():
    s = NoteSigner.from_seed(KAT_NAME, KAT_SEED)
    sig = s.sign(KAT_TEXT)
    assert sig.line() == KAT_SIG_LINE
    assert sig.line()[0] == "\u2014"
    # The whole signed note parses and verifies against the known vkey.
    data = (KAT_TEXT + "\n" + KAT_SIG_LINE).encode("utf-8")
    note = parse_note(data)
    assert note.text == KAT_TEXT
    assert open_note(note, [parse_vkey(KAT_VKEY)]) == [sig]


def test_kat_empty_tree_root_is_sha256_of_nothing():
    root_line = KAT_TEXT.split("\n")[2]
    assert base64.b64decode(root_line) == hashlib.sha256(b"").digest()


def test_spec_example_vkey_parses():
    v = parse_vkey(SPEC_FOO_VKEY)
    assert isinstance(v, Ed25519Verifier)
    assert v.name == "example.com/foo"
    assert v.key_id == bytes.fromhex("530d903a")
    material = base64.b64decode("AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    assert material[0] == ALG_ED25519
    assert v.public_key == material[1:]
    assert independent_key_id("example.com/foo", 0x01, material[1:]) == bytes.fromhex("530d903a")
    assert v.vkey() == SPEC_FOO_VKEY


# ---------------------------------------------------------------- key IDs


@pytest.mark.parametrize("name", ["example.com/log", KAT_NAME, "a", "ünïcödé.example/λ"])
@pytest.mark.parametrize("n", [0, 7, 255])
def test_key_ids_match_independent_computation(name, n):
    s = NoteSigner.from_seed(name, bytes([n]) * 32)
    pub = Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32).public_key().public_bytes_raw()
    assert raw_public(s) == pub
    kid1 = independent_key_id(name, 0x01, pub)
    kid4 = independent_key_id(name, 0x04, pub)
    assert kid1 != kid4
    assert s.verifier.key_id == kid1
    assert s.cosignature_verifier.key_id == kid4
    assert s.verifier.vkey() == name + "+" + kid1.hex() + "+" + base64.b64encode(b"\x01" + pub).decode()
    assert s.cosignature_verifier.vkey() == name + "+" + kid4.hex() + "+" + base64.b64encode(b"\x04" + pub).decode()
    # The key ID prefixes each signature's payload.
    assert sig_payload(s.sign(TEXT).line())[:4] == kid1
    assert sig_payload(s.cosign(TEXT, 5).line())[:4] == kid4


def test_vkey_round_trip_both_algorithms():
    s = signer()
    v1 = parse_vkey(s.verifier.vkey())
    v4 = parse_vkey(s.cosignature_verifier.vkey())
    assert isinstance(v1, Ed25519Verifier) and v1 == s.verifier
    assert isinstance(v4, CosignatureVerifier) and v4 == s.cosignature_verifier


def _vkey_variants():
    s = signer()
    name, kid, key64 = s.verifier.vkey().split("+", 2)
    pub = raw_public(s)
    wrong_id = bytes(b ^ 0xFF for b in bytes.fromhex(kid)).hex()
    return {
        "wrong key id": f"{name}+{wrong_id}+{key64}",
        "short key id": f"{name}+{kid[:6]}+{key64}",
        "id of the other algorithm": f"{name}+{s.cosignature_verifier.key_id.hex()}+{key64}",
        "unknown algorithm": f"{name}+{independent_key_id(name, 2, pub).hex()}+"
        + base64.b64encode(b"\x02" + pub).decode(),
        "short key": f"{name}+{kid}+" + base64.b64encode(b"\x01" + pub[:31]).decode(),
        "unpadded key": f"{name}+{kid}+{key64.rstrip('=')}1",
        "two parts": f"{name}+{kid}",
        "empty name": f"+{kid}+{key64}",
        "name with space": f"exa mple+{kid}+{key64}",
    }


@pytest.mark.parametrize("case", sorted(_vkey_variants()))
def test_parse_vkey_rejects(case):
    with pytest.raises(MalformedNote):
        parse_vkey(_vkey_variants()[case])


# ---------------------------------------------------------------- Ed25519 note signatures


def test_note_signature_verifies_with_cryptography_directly():
    s = signer()
    sig = s.sign(TEXT)
    payload = sig_payload(sig.line())
    assert len(payload) == 4 + 64
    Ed25519PublicKey.from_public_bytes(raw_public(s)).verify(payload[4:], TEXT.encode())
    assert s.verifier.verify(TEXT, sig.signature)
    assert not s.verifier.verify(TEXT.replace("42", "43"), sig.signature)
    assert not s.verifier.verify(TEXT, sig.signature[:-1] + bytes([sig.signature[-1] ^ 1]))
    assert not s.verifier.verify(TEXT, sig.signature[:63])


def test_signer_rejects_bad_text():
    s = signer()
    for bad in ["no newline", "tab\there\n", "cr\r\n", "nul\x00\n", ""]:
        with pytest.raises(MalformedNote):
            s.sign(bad)
        with pytest.raises(MalformedNote):
            s.cosign(bad, 1)
        with pytest.raises(MalformedNote):
            Note(bad, ())


def test_verifier_rejects_bad_public_key_and_name():
    with pytest.raises(MalformedNote):
        Ed25519Verifier("a", b"\x00" * 31)
    with pytest.raises(MalformedNote):
        CosignatureVerifier("a", b"\x00" * 33)
    for name in ["", "a+b", "a b", "a\u00a0b", "a\tb", "a\u3000b"]:
        with pytest.raises(MalformedNote):
            Ed25519Verifier(name, b"\x00" * 32)
        with pytest.raises(MalformedNote):
            NoteSigner.from_seed(name, KAT_SEED)


def test_invalid_curve_point_key_just_fails_to_verify():
    # Not every 32-byte string is a point; verification must fail cleanly, not crash.
    v = Ed25519Verifier("a", b"\xff" * 32)
    assert v.verify(TEXT, bytes(64)) is False
    note = Note(TEXT, (NoteSignature("a", v.key_id, bytes(64)),))
    with pytest.raises(SignatureError):
        open_note(note, [v])


# ---------------------------------------------------------------- cosignatures


def test_cosignature_round_trip_and_independent_verification():
    s = signer()
    t = 1_700_000_000
    sig = s.cosign(TEXT, t)
    assert sig.name == s.name
    assert sig.key_id == independent_key_id(s.name, 0x04, raw_public(s))
    assert len(sig.signature) == 8 + 64
    assert sig.signature[:8] == t.to_bytes(8, "big")
    payload = sig_payload(sig.line())
    assert len(payload) == 76
    assert payload == sig.key_id + sig.signature

    assert s.cosignature_verifier.timestamp(TEXT, sig.signature) == t
    assert s.cosignature_verifier.verify(TEXT, sig.signature) is True

    message = b"cosignature/v1\ntime 1700000000\n" + TEXT.encode()
    Ed25519PublicKey.from_public_bytes(raw_public(s)).verify(payload[12:], message)
    # It is not a plain note signature over the text.
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(raw_public(s)).verify(payload[12:], TEXT.encode())
    assert not s.verifier.verify(TEXT, sig.signature[8:])


@pytest.mark.parametrize("t", [0, 1, 255, 2**32, MAX_TIMESTAMP])
def test_cosignature_timestamps(t):
    s = signer()
    sig = s.cosign(TEXT, t)
    assert struct.unpack(">Q", sig.signature[:8]) == (t,)
    assert s.cosignature_verifier.timestamp(TEXT, sig.signature) == t
    Ed25519PublicKey.from_public_bytes(raw_public(s)).verify(
        sig.signature[8:], f"cosignature/v1\ntime {t}\n{TEXT}".encode()
    )


@pytest.mark.parametrize("t", [-1, MAX_TIMESTAMP + 1, 2**64])
def test_cosign_rejects_out_of_range_timestamp(t):
    with pytest.raises(MalformedNote):
        signer().cosign(TEXT, t)


def test_cosignature_verifier_rejects_timestamp_above_2_63():
    # A genuine Ed25519 signature over a time beyond 2**63-1 must still be refused.
    seed = bytes([1]) * 32
    s = NoteSigner.from_seed("example.com/log", seed)
    t = 2**63
    raw = Ed25519PrivateKey.from_private_bytes(seed).sign(f"cosignature/v1\ntime {t}\n{TEXT}".encode())
    assert s.cosignature_verifier.timestamp(TEXT, t.to_bytes(8, "big") + raw) is None


def test_cosignature_tampering_fails():
    s = signer()
    t = 1_700_000_000
    sig = s.cosign(TEXT, t).signature
    v = s.cosignature_verifier
    assert v.timestamp(TEXT, sig) == t
    # timestamp
    assert v.timestamp(TEXT, (t + 1).to_bytes(8, "big") + sig[8:]) is None
    for i in range(8):
        assert v.timestamp(TEXT, sig[:i] + bytes([sig[i] ^ 0x01]) + sig[i + 1 :]) is None
    # text
    assert v.timestamp(TEXT.replace("42", "43"), sig) is None
    assert v.timestamp(TEXT + "x\n", sig) is None
    # signature
    for i in (8, 40, 71):
        assert v.timestamp(TEXT, sig[:i] + bytes([sig[i] ^ 0x80]) + sig[i + 1 :]) is None
    # length
    assert v.timestamp(TEXT, sig[:-1]) is None
    assert v.timestamp(TEXT, sig + b"\x00") is None
    assert v.timestamp(TEXT, sig[8:]) is None
    # another key
    assert signer(n=2).cosignature_verifier.timestamp(TEXT, sig) is None
    assert v.verify(TEXT, sig[:-1] + bytes([sig[-1] ^ 1])) is False


def test_cosignature_in_a_note_opens_with_cosignature_verifier():
    s = signer()
    note = parse_note(Note(TEXT, (s.sign(TEXT), s.cosign(TEXT, 99))).format())
    assert open_note(note, [s.cosignature_verifier]) == [note.signatures[1]]
    assert open_note(note, [s.verifier]) == [note.signatures[0]]
    assert open_note(note, [s.verifier, s.cosignature_verifier]) == list(note.signatures)


# ---------------------------------------------------------------- parse_note


def test_parse_round_trip():
    a, b = signer(n=1), signer("example.org/witness", n=2)
    data = Note(TEXT, (a.sign(TEXT), b.sign(TEXT), a.cosign(TEXT, 7))).format()
    note = parse_note(data)
    assert note.text == TEXT
    assert [s.name for s in note.signatures] == ["example.com/log", "example.org/witness", "example.com/log"]
    assert note.format() == data
    assert note.signatures[0].signature == a.sign(TEXT).signature


@pytest.mark.parametrize(
    "text",
    [
        "a\n\nb\n",
        "a\n\n",
        "a\n\n\n",
        "\n",
        "\n\n",
        "first\n\n\nafter two empty lines\n",
        f"{EM} looks like a signature line\n",
        f"a\n\n{EM} example.com/log AAAAAAA=\n",
        "ünïcödé 🎉\n",
    ],
)
def test_text_with_empty_lines_splits_at_last_empty_line(text):
    s = signer()
    data = Note(text, (s.sign(text),)).format()
    note = parse_note(data)
    assert note.text == text
    assert len(note.signatures) == 1
    assert note.format() == data
    assert open_note(note, [s.verifier]) == [s.sign(text)]


def test_empty_line_inside_signature_block_moves_the_split():
    # "text \n\n sig1 \n\n sig2": the last empty line is the split, so sig1 is text.
    s = signer()
    line = s.sign(TEXT).line()
    data = (TEXT + "\n" + line + "\n" + line).encode()
    note = parse_note(data)
    assert note.text == TEXT + "\n" + line
    assert len(note.signatures) == 1
    with pytest.raises(SignatureError):
        open_note(note, [s.verifier])


def _malformed_notes():
    s = signer()
    line = s.sign(TEXT).line()
    b64 = line.rstrip("\n").split(" ")[-1]
    name = s.name
    valid = TEXT + "\n" + line
    assert parse_note(valid.encode())
    return {
        "no blank line": TEXT + line,
        "no signatures": TEXT + "\n",
        "only text": TEXT,
        "missing final newline": valid[:-1],
        "extra trailing newline": valid + "\n",
        "control char tab in text": TEXT.replace("42", "4\t2") + "\n" + line,
        "control char CR": valid.replace("\n", "\r\n"),
        "control char NUL in text": "\x00" + valid,
        "control char ESC in sig line": TEXT + "\n" + line.replace(name, name + "\x1b"),
        "hyphen instead of em dash": TEXT + "\n" + line.replace(EM, "-"),
        "double hyphen": TEXT + "\n" + line.replace(EM, "--"),
        "en dash": TEXT + "\n" + line.replace(EM, "\u2013"),
        "no space after dash": TEXT + "\n" + line.replace(EM + " ", EM),
        "two spaces after dash": TEXT + "\n" + line.replace(EM + " ", EM + "  "),
        "two spaces before signature": TEXT + "\n" + line.replace(" " + b64, "  " + b64),
        "trailing space": TEXT + "\n" + line.replace("\n", " \n"),
        "leading space": TEXT + "\n " + line,
        "name with plus": TEXT + "\n" + line.replace(name, "example.com+log"),
        "name with space": TEXT + "\n" + line.replace(name, "example.com log"),
        "name with nbsp": TEXT + "\n" + line.replace(name, "example.com\u00a0log"),
        "empty name": TEXT + "\n" + line.replace(name + " ", " "),
        "no name": TEXT + "\n" + f"{EM} {b64}\n",
        "unpadded base64": TEXT + "\n" + line.replace(b64, b64.rstrip("=")),
        "over-padded base64": TEXT + "\n" + line.replace(b64, b64 + "=="),
        "non-canonical base64": TEXT + "\n" + line.replace(b64, non_canonical_b64(b64)),
        "url-safe base64": TEXT + "\n" + line.replace(b64, b64.replace("+", "-").replace("/", "_"))
        if ("+" in b64 or "/" in b64)
        else TEXT + "\n" + line.replace(b64, "-" + b64[1:]),
        "non-base64 char": TEXT + "\n" + line.replace(b64, "*" + b64[1:]),
        "empty signature": TEXT + "\n" + f"{EM} {name} \n",
        "4-byte signature": TEXT + "\n" + f"{EM} {name} {base64.b64encode(b'1234').decode()}\n",
        "1-byte signature": TEXT + "\n" + f"{EM} {name} {base64.b64encode(b'1').decode()}\n",
        "garbage line among signatures": TEXT + "\n" + line + "not a signature\n" + line,
        "empty line at end of signatures": valid + "\n" + line.replace(name, "x") + "\n",
    }


@pytest.mark.parametrize("case", sorted(_malformed_notes()))
def test_parse_note_rejects(case):
    data = _malformed_notes()[case].encode("utf-8")
    with pytest.raises(MalformedNote):
        parse_note(data)


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x80", b"\x80", b"\xf4\x90\x80\x80"],
    ids=["ff", "overlong", "surrogate", "truncated", "lone-continuation", "above-max"],
)
def test_parse_note_rejects_non_utf8(bad):
    valid = signed_note()
    with pytest.raises(MalformedNote):
        parse_note(bad + valid)
    # Also inside a signature line's name.
    s = signer()
    line = s.sign(TEXT).line().encode()
    with pytest.raises(MalformedNote):
        parse_note(TEXT.encode() + b"\n" + line.replace(s.name.encode(), s.name.encode() + bad))


def test_parse_note_accepts_five_byte_signature_and_exposes_key_id():
    five = base64.b64encode(b"\x01\x02\x03\x04\x05").decode()
    data = (TEXT + "\n" + f"{EM} other.example {five}\n").encode()
    note = parse_note(data)
    assert note.signatures == (NoteSignature("other.example", b"\x01\x02\x03\x04", b"\x05"),)
    assert note.format() == data


def _fake_sig_line(i: int) -> str:
    return f"{EM} witness{i}.example {base64.b64encode(i.to_bytes(4, 'big') + bytes(64)).decode()}\n"


def test_parse_note_signature_count_limit():
    base = TEXT + "\n"
    at_limit = (base + "".join(_fake_sig_line(i) for i in range(MAX_NOTE_SIGNATURES))).encode()
    assert len(parse_note(at_limit).signatures) == MAX_NOTE_SIGNATURES
    over = (base + "".join(_fake_sig_line(i) for i in range(MAX_NOTE_SIGNATURES + 1))).encode()
    with pytest.raises(MalformedNote):
        parse_note(over)


def test_at_least_16_real_signatures_accepted_and_verified():
    assert MAX_NOTE_SIGNATURES >= 16
    signers = [signer(f"witness{i}.example", n=i + 1) for i in range(20)]
    data = signed_note(TEXT, *signers)
    note = parse_note(data)
    assert len(note.signatures) == 20
    verified = open_note(note, [s.verifier for s in signers])
    assert verified == list(note.signatures)
    assert open_note(note, [s.verifier for s in signers[:16]]) == list(note.signatures[:16])


def test_parse_note_size_limit():
    s = signer()
    sig_line = s.sign("x\n").line().encode()

    def note_of_total(total: int) -> bytes:
        pad = total - len(b"\n\n" + sig_line)
        text = "x" * pad + "\n"
        return Note(text, (s.sign(text),)).format()

    exactly = note_of_total(MAX_NOTE_SIZE)
    assert len(exactly) == MAX_NOTE_SIZE
    note = parse_note(exactly)
    assert open_note(note, [s.verifier])
    over = note_of_total(MAX_NOTE_SIZE + 1)
    assert len(over) == MAX_NOTE_SIZE + 1
    with pytest.raises(MalformedNote):
        parse_note(over)
    with pytest.raises(MalformedNote):
        parse_note(b"x" * (10 * MAX_NOTE_SIZE))


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n", b"x", b"x\n\n"])
def test_parse_note_rejects_degenerate(data):
    with pytest.raises(MalformedNote):
        parse_note(data)


# ---------------------------------------------------------------- open_note


def test_open_note_ignores_unknown_signatures():
    a, b = signer("a.example", 1), signer("b.example", 2)
    unknown = NoteSignature("c.example", b"\x00\x01\x02\x03", b"garbage that never verifies")
    note = parse_note(Note(TEXT, (unknown, a.sign(TEXT), b.sign(TEXT))).format())
    assert open_note(note, [a.verifier]) == [a.sign(TEXT)]
    assert open_note(note, [b.verifier]) == [b.sign(TEXT)]
    assert open_note(note, [a.verifier, b.verifier]) == [a.sign(TEXT), b.sign(TEXT)]


def test_open_note_known_key_with_bad_signature_rejects():
    a, b = signer("a.example", 1), signer("b.example", 2)
    good_a = a.sign(TEXT)
    bad_a = NoteSignature(good_a.name, good_a.key_id, good_a.signature[:-1] + bytes([good_a.signature[-1] ^ 1]))
    note = parse_note(Note(TEXT, (b.sign(TEXT), bad_a)).format())
    with pytest.raises(SignatureError):
        open_note(note, [a.verifier, b.verifier])
    with pytest.raises(SignatureError):
        open_note(note, [a.verifier])
    # ...but it is just an unknown signature to someone who trusts only b.
    assert open_note(note, [b.verifier]) == [b.sign(TEXT)]
    # A signature over other text, by a known key, also rejects.
    note2 = parse_note(Note(TEXT, (a.sign("other\n"),)).format())
    with pytest.raises(SignatureError):
        open_note(note2, [a.verifier])
    # A bad signature by a known key rejects even if a good one by it is also there.
    note3 = parse_note(Note(TEXT, (good_a, bad_a)).format())
    with pytest.raises(SignatureError):
        open_note(note3, [a.verifier])


def test_open_note_same_name_other_key_id_is_ignored():
    real = signer("example.com/log", 1)
    impostor = signer("example.com/log", 2)
    assert real.verifier.key_id != impostor.verifier.key_id
    note = parse_note(Note(TEXT, (impostor.sign(TEXT), real.sign(TEXT))).format())
    assert open_note(note, [real.verifier]) == [real.sign(TEXT)]
    only_impostor = parse_note(Note(TEXT, (impostor.sign(TEXT),)).format())
    with pytest.raises(SignatureError):
        open_note(only_impostor, [real.verifier])


def test_open_note_same_key_id_other_name_is_ignored():
    a = signer("a.example", 1)
    sig = a.sign(TEXT)
    renamed = NoteSignature("b.example", sig.key_id, sig.signature)
    note = parse_note(Note(TEXT, (renamed,)).format())
    with pytest.raises(SignatureError):
        open_note(note, [a.verifier])


def test_open_note_without_known_signature_rejects():
    a, b = signer("a.example", 1), signer("b.example", 2)
    note = parse_note(signed_note(TEXT, b))
    with pytest.raises(SignatureError):
        open_note(note, [a.verifier])
    with pytest.raises(SignatureError):
        open_note(note, [])
    # A note signed only with a cosignature does not satisfy a 0x01 verifier.
    cos = parse_note(Note(TEXT, (a.cosign(TEXT, 1),)).format())
    with pytest.raises(SignatureError):
        open_note(cos, [a.verifier])


def test_open_note_wrong_algorithm_under_known_id_rejects():
    # A 0x01 signature relabelled with the 0x04 key ID is a bad signature by a known key.
    a = signer()
    sig = a.sign(TEXT)
    relabelled = NoteSignature(sig.name, a.cosignature_verifier.key_id, sig.signature)
    note = parse_note(Note(TEXT, (a.sign(TEXT), relabelled)).format())
    with pytest.raises(SignatureError):
        open_note(note, [a.verifier, a.cosignature_verifier])
    assert open_note(note, [a.verifier]) == [sig]


def test_open_note_errors_are_pacspace_errors():
    assert issubclass(SignatureError, PacspaceError)
    assert issubclass(MalformedNote, PacspaceError)


# ---------------------------------------------------------------- private key text


def _seed_with_plus() -> bytes:
    for i in range(256):
        seed = hashlib.sha256(bytes([i])).digest()
        if "+" in base64.b64encode(b"\x01" + seed).decode():
            return seed
    raise AssertionError("no seed found")


def test_private_key_text_kat():
    s = NoteSigner.from_seed(KAT_NAME, KAT_SEED)
    text = s.private_key_text()
    assert text == (
        f"PRIVATE+KEY+{KAT_NAME}+edb7f3e8+" + base64.b64encode(b"\x01" + KAT_SEED).decode()
    )
    back = NoteSigner.from_private_key_text(text)
    assert back.name == KAT_NAME
    assert back.verifier.vkey() == KAT_VKEY
    assert back.sign(KAT_TEXT).line() == KAT_SIG_LINE
    assert NoteSigner.from_private_key_text(text + "\n").verifier == s.verifier


@pytest.mark.parametrize("name", ["example.com/log", "a", "ünïcödé.example/λ", "x/y/z"])
def test_private_key_text_round_trip_with_plus_in_key_material(name):
    seed = _seed_with_plus()
    s = NoteSigner.from_seed(name, seed)
    text = s.private_key_text()
    key64 = base64.b64encode(b"\x01" + seed).decode()
    assert "+" in key64
    assert text.endswith("+" + key64)
    back = NoteSigner.from_private_key_text(text)
    assert back.name == name
    assert back.verifier == s.verifier
    assert back.cosignature_verifier == s.cosignature_verifier
    assert back.sign(TEXT) == s.sign(TEXT)
    assert back.private_key_text() == text


def _bad_private_keys():
    seed = _seed_with_plus()
    s = NoteSigner.from_seed("example.com/log", seed)
    text = s.private_key_text()
    kid = s.verifier.key_id.hex()
    key64 = base64.b64encode(b"\x01" + seed).decode()
    wrong_kid = bytes(b ^ 0x55 for b in s.verifier.key_id).hex()
    return seed, key64, {
        "wrong key id": text.replace(f"+{kid}+", f"+{wrong_kid}+"),
        "cosignature key id": text.replace(f"+{kid}+", f"+{s.cosignature_verifier.key_id.hex()}+"),
        "uppercase key id": text.replace(f"+{kid}+", f"+{kid.upper()}+") if kid.upper() != kid else None,
        "wrong name": text.replace("example.com/log", "example.com/other"),
        "name with space": text.replace("example.com/log", "example.com log"),
        "not private": text.replace("PRIVATE+KEY", "PUBLIC+KEY"),
        "vkey": s.verifier.vkey(),
        "wrong algorithm": text.replace(key64, base64.b64encode(b"\x04" + seed).decode()),
        "url-safe base64": text.replace(key64, key64.replace("+", "-").replace("/", "_")),
        "extra base64 char": text + "A",
        "padded past the end": text + "==",
        "truncated": text[:-4],
        "no id": f"PRIVATE+KEY+example.com/log+{key64}",
    }


@pytest.mark.parametrize("case", sorted(k for k, v in _bad_private_keys()[2].items() if v is not None))
def test_from_private_key_text_rejects_without_leaking(case):
    seed, key64, cases = _bad_private_keys()
    bad = cases[case]
    with pytest.raises(MalformedNote) as info:
        NoteSigner.from_private_key_text(bad)
    exc = info.value
    rendered = [str(exc), repr(exc), *map(str, exc.args), "".join(traceback.format_exception(exc))]
    secrets = [bad, bad.strip(), key64, seed.hex(), base64.b64encode(seed).decode()]
    # Every base64 fragment of the key material long enough to matter.
    secrets += [frag for frag in key64.split("+") if len(frag) >= 8]
    for text in rendered:
        for secret in secrets:
            assert secret not in text, (case, text)


def test_adding_a_signature_replaces_the_same_keys_line():
    """A note never carries two lines from one key (name and key ID): strict verifiers refuse such a note."""
    log = NoteSigner("example.com/log", Ed25519PrivateKey.from_private_bytes(bytes(32)))
    witness = NoteSigner("witness.example/w1", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    other = NoteSigner("witness.example/w2", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
    text = "example.com/log\n1\n" + base64.b64encode(bytes(32)).decode() + "\n"
    first, later = witness.cosign(text, 1_800_000_000), witness.cosign(text, 1_800_000_100)
    note = Note(text, (log.sign(text), first)).with_signatures(other.cosign(text, 1_800_000_000), later)
    assert note.signatures == (log.sign(text), later, other.cosign(text, 1_800_000_000))
    twice = Note(text, (log.sign(text),)).with_signatures(first, later)
    assert twice.signatures == (log.sign(text), later)
    keys = [(s.name, s.key_id) for s in parse_note(note.format()).signatures]
    assert len(keys) == len(set(keys)) == 3
