"""The DTLS session file: it carries the sessions over a graceful restart, and is deleted
when read so that no session resumes twice (AES-CCM would then reuse a nonce)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

SESSION_FILE_VERSION = 1


def take_saved(path: Path, log) -> list[dict] | None:
    """The session exports saved at ``path``, the file deleted first; None when there is
    nothing to resume: no file, or it could not be read, deleted or parsed (logged)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as cause:
        log.error("dtls_session_file_unreadable", path=str(path), error=str(cause))
        text = None
    try:
        path.unlink()
    except OSError as cause:  # resuming now could resume again after a crash: never
        log.error("dtls_session_file_not_deleted", path=str(path), error=str(cause))
        return None
    if text is None:
        return None
    try:
        document = json.loads(text)
        return document["sessions"] if document.get("version") == SESSION_FILE_VERSION else []
    except (ValueError, AttributeError, KeyError, TypeError):
        log.error("dtls_session_file_malformed", path=str(path))
        return None


def write(path: Path, exports: list[dict], log) -> bool:
    """Write the session exports to ``path`` atomically, mode 0600. Whether they were
    written (if not, ``dtls_sessions_not_saved`` is logged)."""
    document = {"version": SESSION_FILE_VERSION, "saved_at": time.time(), "sessions": exports}
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(document, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as cause:
        log.error("dtls_sessions_not_saved", path=str(path), error=str(cause))
        with contextlib.suppress(OSError):
            temporary.unlink()
        return False
    return True
