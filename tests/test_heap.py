"""A long-running process of ours freezes its start-up heap and collects young objects less
often (run in a child process: the collector's settings are the whole process's)."""

from __future__ import annotations

import subprocess
import sys

from nfbuilder.runtime.heap import YOUNG_THRESHOLD


def test_settle_freezes_what_start_up_made_and_collects_less_often() -> None:
    code = (
        "import gc\n"
        "from nfbuilder.runtime import heap\n"
        "before = gc.get_threshold()\n"
        "heap.settle()\n"
        "cycle = []; cycle.append(cycle); del cycle  # garbage made after start-up\n"
        "print(before[0], gc.get_threshold()[0], gc.get_freeze_count() > 1000, gc.collect())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    default, now, frozen, collected = out.stdout.split()
    # Python's default, ours, the start-up objects frozen, and a later cycle still collected
    assert (int(default), int(now), frozen, int(collected)) == (700, YOUNG_THRESHOLD, "True", 1)
