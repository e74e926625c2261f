"""Reading `params.yaml`: what a study changes from the recipe.

The recipe is the defaults of each section's config dataclass (`TrainConfig`, `MelConfig`, ...);
`params.yaml` holds only what the study sets: the `study` section (which audio, which positional
variants, which seeds: what `dvc.yaml`'s matrix and key-level params read) and the values a study
overrides. `cml params` (`cml.sections`) prints the effective values. Every section goes through `build`, the one strict
loader: an unknown key is an error, never a silent default. Every mistake in the file (missing, not
YAML, no such section, an unknown key, a value out of its domain) is a `UsageError` naming the file
and the section: exit code 2 from any `cml` command.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from cml.errors import UsageError, one_line

T = TypeVar("T")


def load_params(path: str | Path = "params.yaml", section: str | None = None) -> dict[str, Any]:
    """Return the whole params file, or one stage's section of it, with a clear error when absent."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid YAML: {one_line(err)}") from None
    if not isinstance(params, dict):
        raise UsageError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    if section is None:
        return params
    if section not in params:
        raise UsageError(f"{path} has no '{section}' section (sections: {', '.join(map(str, params))})")
    values = params[section] or {}
    if not isinstance(values, dict):
        raise UsageError(f"{path}: section '{section}' must be a mapping of keys to values")
    return values


def build(cls: Callable[..., T], values: dict | None, what: str) -> T:
    """`cls(**values)` for a config dataclass, with unknown keys an error that names them and the known ones."""
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown keys in {what}: {unknown} (known: {', '.join(known)})")
    return cls(**values)


def parse_section(path: str | Path, section: str, from_dict: Callable[[dict], T], values: dict | None = None) -> T:
    """`from_dict(values)` (default: the section as read), its ValueError/TypeError as a UsageError naming
    the file and section."""
    values = load_params(path, section) if values is None else values
    try:
        return from_dict(values)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{path}: section '{section}': {one_line(err)}") from None


def load_config(path: str | Path, section: str, cls: Callable[..., T]) -> T:
    """The config dataclass of a section: the recipe's defaults with the file's overrides."""
    return parse_section(path, section, lambda values: build(cls, values, f"'{section}'"))


AUDIO_SOURCES = ("auto", "corpus", "data")


@dataclass(frozen=True)
class Study:
    """The experimental design, only in params.yaml (dvc.yaml's matrix and key-level params read it)."""

    audio: str  # auto: data/audio when it holds files, else the rendered corpus; or corpus / data
    variants: list  # positional variants trained and compared (stages train@<variant>-<seed>)
    seeds: list  # training seeds of each variant

    def __post_init__(self) -> None:
        if self.audio not in AUDIO_SOURCES:
            raise ValueError(f"audio must be one of {AUDIO_SOURCES}, got {self.audio!r}")
        if not self.variants or not self.seeds:
            raise ValueError("variants and seeds must each name at least one")
