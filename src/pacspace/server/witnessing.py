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


@dataclass
class WitnessPool:
    policy: Policy
    tree: HashReader
    timeout: float = 5.0
    known_size: dict[str, int] = field(default_factory=dict)  # owned by the event loop
    failures: int = 0

    async def cosign(self, checkpoint: SignedCheckpoint) -> SignedCheckpoint:
        witnesses = [w for w in self.policy.witnesses.values() if w.url]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            answers = await asyncio.gather(*(self._ask(session, w, checkpoint) for w in witnesses))
        lines = [line for line in answers if line is not None]
        note = checkpoint.note.with_signatures(*lines)
        if not self.policy.satisfied(set(self.policy.cosigners(note))):
            self.failures += 1
            raise WitnessQuorumFailed(
                f"only {len(lines)} of {len(witnesses)} witnesses cosigned size {checkpoint.size}; the policy's quorum "
                "is not met, so the checkpoint is not published yet"
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
                    answer = await resp.read()
                    if resp.status == 409 and resp.headers.get("Content-Type", "").startswith("text/x.tlog.size"):
                        self.known_size[witness.name] = int(answer.strip())
                        continue
                    if resp.status != 200:
                        log.warning("witness %s refused size %d: %d %s", witness.name, checkpoint.size, resp.status,
                                    answer[:200].decode(errors="replace").strip())
                        return None
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                log.warning("witness %s unreachable: %s", witness.name, exc)
                return None
            try:
                cosigned = parse_note(checkpoint.format() + answer)
            except PacspaceError:
                return None
            for sig in cosigned.signatures[len(checkpoint.note.signatures):]:
                if (sig.name, sig.key_id) == (witness.verifier.name, witness.verifier.key_id) and \
                        witness.verifier.timestamp(cosigned.text, sig.signature) is not None:
                    self.known_size[witness.name] = checkpoint.size
                    return sig
            return None
        return None
