"""tinymlaas-sim: run simulated LwM2M devices against an LwM2M server.

    tinymlaas-sim fleet --config config/fleet.yaml --server coap://127.0.0.1:5683 [--count N] [--duration S]
    tinymlaas-sim device --profile cortex-m4f --endpoint ep1 --server coap://127.0.0.1:5683
    tinymlaas-sim profiles [--config FILE]
    tinymlaas-sim credentials --config config/fleet.yaml [--count N] [--scope bootstrap|server] [--out FILE]

Client-initiated bootstrap: --bootstrap coap://host:5683 makes devices start
with only a Bootstrap-Server account; they send Bootstrap-Request, take the
LwM2M server URI, credentials and trust anchors the Bootstrap-Server writes, and
register there (--server is then ignored). device also takes
--bootstrap-psk IDENTITY:HEXKEY for a coaps:// Bootstrap-Server.

Per-device PSKs for a fleet: credentials writes a key file (CSV endpoint,
identity,key,scope, mode 0600) for the endpoints fleet makes from the same
--config/--count, the simulation's stand-in for a factory's key file (the operator
loads it with tinymlaas credentials import). fleet --credentials FILE gives
each device its row: the bootstrap-scope one with a coaps:// --bootstrap, the
server-scope one with a coaps:// --server.

Devices accept inference modules and firmware signed by a trust anchor:
--trust-anchor PEM (repeatable), added to the config's trust_anchors. The
daemon's is the .pub.pem beside its deployment.signing_key, by default
data/keys/signing-es256.pub.pem (the daemon creates it at its first start; tinymlaas
keys show prints it). Without one every package is refused (Update Result 53).

Exit codes: 0 ok, 1 some device could not register, 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TextIO

import structlog

from ipso_objects import ObjectRegistry
from lwm2m_server.security.keyfile import format_key_file, secret_argument
from lwm2m_server.suit import KeyFileError, PublicKey

from .updates import load_anchors

from .bootstrap import parse_psk
from .client import RegistrationFailed, SimulatedDevice
from .fleet import PSK, Fleet, FleetProgress, generate_keys, parse_key_file, psks_for
from .profiles import (ConfigError, DeviceProfile, FleetConfig, builtin_profiles, get_profile, load_config,
                       parse_config)

DEFAULT_SERVER = "coap://127.0.0.1:5683"


class ProgressLine:
    """A live ``registered x/N, failures f`` counter on a terminal; plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._last = ""

    def __call__(self, progress: FleetProgress) -> None:
        text = f"registered {progress.registered}/{progress.total}, failures {progress.failed}"
        if progress.deregistered:
            text += f", deregistered {progress.deregistered}"
        if text == self._last:
            return
        self._last = text
        if self.live:
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
        elif progress.registered + progress.failed in (0, progress.total):
            self.stream.write(text + "\n")

    def finish(self) -> None:
        if self.live and self._last:
            self.stream.write("\n")
            self.stream.flush()


def _configure_logging(verbosity: int) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    logging.getLogger("tinymlaas-sim.coap").setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)


def _server(args: argparse.Namespace, config: FleetConfig | None) -> str:
    """The LwM2M server URI: coap://, or coaps:// for a fleet given ``--credentials``."""
    uri = args.server or (config.server if config else None) or DEFAULT_SERVER
    if uri.startswith("coaps://"):
        if getattr(args, "credentials", None) is not None or getattr(args, "psk", None) is not None:
            return uri
        if args.command == "fleet":
            raise ConfigError("--server", f"{uri!r} is coaps://: each device needs its server PSK, "
                                          "so pass --credentials FILE (`tinymlaas-sim credentials --scope server` "
                                          "writes one)")
        raise ConfigError("--server", f"{uri!r} is coaps://: give the device its PSK with --psk IDENTITY:HEXKEY "
                                      "(or bootstrap it: --bootstrap coaps://... --bootstrap-psk ...)")
    if not uri.startswith("coap://"):
        raise ConfigError("--server", f"must be a coap:// URI, got {uri!r}")
    return uri


