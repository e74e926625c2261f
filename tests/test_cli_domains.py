"""Bad input to `cml evaluate`, `cml cluster` and `cml playlist`: one error line naming the input, the documented
exit code (2: the command line; 1: an input that cannot be used), and no work done. One parameterised test per
class of the "bad input" issue: option domains, options a method would ignore, checks against the data, output
paths, names that could inject M3U entries, and rows without a direction under L2 scaling."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from cml.cli import main
from cml.tables import write_feature_table

N = 40  # tracks in the table
IDS = [f"t{i:02d}" for i in range(N)]


def make_table(path: Path, labels: bool = True, zero: tuple[int, ...] = (), nan: tuple[int, ...] = (),
               paths: dict[int, str] | None = None, titles: dict[int, str] | None = None) -> Path:
    """Three labelled blobs in 8-d; rows ``zero`` all zero, rows ``nan`` with a NaN; ``paths``/``titles`` by row."""
    rng = np.random.default_rng(0)
    X = 4 * rng.normal(size=(3, 8))[np.arange(N) % 3] + rng.normal(size=(N, 8))
    X[list(zero)] = 0.0
    X[list(nan), 2] = np.nan
    extra = pd.DataFrame({"path": [f"audio/{i}.wav" for i in IDS], "title": [f"Song {i}" for i in IDS]})
    for column, values in (("path", paths or {}), ("title", titles or {})):
        for row, value in values.items():
            extra.loc[row, column] = value
    if nan:  # write_feature_table refuses NaN; a CSV is how such tables arrive
        frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(8)])
        frame.insert(0, "id", IDS)
        frame.insert(1, "label", [f"g{i % 3}" for i in range(N)])
        frame.to_csv(path.with_suffix(".csv"), index=False)
        return path.with_suffix(".csv")
    return write_feature_table(path, IDS, X, [f"g{i % 3}" for i in range(N)] if labels else None, extra=extra)


@pytest.fixture
def files(tmp_path, monkeypatch):
    """In a fresh folder: emb.parquet (labelled), nolabels.parquet, a split table and one of other tracks."""
    monkeypatch.chdir(tmp_path)
    make_table(tmp_path / "emb.parquet")
    make_table(tmp_path / "nolabels.parquet", labels=False)
    pd.DataFrame({"id": IDS, "split": ["test" if i % 4 == 0 else "train" for i in range(N)]}).to_csv(
        "tracks.csv", index=False)
    pd.DataFrame({"id": ["other"], "split": ["test"]}).to_csv("other.csv", index=False)
    return tmp_path


COMMANDS = {
    "cluster": ["cluster", "emb.parquet", "--method", "kmeans", "--k", "3", "--out", "c.csv"],
    "playlist": ["playlist", "emb.parquet", "--seed-tracks", "t00,t03,t06,t09", "--length", "8", "--out", "p.csv"],
    "evaluate": ["evaluate", "emb.parquet", "--out", "m.json"],
}
OUTPUT = {"cluster": "c.csv", "playlist": "p.csv", "evaluate": "m.json"}


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """`cml ARGV` as the shell would run it: the exit code, and the lines of stderr that report an error."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse refused a value at parse time
        code = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith(f"cml {argv[0]}: error:")]


def refused(argv: list[str], capsys, code: int, *names: str) -> None:
    """The command fails with ``code`` and exactly one error line that names every one of ``names``;
    its output was never written."""
    got, lines = run(argv, capsys)
    assert (got, len(lines)) == (code, 1), (got, lines)
    for name in names:
        assert name in lines[0], lines[0]
    assert not Path(OUTPUT[argv[0]]).exists()


# ---- 1. every option has a domain, checked at parse time ----

@pytest.mark.parametrize("command,option,value", [
    ("cluster", "--k", "0"), ("cluster", "--k", "-2"), ("cluster", "--k", "2.5"),
    ("cluster", "--height", "-1"), ("cluster", "--height", "nan"), ("cluster", "--height", "inf"),
    ("cluster", "--eps", "0"), ("cluster", "--eps", "-0.1"), ("cluster", "--eps", "nan"),
    ("cluster", "--min-pts", "0"), ("cluster", "--min-cluster-size", "1"), ("cluster", "--seed", "-1"),
    ("playlist", "--length", "0"), ("playlist", "--length", "-3"), ("playlist", "--dim", "0"),
    ("playlist", "--margin", "-0.1"), ("playlist", "--margin", "nan"), ("playlist", "--margin", "inf"),
    ("playlist", "--clusters", "0"), ("playlist", "--seed", "-1"),
    ("evaluate", "--k", "0"), ("evaluate", "--test-fraction", "0"), ("evaluate", "--test-fraction", "1"),
    ("evaluate", "--test-fraction", "1.5"), ("evaluate", "--test-fraction", "nan"), ("evaluate", "--seed", "-1"),
])
def test_a_value_outside_its_domain_is_refused_at_parse_time(files, capsys, command, option, value):
    refused([*COMMANDS[command], option, value], capsys, 2, option, repr(value))


