"""CoRE Link Format (``application/link-format``, content format 40) with LwM2M attributes.

RFC 6690 §2 grammar, as parsed here::

    Link        = [ link-value *( "," link-value ) ]
    link-value  = "<" URI-Reference ">" *( ";" link-param )
    link-param  = parmname [ "=" ( ptoken / quoted-string ) ]     ; parmname per RFC 5987
    ptokenchar  = "!" / "#" / "$" / "%" / "&" / "'" / "(" / ")" / "*" / "+" / "-" / "."
                / "/" / DIGIT / ":" / "<" / "=" / ">" / "?" / "@" / ALPHA / "[" / "]"
                / "^" / "_" / "`" / "{" / "|" / "}" / "~"

LwM2M uses this format for the Register/Update payload (object instances, the
``</>;rt="oma.lwm2m";ct=...`` root link, ``ver``), Discover and Bootstrap-Discover
responses (``dim``, notification attributes, ``ssid``, ``uri``, ``lwm2m``).
It is not a node codec, so :mod:`ipso_objects.codecs` does not dispatch to it.

Leniency, chosen on purpose:

- whitespace (SP, HTAB, CR, LF) is accepted at both ends of the payload and around
  ``,`` and ``;``: RFC 6690 allows none, but real clients send ``</>;ct=110, </1/0>``
  or ``</2/1> ;empty``, and the RFC's own examples are printed across lines;
- a backslash in a quoted string escapes any character (RFC 2616 quoted-pair);
- a target is checked against the RFC 3986 character set (and ``%XX``) only,
  not the full URI-reference grammar.

Equality of :class:`LinkParam` ignores whether a value was quoted (``ver=1.1`` and
``ver="1.1"`` carry the same value), but the decoder records it so that
``encode(decode(x)) == x`` for canonical input.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Iterable, Sequence

from ..errors import DecodeError, EncodeError, PathError
from ..path import LwM2MPath
from .base import ContentFormat

CONTENT_FORMAT = ContentFormat.LINK

_WHITESPACE = " \t\r\n"
_PARMNAME = re.compile(r"[A-Za-z0-9!#$&+\-.^_`|~]+\*?")
_PTOKEN = re.compile(r"[A-Za-z0-9!#$%&'()*+\-./:<=>?@\[\]^_`{|}~]+")
_TARGET = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
# Inside quotes: anything but the closing quote, a backslash, or a control character
# (RFC 2616 qdtext excludes CTLs; HTAB is allowed as linear white space).
_QDTEXT = re.compile(r'[^"\\\x00-\x08\x0a-\x1f\x7f]*')
_MUST_ESCAPE = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')

_QUOTED_BY_CONVENTION = frozenset({"rt", "if", "rel", "rev", "anchor", "title", "uri"})
"""Quoted even when the value is a valid token: RFC 6690 §5 and the LwM2M examples
write ``rt="oma.lwm2m"``, ``if="sensor"``, ``anchor="/x"``, ``uri="coaps://..."``."""


@dataclass(frozen=True, slots=True)
class LinkParam:
    """One ``;name[=value]`` of a link."""

    name: str
    """Parameter name as sent (RFC 5987 parmname, optionally ending in ``*``)."""
    value: str | None = None
    """Unescaped value; None for a flag parameter such as ``obs``."""
    quoted: bool | None = field(default=None, compare=False)
    """How the value was (or must be) written: True quoted, False as a token,
    None lets the encoder choose. Presentation only, so not part of equality."""


@dataclass(frozen=True, slots=True)
class Link:
    """One link-value: a target URI-reference and its parameters in order.

    Repeated parameters are kept (RFC 6690 allows e.g. several ``rel``).
    """

    target: str
    """The URI-reference between ``<`` and ``>``, e.g. ``/3/0``."""
    params: tuple[LinkParam, ...] = ()
    """Parameters in payload order."""

    @classmethod
    def of(cls, target: str, *params: LinkParam | tuple[str, str | int | None] | str) -> Link:
        """``Link.of("/3/0/7", ("dim", 2), ("rt", "x"), "obs")``: a bare str is a flag."""
        built = []
        for param in params:
            if isinstance(param, LinkParam):
                built.append(param)
            elif isinstance(param, str):
                built.append(LinkParam(param))
            else:
                name, value = param
                built.append(LinkParam(name, None if value is None else str(value)))
        return cls(target, tuple(built))

    # -- generic accessors --------------------------------------------------

    def has(self, name: str) -> bool:
        """True when a parameter ``name`` is present (with or without value)."""
        return any(param.name == name for param in self.params)

    def get(self, name: str) -> str | None:
        """Value of the first parameter ``name``; None if absent or a flag (see :meth:`has`)."""
        for param in self.params:
            if param.name == name:
                return param.value
        return None

    def get_all(self, name: str) -> tuple[str | None, ...]:
        """Values of every parameter ``name``, in order."""
        return tuple(param.value for param in self.params if param.name == name)

    # -- LwM2M view ------------------------------------------------------------

    @property
    def path(self) -> LwM2MPath | None:
        """The LwM2M path of the target under the default root ``/``, if it is one."""
        return self.path_under("/")

    def path_under(self, root: str) -> LwM2MPath | None:
        """The LwM2M path of the target below ``root`` (an alternate path such as
        ``/lwm2m``); the root link itself (``</lwm2m>``) is the root path ``/``.
        None when the target is not ``root`` followed by ``/o[/i[/r[/ri]]]``."""
        prefix = root.rstrip("/")
        if prefix and not self.target.startswith(prefix):
            return None
        rest = self.target[len(prefix):]
        if rest in ("", "/"):
            return LwM2MPath(())
        if not rest.startswith("/") or "//" in rest:
            return None
        try:
            return LwM2MPath.parse(rest)
        except PathError:
            return None

    @property
    def ver(self) -> str | None:
        """Object version ``X.Y`` (Core 1.1 §5.1.2 ``ver``); None when absent."""
        return _version(self, "ver")

    @property
    def lwm2m(self) -> str | None:
        """Enabler version ``X.Y`` of a Bootstrap-Discover root link; None when absent."""
        return _version(self, "lwm2m")

    @property
    def ct(self) -> tuple[int, ...]:
        """Content formats: ``ct=110`` or ``ct="60 110 112"`` (RFC 7252 §7.2.1); () if absent."""
        text = _single(self, "ct")
        if text is None:
            return ()
        parts = [part for part in text.split(" ") if part]
        if not parts or not all(_CARDINAL.fullmatch(part) for part in parts):
            raise DecodeError(f"ct={text!r}: expected content-format numbers separated by spaces")
        formats = tuple(int(part) for part in parts)
        if any(number > 0xFFFF for number in formats):
            raise DecodeError(f"ct={text!r}: a content format is at most 65535")
        return formats

    @property
    def rt(self) -> tuple[str, ...]:
        """Resource types (``rt="oma.lwm2m"``), space separated; () if absent."""
        text = _single(self, "rt")
        return () if text is None else tuple(part for part in text.split(" ") if part)

    @property
    def dim(self) -> int | None:
        """Number of instances of a multiple resource, 0..255 (Core 1.1 ``dim``)."""
        return _bounded_int(self, "dim", 0, 255)

    @property
    def ssid(self) -> int | None:
        """Short Server ID of a Bootstrap-Discover link, 1..65534."""
        return _bounded_int(self, "ssid", 1, 65534)

    @property
    def uri(self) -> str | None:
        """Server URI of a Bootstrap-Discover link to a Security instance."""
        return _single(self, "uri")

    def notification_attributes(self) -> NotificationAttributes:
        """The notification attributes this link carries (see :meth:`NotificationAttributes.from_link`)."""
        return NotificationAttributes.from_link(self)


def lwm2m_root(links: Iterable[Link]) -> str:
    """The root path of a Register payload: the target of the link whose ``rt``
    includes ``oma.lwm2m`` (``/lwm2m`` for ``</lwm2m>;rt="oma.lwm2m"``), else ``/``."""
    for link in links:
        if "oma.lwm2m" in (link.get("rt") or "").split(" "):
            return link.target.rstrip("/") or "/"
    return "/"


_CARDINAL = re.compile(r"[0-9]{1,5}")
_VERSION = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}")


def _single(link: Link, name: str) -> str | None:
    values = link.get_all(name)
    if not values:
        return None
    if len(values) > 1:
        raise DecodeError(f"{link.target}: attribute {name!r} given {len(values)} times")
    if values[0] is None:
        raise DecodeError(f"{link.target}: attribute {name!r} needs a value")
    return values[0]


def _version(link: Link, name: str) -> str | None:
    text = _single(link, name)
    if text is not None and not _VERSION.fullmatch(text):
        raise DecodeError(f"{link.target}: {name}={text!r} is not a version X.Y")
    return text


def _bounded_int(link: Link, name: str, low: int, high: int) -> int | None:
    text = _single(link, name)
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise DecodeError(f"{link.target}: {name}={text!r} is not an integer in {low}..{high}")
    return int(text)


# -- decoding ------------------------------------------------------------------


def decode(data: bytes | str) -> list[Link]:
    """Parse a link-format payload; an empty (or all-whitespace) payload is no links."""
    text = _as_text(data)
    scanner = _Scanner(text)
    scanner.skip_whitespace()
    links: list[Link] = []
    while not scanner.at_end():
        links.append(scanner.link_value())
        scanner.skip_whitespace()
        if scanner.at_end():
            break
        scanner.expect(",", "',' between links")
        scanner.skip_whitespace()
        if scanner.at_end():
            raise DecodeError("link format: payload ends with ','")
    return links


def _as_text(data: object) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise DecodeError(f"link format: invalid UTF-8 at byte {error.start}") from None
    raise DecodeError(f"link format: expected bytes or str, got {type(data).__name__}")


class _Scanner:
    """A cursor over the payload text; every error names the offset."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def fail(self, what: str) -> DecodeError:
        found = repr(self.peek()) if not self.at_end() else "end of payload"
        return DecodeError(f"link format: expected {what} at offset {self.pos}, found {found}")

    def skip_whitespace(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise self.fail(what)
        self.pos += 1

    def match(self, pattern: re.Pattern[str]) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None:
            return ""
        self.pos = found.end()
        return found.group()

    def link_value(self) -> Link:
        start = self.pos
        self.expect("<", "'<' opening a link")
        end = self.text.find(">", self.pos)
        if end < 0:
            raise DecodeError(f"link format: '<' at offset {start} is never closed by '>'")
        target = self.text[self.pos:end]
        if not target:
            raise DecodeError(f"link format: empty target '<>' at offset {start}")
        if not _TARGET.fullmatch(target):
            raise DecodeError(f"link format: target {target!r} at offset {start} is not a URI-reference")
        self.pos = end + 1
        params = []
        while True:
            before = self.pos
            self.skip_whitespace()
            if self.peek() != ";":
                self.pos = before  # the caller decides what may follow a link
                return Link(target, tuple(params))
            self.pos += 1
            self.skip_whitespace()
            params.append(self.link_param())

    def link_param(self) -> LinkParam:
        name = self.match(_PARMNAME)
        if not name:
            raise self.fail("a parameter name")
        if self.peek() != "=":
            if name.endswith("*"):
                raise self.fail(f"'=' and a value after {name!r}")
            return LinkParam(name)
        self.pos += 1
        if self.peek() == '"' and not name.endswith("*"):  # an RFC 5987 ext-value is never quoted
            return LinkParam(name, self.quoted_string(), quoted=True)
        value = self.match(_PTOKEN)
        if not value:
            raise self.fail(f"a token or quoted string as value of {name!r}")
        return LinkParam(name, value, quoted=False)

    def quoted_string(self) -> str:
        start = self.pos
        self.pos += 1
        chunks = []
        while True:
            chunks.append(self.match(_QDTEXT))
            char = self.peek()
            if char == '"':
                self.pos += 1
                return "".join(chunks)
            if char == "" or (char == "\\" and self.pos + 1 == len(self.text)):
                raise DecodeError(f"link format: quoted string at offset {start} is never closed")
            if char != "\\":
                raise DecodeError(
                    f"link format: control character {char!r} at offset {self.pos} in a quoted string"
                )
            chunks.append(self.text[self.pos + 1])
            self.pos += 2


# -- encoding ------------------------------------------------------------------


def encode(links: Iterable[Link]) -> bytes:
    """Serialise links separated by ``,`` (no whitespace); flags are written without ``=``."""
    try:
        text = ",".join(_encode_link(link) for link in links)
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise EncodeError(f"link format: value is not encodable as UTF-8: {error.reason}") from None


def _encode_link(link: Link) -> str:
    if not isinstance(link, Link):
        raise EncodeError(f"link format: expected a Link, got {type(link).__name__}")
    if not isinstance(link.target, str) or not _TARGET.fullmatch(link.target):
        raise EncodeError(f"link format: target {link.target!r} is not a URI-reference")
    parts = [f"<{link.target}>"]
    for param in link.params:
        parts.append(_encode_param(param))
    return ";".join(parts)


def _encode_param(param: LinkParam) -> str:
    if not isinstance(param, LinkParam):
        raise EncodeError(f"link format: expected a LinkParam, got {type(param).__name__}")
    if not isinstance(param.name, str) or not _PARMNAME.fullmatch(param.name):
        raise EncodeError(f"link format: {param.name!r} is not a valid parameter name")
    value = param.value
    if value is None:
        if param.name.endswith("*"):
            raise EncodeError(f"link format: extended parameter {param.name!r} needs a value")
        return param.name
    if not isinstance(value, str):
        raise EncodeError(f"link format: value of {param.name!r} must be str, got {type(value).__name__}")
    is_token = bool(_PTOKEN.fullmatch(value))
    if param.name.endswith("*"):
        if not is_token:  # RFC 5987 ext-value is itself token-shaped
            raise EncodeError(f"link format: {param.name}={value!r} is not a valid ext-value")
        return f"{param.name}={value}"
    if param.quoted is None:
        quote = param.name in _QUOTED_BY_CONVENTION or not is_token
    else:
        quote = param.quoted or not is_token
    if not quote:
        return f"{param.name}={value}"
    escaped = _MUST_ESCAPE.sub(lambda found: "\\" + found.group(), value)
    return f'{param.name}="{escaped}"'


# -- notification attributes (Write-Attributes, Discover) ---------------------


class Unset(enum.Enum):
    """Marker type of :data:`UNSET`."""

    UNSET = "unset"


UNSET = Unset.UNSET
"""A Write-Attributes query names the attribute without a value (``?pmin``): remove it."""


class InvalidAttributesError(DecodeError):
    """Notification attribute values that are out of range or contradict each other
    (Core 1.1 §5.1.2, 1.2 §7.3: ``lt`` < ``gt``, and ``lt`` + 2*``st`` < ``gt``).

    A :class:`DecodeError` so that a peer's bad Write-Attributes becomes a 4.00
    like any other malformed input; also raised when building the value in code.
    """


_INTEGER_ATTRIBUTES = ("pmin", "pmax", "epmin", "epmax", "hqmax")
_NUMBER_ATTRIBUTES = ("gt", "lt", "st")
_BINARY_ATTRIBUTES = ("edge", "con")
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class NotificationAttributes:
    """The notification attributes of one path (LwM2M Core 1.1 §5.1.2, 1.2 §7.3).

    Each field is None when not mentioned, :data:`UNSET` when a Write-Attributes
    asks to remove it, or a value. Like the spec, ``pmax`` <= ``pmin`` is not an
    error: the Client then ignores ``pmax`` (same for ``epmax``/``epmin``).
    """

    pmin: int | Unset | None = None
    """Minimum period between notifications, seconds."""
    pmax: int | Unset | None = None
    """Maximum period between notifications, seconds."""
    gt: float | Unset | None = None
    """Notify when the value crosses above this threshold."""
    lt: float | Unset | None = None
    """Notify when the value crosses below this threshold."""
    st: float | Unset | None = None
    """Notify when the value changed by at least this step (>= 0)."""
    epmin: int | Unset | None = None
    """Minimum evaluation period, seconds (LwM2M 1.1)."""
    epmax: int | Unset | None = None
    """Maximum evaluation period, seconds (LwM2M 1.1)."""
    edge: int | Unset | None = None
    """Notify on a boolean's 0 (falling) or 1 (rising) edge only (LwM2M 1.2)."""
    con: int | Unset | None = None
    """1 for confirmable notifications, 0 for non-confirmable (LwM2M 1.2)."""
    hqmax: int | Unset | None = None
    """Maximum historical queue: notifications stored while offline (LwM2M 1.2)."""

    def __post_init__(self) -> None:
        for name in _INTEGER_ATTRIBUTES + _BINARY_ATTRIBUTES:
            value = getattr(self, name)
            if value is None or value is UNSET:
                continue
            if type(value) is not int or value < 0:
                raise InvalidAttributesError(f"{name} must be a non-negative integer, got {value!r}")
            if name in _BINARY_ATTRIBUTES and value > 1:
                raise InvalidAttributesError(f"{name} must be 0 or 1, got {value}")
        for name in _NUMBER_ATTRIBUTES:
            value = getattr(self, name)
            if value is None or value is UNSET:
                continue
            if type(value) not in (int, float) or not math.isfinite(value):
                raise InvalidAttributesError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if isinstance(self.st, float) and self.st < 0:
            raise InvalidAttributesError(f"st must be >= 0, got {_format_number(self.st)}")
        lt, gt, st = (_exact(value) for value in (self.lt, self.gt, self.st))
        if lt is not None and gt is not None:
            shown = {name: _format_attribute(getattr(self, name)) for name in _NUMBER_ATTRIBUTES}
            if not lt < gt:
                raise InvalidAttributesError(f"lt ({shown['lt']}) must be less than gt ({shown['gt']})")
            if st is not None and not lt + 2 * st < gt:
                raise InvalidAttributesError(
                    f"lt + 2*st ({shown['lt']} + 2*{shown['st']}) must be less than gt ({shown['gt']})"
                )

    @classmethod
    def from_query(cls, query: Sequence[str]) -> NotificationAttributes:
        """Parse Write-Attributes Uri-Query items such as ``["pmin=10", "pmax=60", "gt"]``."""
        values: dict[str, object] = {}
        for item in query:
            if not isinstance(item, str):
                raise DecodeError(f"query item must be str, got {type(item).__name__}")
            name, equals, text = item.partition("=")
            if name not in _ATTRIBUTE_NAMES:
                raise DecodeError(f"{name!r} is not a notification attribute")
            if name in values:
                raise DecodeError(f"attribute {name!r} given twice")
            values[name] = _parse_attribute(name, text) if equals else UNSET
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_link(cls, link: Link) -> NotificationAttributes:
        """The notification attributes among a link's parameters; others are ignored."""
        values: dict[str, object] = {}
        for param in link.params:
            if param.name not in _ATTRIBUTE_NAMES:
                continue
            if param.name in values:
                raise DecodeError(f"{link.target}: attribute {param.name!r} given twice")
            if param.value is None:
                raise DecodeError(f"{link.target}: attribute {param.name!r} needs a value")
            values[param.name] = _parse_attribute(param.name, param.value)
        return cls(**values)  # type: ignore[arg-type]

    def to_query(self) -> list[str]:
        """Uri-Query items for a Write-Attributes request; UNSET becomes a bare name."""
        items = []
        for name, value in self._set_fields():
            items.append(name if value is UNSET else f"{name}={_format_attribute(value)}")
        return items

    def to_params(self) -> tuple[LinkParam, ...]:
        """Link parameters for a Discover response (UNSET cannot appear in one)."""
        params = []
        for name, value in self._set_fields():
            if value is UNSET:
                raise EncodeError(f"attribute {name!r} is UNSET, which a link cannot carry")
            params.append(LinkParam(name, _format_attribute(value), quoted=False))
        return tuple(params)

    def updated_with(self, changes: NotificationAttributes) -> NotificationAttributes:
        """Apply a Write-Attributes: set values replace, UNSET removes, None keeps."""
        merged = {}
        for item in fields(self):
            change = getattr(changes, item.name)
            if change is None:
                merged[item.name] = getattr(self, item.name)
            else:
                merged[item.name] = None if change is UNSET else change
        return NotificationAttributes(**merged)

    def _set_fields(self) -> list[tuple[str, object]]:
        return [(item.name, getattr(self, item.name)) for item in fields(self)
                if getattr(self, item.name) is not None]


_ATTRIBUTE_NAMES = frozenset(item.name for item in fields(NotificationAttributes))


def _parse_attribute(name: str, text: str) -> int | float:
    if name in _NUMBER_ATTRIBUTES:
        # Length cap: a number never needs more, and it bounds the work on hostile input.
        if len(text) > 400 or not _NUMBER_TEXT.fullmatch(text):
            raise DecodeError(f"{name}={text!r} is not a decimal number")
        number = float(text)
        if not math.isfinite(number):
            raise DecodeError(f"{name}={text!r} is out of range")
        return number
    # int() refuses strings past 4300 digits with ValueError: cap the length first.
    if not re.fullmatch(r"[0-9]{1,20}", text):
        raise DecodeError(f"{name}={text!r} is not a non-negative integer")
    return int(text)


def _format_attribute(value: object) -> str:
    return _format_number(value) if isinstance(value, float) else str(value)


def _format_number(number: float) -> str:
    """Plain decimal without exponent (``50``, ``42.2``, ``0.0000001``): some client
    parsers take no scientific notation, and Leshan writes the same form."""
    if number == 0:
        return "0"
    text = format(Decimal(repr(number)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _exact(value: object) -> Decimal | None:
    """The decimal a float was written as, so ``lt + 2*st < gt`` is checked without
    binary rounding (42.2 + 2*0.4 must equal 43.0)."""
    return Decimal(repr(value)) if isinstance(value, float) else None
