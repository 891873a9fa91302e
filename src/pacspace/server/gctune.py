"""The cyclic garbage collector, set for a long-running request server.

CPython collects its youngest generation after every 700 net allocations of
container objects, and every request allocates hundreds (aiohttp's request and
response objects, futures, the handler's dicts and lists). With the default,
the collector took about 15% of an HTTP worker's CPU in the single-append
benchmark (perf, docs/performance.md). Almost all of those objects are freed by
reference counting long before a collection; the collector exists only for
cycles, which are rare here.

So, once a server process is set up: everything alive then (modules, the app,
open stores) lives until the process exits and is moved out of the collector's
sight (``gc.freeze``), and the young generation is collected 100 times less
often. Cycles are still collected, later; memory stays bounded.
"""

from __future__ import annotations

import gc

# Net container allocations between collections of the youngest generation (CPython: 700).
YOUNG_THRESHOLD = 70_000


def tune_for_serving() -> None:
    """Call once the process is set up: what is alive now is kept for its lifetime and never traversed again."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
