"""``benchmarks/workers.py --quick`` runs to the end: 1 and 2 workers register the same
devices (from the C load generator it compiles), the table has a ratio and CPU per
Register, and the big phase registers every device, prints the server's RSS and how
many devices landed on each worker.

A smoke test, not a timed one: the speeds and the 1.7x target are not asserted. Needs
NATS on 127.0.0.1:4222 and gcc (skips without them unless ``TINYMLAAS_REQUIRE_NATS=1``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKERS = Path(__file__).resolve().parent.parent / "benchmarks" / "workers.py"


def missing() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=1):
            pass
    except OSError:
        return "no NATS server on 127.0.0.1:4222 (apt-get install nats-server)"
    if shutil.which("gcc") is None:
        return "no gcc to build benchmarks/register_load.c"
    return None


def test_quick_run_prints_the_ratio_rss_and_each_workers_share():
    if (reason := missing()) is not None:
        if os.environ.get("TINYMLAAS_REQUIRE_NATS") == "1":
            pytest.fail(f"{reason}, and TINYMLAAS_REQUIRE_NATS=1")
        pytest.skip(reason)
    run = subprocess.run([sys.executable, str(WORKERS), "--quick"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout

    table = out.partition("interleaved bursts of")[2]
    assert table, out
    rate = re.search(r"registrations/s \(profile stored\)\s+(\d+)\s+(\d+)\s+x(\d+\.\d\d)\s+>= 1\.7", table)
    assert rate, table
    one, two, ratio = int(rate[1]), int(rate[2]), float(rate[3])
    assert one > 0 and two > 0 and abs(ratio - two / one) < 0.02, rate[0]
    cpu = re.search(r"server CPU ms/Register\s+(\d+\.\d+)\s+(\d+\.\d+)", table)
    assert cpu and 0 < float(cpu[1]) < 100 and 0 < float(cpu[2]) < 100, table
    assert re.search(r"client CPU ms/Register\s+\d+\.\d+", table), table
    assert re.search(r"target x1\.7 (met|NOT met)", table), table

    big = re.search(r"(\d+) devices against 2 workers \(store \w+\): (\d+) registered and discovered in "
                    r"(\d+\.\d) s, (\d+)/s", out)
    assert big, out
    assert int(big[2]) == int(big[1]) == 2000 and float(big[3]) > 0 and int(big[4]) > 0, big[0]
    rss = re.search(r"server RSS after: (\d+) MB total \((.*)\)", out)
    assert rss and 30 < int(rss[1]) < 4000, out
    assert "leader" in rss[2] and "worker 1" in rss[2], rss[0]
    landed = re.search(r"landed on each worker .*?: (.*)", out)
    assert landed, out
    shares = [int(n) for n in re.findall(r"worker \S+: (\d+) \(", landed[1])]
    assert len(shares) == 2 and sum(shares) == 2000 and min(shares) > 0, landed[0]
    assert "4.04" in out  # it says how the devices answer the server's discovery reads
