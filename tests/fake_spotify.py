"""A local fake of the Spotify Web API and accounts service, for tests.

It answers over real HTTP on 127.0.0.1 (ephemeral port, background thread) in the official JSON shapes:
paging objects with absolute `next` URLs, track / audio-features / user / playlist objects, the token
endpoint (client credentials, PKCE authorization code, refresh) and the /authorize redirect. It keeps the
limits Spotify enforces (ids per batch, items per page) so a client that ignores them fails, records
every request (arrival time, method, path, query, bearer token, body) so tests can check behaviour, and
can inject faults: any status / headers / body for the next N matching requests (optionally trickled a
byte at a time), server-side token expiry, the 403 that new apps get on audio features, paging whose
`next` loops back, and a `total` larger than the listing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlparse

CLIENT_ID = "fake-client-id-0123456789"
CLIENT_SECRET = "fake-client-secret-9876543210"
USER_ID = "fakeuser"
FEATURES = ["danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
            "instrumentalness", "liveness", "valence", "tempo", "time_signature"]
LIMITS = {"tracks": 50, "audio-features": 100, "page": 50, "search": 10, "playlist-write": 100}


@dataclass
class Seen:
    """One request as the fake received it."""

    t: float  # time.monotonic() at arrival
    method: str
    path: str
    query: dict
    token: str | None
    body: object
    status: int = 0


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    headers: dict
    body: bytes
    times: int
    trickle_s: float  # > 0: send the body (and with trickle_headers the head too) a byte every trickle_s s
    trickle_headers: bool


def track_id(i: int) -> str:
    return f"{i:022d}".replace("0", "A")  # 22 base-62 characters, like real ids


def make_track(i: int, base: str) -> dict:
    """A full track object; every third track has two artists to exercise the ';' join."""
    tid = track_id(i)
    artists = [{"id": f"artist{i % 7}", "name": f"Artist {i % 7}"}]
    if i % 3 == 0:
        artists.append({"id": "artistfeat", "name": "Feat Artist"})
    artists = [{**a, "type": "artist", "uri": f"spotify:artist:{a['id']}", "href": f"{base}/v1/artists/{a['id']}",
                "external_urls": {"spotify": f"https://open.spotify.com/artist/{a['id']}"}} for a in artists]
    album_id = f"album{i // 10}"
    return {
        "album": {"album_type": "album", "id": album_id, "name": f"Album {i // 10}", "type": "album",
                  "uri": f"spotify:album:{album_id}", "href": f"{base}/v1/albums/{album_id}",
                  "release_date": f"20{10 + i % 15}-0{1 + i % 9}-1{i % 10}", "release_date_precision": "day",
                  "total_tracks": 10, "artists": artists[:1], "images": []},
        "artists": artists, "disc_number": 1, "track_number": 1 + i % 10,
        "duration_ms": 120_000 + 1000 * i, "explicit": i % 4 == 0,
        "external_ids": {"isrc": f"USFAK{i:07d}"},
        "external_urls": {"spotify": f"https://open.spotify.com/track/{tid}"},
        "href": f"{base}/v1/tracks/{tid}", "id": tid, "is_local": False, "is_playable": True,
        "name": f"Song {i}", "popularity": i % 101, "type": "track", "uri": f"spotify:track:{tid}",
    }


def make_features(i: int, base: str) -> dict:
    rng = random.Random(i)
    tid = track_id(i)
    values = {f: round(rng.random(), 4) for f in FEATURES}
    values.update(key=rng.randrange(12), mode=rng.randrange(2), loudness=round(-30 * rng.random(), 3),
                  tempo=round(60 + 120 * rng.random(), 3), time_signature=rng.choice([3, 4, 5]))
    return {**values, "duration_ms": 120_000 + 1000 * i, "id": tid, "uri": f"spotify:track:{tid}",
            "type": "audio_features", "track_href": f"{base}/v1/tracks/{tid}",
            "analysis_url": f"{base}/v1/audio-analysis/{tid}"}


class FakeSpotify:
    """Start with `with FakeSpotify(n_tracks=...) as fake:`; `fake.url` is the base of both services."""

    def __init__(self, n_tracks: int = 0, token_lifetime_s: int = 3600):
        self.token_lifetime_s = token_lifetime_s
        self.requests: list[Seen] = []
        self.faults: list[Fault] = []
        self.audio_features_restricted = False
        self.loop_pages = 0  # the last page of the next N listings links back to the page before it
        self.extra_total = 0  # added to every listing's `total`, as if items vanished while paging
        self.tracks: dict[str, dict] = {}
        self.features: dict[str, dict] = {}
        self.saved: list[str] = []
        self.playlists: dict[str, dict] = {}
        self.access_tokens: dict[str, dict] = {}  # token -> {"expires_at", "user", "scope"}
        self.refresh_tokens: dict[str, dict] = {}  # refresh token -> {"user", "scope"}
        self.codes: dict[str, dict] = {}  # authorization code -> {"challenge", "redirect_uri", "scope"}
        self._expire_countdown: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._n_made = 0
        self.add_tracks(n_tracks)

    # ---- life cycle ----
    def __enter__(self) -> FakeSpotify:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- test set-up ----
    def add_tracks(self, n: int) -> list[str]:
        ids = []
        for i in range(self._n_made, self._n_made + n):
            track = make_track(i, self.url)
            self.tracks[track["id"]] = track
            self.features[track["id"]] = make_features(i, self.url)
            ids.append(track["id"])
        self._n_made += n
        return ids

    def add_playlist(self, name: str, ids: list[str], local_names: tuple[str, ...] = (), owner: str = USER_ID) -> str:
        pid = f"pl{len(self.playlists):020d}"
        items = [{"local": n} for n in local_names] + list(ids)
        self.playlists[pid] = {"id": pid, "name": name, "description": "", "public": False, "owner": owner,
                               "items": items, "snapshot_id": secrets.token_hex(8)}
        return pid

    def fail(self, method: str, path: str, status: int, headers: dict | None = None,
             body: bytes | None = None, times: int = 1, trickle_s: float = 0.0, trickle_headers: bool = False) -> None:
        """Answer the next `times` requests matching method + path regex with this response."""
        if body is None:
            body = json.dumps({"error": {"status": status, "message": f"injected {status}"}}).encode()
        self.faults.append(Fault(method, re.compile(path), status, headers or {}, body, times, trickle_s,
                                 trickle_headers))

    def expire_tokens_after(self, n_requests: int) -> None:
        """Server-side expiry: after `n_requests` more API calls every issued access token is rejected."""
        self._expire_countdown = n_requests

    def seen(self, method: str, path: str) -> list[Seen]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path, r.path)]

    def secrets_issued(self) -> set[str]:
        """Every credential the fake knows, for tests asserting none leaks into logs or output."""
        return {CLIENT_SECRET, *self.access_tokens, *self.refresh_tokens, *self.codes}

    # ---- dispatch ----
    def handle(self, h: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        parsed = urlparse(h.path)
        query = dict(parse_qsl(parsed.query, keep_blank_values=True))
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        body = _parse_body(raw, h.headers.get("Content-Type", ""))
        auth = h.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        seen = Seen(arrived, h.command, parsed.path, query, token, body)
        with self._lock:
            self.requests.append(seen)
            fault = self._take_fault(h.command, parsed.path)
        if fault:
            status, headers, payload = fault.status, fault.headers, fault.body
        else:
            status, headers, payload = self._route(h, parsed.path, query, body, token)
        seen.status = status
        out = _Trickle(h.wfile, fault.trickle_s) if fault and fault.trickle_s else h.wfile
        if fault and fault.trickle_headers:
            h.wfile = out
        h.send_response(status)
        if payload and "Content-Type" not in headers:
            h.send_header("Content-Type", "application/json; charset=utf-8")
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        out.write(payload)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.path.fullmatch(path):
                fault.times -= 1
                return fault
        return None

    def _route(self, h, path: str, query: dict, body, token):
        if path == "/authorize" and h.command == "GET":
            return self._authorize(query)
        if path == "/api/token" and h.command == "POST":
            return self._token(h, body)
        if not path.startswith("/v1/"):
            return _error(404, "Service not found")
        who = self._check_token(token)
        if isinstance(who, tuple):
            return who
        for method, pattern, fn in _ROUTES:
            match = re.fullmatch(pattern, path[len("/v1/"):])
            if method == h.command and match:
                return fn(self, who, query, body, *match.groups())
        return _error(404, "Service not found")

    # ---- accounts service ----
    def _authorize(self, query: dict):
        if query.get("client_id") != CLIENT_ID or query.get("code_challenge_method") != "S256":
            return _error(400, "invalid client or challenge method")
        code = "code-" + secrets.token_urlsafe(12)
        self.codes[code] = {"challenge": query["code_challenge"], "redirect_uri": query["redirect_uri"],
                            "scope": query.get("scope", "")}
        params = {"code": code, **({"state": query["state"]} if "state" in query else {})}
        return 302, {"Location": f"{query['redirect_uri']}?{urlencode(params)}"}, b""

    def _token(self, h, form: dict):
        grant = form.get("grant_type") if isinstance(form, dict) else None
        if grant == "client_credentials":
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if h.headers.get("Authorization") != f"Basic {expected}":
                return _oauth_error("invalid_client", "Invalid client")
            return self._issue(user=None, scope="", refresh=False)
        if grant == "authorization_code":
            grant_info = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            if (not grant_info or form.get("client_id") != CLIENT_ID or grant_info["challenge"] != challenge
                    or grant_info["redirect_uri"] != form.get("redirect_uri")):
                return _oauth_error("invalid_grant", "Invalid authorization code")
            return self._issue(user=USER_ID, scope=grant_info["scope"], refresh=True)
        if grant == "refresh_token":
            info = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if not info or form.get("client_id") != CLIENT_ID:
                return _oauth_error("invalid_grant", "Invalid refresh token")
            return self._issue(user=info["user"], scope=info["scope"], refresh=True)
        return _oauth_error("unsupported_grant_type", f"grant_type {grant!r} not supported")

    def _issue(self, user: str | None, scope: str, refresh: bool):
        token = "access-" + secrets.token_urlsafe(16)
        self.access_tokens[token] = {"expires_at": time.time() + self.token_lifetime_s, "user": user}
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime_s}
        if refresh:
            answer["scope"] = scope
            answer["refresh_token"] = "refresh-" + secrets.token_urlsafe(16)
            self.refresh_tokens[answer["refresh_token"]] = {"user": user, "scope": scope}
        return 200, {}, json.dumps(answer).encode()

    def issue_user_token(self, scope: str, expires_in: int | None = None) -> dict:
        """A token_info dict as spotipy caches it, for tests that start already logged in."""
        _, _, payload = self._issue(USER_ID, scope, refresh=True)
        info = json.loads(payload)
        if expires_in is not None:
            self.access_tokens[info["access_token"]]["expires_at"] = time.time() + expires_in
            info["expires_in"] = expires_in
        info["expires_at"] = int(time.time()) + info["expires_in"]
        return info

    def _check_token(self, token: str | None):
        if token is None:
            return _error(401, "No token provided")
        with self._lock:
            info = self.access_tokens.get(token)
            if info is None:
                return _error(401, "Invalid access token")
            if self._expire_countdown is not None:
                if self._expire_countdown <= 0:
                    for other in self.access_tokens.values():
                        other["expires_at"] = 0
                    self._expire_countdown = None
                else:
                    self._expire_countdown -= 1
            if info["expires_at"] <= time.time():
                return _error(401, "The access token expired")
        return info

    # ---- web API ----
    def page(self, path: str, query: dict, items: list, max_limit: int = LIMITS["page"], wrap=None):
        limit, offset = int(query.get("limit", 20)), int(query.get("offset", 0))
        if not 1 <= limit <= max_limit:
            return None
        def link(off: int) -> str:  # absolute, with a page marker so tests can tell `next` was followed
            return f"{self.url}{path}?{urlencode({**query, 'offset': off, 'limit': limit, 'page': off // limit})}"
        chunk = items[offset:offset + limit]
        following = link(offset + limit) if offset + limit < len(items) else None
        if following is None and offset > 0 and self.loop_pages > 0:
            self.loop_pages -= 1
            following = link(offset - limit)
        return {"href": link(offset), "items": [wrap(x) for x in chunk] if wrap else chunk, "limit": limit,
                "next": following, "offset": offset, "previous": link(max(0, offset - limit)) if offset > 0 else None,
                "total": len(items) + self.extra_total}

    def user(self) -> dict:
        return {"id": USER_ID, "display_name": "Fake User", "type": "user", "uri": f"spotify:user:{USER_ID}",
                "href": f"{self.url}/v1/users/{USER_ID}", "external_urls": {}}

    def playlist_object(self, p: dict) -> dict:
        owner = {**self.user(), "id": p["owner"]}
        return {"id": p["id"], "name": p["name"], "description": p["description"], "public": p["public"],
                "collaborative": False, "owner": owner, "snapshot_id": p["snapshot_id"], "type": "playlist",
                "uri": f"spotify:playlist:{p['id']}", "href": f"{self.url}/v1/playlists/{p['id']}",
                "items": {"href": f"{self.url}/v1/playlists/{p['id']}/items", "total": len(p["items"])}}

    def playlist_item(self, entry) -> dict:
        if isinstance(entry, dict):  # a local file in the playlist: no id, spotify:local URI
            name = entry["local"]
            track = {"id": None, "name": name, "uri": f"spotify:local:::{name}:180", "is_local": True,
                     "type": "track", "artists": [], "album": {"name": None}, "duration_ms": 180000}
            return {"added_at": "2024-01-01T00:00:00Z", "is_local": True, "item": track, "track": track}
        track = self.tracks[entry]
        return {"added_at": "2024-01-01T00:00:00Z", "is_local": False, "item": track, "track": track}


def _ids(query: dict, limit: int):
    ids = [i for i in query.get("ids", "").split(",") if i]
    if not ids:
        return _error(400, "invalid request: ids required")
    if len(ids) > limit:
        return _error(400, f"Too many ids requested (max {limit})")
    return ids


def _me(fake: FakeSpotify, who, query, body):
    return _json(fake.user())


def _saved_tracks(fake: FakeSpotify, who, query, body):
    if who["user"] is None:
        return _error(401, "Valid user authentication required")
    page = fake.page("/v1/me/tracks", query, fake.saved,
                     wrap=lambda t: {"added_at": "2024-01-01T00:00:00Z", "track": fake.tracks[t]})
    return _json(page) if page else _error(400, "Invalid limit")


def _my_playlists(fake: FakeSpotify, who, query, body):
    mine = [fake.playlist_object(p) for p in fake.playlists.values() if p["owner"] == who["user"]]
    page = fake.page("/v1/me/playlists", query, mine)
    return _json(page) if page else _error(400, "Invalid limit")


def _create_playlist(fake: FakeSpotify, who, query, body):
    if who["user"] is None or not isinstance(body, dict) or not body.get("name"):
        return _error(400, "Missing required field: name")
    pid = fake.add_playlist(body["name"], [], owner=who["user"])
    fake.playlists[pid].update(description=body.get("description", ""), public=bool(body.get("public")))
    return 201, {}, json.dumps(fake.playlist_object(fake.playlists[pid])).encode()


def _playlist_items(fake: FakeSpotify, who, query, body, pid):
    if pid not in fake.playlists:
        return _error(404, "Resource not found")
    page = fake.page(f"/v1/playlists/{pid}/items", query, fake.playlists[pid]["items"], wrap=fake.playlist_item)
    return _json(page) if page else _error(400, "Invalid limit")


def _writable(fake: FakeSpotify, who, pid):
    if pid not in fake.playlists:
        return _error(404, "Resource not found")
    if fake.playlists[pid]["owner"] != who["user"]:
        return _error(403, "You cannot add tracks to a playlist you don't own.")
    return None


def _uris(fake: FakeSpotify, uris):
    if not isinstance(uris, list) or len(uris) > LIMITS["playlist-write"]:
        return _error(400, f"You can add a maximum of {LIMITS['playlist-write']} tracks per request.")
    ids = []
    for uri in uris:
        match = re.fullmatch(r"spotify:track:([0-9A-Za-z]+)", str(uri))
        if not match or match.group(1) not in fake.tracks:
            return _error(400, f"Invalid track uri: {uri}")
        ids.append(match.group(1))
    return ids


def _add_items(fake: FakeSpotify, who, query, body, pid):
    denied = _writable(fake, who, pid)
    if denied:
        return denied
    ids = _uris(fake, body.get("uris") if isinstance(body, dict) else body)
    if isinstance(ids, tuple):
        return ids
    fake.playlists[pid]["items"].extend(ids)
    fake.playlists[pid]["snapshot_id"] = secrets.token_hex(8)
    return 201, {}, json.dumps({"snapshot_id": fake.playlists[pid]["snapshot_id"]}).encode()


def _replace_items(fake: FakeSpotify, who, query, body, pid):
    denied = _writable(fake, who, pid)
    if denied:
        return denied
    ids = _uris(fake, body.get("uris") if isinstance(body, dict) else None)
    if isinstance(ids, tuple):
        return ids
    fake.playlists[pid]["items"] = ids
    fake.playlists[pid]["snapshot_id"] = secrets.token_hex(8)
    return _json({"snapshot_id": fake.playlists[pid]["snapshot_id"]})


def _change_details(fake: FakeSpotify, who, query, body, pid):
    denied = _writable(fake, who, pid)
    if denied:
        return denied
    for key in ("name", "description", "public"):
        if isinstance(body, dict) and key in body:
            fake.playlists[pid][key] = body[key]
    return 200, {}, b""


def _tracks(fake: FakeSpotify, who, query, body):
    ids = _ids(query, LIMITS["tracks"])
    return ids if isinstance(ids, tuple) else _json({"tracks": [fake.tracks.get(i) for i in ids]})


def _track(fake: FakeSpotify, who, query, body, tid):
    return _json(fake.tracks[tid]) if tid in fake.tracks else _error(404, "Resource not found")


def _audio_features(fake: FakeSpotify, who, query, body):
    if fake.audio_features_restricted:
        return _error(403, "Forbidden")
    ids = _ids(query, LIMITS["audio-features"])
    return ids if isinstance(ids, tuple) else _json({"audio_features": [fake.features.get(i) for i in ids]})


def _search(fake: FakeSpotify, who, query, body):
    if "track" not in query.get("type", "").split(","):
        return _error(400, "Bad search type field")
    q = query.get("q", "")
    fields = dict(re.findall(r'(\w+):"([^"]*)"', q)) | dict(re.findall(r'(\w+):([^\s"]+)', q))
    free = re.sub(r'\w+:("[^"]*"|\S+)', "", q).strip().lower()

    def hit(t: dict) -> bool:
        artists = " ".join(a["name"] for a in t["artists"]).lower()
        return (("isrc" not in fields or t["external_ids"]["isrc"] == fields["isrc"].upper())
                and ("track" not in fields or fields["track"].lower() in t["name"].lower())
                and ("artist" not in fields or fields["artist"].lower() in artists)
                and (not free or free in f"{t['name']} {artists}".lower()))

    found = [t for t in fake.tracks.values() if hit(t)]
    page = fake.page("/v1/search", query, found, max_limit=LIMITS["search"])
    return _json({"tracks": page}) if page else _error(400, "Invalid limit")


_ROUTES = [
    ("GET", r"me/?", _me),
    ("GET", r"me/tracks", _saved_tracks),
    ("GET", r"me/playlists", _my_playlists),
    ("POST", r"me/playlists", _create_playlist),
    ("GET", r"playlists/(\w+)/items", _playlist_items),
    ("POST", r"playlists/(\w+)/items", _add_items),
    ("PUT", r"playlists/(\w+)/items", _replace_items),
    ("PUT", r"playlists/(\w+)", _change_details),
    ("GET", r"tracks/?", _tracks),
    ("GET", r"tracks/(\w+)", _track),
    ("GET", r"audio-features/?", _audio_features),
    ("GET", r"search", _search),
]


def _json(obj) -> tuple[int, dict, bytes]:
    return 200, {}, json.dumps(obj).encode()


def _error(status: int, message: str) -> tuple[int, dict, bytes]:
    return status, {}, json.dumps({"error": {"status": status, "message": message}}).encode()


def _oauth_error(error: str, description: str) -> tuple[int, dict, bytes]:
    return 400, {}, json.dumps({"error": error, "error_description": description}).encode()


def _parse_body(raw: bytes, content_type: str):
    if not raw:
        return None
    if "application/x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(raw.decode()))
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


class _Trickle:
    """A write file that sends a byte every `delay` s, like a stalled server; stops when the client leaves."""

    def __init__(self, wfile, delay: float):
        self.wfile, self.delay = wfile, delay

    def write(self, data: bytes) -> None:
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(self.delay)
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self.wfile, name)


class _Handler(BaseHTTPRequestHandler):
    def _dispatch(self) -> None:
        self.server.fake.handle(self)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format, *args) -> None:  # keep test output clean
        return
