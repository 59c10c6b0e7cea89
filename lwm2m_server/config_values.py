"""Reading a YAML configuration: a loader with limits, and checked values whose errors
name the key path (``coap.port: must be an integer in 0..65535, got 'abc'``).

The sections themselves, their defaults and the rules across keys are in :mod:`.config`.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, NoReturn

import yaml

MIN_TOKEN_LENGTH = 16
MAX_YAML_DEPTH = 64
"""Deepest nesting of YAML collections accepted (a configuration nests four or five)."""


class ConfigError(Exception):
    """The configuration cannot be used; ``str(error)`` is one line for the operator."""

    def __init__(self, source: str, path: str | None, problem: str) -> None:
        self.source = source
        """The file (``server.yaml``) or ``file:line:column`` for YAML syntax errors."""
        self.path = printable(path) if path is not None else None
        """Key path such as ``objects.ddf_folders[1]``; None when the whole file is at fault."""
        self.problem = printable(" ".join(problem.split()))
        """What is wrong and, where it helps, what is expected."""
        super().__init__(": ".join(part for part in (source, self.path, self.problem) if part))


# --------------------------------------------------------------------------- reading values


class Section:
    """One section of the document: checks its keys, reads and validates values."""

    def __init__(self, source: str, name: str, raw: Any, cls: type) -> None:
        self.source = source
        self.name = name
        self.cls = cls
        if raw is None:  # "coap:" with everything below commented out
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(source, name, f"must be a mapping of keys, got {describe(raw)}")
        check_keys(source, name + ".", raw, [f.name for f in fields(cls)], "key")
        self.raw: Mapping[Any, Any] = raw
        self.values: dict[str, Any] = {}
        self.defaults = {f.name: f.default for f in fields(cls)}

    def build(self) -> Any:
        return self.cls(**self.values)

    def fail(self, key: str | None, problem: str) -> NoReturn:
        raise ConfigError(self.source, f"{self.name}.{key}" if key else self.name, problem)

    def _get(self, key: str, nullable: bool = False) -> tuple[bool, Any]:
        if key not in self.raw:
            return False, None
        value = self.raw[key]
        if value is None and not nullable:
            self.fail(key, f"has no value; remove the key to use the default ({show(self.defaults[key])})")
        return True, value

    def integer(self, key: str, low: int, high: int | None = None) -> None:
        present, value = self._get(key)
        if not present:
            return
        if high is not None:
            expected = f"an integer in {low}..{high}"
            if not is_int(value) or not low <= value <= high:
                self.fail(key, f"must be {expected}, got {describe(value)}")
        else:
            if not is_int(value):
                self.fail(key, f"must be an integer, got {describe(value)}")
            if value < low:
                self.fail(key, f"must be {'> 0' if low == 1 else f'>= {low}'}, got {value}")
        self.values[key] = value

    def number(self, key: str, positive: bool, unit: str = "seconds") -> None:
        """An integer or a decimal (of ``unit``); ``positive`` means > 0, else >= 0."""
        present, value = self._get(key)
        if not present:
            return
        if not (is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            self.fail(key, f"must be a number ({unit}), got {describe(value)}")
        if value < 0 or (positive and value == 0):
            self.fail(key, f"must be {'> 0' if positive else '>= 0'}, got {value}")
        self.values[key] = value

    def boolean(self, key: str) -> None:
        present, value = self._get(key)
        if present:
            if not isinstance(value, bool):
                self.fail(key, f"must be a boolean (true or false), got {describe(value)}")
            self.values[key] = value

    def choice(self, key: str, allowed: tuple[Any, ...], lower: bool = False) -> None:
        present, value = self._get(key)
        if not present:
            return
        if lower and isinstance(value, str):
            value = value.lower()
        # bool is an int: "block_size: true" must not pass as 1
        if isinstance(value, bool) or value not in allowed:
            names = [show(option) for option in allowed]
            options = names[0] if len(names) == 1 else f"one of {', '.join(names[:-1])} or {names[-1]}"
            self.fail(key, f"must be {options}, got {describe(value)}")
        self.values[key] = value

    def host(self, key: str) -> None:
        present, value = self._get(key)
        if not present:
            return
        if not isinstance(value, str) or not is_host(value):
            self.fail(
                key,
                "must be an IP address ('::' = all interfaces, '0.0.0.0' = all IPv4, "
                f"'127.0.0.1' = this machine only) or a host name, got {describe(value)}",
            )
        self.values[key] = value

    def path(self, key: str) -> None:
        present, value = self._get(key)
        if present:
            self.values[key] = self._path_value(key, value)

    def optional_path(self, key: str) -> None:
        """A path, or null for "the default the program works out"."""
        present, value = self._get(key, nullable=True)
        if present:
            self.values[key] = None if value is None else self._path_value(key, value)

    def _path_value(self, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a path (a non-empty string), got {describe(value)}")
        if "\0" in value:
            self.fail(key, "must not contain a NUL character")
        try:
            os.fsencode(value)
        except UnicodeEncodeError:
            self.fail(key, f"is not a file name this system can encode: {value!r}")
        return Path(value)

    def folders(self, key: str) -> None:
        present, value = self._get(key, nullable=True)
        if not present:
            return
        if value is None:
            value = []
        if not isinstance(value, list):
            self.fail(key, f"must be a list of folder paths, got {describe(value)}")
        folders = tuple(self._path_value(f"{key}[{index}]", item) for index, item in enumerate(value))
        for index, folder in enumerate(folders):
            if not folder.is_dir():
                self.fail(f"{key}[{index}]", f"not a directory: {folder}")
        self.values[key] = folders

    def patterns(self, key: str) -> None:
        """A list of non-empty fnmatch patterns (a single string is a list of one)."""
        present, value = self._get(key, nullable=True)
        if not present:
            return
        value = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            self.fail(key, f"must be a list of patterns, got {describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fail(f"{key}[{index}]", f"must be a non-empty pattern, got {describe(item)}")
        self.values[key] = tuple(item.strip() for item in value)

    def token(self, key: str) -> None:
        """A secret: never echoed in an error message."""
        present, value = self._get(key, nullable=True)
        if not present or value is None:
            return
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {describe(value, secret=True)}")
        value = value.strip()
        if len(value) < MIN_TOKEN_LENGTH or any(character.isspace() for character in value):
            self.fail(
                key,
                f"must be at least {MIN_TOKEN_LENGTH} characters without spaces "
                "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            )
        self.values[key] = value


def check_keys(source: str, prefix: str, mapping: Mapping[Any, Any], valid: list[str], what: str) -> None:
    for key in mapping:
        if key in valid:
            continue
        name = str(key)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            source, f"{prefix}{name}", f"unknown {what}{hint}; valid {what}s: {', '.join(valid)}",
        )


# --------------------------------------------------------------------------- helpers

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another host name: cannot know without resolving it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped: one printable line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def show(value: Any) -> str:
    """A value as it would be written in YAML (for "did you mean" / default hints)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (str, Path)):
        return repr(str(value))
    if isinstance(value, tuple):
        return "[]" if not value else "[" + ", ".join(show(item) for item in value) + "]"
    return str(value)


