"""Small helpers that keep the notebooks thin: where to run, how to save metrics and figures, how to listen.

Metrics and figures are written so that the same inputs give the same bytes (sorted keys, rounded floats,
no timestamps in PNG metadata): `dvc metrics diff` then shows only real changes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder upwards that holds `dvc.yaml` (notebooks open in notebooks/ in JupyterLab)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no dvc.yaml in {here} or any folder above it")


def use_repo_root() -> Path:
    """Change into the repository root so that the paths in params.yaml work from anywhere."""
    root = find_repo_root()
    os.chdir(root)
    return root


def _clean(value: Any, digits: int) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, digits) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, digits)
    return value


def write_metrics(path: str | Path, metrics: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """Write metrics as stable JSON (sorted keys, rounded floats, NaN as null) and return what was written."""
    cleaned = _clean(metrics, digits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # atomic: a crash never leaves half a metrics file
    tmp.write_text(json.dumps(cleaned, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return cleaned


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG without the software/date metadata that changes between runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def audio_excerpt(path: str | os.PathLike, seconds: float, offset: float | None = None,
                  sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples of `seconds` of an audio file and their rate: from `offset` seconds, or the
    centred excerpt when `offset` is None (the whole track when it is shorter than `seconds`).

    Read at `sample_rate`, or at the file's own rate when None. A path that is no file (a track without
    local audio, NaN from a table) raises FileNotFoundError naming it.
    """
    from cml.audio.mel import audio_info, centre_offset, load_audio  # torch: only where a notebook listens

    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        raise FileNotFoundError(f"no local audio file: {path}")
    info = audio_info(path)
    rate = int(sample_rate or info.samplerate)
    start = centre_offset(info.frames / info.samplerate, seconds) if offset is None else offset
    return load_audio(path, sample_rate=rate, offset=start, duration=seconds).numpy(), rate


def listen(path: str | os.PathLike, seconds: float, offset: float | None = None, sample_rate: int | None = None):
    """An audio player (IPython.display.Audio) of `audio_excerpt(path, seconds, offset, sample_rate)`:
    by default the centred `seconds` of the track at its own rate. FileNotFoundError when there is no file."""
    from IPython.display import Audio

    wave, rate = audio_excerpt(path, seconds, offset, sample_rate)
    return Audio(wave, rate=rate)
