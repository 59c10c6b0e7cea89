"""The device classes the server knows: those of its registered, discovered devices.

A class's modules are compiled once, but memory figures (and so a plugin's
verdict) may differ between its devices. Where one answer per class is
wanted (``tinymlaas models show``, ``tinymlaas compile --class``), the figures
of one named device stand for the class: the first of its endpoints by name,
so the choice is deterministic and the answer says whose figures it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..compilers import InvalidTarget, TargetSpec
from ..core.capabilities import DeviceProfile
from ..core.registration import Registration


class DeviceView(Protocol):
    """What this module needs of the server (:class:`lwm2m_server.server.LwM2MServer` has it)."""

    def registrations(self) -> list[Registration]: ...

    def profile(self, endpoint: str) -> DeviceProfile | None: ...


@dataclass(frozen=True, slots=True)
class KnownClass:
    """A device class among the registered devices, with the figures that stand for it."""

    device_class: str
    """:attr:`TargetSpec.device_class`."""
    endpoint: str
    """The device whose figures ``target`` holds: the first of ``endpoints``."""
    target: TargetSpec
    """``endpoint``'s target."""
    endpoints: tuple[str, ...]
    """Every registered device of the class, by name."""


def device_target(view: DeviceView, endpoint: str) -> TargetSpec | None:
    """``endpoint``'s target, or None when it is not discovered, has no TinyML object or an incoherent one."""
    profile = view.profile(endpoint)
    if profile is None:
        return None
    try:
        return profile.target_spec()
    except InvalidTarget:
        return None


def known_classes(view: DeviceView) -> list[KnownClass]:
    """Every class of the registered devices that have a TinyML Capability object, by class id."""
    members: dict[str, list[tuple[str, TargetSpec]]] = {}
    for registration in view.registrations():
        target = device_target(view, registration.endpoint)
        if target is not None:
            members.setdefault(target.device_class, []).append((registration.endpoint, target))
    classes = []
    for device_class, devices in sorted(members.items()):
        devices.sort(key=lambda item: item[0])
        endpoint, target = devices[0]
        classes.append(KnownClass(device_class, endpoint, target, tuple(ep for ep, _ in devices)))
    return classes
