"""What the Spotify tests share besides fixtures (tests/spotify/conftest.py): clients pointed at the fake, the
options of a `cml spotify` command line that uses it, and checks of what a run leaves behind."""
from __future__ import annotations

import os
import stat

from cml.spotify.auth import Credentials, TokenCache
from cml.spotify.client import USER_SCOPES, SpotifyClient
from tests.fake_spotify import CLIENT_ID, CLIENT_SECRET, FakeSpotify

SCOPE = " ".join(sorted(USER_SCOPES.split(",")))


def app_client(fake: FakeSpotify, **kwargs) -> SpotifyClient:
    return SpotifyClient(Credentials(CLIENT_ID, CLIENT_SECRET), user=False, api_url=fake.url,
                         accounts_url=fake.url, backoff_factor=0.05, **kwargs)


def user_client(fake: FakeSpotify, tmp_path, expires_in: int | None = None, **kwargs) -> SpotifyClient:
    """A client already logged in: its 0600 cache holds a token the fake issued."""
    cache = tmp_path / "token-cache.json"
    TokenCache(cache).save_token_to_cache(fake.issue_user_token(SCOPE, expires_in))
    return SpotifyClient(Credentials(CLIENT_ID, None, "http://127.0.0.1:9/callback"), user=True,
                         token_cache=cache, api_url=fake.url, accounts_url=fake.url, backoff_factor=0.05,
                         open_browser=False, **kwargs)


def cli_env(fake, tmp_path, monkeypatch) -> list[str]:
    """The fake's URLs in the environment; the options naming a .env file and a token cache in tmp_path."""
    monkeypatch.setenv("CML_SPOTIFY_API_URL", fake.url)
    monkeypatch.setenv("CML_SPOTIFY_ACCOUNTS_URL", fake.url)
    env = tmp_path / ".env"
    env.write_text(f"SPOTIPY_CLIENT_ID={CLIENT_ID}\nSPOTIPY_CLIENT_SECRET={CLIENT_SECRET}\n"
                   "SPOTIPY_REDIRECT_URI=http://127.0.0.1:9/callback\n")
    os.chmod(env, 0o600)
    return ["--env-file", str(env), "--token-cache", str(tmp_path / "cache.json")]


def assert_no_secrets(fake: FakeSpotify, *texts: str) -> None:
    for secret in fake.secrets_issued():
        for text in texts:
            assert secret not in text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
