"""``tinymlaas credentials``: the security store's commands (add, list, remove, import).

They work on the store file itself (``security.credentials_path``), so with or
without a running daemon; a key is shown only once, by ``add --generate``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import DEFAULT_CONFIG, CliError


def cmd_credentials(args: argparse.Namespace) -> int:
    """Works on the security store file itself, so with or without a running daemon."""
    from ..config import ConfigError, ServerConfig, load_config
    from ..security.credentials import CredentialConflict, CredentialStorageError, CredentialStore
    from ..security.psk import CredentialError, PskCredential, generate_key, parse_key
    from ..security.oscore import DEFAULT_AEAD
    from ..logging_setup import configure_logging

    configure_logging("warning", "auto")  # the store's warnings to stderr, never into the output

    config_path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    try:
        config = load_config(config_path) if config_path else ServerConfig()
    except ConfigError as error:
        raise CliError(str(error)) from None
    try:
        if args.credentials_command == "add":
            _check_credential_options(args)
        rows = _read_key_file(args.file) if args.credentials_command == "import" else []
        with CredentialStore(config.security.credentials_path) as store:
            if args.credentials_command == "import":
                _import(args.file, rows, store, replace=args.replace)
            elif args.credentials_command == "add" and args.oscore:
                _add_oscore(args, store, DEFAULT_AEAD)
            elif args.credentials_command == "add":
                scope = "bootstrap" if args.bootstrap else "server"
                key = generate_key() if args.generate else parse_key(_secret(args.key, "--key"))
                credential = PskCredential(args.endpoint, args.identity or args.endpoint, key, scope)
                replaced = store.add(credential, replace=args.replace, now=time.time())
                print(f"{'replaced' if replaced else 'added'} the {scope} credential of {credential.endpoint} "
                      f"(identity {credential.identity})")
                if args.generate:  # the one place a key is shown: the device needs it
                    print(f"key {key.hex()}  (shown once: provision it into the device)")
            elif args.credentials_command == "remove":
                removed = store.remove(args.endpoint, args.scope, args.mechanism)
                if not removed:
                    which = " ".join(filter(None, (args.scope, args.mechanism and args.mechanism.upper())))
                    which = f"{which} credential" if which else "credentials"
                    raise CliError(f"endpoint {args.endpoint} has no {which}")
                print(f"removed {removed} credential(s) of {args.endpoint}")
            else:
                credentials = store.list()
                if args.json:
                    print(json.dumps([c.public() for c in credentials], indent=2))
                    return 0
                rows = [("ENDPOINT", "SCOPE", "IDENTITY", "CREATED")] + [
                    (c.endpoint, c.scope, c.identity,
                     time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(c.created)))
                    for c in credentials
                ]
                widths = [max(len(row[i]) for row in rows) for i in range(4)]
                for row in rows:
                    print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
                print(f"{len(credentials)} credential(s)")
    except CredentialConflict as error:
        hint = " (choose another with --identity)" if error.field == "identity" else " (--replace to overwrite)"
        raise CliError(error.reason + hint) from None
    except CredentialStorageError as error:
        raise CliError(error.reason) from None
    except CredentialError as error:  # invalid input
        print(f"tinymlaas: {error.reason}", file=sys.stderr)
        return 2
    return 0


def _check_credential_options(args: argparse.Namespace) -> None:
    """``--oscore`` takes --sender-id, --recipient-id and --secret or --generate; a PSK
    takes --key or --generate. A wrong combination is a usage error (exit 2, as
    argparse's own); it names the options, never a value."""
    def usage(message: str) -> None:
        print(f"tinymlaas credentials add: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    if args.oscore:
        wrong = [name for name, given in (("--key", args.key), ("--identity", args.identity),
                                          ("--bootstrap", args.bootstrap)) if given]
        if wrong:
            usage(f"{', '.join(wrong)}: not for an OSCORE credential (use --secret, --sender-id, --recipient-id)")
        missing = [name for name, given in (("--sender-id", args.sender_id), ("--recipient-id", args.recipient_id))
                   if given is None]
        if args.secret is None and not args.generate:
            missing.append("--secret or --generate")
        if missing:
            usage(f"an OSCORE credential needs {', '.join(missing)}")
        return
    wrong = [name for name, given in (("--secret", args.secret), ("--sender-id", args.sender_id),
                                      ("--recipient-id", args.recipient_id), ("--salt", args.salt),
                                      ("--id-context", args.id_context), ("--aead", args.aead)) if given is not None]
    if wrong:
        usage(f"{', '.join(wrong)}: only with --oscore")
    if args.key is None and not args.generate:
        usage("a PSK credential needs --key or --generate")


def _secret(value: str | None, option: str) -> str | None:
    from ..security.keyfile import secret_argument

    if value is None:
        return None
    try:
        return secret_argument(value)
    except OSError as error:
        raise CliError(f"{option}: {error}") from None


def _add_oscore(args: argparse.Namespace, store, default_aead: int) -> None:
    from ..security.credentials import generate_master_secret, oscore_credential
    from ..security.psk import parse_hex

    secret = generate_master_secret() if args.generate else parse_hex(_secret(args.secret, "--secret"), "secret")
    credential = oscore_credential(
        args.endpoint,
        sender_id=parse_hex(args.sender_id, "sender id", allow_empty=True),
        recipient_id=parse_hex(args.recipient_id, "recipient id", allow_empty=True),
        master_secret=secret,
        master_salt=parse_hex(args.salt, "salt", allow_empty=True) if args.salt is not None else b"",
        id_context=parse_hex(args.id_context, "id context", allow_empty=True) if args.id_context is not None else None,
        aead=args.aead if args.aead is not None else default_aead,
    )
    replaced = store.add_oscore(credential, replace=args.replace, now=time.time())
    print(f"{'replaced' if replaced else 'added'} the OSCORE credential of {credential.endpoint} "
          f"(identity {credential.identity}, server sender id {credential.sender_id.hex() or '(empty)'})")
    if args.generate:  # the one place a secret is shown: the device needs it
        print(f"master secret {secret.hex()}  (shown once: provision it into the device's /21 instance)")


def _read_key_file(name: str) -> list[tuple[int, Any]]:
    """The PSK credentials of a CSV key file (``-``: stdin) with their line numbers.
    A problem raises CredentialError naming the line and what is wrong, never a key."""
    from ..security.keyfile import KeyFileError, parse_key_file
    from ..security.psk import CredentialError

    where = "stdin" if name == "-" else name

    def bad(line: int, problem: str) -> CredentialError:
        return CredentialError(f"{where} line {line}: {problem}; nothing imported")

    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_bytes().decode("utf-8")
    except OSError as error:
        raise CliError(f"cannot read {name}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise bad((error.object[:error.start].count(b"\n") + 1), "not UTF-8 text") from None
    try:
        rows = parse_key_file(text)
    except KeyFileError as error:
        raise bad(error.line, error.problem) from None
    if not rows:
        raise bad(max(1, text.count("\n")), "no credentials after the header")
    return rows


def _import(name: str, rows: list[tuple[int, Any]], store, *, replace: bool) -> None:
    """Store every row in one transaction: all, or on a conflict none (exit 1)."""
    from ..security.credentials import CredentialConflict

    where = "stdin" if name == "-" else name
    try:
        replaced = store.add_many([credential for _, credential in rows], replace=replace, now=time.time())
    except CredentialConflict as error:
        reason = error.reason.replace("(replace it explicitly)", "(--replace to overwrite)")
        line = rows[error.index][0] if error.index is not None else "?"
        raise CliError(f"{where} line {line}: {reason}; nothing imported") from None
    print(f"imported {len(rows)} credential(s) from {where}: {replaced.count(False)} added, "
          f"{replaced.count(True)} replaced")


def add_credentials_commands(commands, common: argparse.ArgumentParser) -> None:
    """The ``credentials`` command group of the ``tinymlaas`` parser."""
    credentials = commands.add_parser("credentials", help="manage device credentials (DTLS PSK, OSCORE)")
    credentials_commands = credentials.add_subparsers(dest="credentials_command", required=True)
    add = credentials_commands.add_parser(
        "add", parents=[common], help="store an endpoint's pre-shared key or OSCORE context",
        description="store an endpoint's pre-shared key, or with --oscore its OSCORE context "
                    "(in security.credentials_path)")
    add.add_argument("endpoint", help="device endpoint name")
    add.add_argument("--identity", help="PSK identity, 1..32 bytes (default: the endpoint name)")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--key", metavar="HEX",
                        help="the key in hex, 1..16 bytes; - reads it from stdin, @FILE from a file "
                             "(one of --key, --secret, --generate is required)")
    secret.add_argument("--secret", metavar="HEX",
                        help="OSCORE Master Secret in hex, 16..64 bytes; - reads it from stdin, @FILE from a file "
                             "(required with --oscore, or --generate)")
    secret.add_argument("--generate", action="store_true",
                        help="make a random 16-byte key (or Master Secret) and print it once")
    add.add_argument("--oscore", action="store_true", help="an OSCORE (RFC 8613) context instead of a PSK")
    add.add_argument("--sender-id", metavar="HEX",
                     help="OSCORE: the server's Sender ID (the device's Recipient ID, /21/x/2); '' for empty (required with --oscore)")
    add.add_argument("--recipient-id", metavar="HEX",
                     help="OSCORE: the server's Recipient ID (the device's Sender ID, /21/x/1); '' for empty (required with --oscore)")
    add.add_argument("--salt", metavar="HEX", help="OSCORE Master Salt (default: empty)")
    add.add_argument("--id-context", metavar="HEX", help="OSCORE ID Context (default: none)")
    add.add_argument("--aead", type=int, metavar="COSE_ALG",
                     help="OSCORE AEAD algorithm (default 10, AES-CCM-16-64-128)")
    add.add_argument("--bootstrap", action="store_true", help="a bootstrap credential (/bs only)")
    add.add_argument("--replace", action="store_true", help="replace the endpoint's credential of that scope")
    listing = credentials_commands.add_parser("list", parents=[common], help="list credentials (never keys)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    remove = credentials_commands.add_parser("remove", parents=[common], help="delete an endpoint's credentials")
    remove.add_argument("endpoint", help="device endpoint name")
    remove.add_argument("--scope", choices=["server", "bootstrap"], help="only this one (default: both)")
    remove.add_argument("--mechanism", choices=["psk", "oscore"], help="only this kind (default: both)")
    load = credentials_commands.add_parser(
        "import", parents=[common], help="store many PSKs from a CSV key file, all or none",
        description="store the PSKs of a CSV key file (header endpoint,identity,key,scope; scope server "
                    "or bootstrap, default server; key in hex) in one transaction: every row or none")
    load.add_argument("file", metavar="FILE", help="the CSV file; - reads it from stdin")
    load.add_argument("--replace", action="store_true",
                      help="replace credentials the endpoints have already (default: refuse, import nothing)")
    for sub in (add, listing, remove, load):
        sub.set_defaults(handler=cmd_credentials)
