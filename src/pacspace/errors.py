"""Every error pacspace raises on purpose: one class per meaning.

Each class carries a stable machine-readable ``code`` and the HTTP status the
server answers with. Only the server middleware turns these into JSON bodies,
and only the CLI's main turns them into one stderr line and an exit code.
"""

from __future__ import annotations

from . import exitcodes


class PacspaceError(Exception):
    """Base class. ``code`` is stable API; the message is for humans."""

    code = "error"
    http_status = 500
    # What the pacspace command exits with (pacspace.exitcodes): one meaning per code.
    exit_code = exitcodes.FAILURE
    # What an HTTP client is told instead of the message, for errors whose message is the operator's (where the
    # database or the object store is, and how reaching it failed): the server logs the message.
    public_message: str | None = None

    def details(self) -> dict[str, object]:
        """Extra fields for the JSON error body (machine-readable hints, never secrets)."""
        return {}


class InvalidRange(PacspaceError):
    """Arguments that cannot describe a tree, leaf or proof (index >= size, ...)."""

    code = "invalid_range"
    http_status = 400


class ProofError(PacspaceError):
    """A Merkle inclusion or consistency proof did not verify."""

    code = "proof_failed"
    http_status = 422
    exit_code = exitcodes.VERIFICATION_FAILED


class MalformedInput(PacspaceError):
    """Bytes that do not parse as the format they claim to be."""

    code = "malformed"
    http_status = 400
    exit_code = exitcodes.USAGE


class MalformedNote(MalformedInput):
    """Not a well-formed C2SP signed note or checkpoint."""

    code = "malformed_note"


class MalformedTilePath(MalformedInput):
    """Not a canonical C2SP tlog-tiles path."""

    code = "malformed_tile_path"


class SignatureError(PacspaceError):
    """A note carries no valid signature from a trusted key, or a known key's signature fails."""

    code = "bad_signature"
    http_status = 422
    exit_code = exitcodes.VERIFICATION_FAILED


class NotFound(PacspaceError):
    """The resource is not implied by any published checkpoint, or does not exist."""

    code = "not_found"
    http_status = 404


class PoolFull(PacspaceError):
    """The sequencer's pool is at capacity; the caller should retry later."""

    code = "pool_full"
    http_status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SequencerStopped(PacspaceError):
    """The sequencer is not running (it failed or is shutting down); nothing was appended."""

    code = "sequencer_stopped"
    http_status = 503


class AdmissionFailed(PacspaceError):
    """Records' tags could not be checked against the log; nothing of them was appended."""

    code = "admission_failed"
    http_status = 503


class WriteFailed(PacspaceError):
    """A storage write failed for a reason nobody raised on purpose (logged once where it happened);
    nothing of it was kept, and the client learns nothing internal."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)


class DatabaseUnavailable(PacspaceError):
    """The log's PostgreSQL database did not answer (down, restarting, unreachable) or its records stayed locked:
    this request's write or read did not happen; a retry is safe (a record is never stored twice)."""

    code = "database_unavailable"
    http_status = 503


class EntryTooLarge(PacspaceError):
    """An entry exceeds the 65,535 bytes an entry bundle can carry."""

    code = "entry_too_large"
    http_status = 413


class LogExists(PacspaceError):
    """``init`` was asked to create a log where one already is."""

    code = "log_exists"
    http_status = 409


class LogNotFound(PacspaceError):
    """No log at the data directory."""

    code = "log_not_found"
    http_status = 500


class UntrustedState(PacspaceError):
    """Stored state does not reproduce what was published; refusing to run on it."""

    code = "untrusted_state"
    http_status = 500


class CheckpointConflict(UntrustedState):
    """The stored latest checkpoint is not the one the writer extended (another writer?)."""

    code = "checkpoint_conflict"


class LogLocked(PacspaceError):
    """Another process holds the data directory's write lock."""

    code = "log_locked"
    http_status = 500


class WriterElsewhere(LogLocked):
    """Another process holds the writer's lock of the log in PostgreSQL: it sequences the log."""


class SequencerUnavailable(PacspaceError):
    """A standby could not reach the serve that sequences the log (it stopped, or another is taking over)."""

    code = "sequencer_unavailable"
    http_status = 503


class ObjectStoreFailed(PacspaceError):
    """The object store (``--objects s3://...``) could not be reached or refused a request; nothing is lost:
    what it should hold stays in the database until it takes it."""

    code = "object_store_failed"
    http_status = 503
    public_message = "the log's object store did not answer: retry"


class DatabaseUnreachable(UntrustedState):
    """No connection to the log's PostgreSQL database could be made (down, restarting, unreachable): at start,
    the server does not run; for a request, it did not happen, and a retry is safe."""

    code = "database_unavailable"
    http_status = 503
    public_message = "the log's database did not answer: retry"


class DatabaseRefused(UntrustedState):
    """The log's database refused this server's role a read (a grant missing): the operator's to fix."""

    public_message = "the log's database refused this server's read (see the server's log)"


class ObjectCorrupt(UntrustedState):
    """An object in the object store does not match the log (a tampered or damaged tile, bundle or blob); it is
    never served, and never overwritten once the database records it moved."""

    code = "object_corrupt"
    http_status = 502


class FrontendReadOnly(PacspaceError):
    """A read-only frontend (``serve --frontend``) was asked for what only the sequencing server answers."""

    code = "frontend_read_only"
    http_status = 421