def describe(value: Any, secret: bool = False) -> str:
    """The offending value for an error message; containers only by kind."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if secret:
        return {bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), "a value")
    if isinstance(value, str) and len(value) > 60:
        value = value[:57] + "..."
    if isinstance(value, (str, bool, int, float)) or value is None:
        return show(value)
    return f"a {type(value).__name__} ({value})"  # YAML dates and the like


def plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- YAML


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one) and
    collections nested deeper than :data:`MAX_YAML_DEPTH` (PyYAML composes recursively:
    thousands of ``[`` cost a second of CPU, then a RecursionError)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"collections nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def yaml_error(source: str, text: str, error: yaml.YAMLError) -> ConfigError:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or "invalid YAML"
        if error.context:
            where = f" at line {error.context_mark.line + 1}" if error.context_mark else ""
            problem += f" ({error.context}{where})"
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        if "mapping values are not allowed" in problem and "::" in line:
            problem += "; quote IPv6 addresses, e.g. host: \"::\""
        return ConfigError(f"{source}:{mark.line + 1}:{mark.column + 1}", None, problem)
    if isinstance(error, yaml.reader.ReaderError):
        before = text[: error.position]
        line = before.count("\n") + 1
        column = error.position - (before.rfind("\n") + 1) + 1
        return ConfigError(
            f"{source}:{line}:{column}", None,
            f"unacceptable character #x{error.character:04x}: special characters are not allowed",
        )
    return ConfigError(source, None, f"invalid YAML: {error}")
