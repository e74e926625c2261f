"""cml.spotify.client on bad input: corrupt token caches, logins that never come back or happen elsewhere,
stalled servers, looping or short listings, odd Retry-After values, and out-of-domain CLI options.

Like tests/spotify/test_client.py, everything runs against the local fake of the Spotify API, offline
(tests/spotify/conftest.py).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import threading
import time
import webbrowser

import pytest
import requests

from cml.errors import UsageError
from cml.spotify.auth import Credentials, TokenCache
from cml.spotify.client import SpotifyClient
from cml.spotify.http import SpotifyError
from cml.spotify.sync import pull

from tests.fake_spotify import CLIENT_ID
from tests.spotify.helpers import assert_no_secrets, cli_env, mode, user_client


def approve(authorize_url: str) -> str:
    """The user in a browser elsewhere: approves, and copies the address Spotify redirects to."""
    answer = requests.get(authorize_url, allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    return answer.headers["Location"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pkce_client(fake, tmp_path, port: int = 9, **kwargs) -> SpotifyClient:
    return SpotifyClient(Credentials(CLIENT_ID, None, f"http://127.0.0.1:{port}/callback"), user=True,
                         token_cache=tmp_path / "cache.json", api_url=fake.url, accounts_url=fake.url, **kwargs)


def within(seconds: float, fn):
    """fn() run in a thread that must end within `seconds` (a guard that is missing hangs, not fails)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---- token cache ----

@pytest.mark.parametrize("content, problem", [
    ("{}", "access_token is missing"),
    ('{"access_token": 5, "refresh_token": "r", "scope": "", "expires_at": 1}', "access_token is a int"),
    ('{"access_token": "a", "refresh_token": "r", "scope": "", "expires_at": "soon"}', "expires_at is a str"),
    ('{"access_token": "a", "refresh_token": "r", "scope": "", "expires_at": true}', "expires_at is a bool"),
    ('{"access_token": "a", "scope": "", "expires_at": 1}', "refresh_token is missing"),
    ('["a", "b"]', 'it holds ["a", "b"], not a token object'),
    ("null", "it holds null"),
    ('{"access_token": "a", ', "not JSON"),
])
def test_a_token_cache_that_is_not_a_token_means_logged_out(tmp_path, caplog, content, problem):
    path = tmp_path / "cache.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    assert TokenCache(path).get_cached_token() is None
    assert f"token cache {path} is not a usable Spotify token ({problem}" in caplog.text


# ---- logging in ----

