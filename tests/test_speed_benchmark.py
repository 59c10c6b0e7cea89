"""``benchmarks/speed.py --quick`` runs to the end and prints every figure with a ratio.

A smoke test, not a timed one: the speeds themselves are not asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SPEED = Path(__file__).resolve().parent.parent / "benchmarks" / "speed.py"
FIGURES = ("Register /s", "Register+discovery /s", "Read CPU", "Send CPU", "RSS per device")


def test_quick_run_prints_every_figure_and_its_ratio():
    run = subprocess.run([sys.executable, str(SPEED), "--quick"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.partition("medians of")[2]
    assert table, run.stdout
    for figure in FIGURES:
        rows = [line for line in table.splitlines() if line.strip().startswith(figure)]
        assert rows, f"no {figure!r} row in:\n{run.stdout}"
        assert re.search(r"\bx\d+\.\d\d\b", rows[0]), f"no ratio in {rows[0]!r}"
    assert "server CPU ms/op" in table
