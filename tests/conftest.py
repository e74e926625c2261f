"""Fixtures every test can use: its own embedding cache (autouse), and the two ways to run a `cml` command.

Plain helpers (signals, blobs, tiny training tracks, fake .deb files, the repository's paths) are functions in
tests/helpers.py; the Spotify tests' fixtures are in tests/spotify/conftest.py.
"""
import pytest

from cml.cli import build_parser, main


@pytest.fixture(autouse=True)
def _own_embedding_cache(tmp_path, monkeypatch):
    """Every test runs with its own embedding cache: `cml embed` must never read vectors a previous run (another
    process, another thread count) left in the user's cache."""
    monkeypatch.setenv("CML_EMBED_CACHE", str(tmp_path / "embedding-cache"))


@pytest.fixture
def cli():
    """``cli(*argv)`` runs ``cml ARGV`` as the shell does (`cml.cli.main`) and gives its exit code: a mistake is
    one line on stderr (read it with capsys) and exit code 1 or 2."""
    def run(*argv) -> int:
        return main([str(a) for a in argv])
    return run


@pytest.fixture
def cli_raising():
    """``cli_raising(*argv)`` runs the function of ``cml ARGV`` through cml's own parser, without `main`'s error
    handling: an error raises (for pytest.raises, with its exit_code) instead of becoming a line on stderr; an
    option the parser refuses is SystemExit(2). Gives what the command's function returns (0 when it worked)."""
    def run(*argv):
        argv = [str(a) for a in argv]
        args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
        return args.func(args)
    return run
