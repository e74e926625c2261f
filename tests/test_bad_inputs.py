"""Bad input across the CLI: one line on stderr, a documented exit code, and every good input still through.

Each case names the class of mistake from the README's "When something is wrong"; the Spotify, ELKI,
playlist and clustering cases live beside their modules' tests.
"""
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from cml.audio.mel import MelConfig
from cml.cli import main
from cml.data.scan import length_slack, scan_audio
from cml.embed.tracks import estimate_normalizer
from cml.model.checkpoint import Normalizer, save_checkpoint, untrained_encoder
from cml.model.encoder import EncoderConfig
from cml.tables import read_feature_table, read_tracks, write_feature_table
from cml.train.data import readable_crops
from cml.train.loop import train
from tests.helpers import SR, sine, write_tone

TINY_MODEL = dict(dim=32, depth=1, heads=2, embed_dim=16, proj_dim=16)
TINY_TRAIN = dict(crop_seconds=0.64, batch_size=4, epochs=1, crops_per_track=2, min_steps=1, norm_crops=8)


def poisoned(path: Path, value: float = np.nan, seconds: float = 2.0) -> Path:
    """A float WAV that plays a tone but holds a non-finite sample every 0.25 s (in any crop)."""
    x = sine(330, seconds, SR, amp=0.3)
    x[1000::SR // 4] = value
    sf.write(path, x, SR, subtype="FLOAT")
    return path


def run(argv, capsys) -> tuple[int, list[str]]:
    """Exit code and the stderr lines of `cml ARGV`."""
    code = main([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def one_error(lines: list[str], command: str, *fragments: str) -> None:
    """Exactly one error line, prefixed with the command, containing every fragment; no traceback."""
    errors = [line for line in lines if line.startswith(f"cml {command}: error: ")]
    assert len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# --------------------------------------------------------------------------------------------------
# Audio: what the scan keeps and what it says about the rest


def set_ogg_length(path: Path, extra: int) -> None:
    """Claim `extra` more samples in the last Ogg page's granule position (CRC fixed): how valid files
    whose header promises a few ms more than they decode look, and how truncated ones do."""
    data = bytearray(path.read_bytes())
    last = data.rfind(b"OggS")
    granule = struct.unpack_from("<q", data, last + 6)[0]
    struct.pack_into("<q", data, last + 6, granule + extra)
    n_seg = data[last + 26]
    size = 27 + n_seg + sum(data[last + 27:last + 27 + n_seg])
    struct.pack_into("<I", data, last + 22, 0)
    crc = 0
    for byte in data[last:last + size]:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    struct.pack_into("<I", data, last + 22, crc)
    path.write_bytes(bytes(data))


def test_scan_skips_bad_audio_with_what_is_wrong_and_keeps_every_good_file(tmp_path):
    root = tmp_path / "audio"
    (root / "a").mkdir(parents=True)
    good = [write_tone(root / "a" / f"good{i}.wav", freq=300 + 50 * i) for i in range(3)]
    short_ogg = write_tone(root / "a" / "slightly_short.ogg", seconds=3.0, sr=44100, format="OGG", subtype="VORBIS")
    set_ogg_length(short_ogg, 600)  # the header claims ~5 ms more than the data holds: a valid release
    truncated = write_tone(root / "a" / "truncated.ogg", seconds=3.0, sr=44100, format="OGG", subtype="VORBIS")
    set_ogg_length(truncated, 8820)  # 0.2 s missing: real truncation
    bad = {
        poisoned(root / "a" / "nan.wav"): "non-finite samples",
        poisoned(root / "a" / "inf.wav", np.inf): "non-finite samples",
        root / "a" / "text.mp3": "not audio",
        truncated: "truncated",
        write_tone(root / "a" / "new\nline.wav"): "control character",
    }
    (root / "a" / "text.mp3").write_text("this is a text file renamed to .mp3\n")
    all_nan = root / "a" / "all_nan.wav"
    sf.write(all_nan, np.full(SR * 2, np.nan, np.float32), SR, subtype="FLOAT")
    bad[all_nan] = "non-finite samples"  # not "silent"

    result = scan_audio(root, progress=False)
    assert sorted(Path(p).name for p in result.tracks["path"]) == sorted([p.name for p in good] + [short_ogg.name])
    reasons = dict(zip(result.skipped["path"], result.skipped["reason"]))
    assert len(reasons) == len(bad)
    for path, fragment in bad.items():
        assert fragment in reasons[str(path)], (path, reasons[str(path)])
        assert "\n" not in reasons[str(path)]
    assert len(result.tracks) + len(result.skipped) == len(good) + 1 + len(bad)  # nothing lost, nothing twice


def test_ogg_tolerance_is_a_tenth_of_a_second_plus_one_percent_and_mp3_s_two_frames():
    assert length_slack("OGG/VORBIS", 44100, 10 * 44100) == 8820  # 0.1 s + 1 % of 10 s: 5,806 short is kept
    assert length_slack("OGG/VORBIS", 44100, 3 * 44100) == 5733  # a 3-s file 0.2 s (8820) short is truncated
    assert length_slack("OGG", 48000) == 4800
    assert length_slack("MP3/MPEG_LAYER_III", 44100, 10 * 44100) == 2 * 1152  # MP3 lengths are exact to a frame
    assert length_slack("WAV/PCM_16", 44100, 10 * 44100) == 0


def test_scan_keeps_an_ogg_a_few_packets_short_with_a_note_and_skips_real_truncation(tmp_path, caplog):
    """A real Vorbis release decodes 5,806 frames (0.13 s) short of its header and plays in full everywhere:
    such a file is kept, with a note in the log. A header that promises twice the data, and an MP3 cut in half, are not."""
    root = tmp_path / "audio"
    root.mkdir()
    short = write_tone(root / "short.ogg", seconds=10.0, sr=44100, format="OGG", subtype="VORBIS")
    set_ogg_length(short, 5806)
    shortfall = sf.info(short).frames - len(sf.read(short)[0])  # less than 5,806: the last packet's padding decodes
    assert 0.1 * 44100 < shortfall < 5806  # more than the old tolerance (0.1 s) accepted
    half = write_tone(root / "half.ogg", seconds=3.0, sr=44100, format="OGG", subtype="VORBIS")
    set_ogg_length(half, 3 * 44100)
    mp3 = write_tone(tmp_path / "cut.mp3", seconds=10.0, sr=44100, format="MP3", subtype="MPEG_LAYER_III").read_bytes()
    (root / "cut.mp3").write_bytes(mp3[:len(mp3) // 2])
    with caplog.at_level("INFO", logger="cml.data.scan"):
        result = scan_audio(root, progress=False)
    assert result.tracks["id"].tolist() == ["short"]
    assert result.tracks["duration"].iloc[0] == (sf.info(short).frames - shortfall) / 44100  # as decoded
    reasons = {Path(p).name: r for p, r in zip(result.skipped["path"], result.skipped["reason"])}
    assert set(reasons) == {"half.ogg", "cut.mp3"} and all(r.startswith("truncated") for r in reasons.values())
    notes = [r.getMessage() for r in caplog.records if "short.ogg" in r.getMessage()]
    assert len(notes) == 1 and f"decoded {44100 * 10 + 5806 - shortfall} of the 446806 frames" in notes[0], notes


def test_embed_of_a_folder_keeps_the_ogg_a_few_packets_short_too(tmp_path):
    """`cml embed AUDIO_DIR` reads headers only and finds truncation while decoding: the same tolerance."""
    root = tmp_path / "audio"
    root.mkdir()
    set_ogg_length(write_tone(root / "short.ogg", seconds=10.0, sr=44100, format="OGG", subtype="VORBIS"),
                   8000)  # 0.18 s
    set_ogg_length(write_tone(root / "half.ogg", seconds=3.0, sr=44100, format="OGG", subtype="VORBIS"),
                   3 * 44100)
    out, skipped = tmp_path / "emb.parquet", tmp_path / "skipped.csv"
    tiny = [a for s in ("dim=16", "depth=1", "heads=2", "embed_dim=8", "proj_dim=8") for a in ("--set", s)]
    assert main(["embed", "untrained:none", str(root), "--out", str(out), "--skipped", str(skipped), "--quiet",
                 "--device", "cpu", "--no-cache", "--workers", "0", *tiny]) == 0
    assert read_feature_table(out).ids.tolist() == ["short"]
    report = pd.read_csv(skipped)
    assert [Path(p).name for p in report["path"]] == ["half.ogg"] and report["reason"][0].startswith("truncated")


def test_embed_of_a_folder_decodes_each_file_once_and_still_reports_every_bad_one(tmp_path, monkeypatch, capsys):
    """`cml embed AUDIO_DIR` scans headers only; what a full scan finds by decoding, the embedding finds."""
    import cml.data.scan
    import cml.embed.tracks

    root = tmp_path / "audio"
    (root / "a").mkdir(parents=True)
    good = [write_tone(root / "a" / f"good{i}.wav", freq=300 + 50 * i) for i in range(3)]
    short_ogg = write_tone(root / "a" / "slightly_short.ogg", seconds=3.0, sr=44100, format="OGG", subtype="VORBIS")
    set_ogg_length(short_ogg, 600)  # within the Ogg tolerance: kept
    truncated = write_tone(root / "a" / "truncated.ogg", seconds=3.0, sr=44100, format="OGG", subtype="VORBIS")
    set_ogg_length(truncated, 8820)
    sf.write(root / "a" / "silent.wav", np.zeros(SR * 2, np.float32), SR)
    bad = {str(poisoned(root / "a" / "nan.wav")): "non-finite", str(truncated): "truncated",
           str(root / "a" / "silent.wav"): "silent", str(root / "a" / "text.mp3"): "not audio"}
    (root / "a" / "text.mp3").write_text("this is a text file renamed to .mp3\n")
    decoded, scanned = [], []
    real_logmels, real_frames = cml.embed.tracks.iter_logmels, cml.data.scan.iter_frames
    monkeypatch.setattr(cml.embed.tracks, "iter_logmels", lambda paths, *a, **k: decoded.extend(paths) or real_logmels(paths, *a, **k))
    monkeypatch.setattr(cml.data.scan, "iter_frames", lambda *a, **k: scanned.append(a) or real_frames(*a, **k))
    out, report = tmp_path / "e.parquet", tmp_path / "skipped.csv"
    code, _ = run(["embed", "untrained:none", root, "--out", out, "--skipped", report, "--quiet", "--no-cache",
                   *[a for kv in ("dim=16", "depth=1", "heads=2", "embed_dim=8") for a in ("--set", kv)]], capsys)
    assert code == 0 and not scanned  # the scan read headers only
    assert sorted(decoded) == sorted({*map(str, good), str(short_ogg), *bad} - {str(root / "a" / "text.mp3")})
    assert sorted(Path(p).name for p in read_feature_table(out).meta["path"]) == \
        sorted([p.name for p in good] + [short_ogg.name])
    reasons = dict(zip(*pd.read_csv(report)[["path", "reason"]].to_numpy().T))
    assert set(reasons) == set(bad)
    for path, fragment in bad.items():
        assert fragment in reasons[path], (path, reasons[path])


def test_scan_command_reports_skips_and_checks_its_options(tmp_path, capsys):
    root = tmp_path / "audio"
    root.mkdir()
    write_tone(root / "ok.wav")
    poisoned(root / "bad.wav")
    code, _ = run(["scan", root, "--report", tmp_path / "skipped.csv", "--out", tmp_path / "tracks.csv"], capsys)
    assert code == 0
    assert len(pd.read_csv(tmp_path / "tracks.csv")) == 1 and len(pd.read_csv(tmp_path / "skipped.csv")) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["scan", str(root), "--report", str(tmp_path / "s.csv"), "--min-duration", "-1"])
    assert exit_.value.code == 2 and "must be a finite number > 0" in capsys.readouterr().err
    code, lines = run(["scan", tmp_path / "nowhere", "--report", tmp_path / "s.csv"], capsys)
    assert code == 2
    one_error(lines, "scan", "audio folder not found", "nowhere")
    code, lines = run(["scan", root, "--report", tmp_path], capsys)  # a folder where a file goes
    assert code == 2
    one_error(lines, "scan", "is a folder")


# --------------------------------------------------------------------------------------------------
# Statistics shared across tracks cannot be poisoned by one file


def test_one_non_finite_file_does_not_poison_the_untrained_normaliser(tmp_path):
    paths = [str(write_tone(tmp_path / f"t{i}.wav", freq=200 + 100 * i)) for i in range(3)]
    clean = estimate_normalizer(paths, MelConfig())
    with_bad = estimate_normalizer([*paths, str(poisoned(tmp_path / "bad.wav"))], MelConfig())
    assert np.isfinite([with_bad.mean, with_bad.std]).all()
    assert (with_bad.mean, with_bad.std) == pytest.approx((clean.mean, clean.std))


@pytest.mark.parametrize("in_memory", [True, False])
def test_training_skips_an_unreadable_track_and_reports_it(tmp_path, in_memory):
    rows = []
    for i in range(8):
        path = write_tone(tmp_path / f"t{i}.wav", freq=200 + 60 * i)
        rows.append({"id": f"{i:03d}", "path": str(path), "label": "ab"[i % 2], "duration": 2.0,
                     "split": "val" if i >= 6 else "train"})
    rows[1]["path"] = str(poisoned(tmp_path / "nan.wav"))
    (tmp_path / "text.wav").write_text("not audio")
    rows[2]["path"] = str(tmp_path / "text.wav")
    rows[3]["path"] = str(tmp_path / "gone.wav")
    csv = tmp_path / "tracks.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)

    crops, kept, skipped = readable_crops(read_tracks(csv).iloc[:6], MelConfig(), in_memory, progress=False)
    assert len(crops) == len(kept) == 6 - (3 if in_memory else 2)  # disk mode cannot see the NaN without decoding

    out = tmp_path / "out"
    metrics = train({**TINY_TRAIN, "model": TINY_MODEL, "cache": "memory" if in_memory else "disk"}, csv, out,
                    progress=False)
    assert np.isfinite(metrics["val_ntxent"])  # the NaN file never reached the normaliser or the loss
    report = pd.read_csv(out / "skipped.csv", dtype=str)
    assert set(report["path"]) == {rows[1]["path"], rows[2]["path"], rows[3]["path"]}
    if in_memory:
        assert set(report["id"].dropna()) == {"001", "002", "003"}  # ids stay text: 001, not 1
    else:  # the NaN file is found when a crop of it is read, and its crops become silence
        assert "non-finite samples" in report.set_index("path").loc[rows[1]["path"], "reason"]


def test_features_skip_a_track_with_non_finite_samples_and_keep_the_rest(tmp_path, capsys):
    paths = [write_tone(tmp_path / f"{i}.wav", freq=300 + 80 * i) for i in range(3)]
    paths[1] = poisoned(tmp_path / "nan.wav")
    csv = tmp_path / "tracks.csv"
    pd.DataFrame({"id": ["01", "02", "03"], "path": list(map(str, paths)), "label": "x"}).to_csv(csv, index=False)
    params = tmp_path / "params.yaml"
    params.write_text("features: {max_seconds: null}\nfrontend: {}\n")
    code, _ = run(["features", "--params", params, "--tracks", csv, "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert read_feature_table(tmp_path / "out" / "handcrafted.parquet").ids.tolist() == ["01", "03"]
    assert pd.read_csv(tmp_path / "out" / "skipped.csv", dtype=str)["id"].tolist() == ["02"]


# --------------------------------------------------------------------------------------------------
# Ids are text everywhere


def test_ids_that_look_like_numbers_or_missing_values_survive_every_table(tmp_path):
    ids = ["007", "nan", "NA", "null", "1e3", "None"]
    csv = tmp_path / "tracks.csv"
    pd.DataFrame({"id": ids, "path": [f"{i}.wav" for i in range(6)], "label": ["x", "", "y", "NA", "x", "y"],
                  "duration": 2.0}).to_csv(csv, index=False)
    tracks = read_tracks(csv)
    assert tracks["id"].tolist() == ids
    assert tracks["label"].isna().tolist() == [False, True, False, False, False, False]  # only an empty field
    assert tracks["label"].dropna().tolist() == ["x", "y", "NA", "x", "y"]
    assert tracks["duration"].dtype == float

    X = np.arange(12, dtype=float).reshape(6, 2)
    for suffix in ("csv", "parquet"):
        table = read_feature_table(write_feature_table(tmp_path / f"f.{suffix}", ids, X, labels=tracks["label"]))
        assert table.ids.tolist() == ids
        np.testing.assert_array_equal(table.X, X)
    with pytest.raises(Exception, match="empty id"):
        bad = tmp_path / "empty.csv"
        bad.write_text("id,path\n,a.wav\nb,b.wav\n")
        read_tracks(bad)


# --------------------------------------------------------------------------------------------------
# Commands: usage errors (2), unusable inputs (1), outputs checked before the work


@pytest.fixture
def library(tmp_path):
    audio = tmp_path / "audio" / "x"
    audio.mkdir(parents=True)
    paths = [write_tone(audio / f"{i:03d}.wav", freq=250 + 40 * i) for i in range(4)]
    csv = tmp_path / "tracks.csv"
    pd.DataFrame({"id": [f"{i:03d}" for i in range(4)], "path": list(map(str, paths)), "label": "x",
                  "duration": 2.0, "split": ["train", "train", "test", "test"]}).to_csv(csv, index=False)
    return csv


def checkpoint(path: Path) -> Path:
    cfg = EncoderConfig(variant="none", **TINY_MODEL)
    save_checkpoint(path, model=untrained_encoder(cfg), optimizer=None, scheduler=None, epoch=1, step=1,
                    encoder_config=cfg, mel_config=MelConfig(), norm=Normalizer(-5.0, 4.0), train_config={},
                    metrics={}, rng_state={})
    return path


EMBED_USAGE = [  # (extra arguments, fragment of the message)
    (["--max-seconds", "0"], "must be a finite number > 0"),
    (["--window-seconds", "-2", "--mode", "chunked"], "must be a finite number > 0"),
    (["--crops", "nan"], "must be a finite number > 0"),
    (["--only-split", "validation"], "not a split"),
    (["--device", "cuda:7"], "no such CUDA device"),
    (["--device", "tpu:0"], "not a device name"),
    (["--seed", "x"], "invalid int value"),
]


@pytest.mark.parametrize("extra,fragment", EMBED_USAGE, ids=[" ".join(e) for e, _ in EMBED_USAGE])
def test_embed_rejects_option_values_outside_their_domain(library, tmp_path, capsys, extra, fragment):
    out = tmp_path / "emb.parquet"
    try:
        code, lines = run(["embed", "untrained:none", "--tracks", library, "--out", out, *extra], capsys)
        err = "\n".join(lines)
    except SystemExit as exit_:  # argparse's own parse-time check
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("cml embed: error: ") and "Traceback" not in err
    assert not out.exists()


def test_embed_checks_inputs_and_outputs_before_any_work(library, tmp_path, capsys):
    code, lines = run(["embed", "untrained:none", "--tracks", tmp_path / "missing.csv", "--out", tmp_path / "e.parquet"],
                      capsys)
    assert code == 2
    one_error(lines, "embed", "tracks table not found", "missing.csv")
    (tmp_path / "file").write_text("")
    code, lines = run(["embed", "untrained:none", "--tracks", library, "--out", tmp_path / "file" / "e.parquet"], capsys)
    assert code == 2
    one_error(lines, "embed", "cannot write", "is a file")


def _truncated(path: Path) -> Path:
    data = checkpoint(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mismatched(path: Path) -> Path:
    checkpoint(path)
    state = torch.load(path, weights_only=True)
    state["encoder_config"]["dim"] = 64  # weights of a width-32 model under a width-64 config
    torch.save(state, path)
    return path


def _foreign(path: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def _text(path: Path) -> Path:
    path.write_text("not a checkpoint")
    return path


@pytest.mark.parametrize("make", [_truncated, _mismatched, _foreign, _text])
def test_an_unusable_checkpoint_is_one_line_not_a_traceback(library, tmp_path, capsys, make):
    ckpt = make(tmp_path / "model.pt")
    code, lines = run(["embed", ckpt, "--tracks", library, "--out", tmp_path / "e.parquet"], capsys)
    assert code == 1
    one_error(lines, "embed", "not a cml checkpoint", "model.pt")


def test_embed_skips_a_track_that_fails_and_keeps_the_others(library, tmp_path, capsys):
    tracks = pd.read_csv(library, dtype=str)
    tracks.loc[1, "path"] = str(poisoned(tmp_path / "nan.wav"))  # past the scan: listed in a table by hand
    tracks.loc[2, "path"] = str(tmp_path / "gone.wav")
    tracks.to_csv(library, index=False)
    out, report = tmp_path / "e.parquet", tmp_path / "skipped.csv"
    code, _ = run(["embed", checkpoint(tmp_path / "m.pt"), "--tracks", library, "--out", out, "--skipped", report,
                   "--quiet"], capsys)
    assert code == 0
    assert read_feature_table(out).ids.tolist() == ["000", "003"]
    assert pd.read_csv(report, dtype=str)["id"].tolist() == ["001", "002"]


def test_params_mistakes_are_usage_errors_naming_the_file(library, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("train: [unclosed\n")
    code, lines = run(["train", "--params", params, "--tracks", library, "--out", tmp_path / "o"], capsys)
    assert code == 2
    one_error(lines, "train", "not valid YAML", "params.yaml")
    params.write_text(json.dumps({"train": {**TINY_TRAIN, "epochz": 3}, "model": TINY_MODEL, "frontend": {}}))
    code, lines = run(["train", "--params", params, "--tracks", library, "--out", tmp_path / "o"], capsys)
    assert code == 2
    one_error(lines, "train", "params.yaml", "epochz")
    params.write_text(json.dumps({"train": {**TINY_TRAIN, "device": "cuda:3"}, "model": TINY_MODEL, "frontend": {}}))
    code, lines = run(["train", "--params", params, "--tracks", library, "--out", tmp_path / "o"], capsys)
    assert code == 2
    one_error(lines, "train", "no such CUDA device")
    assert not (tmp_path / "o").exists()


def test_an_unexpected_error_is_one_line_unless_debug_asks_for_the_traceback(monkeypatch, library, tmp_path, capsys):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("inside the encoder")

    monkeypatch.setattr("cml.embed.library.embed_tracks", boom)
    argv = ["embed", "untrained:none", "--tracks", library, "--out", tmp_path / "e.parquet", "--quiet"]
    code, lines = run(argv, capsys)
    assert code == 1
    one_error(lines, "embed", "unexpected ZeroDivisionError: inside the encoder", "--debug")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *map(str, argv)])
    monkeypatch.setenv("CML_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(list(map(str, argv)))