# ---- 1b. an option that would be silently ignored (or replaced) is refused ----

@pytest.mark.parametrize("command,argv,names", [
    ("cluster", ["--method", "kmeans", "--eps", "0.5"], ["--eps", "kmeans"]),
    ("cluster", ["--method", "kmeans", "--height", "0.5"], ["--height", "kmeans"]),
    ("cluster", ["--method", "kmeans", "--min-pts", "4"], ["--min-pts", "kmeans"]),
    ("cluster", ["--method", "kmeans", "--variant", "elkan"], ["--variant", "kmeans"]),
    ("cluster", ["--method", "dbscan", "--min-cluster-size", "4"], ["--k", "--min-cluster-size", "dbscan"]),
    ("cluster", ["--method", "elki-ward", "--height", "0.5"], ["--k or --height"]),
    ("playlist", ["--seed-tracks", "t00,t03", "--mode", "journey", "--start", "t03"], ["--start", "journey"]),
    ("playlist", ["--seed-tracks", "t00,t03", "--mode", "journey", "--margin", "0.2"], ["--margin", "journey"]),
    ("playlist", ["--clusters", "3"], ["--clusters", "--metrics"]),
    ("evaluate", ["--split", "tracks.csv", "--test-fraction", "0.3"], ["--test-fraction", "tracks.csv"]),
])
def test_an_option_the_command_would_ignore_is_refused(files, capsys, command, argv, names):
    refused([*COMMANDS[command], *argv], capsys, 2, *names)


# ---- 2. checks against the data, right after reading the table ----

def _with(base: list[str], argv: list[str]) -> list[str]:
    """``base`` with the options of ``argv`` set (value None: option removed); a ``.parquet`` replaces the table."""
    out = list(base)
    pairs = iter(argv)
    for item in pairs:
        if item.endswith(".parquet"):
            out[1] = item
            continue
        value = next(pairs)
        if item in out and item != "--out":
            at = out.index(item)
            del out[at:at + 2]
        if value is not None:
            out += [item, value]
    return out


@pytest.mark.parametrize("command,argv,code,names", [
    ("cluster", ["--min-pts", "41", "--method", "dbscan", "--k", None], 2, ["--min-pts 41", "40 rows", "emb.parquet"]),
    ("cluster", ["--k", "41"], 2, ["--k 41", "40 rows"]),
    ("cluster", ["--method", "hdbscan", "--k", None, "--min-cluster-size", "50"], 2, ["--min-cluster-size 50"]),
    ("cluster", ["--label-column", "genre"], 2, ["--label-column 'genre'", "emb.parquet"]),
    ("cluster", ["--k", None, "nolabels.parquet"], 2, ["--k is required", "nolabels.parquet"]),
    ("cluster", ["missing.parquet"], 2, ["missing.parquet"]),
    ("playlist", ["--label-column", "genre"], 2, ["--label-column 'genre'"]),
    ("playlist", ["--length", "41"], 2, ["--length 41", "40 tracks"]),
    ("playlist", ["--metrics", "m.json", "--clusters", "41"], 2, ["--clusters 41"]),
    ("playlist", ["--seed-tracks", "t00,nope,t77"], 2, ["'nope', 't77'"]),
    ("playlist", ["--seed-tracks", " , "], 2, ["--seed-tracks is empty"]),
    ("playlist", ["--start", "zz"], 2, ["--start", "'zz'"]),
    ("playlist", ["--end", ""], 2, ["--end", "''"]),
    ("playlist", ["--length", "3"], 2, ["shorter than the 4 seed"]),
    ("playlist", ["missing.parquet"], 2, ["missing.parquet"]),
    ("evaluate", ["--label-column", "genre"], 2, ["--label-column 'genre'"]),
    ("evaluate", ["--k", "40"], 2, ["--k 40", "labelled train rows"]),
    ("evaluate", ["--split", "missing.csv"], 2, ["missing.csv"]),
    ("evaluate", ["missing.parquet"], 2, ["missing.parquet"]),
    ("evaluate", ["--split", "other.csv"], 1, ["no id of emb.parquet appears in other.csv"]),
])
def test_the_data_is_checked_before_the_work(files, capsys, command, argv, code, names):
    refused(_with(COMMANDS[command], argv), capsys, code, *names)


