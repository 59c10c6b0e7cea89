"""tinymlaas: run the LwM2M server daemon and operate it through its management API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ipso_objects import IpsoError, ObjectRegistry

from . import progress
from .client import ApiClient, DeviceFailed, client as _client
from .common import DEFAULT_CONFIG, CliError, Parser
from .credentials import add_credentials_commands
from .local import cmd_config_show, cmd_keys, cmd_objects, cmd_serve
from .models import add_model_commands
from .plugins import add_plugins_commands
from ..api.display import format_bytes
from ..core.responses import REASONS

def _print_result(body: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(body, indent=2))
        return 0 if body.get("ok", True) else 1
    if "queued" in body:
        print(f"queued as {body['queued']}: the device sleeps; the request goes out at its next update")
        return 0
    if not body.get("ok"):
        code = str(body.get("code"))
        prefix = f"device answered {code}: " if code[:1].isdigit() else ""
        print(f"tinymlaas: {prefix}{body.get('diagnostic')}", file=sys.stderr)
        return 1
    for row in body.get("values", []):
        print(row["line"])
    if "links" in body:
        print(body["links"].replace(",", ",\n"))
    if "location" in body:
        print(f"created {body['location']}")
    if not body.get("values") and "links" not in body and "location" not in body:
        print(f"{body.get('code')} {REASONS.get(body.get('code'), '')}".rstrip())
    return 0


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def cmd_devices(args: argparse.Namespace) -> int:
    _, devices = _client(args).call("GET", "/devices")
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    rows = [("ENDPOINT", "LWM2M", "BINDING", "LIFETIME", "UPDATED", "OBJECTS", "ADDRESS")]
    for d in devices:
        rows.append((
            d["endpoint"], d["lwm2m_version"], d["binding"] + ("Q" if d["queue_mode"] else ""),
            f"{d['lifetime']}s", _ago(d["updated_at"]) + " ago", str(len(d["objects"])), d["address"],
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(devices)} device(s)")
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    _, device = _client(args).call("GET", f"/devices/{args.endpoint}")
    if args.json:
        print(json.dumps(device, indent=2))
        return 0
    print(f"endpoint      {device['endpoint']}  (registration {device['id']})")
    print(f"lwm2m         {device['lwm2m_version']}  binding {device['binding']}"
          f"{'  queue mode' if device['queue_mode'] else ''}")
    print(f"address       {device['address']}")
    security = device.get("security", "none")
    print(f"security      {security}{'  identity ' + device['identity'] if security != 'none' else ' (plain CoAP)'}")
    print(f"lifetime      {device['lifetime']}s, updated {_ago(device['updated_at'])} ago")
    print(f"formats       {' '.join(map(str, device['content_formats'])) or '(not advertised)'}")
    registry = ObjectRegistry.default()
    print("objects")
    for item in device["objects"]:
        object_id = int(item["path"].split("/")[1])
        definition = registry.get(object_id)
        name = definition.name if definition else "(unknown object)"
        print(f"  {item['path']:<12} {name}" + (f"  ver {item['ver']}" if "ver" in item else ""))
    for paths in device.get("observations", []):
        print(f"observing     {', '.join(paths)}")
    profile = device.get("profile") or {}
    tinyml = profile.get("tinyml")
    if tinyml:
        print(f"ml runtime    {tinyml['runtime']} {tinyml['runtime_version']} on {tinyml['cpu_core']}, "
              f"arena budget {format_bytes(tinyml['arena_budget_bytes'])}, {len(tinyml['operators'])} operators")
    if profile:
        print(f"device        {profile['manufacturer'] or '?'} {profile['model'] or '?'}, hardware "
              f"{profile['hardware_version'] or '?'}, firmware version (/3/0/3) {profile['firmware_version'] or '?'}")
    if device.get("device_class"):
        print(f"device class  {device['device_class']}")
    if tinyml:
        model = tinyml["active_model_id"]
        print(f"active model  {model + ' ' + tinyml['active_model_version'] if model else '(none)'}")
    if profile.get("firmware_object"):
        package = " ".join(part for part in (profile.get("package_name"), profile.get("package_version")) if part)
        print(f"package       {package or '(none reported)'}  (/5/0/6, /5/0/7)")
        print(f"last update   {device.get('firmware_update') or '?'}")
    return 0


def _device_call(client: ApiClient, name: str, endpoint: str, body: dict[str, Any],
                 timeout: float | None = None) -> dict[str, Any]:
    """A device operation's answer: the result, or the device's failure (an HTTP error status with
    ``ok`` false and its CoAP ``code``), which :func:`_print_result` reports."""
    try:
        return client.call("POST", f"/devices/{endpoint}/{name}", body, timeout=timeout)[1]
    except DeviceFailed as failure:
        return failure.body


def _operation(args: argparse.Namespace, name: str, body: dict[str, Any]) -> int:
    result = _device_call(_client(args), name, args.endpoint, body)
    return _print_result(result, getattr(args, "json", False))


def cmd_read(args):
    return _operation(args, "read", {"path": args.path})


def cmd_write(args):
    return _operation(args, "write", {"path": args.path, "value": args.value, "replace": not args.update})


def cmd_exec(args):
    return _operation(args, "execute", {"path": args.path, "args": args.arguments or ""})


def cmd_delete(args):
    return _operation(args, "delete", {"path": args.path})


def cmd_discover(args):
    return _operation(args, "discover", {"path": args.path})


def _pairs(items: list[str], what: str) -> dict[str, str | None]:
    pairs: dict[str, str | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise CliError(f"{what} {item!r} must look like name=value")
        pairs[name] = value if sep and value != "" else None
    return pairs


def cmd_attributes(args):
    return _operation(args, "write-attributes", {"path": args.path, "attributes": _pairs(args.attributes, "attribute")})


def cmd_create(args):
    """``create EP /O [ID] [RID=TEXT ...]``: without ID the device picks it (Location-Path)."""
    instance, values = args.instance, list(args.values)
    if instance is not None and "=" in instance:  # no id given: the first word is a value
        instance, values = None, [instance, *values]
    if instance is not None and not (instance.isascii() and instance.isdigit() and int(instance) < 65535):
        raise CliError(f"instance id {instance!r} must be a number 0..65534 (or leave it out)")
    body = {"path": args.path, "instance": None if instance is None else int(instance),
            "values": _pairs(values, "value")}
    return _operation(args, "create", body)


_HTTP_MARGIN_S = 5.0
"""Beyond a deadline the daemon keeps, how long to wait for its HTTP answer."""


def cmd_observe(args: argparse.Namespace) -> int:
    client = _client(args)
    # --timeout bounds the whole command: the server waits for the device's answer no
    # longer, and ends the event stream at the deadline (keep-alives never end it here)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    body = {"paths": args.paths, **({"timeout": args.timeout} if deadline else {})}
    first = _device_call(client, "observe", args.endpoint, body,
                         timeout=args.timeout + _HTTP_MARGIN_S if deadline else None)
    if _print_result(first, False) != 0:
        return 1
    seen = 0
    try:
        query = f"/events?endpoint={args.endpoint}&kinds=notification"
        remaining = deadline - time.monotonic() if deadline else None
        if remaining is not None:
            query += f"&timeout={max(remaining, 0.001):.3f}"
        for event in client.stream(query, timeout=remaining + _HTTP_MARGIN_S if deadline else 3600):
            if deadline and time.monotonic() > deadline:
                break
            if event.get("paths") != args.paths:
                continue
            stamp = time.strftime("%H:%M:%S")
            for row in event["result"].get("values", []):
                print(f"{stamp} {row['line']}", flush=True)
            if not event["result"].get("ok"):
                print(f"{stamp} observation ended: {event['result'].get('diagnostic')}", flush=True)
                return 1
            seen += 1
            if args.count and seen >= args.count or deadline and time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        pass
    except TimeoutError:
        pass
    finally:
        client.call("POST", f"/devices/{args.endpoint}/cancel-observe", {"paths": args.paths}, timeout=_HTTP_MARGIN_S)
    return 0


def cmd_queue(args):
    _, entry = _client(args).call("GET", f"/queue/{args.id}")
    print(json.dumps(entry, indent=2))
    return 0


FORMAT_BY_EXTENSION = {".tflite": "tflite", ".onnx": "onnx", ".json": "emlearn-json"}
"""Model format ``models add`` assumes for a file extension when ``--format`` is not given."""
_FORMATS_HELP = ("the formats the daemon's installed compiler plugins accept (`tinymlaas plugins` in its "
                 "environment lists them: tflite, onnx, emlearn-json, ...), or firmware")


def model_format(file: str, given: str | None) -> str:
    """``--format`` when given, else the format of ``file``'s extension (:data:`FORMAT_BY_EXTENSION`)."""
    if given:
        return given.strip().lower()
    fmt = FORMAT_BY_EXTENSION.get(Path(file).suffix.lower())
    if fmt is None:
        known = ", ".join(f"{ext} → {name}" for ext, name in FORMAT_BY_EXTENSION.items())
        raise CliError(f"cannot tell the format of {file} from its extension ({known}): give --format, "
                       f"one of {_FORMATS_HELP}")
    return fmt


