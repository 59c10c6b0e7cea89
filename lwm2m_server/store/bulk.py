"""Saves that go to the database as one statement per kind: which calls of a
transaction share one, and in what order the calls run.

A store's transaction runs the calls made together (group commit). Some writes are
many and alike in a burst of Registers: saving registrations and profile documents.
Sent as one statement each they cost a statement's round trip (PostgreSQL) or a
hand-over of the GIL (SQLite's thread) apiece; :func:`groups` gathers them so that a
store can send one statement per kind instead, and :func:`pieces` cuts those into
statements of a few fixed sizes (the same texts, which the database keeps prepared).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

BULK_ROWS = (64, 16, 4, 1)
"""Rows of the statements a group of saves is cut into (64 x 14 values stay within
the 999 variables of old SQLite)."""

Bulk = Mapping[Callable[..., Any], tuple[Callable[..., Any], Callable[[tuple[Any, ...]], Any]]]
"""A store's functions with a bulk form: function -> (its bulk form, which takes the
calls' argument tuples; the key that must differ between the calls of one statement)."""


def registration_key(args: tuple[Any, ...]) -> Any:
    """The endpoint of a save of a registration row (one Register of an endpoint per statement)."""
    return args[0][1]


def document_key(args: tuple[Any, ...]) -> Any:
    """Kind and key of a document save."""
    return args[0], args[1]


def groups(calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], bulk: Bulk) -> list[list[int]]:
    """The indices of ``calls`` (function, arguments) in the order they run, in groups: a
    call without a bulk form alone, in its place; between two such, the calls of each
    bulk function together, in their order (the functions with a bulk form write tables
    of their own, so they need not keep their order among one another's), a new group
    where a key repeats."""
    found: list[list[int]] = []
    open_: dict[Callable[..., Any], tuple[list[int], set[Any]]] = {}  # function -> its open group, its keys
    for index, (function, args) in enumerate(calls):
        form = bulk.get(function)
        if form is None:
            open_.clear()
            found.append([index])
            continue
        key = form[1](args)
        group = open_.get(function)
        if group is None or key in group[1]:
            group = open_[function] = ([], set())
            found.append(group[0])
        group[0].append(index)
        group[1].add(key)
    return found


def pieces(rows: list[Any]) -> list[list[Any]]:
    """``rows`` cut into pieces of the sizes in :data:`BULK_ROWS`, largest first."""
    cut, start = [], 0
    for size in BULK_ROWS:
        while len(rows) - start >= size:
            cut.append(rows[start:start + size])
            start += size
    return cut
