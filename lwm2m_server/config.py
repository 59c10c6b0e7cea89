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

import os
import re
import socket
import secrets
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import structlog
import yaml

from .config_values import (
    MIN_TOKEN_LENGTH, ConfigError, Section, YamlLoader, check_keys, describe, is_loopback, plain,
    yaml_error,
)
from .transport.block1 import IDLE_TIMEOUT_S, Block1Limits

log = structlog.get_logger(__name__)

MAX_LIFETIME = 2**32 - 1
"""Seconds; the largest ``lt`` an LwM2M client may send (an unsigned 32-bit value)."""
BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)
"""CoAP block sizes (RFC 7959 SZX 0..6)."""
STORE_KINDS = ("sqlite", "postgresql")
"""Store plugins the configuration knows; the daemon finds each as an entry point at start."""
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")
METRICS_ACCESS = ("token", "loopback", "open")
"""Who may read ``/metrics`` without the API token: nobody, this machine, anyone."""
MAX_CONFIG_BYTES = 256 * 1024
"""A configuration is a few KB; PyYAML needs ~150 times a file's size in memory."""
REDACTED = "***"




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
    max_request_body_bytes: int = 256 * 1024
    """Largest request body (a Register's links, a Send) reassembled from Block1; more: 4.13."""
    max_block1_bodies_per_peer: int = 4
    """Request bodies one device (source ``host:port``) may have in Block1 assembly at once; more: 4.29."""
    max_block1_bytes_per_peer: int = 512 * 1024
    """Bytes one device's bodies in assembly may hold (>= ``max_request_body_bytes``); more: 4.29."""
    max_block1_bodies: int = 1000
    """Request bodies in Block1 assembly, all devices together; more: 5.03 with Max-Age."""
    max_block1_bytes: int = 16 * 1024 * 1024
    """Bytes all bodies in assembly may hold together; more: 5.03 with Max-Age."""
    block1_idle_timeout_s: float = IDLE_TIMEOUT_S
    """A body in assembly no block arrived for in this many seconds is dropped (its next block: 4.08)."""
    workers: int = 1
    """Processes serving devices on the CoAP ports (SO_REUSEPORT: the kernel keeps each
    device on one). More than 1 needs ``cluster.bus``; the first also runs the API."""
    secure_port: int | None = 5684
    """UDP port of CoAPS (DTLS 1.2 PSK), on ``host``; None = no CoAPS; 0 = any free port."""

    def block1_limits(self) -> Block1Limits:
        """The bounds on Block1 reassembly (the CoAP adapter's)."""
        return Block1Limits(self.max_block1_bodies_per_peer, self.max_block1_bytes_per_peer,
                            self.max_block1_bodies, self.max_block1_bytes, self.block1_idle_timeout_s)


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
    """Store plugin: ``sqlite`` (a file, one daemon) or ``postgresql`` (a server, shareable)."""
    path: Path = Path("data/tinymlaas.sqlite3")
    """``sqlite``: database file, relative to the daemon's working directory."""
    url: str | None = None
    """``postgresql``: ``postgresql://user[:password]@host[:port]/dbname[?param=value]``
    (libpq URI; the password may come from ``PGPASSWORD`` or ``~/.pgpass`` instead)."""

    @property
    def target(self) -> Path | str:
        """What the store plugin opens: the file for sqlite, the URL for postgresql."""
        return self.url if self.kind == "postgresql" and self.url is not None else self.path


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
    metrics: str = "loopback"
    """Who may read ``/metrics`` (Prometheus): ``token`` (with the bearer token only),
    ``loopback`` (requests from 127.0.0.1 / ::1 without it, others with it) or ``open``."""


