"""What a simulated device checks of a package besides its signature, sans-I/O.

:mod:`simulators.updates` verifies an envelope when it arrives; this module then
runs the manifest's command sequences on the device as a SUIT processor does
(:func:`lwm2m_server.suit.process`): the update procedure (shared, payload-fetch,
install, validate) on a copy of the component storage when the package is
delivered, and again for real at Install (/9) or Update (/5); the invocation
procedure (shared, validate, load, invoke) at Activate (/9) or Update (/5). Before
Install, Activate and Update the device also checks again (:func:`check_identity`,
:func:`check_newer`) that the package is for its vendor and its class *now*, and
that it is newer than everything it holds for that object: the anti-rollback
counter (what was last active) and, for /9, the package installed in every
instance. Equal is allowed only for that very manifest (re-activating it).

How a refusal is classified (``kind``; the Update Result per object is in
:mod:`simulators.updates`)::

    failure                                                     kind          /9   /5
    condition vendor, class or device identifier, component     unsupported   54    6
      slot (the package is for other devices or slots)
    condition image match or check content                      integrity     53    5
    condition abort (the manifest refuses to go on)             install       58    8
    a directive that cannot run (unset parameter, empty         install       58    8
      source component, Soft Failure outside Try Each)
    fetch of a URI that is neither integrated nor downloaded    unsupported   54    6
    an unsupported or custom command, a severed sequence        unsupported   54    6
      not delivered (UnsupportedError)
    at Install/Activate/Update: another vendor or class now     unsupported   54    6
    at Install/Activate/Update: not newer than what is held     rollback      57    8
    the installed image is not the image the manifest signs     integrity     53    5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping
from uuid import UUID

from lwm2m_server.suit import (
    PayloadError, ProcessingError, RollbackError, SignatureError, SuitError, VerifiedModule,
)
from lwm2m_server.suit.commands import (
    CHECK_CONTENT, CLASS_IDENTIFIER, COMPONENT_SLOT, DEVICE_IDENTIFIER, FETCH, IMAGE_MATCH,
    VENDOR_IDENTIFIER, ComponentId,
)
from lwm2m_server.suit.processor import DeviceFacts, Outcome, component_name, process

_IDENTITY = frozenset({VENDOR_IDENTIFIER, CLASS_IDENTIFIER, DEVICE_IDENTIFIER, COMPONENT_SLOT, FETCH})
_CONTENT = frozenset({IMAGE_MATCH, CHECK_CONTENT})


class Refused(Exception):
    """A package the device does not take; ``kind`` picks the result code."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def classify(error: SuitError) -> str:
    """The refusal kind of a verification or processing error (the module docstring's table)."""
    if isinstance(error, ProcessingError):
        if error.command in _IDENTITY:
            return "unsupported"
        return "integrity" if error.command in _CONTENT else "install"
    if isinstance(error, (SignatureError, PayloadError)):
        return "integrity"
    if isinstance(error, RollbackError):
        return "rollback"
    return "unsupported"  # FormatError, UnsupportedError, CompatibilityError


def run(module: VerifiedModule, facts: DeviceFacts, procedure: Iterable[str],
        contents: Mapping[ComponentId, bytes]) -> Outcome:
    """Run ``procedure`` of the manifest on components holding ``contents``; :class:`Refused`
    with the kind of the failure."""
    try:
        return process(module, facts, procedure, contents=contents)
    except SuitError as error:
        raise Refused(classify(error), error.reason) from None


def installed_image(module: VerifiedModule, outcome: Outcome) -> bytes:
    """The image the update left in the manifest's image component, which must be the image
    the manifest signs (digest and size) whatever its sequences did."""
    image = module.image
    if image is None:
        raise Refused("unsupported", "the manifest does not describe exactly one image")
    data = outcome.contents.get(image.component)
    if data is None:
        raise Refused("install", f"the update left component {component_name(image.component)} empty")
    if (image.size is not None and len(data) != image.size) or not image.digest.matches(data):
        raise Refused("integrity", f"component {component_name(image.component)} does not hold "
                                   f"the image the manifest signs")
    return data


def check_identity(module: VerifiedModule, vendor_id: UUID, class_id: UUID) -> None:
    """:class:`Refused` (unsupported) unless the module is for this vendor and class."""
    if module.vendor_id != vendor_id:
        raise Refused("unsupported", f"the module is for vendor {module.vendor_id}, this device's is {vendor_id}")
    if module.class_id != class_id:
        raise Refused("unsupported", f"the module is for class {module.class_id}, this device's class "
                                     f"is now {class_id}")


@dataclass(frozen=True, slots=True)
class Held:
    """A sequence number the device already holds for an object."""

    sequence: int
    """The sequence number."""
    manifest_digest: bytes | None
    """Digest of the manifest that carried it (None: unknown)."""
    what: str
    """Where it is held, for the reason, e.g. ``installed in /9/0 (dense 2.0.0)``."""


def check_newer(module: VerifiedModule, held: Iterable[Held]) -> None:
    """:class:`Refused` (rollback) unless the module's sequence number is greater than every
    one held, or equal to one and carried by the very same manifest."""
    for item in held:
        same = item.manifest_digest is not None and item.manifest_digest == module.manifest_digest
        if module.sequence_number < item.sequence or (module.sequence_number == item.sequence and not same):
            raise Refused("rollback", f"sequence number {module.sequence_number} is not greater than "
                                      f"{item.sequence}, {item.what}")
