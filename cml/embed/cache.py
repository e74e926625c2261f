"""A per-file cache of track embeddings: a re-run over a library embeds only the files that changed.

An entry is keyed by (model key, file content). The model key hashes everything that makes a vector: the
checkpoint's bytes (or the untrained spec), the input standardisation, the front end, the embedding mode and
window, the code that computes it (`CODE_MODULES`) and torch's version — so a retrained checkpoint, another
setting or a changed encoder never reuses a stale vector. A file's content is its SHA-256, found without
reading the file when its size and modification time are those last seen (the fast path) and by hashing
its bytes otherwise, so a touched or copied file is not decoded again and an edited one is.

One SQLite file per cache folder: writes are atomic, several processes (`torchrun` ranks, parallel DVC
stages) may share it, and a file that SQLite cannot read is set aside and rebuilt with a warning.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1
DB_NAME = "embeddings.sqlite"
# the modules whose code decides a vector: a change to any of them is a new model key
CODE_MODULES = ("cml.audio.mel", "cml.audio.files", "cml.model.checkpoint", "cml.embed.tracks", "cml.model.encoder", "cml.model.musicnn",
                "cml.model.positional")
COMMIT_EVERY = 64  # entries between commits (a crash loses at most these, never the file)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS vectors (model TEXT, sha256 TEXT, seconds REAL, vector BLOB, PRIMARY KEY (model, sha256));
CREATE TABLE IF NOT EXISTS statistics (key TEXT PRIMARY KEY, mean REAL, std REAL);
"""


def default_folder() -> Path:
    """$CML_EMBED_CACHE, else $XDG_CACHE_HOME/cml/embeddings (~/.cache/cml/embeddings)."""
    if os.environ.get("CML_EMBED_CACHE"):
        return Path(os.environ["CML_EMBED_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cml" / "embeddings"


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _code_version() -> str:
    digest = hashlib.sha256()
    for name in CODE_MODULES:
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()


def model_key(model: str, settings: dict) -> str:
    """The key of every vector one model and one set of settings give: a checkpoint path is hashed by content."""
    import torch

    source = f"checkpoint:{file_sha256(model)}" if Path(model).is_file() else f"spec:{model}"
    text = json.dumps({"format": FORMAT, "model": source, "settings": settings, "code": _code_version(),
                       "torch": torch.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingCache:
    """Vectors of one model key in the cache folder: `get` before embedding a file, `put` after. The key may be
    set after opening: an untrained model's key holds the standardisation measured through `statistic`."""

    def __init__(self, folder: str | os.PathLike, key: str = ""):
        self.folder, self.key = Path(folder), key
        self.hits = self.misses = self._pending = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = self._open(self.folder / DB_NAME)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=60)
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        db.executescript(_SCHEMA)
        return db

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as err:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            for suffix in ("-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            log.warning("embedding cache %s cannot be read (%s): moved to %s, rebuilding", path, err, aside.name)
            return self._connect(path)

    def _content(self, path: str) -> Optional[str]:
        """The file's SHA-256: from the files table when size and mtime are unchanged, else hashed (None if gone)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        real = os.path.realpath(path)
        row = self.db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (real,)).fetchone()
        if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return row[2]
        try:
            sha = file_sha256(path)
        except OSError:
            return None
        self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (real, st.st_size, st.st_mtime_ns, sha))
        return sha

    def get(self, path: str) -> Optional[tuple[np.ndarray, float]]:
        """(vector, seconds embedded) of this file under this model key, or None (then embed it and `put`)."""
        sha = self._content(path)
        row = sha and self.db.execute("SELECT seconds, vector FROM vectors WHERE model = ? AND sha256 = ?",
                                      (self.key, sha)).fetchone()
        if not row:
            self.misses += 1
            return None
        self.hits += 1
        return np.frombuffer(row[1], dtype=np.float32).copy(), float(row[0])

    def statistic(self, paths: Sequence[str], settings: dict, measure: Callable[[], tuple[float, float]]) -> tuple[float, float]:
        """(mean, std) that `measure` takes from the files `paths` with `settings`: kept, and reused while the
        files' contents are unchanged, so an unchanged re-run decodes nothing for it either."""
        contents = [self._content(p) for p in paths]
        key = hashlib.sha256(json.dumps({"files": contents, "settings": settings, "code": _code_version()},
                                        sort_keys=True, default=str).encode()).hexdigest()
        row = self.db.execute("SELECT mean, std FROM statistics WHERE key = ?", (key,)).fetchone()
        if row:
            return float(row[0]), float(row[1])
        value = measure()
        if None not in contents:
            self.db.execute("INSERT OR REPLACE INTO statistics VALUES (?, ?, ?)", (key, *map(float, value)))
            self.commit()
        return value

    def put(self, path: str, vector: np.ndarray, seconds: float) -> None:
        sha = self._content(path)
        if sha is None:
            return
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        self.db.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", (self.key, sha, float(seconds), blob))
        self._pending += 1
        if self._pending >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        self.db.commit()
        self._pending = 0

    def close(self) -> None:
        self.commit()
        self.db.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
