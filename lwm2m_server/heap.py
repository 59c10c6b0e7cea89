"""The garbage collector set for a long-running server process.

CPython's defaults (a young collection every 700 net allocations of containers, a full
one whenever the objects that outlived two collections grew by a quarter) suit short
programs. A server holding a fleet's registrations and profiles spent a fifth of its
time collecting during a registration storm: one worker taking 60,000 Registers spent
10.8 s of 53 s in 3,654 collections (27 full ones, 6.0 s), and with two workers the
leader, which also holds the other worker's devices, 3.6 s of about 21 s. Reference
counting frees what a request makes; the collector is there for cycles only, and
finds them as well when it runs 70 times less often (then: 0.3 s).
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 10)
"""Young collection every 50,000 net container allocations; the middle generation every
20 of those, the full collection every 10 of those at most (CPython still waits until
the survivors grew by a quarter)."""


def tune_for_serving() -> None:
    """Call once the server has started: what is alive then (modules, the object
    registry, configuration) lives as long as the process, and no collection looks at
    it again; from then on the collector runs at :data:`THRESHOLDS`."""
    gc.collect()  # startup's garbage is not kept forever
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
