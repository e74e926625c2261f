"""`cml map TABLE`: the library map as a local web page, served from this machine.

A server rather than a standalone HTML file because the page asks Python for what it cannot compute itself:
the playlist of the selected seeds (`cml.playlist.hull`, exactly as `cml playlist` builds it), the M3U8 file and
the push to Spotify (`cml spotify push`'s code path, with the credentials that stay on this machine), and
the local audio files a browser may not open from a page. Everything the page loads comes from the cml
package (its HTML/JS) and from plotly's Python package (plotly.min.js): no CDN, no network.

The server listens on 127.0.0.1 only and answers only requests addressed to it by that name (a page on
another site cannot reach it through DNS tricks). Audio is served by row number, never by a path taken from
a request. `Actions` is shared with the notebook widget (`cml.playlist.widget`), which sends the same requests
over the Jupyter comm instead of HTTP.
"""
from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlparse

from cml.data.features import PROJECTIONS
from cml.errors import CmlError, UsageError, check_output, non_negative_int
from cml.playlist.files import URI_COLUMNS
from cml.playlist.hull import MODES, PlaylistError
from cml.playlist.library_map import LibraryMap, load_map

log = logging.getLogger(__name__)

STATIC = files("cml.playlist") / "static"
MAX_BODY = 10_000_000  # bytes of a request body (a playlist of ids)
AUDIO_TYPES = {".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg",
               ".mp3": "audio/mpeg", ".wav": "audio/wav", ".m4a": "audio/mp4", ".aac": "audio/aac"}


def plotly_js() -> bytes:
    """plotly.js as the plotly Python package ships it (offline)."""
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


class Actions:
    """What the page may ask of Python: a playlist, saving it, pushing it to Spotify."""

    def __init__(self, library: LibraryMap, out_dir: str | Path = "playlists", env_file: str | Path = ".env",
                 token_cache: str | Path | None = None):
        self.library, self.out_dir, self.env_file, self.token_cache = library, Path(out_dir), env_file, token_cache

    def spotify_ready(self) -> bool:
        """Whether push can work: credentials are set (a login may still be asked for)."""
        from cml.spotify.auth import load_credentials
        from cml.spotify.http import SpotifyError

        try:
            return load_credentials(self.env_file).redirect_uri is not None
        except SpotifyError:
            return False

    def map(self, _: dict) -> dict:
        return {**self.library.payload(), "spotify": self.spotify_ready(), "modes": list(MODES)}

    def playlist(self, body: dict) -> dict:
        result = self.library.playlist(_ids(body, "seeds"), body.get("length", 20), body.get("mode", "hull"))
        return {**result, "names": self.library.names[result["rows"]].tolist()}

    def save(self, body: dict) -> dict:
        return {"path": str(self.library.save(_ids(body, "ids"), self.out_dir, str(body.get("name") or "")))}

    def spotify(self, body: dict) -> dict:
        from cml.spotify.auth import load_credentials
        from cml.spotify.client import SpotifyClient
        from cml.spotify.sync import push_tracks

        meta = self.library.table.meta
        column = next((c for c in URI_COLUMNS if c in meta), None)
        refs, local = [], []  # a track's Spotify URI where the table has one, else its local file to link
        for row in self.library.rows(_ids(body, "ids")):
            uri = meta[column].iloc[row] if column else None
            if isinstance(uri, str) and uri:
                refs.append(uri)
            elif self.library.audio_path(row) is not None:
                local.append(self.library.audio_path(row))
        kwargs = {"token_cache": self.token_cache} if self.token_cache else {}
        client = SpotifyClient(load_credentials(self.env_file), user=True, **kwargs)
        result, links = push_tracks(client, str(body.get("name") or "cml map playlist"), refs, local,
                                    "made on the cml library map", replace=bool(body.get("replace")))
        return {"playlist_id": result.playlist_id, "n_tracks": result.n_tracks, "action": result.action,
                "unlinked": sum(1 for link in links if not link.uri)}

    def call(self, name: str, body: dict) -> dict:
        """Run action ``name``; a mistake (unknown seeds, no credentials, ...) comes back as ``{"error": ...}``."""
        if name not in ("map", "playlist", "save", "spotify"):
            return {"error": f"unknown action {name!r}"}
        try:
            return getattr(self, name)(body)
        except (CmlError, PlaylistError, ValueError, OSError) as err:
            log.warning("%s: %s", name, err)
            return {"error": str(err)}


