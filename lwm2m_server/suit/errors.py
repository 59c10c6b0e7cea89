"""The one exception hierarchy of ``lwm2m_server.suit``.

Everything the SUIT code raises for bad input is a :class:`SuitError` carrying
a human-readable ``reason``. The verifier, which devices run on bytes from the
network, raises nothing else for arbitrary input: a caller that catches
``SuitError`` has caught every way an envelope can be refused.

::

    SuitError
    ├── FormatError              malformed: not the CBOR structure the draft defines
    │   └── UnsupportedError     well formed, but uses what this processor does not implement
    ├── SignatureError           not signed by a trusted key (or the manifest digest is wrong)
    │   ├── UnknownKeyError      the signature names a key id that is no trust anchor
    │   └── SeveredElementError  a severed element does not match its digest in the manifest
    ├── RollbackError            sequence number not greater than the installed one
    ├── CompatibilityError       manifest is for other devices
    │   ├── VendorMismatchError
    │   └── ClassMismatchError
    ├── PayloadError             the payload is not the one the manifest describes
    │   ├── DigestMismatchError
    │   └── SizeMismatchError
    ├── ProcessingError          a command sequence failed while the processor ran it
    │   ├── ConditionFailedError a condition did not hold (a soft failure inside Try Each)
    │   │   └── AbortError       suit-condition-abort
    │   └── CommandError         a command cannot be carried out (an unset parameter, nothing to fetch)
    ├── BuildError               (also a ValueError) bad arguments to an encoder
    └── KeyFileError             a key file cannot be read, written or used
"""

from __future__ import annotations


class SuitError(Exception):
    """Base of all errors raised by ``lwm2m_server.suit``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FormatError(SuitError):
    """The bytes are not a well-formed envelope, manifest, COSE structure or key."""


class UnsupportedError(FormatError):
    """Well formed, but uses an algorithm, version, command or parameter not implemented here."""


class SignatureError(SuitError):
    """No authentication block verifies with a trusted key, or the manifest does not match
    the digest that was signed."""


class UnknownKeyError(SignatureError):
    """The signature names (by key id) or needs a key that is not among the trust anchors."""


class SeveredElementError(SignatureError):
    """A severable element carried in the envelope does not match its digest in the manifest."""


class RollbackError(SuitError):
    """The manifest's sequence number is not greater than the installed one."""

    def __init__(self, reason: str, *, sequence_number: int, installed: int) -> None:
        super().__init__(reason)
        self.sequence_number = sequence_number
        self.installed = installed


class CompatibilityError(SuitError):
    """The manifest targets other devices (vendor or class identifier differs)."""


class VendorMismatchError(CompatibilityError):
    """The manifest's vendor identifier is not the expected one."""


class ClassMismatchError(CompatibilityError):
    """The manifest's class identifier is not the expected one."""


class PayloadError(SuitError):
    """The payload does not match the image digest or size in the manifest."""


class DigestMismatchError(PayloadError):
    """The payload's digest differs from the manifest's image digest."""


class SizeMismatchError(PayloadError):
    """The payload's length differs from the manifest's image size."""


class ProcessingError(SuitError):
    """Running a manifest's command sequences failed (:mod:`.processor`)."""

    def __init__(self, reason: str, *, sequence: str, command: int) -> None:
        super().__init__(reason)
        self.sequence = sequence
        """The sequence that failed: ``shared``, ``payload_fetch``, ``install``, ``validate``, ..."""
        self.command = command
        """The command that failed (for a Try Each none of whose alternatives held: the
        condition that failed the last one)."""


class ConditionFailedError(ProcessingError):
    """A condition did not hold for the current component."""


class AbortError(ConditionFailedError):
    """The manifest ran suit-condition-abort."""


class CommandError(ProcessingError):
    """A command cannot be carried out: a parameter it consumes is not set, there is nothing
    to fetch at its URI, a source component is empty, Soft Failure set outside Try Each or
    Run Sequence. Never a soft failure."""


class BuildError(SuitError, ValueError):
    """Arguments given to an encoder cannot make a valid envelope."""


class KeyFileError(SuitError):
    """A key file is missing, not PEM, of an unsupported type, or would be overwritten."""
