"""The `cml` command: one entry point, one sub-command per stage of the project.

A sub-command's module is imported only when that command runs (`cml --help` and `cml scan` do not load
torch, scikit-learn or spotipy); each such module exposes `register_cli(subparsers)`. This file also owns
the one error path (`cml.errors`): a user mistake ends as one line on stderr, ``cml COMMAND: error: ...``,
with exit code 2 (usage) or 1 (runtime), and no traceback unless ``--debug`` or ``CML_DEBUG=1`` asks.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cml.errors import CmlError, one_line

# command: (the module that registers and runs it, its line in `cml --help`), in the order listed there
COMMANDS = {
    "corpus": ("data.corpus", "build the corpus as labelled FLAC files: rendered music21 scores, or real soundtracks"),
    "soundtracks": ("data.soundtracks", "fetch the Debian packages of the soundtracks corpus (corpus.source: soundtracks)"),
    "pool": ("data.pool", "fetch and build the pretraining pool: free music from eleven Debian packages, not the benchmark's"),
    "scan": ("data.scan", "find usable audio files and report the ones skipped"),
    "tracks": ("data.tracks", "build the track table (audio source, labels, split, skip report)"),
    "features": ("data.features", "handcrafted descriptors and the MFCC/chroma/contrast baseline per track"),
    "train": ("train.cli", "train a contrastive encoder (one positional variant)"),
    "pretrain": ("train.pretrain", "pretrain the shipped encoder on the pool (resumable), and ship it"),
    "embed": ("embed.cli", "one embedding per track (the mean of windows of 8x the training crop) as a feature table"),
    "evaluate": ("evaluation.cli", "k-NN, linear-probe, NMI and ARI of a feature table (the Compare notebook's scores)"),
    "neighbours": ("search.index", "the nearest tracks of a track in a feature table, with their paths"),
    "cluster": ("cluster.cli", "cluster a feature table (ELKI, k-means, DBSCAN, HDBSCAN)"),
    "playlist": ("playlist.cli", "a playlist from the convex hull of seed tracks in a feature table"),
    "map": ("playlist.server", "a map of a feature table in the browser: listen, pick seeds, make playlists"),
    "spotify": ("spotify.cli", "pull track data from Spotify, push playlists to it"),
    "params": ("sections", "print a study's effective parameters: the config defaults with params.yaml's overrides"),
}
DEBUG_ENV = "CML_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `cml embed: error: ... (see cml embed --help)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


class _Commands:
    """The sub-parsers action, handing each command its line of `cml --help`."""

    def __init__(self, action) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.action.add_parser(name, help=COMMANDS[name][1], **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (the others are listed with their help line)."""
    parser = _Parser(
        prog="cml", description="Contrastive Music Learning.",
        epilog="exit codes: 0 ok, 1 runtime failure (an input cannot be used), 2 usage error, 130 interrupted")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help=f"print the traceback of an error (or {DEBUG_ENV}=1)")
    subparsers = _Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for name, (module, _) in COMMANDS.items():
        if name == command:
            importlib.import_module(f"cml.{module}").register_cli(subparsers)
        else:
            subparsers.add_parser(name)
    return parser


def _exit_code(err: BaseException) -> int:
    """1 for an input that cannot be used, 2 for a wrong command line or params file."""
    return err.exit_code if isinstance(err, CmlError) else 1


def _describe(err: BaseException) -> str:
    """The one-line message of an error; unexpected ones say so and how to see more."""
    if isinstance(err, (CmlError, OSError, ValueError, KeyError, RuntimeError)) and str(err):
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in str(err):
            text = f"{err}: {err.filename}"
        return one_line(text)
    return one_line(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    command = " ".join(c for c in (args.command, getattr(args, "spotify_command", None)) if c)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"cml {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place every error is turned into one line
        if debug:
            raise
        print(f"cml {command}: error: {_describe(err)}", file=sys.stderr)
        return _exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
