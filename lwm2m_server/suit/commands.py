"""SUIT command sequences (draft-ietf-suit-manifest): commands, parameters, digests.

The byte code of a manifest: a command sequence is a flat list of (command,
argument) pairs. :func:`decode_sequence` checks one against the draft's CDDL —
conditions and simple directives take a reporting policy (0..15), Set Component
Index an index in range, Override Parameters a non-empty map of the parameters
below, Try Each two or more bstr-wrapped sequences (optionally then nil), Run
Sequence one; the shared sequence admits only conditions and flow control, and
no custom commands or parameters. Unknown commands or parameters are an
:class:`UnsupportedError` ("If a Recipient encounters an unknown condition, it
MUST report a failure"). :func:`component_parameters` is a static view of what a
manifest sets for each component.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from uuid import UUID

import cbor2

from .cose import expect, is_int, is_uint, loads, type_name
from .errors import FormatError, UnsupportedError

ComponentId = tuple[bytes, ...]

# commands
VENDOR_IDENTIFIER, CLASS_IDENTIFIER, IMAGE_MATCH, COMPONENT_SLOT, CHECK_CONTENT = 1, 2, 3, 5, 6
ABORT, DEVICE_IDENTIFIER = 14, 24
SET_COMPONENT_INDEX, TRY_EACH, OVERRIDE_PARAMETERS, RUN_SEQUENCE = 12, 15, 20, 32
WRITE, FETCH, COPY, INVOKE_DIRECTIVE, SWAP = 18, 21, 22, 23, 31
CONDITIONS = frozenset({1, 2, 3, 5, 6, 14, 24})
POLICY_DIRECTIVES = frozenset({18, 21, 22, 23, 31})
CUSTOM_BELOW = -256
"""Custom commands and parameters use labels <= -256 (private use in the IANA registries)."""
MAX_REPORTING_POLICY = 0b1111
MAX_NESTING = 8
"""Deepest try-each / run-sequence nesting accepted."""

# parameters
P_VENDOR_ID, P_CLASS_ID, P_IMAGE_DIGEST, P_COMPONENT_SLOT = 1, 2, 3, 5
P_STRICT_ORDER, P_SOFT_FAILURE, P_IMAGE_SIZE, P_CONTENT = 12, 13, 14, 18
P_URI, P_SOURCE_COMPONENT, P_INVOKE_ARGS, P_DEVICE_ID, P_FETCH_ARGUMENTS = 21, 22, 23, 24, 25

SHA256 = -16
HASH_ALGORITHMS = {-16: ("sha256", 32), -43: ("sha384", 48), -44: ("sha512", 64)}
"""COSE hash algorithm id -> (hashlib name, digest length)."""
REPORT_ON_FAILURE = 0b0010
REPORT_ALL = 0b1111


@dataclass(frozen=True, slots=True)
class Digest:
    """A SUIT_Digest: ``[algorithm-id, digest-bytes]``."""

    algorithm: int
    """COSE hash algorithm id (-16 = SHA-256)."""
    value: bytes
    """The digest bytes."""

    @classmethod
    def of(cls, data: bytes, algorithm: int = SHA256) -> Digest:
        """The digest of ``data``; UnsupportedError for algorithms other than SHA-2."""
        if algorithm not in HASH_ALGORITHMS:
            raise UnsupportedError(f"digest algorithm {algorithm} is not supported")
        name, _ = HASH_ALGORITHMS[algorithm]
        return cls(algorithm, hashlib.new(name, data).digest())

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` hashes to this digest (constant-time compare)."""
        return hmac.compare_digest(Digest.of(data, self.algorithm).value, self.value)

    def encode(self) -> bytes:
        return cbor2.dumps([self.algorithm, self.value])


@dataclass(frozen=True, slots=True)
class Parameters:
    """The argument of Override Parameters; None = not set by this directive."""

    vendor_id: UUID | None = None
    class_id: UUID | None = None
    image_digest: Digest | None = None
    component_slot: int | None = None
    strict_order: bool | None = None
    soft_failure: bool | None = None
    image_size: int | None = None
    content: bytes | None = None
    uri: str | None = None
    source_component: int | None = None
    invoke_args: bytes | None = None
    device_id: UUID | None = None
    fetch_arguments: bytes | None = None
    custom: tuple[tuple[int, int | bool | str | bytes], ...] = ()
    """Custom parameters (labels <= -256) in manifest order."""


@dataclass(frozen=True, slots=True)
class Command:
    """One (command, argument) pair of a command sequence."""

    code: int
    """Command label (conditions 1-6, 14, 24; directives 12-32; custom <= -256)."""
    argument: Any
    """Reporting policy (int) for conditions and simple directives; for Set Component
    Index an int, True or a tuple of ints; :class:`Parameters` for Override Parameters;
    a tuple of command sequences (None for a trailing nil) for Try Each; a command
    sequence for Run Sequence; bytes/str/int/None for custom commands."""