def _bootstrap(args: argparse.Namespace) -> tuple[str | None, tuple[bytes, bytes] | None]:
    """``--bootstrap`` URI and the ``--bootstrap-psk`` credential (None when not given)."""
    uri, psk_text = args.bootstrap, getattr(args, "bootstrap_psk", None)
    if uri is not None and not uri.startswith(("coap://", "coaps://")):
        raise ConfigError("--bootstrap", f"must be a coap:// or coaps:// URI, got {uri!r}")
    if psk_text is None:
        return uri, None
    if uri is None:
        raise ConfigError("--bootstrap-psk", "needs --bootstrap")
    return uri, _psk("--bootstrap-psk", psk_text)


def _psk(option: str, text: str) -> tuple[bytes, bytes]:
    """``IDENTITY:HEXKEY``; the key may be ``-`` (a line of standard input) or
    ``@FILE`` (the file's first line), to keep it out of ``ps``."""
    identity, marker, source = text.rpartition(":-") if text.endswith(":-") else text.partition(":@")
    try:
        if marker:
            text = f"{identity}:{secret_argument('-' if marker == ':-' else '@' + source)}"
        return parse_psk(text)
    except (OSError, ValueError) as error:
        raise ConfigError(option, str(error)) from None


def _raise_file_limit(devices: int) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = devices + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


async def _until_stopped() -> asyncio.Event:
    """An event set by Ctrl-C / SIGTERM (the caller also bounds the wait by ``duration``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(number, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on POSIX
            pass
    return stop


def _anchors(args: argparse.Namespace, config: FleetConfig | None) -> tuple[PublicKey, ...]:
    """The config's trust anchors plus ``--trust-anchor`` files, loaded once."""
    paths = [*(config.trust_anchors if config else ()), *(args.trust_anchor or ())]
    try:
        return load_anchors(paths)
    except KeyFileError as error:
        raise ConfigError("trust_anchors", error.reason) from None


def _fleet_devices(args: argparse.Namespace, config: FleetConfig) -> list[tuple[str, DeviceProfile]]:
    """The ``(endpoint, profile)`` list ``fleet`` (and ``credentials``) make from --config/--count."""
    if not config.fleet:
        raise ConfigError("fleet", "is empty: list at least one {profile, count, endpoint_prefix}")
    if args.count is not None and args.count < 1:
        raise ConfigError("--count", f"must be > 0, got {args.count}")
    return config.endpoints(args.count)


def _fleet_psks(args: argparse.Namespace, server: str, bootstrap_uri: str | None,
                endpoints: list[str]) -> tuple[dict[str, PSK] | None, dict[str, PSK] | None]:
    """Server PSKs and bootstrap PSKs per endpoint from ``--credentials`` (None when
    not used); every device must have its row before any starts."""
    secure_bootstrap = bootstrap_uri is not None and bootstrap_uri.startswith("coaps://")
    if args.credentials is None:
        if secure_bootstrap:
            raise ConfigError("--bootstrap", f"{bootstrap_uri!r} is coaps://: each device needs its bootstrap "
                                             "PSK, so pass --credentials FILE (`tinymlaas-sim credentials` "
                                             "writes one)")
        return None, None
    target = ("--bootstrap", bootstrap_uri) if bootstrap_uri is not None else ("--server", server)
    if not target[1].startswith("coaps://"):
        raise ConfigError("--credentials", f"PSKs are for coaps://, and {target[0]} is {target[1]!r}")
    try:
        text = Path(args.credentials).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ConfigError(args.credentials, f"cannot read: {reason}") from None
    keys = parse_key_file(text, args.credentials)
    if secure_bootstrap:
        return None, psks_for(keys, endpoints, "bootstrap", args.credentials)
    return psks_for(keys, endpoints, "server", args.credentials), None


