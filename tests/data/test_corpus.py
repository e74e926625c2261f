"""The embedded corpus: real music21 scores rendered with real FluidSynth, built tiny (4 s excerpts)."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from cml.data import corpus
from cml.data.corpus import MANIFEST_COLUMNS, PROGRAM_POOL, CorpusConfig, StyleClass, build_corpus, draw_programs
from cml.errors import CmlError, UsageError

TINY = dict(classes=["bach_chorale", "essen_folk"], pieces_per_class=2, max_seconds=4.0, min_seconds=2.0, workers=1,
            draws=1)
STUDY = {"audio": "corpus", "variants": ["none"], "seeds": [0]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return build_corpus(CorpusConfig(**TINY), out, progress=False), out


def test_manifest_rows_point_at_mono_flac_files_at_the_requested_rate(tiny):
    manifest, out = tiny
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest.groupby("label").size().to_dict() == {"bach_chorale": 2, "essen_folk": 2}
    assert manifest["id"].is_unique
    assert set(manifest["composer"]) == {"bach", "traditional"}
    assert manifest["source"][manifest["label"] == "essen_folk"].str.contains(r"^essenFolksong/.+\.abc#\d+$").all()
    for row in manifest.itertuples():
        assert row.path == f"audio/{row.label}/{row.id}.flac"
        info = sf.info(out / row.path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        audio, _ = sf.read(out / row.path)
        assert 2.0 <= len(audio) / 16000 <= 4.0
        assert row.duration == pytest.approx(len(audio) / 16000, abs=1e-3)
        assert np.abs(audio).max() == pytest.approx(corpus.PEAK, abs=0.01)  # peak-normalised
        assert np.abs(audio[-50:]).max() < 0.05  # faded out
    assert pd.read_csv(out / "manifest.csv", keep_default_na=False)["id"].tolist() == manifest["id"].tolist()


def test_cli_rebuild_with_two_workers_is_byte_identical(tiny, tmp_path, cli_raising):
    manifest, first = tiny
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"corpus": {**TINY, "workers": 2}, "study": STUDY, "other_stage": {"x": 1}}))
    assert cli_raising("corpus", "--params", tmp_path / "params.yaml", "--out", tmp_path / "again") == 0
    second = tmp_path / "again"
    assert (second / "manifest.csv").read_bytes() == (first / "manifest.csv").read_bytes()
    for path in manifest["path"]:
        assert (second / path).read_bytes() == (first / path).read_bytes(), path


def test_shared_pool_replaces_the_scores_own_instruments(tiny, tmp_path):
    manifest, _ = tiny
    drawn = [[int(p) for p in row.split(";")] for row in manifest["programs"]]
    assert all(set(progs) <= set(PROGRAM_POOL) for progs in drawn)
    bach = manifest[manifest["label"] == "bach_chorale"]
    own = build_corpus(CorpusConfig(**{**TINY, "classes": ["bach_chorale"], "instrumentation": "score"}), tmp_path, False)
    assert own["id"].tolist() == bach["id"].tolist()  # same pieces ...
    assert (own["programs"] != bach["programs"].to_numpy()).all()  # ... other instruments
    assert set(own["programs"]) == {"0;0;0;0"}  # music21 exports vocal parts as piano


def test_program_draw_does_not_depend_on_the_class():
    """Drawn from the piece id and seed only: both classes' ids cover the whole pool alike."""
    for ids in (
        [f"bach-bwv{i}" for i in range(200)],
        [f"essenFolksong-han1-x{i}" for i in range(200)],
    ):
        drawn = [p for i in ids for p in draw_programs(list(PROGRAM_POOL), 4, seed=0, piece_id=i)]
        assert set(drawn) == set(PROGRAM_POOL)
        assert max(np.bincount(drawn)) < 2 * len(drawn) / len(PROGRAM_POOL)  # no program dominates
    assert draw_programs([1, 2, 3], 4, 0, "a") == draw_programs([1, 2, 3], 4, 0, "a")
    assert draw_programs([1, 2, 3], 4, 0, "a", draw=1) != draw_programs([1, 2, 3], 4, 0, "a")


def test_a_broken_score_is_skipped_with_a_reason_and_the_build_goes_on(tmp_path, monkeypatch):
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "good.abc").write_text("X:1\nT:Good\nM:4/4\nL:1/4\nQ:1/4=120\nK:C\nCDEF|GABc|cBAG|FEDC|]\n")
    (scores / "broken.xml").write_text("<?xml version='1.0'?><score-partwise><part id='P1'><measure")
    (scores / "empty.abc").write_text("X:1\nT:Nothing\nK:C\n")
    monkeypatch.setitem(corpus.CLASSES, "mini", StyleClass((str(scores),), ("*.abc", "*.xml"), "tester"))
    config = CorpusConfig(classes=["mini"], pieces_per_class=3, max_seconds=4.0, min_seconds=2.0, workers=1, draws=1)
    manifest = build_corpus(config, tmp_path / "out", progress=False)
    assert manifest["source"].tolist() == ["scores/good.abc"]
    assert manifest["title"].tolist() == ["Good"]
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert sorted(skipped["source"]) == ["scores/broken.xml", "scores/empty.abc"]
    assert skipped["reason"].str.len().gt(5).all()


