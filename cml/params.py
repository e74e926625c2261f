"""Reading `params.yaml`, the single source of every tunable value in the pipeline."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_params(path: str | Path = "params.yaml", section: str | None = None) -> dict[str, Any]:
    """Return the whole params file, or one stage's section of it, with a clear error when absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with path.open() as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"{path} has no '{section}' section (sections: {', '.join(params)})")
    return params[section] or {}
