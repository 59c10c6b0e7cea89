"""``tinymlaas models show NAME@VERSION`` (every plugin's verdict per device class, ranked)
and ``tinymlaas compile NAME@VERSION --class CLASS`` (a module and its report, without
deploying), through the management API's ``GET /models/{key}`` and ``POST /compile``."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import urllib.parse
from pathlib import Path
from typing import Any

from .client import client
from .common import CliError

_HEADER = ("RANK", "PLUGIN", "PAYLOAD", "ARENA", "ACCELERATOR", "ESTIMATE", "CACHE", "VERDICT")


def latency_text(seconds: float | None) -> str:
    """``4.43 µs``, ``1.25 ms``, ``0.5 s``; ``-`` without an estimate."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} µs"


def estimate_text(row: dict[str, Any]) -> str:
    """The latency estimate, else the cycle estimate (``5210 cycles``), else ``-``."""
    if row["estimated_latency_s"] is None and row["estimated_cycles"] is not None:
        return f"{row['estimated_cycles']} cycles"
    return latency_text(row["estimated_latency_s"])


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value} B"


def _verdict(row: dict[str, Any]) -> str:
    if row["fits"]:
        return f"fits: {row['why']}"
    return "; ".join(row["reasons"]) or "does not fit"


def ranking_lines(rows: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    """The verdicts as a table (fitting plugins by rank, then the others), then each estimate's source."""
    table = [_HEADER]
    for row in rows:
        cache = "-" if row["cache_hit"] is None else ("hit" if row["cache_hit"] else "miss")
        table.append((str(row["rank"] or "-"), row["plugin"], _bytes(row["payload_bytes"]), _bytes(row["arena_bytes"]),
                      (row["accelerator"] or "-") if row["payload_bytes"] is not None else "-",
                      estimate_text(row), cache, _verdict(row)))
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADER) - 1)]
    lines = [indent + "  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1] for line in table]
    lines += [f"{indent}estimate of {row['plugin']}: {row['estimate_source']} (an estimate, not a measurement)"
              for row in rows if row["fits"] and row["estimate_source"]]
    return [line.rstrip() for line in lines]


def _quoted(model: str) -> str:
    return urllib.parse.quote(model, safe="@")


def cmd_models_show(args: argparse.Namespace) -> int:
    _, detail = client(args).call("GET", f"/models/{_quoted(args.model)}")
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    print(f"{detail['name']}@{detail['version']}  {detail['format']}  {detail['size']} B  "
          f"sha256 {detail['digest'][:16]}…")
    if detail["format"] == "firmware":
        print("firmware image: installed as it is through /5; no compiler plugin is involved")
        return 0
    print(f"ranking: {detail['rule']}")
    if not detail["classes"]:
        print("no registered device has a TinyML Capability object yet: no device class to rank plugins for")
    for known in detail["classes"]:
        count = len(known["endpoints"])
        print(f"\nclass {known['device_class']}: {known['chosen'] or 'incompatible'}  "
              f"({count} device{'s' if count != 1 else ''}; figures of {known['endpoint']})")
        for line in ranking_lines(known["plugins"]):
            print(line)
    return 0


def _write_payload(answer: dict[str, Any], out: str) -> int:
    payload = base64.b64decode(answer["payload_base64"])
    expected = answer["module"]["payload"]["sha256"]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CliError(f"the payload received does not match its SHA-256 {expected}; nothing written")
    try:
        Path(out).write_bytes(payload)
    except OSError as error:
        raise CliError(f"cannot write {out}: {error.strerror}") from None
    return len(payload)


def cmd_compile(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model}
    body.update({"device_class": args.device_class} if args.device_class else {"endpoint": args.device})
    if args.plugin:
        body["plugin"] = args.plugin
    status, answer = client(args).call("POST", "/compile", body, accept=(422,))
    written = _write_payload(answer, args.out) if status == 200 and args.out else None
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0 if status == 200 else 1
    print(f"{answer['model']} for class {answer['device_class']} (figures of {answer['endpoint']})")
    if status != 200:
        print(f"incompatible: {answer['error']}")
        for line in ranking_lines(answer["ranking"]):
            print(line)
        return 1
    module = answer["module"]
    how = "the plugin asked" if answer["pinned"] else "ranked first"
    print(f"plugin      {answer['plugin']} ({how}; compile cache {'hit' if answer['cache_hit'] else 'miss'})")
    print(f"payload     {module['payload']['size']} B {module['payload_format']} for {module['runtime']}, "
          f"sha256 {module['payload']['sha256'][:16]}…")
    print(f"needs       arena {module['required_arena_bytes']} B, RAM {module['required_ram_bytes']} B, "
          f"storage {module['storage_bytes']} B, accelerator {module['accelerator'] or 'none'}")
    if module["accelerator_ops"]:
        print(f"operators   on {module['accelerator']}: {', '.join(module['accelerator_ops'])}; "
              f"CPU: {', '.join(module['cpu_ops']) or 'none'}")
    if module["estimate_source"]:
        figures = [latency_text(module["estimated_latency_s"])] if module["estimated_latency_s"] is not None else []
        figures += [f"{module['estimated_cycles']} cycles"] if module["estimated_cycles"] is not None else []
        print(f"estimate    {', '.join(figures)} — {module['estimate_source']} (an estimate, not a measurement)")
    print(f"compiler    {module['compiler']} {module['compiler_version']}")
    print("ranking")
    for line in ranking_lines(answer["ranking"]):
        print(line)
    print("log")
    for line in module["log"]:
        print(f"  {line}")
    print(f"report      {json.dumps(module['report'], sort_keys=True)}")
    if written is not None:
        print(f"wrote {written} B to {args.out}")
    return 0


def add_model_commands(commands: Any, models_commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``models show`` to ``models_commands`` and ``compile`` to the ``tinymlaas`` ``commands``."""
    text = "show a model and, per device class of the registered devices, each compiler plugin's verdict, ranked"
    show = models_commands.add_parser("show", parents=[common], help=text, description=(
        text + ": fits (rank, payload, arena, accelerator, latency estimate) or why not"))
    show.add_argument("model", metavar="NAME@VERSION", help="a registered model")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=cmd_models_show)

    text = "compile a registered model for a device class without deploying it"
    compile_ = commands.add_parser("compile", parents=[common], help=text, description=(
        text + ": the chosen plugin, the ranking, the module's figures, the compiler's log and report "
               "(compiled once per class and plugin, then from the cache)"))
    compile_.add_argument("model", metavar="NAME@VERSION", help="a registered model")
    which = compile_.add_mutually_exclusive_group(required=True)
    which.add_argument("--class", dest="device_class", metavar="CLASS",
                       help="a device class of the registered devices, as `tinymlaas device EP` or `models show` "
                            "print it (this or --device is required)")
    which.add_argument("--device", metavar="EP",
                       help="compile for this device's class, with its figures (this or --class is required)")
    compile_.add_argument("--plugin", metavar="NAME",
                          help="ask only this compiler plugin (default: the one ranked first)")
    compile_.add_argument("--out", metavar="FILE", help="write the payload to FILE (default: not written)")
    compile_.add_argument("--json", action="store_true", help="print JSON (the payload base64 included)")
    compile_.set_defaults(handler=cmd_compile)
