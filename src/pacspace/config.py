"""One frozen configuration for the server, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .sequencer import SequencerConfig

DEFAULT_DATA_DIR = Path("pacspace-data")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Where `--database` is read from when not given, and how serve passes it to its workers.
DATABASE_ENV = "PACSPACE_DATABASE"
# How serve hands its HTTP workers the sequencer's epoch that fences their records' writes (storage/pg_records.py).
EPOCH_ENV = "PACSPACE_SEQUENCER_EPOCH"


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    sequencer: SequencerConfig = field(default_factory=SequencerConfig)
    # A C2SP tlog-policy file: publish only checkpoints its witnesses' quorum cosigned.
    witness_policy: Path | None = None
    witness_timeout: float = 5.0
    # What one party's slow or large requests may cost the others (docs/operations.md, "Limits").
    # A connection delivers a complete request head within this many seconds of opening or of its
    # previous answer; an idle keep-alive connection is closed after it too.
    header_timeout: float = 10.0
    # A request body arrives within this many seconds, plus one a MiB of its declared length (or of
    # its route's limit, for a chunked body).
    body_timeout: float = 30.0
    # Connections one serving process holds; None: its RLIMIT_NOFILE less room for its own files.
    max_connections: int | None = None
    # Request-body bytes one serving process holds at once, across all its requests.
    body_memory: int = 256 << 20
    # Bytes of log a second, beyond a burst of 16 seconds' worth; the rest is dropped and counted.
    log_rate: int = 4096
    # Refused requests a second one party may make, beyond a burst of 10 seconds' worth, before its
    # requests are answered 429 (server/refusals.py).
    refusal_rate: float = 10.0
    # The PostgreSQL database that holds the log's tables (postgresql://...); None: SQLite in data_dir.
    # Kept out of repr: the URL may hold a password.
    database: str | None = field(default=None, repr=False)
    # The object store (s3://BUCKET[/PREFIX]) to keep the log's tiles and bundles in from now on (storage/objects.py).
    objects: str | None = None
    # Where the other serves of a log in PostgreSQL reach this one when it sequences (server/standby.py);
    # None: http://HOST:PORT.
    advertise: str | None = None

    @property
    def advertised(self) -> str | None:
        """Where the log's other serves reach this one; None if nobody can tell (it listens on every address)."""
        if self.advertise:
            return self.advertise
        if self.host in ("0.0.0.0", "::", ""):
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")
        if self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("header_timeout and body_timeout must be positive")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.refusal_rate <= 0:
            raise ValueError("refusal_rate must be positive")
        if self.body_memory < 1 << 20 or self.log_rate < 256:
            raise ValueError("body_memory is at least 1 MiB and log_rate at least 256 bytes a second")
