"""The HTTP layer under spotipy: one-line errors, secrets kept out of logs, retries with back-off and a
wall-clock deadline per attempt, and response checks.

The log filter is installed when this module is imported, on spotipy's, urllib3's and cml.spotify's loggers.
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from urllib.parse import urlparse

import requests
import urllib3

from cml.errors import CmlError

log = logging.getLogger(__name__)


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
              "urllib3.connectionpool", "cml.spotify.auth", "cml.spotify.client", "cml.spotify.http",
              "cml.spotify.sync", "cml.spotify.cli"):
    logging.getLogger(_name).addFilter(_REDACT)

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
