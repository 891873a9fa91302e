"""A party's local state under PACSPACE_HOME: its private keys (0600), the pinned log key, chain heads.

Layout:
  party.x25519, party.ed25519   raw 32-byte private keys, mode 0600, never sent anywhere
  log.vkey                      the log's verifier key, pinned at `keys init`
  checkpoint                    the last log checkpoint this party verified (later ones must be consistent)
  chains/<relationship>.json    what it verified of a relationship: {"next_seq", "head", "provider_fingerprint"}
  chains/<relationship>.secret  (provider) the relationship secret it drew, mode 0600: the recorder extends
                                the chain from it without fetching and unwrapping it again
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..durable import write_new_file
from .. import exitcodes
from ..errors import PacspaceError
from ..keys import PartyKeys
from ..note import Ed25519Verifier, parse_vkey


class HomeError(PacspaceError):
    code = "home"
    exit_code = exitcodes.USAGE


def default_home() -> Path:
    return Path(os.environ.get("PACSPACE_HOME") or Path.home() / ".pacspace")


@dataclass(frozen=True)
class Home:
    path: Path

    def has_keys(self) -> bool:
        return (self.path / "party.ed25519").exists()

    def create_keys(self) -> PartyKeys:
        if self.has_keys():
            raise HomeError(f"keys already exist in {self.path}")
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = PartyKeys.generate()
        x, e = keys.private_bytes()
        write_new_file(self.path / "party.x25519", x, mode=0o600)
        write_new_file(self.path / "party.ed25519", e, mode=0o600)
        return keys

    def keys(self) -> PartyKeys:
        paths = [self.path / "party.x25519", self.path / "party.ed25519"]
        if not all(p.exists() for p in paths):
            raise HomeError(f"no party keys in {self.path} (run `pacspace keys init`)")
        for p in paths:
            if p.stat().st_mode & 0o077:
                raise HomeError(f"{p} is readable by others; run chmod 600 {p}")
        return PartyKeys.from_private_bytes(paths[0].read_bytes(), paths[1].read_bytes())

    def discard_keys(self) -> None:
        """Undo create_keys: the key files, and the home itself if that leaves it empty."""
        for name in ("party.x25519", "party.ed25519"):
            (self.path / name).unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass  # it holds other files: it was there before

    def check_log_key(self, vkey: str) -> None:
        """Refuse a log key that is not a vkey, or not the one pinned here already (writes nothing)."""
        parse_vkey(vkey)
        path = self.path / "log.vkey"
        if path.exists() and path.read_text().strip() != vkey:
            raise HomeError(f"the server's log key differs from the one pinned in {path}")

    def pin_log_key(self, vkey: str) -> None:
        self.check_log_key(vkey)
        path = self.path / "log.vkey"
        if not path.exists():
            write_new_file(path, (vkey + "\n").encode(), mode=0o644)

    def log_key(self, override: str | None = None) -> Ed25519Verifier:
        text = override or ((self.path / "log.vkey").read_text().strip() if (self.path / "log.vkey").exists() else "")
        if not text:
            raise HomeError("no pinned log key (run `pacspace keys init`, or pass --log-key)")
        verifier = parse_vkey(text)
        if not isinstance(verifier, Ed25519Verifier):
            raise HomeError("the log key must be an Ed25519 (type 0x01) vkey")
        return verifier

    def relationship_state(self, rid: str) -> dict[str, object]:
        """What this party verified of a relationship before: {"next_seq", "head", "provider_fingerprint"}."""
        path = self.path / "chains" / f"{rid}.json"
        if not path.exists():
            return {}
        return dict(json.loads(path.read_text()))

    def save_relationship_state(self, rid: str, state: dict[str, object]) -> None:
        self._write_json(self.path / "chains" / f"{rid}.json", state)

    def save_relationship_secret(self, rid: str, secret: bytes) -> None:
        (self.path / "chains").mkdir(parents=True, exist_ok=True, mode=0o700)
        write_new_file(self.path / "chains" / f"{rid}.secret", secret, mode=0o600)

    def relationship_secret(self, rid: str) -> bytes | None:
        path = self.path / "chains" / f"{rid}.secret"
        return path.read_bytes() if path.exists() else None

    def last_checkpoint(self) -> bytes | None:
        path = self.path / "checkpoint"
        return path.read_bytes() if path.exists() else None

    def save_checkpoint(self, note: bytes) -> None:
        self._write_atomic(self.path / "checkpoint", note)

    def _write_json(self, path: Path, value: dict[str, object]) -> None:
        self._write_atomic(path, json.dumps(value, sort_keys=True).encode())

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
