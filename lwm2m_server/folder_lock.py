"""One daemon per data folder: an OS lock on ``<folder>/tinymlaas.lock``.

Two daemons on one ``data/`` would both drive the same rollouts and write the
same store. ``flock`` is released by the kernel when the process ends however it
ends (a SIGKILL included), so a stale lock never blocks a restart; the file keeps
the holder's PID only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "tinymlaas.lock"


class FolderInUse(Exception):
    """Another process holds the folder's lock; the message names the folder and its PID."""


class FolderLock:
    """Exclusive locks on some folders, taken together and released together."""

    def __init__(self, *folders: str | os.PathLike[str]) -> None:
        unique: dict[Path, None] = {}
        for folder in folders:
            unique.setdefault(Path(folder).resolve(), None)
        self.folders = tuple(unique)
        self._descriptors: list[int] = []

    def acquire(self) -> None:
        """Raise :class:`FolderInUse` (holding nothing) when another process has one of them."""
        try:
            for folder in self.folders:
                descriptor = _lock(folder)
                if descriptor is not None:
                    self._descriptors.append(descriptor)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        while self._descriptors:
            os.close(self._descriptors.pop())  # closing the descriptor drops the flock


def _lock(folder: Path) -> int | None:
    """The locked descriptor; None for a folder that cannot be made or written (whatever
    uses it then fails with its own error, naming its setting)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise FolderInUse(f"{folder} is in use by another tinymlaas daemon (pid {holder}): "
                          "one daemon per data folder") from None
    except BaseException:
        os.close(descriptor)
        raise
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor
