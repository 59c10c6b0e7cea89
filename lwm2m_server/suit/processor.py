"""Running a manifest's command sequences, as a SUIT manifest processor does
(draft-ietf-suit-manifest, "Manifest Processor" and "Abstract Machine"), sans-I/O.

:func:`~.verify.verify_envelope` authenticates an envelope and checks what can be
checked without running it. :func:`process` then runs its command sequences against
the facts of one device (:class:`DeviceFacts`) and the contents of its components,
and returns the outcome (:class:`Outcome`) or raises a :class:`~.errors.SuitError`:

* **Procedures.** An update runs payload-fetch, install and validate (:data:`UPDATE`);
  an invocation validate, load and invoke (:data:`INVOCATION`). The shared sequence
  runs before each sequence present (once when none is). An absent sequence is
  skipped; a severed one that was not delivered cannot run (UnsupportedError).
* **State.** Parameters are kept per component for the whole run; Override
  Parameters replaces those it names, for each current component. Each sequence
  starts with component 0 current; Set Component Index picks one, several, or all
  (``True``). Conditions and directives apply to each current component in turn.
* **Conditions.** Vendor, class and device identifier (equal to the device's),
  component slot (equal to the slot the device writes the component to), image
  match (the component's content has the image digest and, when set, the image
  size), check content (the content parameter, byte for byte), abort (always
  fails). A failure raises :class:`~.errors.ConditionFailedError`
  (:class:`~.errors.AbortError`).
* **Directives.** Write (the content parameter into the component), Fetch (the URI
  parameter: an integrated payload, the payload verified with the envelope, or one
  passed in as ``fetched``), Copy and Swap (with the source component), Invoke
  (recorded in :attr:`Outcome.invoked`; the caller starts what it names).
* **Try Each** runs, for each current component, its alternatives in order with
  Soft Failure on: a condition failure ends that alternative and the next one is
  tried; the first that completes ends the Try Each. When none does it fails with
  the last alternative's failure, unless the list ends with nil. **Run Sequence**
  runs its sequence, for each current component, with Soft Failure off: a condition
  failure fails it, unless the sequence turned Soft Failure on (then the sequence
  just ends). Both start with that component alone current and give the caller's
  selection back. Soft Failure may be set only inside them (CommandError).
* **Hard failures.** :class:`~.errors.CommandError` (a parameter the command
  consumes is not set, nothing to fetch at the URI, an empty source component) and
  :class:`~.errors.UnsupportedError` (custom commands, labels <= -256, and every
  command not implemented here, Process Dependency included: "If a Recipient
  encounters an unknown condition, it MUST report a failure") are never softened.
* Reporting policies are accepted and not acted on (no SUIT report is made); Strict
  Order holds trivially, as commands run one after the other.

For any verified module, :func:`process` returns or raises a ``SuitError``, nothing else.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NoReturn
from uuid import UUID

from .commands import (
    ABORT, CHECK_CONTENT, CLASS_IDENTIFIER, COMPONENT_SLOT, COPY, DEVICE_IDENTIFIER, FETCH,
    IMAGE_MATCH, INVOKE_DIRECTIVE, OVERRIDE_PARAMETERS, RUN_SEQUENCE, SET_COMPONENT_INDEX, SWAP,
    TRY_EACH, VENDOR_IDENTIFIER, WRITE, CommandSequence, ComponentId, Digest, Parameters,
)
from .errors import AbortError, CommandError, ConditionFailedError, UnsupportedError
from .verify import VerifiedModule

UPDATE = ("payload_fetch", "install", "validate")
"""The sequences an update runs, in order (after each: nothing; before each: shared)."""
INVOCATION = ("validate", "load", "invoke")
"""The sequences an invocation runs, in order."""
SEQUENCES = frozenset(UPDATE + INVOCATION)
MAX_COMMANDS = 100_000
"""Commands one run may execute (Try Each over many components multiplies them)."""

COMMAND_NAMES = {
    VENDOR_IDENTIFIER: "condition vendor identifier", CLASS_IDENTIFIER: "condition class identifier",
    IMAGE_MATCH: "condition image match", COMPONENT_SLOT: "condition component slot",
    CHECK_CONTENT: "condition check content", ABORT: "condition abort",
    DEVICE_IDENTIFIER: "condition device identifier", SET_COMPONENT_INDEX: "set component index",
    TRY_EACH: "try each", WRITE: "write", OVERRIDE_PARAMETERS: "override parameters", FETCH: "fetch",
    COPY: "copy", INVOKE_DIRECTIVE: "invoke", SWAP: "swap", RUN_SEQUENCE: "run sequence",
    11: "process dependency",
}  # fmt: skip
_PARAMETERS = tuple(f.name for f in dataclasses.fields(Parameters) if f.name not in ("custom", "soft_failure"))


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the conditions compare with: the device's identity and its slots."""

    vendor_id: UUID
    """The device's vendor identifier."""
    class_id: UUID
    """The device's class identifier."""
    device_id: UUID | None = None
    """The device's own identifier; None: the device has none (the condition fails)."""
    slots: Mapping[ComponentId, int] = field(default_factory=dict)
    """The slot the device writes each component to; a component not listed: slot 0."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run left behind."""

    contents: dict[ComponentId, bytes]
    """Every component's content after the run (those given, changed or not, and new ones)."""
    invoked: tuple[ComponentId, ...]
    """Components the run invoked, in order."""
    sequences: tuple[str, ...]
    """The sequences run, in order, the shared one each time it ran."""