# ---- 3. output paths are checked before the work ----

@pytest.mark.parametrize("command,option,path", [
    ("cluster", "--out", "folder"), ("cluster", "--out", "emb.parquet/c.csv"), ("cluster", "--metrics", "folder"),
    ("playlist", "--out", "folder"), ("playlist", "--out", "emb.parquet/p.m3u8"), ("playlist", "--out", "p.txt"),
    ("playlist", "--metrics", "emb.parquet/m.json"),
    ("evaluate", "--out", "folder"), ("evaluate", "--out", "emb.parquet/m.json"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(files, capsys, command, option, path):
    (files / "folder").mkdir()
    refused([*COMMANDS[command], option, path], capsys, 2, path)  # and the other output was not written


# ---- 4. names cannot inject entries into an M3U8 ----

@pytest.mark.parametrize("name", ["a\n#EXTINF:1,evil\nevil.wav", "b\rc.wav", "d\x85e.wav", "f\u2028g.wav",
                                  "h\x00i.wav", "tab\there.wav", "#not-a-comment.wav"])
def test_a_name_cannot_add_or_hide_m3u8_entries(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    make_table(tmp_path / "emb.parquet", paths={0: name, 3: name + "2"}, titles={0: name, 6: "x\n#EXTINF:0,y\nz.wav"})
    argv = [*COMMANDS["playlist"][:-2], "--margin", "10", "--out", "p.m3u8"]  # 8 tracks: a margin that admits all
    assert run(argv, capsys)[0] == 0
    lines = Path("p.m3u8").read_text(encoding="utf-8").splitlines()  # at every line break there is
    entries = [line for line in lines if not line.startswith("#")]
    assert lines[0] == "#EXTM3U" and len(lines) == 1 + 2 * 8
    assert len(entries) == sum(line.startswith("#EXTINF:") for line in lines) == 8
    first = entries[0]  # t00, the start: its location still finds the file
    found = unquote(urlparse(first).path) if first.startswith("file://") else os.path.normpath(tmp_path / first)
    assert found == str(tmp_path / name)


# ---- 5. a row without a direction under L2 scaling is named, or dropped and reported ----

L2_COMMANDS = {"cluster": COMMANDS["cluster"], "playlist": [*COMMANDS["playlist"][:-4], "--length", "38",
                                                             "--margin", "10", "--out", "p.csv"],
               "evaluate": COMMANDS["evaluate"]}


@pytest.mark.parametrize("command", L2_COMMANDS)
@pytest.mark.parametrize("bad", ["zero", "nan"])
def test_invalid_rows_are_named_or_dropped_and_every_good_row_comes_through(tmp_path, monkeypatch, capsys, caplog,
                                                                            command, bad):
    monkeypatch.chdir(tmp_path)
    table = make_table(tmp_path / "emb.parquet", **{bad: (5, 11)}).name
    argv = [command, table, *L2_COMMANDS[command][2:]]
    refused(argv, capsys, 1, table, "2 rows", "t05, t11")
    with caplog.at_level(logging.WARNING):
        assert run([*argv, "--drop-invalid"], capsys)[0] == 0
    reported = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "dropped" in r.getMessage()]
    assert len(reported) == 1 and "2 rows" in reported[0] and "t05, t11" in reported[0]
    good = [i for i in IDS if i not in ("t05", "t11")]
    if command == "evaluate":
        assert json.loads(Path("m.json").read_text())["n"] == len(good)
    else:  # every row clustered; a playlist with room for every track, and a margin that admits them all
        ids = pd.read_csv(OUTPUT[command], dtype={"id": str})["id"].tolist()
        assert (ids if command == "cluster" else sorted(ids)) == good


@pytest.mark.parametrize("argv", [[*COMMANDS["cluster"], "--no-normalise"],
                                  [*COMMANDS["playlist"], "--scale", "standard"]])
def test_a_zero_row_is_fine_where_rows_are_not_l2_normalised(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    make_table(tmp_path / "emb.parquet", zero=(5,))
    assert run(argv, capsys)[0] == 0
