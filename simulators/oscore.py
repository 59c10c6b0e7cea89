"""The device's OSCORE (RFC 8613) security context, as a real client keeps it: in
persistent storage, with its sequence numbers and replay window (aiocoap's
``FilesystemSecurityContext``: ``settings.json``, ``secret.json`` and
``sequence.json`` in one folder, which one process locks while it uses it).

:func:`provision` writes the folder from what the LwM2M OSCORE object (/21) holds
for the device; **sender** and **recipient** ids are the device's (its Sender ID
is the kid of its requests, the server's Recipient ID).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aiocoap import oscore

AEAD_NAMES = {alg.value: name for name, alg in oscore.algorithms.items() if isinstance(alg, oscore.AeadAlgorithm)}
HKDF_NAMES = {-10: "sha256", -11: "sha512"}


def provision(folder: str | os.PathLike[str], *, master_secret: bytes, sender_id: bytes, recipient_id: bytes,
              master_salt: bytes = b"", id_context: bytes | None = None, aead: int = 10,
              hkdf: int = -10) -> Path:
    """Write a fresh context folder (the secret file mode 0600); refuses an existing one,
    whose sequence numbers a fresh start would reuse."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any((folder / name).exists() for name in ("settings.json", "secret.json", "sequence.json")):
        raise FileExistsError(f"{folder}: already holds an OSCORE context")
    if aead not in AEAD_NAMES or hkdf not in HKDF_NAMES:
        raise ValueError(f"unsupported algorithms aead={aead} hkdf={hkdf}")
    settings = {"sender-id_hex": sender_id.hex(), "recipient-id_hex": recipient_id.hex(),
                "algorithm": AEAD_NAMES[aead], "kdf-hashfun": HKDF_NAMES[hkdf]}
    if id_context is not None:
        settings["id-context_hex"] = id_context.hex()
    (folder / "settings.json").write_text(json.dumps(settings))
    fd = os.open(folder / "secret.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"secret_hex": master_secret.hex(), "salt_hex": master_salt.hex()}, file)
    return folder


def load(folder: str | os.PathLike[str]) -> oscore.FilesystemSecurityContext:
    """The context in ``folder`` (locked by this process until it is released)."""
    return oscore.FilesystemSecurityContext(str(folder))
