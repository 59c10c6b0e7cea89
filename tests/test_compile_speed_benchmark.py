"""``benchmarks/compile_speed.py --quick`` runs to the end and prints every figure with its baseline.

A smoke test, not a timed one: the speeds themselves are not asserted; the counts of the
fleet rollout are (they follow from the fleet and the ranking, not from the machine).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

COMPILE_SPEED = Path(__file__).resolve().parent.parent / "benchmarks" / "compile_speed.py"
PLUGINS = ("emlearn", "litert", "onnxruntime", "ptq-int8", "tflm", "vela")


def test_quick_run_prints_each_plugins_compile_times_and_the_fleet_hit_ratio():
    run = subprocess.run([sys.executable, str(COMPILE_SPEED), "--quick"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    tables = run.stdout.partition("medians of 1 run(s)")[2]
    compiles, _, fleet = tables.partition("fleet rollout (fleet.yaml, 50 devices)")
    assert compiles and fleet, run.stdout
    assert "CPU ms/compile cold" in compiles and "baseline: cold ms" in compiles
    for plugin in PLUGINS:
        rows = [line for line in compiles.splitlines() if line.startswith(f"{plugin} ")]
        assert rows, f"no {plugin} row in:\n{run.stdout}"
        assert all(re.search(r"\s\d+\.\d\d\s+\d+\.\d\s+x\d+\.\d{3}\s+\d+\.\d\s+\d+\.\d\d\s+\d+$", r) for r in rows), rows
    # 20 M0+ and 20 M4F (tflm), 2 gateways (litert), 4 M55 (vela and tflm both fit: 2 lookups each)
    assert re.search(r"^dense_int8\.tflite\s+50\s+46\s+5\s+50\s+x0\.10\s+0\.90\s", fleet, re.M), fleet
    assert re.search(r"^dense_float\.onnx\s+50\s+2\s+1\s+2\s+x0\.50\s+0\.50\s", fleet, re.M), fleet
    assert re.search(r"^classic_tree\.json\s+50\s+2\s+1\s+2\s+x0\.50\s+0\.50\s", fleet, re.M), fleet