SECURITY_MODES = ("mixed", "secure-only")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``security``: who may talk to the server, and how."""

    mode: str = "mixed"
    """``mixed``: CoAP and CoAPS; a device with credentials must use CoAPS.
    ``secure-only``: every plain CoAP request is refused (4.03)."""
    credentials_path: Path = Path("data/credentials.sqlite3")
    """The security store: per-endpoint PSK credentials (mode 0600)."""
    max_sessions: int = 10000
    """DTLS sessions kept at once; the least recently used goes when a new one needs room."""
    session_idle_timeout_s: float = 86400
    """A DTLS session silent this long is dropped; the device handshakes again."""
    dtls_session_file: Path | None = None
    """Where the daemon keeps DTLS sessions over a graceful restart (mode 0600; read and
    deleted at start). None: ``dtls-sessions.json`` beside ``credentials_path``."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``cluster``: the message bus joining workers (and, later, nodes)."""

    bus: str | None = None
    """NATS server URL (``nats://127.0.0.1:4222``); needed when ``coap.workers`` > 1."""
    name: str = "tinymlaas"
    """Subject prefix on the bus: servers with the same name form one cluster."""
    node: str | None = None
    """This daemon's name in the cluster (unique per node); None: the host name."""
    advertise: str | None = None
    """Host (name or address) devices reach this node's CoAP ports at, for the
    Bootstrap-Server of any node to send them here; None: ``coap.host`` unless it is
    a wildcard (then this node is given only the devices that bootstrap with it)."""

    @property
    def node_id(self) -> str:
        return self.node or _token(socket.gethostname())


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    """``bootstrap``: the LwM2M Bootstrap-Server (``/bs``) in the same daemon."""

    enabled: bool = True
    """Answer client-initiated bootstrap (it needs the device's bootstrap credentials)."""
    server_uri: str = ""
    """LwM2M Server URI written to devices; "" = ``coaps://`` the address the device
    contacted, at ``coap.secure_port``."""
    short_server_id: int = 1
    """Short Server ID of the account written (1..65534)."""
    lifetime_s: int = 86400
    """Registration lifetime written to the Server object (/1/x/1)."""
    binding: str = "U"
    """Binding written to the Server object (/1/x/7), for every endpoint; ``UQ`` puts
    the devices in queue mode (they keep it: they register with ``b=UQ``)."""
    port: int = 0
    """UDP port of a plain-CoAP Bootstrap-Server of its own (``coap://host:port/bs``);
    0 = ``/bs`` on ``coap.port``, shared with the LwM2M server."""
    secure_port: int = 0
    """UDP port of a CoAPS Bootstrap-Server of its own; 0 = ``/bs`` on ``coap.secure_port``.
    With its own port the Bootstrap-Server URI differs from the LwM2M Server URI it
    writes, so the device opens a new DTLS session with its server PSK to register
    (clients reuse the bootstrap session when both URIs are the same)."""


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
    ``retry_backoff_s``, ``mode``, ``version_check``, ``follow`` (default true here: a
    declared rollout enrols devices that match later)."""


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
    public_port: int = 0
    """Port put in coap:// pull URIs with ``public_host``; 0 = ``coap.port`` (a port
    forward or NAT in front of the server maps another one)."""
    public_secure_port: int = 0
    """Port put in coaps:// pull URIs with ``public_host``; 0 = ``coap.secure_port``."""
    poll_interval_s: float = 2.0
    """Seconds between reads of a device's update state."""
    phase_timeout_s: float = 600.0
    """Longest wait for one update step (download, install)."""
    suit_device_classes: tuple[str, ...] = ()
    """Device classes (fnmatch patterns, e.g. ``fw-acme-*``) whose firmware comes as a
    signed SUIT envelope although they have no TinyML object; others get the raw image."""
    rollouts: tuple[DeclaredRollout, ...] = ()
    """Rollouts declared here."""
    leader_lease_s: float = 15.0
    """Nodes sharing a store run rollouts on one, the holder of a store lease of this
    length (renewed every third of it); when it dies, another takes over after it expires."""


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
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """CoAPS and device credentials."""
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    """Bootstrap-Server."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Workers and the bus between them."""
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
        document = yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader is a SafeLoader
    except yaml.YAMLError as error:
        raise yaml_error(source, text, error) from None
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
            f"got {describe(mapping)}",
        )
    check_keys(source, "", mapping, list(_SECTIONS), "section")
    parsers: dict[str, Callable[[Section], Any]] = {
        "coap": _coap, "registration": _registration, "queue": _queue, "store": _store,
        "objects": _objects, "api": _api, "logging": _logging, "deployment": _deployment,
        "security": _security, "bootstrap": _bootstrap, "cluster": _cluster,
    }
    sections = {
        name: parsers[name](Section(source, name, mapping[name], cls))
        for name, cls in _SECTIONS.items()
        if name in mapping
    }
    config = ServerConfig(**sections, source=source)
    if config.security.mode == "secure-only" and config.coap.secure_port is None:
        raise ConfigError(source, "security.mode", "secure-only needs CoAPS: set coap.secure_port")
    _check_bootstrap_ports(config)
    if config.coap.workers > 1 and not config.cluster.bus:
        raise ConfigError(source, "cluster.bus", f"coap.workers: {config.coap.workers} needs a bus to join them: "
                          "set cluster.bus (e.g. nats://127.0.0.1:4222)")
    return config


