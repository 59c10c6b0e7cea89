"""Rollout progress for people: one line per rollout, and the live display of ``--watch``.

The words are the API's own (``state`` of a rollout, ``status`` of a device), so
the CLI, the API and the dashboard say the same thing; tests/test_cli_e2e.py checks
them against :class:`~lwm2m_server.ota.rollouts.RolloutState` and ``DeviceStatus``.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Callable, TextIO

ROLLOUT_STATES = ("running", "paused", "complete", "cancelled")
"""A rollout's ``state``: running (delivering, or waiting for a first matching device),
paused (by an operator or the failure threshold), complete (every matched device is
final; it enrols no more), cancelled."""

DEVICE_STATUSES = ("done", "failed", "rolled_back", "in_flight", "pending", "retry_wait", "incompatible",
                   "superseded")
"""A device's ``status`` in a rollout, in the order the progress line lists them: pending
(not started), in_flight (being delivered), retry_wait (waiting out a backoff), then the
final ones: done, failed, rolled_back (failed, the previous model restored),
incompatible (cannot run it: never sent anything), superseded (a newer rollout took it)."""

ALWAYS_SHOWN = ("done", "failed", "in_flight", "incompatible")
"""Counts shown even when 0; the others only when a device has that status."""

FAILED = ("failed", "rolled_back")
NOT_TARGETED = ("incompatible", "superseded")
"""Devices that get nothing from this rollout: not progress, and not in the bar's total."""

POLL_INTERVAL_S = 0.5
EMPTY_POLLS = 2
"""Polls in a row that find no matching device before ``--watch`` gives up."""

_BAR_WIDTH = 30
_MIN_BAR_WIDTH = 10


def _counts(rollout: dict[str, Any]) -> tuple[dict[str, int], int]:
    """Counts per status, and how many devices this rollout delivers to."""
    summary = rollout["summary"]
    counts = {status: int(summary["counts"].get(status, 0)) for status in DEVICE_STATUSES}
    return counts, summary["total"] - sum(counts[s] for s in NOT_TARGETED)


def _settled(rollout: dict[str, Any]) -> bool:
    summary = rollout["summary"]
    return bool(summary["total"]) and summary["finished"] == summary["total"]


def _annotation(rollout: dict[str, Any]) -> str:
    """What the state alone does not say about a running rollout."""
    if rollout["state"] == "running" and not rollout["summary"]["total"]:
        return "no device matches yet"
    if rollout["state"] == "running" and _settled(rollout) and rollout.get("strategy", {}).get("follow"):
        return "following: devices that match later join"
    return ""


def _bar(finished: int, targeted: int, width: int) -> str:
    filled = min(width, int(width * finished / targeted)) if targeted > 0 else 0
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def progress_line(rollout: dict[str, Any], width: int | None = None) -> str:
    """``r-1a2b running [######....] 3/4 done, 0 failed, 1 in_flight, 1 incompatible``.

    The state comes first, as the API names it. The bar and ``n/m`` count only devices
    the rollout delivers to: incompatible and superseded ones are listed apart, never
    as progress. With ``width`` the line is made to fit: a shorter bar, then none, then
    without the counts that are 0, then without the note, then cut with ``…``."""
    counts, targeted = _counts(rollout)
    attempted = counts["done"] + sum(counts[s] for s in FAILED)
    head = f"{rollout['id']} {rollout['state']}"
    note = _annotation(rollout)

    def line(bar_width: int, zeros: bool, with_note: bool) -> str:
        items = [f"{counts['done']}/{targeted} done"]
        items += [f"{counts[s]} {s}" for s in DEVICE_STATUSES
                  if s != "done" and (counts[s] or (zeros and s in ALWAYS_SHOWN))]
        bar = f" {_bar(attempted, targeted, bar_width)}" if bar_width else ""
        return f"{head}{bar} {', '.join(items)}" + (f" · {note}" if note and with_note else "")

    tries = [(bar_width, True, True) for bar_width in (_BAR_WIDTH, 20, _MIN_BAR_WIDTH, 0)]
    tries += [(0, False, True), (0, False, False)]
    for option in tries:
        text = line(*option)
        if width is None or len(text) <= width:
            return text
    return text[: max(1, width - 1)] + "…"


def outcome(rollout: dict[str, Any]) -> tuple[int, str] | None:
    """How ``--watch`` ends on this rollout: (exit status, what to say), or None to go on."""
    state, rollout_id = rollout["state"], rollout["id"]
    counts, _ = _counts(rollout)
    failed = sum(counts[s] for s in FAILED)
    failures = f"{failed} device(s) failed or rolled back (see `tinymlaas rollouts {rollout_id}`)"
    if state == "complete":
        if failed:
            return 1, f"rollout {rollout_id} complete, but {failures}"
        return 0, f"rollout {rollout_id} complete: {counts['done']} device(s) done, {counts['incompatible']} incompatible"
    if state == "paused":
        reason = rollout.get("paused_reason") or "by an operator"
        return 1, f"rollout {rollout_id} paused: {reason}; `tinymlaas rollouts {rollout_id} resume` goes on"
    if state == "cancelled":
        return 1, f"rollout {rollout_id} cancelled"
    if state == "running" and _settled(rollout) and rollout.get("strategy", {}).get("follow"):
        # a following rollout never completes: the watch ends once every device it matched is final
        if failed:
            return 1, f"rollout {rollout_id} follows on, but {failures}"
        return 0, f"rollout {rollout_id}: every matched device is final; it stays running for devices that match later"
    return None


def terminal_width() -> int:
    """Columns to print in: one fewer than the terminal's, so that no line wraps."""
    return max(20, shutil.get_terminal_size().columns - 1)


def watch(fetch: Callable[[], dict[str, Any]], *, out: TextIO | None = None,
          interval: float = POLL_INTERVAL_S, sleep: Callable[[float], None] = time.sleep) -> int:
    """Show a rollout's progress until it ends; its exit status (0 only when complete).

    On a terminal one line is redrawn in place (``\\r`` and clear-to-end), cut to the
    terminal's width; otherwise a line is printed each time it changes. A rollout
    whose selector matches no device ends the watch with status 1."""
    out = out or sys.stdout
    tty = out.isatty()
    last, empty = None, 0
    try:
        while True:
            rollout = fetch()
            line = progress_line(rollout, terminal_width() if tty else None)
            if tty:
                out.write(f"\r{line}\x1b[K")
                out.flush()
            elif line != last:
                print(line, file=out, flush=True)
            last = line
            ending = outcome(rollout)
            empty = empty + 1 if rollout["state"] == "running" and not rollout["summary"]["total"] else 0
            if ending is None and empty >= EMPTY_POLLS:
                rollout_id = rollout["id"]
                ending = 1, (f"no device matches the selector of rollout {rollout_id}; it waits for a first one "
                             f"(`tinymlaas rollouts {rollout_id} cancel` ends it)")
            if ending is not None:
                if tty:
                    out.write("\n")
                code, message = ending
                print(message if code == 0 else f"tinymlaas: {message}", file=out if code == 0 else sys.stderr,
                      flush=True)
                return code
            sleep(interval)
    except KeyboardInterrupt:
        if tty:
            out.write("\n")
        raise