def _fleet(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    devices = _fleet_devices(args, config)
    server = _server(args, config)
    concurrency = args.concurrency or config.concurrency
    anchors = _anchors(args, config)
    bootstrap_uri, _ = _bootstrap(args)
    psks, bootstrap_psks = _fleet_psks(args, server, bootstrap_uri, [endpoint for endpoint, _ in devices])
    _raise_file_limit(len(devices))
    progress_line = ProgressLine(sys.stderr)

    async def main() -> FleetProgress:
        stop = await _until_stopped()
        fleet = Fleet(devices, server, ObjectRegistry.default(), concurrency=concurrency,
                      request_timeout=args.timeout, on_progress=progress_line, trust_anchors=anchors,
                      bootstrap_uri=bootstrap_uri, psks=psks, bootstrap_psks=bootstrap_psks)
        return await fleet.run(args.duration, stop)

    try:
        progress = asyncio.run(main())
    finally:
        progress_line.finish()
    for endpoint, reason in progress.failures[:5]:
        print(f"tinymlaas-sim: {endpoint}: {reason}", file=sys.stderr)
    if len(progress.failures) > 5:
        print(f"tinymlaas-sim: … and {len(progress.failures) - 5} more failures", file=sys.stderr)
    return 1 if progress.failed else 0


def _device(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else parse_config({})
    profile = get_profile(args.profile, config.profiles)
    server = _server(args, config if args.config else None)
    anchors = _anchors(args, config if args.config else None)
    bootstrap_uri, bootstrap_psk = _bootstrap(args)
    psk = None
    if args.psk is not None:
        if not server.startswith("coaps://"):
            raise ConfigError("--psk", f"a PSK is for a coaps:// --server, and it is {server!r}")
        psk = _psk("--psk", args.psk)

    async def main() -> int:
        stop = await _until_stopped()
        device = SimulatedDevice(args.endpoint, profile, server, ObjectRegistry.default(),
                                 port=args.port, request_timeout=args.timeout, trust_anchors=anchors,
                                 bootstrap_uri=bootstrap_uri, bootstrap_psk=bootstrap_psk, psk=psk)
        try:
            await device.start()
        except RegistrationFailed as error:
            print(f"tinymlaas-sim: {args.endpoint}: {error}", file=sys.stderr)
            return 1
        host, port = device.address
        print(f"{args.endpoint} registered at {'/' + '/'.join(device.location or ())} "
              f"from {host}:{port} ({profile.name}, LwM2M {profile.lwm2m_version})", file=sys.stderr)
        try:
            async with asyncio.timeout(args.duration):
                await stop.wait()
        except TimeoutError:
            pass
        finally:
            await device.stop()
        return 0

    return asyncio.run(main())


def _credentials(args: argparse.Namespace) -> int:
    """Write a key file for the fleet's endpoints (stdout, or ``--out`` created 0600)."""
    devices = _fleet_devices(args, load_config(args.config))
    keys = generate_keys([endpoint for endpoint, _ in devices], args.scope)
    text = format_key_file(keys)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("--out", f"{args.out} exists; its keys may be in use, so remove it yourself "
                                   "or choose another file") from None
    except OSError as error:
        raise ConfigError("--out", f"cannot create {args.out}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            out.write(text)
    except OSError as error:  # e.g. a full disk: leave no half a key file behind
        os.unlink(args.out)
        raise ConfigError("--out", f"cannot write {args.out}: {error.strerror}") from None
    print(f"wrote {len(keys)} {args.scope} PSK(s) to {args.out} (mode 0600)", file=sys.stderr)
    return 0


def format_bytes(size: int) -> str:
    """``16384 bytes (16 KB)``: a size with its unit (the server's CLI prints them alike)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size} bytes ({size / scale:.3g} {unit})"
    return f"{size} bytes"


def _profiles(args: argparse.Namespace) -> int:
    profiles = load_config(args.config).profiles if args.config else builtin_profiles()
    for name, profile in sorted(profiles.items()):
        tinyml = profile.tinyml
        print(f"{name:<16} LwM2M {profile.lwm2m_version} b={profile.binding}{'Q' if profile.queue_mode else ''} "
              f"lt={profile.lifetime}  {tinyml.runtime} {tinyml.runtime_version} on {tinyml.cpu_core} "
              f"@ {tinyml.cpu_clock / 1e6:g} MHz, arena {format_bytes(tinyml.arena_budget)}, "
              f"{len(tinyml.operators)} ops, sensors: {', '.join(profile.sensors) or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinymlaas-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version("tinymlaas"))
    commands = parser.add_subparsers(dest="command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument("--server", help=f"LwM2M server URI (default: config's server or {DEFAULT_SERVER})")
        command.add_argument("--duration", type=float, metavar="S", help="run S seconds, then de-register")
        command.add_argument("--timeout", type=float, default=30.0, metavar="S",
                             help="seconds to wait for a Register/Update answer (default 30)")
        command.add_argument("--trust-anchor", action="append", metavar="PEM",
                             help="public key (PEM) whose signed packages devices accept, e.g. the daemon's "
                                  "data/keys/signing-es256.pub.pem (repeatable; default: the config's trust_anchors)")
        command.add_argument("--bootstrap", metavar="URI",
                             help="bootstrap first from this Bootstrap-Server (coap:// or coaps://)")
        command.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")

    fleet = commands.add_parser("fleet", help="start a fleet of devices from a config file")
    fleet.add_argument("--config", required=True, help="YAML file with profiles and a fleet section")
    fleet.add_argument("--count", type=int, metavar="N", help="start N devices, spread over the fleet groups")
    fleet.add_argument("--concurrency", type=int, metavar="C", help="registrations in flight (default: config, 50)")
    fleet.add_argument("--credentials", metavar="FILE",
                       help="key file (CSV endpoint,identity,key,scope) with each device's PSK for a coaps:// "
                            "--bootstrap (bootstrap rows) or --server (server rows)")
    common(fleet)
    fleet.set_defaults(handler=_fleet)

    device = commands.add_parser("device", help="run one device")
    device.add_argument("--profile", required=True, help="hardware class, e.g. cortex-m4f")
    device.add_argument("--endpoint", required=True, help="endpoint client name")
    device.add_argument("--config", help="YAML file whose profiles add to the built-in ones")
    device.add_argument("--port", type=int, default=0, help="local UDP port (default: ephemeral)")
    device.add_argument("--bootstrap-psk", metavar="IDENTITY:HEXKEY",
                        help="bootstrap credential for a coaps:// --bootstrap URI (key as -: stdin, @FILE: a file)")
    device.add_argument("--psk", metavar="IDENTITY:HEXKEY",
                        help="server credential for a coaps:// --server URI (key as -: stdin, @FILE: a file)")
    common(device)
    device.set_defaults(handler=_device)

    keys = commands.add_parser(
        "credentials", help="write a key file of fresh PSKs for the devices `fleet` would start",
        description="write a CSV key file (endpoint,identity,key,scope) with a fresh random 16-byte PSK for "
                    "each device `fleet` makes from the same --config and --count; identities are "
                    "<endpoint>-bs (bootstrap scope) or <endpoint> (server scope)")
    keys.add_argument("--config", required=True, help="YAML file with profiles and a fleet section")
    keys.add_argument("--count", type=int, metavar="N", help="as `fleet --count N`")
    keys.add_argument("--scope", choices=["bootstrap", "server"], default="bootstrap",
                      help="bootstrap PSKs (for --bootstrap coaps://, the default) or server PSKs")
    keys.add_argument("--out", metavar="FILE", help="create FILE with mode 0600 (default: standard output)")
    keys.set_defaults(handler=_credentials, verbose=0)

    profiles = commands.add_parser("profiles", help="list the hardware classes")
    profiles.add_argument("--config", help="YAML file whose profiles add to the built-in ones")
    profiles.set_defaults(handler=_profiles, verbose=0)
    return parser


def main(argv: list[str] | None = None, *, configure_logging: bool = True) -> int:
    """Run the command line; ``configure_logging=False`` leaves structlog's global
    configuration alone (for callers embedding the simulator, and tests)."""
    args = build_parser().parse_args(argv)
    if configure_logging:
        _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"tinymlaas-sim: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