CommandSequence = tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class ComponentParameters:
    """All values assigned to one component's parameters, in order of first appearance
    (several for A/B slot alternatives in Try Each)."""

    component: ComponentId
    vendor_ids: tuple[UUID, ...] = ()
    class_ids: tuple[UUID, ...] = ()
    digests: tuple[Digest, ...] = ()
    sizes: tuple[int, ...] = ()
    uris: tuple[str, ...] = ()
    slots: tuple[int, ...] = ()
    source_components: tuple[int, ...] = ()


_TRACKED = {"vendor_ids": "vendor_id", "class_ids": "class_id", "digests": "image_digest",
            "sizes": "image_size", "uris": "uri", "slots": "component_slot",
            "source_components": "source_component"}  # fmt: skip


def component_parameters(components: tuple[ComponentId, ...],
                         sequences: Iterable[CommandSequence]) -> tuple[ComponentParameters, ...]:
    """Walk every sequence (both branches of each Try Each) and collect the values
    assigned to each of ``components``."""
    count = len(components)
    seen: list[dict[str, list[Any]]] = [{name: [] for name in _TRACKED} for _ in range(count)]

    def walk(sequence: CommandSequence, current: tuple[int, ...]) -> None:
        for command in sequence:
            arg = command.argument
            if command.code == SET_COMPONENT_INDEX:
                if arg is True:
                    current = tuple(range(count))
                else:
                    current = (arg,) if isinstance(arg, int) else arg
            elif command.code == OVERRIDE_PARAMETERS:
                for index in current:
                    for name, attribute in _TRACKED.items():
                        value = getattr(arg, attribute)
                        if value is not None and value not in seen[index][name]:
                            seen[index][name].append(value)
            elif command.code == TRY_EACH:
                for branch in arg:
                    if branch is not None:
                        walk(branch, current)
            elif command.code == RUN_SEQUENCE:
                walk(arg, current)

    for sequence in sequences:
        walk(sequence, (0,))
    return tuple(
        ComponentParameters(component, **{name: tuple(values) for name, values in found.items()})
        for component, found in zip(components, seen)
    )


# --- decoding ----------------------------------------------------------------------------


def as_bytes(value: Any, what: str) -> bytes:
    return expect(value, bytes, what)


def decode_digest(value: Any, what: str) -> Digest:
    """A SUIT_Digest from its decoded array; only the SHA-2 family is implemented."""
    items = expect(value, list, what)
    if len(items) > 2:
        raise UnsupportedError(f"{what}: digest extensions are not supported")
    if len(items) != 2:
        raise FormatError(f"{what}: expected [algorithm-id, digest-bytes]")
    algorithm, raw = items
    if not is_int(algorithm):
        raise FormatError(f"{what}: algorithm id must be an integer, got {type_name(algorithm)}")
    if algorithm not in HASH_ALGORITHMS:
        raise UnsupportedError(f"{what}: digest algorithm {algorithm} is not supported")
    as_bytes(raw, what)
    if len(raw) != HASH_ALGORITHMS[algorithm][1]:
        raise FormatError(f"{what}: {HASH_ALGORITHMS[algorithm][0]} digest must be "
                          f"{HASH_ALGORITHMS[algorithm][1]} bytes, got {len(raw)}")
    return Digest(algorithm, raw)


def _uuid(value: Any, what: str) -> UUID:
    if isinstance(value, cbor2.CBORTag) and value.tag == 112:
        raise UnsupportedError(f"{what}: CBOR PEN vendor identifiers are not supported")
    if not isinstance(value, bytes) or len(value) != 16:
        raise FormatError(f"{what}: expected a 16-byte UUID")
    return UUID(bytes=value)


def as_uint(value: Any, what: str) -> int:
    if not is_uint(value):
        raise FormatError(f"{what}: expected an unsigned integer, got {type_name(value)}")
    return value


def _index(value: Any, count: int, what: str) -> int:
    if as_uint(value, what) >= count:
        raise FormatError(f"{what}: component index {value} out of range ({count} components)")
    return value


