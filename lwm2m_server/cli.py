"""``tinymlaas``: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from ipso_objects import IpsoError, ObjectRegistry


def _objects(args: argparse.Namespace) -> int:
    registry = ObjectRegistry.default(args.ddf_dir)
    if args.object_id is None:
        for definition in registry:
            print(f"{definition.id:>6}  {definition.version:<4} {definition.name}")
        return 0
    definition = registry.get(args.object_id)
    if definition is None:
        print(f"object {args.object_id} is not defined", file=sys.stderr)
        return 1
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinymlaas", description=__doc__)
    parser.add_argument("--version", action="version", version=version("tinymlaas"))
    commands = parser.add_subparsers(dest="command", required=True)
    objects = commands.add_parser("objects", help="list known LwM2M objects, or one object's resources")
    objects.add_argument("object_id", nargs="?", type=int, help="show this object's resources")
    objects.add_argument(
        "--ddf-dir", action="append", default=[], metavar="DIR",
        help="also load the DDF XML files of DIR (repeatable)",
    )
    objects.set_defaults(handler=_objects)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except IpsoError as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