def test_second_instrument_draw_is_a_row_of_its_own_for_the_same_piece(tmp_path):
    config = CorpusConfig(**{**TINY, "classes": ["bach_chorale"], "pieces_per_class": 1, "draws": 2})
    manifest = build_corpus(config, tmp_path, progress=False)
    assert len(manifest) == 2 and manifest["piece"].nunique() == 1
    first, second = manifest.sort_values("draw").to_dict("records")
    assert (first["draw"], second["draw"]) == (0, 1)
    assert first["id"] == first["piece"] and second["id"] == f"{first['piece']}__draw1"
    assert second["path"] == f"audio/bach_chorale/{second['id']}.flac"
    assert first["programs"] != second["programs"]  # a new instrument draw, the same notes
    a, _ = sf.read(tmp_path / first["path"])
    b, _ = sf.read(tmp_path / second["path"])
    assert not np.array_equal(a[: len(b)], b[: len(a)])


def test_from_dict_rejects_unknown_keys_and_bad_values():
    assert CorpusConfig.from_dict(None) == CorpusConfig()
    assert CorpusConfig.from_dict({"pieces_per_class": 3}).pieces_per_class == 3
    with pytest.raises(ValueError, match=r"unknown keys in 'corpus': \['piece_per_class'\]"):
        CorpusConfig.from_dict({"piece_per_class": 3})
    with pytest.raises(ValueError, match="unknown"):
        CorpusConfig.from_dict({"classes": ["bach_chorale", "jazz"]})
    with pytest.raises(ValueError, match="instrumentation"):
        CorpusConfig.from_dict({"instrumentation": "random"})


def test_metadata_is_folded_to_one_line():
    assert corpus.one_line("Anonymous D-Bs 261 (Cfirm)\nI-Rvat 1419  (Cp) ") == "Anonymous D-Bs 261 (Cfirm) I-Rvat 1419 (Cp)"


def test_cli_refuses_a_missing_or_wrong_params_file_or_output_with_a_usage_error(tmp_path, cli_raising):
    params = tmp_path / "params.yaml"
    with pytest.raises(UsageError, match=f"params file not found: {params}"):
        cli_raising("corpus", "--params", params, "--out", tmp_path / "out")
    for text, reason in [("corpus: {piece_per_class: 3}\n", r"unknown keys in 'corpus': \['piece_per_class'\]"),
                         ("corpus: [1, 2]\n", "must be a mapping"),
                         ("tracks: {}\n", "has no 'corpus' section"),
                         ("corpus: {classes: [bach_chorale\n", "not valid YAML")]:
        params.write_text(text)
        with pytest.raises(UsageError, match=f"^{params}.*{reason}") as err:
            cli_raising("corpus", "--params", params, "--out", tmp_path / "out")
        assert "\n" not in str(err.value) and err.value.exit_code == 2
    params.write_text(yaml.safe_dump({"corpus": {"pieces_per_class": 1}, "study": STUDY}))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        cli_raising("corpus", "--params", params, "--out", tmp_path / "a-file")


def _truncated_soundfont(path):
    path.write_bytes(corpus.default_soundfont().read_bytes()[:100_000])  # a valid header, then cut off


BAD_SOUNDFONTS = {  # how the file is made, the error, its message
    "missing": (lambda path: None, UsageError, "soundfont not found"),
    "folder": (lambda path: path.mkdir(), UsageError, "soundfont is a folder"),
    "empty": (lambda path: path.write_bytes(b""), CmlError, "is not a SoundFont 2 file"),
    "text renamed .sf2": (lambda path: path.write_text("not a soundfont\n" * 10), CmlError, "is not a SoundFont 2 file"),
    "truncated": (_truncated_soundfont, CmlError, "FluidSynth cannot load soundfont"),
}


@pytest.mark.parametrize("make, error, message", BAD_SOUNDFONTS.values(), ids=BAD_SOUNDFONTS.keys())
def test_a_soundfont_fluidsynth_cannot_load_stops_the_build_before_rendering(tmp_path, monkeypatch, make, error,
                                                                            message):
    def no_render(task):
        raise AssertionError("rendering started")

    monkeypatch.setattr(corpus, "_render_task", no_render)
    soundfont = tmp_path / "font.sf2"
    make(soundfont)
    config = CorpusConfig(**{**TINY, "classes": ["bach_chorale"], "pieces_per_class": 1, "soundfont": str(soundfont)})
    with pytest.raises(error, match=message) as err:
        build_corpus(config, tmp_path / "out", progress=False)
    assert str(soundfont) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("audio,user_files,renders", [("auto", True, False), ("data", False, False),
                                                      ("corpus", True, True), ("auto", False, True)])
def test_the_corpus_is_rendered_only_when_the_study_runs_on_it(tmp_path, audio, user_files, renders, cli_raising):
    (tmp_path / "data" / "audio").mkdir(parents=True)
    if user_files:
        (tmp_path / "data" / "audio" / "mine.flac").write_bytes(b"x")
    params = tmp_path / "params.yaml"
    tiny = {**TINY, "classes": ["bach_chorale"], "pieces_per_class": 1}
    params.write_text(yaml.safe_dump({"corpus": tiny, "study": {**STUDY, "audio": audio}}))
    assert cli_raising("corpus", "--params", params, "--out", tmp_path / "out", "--data", tmp_path / "data") == 0
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == (1 if renders else 0)
    assert (tmp_path / "out" / corpus.NOT_RENDERED).is_file() != renders
    if not renders:
        assert "study.audio" in (tmp_path / "out" / corpus.NOT_RENDERED).read_text()
