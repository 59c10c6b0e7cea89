"""Plain text (``text/plain;charset=utf-8``, content format 0).

LwM2M Core 1.0 §6.4.1 / Core 1.1 §7.4.1: one value of one resource (``/o/i/r``)
or resource instance (``/o/i/r/ri``) as UTF-8 text, in the forms of
:func:`~ipso_objects.values.to_text` (decimal numbers, ``0``/``1`` booleans,
Unix seconds for Time, ``object:instance`` for Objlnk).

Opaque: LwM2M 1.0 writes Opaque values in plain text as base64 (RFC 4648);
LwM2M 1.1 and later no longer allow Opaque in plain text and expect
``application/octet-stream`` (42) instead. We still decode base64 so that 1.0
clients keep working, and encode base64 too, so that a 1.0 client that only
speaks text can be written to; a 1.1 peer should be sent format 42, which is
the caller's choice of format, not this codec's.

A resource the model does not know decodes as ``str`` (text has no other
natural type) and encodes by the Python type of its value.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import DecodeError, EncodeError
from ..model import ResourceType
from ..nodes import Node, Resource, ResourceInstance, check_node_path
from ..path import LwM2MPath
from ..registry import ObjectRegistry
from ..values import Value, coerce, from_text, infer_type, to_text
from .base import decode_errors, encode_errors


def single_value_problem(path: LwM2MPath, registry: ObjectRegistry) -> str | None:
    """Why ``path`` cannot carry exactly one value, or None when it can.

    Shared by the single-value formats (plain text, opaque): the path must be a
    resource or resource instance, a resource must be single-instance and a
    resource instance must belong to a multiple-instance resource.
    """
    if len(path) not in (3, 4):
        return f"{path} is not a resource or resource instance; use TLV or SenML for it"
    definition = registry.resource_def(path)
    if definition is None:
        return None
    if definition.type is ResourceType.NONE:
        return f"{path} is executable and carries no value"
    if len(path) == 3 and definition.multiple:
        return f"{path} is a multiple-instance resource; use a multi-value format (TLV, SenML)"
    if len(path) == 4 and not definition.multiple:
        return f"{path.parent} is a single-instance resource; it has no resource instances"
    return None


def encode(node: Node, path: LwM2MPath, registry: ObjectRegistry) -> bytes:
    """The plain-text payload of one Resource or ResourceInstance."""
    with encode_errors():
        if not isinstance(node, (Resource, ResourceInstance)):
            raise EncodeError(
                f"text/plain carries one value, not a {type(node).__name__}; use TLV or SenML"
            )
        check_node_path(node, path)
        problem = single_value_problem(path, registry)
        if problem:
            raise EncodeError(problem)
        rtype = registry.value_type(path) or infer_type(node.value)
        if rtype is ResourceType.OPAQUE:
            return base64.b64encode(coerce(node.value, rtype))  # type: ignore[arg-type]
        try:
            return to_text(node.value, rtype).encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError(f"{path}: value is not encodable as UTF-8") from None


def decode(data: bytes, path: LwM2MPath, registry: ObjectRegistry) -> Node:
    """The Resource or ResourceInstance at ``path`` carried as plain text."""
    with decode_errors():
        problem = single_value_problem(path, registry)
        if problem:
            raise DecodeError(problem)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"a text payload is bytes, got {type(data).__name__}")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise DecodeError(f"{path}: text payload is not valid UTF-8 ({error.reason})") from None
        rtype = registry.value_type(path)
        value: Value
        if rtype is None:
            value = text
        elif rtype is ResourceType.OPAQUE:
            value = _from_base64(text, path)
        else:
            try:
                value = from_text(text, rtype)
            except DecodeError as error:
                raise DecodeError(f"{path}: {error.reason}") from None
            except ValueError:
                # values.from_text checks a Float after strip() but converts the
                # unstripped text; float() rejects some whitespace strip() removes.
                raise DecodeError(f"{path}: {text!r} is not a decimal {rtype.value}") from None
        if len(path) == 3:
            return Resource(path.ids[2], value)
        return ResourceInstance(path.ids[3], value)


def _from_base64(text: str, path: LwM2MPath) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise DecodeError(f"{path}: Opaque value in text/plain is not valid base64") from None
