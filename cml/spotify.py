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

import argparse
import contextlib
import csv
import json
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import pandas as pd
import requests
import spotipy
import urllib3
from spotipy.cache_handler import CacheHandler, MemoryCacheHandler
from spotipy.oauth2 import SpotifyClientCredentials, SpotifyOauthError, SpotifyPKCE, start_local_http_server
from tqdm import tqdm

from cml.errors import CmlError, check_input_file, check_output, count, positive
from cml.spotify_data import AUDIO_FEATURE_COLUMNS, SPOTIFY_COLUMNS, UNKNOWN_GENRE

log = logging.getLogger(__name__)

API_URL = "https://api.spotify.com"
ACCOUNTS_URL = "https://accounts.spotify.com"
USER_SCOPES = ("user-library-read,playlist-read-private,playlist-read-collaborative,"
               "playlist-modify-private,playlist-modify-public")
TOKEN_CACHE = ".spotify-token-cache.json"
PULL_COLUMNS = [*SPOTIFY_COLUMNS, "isrc", "release_date", "uri"]
TRACKS_BATCH = 50  # GET /tracks?ids=
FEATURES_BATCH = 100  # GET /audio-features?ids=
PLAYLIST_CHUNK = 100  # POST/PUT /playlists/{id}/items
PAGE_LIMIT = 50  # /me/tracks, /me/playlists, /playlists/{id}/items
SEARCH_LIMIT = 10  # the most development-mode apps may ask per search page since Feb 2026
DESCRIPTION_MAX = 300


