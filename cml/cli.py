"""The `cml` command: one entry point, one sub-command per stage of the project.

Each module that offers a sub-command exposes `register_cli(subparsers)`; this file only wires them up.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute sub-commands, in the order `cml --help` lists them.
COMMAND_MODULES = (
    "corpus", "audio", "dataset", "features", "train", "embed", "evaluation", "clustering", "playlist", "spotify",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cml", description="Contrastive Music Learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"cml.{name}").register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
