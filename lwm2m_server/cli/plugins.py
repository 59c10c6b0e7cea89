"""``tinymlaas plugins``: the compiler plugins installed in this Python environment, and
``tinymlaas plugins check NAME``, the conformance kit on one of them.

Local commands: they load the plugins the way the daemon does (entry points of
the group ``tinymlaas.compilers``), in the Python environment the command runs
in, so run them in the daemon's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..compilers import CompilerPlugin, discover_plugins


def _installed() -> list[CompilerPlugin]:
    from ..logging_setup import configure_logging

    configure_logging("warning", "auto")  # a plugin that fails to load is a warning on stderr, not output
    return discover_plugins()


def plugin_row(plugin: CompilerPlugin) -> dict[str, Any]:
    """What ``tinymlaas plugins --json`` prints for one plugin."""
    return {"name": plugin.name, "version": plugin.version, "accepts": sorted(plugin.accepts),
            "targets": sorted(plugin.targets), "output_format": plugin.output_format,
            "lossy": bool(plugin.lossy), "priority": int(plugin.priority)}


def cmd_plugins(args: argparse.Namespace) -> int:
    rows = [plugin_row(p) for p in _installed()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "VERSION", "ACCEPTS", "TARGETS", "OUTPUT", "LOSSY")]
    table += [(r["name"], r["version"], ",".join(r["accepts"]), ",".join(r["targets"]), r["output_format"],
               "yes" if r["lossy"] else "no") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(rows)} plugin(s)")
    return 0


def cmd_plugins_check(args: argparse.Namespace) -> int:
    from ..compilers.conformance import check_plugin

    plugins = {p.name: p for p in _installed()}
    plugin = plugins.get(args.name)
    if plugin is None:
        print(f"tinymlaas: no compiler plugin named {args.name!r} is installed "
              f"(installed: {', '.join(sorted(plugins)) or 'none'})", file=sys.stderr)
        return 2
    print(f"checking {plugin.name} {plugin.version}", flush=True)
    findings = check_plugin(plugin)
    for finding in findings:
        print(f"{'PASS' if finding.passed else 'FAIL'}  {finding.check}: {finding.message}")
    failed = sum(not f.passed for f in findings)
    print(f"{plugin.name}: {len(findings) - failed} of {len(findings)} checks passed"
          + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def add_plugins_commands(commands: Any) -> None:
    """Add ``plugins`` and ``plugins check`` to the ``tinymlaas`` subcommands ``commands``."""
    text = "list the compiler plugins installed in this Python environment, or check one"
    plugins = commands.add_parser("plugins", help=text, description=(
        "without COMMAND, list the compiler plugins installed in this Python environment (run it in the "
        "daemon's): name, version, accepted formats, target runtimes, output format, lossy"))
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(handler=cmd_plugins)
    sub = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND")
    check_text = "run the conformance kit on a plugin: exit 1 when a check fails, 2 when it is not installed"
    check = sub.add_parser("check", help=check_text, description=check_text)
    check.add_argument("name", metavar="NAME", help="plugin name, as `tinymlaas plugins` lists it")
    check.set_defaults(handler=cmd_plugins_check)
