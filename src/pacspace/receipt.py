"""Receipts in the C2SP tlog-proof format: an offline-verifiable proof that one entry is in the log. Pure.

```
c2sp.org/tlog-proof@v1
extra <base64 of the 65-byte entry>
index <i>
<base64 inclusion path hash, one a line, leaf sibling first>

<signed checkpoint>
```

pacspace puts the public entry in the ``extra`` line, so a receipt is
self-contained. The extra data is not trusted: the inclusion proof under the
signed checkpoint is what authenticates it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checkpoint import SignedCheckpoint, open_checkpoint
from .errors import MalformedInput
from .merkle import HASH_SIZE, leaf_hash, verify_inclusion
from .note import Ed25519Verifier, b64decode_strict, b64encode

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX = re.compile(r"index (0|[1-9][0-9]{0,19})")


class MalformedReceipt(MalformedInput):
    code = "malformed_receipt"


@dataclass(frozen=True)
class Receipt:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None

    def format(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append(f"extra {b64encode(self.extra)}")
        lines.append(f"index {self.index}")
        lines += [b64encode(h) for h in self.proof]
        return "\n".join(lines) + "\n\n" + self.checkpoint.decode("utf-8")


def parse_receipt(text: str) -> Receipt:
    """Parse strictly; the result re-formats to exactly ``text``."""
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise MalformedReceipt("a receipt has an empty line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise MalformedReceipt(f"a receipt starts with {HEADER}")
    at = 1
    extra = None
    try:
        if at < len(lines) and lines[at].startswith("extra "):
            extra = b64decode_strict(lines[at][len("extra ") :])
            at += 1
        match = _INDEX.fullmatch(lines[at]) if at < len(lines) else None
        if match is None:
            raise MalformedReceipt("a receipt names its index as 'index <decimal>'")
        proof = tuple(b64decode_strict(line) for line in lines[at + 1 :])
    except MalformedInput as exc:
        raise MalformedReceipt(f"malformed receipt: {exc}") from None
    if any(len(h) != HASH_SIZE for h in proof):
        raise MalformedReceipt("inclusion proof hashes are 32 bytes")
    receipt = Receipt(int(match.group(1)), proof, checkpoint.encode("utf-8"), extra)
    if receipt.format() != text:
        raise MalformedReceipt("receipt is not in canonical form")
    return receipt


@dataclass(frozen=True)
class VerifiedReceipt:
    index: int
    entry: bytes | None
    leaf_hash: bytes
    checkpoint: SignedCheckpoint


def verify_receipt(text: str, log_key: Ed25519Verifier, entry: bytes | None = None) -> VerifiedReceipt:
    """Check the checkpoint's signatures and the entry's inclusion under it; raises on any failure.

    ``entry`` defaults to the receipt's extra data; pass the entry you expect to bind it.
    """
    receipt = parse_receipt(text)
    checkpoint = open_checkpoint(receipt.checkpoint, log_key)
    entry = entry if entry is not None else receipt.extra
    if entry is None:
        raise MalformedReceipt("the receipt carries no entry and none was given")
    leaf = leaf_hash(entry)
    verify_inclusion(receipt.index, checkpoint.size, leaf, receipt.proof, checkpoint.root_hash)
    return VerifiedReceipt(receipt.index, entry, leaf, checkpoint)