def cmd_models(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.models_command == "add":
        try:
            data = Path(args.file).read_bytes()
        except OSError as error:
            raise CliError(f"cannot read {args.file}: {error.strerror}") from None
        fmt = model_format(args.file, args.format)
        query = urllib.parse.urlencode({"name": args.name, "version": args.model_version, "format": fmt})
        _, model = client.call("POST", f"/models?{query}", data)
        print(f"added {model['name']}@{model['version']} ({format_bytes(model['size'])}, sha256 {model['digest'][:16]}…)")
        return 0
    _, models = client.call("GET", "/models")
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for model in models:
        print(f"{model['name']}@{model['version']:<12} {model['format']:<12} {format_bytes(model['size']):>24}  "
              f"{model['digest'][:16]}")
    print(f"{len(models)} model(s)")
    return 0


LABELS = ("manufacturer", "model", "firmware_version", "hardware_version", "runtime", "cpu_core")


def _labels(where: list[str]) -> dict[str, str]:
    """``--where manufacturer=Acme,model=X`` (repeatable) as selector labels."""
    labels: dict[str, str] = {}
    for text in where:
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, equals, value = item.partition("=")
            if not equals or key.strip() not in LABELS:
                raise CliError(f"--where {item!r}: give KEY=VALUE with KEY one of {', '.join(LABELS)}")
            labels[key.strip()] = value.strip()
    return labels


def cmd_deploy(args: argparse.Namespace) -> int:
    strategy = {"max_in_flight": args.max_in_flight, "canary_fraction": args.canary,
                "failure_threshold": args.failure_threshold, "mode": args.mode, "version_check": args.version_check,
                "follow": args.follow, "plugin": args.plugin or ""}
    selector = {"device_classes": args.device_class, "endpoints": args.endpoint, "labels": _labels(args.where)}
    body = {"model": args.model, "selector": selector, "strategy": strategy}
    if args.id:
        body["id"] = args.id
    _, rollout = _client(args).call("POST", "/rollouts", body)
    print(f"rollout {rollout['id']}: {args.model} to {rollout['summary']['total']} matching device(s) so far")
    if args.watch:
        return _watch(_client(args), rollout["id"])
    return 0


def _watch(client: ApiClient, rollout_id: str) -> int:
    return progress.watch(lambda: client.call("GET", f"/rollouts/{rollout_id}")[1])


def cmd_rollouts(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.id is None:
        _, rollouts = client.call("GET", "/rollouts")
        width = progress.terminal_width() if sys.stdout.isatty() else None
        for rollout in rollouts:
            print(progress.progress_line(rollout, width))
        print(f"{len(rollouts)} rollout(s)")
        return 0
    if args.action:
        client.call("POST", f"/rollouts/{args.id}/{args.action}")
    if args.watch:
        return _watch(client, args.id)
    _, rollout = client.call("GET", f"/rollouts/{args.id}")
    if args.json:
        print(json.dumps(rollout, indent=2))
        return 0
    print(progress.progress_line(rollout, progress.terminal_width() if sys.stdout.isatty() else None))
    if rollout.get("paused_reason"):
        print(f"paused: {rollout['paused_reason']}")
    if rollout["strategy"].get("plugin"):
        print(f"plugin pinned: {rollout['strategy']['plugin']}")
    for device in rollout["devices"]:
        detail = device["reason"] or (f"{device['mode']} {device['phase']}" if device["phase"] else "")
        flag = " canary" if device["canary"] else ""
        print(f"  {device['endpoint']:<14} {device['status']:<13}{flag:<7} {detail}")
        if device.get("package"):
            print(f"  {'':<14} gets a {device['package']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tinymlaas", description=__doc__,
                    epilog="`tinymlaas COMMAND --help` describes a command and its options.")
    parser.add_argument("--version", action="version", version=version("tinymlaas"))
    # --config for commands that read the configuration; --api and --token only for those that call the API
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("--config", help=f"daemon configuration file (default: {DEFAULT_CONFIG})")
    common = argparse.ArgumentParser(add_help=False, parents=[configured])
    common.add_argument("--api", metavar="URL", help="management API URL (default: from the configuration)")
    common.add_argument("--token", help="API token (default: $TINYMLAAS_TOKEN, or api.token / api.token_file)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help, *arguments, json_flag=False, parents=(common,)):
        sub = commands.add_parser(name, parents=list(parents), help=help, description=help)
        for names, options in arguments:
            sub.add_argument(*names, **options)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(handler=handler)
        return sub

    ep = (("endpoint",), {"help": "device endpoint name"})
    path = (("path",), {"help": "LwM2M path such as /3/0"})
    command("serve", cmd_serve, "run the LwM2M server daemon", parents=(configured,))
    config = commands.add_parser("config", help="inspect the configuration", description="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = config_commands.add_parser("show", parents=[configured], help="print the effective configuration "
                                      "(token redacted)", description="print the effective configuration")
    show.set_defaults(handler=cmd_config_show)
    objects = command("objects", cmd_objects, "list known LwM2M objects, or one object's resources",
                      (("object_id",), {"nargs": "?", "type": int, "metavar": "ID",
                                        "help": "object id (default: list every object)"}), parents=())
    objects.add_argument("--ddf-dir", action="append", default=[], metavar="DIR",
                         help="also load the DDF XML files of DIR (repeatable; default: the built-in objects only)")
    command("devices", cmd_devices, "list registered devices", json_flag=True)
    command("device", cmd_device, "show a device's registration and objects", ep, json_flag=True)
    command("read", cmd_read, "read a path and print named values", ep, path, json_flag=True)
    command("write", cmd_write, "write a resource value (opaque as hex)", ep, path,
            (("value",), {"help": "the value as text"}),
            (("--update",), {"action": "store_true", "help": "partial update (POST) instead of replace"}),
            json_flag=True)
    command("exec", cmd_exec, "execute a resource", ep, path,
            (("arguments",), {"nargs": "?", "help": "execute arguments, e.g. \"0='v',1\" (default: none)"}), json_flag=True)
    command("create", cmd_create, "create an object instance", ep, path,
            (("instance",), {"nargs": "?", "metavar": "ID",
                             "help": "new instance id (default: the device picks it)"}),
            (("values",), {"nargs": "*", "help": "resource values as ID=TEXT (default: none)"}), json_flag=True)
    command("delete", cmd_delete, "delete an object instance", ep, path, json_flag=True)
    command("discover", cmd_discover, "discover resources and attributes", ep, path, json_flag=True)
    command("attributes", cmd_attributes, "write notification attributes (pmin=10 pmax=60 gt= ...)",
            ep, path, (("attributes",), {"nargs": "+", "help": "NAME=VALUE, or NAME= to unset"}),
            json_flag=True)
    command("observe", cmd_observe, "observe paths and print notifications until Ctrl-C", ep,
            (("paths",), {"nargs": "+", "help": "one path (Observe) or several (Observe-Composite)"}),
            (("--count",), {"type": int, "default": 0, "metavar": "N",
                            "help": "stop after N notifications (default: 0, no limit)"}),
            (("--timeout",), {"type": float, "default": 0, "metavar": "S",
                              "help": "stop after S seconds, the device's first answer included "
                                      "(default: 0, no limit)"}))
    command("queue", cmd_queue, "show a request queued for a sleeping device",
            (("id",), {"help": "queue entry id, as `queued as ID` printed it"}))

    models = commands.add_parser("models", help="register, list and show TinyML models",
                                 description="register, list and show TinyML models and firmware images")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    add = models_commands.add_parser("add", parents=[common], help="register a model or a firmware image",
                                     description="register a model (validated by the compiler plugins that "
                                                 "accept its format) or a firmware image")
    add.add_argument("file", help="the model file (.tflite, .onnx, .json, ...) or the firmware image")
    add.add_argument("--name", required=True, help="model name, as in NAME@VERSION (required)")
    add.add_argument("--version", dest="model_version", required=True, metavar="VERSION",
                     help="model version, as in NAME@VERSION (required)")
    add.add_argument("--format", metavar="FORMAT",
                     help="the file's format, checked by the daemon: " + _FORMATS_HELP + "; a model is "
                          "installed through /9, firmware through /5 (default: from the extension, "
                          + ", ".join(f"{ext} → {name}" for ext, name in FORMAT_BY_EXTENSION.items())
                          + "; others need --format)")
    listing = models_commands.add_parser("list", parents=[common], help="list registered models")
    listing.add_argument("--json", action="store_true", help="print JSON")
    for sub in (add, listing):
        sub.set_defaults(handler=cmd_models)
    add_model_commands(commands, models_commands, common)  # models show, compile
    command("deploy", cmd_deploy, "roll a model out to the devices a selector picks",
                     (("model",), {"metavar": "NAME@VERSION", "help": "a registered model"}),
                     (("--class",), {"dest": "device_class", "action": "append", "default": [],
                                     "metavar": "PATTERN",
                                     "help": "device class pattern, e.g. 'cortex-m*' (repeatable; default: any)"}),
                     (("--endpoint",), {"action": "append", "default": [], "metavar": "PATTERN",
                                   "help": "endpoint pattern, e.g. 'm4f-*' (repeatable; default: any)"}),
                     (("--where",), {"action": "append", "default": [], "metavar": "KEY=VALUE,...",
                                     "help": "what /3 (or the TinyML object) must report exactly, e.g. "
                                             "manufacturer=Acme,model=X; keys: " + ", ".join(LABELS) + " (default: no condition)"}),
                     (("--version-check",), {"choices": ["auto", "package", "firmware", "none"], "default": "auto",
                                             "help": "firmware: done when /5/0/7 (package) or /3/0/3 (firmware) "
                                                     "equals the version, or at Update Result 1 (none); auto: "
                                                     "package when the device has /5/0/7"}),
                     (("--max-in-flight",), {"type": int, "default": 10, "metavar": "N",
                                             "help": "devices delivered to at once"}),
                     (("--canary",), {"type": float, "default": 0.1, "metavar": "F",
                                      "help": "share of the compatible devices (0..1) that go first; the rest "
                                              "wait until every canary is done"}),
                     (("--failure-threshold",), {"type": float, "default": 0.2, "metavar": "F",
                                                 "help": "pause once this share (0..1) of the finished devices "
                                                         "failed or rolled back"}),
                     (("--mode",), {"choices": ["auto", "push", "pull"], "default": "auto",
                                    "help": "push: the server writes the package to the device (Block1); pull: "
                                            "the device downloads it from a URI; auto: as the device's /5/0/9 "
                                            "prefers"}),
                     (("--plugin",), {"metavar": "NAME",
                                      "help": "compile with this compiler plugin for every device; a device it "
                                              "does not fit is incompatible with its reasons (default: the "
                                              "plugin ranked first per device, as `models show` lists them)"}),
                     (("--id",), {"help": "rollout id (default: generated)"}),
                     (("--follow",), {"action": "store_true",
                                      "help": "keep running once every matched device is done, to enrol "
                                              "devices that match later (default: end 'complete')"}),
                     (("--watch",), {"action": "store_true",
                                     "help": "show live progress until the rollout ends; exit 0 only when it "
                                             "ends complete"}))
    command("rollouts", cmd_rollouts, "list rollouts, or show/pause/resume/cancel one",
            (("id",), {"nargs": "?", "metavar": "ID", "help": "a rollout (default: list every rollout)"}),
            (("action",), {"nargs": "?", "choices": ["pause", "resume", "cancel"],
                           "help": "change the rollout's state first (default: none, show it)"}),
            (("--watch",), {"action": "store_true",
                            "help": "show live progress until the rollout ends; exit 0 only when it ends "
                                    "complete"}),
            json_flag=True)
    keys = commands.add_parser("keys", help="manage the module signing key", description="manage the module signing key")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    generate = keys_commands.add_parser("generate", parents=[configured], help="create a signing key pair",
                                        description="create a signing key pair (private key mode 0600)")
    generate.add_argument("--alg", choices=["ES256", "EdDSA"], default="ES256", help="signature algorithm")
    generate.add_argument("--force", action="store_true", help="replace an existing key")
    show = keys_commands.add_parser("show", parents=[configured], help="print the public key and key id",
                                    description="print the public key and key id")
    for sub in (generate, show):
        sub.add_argument("--path", help="private key file (default: deployment.signing_key of the configuration)")
        sub.set_defaults(handler=cmd_keys)
    add_credentials_commands(commands, configured)
    add_plugins_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CliError as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 1
    except IpsoError as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `tinymlaas devices | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
