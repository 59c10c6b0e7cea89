"""``benchmarks/rollout_speed.py --quick`` runs to the end and prints every figure with a ratio.

A smoke test, not a timed one: the speeds themselves are not asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROLLOUT_SPEED = Path(__file__).resolve().parent.parent / "benchmarks" / "rollout_speed.py"
FIGURES = ("wall s", "devices/s", "server CPU ms/device", "event-loop thread", "other threads", "device CPU ms/device")


def test_quick_run_prints_every_figure_and_its_ratio():
    run = subprocess.run([sys.executable, str(ROLLOUT_SPEED), "--quick"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for mode in ("push", "pull"):
        for size in (20, 60):
            assert re.search(rf"^run 1: {mode} to {size}: [\d.]+ s \(\d+ done.*server CPU [\d.]+ ms/device", run.stdout, re.M), run.stdout
    table = run.stdout.partition("medians of")[2]
    assert table, run.stdout
    lines = [line.strip() for line in table.splitlines()]
    for mode in ("push", "pull"):
        for figure in FIGURES:
            rows = [line for line in lines if re.match(rf"{mode}\s+{re.escape(figure)}\b", line)]
            assert rows, f"no {mode} {figure!r} row in:\n{run.stdout}"
            assert re.search(r"\bx\d+\.\d\d\b", rows[0]), f"no ratio in {rows[0]!r}"
        assert any(line.startswith(f"{mode}: server busy") for line in lines), run.stdout
    assert re.search(r"push to 60 devices in <= 30 s: (yes|no) \([\d.]+ s\)", table), run.stdout
