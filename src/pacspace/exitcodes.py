"""Every exit code the pacspace command returns, each with one meaning (docs/monitor.md lists them).

The server never exits with these; the CLI's main turns errors into them at one place.
"""

from __future__ import annotations

OK = 0
FAILURE = 1  # an error that proves nothing about the log or a party (a server error, a file that cannot be written)
USAGE = 2  # bad arguments or bad input files
UNREACHABLE = 3  # the server could not be reached
INVOICE_DIFFERS = 4  # bill verify: the invoice differs from the committed record
INCOMPLETE = 5  # bill verify: the committed record is incomplete (no close yet, or nothing held)
VERIFICATION_FAILED = 6  # the committed record (or a receipt, a bundle) failed verification
RULE_BROKEN = 7  # an authentic record breaks a protocol rule: a finding (records.rules)
INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT), as shells report it

# The monitor's detections: the log or a provider misbehaved, with evidence.
DETECTIONS = {
    "bad_checkpoint_signature": 10,
    "inconsistent_checkpoints": 11,
    "rollback": 12,
    "inclusion_failed": 13,
    "chain_broken": 14,
    "bad_tag": 15,
    "bad_ciphertext": 16,
    "bad_signature": 17,
    "key_mismatch": 18,
    "unwitnessed_checkpoint": 19,
    "bad_proof": 20,
    "relationship_hidden": 21,
}
