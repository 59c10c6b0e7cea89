"""What every ``tinymlaas`` command module shares."""

import argparse

DEFAULT_CONFIG = "config/server.yaml"


class CliError(Exception):
    """Printed as ``tinymlaas: <message>``; exit status 1."""


class HelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default, unless the help already says it or
    there is none to show (a flag, an option without a default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or action.required:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose help, and its subcommands' (they are made of this
    class too), uses :class:`HelpFormatter`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
