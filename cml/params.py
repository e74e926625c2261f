"""Reading `params.yaml`, the single source of every tunable value in the pipeline.

Every mistake in the file (missing, not YAML, no such section, an unknown key, a value out of its
domain) is a `UsageError` naming the file and the section: exit code 2 from any `cml` command.
"""
from __future__ import annotations

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


def parse_section(path: str | Path, section: str, from_dict: Callable[[dict], T], values: dict | None = None) -> T:
    """`from_dict(values)` (default: the section as read), its ValueError/TypeError as a UsageError naming
    the file and section."""
    values = load_params(path, section) if values is None else values
    try:
        return from_dict(values)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{path}: section '{section}': {one_line(err)}") from None