def _ids(body: dict, key: str) -> list[str]:
    values = body.get(key)
    if not isinstance(values, list) or not values:
        raise UsageError(f"no {key} given")
    return [str(v) for v in values]


class _Handler(BaseHTTPRequestHandler):
    server: "MapServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: dict) -> None:
        status = HTTPStatus.BAD_REQUEST if "error" in value else HTTPStatus.OK
        self._send(status, json.dumps(value).encode(), "application/json")

    def _allowed(self) -> bool:
        """Only requests addressed to this server by its loopback name (no DNS rebinding)."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost", "[::1]"):
            return True
        self._send(HTTPStatus.FORBIDDEN, b"forbidden", "text/plain")
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._allowed():
            return
        path = urlparse(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
        elif path in ("/map.js", "/boot.js"):
            self._send(HTTPStatus.OK, (STATIC / path[1:]).read_bytes(), "text/javascript; charset=utf-8")
        elif path == "/plotly.min.js":
            self._send(HTTPStatus.OK, self.server.plotly, "text/javascript; charset=utf-8")
        elif path == "/api/map":
            self._json(self.server.actions.call("map", {}))
        elif path.startswith("/audio/") and path[7:].isdigit():
            self._audio(int(path[7:]))
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    do_HEAD = do_GET

    def _audio(self, row: int) -> None:
        track = self.server.actions.library.audio_path(row)
        try:
            data = track.read_bytes() if track else None
        except OSError:
            data = None
        if data is None:
            self._send(HTTPStatus.NOT_FOUND, b"no audio for this track", "text/plain")
            return
        kind = AUDIO_TYPES.get(track.suffix.lower()) or mimetypes.guess_type(track.name)[0]
        self._send(HTTPStatus.OK, data, kind or "application/octet-stream")

    def do_POST(self) -> None:  # noqa: N802
        if not self._allowed():
            return
        name = urlparse(self.path).path.removeprefix("/api/")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json({"error": "request too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json({"error": "the request is not JSON"})
            return
        self._json(self.actions_call(name, body if isinstance(body, dict) else {}))

    def actions_call(self, name: str, body: dict) -> dict:
        with self.server.lock:  # one playlist at a time: the map's index is built lazily
            return self.server.actions.call(name, body)


class MapServer(ThreadingHTTPServer):
    """The page's server on 127.0.0.1 (``port`` 0: any free one); ``url`` is where to open it."""

    daemon_threads = True

    def __init__(self, actions: Actions, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.actions, self.plotly, self.lock = actions, plotly_js(), threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"

    def start(self) -> "MapServer":
        """Serve from a background thread (for notebooks and tests); `shutdown()` stops it."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __enter__(self) -> "MapServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def _cmd_map(args: argparse.Namespace) -> int:
    check_output(args.out_dir, folder=True)
    library = load_map(args.file, label_column=args.label_column, clusters=args.clusters,
                       projection=args.projection, seed=args.seed)
    server = MapServer(Actions(library, args.out_dir, args.env_file), args.port)
    print(f"the map of {len(library)} tracks ({library.projection}): {server.url}  (Ctrl-C stops it)", flush=True)
    if not args.no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def register_cli(subparsers) -> None:
    """``cml map FILE [--clusters CLUSTERS.csv] [--projection auto|pca|tsne|umap] [--port N]``."""
    p = subparsers.add_parser("map", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="feature table (.parquet or .csv) with an id column and numeric features")
    p.add_argument("--label-column", help="column holding the labels to colour by (default: label, if present)")
    p.add_argument("--clusters", help="id,cluster CSV of `cml cluster --out` to colour by")
    p.add_argument("--projection", choices=("auto", *PROJECTIONS), default="auto",
                   help="2-D layout; auto: the one that keeps most nearest neighbours on a sample")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the projection and its sample")
    p.add_argument("--port", type=non_negative_int, default=8765, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--out-dir", default="playlists", help="folder the page saves M3U8 playlists into")
    p.add_argument("--env-file", default=".env", help="file with the SPOTIPY_* variables (for the Spotify push)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser; print the address only")
    p.set_defaults(func=_cmd_map)
