"""The daemon's garbage-collector settings (lwm2m_server.heap), checked in a fresh
interpreter: they are process-wide, and this test process must keep its own."""

from __future__ import annotations

import json
import subprocess
import sys

from lwm2m_server.heap import THRESHOLDS

PROBE = """
import gc, json
from lwm2m_server.heap import tune_for_serving

class Node:
    pass

cycle = Node(); cycle.me = cycle  # startup garbage: collected, not frozen
del cycle
kept = [Node() for _ in range(100)]  # alive at start: frozen
tune_for_serving()
frozen = gc.get_freeze_count()
garbage = Node(); garbage.me = garbage  # a cycle made while serving is still collected
del garbage
print(json.dumps({"threshold": gc.get_threshold(), "frozen": frozen, "collected": gc.collect()}))
"""


def test_a_started_server_freezes_what_lives_and_collects_less_often():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    probe = json.loads(run.stdout)
    assert tuple(probe["threshold"]) == THRESHOLDS
    assert probe["frozen"] >= 100  # the objects alive at start, modules included
    assert probe["collected"] >= 1  # the cycle made after start
