"""cml.spotify.client end to end: the real spotipy client over HTTP against a local fake of the Spotify API.

Nothing here reaches the internet: an autouse guard (tests/spotify/conftest.py) fails any connection or name
lookup that is not loopback, and the tests check that the fake saw the requests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import webbrowser

import numpy as np
import pytest
import requests
import soundfile as sf
from mutagen.flac import FLAC

from cml.spotify.auth import TOKEN_CACHE, Credentials, TokenCache, load_credentials
from cml.spotify.client import SpotifyClient, spotify_id
from cml.spotify.features import AUDIO_FEATURE_COLUMNS, load_spotify_csvs
from cml.spotify.http import SpotifyError
from cml.spotify.sync import PLAYLIST_CHUNK, link_local_files, pull, push, write_tracks_csv
from tests.fake_spotify import CLIENT_ID, track_id
from tests.helpers import ROOT
from tests.spotify.helpers import SCOPE, app_client, assert_no_secrets, cli_env, mode, user_client


# ---- pull ----

def test_pull_saved_follows_pages_batches_features_and_writes_a_csv_the_notebook_reads(fake, tmp_path):
    tracks = pull(user_client(fake, tmp_path), "saved")

    assert list(tracks["track_id"]) == fake.saved  # all 3 pages, in order
    pages = fake.seen("GET", "/v1/me/tracks")
    assert [r.query.get("offset") for r in pages] == ["0", "50", "100"]
    assert "page" not in pages[0].query and all("page" in r.query for r in pages[1:])  # absolute `next` followed
    batches = [r.query["ids"].split(",") for r in fake.seen("GET", "/v1/audio-features/?")]
    assert [len(b) for b in batches] == [100, 20]
    assert tracks.loc[0, "artists"] == "Artist 0;Feat Artist"
    assert tracks.loc[1, "tempo"] == fake.features[track_id(1)]["tempo"]
    assert tracks.loc[2, "isrc"] == "USFAK0000002" and tracks.loc[2, "uri"] == f"spotify:track:{track_id(2)}"

    write_tracks_csv(tracks, tmp_path / "data" / "saved.csv")
    table = load_spotify_csvs(tmp_path / "data")
    assert table.problems == []
    assert list(table.tracks["track_id"]) == fake.saved
    assert np.allclose(table.tracks["danceability"], tracks["danceability"])


def test_pull_playlist_by_url_skips_local_files(fake, tmp_path, caplog):
    pid = fake.add_playlist("Mine", [track_id(i) for i in range(60)], local_names=("home-recording",))
    tracks = pull(user_client(fake, tmp_path), "playlist", f"https://open.spotify.com/intl-de/playlist/{pid}?si=abc")

    assert list(tracks["track_id"]) == [track_id(i) for i in range(60)]
    assert len(fake.seen("GET", f"/v1/playlists/{pid}/items")) == 2
    assert "skipped 1 item" in caplog.text


def test_search_pages_within_the_dev_mode_limit_and_tracks_batch_by_50(fake):
    client = app_client(fake)
    found = pull(client, "search", "Song 1", limit=25)
    assert len(found) == 25 and found["track_name"].str.contains("Song 1").all()
    assert len(fake.seen("GET", "/v1/search")) == 3  # 10 per page: a client asking for more gets a 400

    ids = [track_id(i) for i in range(120)]
    by_id = pull(client, "tracks", [f"spotify:track:{i}" for i in ids], features=False)
    assert list(by_id["track_id"]) == ids
    assert [len(r.query["ids"].split(",")) for r in fake.seen("GET", "/v1/tracks/?")] == [50, 50, 20]


def test_several_tracks_403_falls_back_to_one_request_per_track(fake, caplog):
    fake.fail("GET", "/v1/tracks/?", 403, times=100)
    ids = [track_id(i) for i in range(60)]
    tracks = pull(app_client(fake), "tracks", ids, features=False)
    assert list(tracks["track_id"]) == ids
    assert len(fake.seen("GET", "/v1/tracks/?")) == 1  # not asked again after the 403
    assert len(fake.seen("GET", "/v1/tracks/[A-Za-z0-9]+")) == 60
    assert sum("refuses tracks" in r.getMessage() for r in caplog.records) == 1


def test_audio_features_403_warns_once_and_leaves_the_columns_empty(fake, tmp_path, caplog):
    fake.audio_features_restricted = True
    tracks = pull(user_client(fake, tmp_path), "saved")

    assert len(tracks) == 120
    assert tracks[AUDIO_FEATURE_COLUMNS].isna().all().all()
    assert len(fake.seen("GET", "/v1/audio-features/?")) == 1  # second batch not even asked
    warnings = [r for r in caplog.records if r.name == "cml.spotify.client" and "audio-features" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING

    write_tracks_csv(tracks, tmp_path / "data" / "saved.csv")
    table = load_spotify_csvs(tmp_path / "data")
    assert len(table.tracks) == 120
    assert any("audio-feature columns are empty" in p for p in table.problems)


# ---- resilience ----

def test_429_waits_as_long_as_retry_after_says(fake, tmp_path):
    fake.fail("GET", "/v1/me/tracks", 429, headers={"Retry-After": "1"})
    tracks = pull(user_client(fake, tmp_path), "saved", features=False)

    assert len(tracks) == 120
    first, second = fake.seen("GET", "/v1/me/tracks")[:2]
    assert first.status == 429 and second.status == 200
    assert second.query == first.query  # the same request again ...
    assert second.t - first.t >= 1.0  # ... not before Retry-After said


def test_retry_after_beyond_the_cap_is_a_clear_error(fake, tmp_path):
    fake.fail("GET", "/v1/me/tracks", 429, headers={"Retry-After": "3600"})
    with pytest.raises(SpotifyError, match="wait 3600 s"):
        pull(user_client(fake, tmp_path, max_retry_after=30), "saved")
    assert len(fake.seen("GET", "/v1/me/tracks")) == 1


def test_5xx_is_retried_with_growing_backoff(fake, tmp_path):
    fake.fail("GET", "/v1/me/tracks", 503, times=1)
    fake.fail("GET", "/v1/me/tracks", 500, times=1)
    tracks = pull(user_client(fake, tmp_path), "saved", features=False)

    assert len(tracks) == 120
    a, b, c = fake.seen("GET", "/v1/me/tracks")[:3]
    assert (a.status, b.status, c.status) == (503, 500, 200)
    assert b.t - a.t >= 0.05 and c.t - b.t >= 0.10  # backoff_factor 0.05, doubling


def test_5xx_that_persists_is_a_clear_error(fake, tmp_path):
    fake.fail("GET", "/v1/me/tracks", 502, times=100)
    with pytest.raises(SpotifyError, match="HTTP 502"):
        pull(user_client(fake, tmp_path, retries=2), "saved")
    assert len(fake.seen("GET", "/v1/me/tracks")) == 3


def test_malformed_json_is_a_clear_error(fake, tmp_path):
    fake.fail("GET", "/v1/me/tracks", 200, body=b'{"items": [{"track": ')
    with pytest.raises(SpotifyError, match=r"malformed JSON .* GET /v1/me/tracks"):
        pull(user_client(fake, tmp_path), "saved")


def test_token_expired_on_the_server_is_refreshed_and_the_call_retried(fake, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    client = user_client(fake, tmp_path)
    old = TokenCache(tmp_path / "token-cache.json").get_cached_token()
    fake.expire_tokens_after(1)  # first page passes, the second gets 401 "The access token expired"
    tracks = pull(client, "saved", features=False)

    assert list(tracks["track_id"]) == fake.saved
    statuses = [r.status for r in fake.seen("GET", "/v1/me/tracks")]
    assert statuses == [200, 401, 200, 200]
    refreshes = [r for r in fake.seen("POST", "/api/token") if r.body["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1 and refreshes[0].body["refresh_token"] == old["refresh_token"]
    new = TokenCache(tmp_path / "token-cache.json").get_cached_token()
    assert new["access_token"] != old["access_token"]
    assert fake.seen("GET", "/v1/me/tracks")[-1].token == new["access_token"]
    assert mode(tmp_path / "token-cache.json") == 0o600
    assert_no_secrets(fake, caplog.text, *capsys.readouterr())


def test_revoked_refresh_token_is_a_clear_error(fake, tmp_path):
    client = user_client(fake, tmp_path)
    fake.refresh_tokens.clear()  # the user removed the app's access
    fake.expire_tokens_after(0)
    with pytest.raises(SpotifyError, match="refreshing the Spotify token failed .*invalid_grant.* log in"):
        pull(client, "saved")


def test_token_expired_locally_is_refreshed_before_use(fake, tmp_path):
    client = user_client(fake, tmp_path, expires_in=30)  # spotipy refreshes within 60 s of expiry
    pull(client, "saved", features=False)
    grants = [r.body["grant_type"] for r in fake.seen("POST", "/api/token")]
    assert grants == ["refresh_token"]
    assert all(r.status == 200 for r in fake.seen("GET", "/v1/me/tracks"))


def test_app_token_is_fetched_again_after_a_401(fake):
    client = app_client(fake)
    fake.expire_tokens_after(1)
    assert len(pull(client, "search", "Song", limit=30, features=False)) == 30
    grants = [r.body["grant_type"] for r in fake.seen("POST", "/api/token")]
    assert grants == ["client_credentials", "client_credentials"]


# ---- auth and secrets ----

def test_pkce_login_through_the_redirect_uri_writes_a_0600_cache(fake, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # a free port for the redirect URI's local server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def browser(url: str, *args, **kwargs) -> bool:  # the user: approves, the browser follows the redirect
        threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 10}, daemon=True).start()
        return True

    monkeypatch.setattr(webbrowser, "open", browser)
    old_umask = os.umask(0o022)
    try:
        client = SpotifyClient(Credentials(CLIENT_ID, None, f"http://127.0.0.1:{port}/callback"), user=True,
                               token_cache=tmp_path / "cache.json", api_url=fake.url, accounts_url=fake.url)
        me = client.login()
    finally:
        os.umask(old_umask)

    assert me["id"] == "fakeuser"
    grants = [r.body for r in fake.seen("POST", "/api/token")]
    assert [g["grant_type"] for g in grants] == ["authorization_code"] and grants[0]["code_verifier"]
    assert mode(tmp_path / "cache.json") == 0o600
    assert TokenCache(tmp_path / "cache.json").get_cached_token()["refresh_token"]
    assert_no_secrets(fake, caplog.text, *capsys.readouterr())


def test_token_cache_is_0600_even_over_a_world_readable_file(tmp_path, caplog):
    path = tmp_path / "cache.json"
    x, y = ({"access_token": a, "refresh_token": "r", "scope": SCOPE, "expires_at": 1} for a in "xy")
    path.write_text(json.dumps(x))
    os.chmod(path, 0o644)
    assert TokenCache(path).get_cached_token() == x
    assert mode(path) == 0o600 and "readable by others" in caplog.text
    os.chmod(path, 0o644)
    TokenCache(path).save_token_to_cache(y)
    assert mode(path) == 0o600 and TokenCache(path).get_cached_token() == y


def test_gitignore_covers_the_token_cache_and_dotenv():
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git work tree")
    for name in (".env", TOKEN_CACHE, TOKEN_CACHE + ".tmp"):
        assert subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0, f"{name} not ignored"


def test_credentials_from_dotenv_and_environment(tmp_path):
    env = tmp_path / ".env"
    env.write_text("# Spotify app\nexport SPOTIPY_CLIENT_ID='from-file'\nSPOTIPY_CLIENT_SECRET=\"s3cret\"  \n"
                   "SPOTIPY_REDIRECT_URI=http://127.0.0.1:8765/callback # registered\nbroken line\n")
    os.chmod(env, 0o600)
    creds = load_credentials(env, environ={})
    assert creds == Credentials("from-file", "s3cret", "http://127.0.0.1:8765/callback")
    assert "s3cret" not in repr(creds)
    assert load_credentials(env, environ={"SPOTIPY_CLIENT_ID": "from-env"}).client_id == "from-env"
    with pytest.raises(SpotifyError, match="SPOTIPY_CLIENT_ID is not set"):
        load_credentials(tmp_path / "missing.env", environ={})


def test_spotify_id_accepts_urls_uris_and_ids():
    assert spotify_id("https://open.spotify.com/playlist/37i9dQZF1DXcBWIGoYBM5M?si=1", "playlist") == \
        "37i9dQZF1DXcBWIGoYBM5M"
    assert spotify_id("spotify:user:someone:playlist:abc123", "playlist") == "abc123"
    assert spotify_id(" abc123 ", "track") == "abc123"
    with pytest.raises(SpotifyError, match="is a Spotify album, not a playlist"):
        spotify_id("spotify:album:abc", "playlist")
    with pytest.raises(SpotifyError, match="not a Spotify track"):
        spotify_id("not an id!", "track")


# ---- push ----

def test_push_creates_a_playlist_in_chunks_of_100(fake, tmp_path):
    ids = [track_id(i) for i in range(250)]
    result = push(user_client(fake, tmp_path), "cml clusters", [f"spotify:track:{i}" for i in ids],
                  "cluster 3 of the contrastive embedding")

    playlist = fake.playlists[result.playlist_id]
    assert result.action == "create" and playlist["items"] == ids and playlist["public"] is False
    assert playlist["description"].startswith("Generated by cml") and "cluster 3" in playlist["description"]
    adds = fake.seen("POST", f"/v1/playlists/{result.playlist_id}/items")
    assert [len(r.body) for r in adds] == [PLAYLIST_CHUNK, PLAYLIST_CHUNK, 50]


def test_push_replaces_only_when_asked(fake, tmp_path):
    client = user_client(fake, tmp_path)
    pid = fake.add_playlist("Mix", [track_id(i) for i in range(5)])
    new = [track_id(i) for i in range(100, 250)]
    with pytest.raises(SpotifyError, match="pass --replace"):
        push(client, "Mix", new, "x")
    assert fake.playlists[pid]["items"] == [track_id(i) for i in range(5)]

    result = push(client, "Mix", new, "nearest neighbours", replace=True)
    assert result.playlist_id == pid and result.action == "replace"
    assert fake.playlists[pid]["items"] == new and len(fake.playlists) == 1
    assert [len(r.body["uris"]) for r in fake.seen("PUT", f"/v1/playlists/{pid}/items")] == [100]
    assert [len(r.body) for r in fake.seen("POST", f"/v1/playlists/{pid}/items")] == [50]


def test_push_dry_run_writes_nothing(fake, tmp_path):
    result = push(user_client(fake, tmp_path), "New", [track_id(i) for i in range(150)], "x", dry_run=True)
    assert result.playlist_id is None and len(result.requests) == 3
    assert not [r for r in fake.requests if r.method in ("POST", "PUT") and r.path.startswith("/v1/")]
    assert fake.playlists == {}


# ---- linking local files ----

def _flac(path, **tags) -> str:
    sf.write(path, np.zeros(800, dtype="float32"), 8000, format="FLAC")
    audio = FLAC(path)
    for key, value in tags.items():
        audio[key] = value
    audio.save()
    return str(path)


def test_link_local_files_by_isrc_then_artist_and_title(fake, tmp_path, caplog):
    files = [
        _flac(tmp_path / "a.flac", isrc="US-FAK-00-00005", title="Wrong title"),
        _flac(tmp_path / "b.flac", artist="artist 0", title="Song 7"),
        _flac(tmp_path / "c.flac", artist="Nobody", title="Unknown Song"),
        _flac(tmp_path / "d.flac"),
    ]
    links = link_local_files(app_client(fake), files)

    assert [(link.uri, link.matched_by) for link in links] == [
        (f"spotify:track:{track_id(5)}", "isrc"), (f"spotify:track:{track_id(7)}", "artist+title"),
        (None, ""), (None, "")]
    assert "no Spotify track titled" in links[2].reason and "no artist + title" in links[3].reason
    assert "2 of 4 local file(s) not found" in caplog.text


# ---- CLI ----

def test_cli_pull_then_push(fake, tmp_path, monkeypatch, capsys, cli_raising):
    common = cli_env(fake, tmp_path, monkeypatch)
    TokenCache(tmp_path / "cache.json").save_token_to_cache(fake.issue_user_token(SCOPE))

    assert cli_raising("spotify", "pull", "--saved", "--out", str(tmp_path / "data" / "saved.csv"), *common) == 0
    assert "wrote 120 track(s)" in capsys.readouterr().out
    assert load_spotify_csvs(tmp_path / "data").problems == []

    listing = tmp_path / "mix.m3u"
    listing.write_text("#EXTM3U\n" + "\n".join(f"spotify:track:{track_id(i)}" for i in range(130)) + "\n"
                       + _flac(tmp_path / "local.flac", isrc="USFAK0000200") + "\n")
    assert cli_raising("spotify", "push", str(listing), "--name", "From CLI", "--dry-run", *common) == 0
    assert "would create playlist 'From CLI' with 131 track(s)" in capsys.readouterr().out
    assert fake.playlists == {}

    assert cli_raising("spotify", "push", str(listing), "--name", "From CLI", *common) == 0
    (playlist,) = fake.playlists.values()
    assert playlist["items"][-1] == track_id(200) and len(playlist["items"]) == 131

    fake.fail("GET", "/v1/me/tracks", 200, body=b"<html>")
    with pytest.raises(SpotifyError, match="malformed JSON") as failed:  # cml.cli.main prints it, exit code 1
        cli_raising("spotify", "pull", "--saved", "--out", str(tmp_path / "x.csv"), *common)
    assert failed.value.exit_code == 1
    assert not (tmp_path / "x.csv").exists()
