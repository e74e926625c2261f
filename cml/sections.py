"""Every section of params.yaml with the config dataclass whose defaults it overrides.

`cml params [SECTION]` prints a study's effective values: what a run reads. This module imports every
config, so only the `params` command and the tests load it; stages load just their own sections.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from cml.errors import UsageError
from cml.params import Study, load_config, load_params


def sections() -> dict[str, type]:
    """Every section of params.yaml and its config dataclass, in the order `cml params` prints them."""
    from cml.audio.mel import MelConfig
    from cml.cluster.grid import ClusterTestingConfig
    from cml.data.corpus import CorpusConfig
    from cml.data.features import DataAnalysisConfig, FeaturesConfig
    from cml.data.tracks import TracksConfig
    from cml.evaluation.scores import EvaluateConfig
    from cml.model.encoder import EncoderConfig
    from cml.model.musicnn import MusicnnConfig
    from cml.playlist.hull import PlaylistsConfig
    from cml.train.config import TrainConfig

    return {"study": Study, "frontend": MelConfig, "corpus": CorpusConfig, "tracks": TracksConfig,
            "features": FeaturesConfig, "data_analysis": DataAnalysisConfig, "model": EncoderConfig,
            "train": TrainConfig, "pretrain": TrainConfig, "musicnn": MusicnnConfig, "evaluate": EvaluateConfig, "cluster_testing": ClusterTestingConfig,
            "playlists": PlaylistsConfig}


def effective(path: str | Path) -> dict[str, dict]:
    """Every section's values as a run uses them: the recipe's defaults with the file's overrides."""
    values = {}
    for section, cls in sections().items():
        config = load_config(path, section, cls) if section in load_params(path) else None
        if config is None and any(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                                  for f in dataclasses.fields(cls)):
            raise UsageError(f"{path} has no '{section}' section, and it has no defaults")
        values[section] = dataclasses.asdict(config if config is not None else cls())
    for section, keys in FILLED_ELSEWHERE.items():
        for key in keys:
            values[section].pop(key)
    return values


# Fields a run fills from elsewhere (the study's variant, the model and frontend sections): printed there.
FILLED_ELSEWHERE = {"train": ("variant", "model", "frontend"), "pretrain": ("model", "frontend"), "model": ("variant",)}


def _cmd_params(args) -> int:
    values = effective(args.params)
    if args.section:
        if args.section not in values:
            raise UsageError(f"no section {args.section!r}; sections: {', '.join(values)}")
        values = {args.section: values[args.section]}
    print(yaml.safe_dump(json_safe(values), sort_keys=False, default_flow_style=None, width=110), end="")
    return 0


def json_safe(value: Any) -> Any:
    """Tuples as lists, so the printed YAML reads back as params.yaml."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def register_cli(subparsers) -> None:
    """Add `cml params [SECTION] [--params params.yaml]`."""
    p = subparsers.add_parser("params")
    p.add_argument("section", nargs="?", help="one section (default: all)")
    p.add_argument("--params", default="params.yaml", help="the study's params file")
    p.set_defaults(func=_cmd_params)
