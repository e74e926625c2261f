"""End to end: the real pipeline — real DVC, real papermill, real notebooks — on a tiny parameter set.

The repository is copied into a temporary git repo, so the runs here never touch the developer's outputs.
The tests in this module build on each other in order (first run, re-run, parameter change, user audio).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from tests.helpers import ROOT, write_tone

BIN = Path(sys.executable).parent  # the venv's bin: dvc, papermill and cml live there

pytestmark = pytest.mark.e2e

TINY_PARAMS = {
    "corpus": {
        "classes": ["bach_chorale", "celtic_fiddle", "essen_folk"],
        "pieces_per_class": 4,
        "max_seconds": 6.0,
        "min_seconds": 2.0,
    },
    "tracks": {"min_duration": 1.0},
    "features": {"max_seconds": 6.0},
    "data_analysis": {"projection": "pca", "example_seconds": 2.0},
    "study": {"variants": ["none", "rope2d"]},
    "model": {"dim": 32, "depth": 1, "heads": 2, "embed_dim": 32, "proj_dim": 16},
    "train": {
        "crop_seconds": 2.0,
        "batch_size": 4,
        "epochs": 1,
        "crops_per_track": 2,
        "min_steps": 1,
    },
}


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def update_params(repo: Path, changes: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def read_metrics(repo: Path) -> dict:
    return json.loads((repo / "outputs/data_analysis/metrics.json").read_text())


def notebook_errors(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for cell in nb.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git clone of the working tree (tracked and new files) with tiny params, after `dvc repro`."""
    dst = tmp_path_factory.mktemp("pipeline") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    update_params(dst, TINY_PARAMS)
    (dst / "data/audio").mkdir(parents=True)
    (dst / "data/spotify").mkdir(parents=True)
    sh("git", "init", "-q", cwd=dst)
    sh("git", "add", "-A", cwd=dst)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny params", cwd=dst)
    sh("dvc", "repro", cwd=dst)
    return dst


