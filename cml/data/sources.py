"""Where the pipeline's audio comes from: the user's `data/audio` when it holds files, else the rendered corpus.

`study.audio` in params.yaml chooses (auto, corpus or data). The corpus stage reads this too, so that a
user's first `dvc repro` on their own music renders no corpus that no later stage would read.
"""
from __future__ import annotations

import re
from pathlib import Path

from cml.params import AUDIO_SOURCES


def has_audio_files(folder: Path) -> bool:
    """True when the folder holds any non-hidden file (the user has put their own audio there)."""
    return folder.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in folder.rglob("*"))


def resolve_audio_dir(source: str, corpus_dir: Path, data_dir: Path) -> tuple[str, Path]:
    """("data", data/audio) or ("corpus", corpus/audio) for a `study.audio` value."""
    if source not in AUDIO_SOURCES:
        raise ValueError(f"study.audio must be one of {AUDIO_SOURCES}, got {source!r}")
    user_audio = Path(data_dir) / "audio"
    if source == "data" or (source == "auto" and has_audio_files(user_audio)):
        return "data", user_audio
    return "corpus", Path(corpus_dir) / "audio"


def slug(text: str) -> str:
    """A file-name-safe id part: every run of characters other than letters, digits and dots becomes one '-'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")
