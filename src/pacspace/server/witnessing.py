"""The log's side of C2SP tlog-witness: ask every witness of the policy to cosign each new checkpoint.

Each witness is asked with a consistency proof from the size it last cosigned
(learned from its 409 answer, then remembered). The checkpoint is published
only with the policy's quorum of valid cosignatures; otherwise the batch stays
committed but unpublished, and its submitters get WitnessQuorumFailed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from dataclasses import dataclass, field

import aiohttp

from ..checkpoint import SignedCheckpoint
from ..errors import PacspaceError
from ..merkle import HashReader, consistency_proof
from ..note import NoteSignature, parse_note
from ..policy import Policy, Witness

log = logging.getLogger("pacspace.witnessing")


class WitnessQuorumFailed(PacspaceError):
    """The checkpoint covering these entries did not get the policy's quorum of cosignatures in time.

    The entries are committed; they are published (and acknowledged) with a
    later checkpoint once the witnesses cosign one.
    """

    code = "witness_quorum_failed"
    http_status = 503


_SIZE_BODY = re.compile(rb"(0|[1-9][0-9]{0,19})\n?")


@dataclass
class WitnessPool:
    policy: Policy
    tree: HashReader
    timeout: float = 5.0
    known_size: dict[str, int] = field(default_factory=dict)  # owned by the event loop
    failures: int = 0

    async def cosign(self, checkpoint: SignedCheckpoint) -> SignedCheckpoint:
        """The checkpoint with the cosignatures of every witness that gives one, or WitnessQuorumFailed.

        A witness whose valid cosignature the checkpoint already carries (a restart with a changed
        policy) is not asked again: its line stays, with the earliest time it vouched for the tree.
        """
        present = self.policy.cosigners(checkpoint.note)
        witnesses = [w for w in self.policy.witnesses.values() if w.url and w.name not in present]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            answers = await asyncio.gather(*(self._ask(session, w, checkpoint) for w in witnesses))
        lines = [line for line in answers if line is not None]
        note = checkpoint.note.with_signatures(*lines)  # replaces, never repeats, a line from the same key
        if not self.policy.satisfied(set(self.policy.cosigners(note))):
            self.failures += 1
            raise WitnessQuorumFailed(
                f"only {len(lines) + len(present)} of {len(self.policy.witnesses)} witnesses cosigned size "
                f"{checkpoint.size}; the policy's quorum is not met, so the checkpoint is not published yet"
            )
        return SignedCheckpoint(checkpoint.checkpoint, note, checkpoint.timestamp)

    async def _ask(self, session: aiohttp.ClientSession, witness: Witness, checkpoint: SignedCheckpoint) -> NoteSignature | None:
        for _ in range(2):  # a 409 teaches the witness's size; ask once more with the right proof
            old = self.known_size.get(witness.name, 0)
            if old > checkpoint.size:
                log.error("witness %s holds size %d, beyond ours (%d)", witness.name, old, checkpoint.size)
                return None
            proof = consistency_proof(old, checkpoint.size, self.tree) if old else []
            body = (f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof) + "\n").encode()
            body += checkpoint.format()
            try:
                async with session.post(witness.url.rstrip("/") + "/add-checkpoint", data=body) as resp:  # type: ignore[union-attr]
                    status, answer = resp.status, await resp.read()
                    is_size = resp.headers.get("Content-Type", "").startswith("text/x.tlog.size")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("witness %s unreachable: %s", witness.name, exc)
                return None
            if status == 409 and is_size:
                size = _SIZE_BODY.fullmatch(answer)
                if size is None:
                    log.warning("witness %s answered 409 without a valid size", witness.name)
                    return None
                self.known_size[witness.name] = int(size.group(1))
                continue
            if status != 200:
                self._refused(witness, old, checkpoint.size, status, answer)
                return None
            return self._cosignature(witness, checkpoint, answer)
        return None

    def _refused(self, witness: Witness, old: int, size: int, status: int, answer: bytes) -> None:
        reason = answer[:200].decode(errors="replace").strip()
        # C2SP tlog-witness answered a same-size checkpoint with another root 409 (without a size)
        # until C2SP/C2SP@95978ca, and 422 since: either way the witness holds another tree.
        if status == 409 or (status == 422 and old == size):
            log.error("witness %s holds another tree at size %d than the log's: a fork, or a witness fault (%d %s)",
                      witness.name, size, status, reason)
        elif status == 422:
            log.error("witness %s refused the consistency proof from size %d to %d (%s)", witness.name, old, size, reason)
        else:
            log.warning("witness %s refused size %d: %d %s", witness.name, size, status, reason)

    def _cosignature(self, witness: Witness, checkpoint: SignedCheckpoint, answer: bytes) -> NoteSignature | None:
        """The witness's valid cosignature among the lines it answered (it may send several, for other keys)."""
        try:
            cosigned = parse_note(checkpoint.note.text.encode() + b"\n" + answer)
        except PacspaceError:
            log.warning("witness %s answered lines that are not note signatures", witness.name)
            return None
        for sig in cosigned.signatures:
            if (sig.name, sig.key_id) != (witness.verifier.name, witness.verifier.key_id):
                continue
            # C2SP tlog-witness: a cosignature for add-checkpoint MUST NOT have a zero timestamp.
            if witness.verifier.timestamp(cosigned.text, sig.signature) not in (None, 0):
                self.known_size[witness.name] = checkpoint.size
                return sig
        log.warning("witness %s answered no valid cosignature by its key", witness.name)
        return None