def _check_bootstrap_ports(config: ServerConfig) -> None:
    """``bootstrap.port`` / ``secure_port``: each 0 (shared) or a port no other endpoint uses."""
    taken = {"coap.port": config.coap.port, "coap.secure_port": config.coap.secure_port}
    for key in ("port", "secure_port"):
        port = getattr(config.bootstrap, key)
        if port == 0:
            continue
        clash = next((name for name, other in taken.items() if other == port), None)
        if clash is not None:
            raise ConfigError(config.source, f"bootstrap.{key}",
                              f"must differ from {clash} ({port}); 0 shares the server's port")
        taken[f"bootstrap.{key}"] = port


def config_to_dict(config: ServerConfig) -> dict[str, Any]:
    """Plain data (str/int/float/bool/list/dict) for ``config show``; the token redacted."""
    result = plain(config)
    result.pop("source", None)
    if result["api"]["token"] is not None:
        result["api"]["token"] = REDACTED
    if result["store"]["url"] is not None:
        result["store"]["url"] = redacted_url(result["store"]["url"])
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


def new_api_token() -> str:
    """A random URL-safe token that does not start with "-": operators pass it as
    ``--token "$(cat data/api-token)"``, and argparse would take a leading "-" for an option."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def _create_token_file(source: str, path: Path) -> str:
    """Write a fresh token atomically: a 0600 temporary file, then a hard link that
    fails if another process created the file meanwhile (its token wins)."""
    token = new_api_token()
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


def _coap(s: Section) -> CoapConfig:
    s.host("host")
    s.integer("port", 0, 65535)
    s.integer("max_in_flight", 1)
    s.integer("max_in_flight_per_device", 1)
    s.integer("receive_buffer_bytes", 1)
    s.number("request_timeout_s", positive=True)
    s.choice("block_size", BLOCK_SIZES)
    s.number("rate_limit_per_peer", positive=False, unit="requests per second")
    s.integer("rate_limit_burst", 1)
    s.integer("max_request_body_bytes", 1024)
    s.integer("max_block1_bodies_per_peer", 1)
    s.integer("max_block1_bytes_per_peer", 1024)
    s.integer("max_block1_bodies", 1)
    s.integer("max_block1_bytes", 1024)
    s.number("block1_idle_timeout_s", positive=True)
    s.integer("workers", 1, 64)
    present, value = s._get("secure_port", nullable=True)
    if present and value is not None:
        s.integer("secure_port", 0, 65535)
    elif present:
        s.values["secure_port"] = None
    config = s.build()
    if config.secure_port is not None and config.secure_port == config.port != 0:
        s.fail("secure_port", f"must differ from coap.port ({config.port})")
    for key, smaller, why in (
        ("max_block1_bytes_per_peer", "max_request_body_bytes", ": else a body of the largest size never finishes"),
        ("max_block1_bodies", "max_block1_bodies_per_peer", ""),
        ("max_block1_bytes", "max_block1_bytes_per_peer", ""),
    ):
        if getattr(config, key) < getattr(config, smaller):
            s.fail(key, f"must be >= coap.{smaller} ({getattr(config, smaller)}), got {getattr(config, key)}{why}")
    if config.max_in_flight_per_device > config.max_in_flight:
        s.fail(
            "max_in_flight_per_device",
            f"must be <= coap.max_in_flight ({config.max_in_flight}), "
            f"got {config.max_in_flight_per_device}",
        )
    return config


def _registration(s: Section) -> RegistrationConfig:
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


def _queue(s: Section) -> QueueConfig:
    s.integer("max_pending_per_device", 1)
    s.number("default_expiry_s", positive=True)
    s.number("awake_window_s", positive=True)
    return s.build()


def _cluster(s: Section) -> ClusterConfig:
    bus = s.raw.get("bus")
    if bus is not None:
        if not isinstance(bus, str) or not re.match(r"(nats|tls)://[^\s/]+(:\d+)?/?$", bus):
            s.fail("bus", f"must be a NATS URL such as nats://127.0.0.1:4222, got {describe(bus)}")
        s.values["bus"] = bus
    if s.raw.get("advertise") is not None:
        s.host("advertise")
    for key in ("name", "node"):
        value = s.raw.get(key)
        if value is not None:
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
                s.fail(key, f"must be 1 to 64 letters, digits, '_' or '-' (a NATS subject token), got {describe(value)}")
            s.values[key] = value
    return s.build()


def _token(text: str) -> str:
    """``text`` as a NATS subject token (a host name may hold dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:64] or "node"


