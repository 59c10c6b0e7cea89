"""The daemon's configuration: YAML → typed, frozen dataclasses, validated at load.

Every key has a default, so an empty file (or no section at all) is a valid
configuration. Any mistake raises :class:`ConfigError` whose message is one line
naming the file, the key path and the problem::

    server.yaml: coap.port: must be an integer in 0..65535, got 'abc'
    server.yaml: coap.prot: unknown key (did you mean 'port'?); valid keys: host, port, ...
    server.yaml:4:9: mapping values are not allowed here

Relative paths (``store.path``, ``objects.ddf_folders``, ``api.token_file``) are
relative to the **current working directory of the daemon**, not to the config
file: run the daemon from the folder that should hold ``data/`` (the repository
root for the shipped ``config/server.yaml``). They are kept as written, so
``tinymlaas config show`` prints what the operator wrote.

Loading has no side effects; the API token file is created by
:func:`ensure_api_token`, which the daemon calls at start.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

import structlog
import yaml

log = structlog.get_logger(__name__)

MAX_LIFETIME = 2**32 - 1
"""Seconds; the largest ``lt`` an LwM2M client may send (an unsigned 32-bit value)."""
BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)
"""CoAP block sizes (RFC 7959 SZX 0..6)."""
STORE_KINDS = ("sqlite",)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")
MIN_TOKEN_LENGTH = 16
MAX_YAML_DEPTH = 64
"""Deepest nesting of YAML collections accepted (a configuration nests four or five)."""
MAX_CONFIG_BYTES = 256 * 1024
"""A configuration is a few KB; PyYAML needs ~150 times a file's size in memory."""
REDACTED = "***"


class ConfigError(Exception):
    """The configuration cannot be used; ``str(error)`` is one line for the operator."""

    def __init__(self, source: str, path: str | None, problem: str) -> None:
        self.source = source
        """The file (``server.yaml``) or ``file:line:column`` for YAML syntax errors."""
        self.path = _printable(path) if path is not None else None
        """Key path such as ``objects.ddf_folders[1]``; None when the whole file is at fault."""
        self.problem = _printable(" ".join(problem.split()))
        """What is wrong and, where it helps, what is expected."""
        super().__init__(": ".join(part for part in (source, self.path, self.problem) if part))


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class CoapConfig:
    """``coap``: the UDP endpoint devices register with, and limits on requests to them."""

    host: str = "::"
    """Address to bind; ``::`` is every interface, IPv4 included (dual stack)."""
    port: int = 5683
    """UDP port; 0 picks a free port (tests)."""
    max_in_flight: int = 200
    """Server → device requests awaiting an answer, across all devices."""
    max_in_flight_per_device: int = 1
    """Requests awaiting an answer per device (LwM2M clients handle one at a time)."""
    receive_buffer_bytes: int = 4 * 1024 * 1024
    """SO_RCVBUF of the socket (the kernel default, ~208 KiB, drops answers to fan-out)."""
    request_timeout_s: float = 93
    """Seconds before a request to a device fails (CoAP MAX_TRANSMIT_WAIT)."""
    block_size: int = 1024
    """Block-wise transfer size in bytes for pushes (SOTA/FOTA) and large payloads."""
    rate_limit_per_peer: float = 10
    """Requests a second one device (source ``host:port``) may send in the long run; a
    host (IPv4 address, IPv6 /64) gets ten times that. Over it: 4.29. 0 turns limiting off."""
    rate_limit_burst: int = 50
    """Requests a device may send at once after a quiet spell (a host: ten times that)."""


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """``registration``: lifetime rules for registered devices."""

    min_lifetime_s: int = 1
    """Smallest ``lt`` accepted on Register/Update."""
    max_lifetime_s: int = MAX_LIFETIME
    """Largest ``lt`` accepted on Register/Update (default: whatever LwM2M allows)."""
    expiry_check_interval_s: float = 5
    """Seconds between sweeps that expire registrations whose lifetime ran out."""
    grace_s: float = 0
    """Extra seconds granted past the lifetime before a registration expires."""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """``queue``: requests held for queue-mode (``b=UQ``/``Q``) devices while asleep."""

    max_pending_per_device: int = 32
    """Requests queued per device; more are refused."""
    default_expiry_s: float = 3600
    """Seconds a queued request waits for its device before it is dropped."""
    awake_window_s: float = 93
    """Seconds after a Register/Update during which requests go out directly
    (LwM2M Core: the client stays awake for CoAP MAX_TRANSMIT_WAIT)."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``store``: where registrations, devices and rollouts are kept."""

    kind: str = "sqlite"
    """Store plugin; only ``sqlite`` so far."""
    path: Path = Path("data/tinymlaas.sqlite3")
    """Database file, relative to the daemon's working directory."""


