"""Every test runs with its own embedding cache: `cml embed` must never read vectors a previous run (another
process, another thread count) left in the user's cache."""
import pytest


@pytest.fixture(autouse=True)
def _own_embedding_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CML_EMBED_CACHE", str(tmp_path / "embedding-cache"))
