"""The CLI's one error path: what a user mistake raises, its exit code, and the domains of options.

Every `cml` command ends a user mistake the same way: one line on stderr, ``cml COMMAND: error: ...``,
naming the input and what to do, and a documented exit code (`cml.cli.main` prints it):

    0    success (files that could not be used are skipped and listed in the command's skip report)
    1    runtime failure: an input exists but cannot be used (corrupt table, not a checkpoint, ELKI error, ...)
    2    usage error: the command line or params.yaml is wrong (a value out of its domain, a missing file,
         an unknown key); caught before any long work starts
    130  interrupted (Ctrl-C)

The traceback is printed only with ``cml --debug`` or ``CML_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


class CmlError(Exception):
    """An input that cannot be used; the message says which and why, in one line. Exit code 1."""

    exit_code = 1


class UsageError(CmlError):
    """The command line or the params are wrong (caught before long work starts). Exit code 2."""

    exit_code = 2


def one_line(message: object) -> str:
    """The message on one line: newlines and other control characters become spaces."""
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in str(message))
    return " ".join(text.split())


# ---- option domains, checked by argparse at parse time (exit code 2 with argparse's own message) ----

def _number(kind, text: str, what: str, ok) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
    return value


def count(text: str) -> int:
    """An integer >= 1 (k, length, limit, number of crops)."""
    return _number(int, text, "an integer >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(int, text, "an integer >= 0", lambda v: v >= 0)


def positive(text: str) -> float:
    """A finite number > 0 (durations in seconds, eps)."""
    return _number(float, text, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def non_negative(text: str) -> float:
    """A finite number >= 0 (margins)."""
    return _number(float, text, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def finite(text: str) -> float:
    """Any finite number (heights, levels in dB)."""
    return _number(float, text, "a finite number", math.isfinite)


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    return _number(float, text, "a number between 0 and 1 (exclusive)", lambda v: 0 < v < 1)


# ---- inputs and outputs, checked before the long work ----

def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` as a Path when it is a readable file; else a UsageError naming it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} not found: {path}")
    if path.is_dir():
        raise UsageError(f"{what} is a folder, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} is not readable (permission denied): {path}")
    return path


def check_output(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Make sure `path` can be written (creating its parent folders) before any long work starts.

    With ``folder`` the path itself is a folder to write into. Raises UsageError with the reason.
    """
    path = Path(path)
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise UsageError(f"output {path} is a folder; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"output folder {path} is a file")
    existing = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    if not os.access(target, os.W_OK | os.X_OK) or (path.exists() and not folder and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")
    return path