@dataclass(frozen=True, slots=True)
class ObjectsConfig:
    """``objects``: the LwM2M object model beyond the shipped DDFs."""

    ddf_folders: tuple[Path, ...] = ()
    """Folders whose DDF XML files are loaded on top of the shipped ones (must exist)."""


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """``api``: the operators' HTTP API."""

    host: str = "127.0.0.1"
    """Address to bind; anything but loopback needs ``allow_remote: true``."""
    port: int = 5780
    """TCP port; 0 picks a free port (tests)."""
    allow_remote: bool = False
    """Allow a non-loopback ``host``."""
    token: str | None = field(default=None, repr=False)
    """Bearer token given inline; None means read (or create) ``token_file``."""
    token_file: Path = Path("data/api-token")
    """File holding the bearer token; created (mode 0600) with a random token if missing."""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``logging``: what the daemon writes to stderr."""

    level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""
    format: str = "auto"
    """``console`` (readable), ``json`` (one object a line) or ``auto``
    (console when stderr is a terminal, JSON otherwise)."""


@dataclass(frozen=True, slots=True)
class DeclaredRollout:
    """A rollout declared in YAML; the daemon creates it (once) at start."""

    id: str
    """Rollout id; a rollout with this id that exists already is left alone."""
    model_file: Path
    """The model file (e.g. a .tflite), registered as ``model_name@model_version``."""
    model_name: str
    model_version: str
    selector: Mapping[str, Any] = field(default_factory=dict)
    """``device_classes``, ``endpoints`` (fnmatch patterns), ``labels``."""
    strategy: Mapping[str, Any] = field(default_factory=dict)
    """``max_in_flight``, ``canary_fraction``, ``failure_threshold``, ``max_attempts``,
    ``retry_backoff_s``, ``mode``."""


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """TinyML model deployment."""

    data_dir: Path = Path("data")
    """Models, compiled artefacts and signed modules live under it."""
    signing_key: Path = Path("data/keys/signing-es256.pem")
    """Private key that signs inference modules; created at first start if missing."""
    vendor_domain: str = "tinymlaas.example"
    """SUIT vendor id = UUID5(DNS namespace, this); devices check it."""
    public_host: str = ""
    """Host put in pull URIs; empty = the address each device contacted."""
    poll_interval_s: float = 2.0
    """Seconds between reads of a device's update state."""
    phase_timeout_s: float = 600.0
    """Longest wait for one update step (download, install)."""
    rollouts: tuple[DeclaredRollout, ...] = ()
    """Rollouts declared here."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The whole configuration file."""

    coap: CoapConfig = field(default_factory=CoapConfig)
    """CoAP endpoint and request limits."""
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    """Lifetime rules."""
    queue: QueueConfig = field(default_factory=QueueConfig)
    """Queue mode."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """Persistence."""
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    """Extra object definitions."""
    api: ApiConfig = field(default_factory=ApiConfig)
    """Operators' API."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Log output."""
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    """Model deployment."""
    source: str = field(default="<config>", compare=False)
    """Where the configuration came from (file name), for error messages."""


_SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in fields(ServerConfig)
    if f.name != "source"
}


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read and validate a YAML configuration file; raise :class:`ConfigError`."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(source, None, f"larger than {MAX_CONFIG_BYTES // 1024} KiB: not a configuration file")
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text() does
    except UnicodeDecodeError as error:
        raise ConfigError(source, None, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConfigError(source, None, f"cannot read: {error.strerror or error}") from None
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        raise _yaml_error(source, text, error) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(source, None, "collections nested too deeply") from None
    except (ValueError, OverflowError) as error:  # an integer of 5,000 digits, a 13th month
        raise ConfigError(source, None, f"a value YAML cannot represent: {error}") from None
    return parse_config(document, source)


def parse_config(mapping: Any, source: str = "<config>") -> ServerConfig:
    """Validate an already parsed document (a mapping of sections, or None for empty)."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            source, None,
            f"top level must be a mapping of sections ({', '.join(_SECTIONS)}), "
            f"got {_describe(mapping)}",
        )
    _check_keys(source, "", mapping, list(_SECTIONS), "section")
    parsers: dict[str, Callable[[_Section], Any]] = {
        "coap": _coap, "registration": _registration, "queue": _queue, "store": _store,
        "objects": _objects, "api": _api, "logging": _logging, "deployment": _deployment,
    }
    sections = {
        name: parsers[name](_Section(source, name, mapping[name], cls))
        for name, cls in _SECTIONS.items()
        if name in mapping
    }
    return ServerConfig(**sections, source=source)


def config_to_dict(config: ServerConfig) -> dict[str, Any]:
    """Plain data (str/int/float/bool/list/dict) for ``config show``; the token redacted."""
    result = _plain(config)
    result.pop("source", None)
    if result["api"]["token"] is not None:
        result["api"]["token"] = REDACTED
    return result


def ensure_api_token(config: ServerConfig) -> str:
    """The API bearer token: ``api.token``, else the content of ``api.token_file``,
    which is created with a random token and mode 0600 when it does not exist."""
    if config.api.token is not None:
        return config.api.token
    path = config.api.token_file
    try:
        token = _read_token(path)
    except FileNotFoundError:
        token = _create_token_file(config.source, path)
    except OSError as error:
        raise ConfigError(config.source, "api.token_file", f"cannot read {path}: {error.strerror or error}")
    if len(token) < MIN_TOKEN_LENGTH:
        problem = "is empty" if not token else f"holds a token shorter than {MIN_TOKEN_LENGTH} characters"
        raise ConfigError(
            config.source, "api.token_file",
            f"{path} {problem}; delete it to have a random token generated",
        )
    return token


def _read_token(path: Path) -> str:
    with open(path, encoding="utf-8") as file:
        mode = os.fstat(file.fileno()).st_mode
        token = file.read().strip()
    if mode & 0o077:
        log.warning("api token file readable by other users", path=str(path), mode=oct(mode & 0o777))
    return token


def _create_token_file(source: str, path: Path) -> str:
    """Write a fresh token atomically: a 0600 temporary file, then a hard link that
    fails if another process created the file meanwhile (its token wins)."""
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".api-token-")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(token + "\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                return _read_token(path)
        finally:
            os.unlink(temporary)
    except OSError as error:
        raise ConfigError(source, "api.token_file", f"cannot create {path}: {error.strerror or error}")
    log.info("api token created", path=str(path))
    return token


# --------------------------------------------------------------------------- sections


def _coap(s: _Section) -> CoapConfig:
    s.host("host")
    s.integer("port", 0, 65535)
    s.integer("max_in_flight", 1)
    s.integer("max_in_flight_per_device", 1)
    s.integer("receive_buffer_bytes", 1)
    s.number("request_timeout_s", positive=True)
    s.choice("block_size", BLOCK_SIZES)
    s.number("rate_limit_per_peer", positive=False, unit="requests per second")
    s.integer("rate_limit_burst", 1)
    config = s.build()
    if config.max_in_flight_per_device > config.max_in_flight:
        s.fail(
            "max_in_flight_per_device",
            f"must be <= coap.max_in_flight ({config.max_in_flight}), "
            f"got {config.max_in_flight_per_device}",
        )
    return config


def _registration(s: _Section) -> RegistrationConfig:
    s.integer("min_lifetime_s", 1, MAX_LIFETIME)
    s.integer("max_lifetime_s", 1, MAX_LIFETIME)
    s.number("expiry_check_interval_s", positive=True)
    s.number("grace_s", positive=False)
    config = s.build()
    if config.max_lifetime_s < config.min_lifetime_s:
        if "max_lifetime_s" in s.raw:
            s.fail(
                "max_lifetime_s",
                f"must be >= registration.min_lifetime_s ({config.min_lifetime_s}), "
                f"got {config.max_lifetime_s}",
            )
        s.fail(
            "min_lifetime_s",
            f"must be <= registration.max_lifetime_s ({config.max_lifetime_s}), "
            f"got {config.min_lifetime_s}",
        )
    return config


def _queue(s: _Section) -> QueueConfig:
    s.integer("max_pending_per_device", 1)
    s.number("default_expiry_s", positive=True)
    s.number("awake_window_s", positive=True)
    return s.build()


def _store(s: _Section) -> StoreConfig:
    s.choice("kind", STORE_KINDS)
    s.path("path")
    return s.build()


def _objects(s: _Section) -> ObjectsConfig:
    s.folders("ddf_folders")
    return s.build()


def _api(s: _Section) -> ApiConfig:
    s.host("host")
    s.integer("port", 0, 65535)
    s.boolean("allow_remote")
    s.token("token")
    s.path("token_file")
    config = s.build()
    if config.token is not None and "token_file" in s.raw:
        s.fail(None, "set either token or token_file, not both")
    if not config.allow_remote and not _is_loopback(config.host):
        s.fail(
            "host",
            f"{config.host!r} is not a loopback address; the API controls every device, "
            "so listening beyond this machine needs 'api.allow_remote: true' "
            "(and a TLS-terminating proxy in front)",
        )
    return config


def _deployment(s: _Section) -> DeploymentConfig:
    s.path("data_dir")
    s.path("signing_key")
    s.number("poll_interval_s", positive=True)
    s.number("phase_timeout_s", positive=True)
    for key in ("vendor_domain", "public_host"):
        present, value = s._get(key)
        if present:
            if not isinstance(value, str) or (key == "vendor_domain" and not value.strip()):
                s.fail(key, f"must be a{' non-empty' if key == 'vendor_domain' else ''} string, got {_describe(value)}")
            s.values[key] = value.strip()
    present, value = s._get("rollouts", nullable=True)
    if present and value is not None:
        if not isinstance(value, list):
            s.fail("rollouts", f"must be a list of rollouts, got {_describe(value)}")
        s.values["rollouts"] = tuple(_declared_rollout(s, f"rollouts[{i}]", item) for i, item in enumerate(value))
    return s.build()


def _declared_rollout(s: _Section, key: str, item: Any) -> DeclaredRollout:
    from .rollouts import RolloutError, Selector, Strategy

    if not isinstance(item, Mapping):
        s.fail(key, f"must be a mapping with id, model, selector, strategy; got {_describe(item)}")
    _check_keys(s.source, f"deployment.{key}.", item, ["id", "model", "selector", "strategy"], "key")
    model = item.get("model")
    if not isinstance(model, Mapping) or not all(isinstance(model.get(k), str) for k in ("file", "name", "version")):
        s.fail(f"{key}.model", "must be a mapping with file, name and version strings")
    rollout_id = item.get("id")
    if not isinstance(rollout_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rollout_id):
        s.fail(f"{key}.id", f"must be 1..64 letters, digits, '.', '_' or '-', got {_describe(rollout_id)}")
    selector, strategy = item.get("selector") or {}, item.get("strategy") or {}
    try:
        Selector(**{k: tuple(v) if isinstance(v, list) else v for k, v in selector.items()})
    except TypeError as error:
        s.fail(f"{key}.selector", f"valid keys are device_classes, endpoints, labels ({error})")
    try:
        Strategy(**strategy)
    except TypeError as error:
        s.fail(f"{key}.strategy", f"valid keys are max_in_flight, canary_fraction, failure_threshold, "
                                  f"max_attempts, retry_backoff_s, mode ({error})")
    except RolloutError as error:
        s.fail(f"{key}.strategy", str(error))
    return DeclaredRollout(rollout_id, Path(model["file"]), model["name"], model["version"],
                           dict(selector), dict(strategy))


def _logging(s: _Section) -> LoggingConfig:
    s.choice("level", LOG_LEVELS, lower=True)
    s.choice("format", LOG_FORMATS, lower=True)
    return s.build()


# --------------------------------------------------------------------------- reading values


class _Section:
    """One section of the document: checks its keys, reads and validates values."""

    def __init__(self, source: str, name: str, raw: Any, cls: type) -> None:
        self.source = source
        self.name = name
        self.cls = cls
        if raw is None:  # "coap:" with everything below commented out
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(source, name, f"must be a mapping of keys, got {_describe(raw)}")
        _check_keys(source, name + ".", raw, [f.name for f in fields(cls)], "key")
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
            self.fail(key, f"has no value; remove the key to use the default ({_show(self.defaults[key])})")
        return True, value

    def integer(self, key: str, low: int, high: int | None = None) -> None:
        present, value = self._get(key)
        if not present:
            return
        if high is not None:
            expected = f"an integer in {low}..{high}"
            if not _is_int(value) or not low <= value <= high:
                self.fail(key, f"must be {expected}, got {_describe(value)}")
        else:
            if not _is_int(value):
                self.fail(key, f"must be an integer, got {_describe(value)}")
            if value < low:
                self.fail(key, f"must be {'> 0' if low == 1 else f'>= {low}'}, got {value}")
        self.values[key] = value

    def number(self, key: str, positive: bool, unit: str = "seconds") -> None:
        """An integer or a decimal (of ``unit``); ``positive`` means > 0, else >= 0."""
        present, value = self._get(key)
        if not present:
            return
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            self.fail(key, f"must be a number ({unit}), got {_describe(value)}")
        if value < 0 or (positive and value == 0):
            self.fail(key, f"must be {'> 0' if positive else '>= 0'}, got {value}")
        self.values[key] = value

    def boolean(self, key: str) -> None:
        present, value = self._get(key)
        if present:
            if not isinstance(value, bool):
                self.fail(key, f"must be a boolean (true or false), got {_describe(value)}")
            self.values[key] = value

    def choice(self, key: str, allowed: tuple[Any, ...], lower: bool = False) -> None:
        present, value = self._get(key)
        if not present:
            return
        if lower and isinstance(value, str):
            value = value.lower()
        # bool is an int: "block_size: true" must not pass as 1
        if isinstance(value, bool) or value not in allowed:
            names = [_show(option) for option in allowed]
            options = names[0] if len(names) == 1 else f"one of {', '.join(names[:-1])} or {names[-1]}"
            self.fail(key, f"must be {options}, got {_describe(value)}")
        self.values[key] = value

    def host(self, key: str) -> None:
        present, value = self._get(key)
        if not present:
            return
        if not isinstance(value, str) or not _is_host(value):
            self.fail(
                key,
                "must be an IP address ('::' = all interfaces, '0.0.0.0' = all IPv4, "
                f"'127.0.0.1' = this machine only) or a host name, got {_describe(value)}",
            )
        self.values[key] = value

    def path(self, key: str) -> None:
        present, value = self._get(key)
        if present:
            self.values[key] = self._path_value(key, value)

    def _path_value(self, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a path (a non-empty string), got {_describe(value)}")
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
            self.fail(key, f"must be a list of folder paths, got {_describe(value)}")
        folders = tuple(self._path_value(f"{key}[{index}]", item) for index, item in enumerate(value))
        for index, folder in enumerate(folders):
            if not folder.is_dir():
                self.fail(f"{key}[{index}]", f"not a directory: {folder}")
        self.values[key] = folders

    def token(self, key: str) -> None:
        """A secret: never echoed in an error message."""
        present, value = self._get(key, nullable=True)
        if not present or value is None:
            return
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {_describe(value, secret=True)}")
        value = value.strip()
        if len(value) < MIN_TOKEN_LENGTH or any(character.isspace() for character in value):
            self.fail(
                key,
                f"must be at least {MIN_TOKEN_LENGTH} characters without spaces "
                "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            )
        self.values[key] = value


def _check_keys(source: str, prefix: str, mapping: Mapping[Any, Any], valid: list[str], what: str) -> None:
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


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another host name: cannot know without resolving it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped: one printable line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as it would be written in YAML (for "did you mean" / default hints)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (str, Path)):
        return repr(str(value))
    if isinstance(value, tuple):
        return "[]" if not value else "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)


def _describe(value: Any, secret: bool = False) -> str:
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
        return _show(value)
    return f"a {type(value).__name__} ({value})"  # YAML dates and the like


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
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


def _yaml_error(source: str, text: str, error: yaml.YAMLError) -> ConfigError:
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
