"""One frozen configuration for the server, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .sequencer import SequencerConfig

DEFAULT_DATA_DIR = Path("pacspace-data")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    sequencer: SequencerConfig = field(default_factory=SequencerConfig)
    # A C2SP tlog-policy file: publish only checkpoints its witnesses' quorum cosigned.
    witness_policy: Path | None = None
    witness_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")
