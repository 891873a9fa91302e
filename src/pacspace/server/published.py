"""The log's published checkpoint as a process that does not sequence sees it: from the stored checkpoints.

An HTTP worker (remote.py) and a frontend (frontend.py) both serve the log another process commits. The
newest stored checkpoint may still await its witnesses' cosignatures (or never get them): the published one
is then the newest stored one that has them, which is never older than what any other process served, since
the sequencer stores a checkpoint before anyone is told of it.
"""

from __future__ import annotations

from ..checkpoint import SignedCheckpoint, open_checkpoint
from ..errors import SequencerStopped
from ..note import Ed25519Verifier
from ..policy import Policy
from ..storage.logtables import LogTables

# Newest stored checkpoints read looking for a cosigned one when the newest is not.
MAX_WALK = 1000


class PublishedView:
    def __init__(self, store: LogTables, verifier: Ed25519Verifier, policy: Policy | None) -> None:
        self.store = store
        self.verifier = verifier
        self.policy = policy
        # Stored checkpoints newer than the published one that lacked the witnesses' quorum when last read.
        self._unpublished: dict[bytes, int] = {}
        self._note = b""
        self.published: SignedCheckpoint = self._newest_published(floor=-1)
        self._note = self.store.latest_checkpoint()

    @property
    def latest(self) -> SignedCheckpoint:
        """The latest published checkpoint, as committed by the sequencer (one small read of the store)."""
        return self.refresh()

    def refresh(self) -> SignedCheckpoint:
        """Read the newest stored checkpoint; if it changed, find the newest published one again."""
        note = self.store.latest_checkpoint()
        if note != self._note:
            self.advance(self._newest_published(floor=self.published.size))
            self._note = note  # only once the walk succeeded: one that failed is walked again next time
        return self.published

    def advance(self, checkpoint: SignedCheckpoint) -> None:
        """Publish ``checkpoint`` if it is newer and its witnesses' quorum cosigned it."""
        if checkpoint.size >= self.published.size and self._is_published(checkpoint):
            self.published = checkpoint
            for note, size in list(self._unpublished.items()):
                if size <= checkpoint.size:
                    del self._unpublished[note]

    def _is_published(self, checkpoint: SignedCheckpoint) -> bool:
        if self.policy is None or checkpoint.size == 0:
            return True
        return self.policy.satisfied(set(self.policy.cosigners(checkpoint.note)))

    def _newest_published(self, floor: int) -> SignedCheckpoint:
        """The newest stored checkpoint above size ``floor`` that is published; the current one if there is none."""
        for walked, note in enumerate(self.store.checkpoints_newest_first()):
            if walked >= MAX_WALK and floor >= 0:
                break  # a long witness outage: keep serving the published one rather than read them all
            if note in self._unpublished:
                continue
            checkpoint = open_checkpoint(note, self.verifier)
            if checkpoint.size <= floor:
                break
            if self._is_published(checkpoint):
                return checkpoint
            self._unpublished[note] = checkpoint.size
        if floor < 0:
            raise SequencerStopped("the log has no published checkpoint")
        return self.published
