"""Recordation records: canonical bodies, sealing, and chain rules. Pure: no I/O."""
