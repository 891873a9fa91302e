"""C2SP tlog-policy: which witnesses' cosignatures a checkpoint needs before anyone trusts it. Pure.

Lines: ``log <vkey> [url]``, ``witness <name> <vkey> [url]``, ``group <name> <k|any|all> <member>...``
and exactly one ``quorum <group|witness|none>``. A group is satisfied when at least k of its
members (witnesses or groups defined before it) are. Control characters other than tab and newline
are refused, as the spec says (a CRLF file among them).

Each witness counts once: two vkeys that wrap the same public key are duplicates
whatever their names and key IDs (an Ed25519 cosignature does not commit to the
cosigner's name, so one witness's line can be relabelled as the other's), a name
is a group member at most once, and a witness may not hold a listed log's key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import MalformedInput
from .note import CosignatureVerifier, Ed25519Verifier, Note, parse_vkey

_BLANKS = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Witness:
    name: str
    verifier: CosignatureVerifier
    url: str | None


@dataclass
class Policy:
    logs: dict[str, Ed25519Verifier] = field(default_factory=dict)
    witnesses: dict[str, Witness] = field(default_factory=dict)
    groups: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    quorum: str | None = None  # None: no cosignature needed

    def satisfied(self, cosigned: set[str]) -> bool:
        """Whether the witnesses in ``cosigned`` (policy names) meet the quorum."""
        if self.quorum is None:
            return True
        return self._holds(self.quorum, cosigned)

    def _holds(self, name: str, cosigned: set[str]) -> bool:
        if name in self.witnesses:
            return name in cosigned
        threshold, members = self.groups[name]
        return sum(self._holds(m, cosigned) for m in members) >= threshold

    def cosigners(self, note: Note) -> dict[str, int]:
        """Policy witness name -> signed time, for every cosignature line that verifies."""
        by_key = {(w.verifier.name, w.verifier.key_id): name for name, w in self.witnesses.items()}
        found: dict[str, int] = {}
        for sig in note.signatures:
            name = by_key.get((sig.name, sig.key_id))
            if name is None:
                continue
            timestamp = self.witnesses[name].verifier.timestamp(note.text, sig.signature)
            if timestamp is not None:
                found[name] = timestamp
        return found


@dataclass
class _Keys:
    """Who holds each public key seen so far: ("log" | "witness", label, line)."""

    holders: dict[bytes, tuple[str, str, int]] = field(default_factory=dict)

    def claim(self, public_key: bytes, kind: str, label: str, line: int) -> None:
        held = self.holders.get(public_key)
        if held is None:
            self.holders[public_key] = (kind, label, line)
            return
        other_kind, other, other_line = held
        if kind == other_kind:
            raise MalformedInput(
                f"duplicate {kind}: {label} has the same public key as {other} (line {other_line}); "
                "C2SP tlog-policy counts them as one"
            )
        raise MalformedInput(
            f"the {kind} {label} and the {other_kind} {other} (line {other_line}) share a key: a witness holding "
            "the log's own key would let the log witness itself"
        )


def parse_policy(text: str) -> Policy:
    policy = Policy()
    keys = _Keys()
    member_of: dict[str, str] = {}
    quorum_line = 0
    for number, raw in enumerate(text.split("\n"), 1):
        bad = next((c for c in raw if (c < " " and c != "\t") or c == "\x7f"), None)
        if bad is not None:
            hint = " (save the file with LF line ends)" if bad == "\r" else ""
            raise MalformedInput(f"policy line {number}: control character {bad!r}: C2SP tlog-policy allows only tab "
                                 f"and newline{hint}")
        # C2SP tlog-policy: words are separated by spaces and tabs only (other octets, non-ASCII ones included,
        # are part of words), and a comment is a whole line whose first non-blank character is "#".
        words = [w for w in _BLANKS.split(raw) if w]
        if not words or words[0].startswith("#"):
            continue
        where = f"policy line {number}"
        keyword = words[0]
        try:
            if keyword == "log":
                verifier = parse_vkey(words[1])
                if not isinstance(verifier, Ed25519Verifier) or len(words) > 3:
                    raise MalformedInput("'log <Ed25519 vkey> [url]'")
                keys.claim(verifier.public_key, "log", verifier.name, number)
                policy.logs[verifier.name] = verifier
            elif keyword == "witness":
                name, key = words[1], parse_vkey(words[2])
                if not isinstance(key, CosignatureVerifier) or len(words) > 4:
                    raise MalformedInput("'witness <name> <cosignature vkey> [url]'")
                if name in policy.witnesses or name in policy.groups or name == "none":
                    raise MalformedInput(f"{name!r} is defined twice" if name != "none" else "'none' is predefined")
                keys.claim(key.public_key, "witness", repr(name), number)
                policy.witnesses[name] = Witness(name, key, words[3] if len(words) == 4 else None)
            elif keyword == "group":
                name, k, members = words[1], words[2], tuple(words[3:])
                if not members or name in policy.witnesses or name in policy.groups or name == "none":
                    raise MalformedInput("'group <new name> <k|any|all> <members...>'")
                for m in members:
                    if m not in policy.witnesses and m not in policy.groups:
                        raise MalformedInput(f"unknown member {m!r} (define it first)")
                    if members.count(m) > 1:
                        raise MalformedInput(f"member {m!r} is listed twice: it would count twice")
                    if m in member_of:
                        raise MalformedInput(f"{m!r} is already a member of group {member_of[m]!r}: "
                                             "C2SP tlog-policy lets a name be a group member once")
                threshold = 1 if k == "any" else len(members) if k == "all" else int(k)
                if not 1 <= threshold <= len(members):
                    raise MalformedInput(f"threshold {k!r} is not between 1 and {len(members)}")
                policy.groups[name] = (threshold, members)
                member_of.update((m, name) for m in members)
            elif keyword == "quorum":
                if quorum_line:
                    raise MalformedInput(f"a second quorum line (the first is line {quorum_line}): C2SP tlog-policy "
                                         "requires exactly one")
                if len(words) != 2:
                    raise MalformedInput("'quorum <group|witness|none>'")
                quorum_line = number
                if words[1] != "none":
                    if words[1] not in policy.witnesses and words[1] not in policy.groups:
                        raise MalformedInput(f"unknown quorum {words[1]!r}")
                    policy.quorum = words[1]
            else:
                raise MalformedInput(f"unknown keyword {keyword!r}")
        except (IndexError, ValueError):
            raise MalformedInput(f"{where}: malformed {keyword!r} line") from None
        except MalformedInput as exc:
            raise MalformedInput(f"{where}: {exc}") from None
    if not quorum_line:
        raise MalformedInput("the policy has no quorum line: C2SP tlog-policy requires exactly one "
                             "('quorum none' when no cosignature is needed)")
    return policy


def require_quorum(policy: Policy, note: Note) -> dict[str, int]:
    """The verified cosigners (name -> signed time); raises SignatureError unless they meet the quorum."""
    from .errors import SignatureError

    cosigners = policy.cosigners(note)
    if not policy.satisfied(set(cosigners)):
        have = ", ".join(sorted(cosigners)) or "none"
        raise SignatureError(f"the checkpoint lacks the policy's quorum of witness cosignatures (valid: {have})")
    return cosigners