def test_no_browser_login_takes_the_pasted_address_even_over_a_corrupt_cache(fake, tmp_path, monkeypatch,
                                                                              caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(webbrowser, "open", lambda *a, **k: pytest.fail("opened a browser"))
    (tmp_path / "cache.json").write_text('{"access_token": 5}')
    asked = []
    client = pkce_client(fake, tmp_path, open_browser=False, ask=lambda url: asked.append(url) or approve(url))

    assert client.login()["id"] == "fakeuser"
    assert len(asked) == 1 and asked[0].startswith(f"{fake.url}/authorize?")
    assert [r.body["grant_type"] for r in fake.seen("POST", "/api/token")] == ["authorization_code"]
    assert TokenCache(tmp_path / "cache.json").get_cached_token()["refresh_token"]
    assert mode(tmp_path / "cache.json") == 0o600
    assert_no_secrets(fake, caplog.text, *capsys.readouterr())


def test_notebook_login_in_two_steps(fake, tmp_path):
    client = pkce_client(fake, tmp_path, open_browser=False, ask=lambda url: pytest.fail("asked"))
    redirected = approve(client.authorize_url())
    with pytest.raises(SpotifyError, match=r"holds no login code.* starts http://127.0.0.1:9/callback\?code="):
        client.finish_login("http://127.0.0.1:9/callback")
    with pytest.raises(SpotifyError, match=r"login refused \(access_denied\)"):
        client.finish_login("http://127.0.0.1:9/callback?error=access_denied")

    assert client.finish_login(redirected)["id"] == "fakeuser"
    assert len(pull(client, "saved", features=False)) == 120  # logged in: the API answers


def test_cli_no_browser_prints_the_page_and_reads_the_address(fake, tmp_path, monkeypatch, capsys, cli_raising):
    env = cli_env(fake, tmp_path, monkeypatch)

    def user_types(prompt: str) -> str:  # reads the page from the terminal, approves, pastes the address
        return approve(re.search(r"http://\S+/authorize\?\S+", capsys.readouterr().err).group())

    monkeypatch.setattr("builtins.input", user_types)
    assert cli_raising("spotify", "pull", "--saved", "--no-browser", "--out", str(tmp_path / "s.csv"), *env) == 0
    assert "wrote 120 track(s)" in capsys.readouterr().out

    def closed_stdin(prompt: str) -> str:
        raise EOFError

    (tmp_path / "cache.json").unlink()
    monkeypatch.setattr("builtins.input", closed_stdin)
    with pytest.raises(SpotifyError, match="no address was pasted .*standard input is closed"):
        cli_raising("spotify", "pull", "--saved", "--no-browser", "--out", str(tmp_path / "s.csv"), *env)


def test_cli_browser_login_without_a_terminal_fails_at_once(fake, tmp_path, monkeypatch, cli_raising):
    """No cached token and no terminal (a script, a DVC stage): no one can approve, so do not wait for it."""
    env = cli_env(fake, tmp_path, monkeypatch)
    monkeypatch.setattr(webbrowser, "open", lambda *a, **k: True)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    start = time.monotonic()
    with pytest.raises(SpotifyError, match="needs a Spotify login and standard input is not a terminal.*--no-browser"):
        cli_raising("spotify", "pull", "--saved", "--login-timeout", "5", "--out", str(tmp_path / "s.csv"), *env)
    assert time.monotonic() - start < 2


def test_browser_login_gives_up_after_the_timeout(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(webbrowser, "open", lambda *a, **k: True)  # the user never approves
    port = free_port()
    client = pkce_client(fake, tmp_path, port, login_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(SpotifyError, match=rf"no login came back to http://127.0.0.1:{port}/callback within 0.3 s"
                                           ".*--no-browser"):
        within(10, client.login)
    assert time.monotonic() - start < 3

    with socket.socket() as busy:  # the redirect port is taken: say so instead of an OSError
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(SpotifyError, match=rf"cannot listen on port {port} .*--no-browser"):
            within(10, client.login)


# ---- stalled servers ----

@pytest.mark.parametrize("stall", ["headers", "body", "body via a proxy"])
def test_a_server_trickling_bytes_fails_within_the_deadline(fake, tmp_path, stall):
    """Each byte comes well within the read timeout; only the deadline stops the call."""
    client = user_client(fake, tmp_path, deadline=1.0)
    if stall.endswith("proxy"):
        client.session.proxies = {"http": fake.url}  # the fake answers absolute-URI requests as a proxy would
    page = json.dumps({"href": None, "items": [], "next": None, "total": 0}).encode()  # 2.5 s at 0.05 s a byte
    fake.fail("GET", "/v1/me/tracks", 200, body=page, trickle_s=0.05, trickle_headers=stall == "headers")
    start = time.monotonic()
    with pytest.raises(SpotifyError, match=r"no complete answer to GET /v1/me/tracks within 1 s"):
        pull(client, "saved")
    assert time.monotonic() - start < 2.0
    assert len(fake.seen("GET", "/v1/me/tracks")) == 1  # not retried
    if stall.endswith("proxy"):
        assert client.session.get_adapter(fake.url).proxy_manager


# ---- paging ----

def test_paging_that_loops_is_an_error(fake, tmp_path):
    fake.loop_pages = 20  # a client without the check pages 20 extra times, then ends
    with pytest.raises(SpotifyError, match=r"paging of /v1/me/tracks loops back to \S+ after 120 of 120 items"):
        pull(user_client(fake, tmp_path), "saved")
    assert len(fake.seen("GET", "/v1/me/tracks")) == 3


def test_a_listing_short_of_its_total_warns_with_both_counts(fake, tmp_path, caplog):
    fake.extra_total = 5
    assert len(pull(user_client(fake, tmp_path), "saved", features=False)) == 120
    assert "got 120 of 125 items of /v1/me/tracks" in caplog.text

    caplog.clear()
    assert len(pull(user_client(fake, tmp_path), "search", "Song", limit=15, features=False)) == 15
    assert "items of" not in caplog.text  # stopping early on purpose is not a short listing


# ---- Retry-After ----

@pytest.mark.parametrize("retry_after", ["Wed, 21 Oct 2015 07:28:00 GMT", "soon", "1.5"])
def test_retry_after_that_is_not_seconds_falls_back_to_backoff(fake, tmp_path, caplog, retry_after):
    fake.fail("GET", "/v1/me/tracks", 429, headers={"Retry-After": retry_after}, times=2)
    assert len(pull(user_client(fake, tmp_path), "saved", features=False)) == 120

    a, b, c = fake.seen("GET", "/v1/me/tracks")[:3]
    assert (a.status, b.status, c.status) == (429, 429, 200)
    assert b.t - a.t >= 0.05 and c.t - b.t >= 0.10  # backoff_factor 0.05, doubling
    assert caplog.text.count("not a number of seconds; backing off") == 2


# ---- CLI option domains, checked before any request ----

@pytest.mark.parametrize("option", [["--limit", "0"], ["--limit", "many"], ["--login-timeout", "-1"]])
def test_cli_options_out_of_their_domain_are_usage_errors(fake, tmp_path, monkeypatch, capsys, option, cli_raising):
    env = cli_env(fake, tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as exited:
        cli_raising("spotify", "pull", "--search", "x", "--out", str(tmp_path / "x.csv"), *option, *env)
    assert exited.value.code == 2 and option[0] in capsys.readouterr().err
    assert fake.requests == []


def test_cli_unwritable_out_and_missing_track_list_fail_before_any_request(fake, tmp_path, monkeypatch, cli_raising):
    env = cli_env(fake, tmp_path, monkeypatch)
    (tmp_path / "file").write_text("")
    for action in (["pull", "--search", "Song"], ["link", str(tmp_path / "a.flac")]):
        with pytest.raises(UsageError, match="is a file, not a folder") as failed:
            cli_raising("spotify", *action, "--out", str(tmp_path / "file" / "x.csv"), *env)
        assert failed.value.exit_code == 2
    with pytest.raises(UsageError, match="track list not found: .*missing.txt"):
        cli_raising("spotify", "pull", "--tracks", tmp_path / "missing.txt", "--out", tmp_path / "x.csv", *env)
    with pytest.raises(UsageError, match="track list not found: .*missing.m3u"):
        cli_raising("spotify", "push", str(tmp_path / "missing.m3u"), "--name", "x", *env)
    assert fake.requests == []