def _store(s: Section) -> StoreConfig:
    s.choice("kind", STORE_KINDS)
    s.path("path")
    url = s.raw.get("url")  # null: the default, no URL
    if url is not None:
        example = "postgresql://user@host:5432/dbname"
        if not isinstance(url, str):
            s.fail("url", f"must be a postgresql:// URL ({example}), got {describe(url)}")
        if not re.match(r"postgres(ql)?://", url):
            s.fail("url", f"must be a postgresql:// URL ({example}), got {describe(redacted_url(url))}")
        if "\0" in url:
            s.fail("url", "must not contain a NUL character")
        s.values["url"] = url
    config = s.build()
    if config.kind == "postgresql" and config.url is None:
        s.fail("url", "must be set when store.kind is postgresql (postgresql://user@host:5432/dbname)")
    if config.kind != "postgresql" and config.url is not None:
        s.fail("url", f"is for store.kind postgresql; kind {config.kind} keeps its data in store.path")
    return config


def redacted_url(url: str) -> str:
    """``url`` with the password (``user:password@`` or ``password=``) shown as ***."""
    url = re.sub(r"^([a-z]+://[^:@/]*:)[^@/]*@", rf"\g<1>{REDACTED}@", url)
    return re.sub(r"([?&]password=)[^&]*", rf"\g<1>{REDACTED}", url)


def _objects(s: Section) -> ObjectsConfig:
    s.folders("ddf_folders")
    return s.build()


def _api(s: Section) -> ApiConfig:
    s.host("host")
    s.integer("port", 0, 65535)
    s.boolean("allow_remote")
    s.token("token")
    s.path("token_file")
    s.choice("metrics", METRICS_ACCESS, lower=True)
    config = s.build()
    if config.token is not None and "token_file" in s.raw:
        s.fail(None, "set either token or token_file, not both")
    if not config.allow_remote and not is_loopback(config.host):
        s.fail(
            "host",
            f"{config.host!r} is not a loopback address; the API controls every device, "
            "so listening beyond this machine needs 'api.allow_remote: true' "
            "(and a TLS-terminating proxy in front)",
        )
    return config


def _security(s: Section) -> SecurityConfig:
    s.choice("mode", SECURITY_MODES, lower=True)
    s.path("credentials_path")
    s.integer("max_sessions", 1)
    s.number("session_idle_timeout_s", positive=True)
    s.optional_path("dtls_session_file")  # null: the daemon's default
    return s.build()


