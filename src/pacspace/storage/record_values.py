"""The values records.db holds (parties, relationships, records), the errors its writes raise, and
the rows they are read from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from ..errors import PacspaceError
from ..records.seal import entry_from_ct_hash

Role = Literal["provider", "customer"]


class RecordError(PacspaceError):
    http_status = 409


class PartyExists(RecordError):
    code = "party_exists"


class UnknownParty(RecordError):
    code = "unknown_party"
    http_status = 404


class KeysRegistered(RecordError):
    code = "conflict"


class RelationshipExists(RecordError):
    code = "relationship_exists"


class RelationshipDeclined(RecordError):
    """The customer declined the relationship: it takes no acceptance and no records."""

    code = "relationship_declined"


class RelationshipAccepted(RecordError):
    """The customer accepted the relationship: it cannot be declined any more."""

    code = "relationship_accepted"


class AcceptanceConflict(RecordError):
    """The relationship holds another acceptance signature already."""

    code = "conflict"


class SeqConflict(RecordError):
    """The seq is not the relationship's next one."""

    code = "seq_conflict"

    def __init__(self, message: str, expected: int) -> None:
        super().__init__(message)
        self.expected = expected

    def details(self) -> dict[str, object]:
        return {"expected_seq": self.expected}


class TagConflict(RecordError):
    code = "duplicate_tag"


class InFlight(RecordError):
    """An earlier record of the same relationship has not reached the log yet."""

    code = "previous_in_flight"


class RecordConflict(RecordError):
    """A different ciphertext for a seq that already has one."""

    code = "record_conflict"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(b"pacspace/v1 token\n" + token.encode("utf-8")).digest()


@dataclass(frozen=True)
class Party:
    name: str
    role: Role
    created_at: int
    revoked_at: int | None
    x25519: bytes | None
    ed25519: bytes | None


# A relationship's consent: pending until its customer accepts or declines it (records_schema, version 5).
STATES = ("pending", "accepted", "declined")


@dataclass(frozen=True)
class Relationship:
    id: str
    provider: str
    customer: str
    cadence: str
    billing_cycle: str
    created_at: int
    state: str = "pending"
    acceptance: bytes | None = None  # the customer's signature (records/acceptance.py)
    decided_at: int | None = None

    def has(self, party: str) -> bool:
        return party in (self.provider, self.customer)


@dataclass(frozen=True)
class StoredRecord:
    relationship: str
    seq: int
    tag: bytes
    ct_hash: bytes
    blob: bytes | None
    index: int | None
    checkpoint_size: int | None

    @property
    def entry(self) -> bytes:
        return entry_from_ct_hash(self.tag, self.ct_hash)


# The columns each value is read from (RECORD_COLUMNS from RECORD_ROWS, without the blob).
PARTY_COLUMNS = "name, role, created_at, revoked_at, x25519, ed25519"
RELATIONSHIP_COLUMNS = "id, provider, customer, cadence, billing_cycle, created_at, state, acceptance, decided_at"
RECORD_COLUMNS = "r.relationship, r.seq, r.tag, r.ct_hash, NULL, s.idx, s.checkpoint_size"
# A record row, and its log index once settled.
RECORD_ROWS = "records r LEFT JOIN settled s ON s.blob_id = r.blob_id"


def party_of(row: tuple) -> Party:  # type: ignore[type-arg]
    return Party(row[0], row[1], row[2], row[3], _b(row[4]), _b(row[5]))


def relationship_of(row: tuple) -> Relationship:  # type: ignore[type-arg]
    return Relationship(row[0], row[1], row[2], row[3], row[4], row[5], row[6], _b(row[7]), row[8])


def record_of(row: tuple) -> StoredRecord:  # type: ignore[type-arg]
    return StoredRecord(row[0], row[1], bytes(row[2]), bytes(row[3]), _b(row[4]), row[5], row[6])


def _b(value: bytes | memoryview | None) -> bytes | None:
    return None if value is None else bytes(value)
