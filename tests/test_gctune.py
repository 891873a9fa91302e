"""A server process's collector, once it is set up: what lives then is frozen, young collections are rarer."""

from __future__ import annotations

import gc
import subprocess
import sys

from pacspace.server.gctune import YOUNG_THRESHOLD


def test_tuning_freezes_what_lives_and_raises_the_young_threshold():
    # In a child process: the collector's settings belong to the whole process, not to this test run.
    code = (
        "import gc\n"
        "from pacspace.server.gctune import tune_for_serving\n"
        "keep = [[i] for i in range(1000)]\n"
        "before = gc.get_threshold()\n"
        "tune_for_serving()\n"
        "print(gc.get_freeze_count() >= 1000, gc.get_threshold()[0], gc.get_threshold()[1:] == before[1:])\n"
        "a = []; a.append(a); del a\n"
        "print(gc.collect() >= 1)\n"  # cycles made later are still collected
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", str(YOUNG_THRESHOLD), "True", "True"]
    assert gc.get_threshold()[0] != YOUNG_THRESHOLD  # and this process is untouched
