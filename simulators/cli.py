"""``tinymlaas-sim``: run simulated LwM2M devices."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinymlaas-sim", description=__doc__)
    parser.add_argument("--version", action="version", version=version("tinymlaas"))
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("tinymlaas-sim: no simulator commands yet (see issue 3)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