class SpotifyError(CmlError, RuntimeError):
    """A Spotify failure explained in one line; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# ---- keeping secrets out of logs ----

class _Redact(logging.Filter):
    """Redacts bearer/basic credentials, token fields and known secrets from log records."""

    _patterns = [
        re.compile(r"((?:Bearer|Basic)\s+)[\w.~+/=-]+"),
        re.compile(r"""(\b(?:access_token|refresh_token|client_secret|code_verifier|code)['"]?\s*[:=]\s*['"]?)"""
                   r"""[^'"&,}\s]+"""),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = message
        for pattern in self._patterns:
            clean = pattern.sub(r"\1<redacted>", clean)
        for secret in self.secrets:
            clean = clean.replace(secret, "<redacted>")
        if clean != message:
            record.msg, record.args = clean, ()
        if record.name == "spotipy.client" and record.levelno == logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"  # we raise SpotifyError with the reason
        return True


_REDACT = _Redact()
for _name in ("spotipy", "spotipy.client", "spotipy.oauth2", "spotipy.util", "spotipy.cache_handler",
              "urllib3.connectionpool", __name__):
    logging.getLogger(_name).addFilter(_REDACT)


# ---- credentials ----

@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    redirect_uri: str | None = None


def read_dotenv(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines (optional `export`, quotes, # comments); a missing file is empty."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s is readable by other users; `chmod 600 %s` keeps your Spotify secret private", path, path)
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            log.warning("%s:%d ignored: not KEY=VALUE", path, number)
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def load_credentials(env_file: str | Path = ".env", environ: dict[str, str] | None = None) -> Credentials:
    """Environment variables win over `.env` (so a one-off `VAR=... cml ...` overrides the file)."""
    values = {**read_dotenv(env_file), **{k: v for k, v in (os.environ if environ is None else environ).items()
                                          if k.startswith("SPOTIPY_")}}
    client_id = values.get("SPOTIPY_CLIENT_ID")
    if not client_id:
        raise SpotifyError(f"SPOTIPY_CLIENT_ID is not set: export it or put it in {env_file} "
                           "(see the README, section Spotify)")
    secret = values.get("SPOTIPY_CLIENT_SECRET") or None
    if secret:
        _REDACT.secrets.add(secret)
    return Credentials(client_id, secret, values.get("SPOTIPY_REDIRECT_URI") or None)


class TokenCache(CacheHandler):
    """spotipy token cache in a JSON file that is never readable by others, not even for a moment."""

    def __init__(self, path: str | Path = TOKEN_CACHE):
        self.path = Path(path)

    def get_cached_token(self) -> dict | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("token cache %s unreadable (%s); logging in again", self.path, err.strerror)
            return None
        if stat.S_IMODE(self.path.stat().st_mode) & 0o077:
            os.chmod(self.path, 0o600)
            log.warning("token cache %s was readable by others; its mode is now 0600", self.path)
        try:
            problem = _token_problem(token := json.loads(text))
        except ValueError:
            problem = "not JSON"
        if problem:
            log.warning("token cache %s is not a usable Spotify token (%s); logging in again", self.path, problem)
            return None
        return token

    def save_token_to_cache(self, token_info: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # O_CREAT's mode does not apply to a file left by a crash
            json.dump(token_info, f)
        os.replace(tmp, self.path)


_TOKEN_FIELDS = {"access_token": str, "refresh_token": str, "scope": str, "expires_at": (int, float)}


def _token_problem(token) -> str | None:
    """Why spotipy would crash on this cached token (it indexes these fields unchecked), or None."""
    if not isinstance(token, dict):
        return f"it holds {json.dumps(token)[:30]}, not a token object"
    for name, kind in _TOKEN_FIELDS.items():
        if name not in token:
            return f"{name} is missing"
        if not isinstance(token[name], kind) or isinstance(token[name], bool):
            return f"{name} is a {type(token[name]).__name__}"
    return None


# ---- HTTP session: retries, a deadline per attempt, response checks ----

class _Retry(urllib3.Retry):
    """urllib3 Retry with exponential back-off from the first retry, a cap on `Retry-After` waits,
    and no retry of a POST that reached the server (a 5xx POST may have created the playlist)."""

    max_retry_after = 120.0

    def new(self, **kwargs) -> _Retry:
        retry = super().new(**kwargs)
        retry.max_retry_after = self.max_retry_after
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method == "POST" and status_code != 429:
            return False
        return super().is_retry(method, status_code, has_retry_after)

    def get_backoff_time(self) -> float:
        if not self.history:
            return 0.0
        return min(self.backoff_max, self.backoff_factor * 2 ** (len(self.history) - 1))

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if response is not None:
            log.warning("Spotify answered %s for %s %s; retrying", response.status, method,
                        urlparse(url or "").path)
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def parse_retry_after(self, retry_after: str) -> float | None:
        """Seconds, as Spotify sends; anything else (an HTTP-date, garbage) means back off (urllib3 raises)."""
        if re.fullmatch(r"[0-9]+", retry_after.strip()):
            return int(retry_after)
        log.warning("Spotify sent Retry-After %r, not a number of seconds; backing off instead", retry_after[:40])
        return None

    def sleep_for_retry(self, response) -> bool:
        wait = self.get_retry_after(response)
        if wait is None:
            return False
        if wait > self.max_retry_after:
            raise SpotifyError(f"Spotify rate limit: it asks to wait {wait:.0f} s (more than "
                               f"{self.max_retry_after:.0f} s); try again later", status=response.status)
        log.warning("Spotify rate limit: waiting %.1f s as its Retry-After asks", wait)
        time.sleep(wait)
        return True


_SENDING = threading.local()  # the watchdog of the request this thread is sending


class _Watchdog:
    """Shuts the socket down when an attempt (request sent to last byte of the answer) outlasts `deadline`
    s: requests' timeout bounds each socket read, so a server trickling bytes could hold a call forever."""

    def __init__(self, deadline: float):
        self.deadline, self.timer, self.expired = deadline, None, False

    def arm(self, sock: socket.socket) -> None:
        self.disarm()
        self.expired = False
        self.timer = threading.Timer(self.deadline, self._expire, (sock,))
        self.timer.daemon = True
        self.timer.start()

    def disarm(self) -> None:
        if self.timer:
            self.timer.cancel()

    def _expire(self, sock: socket.socket) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """urllib3 connection that arms the sending thread's watchdog on each attempt, retries included. It
    takes the socket here because http.client drops `self.sock` after the headers of a closing answer."""

    def getresponse(self):
        watchdog = getattr(_SENDING, "watchdog", None)
        if watchdog and self.sock:
            watchdog.arm(self.sock)
        return super().getresponse()


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """HTTPAdapter that reads each answer whole under a deadline (see _Watchdog)."""

    def __init__(self, deadline: float, **kwargs):
        self.deadline = deadline
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # a SOCKS manager keeps its own pools
            manager.pool_classes_by_scheme = _POOLS
        return manager

    def send(self, request, **kwargs) -> requests.Response:
        _SENDING.watchdog = watchdog = _Watchdog(self.deadline)
        try:
            response = super().send(request, **kwargs)
            response.content  # noqa: B018 - the body too is read while the watchdog is armed
        except requests.RequestException:
            if not watchdog.expired:
                raise
        finally:
            watchdog.disarm()
            _SENDING.watchdog = None
        if watchdog.expired:  # cut off: an exception, or a head or body that merely looks short
            raise SpotifyError(f"Spotify sent no complete answer to {request.method} {urlparse(request.url).path} "
                               f"within {self.deadline:g} s (a stalled or very slow connection); try again later")
        return response


def _check_json(response: requests.Response, *args, **kwargs) -> requests.Response:
    """spotipy turns an undecodable body into a silent None; make it a clear error instead."""
    if response.ok and response.content.strip():
        try:
            response.json()
        except ValueError:
            raise SpotifyError(
                f"Spotify returned malformed JSON (HTTP {response.status_code}, {len(response.content)} bytes, "
                f"{response.headers.get('Content-Type', 'no content type')}) for "
                f"{response.request.method} {urlparse(response.url).path}", status=response.status_code) from None
    return response


def make_session(retries: int = 5, backoff_factor: float = 0.5, max_retry_after: float = 120.0,
                 deadline: float = 60.0) -> requests.Session:
    """A requests session that retries 429 (honouring Retry-After) and 5xx with back-off, and gives each
    attempt `deadline` seconds from sending the request to reading the last byte of the answer."""
    retry = _Retry(total=retries, connect=retries, read=False, status=retries, backoff_factor=backoff_factor,
                   status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False,
                   allowed_methods=frozenset({"GET", "PUT", "DELETE", "POST"}))
    retry.max_retry_after = max_retry_after
    session = requests.Session()
    adapter = _Adapter(deadline, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.hooks["response"].append(_check_json)
    return session


# ---- logging in ----

def ask_in_terminal(authorize_url: str) -> str:
    """The no-browser login's default `ask`: show the Spotify page to open, read the address pasted back."""
    print("Open this address in any browser, log in and approve; the browser then goes to an address that "
          f"does not load: copy it and paste it here.\n  {authorize_url}", file=sys.stderr)
    try:
        return input("address: ")
    except EOFError:
        raise SpotifyError("no address was pasted (standard input is closed); run the login in a terminal") from None


def _auth_code(redirect_url: str, redirect_uri: str) -> str:
    """The authorisation code in the address the browser was sent to after the user approved."""
    query = dict(parse_qsl(urlparse(redirect_url.strip()).query))
    if query.get("error"):
        raise SpotifyError(f"Spotify login refused ({query['error']}); approve the app on the Spotify page")
    if not query.get("code"):
        raise SpotifyError(f"the pasted address holds no login code; paste the whole address the browser went to "
                           f"after you approved (it starts {redirect_uri}?code=)")
    return query["code"]


class _PKCE(SpotifyPKCE):
    """SpotifyPKCE whose browser login gives up after `login_timeout` s (spotipy's waits forever), and whose
    login without a local redirect server gets the pasted redirect address from `ask(authorize_url)`."""

    def __init__(self, *, login_timeout: float, ask: Callable[[str], str], **kwargs):
        super().__init__(**kwargs)
        self.login_timeout, self.ask = login_timeout, ask

    def _get_auth_response_local_server(self, redirect_port: int) -> str:
        try:
            server = start_local_http_server(redirect_port)
        except OSError as err:
            raise SpotifyError(f"cannot listen on port {redirect_port} of {self.redirect_uri} for the login "
                               f"({err.strerror}); stop what uses it or log in with --no-browser") from None
        server.timeout = self.login_timeout
        with server:
            self._open_auth_url()
            server.handle_request()
        if server.error:
            raise server.error
        if not server.auth_code:
            raise SpotifyError(f"no login came back to {self.redirect_uri} within {self.login_timeout:g} s; "
                               "approve the app in the browser, or log in with --no-browser")
        return server.auth_code

    def _get_auth_response_interactive(self, open_browser: bool = False) -> str:
        return _auth_code(self.ask(self.get_authorize_url()), self.redirect_uri)


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
            return _expect(self.call(self.sp.current_user), "user")
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
        page = _expect(first.get(key) if key else first, "paging object")
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
                following = _expect(self.call(self.sp.next, page), "paging object")
                page = _expect(following.get(key) if key else following, "paging object")
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
        for item in self.pages(_expect(first, "paging object"), progress=progress):
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
        return [item["track"] for item in self.pages(_expect(first, "paging object"), progress=progress)
                if item and item.get("track") and item["track"].get("id")]

    def search_tracks(self, query: str, limit: int | None = None, progress: bool = False) -> list[dict]:
        first = _expect(self.call(self.sp.search, query, limit=SEARCH_LIMIT, type="track"), "search result")
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
        for batch in tqdm(list(_chunks(ids, TRACKS_BATCH)), disable=not progress, desc="tracks"):
            if "tracks" not in self.restricted:
                try:
                    answer = _expect(self.call(self.sp.tracks, batch), "tracks")
                    found += [t for t in answer.get("tracks") or [] if t]
                    continue
                except SpotifyError as err:
                    if err.status != 403:
                        raise
                    self.restricted_once("tracks", err, "fetching tracks one at a time")
            found += [_expect(self.call(self.sp.track, tid), "track") for tid in batch]
        return found

    def audio_features(self, ids: list[str], progress: bool = False) -> dict[str, dict]:
        """Audio features by track id, 100 ids a request; {} when Spotify closed the endpoint (403)."""
        features: dict[str, dict] = {}
        for batch in tqdm(list(_chunks(ids, FEATURES_BATCH)), disable=not progress, desc="audio features"):
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
        for playlist in self.pages(_expect(first, "paging object")):
            if playlist and playlist.get("name") == name and (playlist.get("owner") or {}).get("id") == me.get("id"):
                return playlist
        return None


def _reason(err: spotipy.SpotifyException) -> str:
    return " ".join(str(err.msg).split())


def _oauth_reason(err: SpotifyOauthError) -> str:
    return ": ".join(str(x) for x in (err.error, err.error_description) if x) or str(err)


def _expect(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise SpotifyError(f"Spotify sent an unexpected answer: expected a {what}, got {type(value).__name__}")
    return value


def _chunks(items: list, size: int) -> Iterator[list]:
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


# ---- pull ----

def track_row(track: dict, features: dict | None, genre: str) -> dict:
    """One CSV row in the public dataset's column names (artists ';'-joined), plus isrc, release date, uri."""
    album = track.get("album") or {}
    features = features or {}
    return {
        "track_id": track.get("id"), "artists": ";".join(a.get("name") or "" for a in track.get("artists") or []),
        "album_name": album.get("name"), "track_name": track.get("name"), "popularity": track.get("popularity"),
        "duration_ms": track.get("duration_ms"), "explicit": track.get("explicit"),
        **{column: features.get(column) for column in AUDIO_FEATURE_COLUMNS},
        "track_genre": genre, "isrc": (track.get("external_ids") or {}).get("isrc"),
        "release_date": album.get("release_date"), "uri": track.get("uri"),
    }


def pull(client: SpotifyClient, source: str, value: str | list[str] | None = None, *, limit: int | None = None,
         genre: str = UNKNOWN_GENRE, features: bool = True, progress: bool = False) -> pd.DataFrame:
    """Tracks of a source -> DataFrame with PULL_COLUMNS.

    source: 'playlist' (value: URL, URI or id), 'saved' (the user's library), 'search' (value: query),
    'tracks' (value: list of track URLs, URIs or ids). `genre` fills track_genre (Spotify gives tracks none).
    """
    if source == "playlist":
        tracks = client.playlist_tracks(str(value), progress)
    elif source == "saved":
        tracks = client.saved_tracks(progress)
    elif source == "search":
        tracks = client.search_tracks(str(value), limit, progress)
    elif source == "tracks":
        tracks = client.tracks([spotify_id(v, "track") for v in value or []], progress)
    else:
        raise ValueError(f"unknown source {source!r}; use playlist, saved, search or tracks")
    if limit is not None:
        tracks = tracks[:limit]
    by_id: dict[str, dict] = {}
    for track in tracks:
        by_id.setdefault(track["id"], track)
    unique = list(by_id.values())
    if len(unique) < len(tracks):
        log.info("dropped %d repeated track(s)", len(tracks) - len(unique))
    found = client.audio_features([t["id"] for t in unique], progress) if features and unique else {}
    rows = [track_row(t, found.get(t["id"]), genre) for t in unique]
    return pd.DataFrame(rows, columns=PULL_COLUMNS)


def write_tracks_csv(tracks: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tracks.to_csv(path, index=False)
    return path


# ---- push ----

@dataclass
class PushResult:
    playlist_id: str | None  # None on a dry run that would create
    action: str  # 'create' or 'replace'
    n_tracks: int
    requests: list[str]  # the writes made (or, on a dry run, that would be made)
    description: str


def describe(how: str, n_tracks: int) -> str:
    text = f"Generated by cml (Contrastive Music Learning) on {date.today().isoformat()}: {how} ({n_tracks} tracks)"
    text = " ".join(text.split())  # Spotify rejects line breaks in descriptions
    return text if len(text) <= DESCRIPTION_MAX else text[:DESCRIPTION_MAX - 1] + "…"


def push(client: SpotifyClient, name: str, uris: list[str], how: str, *, replace: bool = False,
         public: bool = False, dry_run: bool = False) -> PushResult:
    """Create playlist `name` from track URIs, or with `replace` overwrite the user's playlist of that name.

    An existing playlist is never overwritten without `replace`; a dry run only reads.
    """
    uris = [track_uri(u) for u in uris]
    if not uris:
        raise SpotifyError("no tracks to push")
    description = describe(how, len(uris))
    existing = client.find_own_playlist(name)
    if existing and not replace:
        raise SpotifyError(f"you already have a playlist named {name!r} ({existing['id']}); pass --replace to "
                           "overwrite its tracks or choose another --name")
    chunks = list(_chunks(uris, PLAYLIST_CHUNK))
    action = "replace" if existing else "create"
    plan = ([f"update details of {existing['id']}", f"replace items with {len(chunks[0])} track(s)"] if existing
            else [f"create playlist {name!r}", f"add {len(chunks[0])} track(s)"])
    plan += [f"add {len(c)} track(s)" for c in chunks[1:]]
    if dry_run:
        return PushResult(existing["id"] if existing else None, action, len(uris), plan, description)
    if existing:
        pid = existing["id"]
        # public=None leaves an existing playlist's visibility alone unless --public asks for it
        client.call(client.sp.playlist_change_details, pid, description=description, public=public or None)
        client.call(client.sp.playlist_replace_items, pid, chunks[0])
    else:
        created = _expect(client.call(client.sp.current_user_playlist_create, name, public=public,
                                      description=description), "playlist")
        pid = created["id"]
        client.call(client.sp.playlist_add_items, pid, chunks[0])
    for chunk in chunks[1:]:
        client.call(client.sp.playlist_add_items, pid, chunk)
    log.info("%s playlist %r (%s) with %d track(s)", "replaced" if existing else "created", name, pid, len(uris))
    return PushResult(pid, action, len(uris), plan, description)


# ---- linking local files ----

@dataclass
class Link:
    path: Path
    uri: str | None
    matched_by: str  # 'isrc', 'artist+title' or '' when unmatched
    reason: str = ""  # why unmatched


def read_tags(path: str | Path) -> dict[str, str]:
    """isrc / artist / title from a file's tags (mutagen 'easy' names); missing ones are absent."""
    import mutagen  # only linking needs it

    try:
        audio = mutagen.File(path, easy=True)
    except (mutagen.MutagenError, OSError) as err:
        raise SpotifyError(f"cannot read tags: {err}") from None
    tags = getattr(audio, "tags", None) or {}
    out = {}
    for key in ("isrc", "artist", "title"):
        try:
            values = tags.get(key) or []
        except (KeyError, ValueError):
            values = []
        value = str(values[0]).strip() if values else ""
        if value:
            out[key] = value
    return out


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def link_file(client: SpotifyClient, path: str | Path) -> Link:
    """Find a local file on Spotify: by ISRC tag, else by artist + title tags (both must match)."""
    path = Path(path)
    try:
        tags = read_tags(path)
    except SpotifyError as err:
        return Link(path, None, "", str(err))
    if tags.get("isrc"):
        isrc = re.sub(r"[^A-Za-z0-9]", "", tags["isrc"]).upper()
        hits = client.search_tracks(f"isrc:{isrc}", limit=1)
        if hits:
            return Link(path, hits[0]["uri"], "isrc")
    if not (tags.get("artist") and tags.get("title")):
        return Link(path, None, "", "no ISRC match and no artist + title tags")
    title, artist = _norm(tags["title"]), _norm(tags["artist"])
    query = f'track:"{tags["title"].replace(chr(34), "")}" artist:"{tags["artist"].replace(chr(34), "")}"'
    for track in client.search_tracks(query, limit=SEARCH_LIMIT):
        names = [_norm(a.get("name") or "") for a in track.get("artists") or []]
        if _norm(track.get("name") or "") == title and any(n and (n in artist or artist in n) for n in names):
            return Link(path, track["uri"], "artist+title")
    return Link(path, None, "", f"no Spotify track titled {tags['title']!r} by {tags['artist']!r}")


def link_local_files(client: SpotifyClient, paths: Iterable[str | Path], progress: bool = False) -> list[Link]:
    links = [link_file(client, p) for p in tqdm(list(paths), disable=not progress, desc="linking")]
    unmatched = [link for link in links if not link.uri]
    if unmatched:
        log.warning("%d of %d local file(s) not found on Spotify: %s", len(unmatched), len(links),
                    "; ".join(f"{link.path.name} ({link.reason})" for link in unmatched[:5])
                    + (" ..." if len(unmatched) > 5 else ""))
    return links


def push_tracks(client: SpotifyClient, name: str, refs: list[str], local: list[Path], how: str, *,
                progress: bool = False, **options) -> tuple[PushResult, list[Link]]:
    """What `cml spotify push` does with a track list: find the local files on Spotify, then `push` the Spotify
    tracks followed by the linked files (``options``: replace, public, dry_run)."""
    links = link_local_files(client, local, progress=progress) if local else []
    return push(client, name, [*refs, *(link.uri for link in links if link.uri)], how, **options), links


def read_playlist_file(path: str | Path) -> tuple[list[str], list[Path]]:
    """(Spotify refs, local audio paths) from a .csv (uri / track_id / path column) or a .m3u / .txt list."""
    path = check_input_file(path, "track list")
    refs: list[str] = []
    local: list[Path] = []

    def add(entry: str) -> None:
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            return
        if entry.startswith(("spotify:", "http://", "https://")):
            refs.append(entry)
        elif entry.startswith(("/", ".")) or "." in Path(entry).name:
            local.append(Path(entry) if Path(entry).is_absolute() else path.parent / entry)
        else:
            refs.append(entry)  # a bare id

    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            column = next((c for c in ("uri", "spotify_uri", "track_id", "path") if rows and c in rows[0]), None)
            if column is None:
                raise SpotifyError(f"{path}: needs a 'uri', 'track_id' or 'path' column")
            for row in rows:
                add(row[column] or "")
        else:
            for line in path.read_text(encoding="utf-8").splitlines():
                add(line)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpotifyError(f"{path}: cannot read the track list ({err})") from None
    return refs, local


# ---- CLI ----

def _client(args: argparse.Namespace, user: bool) -> SpotifyClient:
    return SpotifyClient(load_credentials(args.env_file), user=user, token_cache=args.token_cache,
                         open_browser=not args.no_browser, login_timeout=args.login_timeout)


def _cmd_pull(args: argparse.Namespace) -> int:
    check_output(args.out)
    source, value = ("playlist", args.playlist) if args.playlist else ("saved", None) if args.saved else \
        ("search", args.search) if args.search else ("tracks", args.tracks)
    user = args.auth == "user" if args.auth else source in ("playlist", "saved")
    if source == "tracks":
        value = read_playlist_file(value)[0]
    tracks = pull(_client(args, user), source, value, limit=args.limit, genre=args.genre,
                  features=not args.no_features, progress=True)
    write_tracks_csv(tracks, args.out)
    with_features = int(tracks[AUDIO_FEATURE_COLUMNS].notna().any(axis=1).sum())
    print(f"wrote {len(tracks)} track(s) to {args.out} ({with_features} with audio features)")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    refs, local = read_playlist_file(args.tracks_file)
    how = args.description or f"tracks from {Path(args.tracks_file).name}"
    result, links = push_tracks(_client(args, user=True), args.name, refs, local, how, replace=args.replace,
                                public=args.public, dry_run=args.dry_run, progress=True)
    if links:
        print(f"linked {sum(1 for link in links if link.uri)} of {len(links)} local file(s)")
    verb = "would" if args.dry_run else "did"
    print(f"{verb} {result.action} playlist {args.name!r} with {result.n_tracks} track(s):")
    for step in result.requests:
        print(f"  - {step}")
    print(f"  description: {result.description}")
    return 0


def _cmd_link(args: argparse.Namespace) -> int:
    check_output(args.out)
    links = link_local_files(_client(args, user=args.auth == "user"), args.files, progress=True)
    table = pd.DataFrame([{"path": str(link.path), "uri": link.uri, "matched_by": link.matched_by,
                           "reason": link.reason} for link in links])
    write_tracks_csv(table, args.out)
    print(f"linked {int(table['uri'].notna().sum())} of {len(table)} file(s); wrote {args.out}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("spotify")
    commands = parser.add_subparsers(dest="spotify_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", default=".env", help="gitignored file with SPOTIPY_* variables")
    common.add_argument("--token-cache", default=TOKEN_CACHE, help="user token cache (mode 0600, gitignored)")
    common.add_argument("--no-browser", action="store_true",
                        help="log in without opening a browser here: print the Spotify page, paste back the "
                             "address it sends you to (for remote machines)")
    common.add_argument("--login-timeout", type=positive, default=120.0, metavar="SECONDS",
                        help="how long the browser login waits for you to approve (default 120)")

    pull_p = commands.add_parser("pull", parents=[common], help="tracks -> CSV for the DataAnalysis notebook")
    what = pull_p.add_mutually_exclusive_group(required=True)
    what.add_argument("--playlist", help="playlist URL, URI or id")
    what.add_argument("--saved", action="store_true", help="your saved tracks (library)")
    what.add_argument("--search", help="search query, e.g. 'genre:jazz year:2020'")
    what.add_argument("--tracks", help="file with track URIs/URLs/ids (.txt, .m3u or .csv with a uri column)")
    pull_p.add_argument("--out", required=True, help="CSV to write, e.g. data/spotify/my_playlist.csv")
    pull_p.add_argument("--limit", type=count, help="at most this many tracks")
    pull_p.add_argument("--genre", default=UNKNOWN_GENRE, help="value for track_genre (Spotify gives tracks none)")
    pull_p.add_argument("--no-features", action="store_true", help="do not ask for audio features")
    pull_p.add_argument("--auth", choices=("user", "app"),
                        help="user (PKCE login) or app (client credentials); default: user for --playlist/--saved")
    pull_p.set_defaults(func=_cmd_pull)

    push_p = commands.add_parser("push", parents=[common], help="create or replace a playlist in your account")
    push_p.add_argument("tracks_file", help="track URIs (.txt/.m3u/.csv uri column) or local audio files (.m3u)")
    push_p.add_argument("--name", required=True, help="playlist name")
    push_p.add_argument("--description", help="how the playlist was generated (goes into its description)")
    push_p.add_argument("--replace", action="store_true", help="overwrite your playlist of the same name")
    push_p.add_argument("--public", action="store_true", help="make the playlist public (default private)")
    push_p.add_argument("--dry-run", action="store_true", help="print what would be done; write nothing")
    push_p.set_defaults(func=_cmd_push)

    link_p = commands.add_parser("link", parents=[common], help="find local audio files on Spotify by their tags")
    link_p.add_argument("files", nargs="+", help="audio files")
    link_p.add_argument("--out", required=True, help="CSV with path, uri, matched_by, reason")
    link_p.add_argument("--auth", choices=("user", "app"), default="app")
    link_p.set_defaults(func=_cmd_link)
