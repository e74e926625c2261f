"""`cml scan` (cml.data.scan): every usable audio file under a folder, and why every other file was skipped."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cml.data.scan import scan_audio, write_skip_report
from tests.helpers import music, write_audio


def build_tree(root):
    """Good files in label folders and directly under root, plus one of each kind of bad file."""
    good = {
        "rock/a.flac": ("rock", 2),
        "rock/live/b.wav": ("rock", 1),
        "jazz/c.ogg": ("jazz", 1),
        "jazz/d.mp3": ("jazz", 2),
        "loose.wav": (None, 1),
    }
    for i, (rel, (_, ch)) in enumerate(good.items()):
        write_audio(root / rel, music(1.5, 22050, channels=ch, seed=i), 22050)
    flac = (root / "rock/a.flac").read_bytes()
    bad = {
        "rock/corrupt.wav": "not audio",
        "jazz/truncated.flac": "truncated",
        "jazz/empty.mp3": "empty",
        "notes.txt": "not an audio file",
        "rock/silent.flac": "silent",
        "rock/short.wav": "too short",
        "rock/a.wav": "duplicate id",
    }
    (root / "rock/corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "jazz/truncated.flac").write_bytes(flac[: len(flac) // 2])
    (root / "jazz/empty.mp3").write_bytes(b"")
    (root / "notes.txt").write_text("not music\n")
    write_audio(root / "rock/silent.flac", np.zeros(22050 * 2, np.float32), 22050)
    write_audio(root / "rock/short.wav", music(0.5, 22050), 22050)
    write_audio(root / "rock/a.wav", music(1.5, 22050), 22050)  # same id as rock/a.flac
    (root / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: ignored by design
    return good, bad


def test_scan_audio_keeps_good_files_and_reports_every_bad_one(tmp_path):
    good, bad = build_tree(tmp_path)
    result = scan_audio(tmp_path, progress=False)
    tracks, skipped = result.tracks, result.skipped

    assert list(tracks.columns) == ["id", "path", "label", "duration", "sample_rate", "channels", "format"]
    expected_ids = sorted(rel.rsplit(".", 1)[0] for rel in good)
    assert tracks["id"].tolist() == expected_ids
    by_id = tracks.set_index("id")
    for rel, (label, ch) in good.items():
        row = by_id.loc[rel.rsplit(".", 1)[0]]
        assert (row["label"] if label else None) == label or (label is None and pd.isna(row["label"]))
        assert row["channels"] == ch and row["sample_rate"] == 22050
        assert row["duration"] == pytest.approx(1.5, abs=0.01)
        assert os.path.samefile(row["path"], tmp_path / rel)
    assert by_id.loc["jazz/d", "format"].startswith("MP3")

    reasons = {os.path.relpath(p, tmp_path): r for p, r in zip(skipped["path"], skipped["reason"])}
    assert set(reasons) == set(bad)  # every bad file, nothing else (.DS_Store is hidden)
    for rel, fragment in bad.items():
        assert fragment in reasons[rel], (rel, reasons[rel])
        assert "\n" not in reasons[rel]


def test_scan_audio_is_deterministic_and_survives_symlink_loops(tmp_path):
    write_audio(tmp_path / "a/x.wav", music(1.2, 16000), 16000)
    os.symlink(tmp_path / "a", tmp_path / "a/loop")
    result = scan_audio(tmp_path, progress=False)
    assert result.tracks["id"].tolist() == ["a/x"]
    assert "already scanned" in result.skipped["reason"].iloc[0]
    assert scan_audio(tmp_path, progress=False).tracks.equals(result.tracks)


def test_scan_audio_reports_unreadable_folder(tmp_path, monkeypatch):
    write_audio(tmp_path / "ok/x.wav", music(1.2, 16000), 16000)
    locked = tmp_path / "locked"
    write_audio(locked / "y.wav", music(1.2, 16000), 16000)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads a chmod 000 folder: let listing it fail as it would for a user
        real_scandir = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        result = scan_audio(tmp_path, progress=False)
    finally:
        locked.chmod(0o755)
    assert result.tracks["id"].tolist() == ["ok/x"]
    assert result.skipped["path"].tolist() == [str(locked)]
    assert "unreadable folder" in result.skipped["reason"].iloc[0]


def test_scan_audio_missing_root_raises_clearly(tmp_path):
    with pytest.raises(NotADirectoryError, match="not found"):
        scan_audio(tmp_path / "nope", progress=False)


def test_skip_report_and_cli(tmp_path, capsys, cli_raising):
    good, bad = build_tree(tmp_path / "audio")
    report, out = tmp_path / "rep/skipped.csv", tmp_path / "tracks.csv"
    write_skip_report(scan_audio(tmp_path / "audio", progress=False).skipped, report)
    rows = pd.read_csv(report)
    assert list(rows.columns) == ["id", "path", "reason"] and rows["id"].isna().all() and len(rows) == len(bad)

    assert cli_raising("scan", tmp_path / "audio", "--report", report, "--out", out) == 0
    stdout = capsys.readouterr().out
    assert f"{len(good)} tracks" in stdout and f"{len(bad)} skipped" in stdout
    assert len(pd.read_csv(out)) == len(good)


def test_scan_says_no_such_file_for_a_file_gone_since_the_listing_and_broken_symlink_for_a_link(tmp_path, monkeypatch):
    import cml.data.scan

    write_audio(tmp_path / "a/x.wav", music(1.2, 16000), 16000)
    write_audio(tmp_path / "a/gone.wav", music(1.2, 16000), 16000)
    os.symlink(tmp_path / "nowhere.wav", tmp_path / "a/link.wav")
    real_walk = cml.data.scan._walk

    def walk_then_delete(root, skip):
        files = real_walk(root, skip)
        (tmp_path / "a/gone.wav").unlink()  # removed while the scan runs
        return files

    monkeypatch.setattr(cml.data.scan, "_walk", walk_then_delete)
    result = scan_audio(tmp_path, progress=False)
    reasons = {Path(p).name: r for p, r in zip(result.skipped["path"], result.skipped["reason"])}
    assert result.tracks["id"].tolist() == ["a/x"]
    assert reasons == {"gone.wav": "no such file (gone since the folder was listed)", "link.wav": "broken symlink"}