def component_name(component: ComponentId) -> str:
    """``[tinymlaas, model]`` for printable parts, hex for the others."""
    parts = (p.decode() if p.isascii() and p.decode().isprintable() and p else p.hex() or "''" for p in component)
    return "[" + ", ".join(parts) + "]"


def process(
    module: VerifiedModule,
    device: DeviceFacts,
    procedure: Iterable[str] = UPDATE,
    *,
    contents: Mapping[ComponentId, bytes] | None = None,
    fetched: Mapping[str, bytes] | None = None,
) -> Outcome:
    """Run ``procedure`` (names of manifest sequences, e.g. :data:`UPDATE`) of a verified
    module on a device whose components hold ``contents`` (not changed: the outcome
    has the new contents). ``fetched`` maps URIs to payloads the caller downloaded.
    Raises ConditionFailedError, CommandError or UnsupportedError (see the module docstring)."""
    manifest = module.envelope.manifest
    sources = dict(module.envelope.integrated_payloads)
    if module.payload is not None and module.image is not None and module.image.uri is not None:
        sources.setdefault(module.image.uri, module.payload)
    sources.update(fetched or {})
    run = _Run(manifest.components, device, dict(contents or {}), sources)
    present: list[tuple[str, CommandSequence]] = []
    for name in procedure:
        if name not in SEQUENCES:
            raise ValueError(f"{name!r} is not a command sequence of a manifest")
        value = getattr(manifest, name)
        if isinstance(value, Digest):
            raise UnsupportedError(f"the {name.replace('_', '-')} sequence is severed and was not delivered")
        if value is not None:
            present.append((name, value))
    for name, sequence in present or [("", ())]:
        run.top("shared", manifest.shared_sequence)
        if name:
            run.top(name, sequence)
    return Outcome(run.contents, tuple(run.invoked), tuple(run.ran))


@dataclass(slots=True)
class _Frame:
    """A sequence run by Try Each or Run Sequence."""

    soft: bool


