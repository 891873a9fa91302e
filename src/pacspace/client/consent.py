"""A customer's consent: list invitations, verify one, accept it with a signature, or decline it.

Any provider can name any customer in a new relationship; until the customer
accepts, it is an invitation that the customer's monitor never follows. Before
accepting, the customer's machine verifies the genesis record in full: the
secret opens with its own key, the record is in the log under a checkpoint
signed by the pinned log key, it opens and carries the provider's signature,
and it names this relationship, both parties, the provider's relayed keys and
the customer's own keys. Only then does it sign the acceptance
(records.acceptance). A relationship that fails any of this cannot be accepted:
the customer is told why, and nothing else changes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from .. import exitcodes
from ..errors import PacspaceError
from ..keys import KeyUnusable, PublicKeys, fingerprint_matches, unwrap_secret
from ..note import Ed25519Verifier
from ..records.acceptance import sign_acceptance
from ..records.seal import RelationshipKeys, public_entry
from .home import Home
from .http import PacspaceClient
from .records import check_genesis, verified_checkpoint, verify_row


class CannotAccept(PacspaceError):
    """An invitation that does not verify for this customer: it can only be declined."""

    code = "cannot_accept"
    exit_code = exitcodes.VERIFICATION_FAILED


# The latest time an invitation can name: 9999-12-31T23:59:59Z, the last second a datetime (and a page) can show.
MAX_CREATED_AT = 253_402_300_799


@dataclass(frozen=True)
class Invitation:
    relationship: str
    provider: str
    provider_fingerprint: str | None  # of the keys the server relays; accepting checks the genesis names them
    cadence: str
    created_at: int | None  # Unix seconds; None if the server's answer did not name a time a page can show

    def to_json(self) -> dict[str, Any]:
        return {"relationship": self.relationship, "state": "pending", "provider": self.provider,
                "provider_fingerprint": self.provider_fingerprint, "cadence": self.cadence,
                "created_at": self.created_at}


async def invitations(client: PacspaceClient) -> list[Invitation]:
    """The relationships providers created naming this customer, which it has neither accepted nor declined."""
    out = []
    for info in await client.relationships(state="pending"):
        detail = await client.relationship(info["relationship"])
        keys = detail.get("provider_keys") or {}
        fingerprint, cadence = keys.get("fingerprint"), info.get("cadence", "")
        out.append(Invitation(info["relationship"], info["provider"],
                              fingerprint if isinstance(fingerprint, str) else None,
                              cadence if isinstance(cadence, str) else "", created_at(info.get("created_at"))))
    return out


def created_at(value: object) -> int | None:
    """The server's ``created_at`` (whole Unix seconds) if it is a time from 1970 to 9999; None for anything else
    (a string, a float, 1e20): one malformed field hides one date, never the invitation nor the poll."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CREATED_AT:
        return None
    return value


async def accept(
    client: PacspaceClient, home: Home, rid: str, log_key: Ed25519Verifier, provider_fingerprint: str | None = None
) -> dict[str, Any]:
    """Verify the invitation's genesis for this customer, then sign and send the acceptance; the server's answer."""
    me = (await client.me())["name"]
    detail = await client.relationship(rid)
    if detail.get("customer") != me:
        raise CannotAccept(f"{rid}: only its customer ({detail.get('customer')}) accepts a relationship")
    if detail.get("state") == "declined":
        raise CannotAccept(f"{rid}: you declined it; a declined relationship cannot be accepted")
    declining = f"; decline it with `pacspace relationship decline {rid}`"
    keys = detail.get("provider_keys")
    if not keys:
        raise CannotAccept(f"{rid}: its provider has no registered keys" + declining)
    provider = PublicKeys.from_json({"x25519": keys["x25519"], "ed25519": keys["ed25519"]})
    if provider_fingerprint is not None and not fingerprint_matches(provider.fingerprint(), provider_fingerprint):
        raise CannotAccept(f"{rid}: the provider's keys have fingerprint {provider.fingerprint()}, not "
                           f"{provider_fingerprint.strip()}: not accepted" + declining)
    mine = home.keys()
    try:
        secret = unwrap_secret(base64.b64decode(detail.get("wrap") or ""), mine, rid, 0)
    except (KeyUnusable, ValueError):
        raise CannotAccept(f"{rid}: its secret is not wrapped to your key, so none of its records would ever open "
                           "for you" + declining) from None
    rows = await client.records(rid, -1, 1)
    if not rows or rows[0].get("seq") != 0:
        raise CannotAccept(f"{rid}: its genesis record is not in the log yet; try again in a moment")
    checkpoint = await verified_checkpoint(client, home, log_key)
    try:
        record = await verify_row(client, rows[0], RelationshipKeys(secret), provider, checkpoint)
        check_genesis(record.body, rid, detail, provider, mine, me)
    except PacspaceError as exc:
        raise CannotAccept(f"{rid}: its genesis record does not verify for you: {exc}" + declining) from None
    signature = sign_acceptance(mine.ed25519, rid, public_entry(record.tag, record.blob))
    return await client.accept(rid, signature)


async def decline(client: PacspaceClient, rid: str) -> dict[str, Any]:
    return await client.decline(rid)
