"""pacspace: a verifiable recordation log for usage-based billing."""

__version__ = "0.1.0"