_PARAMETER_READERS: dict[int, tuple[str, Callable[[Any, int, str], Any]]] = {
    P_VENDOR_ID: ("vendor_id", lambda v, n, w: _uuid(v, w)),
    P_CLASS_ID: ("class_id", lambda v, n, w: _uuid(v, w)),
    P_DEVICE_ID: ("device_id", lambda v, n, w: _uuid(v, w)),
    P_IMAGE_DIGEST: ("image_digest", lambda v, n, w: decode_digest(loads(as_bytes(v, w), w), w)),
    P_COMPONENT_SLOT: ("component_slot", lambda v, n, w: as_uint(v, w)),
    P_IMAGE_SIZE: ("image_size", lambda v, n, w: as_uint(v, w)),
    P_SOURCE_COMPONENT: ("source_component", _index),
    P_STRICT_ORDER: ("strict_order", lambda v, n, w: expect(v, bool, w)),
    P_SOFT_FAILURE: ("soft_failure", lambda v, n, w: expect(v, bool, w)),
    P_CONTENT: ("content", lambda v, n, w: as_bytes(v, w)),
    P_INVOKE_ARGS: ("invoke_args", lambda v, n, w: as_bytes(v, w)),
    P_FETCH_ARGUMENTS: ("fetch_arguments", lambda v, n, w: as_bytes(v, w)),
    P_URI: ("uri", lambda v, n, w: expect(v, str, w)),
}


def _parameters(value: Any, count: int, shared: bool, what: str) -> Parameters:
    items = expect(value, dict, what)
    if not items:
        raise FormatError(f"{what}: Override Parameters needs at least one parameter")
    fields: dict[str, Any] = {}
    custom: list[tuple[int, Any]] = []
    for key, item in items.items():
        where = f"{what} parameter {key!r}"
        if not is_int(key):
            raise FormatError(f"{what}: parameter labels are integers, got {type_name(key)}")
        if key <= CUSTOM_BELOW:
            if shared:
                raise FormatError(f"{where}: custom parameters are not allowed in the shared sequence")
            custom.append((key, expect(item, (int, bool, str, bytes), where)))
        elif key in _PARAMETER_READERS:
            attribute, read = _PARAMETER_READERS[key]
            fields[attribute] = read(item, count, where)
        else:
            raise UnsupportedError(f"{where}: parameter {key} is not supported")
    return Parameters(**fields, custom=tuple(custom))


def decode_wrapped(value: Any, count: int, shared: bool, depth: int, what: str) -> CommandSequence:
    """A bstr-wrapped command sequence (``depth`` of the enclosing one, -1 at top level)."""
    sequence = loads(as_bytes(value, what), what)
    return decode_sequence(sequence, count, shared=shared, depth=depth + 1, what=what)


def decode_sequence(
    value: Any, count: int, *, shared: bool = False, depth: int = 0, what: str = "command sequence"
) -> CommandSequence:
    """A command sequence from its decoded array, checked against the CDDL.

    ``count`` is the number of components (for index checks); ``shared`` applies the
    shared sequence's restrictions (conditions and flow control only, no custom).
    """
    if depth > MAX_NESTING:
        raise FormatError(f"{what}: command sequences nested deeper than {MAX_NESTING}")
    items = expect(value, list, what)
    if not items or len(items) % 2:
        raise FormatError(f"{what}: expected a non-empty list of (command, argument) pairs")
    commands = []
    for position in range(0, len(items), 2):
        code, arg = items[position], items[position + 1]
        where = f"{what} command {position // 2}"
        if not is_int(code):
            raise FormatError(f"{where}: command labels are integers, got {type_name(code)}")
        if code <= CUSTOM_BELOW:
            if shared:
                raise FormatError(f"{where}: custom commands are not allowed in the shared sequence")
            if arg is not None:
                expect(arg, (bytes, str, int), where)
        elif code in CONDITIONS or code in POLICY_DIRECTIVES:
            if shared and code in POLICY_DIRECTIVES:
                raise FormatError(f"{where}: directive {code} is not allowed in the shared sequence")
            if not is_uint(arg) or arg > MAX_REPORTING_POLICY:
                raise FormatError(f"{where}: reporting policy must be an integer 0..15")
        elif code == SET_COMPONENT_INDEX:
            if arg is not True:
                indices = expect(arg, (int, list), where)
                if isinstance(indices, list):
                    if not indices:
                        raise FormatError(f"{where}: empty component index list")
                    arg = tuple(_index(i, count, where) for i in indices)
                else:
                    _index(arg, count, where)
        elif code == OVERRIDE_PARAMETERS:
            arg = _parameters(arg, count, shared, where)
        elif code == TRY_EACH:
            branches = expect(arg, list, where)
            sequences = branches[:-1] if branches and branches[-1] is None else branches
            if len(sequences) < 2 or any(branch is None for branch in sequences):
                raise FormatError(f"{where}: Try Each takes two or more sequences, then maybe nil")
            arg = tuple(
                None if branch is None else decode_wrapped(branch, count, shared, depth, where)
                for branch in branches
            )
        elif code == RUN_SEQUENCE:
            arg = decode_wrapped(arg, count, shared, depth, where)
        else:
            raise UnsupportedError(f"{where}: command {code} is not supported")
        commands.append(Command(code, arg))
    return tuple(commands)
