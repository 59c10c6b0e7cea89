"""The one exception hierarchy of ``ipso_objects``.

Every malformed input (a DDF file, a path string, a payload) raises a subclass
of :class:`IpsoError` carrying a human-readable ``reason``. Callers that face the
network catch ``IpsoError`` and turn it into a CoAP 4.xx with ``str(error)`` as
diagnostic payload.
"""

from __future__ import annotations


class IpsoError(Exception):
    """Base of all errors raised by ``ipso_objects``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DdfError(IpsoError):
    """An object definition (DDF XML) file is malformed.

    ``source`` names the file (or ``<bytes>``), ``element`` the XML element at fault.
    """

    def __init__(self, reason: str, *, source: str, element: str | None = None) -> None:
        where = f"{source}: <{element}>" if element else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.element = element


class NotADdfError(DdfError):
    """A well-formed XML file whose root is not ``<LWM2M>`` (e.g. the registry's ``DDF.xml`` index)."""


class PathError(IpsoError):
    """A string or id sequence is not a valid LwM2M path."""


class ModelError(IpsoError):
    """A value or node does not fit the object model (unknown id, wrong type, ...)."""


class CodecError(IpsoError):
    """Base of payload encoding/decoding errors."""


class DecodeError(CodecError):
    """Bytes received are not a valid payload of the content format they claim."""


class EncodeError(CodecError):
    """A node or value cannot be represented in the requested content format."""


class UnsupportedFormatError(CodecError):
    """The content format is unknown, or does not support the requested operation."""