class _Run:
    def __init__(self, components: tuple[ComponentId, ...], device: DeviceFacts,
                 contents: dict[ComponentId, bytes], sources: dict[str, bytes]) -> None:
        self.components = components
        self.device = device
        self.contents = contents
        self.sources = sources
        self.parameters: list[dict[str, Any]] = [{} for _ in components]
        self.invoked: list[ComponentId] = []
        self.ran: list[str] = []
        self.sequence = ""
        self.count = 0

    def top(self, name: str, sequence: CommandSequence) -> None:
        self.sequence = name
        self.ran.append(name)
        self.execute(sequence, (0,), None)

    def execute(self, sequence: CommandSequence, current: tuple[int, ...], frame: _Frame | None) -> None:
        for command in sequence:
            self.count += 1
            if self.count > MAX_COMMANDS:
                raise UnsupportedError(f"{self.sequence}: more than {MAX_COMMANDS} commands to run")
            code, argument = command.code, command.argument
            if code == SET_COMPONENT_INDEX:
                if argument is True:
                    current = tuple(range(len(self.components)))
                else:
                    current = (argument,) if isinstance(argument, int) else tuple(argument)
            elif code == OVERRIDE_PARAMETERS:
                self.override(argument, current, frame)
            elif code in (TRY_EACH, RUN_SEQUENCE):
                for index in current:
                    (self.try_each if code == TRY_EACH else self.run_sequence)(argument, index)
            elif code in _CONDITIONS or code in _DIRECTIVES:
                handler = _CONDITIONS.get(code) or _DIRECTIVES[code]
                for index in current:
                    handler(self, index)
            else:
                what = COMMAND_NAMES.get(code, "custom command" if code <= -256 else "command")
                raise UnsupportedError(f"{self.sequence}: {what} {code} is not supported by this device")

    def override(self, parameters: Parameters, current: tuple[int, ...], frame: _Frame | None) -> None:
        if parameters.soft_failure is not None:
            if frame is None:
                self.fail(CommandError, OVERRIDE_PARAMETERS, "Soft Failure may only be set inside "
                                                             "Try Each or Run Sequence")
            frame.soft = parameters.soft_failure
        for index in current:
            for name in _PARAMETERS:
                value = getattr(parameters, name)
                if value is not None:
                    self.parameters[index][name] = value

    def try_each(self, alternatives: tuple[CommandSequence | None, ...], index: int) -> None:
        last: ConditionFailedError | None = None
        for alternative in alternatives:
            if alternative is None:
                return  # a trailing nil: none needs to hold
            frame = _Frame(soft=True)
            try:
                self.execute(alternative, (index,), frame)
                return
            except ConditionFailedError as error:
                if not frame.soft:
                    raise
                last = error
        assert last is not None  # the decoder allows no empty Try Each
        raise type(last)(f"{self.sequence}: no alternative of Try Each held for "
                         f"{component_name(self.components[index])}; the last: {last.reason}",
                         sequence=self.sequence, command=last.command)

    def run_sequence(self, sequence: CommandSequence, index: int) -> None:
        frame = _Frame(soft=False)
        try:
            self.execute(sequence, (index,), frame)
        except ConditionFailedError:
            if not frame.soft:
                raise

    # -- helpers -------------------------------------------------------------------------------

    def fail(self, error: type[ConditionFailedError] | type[CommandError], code: int, reason: str,
             index: int | None = None) -> NoReturn:
        where = f" for {component_name(self.components[index])}" if index is not None else ""
        raise error(f"{self.sequence}: {COMMAND_NAMES.get(code, code)} failed{where}: {reason}",
                    sequence=self.sequence, command=code)

    def need(self, index: int, name: str, code: int) -> Any:
        value = self.parameters[index].get(name)
        if value is None:
            self.fail(CommandError, code, f"parameter {name.replace('_', ' ')} is not set", index)
        return value

    def content(self, index: int, code: int, error: type[ConditionFailedError] | type[CommandError]) -> bytes:
        data = self.contents.get(self.components[index])
        if data is None:
            self.fail(error, code, "the component is empty", index)
        return data

    # -- conditions ----------------------------------------------------------------------------

    def identity(self, index: int, code: int) -> None:
        name, expected = {VENDOR_IDENTIFIER: ("vendor_id", self.device.vendor_id),
                          CLASS_IDENTIFIER: ("class_id", self.device.class_id),
                          DEVICE_IDENTIFIER: ("device_id", self.device.device_id)}[code]
        value = self.need(index, name, code)
        if expected is None:
            self.fail(ConditionFailedError, code, "this device has no device identifier", index)
        if value != expected:
            self.fail(ConditionFailedError, code, f"the manifest names {value}, this device is {expected}", index)

    def slot(self, index: int) -> None:
        wanted = self.need(index, "component_slot", COMPONENT_SLOT)
        actual = self.device.slots.get(self.components[index], 0)
        if wanted != actual:
            self.fail(ConditionFailedError, COMPONENT_SLOT, f"slot {wanted}, the device writes to slot {actual}", index)

    def image_match(self, index: int) -> None:
        digest: Digest = self.need(index, "image_digest", IMAGE_MATCH)
        data = self.content(index, IMAGE_MATCH, ConditionFailedError)
        size = self.parameters[index].get("image_size")
        if size is not None and len(data) != size:
            self.fail(ConditionFailedError, IMAGE_MATCH, f"the content is {len(data)} B, the image {size} B", index)
        if not digest.matches(data):
            self.fail(ConditionFailedError, IMAGE_MATCH, "the content's digest is not the image digest", index)

    def check_content(self, index: int) -> None:
        expected: bytes = self.need(index, "content", CHECK_CONTENT)
        data = self.content(index, CHECK_CONTENT, ConditionFailedError)
        if not hmac.compare_digest(data, expected):
            self.fail(ConditionFailedError, CHECK_CONTENT, "the content differs", index)

    def abort(self, index: int) -> None:
        self.fail(AbortError, ABORT, "the manifest aborts the update", index)

    # -- directives ----------------------------------------------------------------------------

    def write(self, index: int) -> None:
        self.contents[self.components[index]] = self.need(index, "content", WRITE)

    def fetch(self, index: int) -> None:
        uri: str = self.need(index, "uri", FETCH)
        data = self.sources.get(uri)
        if data is None:
            self.fail(CommandError, FETCH, f"nothing to fetch at {uri!r} (not in the envelope, not downloaded)",
                      index)
        self.contents[self.components[index]] = data

    def source(self, index: int, code: int) -> ComponentId:
        source = self.components[self.need(index, "source_component", code)]
        if source not in self.contents:
            self.fail(CommandError, code, f"the source component {component_name(source)} is empty", index)
        return source

    def copy(self, index: int) -> None:
        self.contents[self.components[index]] = self.contents[self.source(index, COPY)]

    def swap(self, index: int) -> None:
        source, target = self.source(index, SWAP), self.components[index]
        data = self.content(index, SWAP, CommandError)
        self.contents[target], self.contents[source] = self.contents[source], data

    def invoke(self, index: int) -> None:
        self.invoked.append(self.components[index])


_CONDITIONS = {
    VENDOR_IDENTIFIER: lambda run, i: run.identity(i, VENDOR_IDENTIFIER),
    CLASS_IDENTIFIER: lambda run, i: run.identity(i, CLASS_IDENTIFIER),
    DEVICE_IDENTIFIER: lambda run, i: run.identity(i, DEVICE_IDENTIFIER),
    COMPONENT_SLOT: _Run.slot, IMAGE_MATCH: _Run.image_match, CHECK_CONTENT: _Run.check_content,
    ABORT: _Run.abort,
}  # fmt: skip
_DIRECTIVES = {WRITE: _Run.write, FETCH: _Run.fetch, COPY: _Run.copy, SWAP: _Run.swap,
               INVOKE_DIRECTIVE: _Run.invoke}  # fmt: skip
