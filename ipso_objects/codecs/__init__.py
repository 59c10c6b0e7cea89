"""Payload codecs, one module per content format, and a dispatch by format number.

Every node codec module offers ``encode(node, path, registry) -> bytes`` and
``decode(data, path, registry) -> Node`` where ``path`` is the path the payload
is addressed to (the request URI). Formats that carry full paths also offer
some of:

- ``encode_composite(values, registry)`` / ``decode_composite(data, registry)``:
  leaf values keyed by full path (Read-/Write-/Observe-Composite, LwM2M 1.1+);
- ``encode_paths(paths)`` / ``decode_paths(data)``: the list of paths of a
  Read-Composite or Observe-Composite request;
- ``encode_timestamped(entries, registry)`` / ``decode_timestamped(data, path, registry)``:
  lists of :class:`TimestampedValues` (notifications with history, Send).

Errors: decoders raise only :class:`~ipso_objects.errors.DecodeError`, encoders
only :class:`~ipso_objects.errors.EncodeError`; the dispatch raises
:class:`~ipso_objects.errors.UnsupportedFormatError` for a format that is
unknown or lacks the operation. Link format (40) is not a node codec: see
:mod:`ipso_objects.codecs.link_format`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Mapping, Sequence

from ..errors import UnsupportedFormatError
from ..nodes import Node
from ..path import LwM2MPath
from ..registry import ObjectRegistry
from ..values import Value
from .base import ContentFormat, TimestampedValues, resolve_senml_time

__all__ = [
    "ContentFormat",
    "TimestampedValues",
    "resolve_senml_time",
    "encode",
    "decode",
    "encode_composite",
    "decode_composite",
    "encode_paths",
    "decode_paths",
    "encode_timestamped",
    "decode_timestamped",
    "codec_module",
]

_MODULES = {
    ContentFormat.TEXT: "text",
    ContentFormat.OPAQUE: "opaque",
    ContentFormat.TLV: "tlv",
    ContentFormat.SENML_JSON: "senml_json",
    ContentFormat.SENML_CBOR: "senml_cbor",
    ContentFormat.OMA_JSON: "oma_json",
    ContentFormat.LWM2M_CBOR: "lwm2m_cbor",
}


def codec_module(content_format: int) -> ModuleType:
    """The module implementing node encoding for ``content_format``."""
    try:
        name = _MODULES[ContentFormat(content_format)]
    except (ValueError, KeyError):
        raise UnsupportedFormatError(
            f"content format {content_format} is not an LwM2M node format"
        ) from None
    return importlib.import_module(f"{__name__}.{name}")


def _function(content_format: int, name: str):
    module = codec_module(content_format)
    function = getattr(module, name, None)
    if function is None:
        raise UnsupportedFormatError(
            f"content format {ContentFormat(content_format).name} does not support {name}"
        )
    return function


def encode(content_format: int, node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    return _function(content_format, "encode")(node, path, registry)


def decode(content_format: int, data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> Node:
    return _function(content_format, "decode")(data, path, registry)


def encode_composite(
    content_format: int, values: Mapping[LwM2MPath, Value], registry: ObjectRegistry
) -> bytes:
    return _function(content_format, "encode_composite")(values, registry)


def decode_composite(
    content_format: int, data: bytes, registry: ObjectRegistry
) -> dict[LwM2MPath, Value]:
    return _function(content_format, "decode_composite")(data, registry)


def encode_paths(content_format: int, paths: Sequence[LwM2MPath]) -> bytes:
    return _function(content_format, "encode_paths")(paths)


def decode_paths(content_format: int, data: bytes) -> list[LwM2MPath]:
    return _function(content_format, "decode_paths")(data)


def encode_timestamped(
    content_format: int, entries: Sequence[TimestampedValues], registry: ObjectRegistry
) -> bytes:
    return _function(content_format, "encode_timestamped")(entries, registry)


def decode_timestamped(
    content_format: int, data: bytes, path: LwM2MPath, registry: ObjectRegistry
) -> list[TimestampedValues]:
    return _function(content_format, "decode_timestamped")(data, path, registry)
