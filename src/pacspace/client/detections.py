"""What the monitor reports, and the evidence it keeps: detections (something failed verification) and the files
that prove them, written once under ``<PACSPACE_HOME>/evidence/`` (mode 0600)."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from ..errors import PacspaceError
from ..exitcodes import DETECTIONS
from .home import Home


class Detection(PacspaceError):
    """Proof that the log or a party misbehaved, with the evidence to show anyone.

    ``relationship`` is empty for a detection about the log itself; ``seq`` is the
    record's (or, about the log, the later checkpoint's size; -1 where neither
    applies). Together with ``kind`` they say when a detection is the one seen
    before, whose evidence is not written again.
    """

    code = "detection"

    def __init__(self, kind: str, message: str, evidence: dict[str, Any], relationship: str = "", seq: int = -1) -> None:
        super().__init__(message)
        self.kind = kind
        self.evidence = evidence
        self.relationship = relationship
        self.seq = seq
        self.evidence_path: str | None = None
        self.exit_code = DETECTIONS[kind]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def save_evidence(home: Home, detection: Detection) -> str:
    """Write the evidence of a detection to ``<home>/evidence/<time>-<kind>.json``; returns the path."""
    extra = {"relationship": detection.relationship} if detection.relationship else {}
    return write_evidence(home, detection.kind, {"kind": detection.kind, "message": str(detection), **extra,
                                                 **detection.evidence})


def write_evidence(home: Home, name: str, content: dict[str, Any]) -> str:
    folder = home.path / "evidence"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(100_000):
        path = folder / f"{stamp}-{name}{'' if n == 0 else f'-{n}'}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(content, indent=1))
        return str(path)
    raise PacspaceError(f"cannot name a new evidence file in {folder}")
