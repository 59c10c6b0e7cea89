"""Software (SOTA, object 9) and firmware (FOTA, object 5) delivery to one device,
as a sans-I/O state machine.

The job says what to do next (:meth:`DeliveryJob.next_step`); the caller does it
and reports the device's answer (:meth:`DeliveryJob.on_result`). States are
polled: an observation could end the wait earlier, but a poll also works for
devices that cannot observe, and after a server restart. A job is a plain
value that round-trips through :meth:`to_dict`, so it survives a restart.

SOTA: write Package (/9/i/2, push) or Package URI (/9/i/3, pull) → Update State
reaches DELIVERED (3) → Install (/9/i/4) → INSTALLED (4) → Activate (/9/i/10) →
Activation State (/9/i/12) true → the TinyML object names the new model.
FOTA: write Package (/5/0/0) or Package URI (/5/0/1) → State Downloaded (2) →
Update (/5/0/2) → State Idle with Update Result success (1) → the version check
the rollout chose: PkgVersion (/5/0/7) or Firmware Version (/3/0/3) equals the
expected version exactly, or none (Idle with success is done). Many clients
report their LwM2M stack's version in /3/0/3, never the package's.

A job resumed in SEND (after a restart, a leader takeover, or a write whose answer was
lost) does not write again at once: the write may have reached the device before the
job's state was saved. It reads the update state first (:attr:`Phase.CHECK_SEND`) and
writes only when the package is neither arriving nor delivered, so that a device never
gets one package twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ipso_objects import TINYML_OBJECT_ID, LwM2MPath, Value

from ..core.capabilities import FIRMWARE_RESULTS
from ..core.responses import Result

SOTA_RESULTS = {
    50: "not enough storage", 51: "out of memory", 52: "connection lost",
    53: "integrity check failed", 54: "unsupported package type", 56: "invalid URI",
    57: "device-defined update error", 58: "installation failed", 59: "uninstallation failed",
}
FOTA_RESULTS = {code: words for code, words in FIRMWARE_RESULTS.items() if code >= 2}
"""The Update Results that end a firmware delivery as failed."""


class Target(enum.Enum):
    SOFTWARE = "sota"
    FIRMWARE = "fota"


class Mode(enum.Enum):
    PUSH = "push"
    PULL = "pull"


class Phase(enum.Enum):
    SEND = "send"
    CHECK_SEND = "check_send"
    """Resumed in SEND: read what the device has before writing (again)."""
    AWAIT_DOWNLOAD = "await_download"
    INSTALL = "install"
    AWAIT_INSTALL = "await_install"
    ACTIVATE = "activate"
    VERIFY = "verify"
    DONE = "done"
    FAILED = "failed"


class StepKind(enum.Enum):
    WRITE_PACKAGE = "write_package"
    """Write the module bytes to ``path`` (Block1)."""
    WRITE_URI = "write_uri"
    """Write ``uri`` (a string) to ``path``."""
    EXECUTE = "execute"
    READ = "read"
    """Read each of ``paths``; report the results as a dict to ``on_result``."""
    WAIT = "wait"
    """Nothing to do before ``at``."""
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Step:
    """What the caller does next."""

    kind: StepKind
    path: LwM2MPath | None = None
    paths: tuple[LwM2MPath, ...] = ()
    uri: str = ""
    at: float = 0.0
    """For WAIT: the Unix time to call :meth:`DeliveryJob.next_step` again."""
    reason: str = ""
    """For FAILED: why."""


@dataclass(frozen=True, slots=True)
class Expected:
    """How to recognise the delivered module once it runs."""

    model_id: str = ""
    """SOTA: TinyML Active Model ID (/26241/0/10)."""
    model_version: str = ""
    """SOTA: Active Model Version (/26241/0/11)."""
    digest: bytes = b""
    """SOTA: Active Model Digest (/26241/0/12), SHA-256 of the module payload."""
    firmware_version: str = ""
    """FOTA: Firmware Version (/3/0/3), compared exactly, never by substring."""
    package_version: str = ""
    """FOTA: PkgVersion (/5/0/7), compared exactly; checked instead of /3/0/3 when set.
    With neither, State Idle with Update Result 1 is done."""


@dataclass(slots=True)
class DeliveryJob:
    """One module on its way to one device."""

    target: Target
    mode: Mode
    expected: Expected
    uri: str = ""
    """Pull: where the device fetches the module."""
    artifact: str = ""
    """Download token of the module being delivered (the server finds the file by it)."""
    instance: int = 0
    """SOTA: the /9 instance used."""
    poll_interval_s: float = 2.0
    phase_timeout_s: float = 600.0
    """Longest wait for one state change (a pull download of a big module is slow)."""
    phase: Phase = Phase.SEND
    phase_started_at: float | None = None
    next_poll_at: float = 0.0
    reason: str = ""
    resumed: bool = False
    """Set after a restart: a package write or an Install may already have run before it."""
    log: list[str] = field(default_factory=list)

    # -- paths -------------------------------------------------------------------

    def _p(self, resource: int) -> LwM2MPath:
        if self.target is Target.SOFTWARE:
            return LwM2MPath.of(9, self.instance, resource)
        return LwM2MPath.of(5, 0, resource)

    @property
    def package_path(self) -> LwM2MPath:
        return self._p(2 if self.target is Target.SOFTWARE else 0) if self.mode is Mode.PUSH else self.uri_path

    @property
    def uri_path(self) -> LwM2MPath:
        return self._p(3 if self.target is Target.SOFTWARE else 1)

    @property
    def state_path(self) -> LwM2MPath:
        """Update State (/9/i/7) or State (/5/0/3): worth observing while waiting."""
        return self._state_paths()[0]

    def state_changed(self, now: float) -> None:
        """A notification says the state moved: poll now instead of at the next interval."""
        if self.phase in (Phase.AWAIT_DOWNLOAD, Phase.AWAIT_INSTALL):
            self.next_poll_at = now

    def _state_paths(self) -> tuple[LwM2MPath, ...]:
        if self.target is Target.SOFTWARE:
            return (self._p(7), self._p(9))  # Update State, Update Result
        return (self._p(3), self._p(5))  # State, Update Result

    def _verify_paths(self) -> tuple[LwM2MPath, ...]:
        if self.target is Target.SOFTWARE:
            t = TINYML_OBJECT_ID
            return (self._p(12), LwM2MPath.of(t, 0, 10), LwM2MPath.of(t, 0, 11), LwM2MPath.of(t, 0, 12))
        if self.expected.package_version:
            return (LwM2MPath.of(5, 0, 7),)
        return (LwM2MPath.of(3, 0, 3),) if self.expected.firmware_version else ()

    # -- the machine -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    def next_step(self, now: float) -> Step:
        if self.phase_started_at is None:
            self.phase_started_at = now
        if self.phase is Phase.DONE:
            return Step(StepKind.DONE)
        if self.phase is Phase.FAILED:
            return Step(StepKind.FAILED, reason=self.reason)
        if self.phase is Phase.SEND:
            if self.mode is Mode.PUSH:
                return Step(StepKind.WRITE_PACKAGE, self.package_path)
            return Step(StepKind.WRITE_URI, self.uri_path, uri=self.uri)
        if self.phase is Phase.INSTALL:
            return Step(StepKind.EXECUTE, self._p(4 if self.target is Target.SOFTWARE else 2))
        if self.phase is Phase.ACTIVATE:
            return Step(StepKind.EXECUTE, self._p(10))
        # reading phases: poll, with a deadline
        if now - self.phase_started_at > self.phase_timeout_s:
            return self._fail(f"no progress in {self.phase.value} for {self.phase_timeout_s:g} s", now)
        if now < self.next_poll_at:
            return Step(StepKind.WAIT, at=self.next_poll_at)
        if self.phase is Phase.CHECK_SEND:
            # the module's identity too: an INSTALLED state alone may be an earlier package's
            return Step(StepKind.READ, paths=self._state_paths() + self._verify_paths())
        paths = self._verify_paths() if self.phase is Phase.VERIFY else self._state_paths()
        return Step(StepKind.READ, paths=paths)

    def on_result(self, step: Step, result: Result | dict[LwM2MPath, Result], now: float) -> None:
        """Advance on the device's answer to ``step``."""
        if step.kind is StepKind.READ:
            assert isinstance(result, dict)
            self._on_read(result, now)
            return
        assert isinstance(result, Result)
        if not result.ok:
            what = {StepKind.WRITE_PACKAGE: "package write", StepKind.WRITE_URI: "package URI write",
                    StepKind.EXECUTE: f"execute {step.path}"}.get(step.kind, step.kind.value)
            self._fail(f"{what} refused: {result.code} {result.diagnostic}".rstrip(), now)
            return
        following = {
            Phase.SEND: Phase.AWAIT_DOWNLOAD,
            Phase.INSTALL: Phase.AWAIT_INSTALL,
            Phase.ACTIVATE: Phase.VERIFY,
        }
        self._enter(following[self.phase], now)

    def _on_read(self, results: dict[LwM2MPath, Result], now: float) -> None:
        if self.phase is Phase.CHECK_SEND:
            self._on_check_send(results, now)
            return
        values: dict[LwM2MPath, Value] = {}
        for path, result in results.items():
            if not result.ok or result.node is None:
                self.next_poll_at = now + self.poll_interval_s  # a lost poll is retried
                return
            values[path] = getattr(result.node, "value", None)
        if self.phase is Phase.VERIFY:
            self._verify(values, now)
            return
        state, outcome = (values.get(p) for p in self._state_paths())
        failure = (SOTA_RESULTS if self.target is Target.SOFTWARE else FOTA_RESULTS).get(outcome)
        if failure is not None:
            self._fail(f"device reports update result {outcome}: {failure}", now)
            return
        installed = Phase.ACTIVATE if self.target is Target.SOFTWARE else (
            Phase.VERIFY if self._verify_paths() else Phase.DONE)
        if self.phase is Phase.AWAIT_DOWNLOAD and self.resumed and self._already_installed(state, outcome):
            self._enter(installed, now)
        elif self._reached(state, outcome):
            self._enter(Phase.INSTALL if self.phase is Phase.AWAIT_DOWNLOAD else installed, now)
        else:
            self.next_poll_at = now + self.poll_interval_s

    def _on_check_send(self, results: dict[LwM2MPath, Result], now: float) -> None:
        """Decide, from what the device has, whether the package must be written."""
        state_results = [results.get(path) for path in self._state_paths()]
        if any(r is None or not r.ok or r.node is None for r in state_results):
            self.next_poll_at = now + self.poll_interval_s  # unknown: ask again, never write blindly
            return
        state, outcome = (getattr(r.node, "value", None) for r in state_results)
        verify = self._verify_paths()
        running = {path: getattr(r.node, "value", None) for path in verify
                   if (r := results.get(path)) is not None and r.ok and r.node is not None}
        software = self.target is Target.SOFTWARE
        if (self._already_installed(state, outcome) and verify and len(running) == len(verify)
                and self._mismatch(running) is None):
            self._enter(Phase.DONE, now)  # it runs the expected module already
        elif state == (3 if software else 2):  # DELIVERED / Downloaded: it has the package
            self._enter(Phase.INSTALL, now)
        elif (software and state == 2) or (self.mode is Mode.PULL and state == 1):
            # being checked (DOWNLOADED), or being fetched from the URI given before
            self._enter(Phase.AWAIT_DOWNLOAD, now)
        else:
            # nothing arrived, a push cut off mid-transfer, a refused package, or an
            # earlier package installed: write
            self._enter(Phase.SEND, now)

    def _already_installed(self, state: Value | None, outcome: Value | None) -> bool:
        """After a restart the install step may already have happened."""
        if self.target is Target.SOFTWARE:
            return state == 4
        return state == 0 and outcome == 1

    def resume(self, now: float) -> None:
        """After a server restart: re-check instead of repeating a package write or
        an Execute that may already have run."""
        self.resumed = True
        if self.phase is Phase.SEND:
            self._enter(Phase.CHECK_SEND, now)
        elif self.phase is Phase.INSTALL:
            self._enter(Phase.AWAIT_DOWNLOAD, now)
        elif self.phase is Phase.ACTIVATE:
            self._enter(Phase.AWAIT_INSTALL, now)
        elif not self.finished:
            self.phase_started_at = now
            self.next_poll_at = now

    def write_queued(self, now: float) -> None:
        """The caller found this job's package (or URI) write still waiting, unsent, in the
        sleeping device's queue: the device cannot have it, so there is nothing to check;
        that queued write is the one to wait for."""
        if self.phase is Phase.CHECK_SEND:
            self._enter(Phase.SEND, now)

    def _reached(self, state: Value | None, outcome: Value | None) -> bool:
        if self.target is Target.SOFTWARE:
            wanted = 3 if self.phase is Phase.AWAIT_DOWNLOAD else 4  # DELIVERED, INSTALLED
            return isinstance(state, int) and state >= wanted
        if self.phase is Phase.AWAIT_DOWNLOAD:
            return state == 2  # Downloaded
        return state == 0 and outcome == 1  # Idle again, Update Result success

    def _verify(self, values: dict[LwM2MPath, Value], now: float) -> None:
        mismatch = self._mismatch(values)
        if mismatch is not None:
            self._fail(mismatch, now)
            return
        self._enter(Phase.DONE, now)

    def _mismatch(self, values: dict[LwM2MPath, Value]) -> str | None:
        """Why the verify reads ``values`` do not show the expected module running; None when they do."""
        expected = self.expected
        if self.target is Target.FIRMWARE:
            if expected.package_version:
                running, wanted, where = values.get(LwM2MPath.of(5, 0, 7)), expected.package_version, "package"
            else:
                running, wanted, where = values.get(LwM2MPath.of(3, 0, 3)), expected.firmware_version, "firmware"
            if running != wanted:
                return f"device reports {where} version {running!r}, expected {wanted!r}"
            return None
        t = TINYML_OBJECT_ID
        activated = values.get(self._p(12))
        model = (values.get(LwM2MPath.of(t, 0, 10)), values.get(LwM2MPath.of(t, 0, 11)),
                 values.get(LwM2MPath.of(t, 0, 12)))
        wanted_model = (expected.model_id, expected.model_version, expected.digest)
        if activated is not True:
            return "package installed but not activated"
        if model != wanted_model:
            return (f"device runs model {model[0]!r} {model[1]!r}, expected {wanted_model[0]!r} {wanted_model[1]!r} "
                    f"(digest {'matches' if model[2] == wanted_model[2] else 'differs'})")
        return None

    def _enter(self, phase: Phase, now: float) -> None:
        self.log.append(f"{now:.3f} {self.phase.value} -> {phase.value}")
        self.phase = phase
        self.phase_started_at = now
        self.next_poll_at = now

    def _fail(self, reason: str, now: float) -> Step:
        self.reason = reason
        self._enter(Phase.FAILED, now)
        return Step(StepKind.FAILED, reason=reason)

    # -- persistence --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.value, "mode": self.mode.value, "uri": self.uri, "artifact": self.artifact,
            "instance": self.instance, "poll_interval_s": self.poll_interval_s,
            "phase_timeout_s": self.phase_timeout_s, "phase": self.phase.value,
            "phase_started_at": self.phase_started_at, "next_poll_at": self.next_poll_at,
            "reason": self.reason, "resumed": self.resumed, "log": list(self.log),
            "expected": {
                "model_id": self.expected.model_id, "model_version": self.expected.model_version,
                "digest": self.expected.digest.hex(), "firmware_version": self.expected.firmware_version,
                "package_version": self.expected.package_version,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryJob:
        expected = dict(data["expected"])
        expected["digest"] = bytes.fromhex(expected.get("digest", ""))
        return cls(
            target=Target(data["target"]), mode=Mode(data["mode"]), expected=Expected(**expected),
            uri=data.get("uri", ""), artifact=data.get("artifact", ""), instance=data.get("instance", 0),
            poll_interval_s=data.get("poll_interval_s", 2.0), phase_timeout_s=data.get("phase_timeout_s", 600.0),
            phase=Phase(data["phase"]), phase_started_at=data.get("phase_started_at"),
            next_poll_at=data.get("next_poll_at", 0.0), reason=data.get("reason", ""),
            resumed=data.get("resumed", False),
            log=list(data.get("log", [])),
        )
