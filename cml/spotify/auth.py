"""Credentials (environment or a gitignored .env), the user token cache (mode 0600 from the start), and the
PKCE login: in a browser with a timeout, or by pasting the redirect address back (--no-browser).
"""
from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

from spotipy.cache_handler import CacheHandler
from spotipy.oauth2 import SpotifyPKCE, start_local_http_server

from cml.spotify.http import _REDACT, SpotifyError

log = logging.getLogger(__name__)

TOKEN_CACHE = ".spotify-token-cache.json"
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
                           "(the README, section Spotify, says how)")
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