def test_first_run_produces_corpus_tracks_features_notebook_and_metrics(repo: Path):
    manifest = pd.read_csv(repo / "outputs/corpus/manifest.csv")
    assert set(manifest["label"]) == set(TINY_PARAMS["corpus"]["classes"])
    tracks = pd.read_csv(repo / "outputs/tracks/tracks.csv")
    assert len(tracks) == len(manifest)
    assert set(tracks["split"]) <= {"train", "val", "test"}
    assert (repo / "outputs/features/handcrafted.parquet").is_file()
    executed = repo / "outputs/notebooks/DataAnalysis.ipynb"
    assert notebook_errors(executed) == []
    nb = nbformat.read(executed, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    metrics = read_metrics(repo)
    assert metrics["n_tracks"] == len(tracks)
    assert metrics["n_labels"] == 3
    assert metrics["spotify_tracks"] == 0
    assert 0.0 <= metrics["handcrafted_knn_label_acc"] <= 1.0
    assert list((repo / "outputs/data_analysis/figures").glob("*.png"))
    playlists = json.loads((repo / "outputs/playlists/metrics.json").read_text())
    assert playlists["n_seeds"] >= 1 and playlists["playlist"]["n_tracks"] >= playlists["n_seeds"]
    for variant in TINY_PARAMS["study"]["variants"]:
        assert (repo / f"outputs/train/{variant}-s0/best.pt").is_file()
        assert notebook_errors(repo / f"outputs/notebooks/Train-{variant}-s0.ipynb") == []
        assert (repo / f"outputs/embeddings/{variant}-s0/tracks.8x.parquet").is_file()
    assert notebook_errors(repo / "outputs/notebooks/Compare.ipynb") == []
    comparison = json.loads((repo / "outputs/evaluate/metrics.json").read_text())
    assert {"contrastive/none", "contrastive/rope2d", "untrained/rope2d", "baseline/handcrafted"} <= set(comparison)
    assert set(comparison["contrastive/rope2d"]) >= {"knn_acc", "linear_acc", "nmi", "ari"}
    assert {"pretrained/pretrained", "pretrained/finetuned"} <= set(comparison)  # the shipped encoder, both ways
    tuned = json.loads((repo / "outputs/train/finetuned/metrics.json").read_text())
    assert tuned["init"] == "pretrained" and notebook_errors(repo / "outputs/notebooks/Train-finetuned.ipynb") == []
    clusters = json.loads((repo / "outputs/cluster_testing/metrics.json").read_text())
    assert {"none-s0", "rope2d-s0", "untrained-rope2d", "handcrafted"} <= set(clusters)
    assert 0.0 <= clusters["rope2d-s0"]["elki-ward"]["nmi"] <= 1.0 and "noise_fraction" in clusters["none-s0"]["dbscan"]


def test_status_is_clean_and_second_repro_runs_nothing(repo: Path):
    assert "up to date" in sh("dvc", "status", cwd=repo)
    second = sh("dvc", "repro", cwd=repo)
    assert "Running stage" not in second, second


def stale_stages(repo: Path, changes: dict) -> set[str]:
    """The stages `dvc status` reports after changing params.yaml (which is then restored)."""
    original = (repo / "params.yaml").read_text()
    try:
        update_params(repo, changes)
        return set(json.loads(sh("dvc", "status", "--json", cwd=repo)))
    finally:
        (repo / "params.yaml").write_text(original)


def test_adding_a_seed_or_a_variant_leaves_the_trained_stages_up_to_date(repo: Path):
    stale = stale_stages(repo, {"study": {"variants": ["none", "rope2d", "alibi1d"], "seeds": [0, 1]}})
    existing = {f"{stage}@{v}-0" for stage in ("train", "embed") for v in ("none", "rope2d")}
    assert not stale & (existing | {"embed_untrained@none", "embed_untrained@rope2d"}), stale
    assert {"train@none-1", "train@alibi1d-0", "embed@alibi1d-1", "embed_untrained@alibi1d", "evaluate"} <= stale


def test_the_frontend_invalidates_exactly_the_stages_that_read_it(repo: Path):
    stale = stale_stages(repo, {"frontend": {"hop_length": 200}})
    assert stale == {"features", "train@none-0", "train@rope2d-0", "embed_untrained@none", "embed_untrained@rope2d"}
    assert stale_stages(repo, {"model": {"heads": 4}}) == {"train@none-0", "train@rope2d-0", "embed_untrained@none",
                                                           "embed_untrained@rope2d"}
    assert stale_stages(repo, {"train": {"epochs": 2}}) == {"train@none-0", "train@rope2d-0", "finetune"}


def test_changed_param_shows_in_metrics_diff(repo: Path):
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first run", cwd=repo)
    before = read_metrics(repo)["n_tracks"]
    update_params(repo, {"corpus": {"pieces_per_class": 5}})
    sh("dvc", "repro", cwd=repo)
    after = read_metrics(repo)["n_tracks"]
    assert after > before
    diff = json.loads(sh("dvc", "metrics", "diff", "--json", cwd=repo))
    change = diff["outputs/data_analysis/metrics.json"]["n_tracks"]
    assert (change["old"], change["new"]) == (before, after)


def test_user_audio_with_bad_files_is_reported_and_pipeline_runs(repo: Path):
    audio = repo / "data/audio"
    for label, base in [("low", 220.0), ("high", 1760.0)]:
        (audio / label).mkdir()
        for i in range(5):
            write_tone(audio / label / f"tone{i}.wav", 3.0, base * (1 + 0.1 * i), sr=22050, tremolo_hz=2)
    bad = {
        "low/corrupt.wav": b"RIFF\x00\x00junk" + os.urandom(2000),
        "low/empty.flac": b"",
        "high/notes.txt": b"not audio",
    }
    for rel, content in bad.items():
        (audio / rel).write_bytes(content)
    sf.write(audio / "high/silence.wav", np.zeros(22050 * 3, dtype=np.float32), 22050)

    sh("dvc", "add", "data", cwd=repo)
    sh("dvc", "repro", cwd=repo)

    assert "study.audio is 'auto'" in (repo / "outputs/corpus/not_rendered.txt").read_text()  # no corpus rendered
    assert pd.read_csv(repo / "outputs/corpus/manifest.csv").empty
    tracks = pd.read_csv(repo / "outputs/tracks/tracks.csv")
    assert sorted(tracks["label"].value_counts().to_dict().items()) == [("high", 5), ("low", 5)]
    skipped = pd.read_csv(repo / "outputs/tracks/skipped.csv")
    skipped_names = {Path(p).name for p in skipped["path"]}
    assert skipped_names == {"corrupt.wav", "empty.flac", "notes.txt", "silence.wav"}
    assert skipped["reason"].str.len().gt(0).all()
    metrics = read_metrics(repo)
    assert metrics["n_tracks"] == 10 and metrics["n_skipped"] == 4
    assert notebook_errors(repo / "outputs/notebooks/DataAnalysis.ipynb") == []
    assert notebook_errors(repo / "outputs/notebooks/Compare.ipynb") == []
