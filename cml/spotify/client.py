"""Spotify client: pull track metadata into the DataAnalysis CSV, push generated playlists back.

Built on spotipy. Why this module exists on top of it:
- Retries live in the HTTP session (urllib3 `Retry`, as in spotipy) so every call, `next` pages
  included, gets them. We mount our own session rather than spotipy's default because spotipy's makes
  the first retry without back-off, waits for any `Retry-After` however long, reports exhausted 5xx
  retries as "429 Max Retries", and silently returns None for malformed JSON.
- A 401 on a token spotipy still believes valid (revoked, clock skew) is refreshed once and retried.
- Endpoints Spotify closed to new apps (audio features since Nov 2024, several-tracks since Feb 2026)
  answer 403: we warn once, fall back or leave those columns empty, and go on.
- No credential or token reaches a log line: a filter redacts them from spotipy's and urllib3's logs.
- Bad input never hangs or crashes: each HTTP attempt has a wall-clock deadline (requests' timeout only
  bounds each socket read), paging that loops is an error, a corrupt token cache means "logged out",
  and the browser login gives up after a timeout. Without a browser (`open_browser=False`, a notebook)
  the user pastes the redirect address back: `client.authorize_url()`, then `client.finish_login(url)`.

Credentials come only from the environment or a gitignored `.env`; the user token cache is written
with mode 0600 from the start (spotipy's writes first and chmods after).
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import requests
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.oauth2 import SpotifyClientCredentials, SpotifyOauthError, SpotifyPKCE
from tqdm import tqdm

from cml.spotify.auth import _PKCE, TOKEN_CACHE, Credentials, TokenCache, _auth_code, ask_in_terminal
from cml.spotify.http import SpotifyError, make_session

log = logging.getLogger(__name__)

API_URL = "https://api.spotify.com"
ACCOUNTS_URL = "https://accounts.spotify.com"
USER_SCOPES = ("user-library-read,playlist-read-private,playlist-read-collaborative,"
               "playlist-modify-private,playlist-modify-public")
TRACKS_BATCH = 50  # GET /tracks?ids=
FEATURES_BATCH = 100  # GET /audio-features?ids=
PAGE_LIMIT = 50  # /me/tracks, /me/playlists, /playlists/{id}/items
SEARCH_LIMIT = 10  # the most development-mode apps may ask per search page since Feb 2026
# ---- the client ----

class SpotifyClient:
    """spotipy.Spotify with the retry session, 401 refresh, 403 fallbacks and paging this project needs.

    `user=True` logs in with authorization code + PKCE (user data, playlist writes; the token is cached
    in `token_cache`); otherwise client credentials (public catalogue data only). The login opens the
    browser and waits `login_timeout` s for it; with `open_browser=False` it calls `ask(authorize_url)`
    for the address the browser went to (default: print and `input()`). `timeout` bounds each socket
    read, `deadline` each attempt at a request as a whole.
    """

    def __init__(self, credentials: Credentials, *, user: bool, scope: str = USER_SCOPES,
                 token_cache: str | Path = TOKEN_CACHE, api_url: str | None = None, accounts_url: str | None = None,
                 retries: int = 5, backoff_factor: float = 0.5, max_retry_after: float = 120.0,
                 timeout: float = 15.0, deadline: float = 60.0, open_browser: bool = True,
                 login_timeout: float = 120.0, ask: Callable[[str], str] = ask_in_terminal):
        api_url = (api_url or os.environ.get("CML_SPOTIFY_API_URL") or API_URL).rstrip("/")
        accounts_url = (accounts_url or os.environ.get("CML_SPOTIFY_ACCOUNTS_URL") or ACCOUNTS_URL).rstrip("/")
        self.session = make_session(retries, backoff_factor, max_retry_after, deadline)
        if user:
            if not credentials.redirect_uri:
                raise SpotifyError("SPOTIPY_REDIRECT_URI is not set; use http://127.0.0.1:PORT/callback, "
                                   "registered in your Spotify app")
            if urlparse(credentials.redirect_uri).hostname == "localhost":
                log.warning("Spotify no longer accepts 'localhost' redirect URIs; use http://127.0.0.1:PORT/...")
            self.auth = _PKCE(client_id=credentials.client_id, redirect_uri=credentials.redirect_uri, scope=scope,
                              cache_handler=TokenCache(token_cache), requests_session=self.session,
                              requests_timeout=timeout, open_browser=open_browser, login_timeout=login_timeout,
                              ask=ask)
            self.auth.OAUTH_AUTHORIZE_URL = f"{accounts_url}/authorize"
        else:
            if not credentials.client_secret:
                raise SpotifyError("SPOTIPY_CLIENT_SECRET is not set; it is needed for app (client credentials) access")
            self.auth = SpotifyClientCredentials(credentials.client_id, credentials.client_secret,
                                                 cache_handler=MemoryCacheHandler(), requests_session=self.session,
                                                 requests_timeout=timeout)
        self.auth.OAUTH_TOKEN_URL = f"{accounts_url}/api/token"
        self.sp = spotipy.Spotify(auth_manager=self.auth, requests_session=self.session, requests_timeout=timeout)
        self.sp.prefix = f"{api_url}/v1/"
        self.restricted: set[str] = set()  # endpoints that answered 403 in this session

    def call(self, fn: Callable, *args, **kwargs):
        """One spotipy call; a 401 refreshes the token once and retries; failures become SpotifyError."""
        try:
            return self._call(fn, *args, **kwargs)
        except SpotifyError as err:
            if err.status != 401:
                raise
            log.info("Spotify rejected the access token (%s); refreshing it", err)
        self._refresh()
        return self._call(fn, *args, **kwargs)

    @staticmethod
    def _call(fn: Callable, *args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # spotipy flags endpoints Spotify restricted
                return fn(*args, **kwargs)
        except spotipy.SpotifyException as err:
            raise SpotifyError(f"Spotify answered HTTP {err.http_status}: {_reason(err)}", err.http_status) from None
        except SpotifyOauthError as err:
            raise SpotifyError(f"Spotify login failed: {_oauth_reason(err)}") from None
        except requests.RequestException as err:
            raise SpotifyError(f"cannot reach Spotify: {type(err).__name__}: {err}") from None

    def _refresh(self) -> None:
        try:
            if isinstance(self.auth, SpotifyPKCE):
                cached = self.auth.cache_handler.get_cached_token() or {}
                if "refresh_token" not in cached:
                    raise SpotifyError(f"Spotify rejected the token and {self.auth.cache_handler.path} holds no "
                                       "refresh token; delete it and run again to log in", 401)
                self.auth.refresh_access_token(cached["refresh_token"])
            else:
                self.auth.get_access_token(as_dict=False, check_cache=False)
        except SpotifyOauthError as err:
            raise SpotifyError(f"refreshing the Spotify token failed ({_oauth_reason(err)}); delete the token "
                               "cache and run again to log in") from None

    def login(self) -> dict:
        """Make sure a token exists (PKCE logs in the first time); returns the user, if any."""
        if isinstance(self.auth, SpotifyPKCE):
            return expect(self.call(self.sp.current_user), "user")
        self.call(self.auth.get_access_token, as_dict=False)
        return {}

    def authorize_url(self) -> str:
        """The Spotify page to open and approve: step 1 of a login without a browser here (a notebook)."""
        return self.auth.get_authorize_url()

    def finish_login(self, redirect_url: str) -> dict:
        """Step 2: the address the browser went to after approving; caches the token, returns the user."""
        self.call(self.auth.get_access_token, code=_auth_code(redirect_url, self.auth.redirect_uri), check_cache=False)
        return self.login()

    def pages(self, first: dict, key: str | None = None, progress: bool = False) -> Iterator[dict]:
        """Items of a paging object and of every page its absolute `next` URL leads to.

        A `next` already fetched is an error (a server-side loop would page forever); a listing that ends
        short of its `total` is a warning with both counts (the data may be incomplete).
        """
        page = expect(first.get(key) if key else first, "paging object")
        total, got, fetched = page.get("total"), 0, {page.get("href")}
        listing = urlparse(page.get("href") or "").path or "a Spotify listing"
        with tqdm(total=total, disable=not progress, desc="spotify", unit="item") as bar:
            while True:
                items = page.get("items") or []
                got += len(items)
                bar.update(len(items))
                yield from items
                if not page.get("next"):
                    break
                if page["next"] in fetched:
                    raise SpotifyError(f"Spotify's paging of {listing} loops back to {page['next']} after {got} of "
                                       f"{total} items; try again later")
                fetched.add(page["next"])
                following = expect(self.call(self.sp.next, page), "paging object")
                page = expect(following.get(key) if key else following, "paging object")
        if isinstance(total, int) and got < total:
            log.warning("got %d of %d items of %s: Spotify ended the listing early; the data may be incomplete, "
                        "run again later", got, total, listing)

    def restricted_once(self, endpoint: str, err: SpotifyError, consequence: str) -> None:
        """The 403 Spotify gives new apps on closed endpoints: warn once per endpoint, then go on."""
        if endpoint not in self.restricted:
            self.restricted.add(endpoint)
            log.warning("Spotify refuses %s for this app (%s; closed to apps created after Nov 2024 or in "
                        "development mode); %s", endpoint, err, consequence)

    # ---- reading ----
    def playlist_tracks(self, playlist: str, progress: bool = False) -> list[dict]:
        pid = spotify_id(playlist, "playlist")
        first = self.call(self.sp.playlist_items, pid, limit=PAGE_LIMIT, additional_types=("track",))
        tracks, skipped = [], 0
        for item in self.pages(expect(first, "paging object"), progress=progress):
            track = (item or {}).get("item") or (item or {}).get("track")  # 'item' since Feb 2026
            if not track or track.get("is_local") or not track.get("id") or track.get("type", "track") != "track":
                skipped += 1
                continue
            tracks.append(track)
        if skipped:
            log.warning("playlist %s: skipped %d item(s) that are local files, episodes or unavailable", pid, skipped)
        return tracks

    def saved_tracks(self, progress: bool = False) -> list[dict]:
        first = self.call(self.sp.current_user_saved_tracks, limit=PAGE_LIMIT)
        return [item["track"] for item in self.pages(expect(first, "paging object"), progress=progress)
                if item and item.get("track") and item["track"].get("id")]

    def search_tracks(self, query: str, limit: int | None = None, progress: bool = False) -> list[dict]:
        first = expect(self.call(self.sp.search, query, limit=SEARCH_LIMIT, type="track"), "search result")
        tracks = []
        for track in self.pages(first, key="tracks", progress=progress):
            if track and track.get("id"):
                tracks.append(track)
            if limit is not None and len(tracks) >= limit:
                break
        return tracks

    def tracks(self, ids: list[str], progress: bool = False) -> list[dict]:
        """Full track objects, 50 ids a request; one request per id where several-tracks is closed (403)."""
        found: list[dict] = []
        for batch in tqdm(list(chunks(ids, TRACKS_BATCH)), disable=not progress, desc="tracks"):
            if "tracks" not in self.restricted:
                try:
                    answer = expect(self.call(self.sp.tracks, batch), "tracks")
                    found += [t for t in answer.get("tracks") or [] if t]
                    continue
                except SpotifyError as err:
                    if err.status != 403:
                        raise
                    self.restricted_once("tracks", err, "fetching tracks one at a time")
            found += [expect(self.call(self.sp.track, tid), "track") for tid in batch]
        return found

    def audio_features(self, ids: list[str], progress: bool = False) -> dict[str, dict]:
        """Audio features by track id, 100 ids a request; {} when Spotify closed the endpoint (403)."""
        features: dict[str, dict] = {}
        for batch in tqdm(list(chunks(ids, FEATURES_BATCH)), disable=not progress, desc="audio features"):
            if "audio-features" in self.restricted:
                break
            try:
                answer = self.call(self.sp.audio_features, batch)
            except SpotifyError as err:
                if err.status != 403:
                    raise
                self.restricted_once("audio-features", err, "the audio-feature columns stay empty")
                break
            for entry in answer or []:
                if entry and entry.get("id"):
                    features[entry["id"]] = entry
        return features

    # ---- writing ----
    def find_own_playlist(self, name: str) -> dict | None:
        me = self.login()
        first = self.call(self.sp.current_user_playlists, limit=PAGE_LIMIT)
        for playlist in self.pages(expect(first, "paging object")):
            if playlist and playlist.get("name") == name and (playlist.get("owner") or {}).get("id") == me.get("id"):
                return playlist
        return None


def _reason(err: spotipy.SpotifyException) -> str:
    return " ".join(str(err.msg).split())


def _oauth_reason(err: SpotifyOauthError) -> str:
    return ": ".join(str(x) for x in (err.error, err.error_description) if x) or str(err)


def expect(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise SpotifyError(f"Spotify sent an unexpected answer: expected a {what}, got {type(value).__name__}")
    return value


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


_ID = re.compile(r"[0-9A-Za-z]{1,64}")
_URL = re.compile(r"https?://open\.spotify\.com/(?:intl-[\w-]+/)?(?:user/[^/]+/)?(\w+)/([0-9A-Za-z]+)(?:[/?#].*)?")
_URI = re.compile(r"spotify:(?:user:[^:]+:)?(\w+):([0-9A-Za-z]+)")


def spotify_id(ref: str, kind: str) -> str:
    """The id in a Spotify URL, URI or bare id of the given kind (track, playlist)."""
    ref = ref.strip()
    for pattern in (_URL, _URI):
        match = pattern.fullmatch(ref)
        if match:
            if match.group(1) != kind:
                raise SpotifyError(f"{ref!r} is a Spotify {match.group(1)}, not a {kind}")
            return match.group(2)
    if _ID.fullmatch(ref):
        return ref
    raise SpotifyError(f"{ref!r} is not a Spotify {kind} URL, URI or id")


def track_uri(ref: str) -> str:
    return f"spotify:track:{spotify_id(ref, 'track')}"
