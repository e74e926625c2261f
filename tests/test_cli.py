"""The `cml` command loads only the module of the command it runs."""
import subprocess
import sys

import pytest

from cml.cli import COMMANDS, build_parser

COMMAND_MODULES = {f"cml.{module}" for module, _ in COMMANDS.values()}


def modules_loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_imports_no_command_module_and_no_heavy_library():
    loaded = modules_loaded("from cml.cli import build_parser\nbuild_parser().format_help()")
    assert not loaded & COMMAND_MODULES
    assert not loaded & {"torch", "sklearn", "spotipy", "pandas"}


def test_scan_starts_without_torch():
    loaded = modules_loaded("from cml.cli import build_parser\nbuild_parser('scan')\nimport cml.data.scan")
    assert "cml.data.scan" in loaded and not loaded & {"torch", "torchaudio", "cml.audio.mel"}


@pytest.mark.parametrize("command,imported_by_it", [("tracks", {"cml.data.scan"}), ("corpus", {"cml.data.soundtracks"}),
                                                    ("pool", {"cml.data.soundtracks"})])
def test_a_command_imports_its_own_module_and_what_that_imports(command, imported_by_it):
    loaded = modules_loaded(f"from cml.cli import build_parser\nbuild_parser({command!r})")
    own = f"cml.{COMMANDS[command][0]}"
    assert own in loaded
    assert loaded & COMMAND_MODULES == {own} | imported_by_it


REQUIRED = {"scan": ["x", "--report", "r.csv"], "train": ["--out", "o"], "embed": ["m", "--out", "o"],
            "evaluate": ["f", "--out", "o"], "cluster": ["f", "--method", "kmeans"],
            "playlist": ["f", "--seed-tracks", "a", "--length", "3", "--out", "p.csv"],
            "spotify": ["pull", "--saved", "--out", "o.csv"], "soundtracks": ["fetch"], "pool": ["fetch"],
            "neighbours": ["f", "t"], "map": ["f"]}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_is_registered_by_the_module_the_table_names(command):
    args = build_parser(command).parse_args([command, *REQUIRED.get(command, [])])
    assert args.command == command and callable(args.func)
