"""Key files: the CSV in which a factory hands an operator each device's DTLS PSK.

Header ``endpoint,identity,key,scope`` (``scope`` may be left out: ``server``), then
one credential a line, the key in hex. ``tinymlaas credentials import`` loads one
into the security store; the simulator writes one for a simulated fleet and gives
each device its key from it. Both read it here, so a file one accepts the other does.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Iterable, TextIO

from .psk import CredentialError, PskCredential, parse_key

KEY_FILE_COLUMNS = ("endpoint", "identity", "key", "scope")
"""The columns of a key file; ``scope`` may be left out (server)."""


class KeyFileError(Exception):
    """A key file that cannot be read; names the line and the problem, never a key."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        """1-based line of the problem."""
        self.problem = problem
        """What is wrong there."""


def secret_argument(value: str, stdin: TextIO | None = None) -> str:
    """A secret as a command line gives it: itself, ``-`` (one line of standard
    input) or ``@FILE`` (the file's first line), so that it need not show in ``ps``.
    OSError names the file, never its content."""
    if value == "-":
        return (stdin or sys.stdin).readline().strip()
    if value.startswith("@"):
        try:
            lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise OSError(f"cannot read {value[1:]}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise OSError(f"{value[1:]} is not UTF-8 text") from None
        return lines[0].strip() if lines else ""
    return value


def parse_key_file(text: str) -> list[tuple[int, PskCredential]]:
    """Every credential of a key file with its line number. Each identity, and each
    endpoint and scope, appears once; an empty file or a missing header is an error,
    a header without rows is not."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, PskCredential]] = []
    identities: dict[str, int] = {}
    slots: dict[tuple[str, str], int] = {}
    try:
        for fields in reader:
            line, cells = reader.line_num, [cell.strip() for cell in fields]
            if not any(cells):
                continue
            if header is None:  # never echo it: a file without a header starts with a key
                header = [cell.lower() for cell in cells]
                if set(header) - set(KEY_FILE_COLUMNS) or len(set(header)) != len(header) \
                        or not {"endpoint", "identity", "key"} <= set(header):
                    raise KeyFileError(line, f"the first line must be the header {','.join(KEY_FILE_COLUMNS)} "
                                             "(scope may be left out)")
                continue
            if len(cells) == len(header) - 1 and header[-1] == "scope":
                cells.append("")  # a trailing scope left out: server
            if len(cells) != len(header):
                raise KeyFileError(line, f"{len(cells)} fields, the header has {len(header)}")
            row = dict(zip(header, cells))
            try:
                credential = PskCredential(row["endpoint"], row["identity"], parse_key(row["key"]),
                                           row.get("scope") or "server")
            except CredentialError as error:
                raise KeyFileError(line, error.reason) from None
            first = identities.setdefault(credential.identity, line)
            if first != line:
                raise KeyFileError(line, f"identity {credential.identity!r} is on line {first} too")
            first = slots.setdefault((credential.endpoint, credential.scope), line)
            if first != line:
                raise KeyFileError(line, f"a second {credential.scope} credential of endpoint "
                                         f"{credential.endpoint!r} (line {first})")
            rows.append((line, credential))
    except csv.Error as error:
        raise KeyFileError(reader.line_num, f"not CSV: {error}") from None
    if header is None:
        raise KeyFileError(1, f"empty; expected the header {','.join(KEY_FILE_COLUMNS)}")
    return rows


def format_key_file(credentials: Iterable[PskCredential]) -> str:
    """The CSV text of a key file (header first, one line per credential)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(KEY_FILE_COLUMNS)
    writer.writerows((c.endpoint, c.identity, c.key.hex(), c.scope) for c in credentials)
    return out.getvalue()
