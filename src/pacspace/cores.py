"""How many processes of helpers a machine's cores warrant: one a core, none on a single core."""

from __future__ import annotations

import os


def helper_processes() -> int:
    """One a core this process may run on (its affinity, not the machine's count); 0 on a single core, where
    helper processes would only add hand-offs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores > 1 else 0
