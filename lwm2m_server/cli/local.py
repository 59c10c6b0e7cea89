"""The ``tinymlaas`` commands that work without the daemon's API: ``serve``,
``config show``, ``objects`` and ``keys``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ipso_objects import ObjectRegistry

from .common import DEFAULT_CONFIG, CliError


def cmd_keys(args: argparse.Namespace) -> int:
    from ..config import ConfigError, ServerConfig, load_config
    from ..suit import KeyFileError, SuitError, describe_key, generate_key_files

    path = args.path
    if path is None:
        config_path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
        try:
            config = load_config(config_path) if config_path else ServerConfig()
        except ConfigError as error:
            raise CliError(str(error)) from None
        path = str(config.deployment.signing_key)
    try:
        if args.keys_command == "generate":
            files = generate_key_files(Path(path), args.alg, overwrite=args.force)
            print(f"wrote {files.private_path} (private, mode 0600) and {files.public_path}")
        print(describe_key(Path(path)))
    except (KeyFileError, SuitError) as error:
        raise CliError(error.reason) from None
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..daemon import serve

    return serve(args.config or DEFAULT_CONFIG)


def cmd_config_show(args: argparse.Namespace) -> int:
    from ..config import ConfigError, config_to_dict, load_config

    try:
        config = load_config(args.config or DEFAULT_CONFIG)
    except ConfigError as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
    return 0


def cmd_objects(args: argparse.Namespace) -> int:
    registry = ObjectRegistry.default(args.ddf_dir)
    if args.object_id is None:
        for definition in registry:
            print(f"{definition.id:>6}  {definition.version:<4} {definition.name}")
        return 0
    definition = registry.get(args.object_id)
    if definition is None:
        raise CliError(f"object {args.object_id} is not defined")
    kind = "multiple" if definition.multiple else "single"
    print(f"/{definition.id} {definition.name} v{definition.version} ({kind}) {definition.urn}")
    for resource in definition.resources.values():
        flags = ("M" if resource.multiple else "S") + ("!" if resource.mandatory else " ")
        print(
            f"  {resource.id:>5} {resource.operations.value or '-':<2} {flags} "
            f"{resource.type.value:<16} {resource.name}"
            + (f" [{resource.units}]" if resource.units else "")
        )
    return 0