def _bootstrap(s: Section) -> BootstrapConfig:
    s.boolean("enabled")
    present, value = s._get("server_uri")
    if present:
        if not isinstance(value, str) or (value and not re.fullmatch(r"coaps?://\S+", value)):
            s.fail("server_uri", f"must be \"\" or a coap:// or coaps:// URI, got {describe(value)}")
        s.values["server_uri"] = value
    s.integer("short_server_id", 1, 65534)
    s.integer("lifetime_s", 1, MAX_LIFETIME)
    present, value = s._get("binding")
    if present:
        # LwM2M 1.0 puts Q after the transport it applies to (UQ, SQ, UQS); 1.1 adds M, H, T, N
        if not isinstance(value, str) or not re.fullmatch(r"[UMHTSN][UMHTSNQ]{0,6}", value) \
                or len(set(value)) != len(value):
            s.fail("binding", f"must be an LwM2M binding such as U, UQ or N, got {describe(value)}")
        s.values["binding"] = value
    s.integer("port", 0, 65535)
    s.integer("secure_port", 0, 65535)
    return s.build()


def _deployment(s: Section) -> DeploymentConfig:
    s.path("data_dir")
    s.path("signing_key")
    s.number("poll_interval_s", positive=True)
    s.number("phase_timeout_s", positive=True)
    s.number("leader_lease_s", positive=True)
    s.integer("public_port", 0, 65535)
    s.integer("public_secure_port", 0, 65535)
    s.patterns("suit_device_classes")
    for key in ("vendor_domain", "public_host"):
        present, value = s._get(key)
        if present:
            if not isinstance(value, str) or (key == "vendor_domain" and not value.strip()):
                s.fail(key, f"must be a{' non-empty' if key == 'vendor_domain' else ''} string, got {describe(value)}")
            s.values[key] = value.strip()
    present, value = s._get("rollouts", nullable=True)
    if present and value is not None:
        if not isinstance(value, list):
            s.fail("rollouts", f"must be a list of rollouts, got {describe(value)}")
        s.values["rollouts"] = tuple(_declared_rollout(s, f"rollouts[{i}]", item) for i, item in enumerate(value))
    return s.build()


def _declared_rollout(s: Section, key: str, item: Any) -> DeclaredRollout:
    from .ota.rollouts import RolloutError, Selector, Strategy

    if not isinstance(item, Mapping):
        s.fail(key, f"must be a mapping with id, model, selector, strategy; got {describe(item)}")
    check_keys(s.source, f"deployment.{key}.", item, ["id", "model", "selector", "strategy"], "key")
    model = item.get("model")
    if not isinstance(model, Mapping) or not all(isinstance(model.get(k), str) for k in ("file", "name", "version")):
        s.fail(f"{key}.model", "must be a mapping with file, name and version strings")
    rollout_id = item.get("id")
    if not isinstance(rollout_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rollout_id):
        s.fail(f"{key}.id", f"must be 1..64 letters, digits, '.', '_' or '-', got {describe(rollout_id)}")
    selector, strategy = item.get("selector") or {}, item.get("strategy") or {}
    try:
        Selector(**{k: tuple(v) if isinstance(v, list) else v for k, v in selector.items()})
    except TypeError as error:
        s.fail(f"{key}.selector", f"valid keys are device_classes, endpoints, labels ({error})")
    try:
        Strategy(**strategy)
    except TypeError as error:
        s.fail(f"{key}.strategy", f"valid keys are max_in_flight, canary_fraction, failure_threshold, "
                                  f"max_attempts, retry_backoff_s, mode, version_check, follow, plugin ({error})")
    except RolloutError as error:
        s.fail(f"{key}.strategy", str(error))
    return DeclaredRollout(rollout_id, Path(model["file"]), model["name"], model["version"],
                           dict(selector), dict(strategy))


def _logging(s: Section) -> LoggingConfig:
    s.choice("level", LOG_LEVELS, lower=True)
    s.choice("format", LOG_FORMATS, lower=True)
    return s.build()
