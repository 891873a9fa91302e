"""Storage for the log: narrow interfaces with stated durability contracts, and their SQLite implementation."""

from .base import Batch, LogReader, LogWriter
from .sqlite import SqliteLog

__all__ = ["Batch", "LogReader", "LogWriter", "SqliteLog"]
