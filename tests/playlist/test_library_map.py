"""The library map in a real headless Chromium: what a user sees and does on the `cml map` page.

One browser and one server per module (Chromium starts in about a second); each test reloads the page.
Spotify goes over HTTP to tests/fake_spotify.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from cml.cli import main
from cml.errors import CmlError
from cml.playlist.library_map import choose_projection, load_map, neighbour_preservation, read_clusters, safe_name
from cml.playlist.server import Actions, MapServer
from cml.search.neighbours import l2_normalise
from cml.spotify.auth import TokenCache
from cml.spotify.client import USER_SCOPES
from cml.tables import write_feature_table
from tests.browser import CHROMIUM, Chromium
from tests.browser import map_point as point
from tests.fake_spotify import FakeSpotify, track_id

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: bash .ci/system-packages.sh")

N = 40
EVIL = '<img src=x onerror="window.__pwned=1">'
ODD = "Ünïcode & spaces #1 ?.wav"
READY = "document.getElementById('cml-map-root').dataset.ready"


def make_library(folder: Path, uris: bool = False) -> Path:
    """Two groups of 20 tracks with short WAVs: track 3 is named like an HTML injection, track 5's file has an
    odd name, tracks 6 and 7 have no file (missing) and track 8 is not audio (unreadable); plus a NaN row
    and a repeated id, which the map drops."""
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (N // 2, 6)) + 3, rng.normal(0, 1, (N // 2, 6)) - 3, np.full((1, 6), np.nan),
              rng.normal(0, 1, (1, 6))]
    ids = [f"t{i}" for i in range(N)] + ["nan-row", "t0"]
    paths, titles = [], [f"Song {i}" for i in range(N + 2)]
    titles[3] = EVIL
    for i in range(N + 2):
        path = folder / (ODD if i == 5 else f"track {i}.wav")
        if i == 8:
            path.write_text("not audio")
        elif i not in (6, 7):
            sf.write(path, 0.1 * np.sin(np.arange(4000) * 0.02 * (i + 1)), 8000)
        paths.append(str(path))
    extra = {"path": paths, "title": titles}
    if uris:
        extra["spotify_uri"] = [f"spotify:track:{track_id(i)}" for i in range(N + 2)]
    labels = ["<b>calm</b>"] * (N // 2) + ["loud"] * (N // 2 + 2)
    frame = pd.DataFrame({"id": ids, "label": labels, **extra, **{f"f{j}": X[:, j] for j in range(X.shape[1])}})
    frame.to_csv(folder / "library.csv", index=False)  # CSV: a repeated id cannot be written as Parquet
    return folder / "library.csv"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    table = make_library(folder)
    clusters = folder / "clusters.csv"
    pd.DataFrame({"id": [f"t{i}" for i in range(N)], "cluster": [i % 3 - 1 for i in range(N)]}).to_csv(clusters,
                                                                                                     index=False)
    return table, load_map(table, clusters=clusters, projection="pca")


@pytest.fixture(scope="module")
def browser():
    with Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def page(library, browser, tmp_path_factory):
    with MapServer(Actions(library[1], tmp_path_factory.mktemp("playlists"), env_file="/nonexistent")) as server:
        yield server, browser


def load(page):
    server, browser = page
    browser.open(server.url, READY)
    return browser


def hover_text(browser, row: int) -> str:
    browser.mouse("mouseMoved", 5, 5)
    browser.mouse("mouseMoved", *point(browser, row))
    return browser.wait_for("document.querySelector('.hoverlayer .hovertext')?.textContent")


def text(browser, name: str) -> str:
    return browser.evaluate(f"document.getElementById('cml-{name}').textContent")


def test_the_page_draws_every_usable_track_and_reports_what_it_dropped(page):
    browser = load(page)
    drawn = browser.evaluate("""(() => { const gd = document.getElementById('cml-map');
        return gd._fullData.filter(t => !['no audio', 'playlist', 'seeds'].includes(t.name))
                           .reduce((n, t) => n + t.x.length, 0); })()""")
    assert drawn == N
    assert text(browser, "status").startswith(f"{N} tracks drawn · pca")
    dropped = text(browser, "dropped")
    assert "dropped 1 rows with repeated ids: t0" in dropped
    assert "dropped 1 rows with NaN/inf features: nan-row" in dropped
    loaded = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(page[0].url) for url in loaded)  # nothing from a CDN


def test_hover_shows_the_name_label_and_cluster_of_the_track_under_the_mouse(page):
    browser = load(page)
    assert hover_text(browser, 9) == "Song 9label: <b>calm</b>cluster: noise"  # cml cluster's -1
    assert "audio file missing" in hover_text(browser, 6)
    browser.evaluate("(s => { s.value = 'clusters'; s.dispatchEvent(new Event('change')); })"
                     "(document.getElementById('cml-colour'))")
    legend = browser.wait_for("(t => t.includes('noise') && t)([...document.querySelectorAll('.legendtext')]"
                              ".map(e => e.textContent))")
    assert legend[:3] == ["0", "1", "noise"]  # coloured by cml cluster's clusters now


def test_names_and_labels_are_shown_as_text_never_run_as_markup(page):
    browser = load(page)
    assert hover_text(browser, 3).startswith(EVIL)
    assert browser.evaluate("window.__pwned === undefined && !document.querySelector('img[src=x]')")
    assert "<b>calm</b>" in hover_text(browser, 4)  # the label's tags are text, not bold


def test_a_click_plays_the_track_from_its_local_file_even_with_an_odd_name(page):
    browser = load(page)
    browser.click(*point(browser, 5))
    browser.wait_for("document.getElementById('cml-player').readyState >= 1")
    player = browser.evaluate("(p => [p.currentSrc, p.duration, p.error])(document.getElementById('cml-player'))")
    assert player[0].endswith("/audio/5") and player[1] == pytest.approx(0.5, abs=0.01) and player[2] is None
    assert text(browser, "now") == "Song 5"


def test_a_missing_or_unreadable_file_is_marked_and_the_map_keeps_working(page):
    browser = load(page)
    browser.click(*point(browser, 7))
    assert browser.wait_for("document.getElementById('cml-message').textContent") == "Song 7: audio file missing"
    browser.click(*point(browser, 8))  # a file that is not audio: the browser's decoder says so
    browser.wait_for("document.getElementById('cml-message').textContent === 'Song 8: audio cannot be played'")
    assert "audio cannot be played" in hover_text(browser, 8)
    browser.click(*point(browser, 9))
    browser.wait_for("document.getElementById('cml-player').currentSrc.endsWith('/audio/9')")


def test_a_box_selection_makes_the_playlist_cml_playlist_makes_and_saves_it(page, library, tmp_path):
    browser = load(page)
    where = {row: point(browser, row) for row in range(N)}
    near = sorted(where, key=lambda r: np.hypot(*np.subtract(where[r], where[0])))[:3]  # track 0 and 2 neighbours
    xs, ys = zip(*(where[r] for r in near))
    low, high = (min(xs) - 2, min(ys) - 2), (max(xs) + 2, max(ys) + 2)
    inside = {f"t{r}" for r, (x, y) in where.items() if low[0] <= x <= high[0] and low[1] <= y <= high[1]}
    browser.drag(low, high)
    seeds = browser.wait_for("(l => l.length && l.map(li => li.dataset.id))"
                             "([...document.querySelectorAll('#cml-seeds li')])")
    assert set(seeds) == inside
    length = len(seeds) + 5
    browser.evaluate(f"document.getElementById('cml-length').value = {length}; "
                     "document.getElementById('cml-make').click()")
    shown = browser.wait_for("(l => l.length && l.map(li => li.dataset.id))"
                             "([...document.querySelectorAll('#cml-playlist li')])")
    out = tmp_path / "playlist.csv"
    assert main(["playlist", str(library[0]), "--drop-invalid", "--seed-tracks", ",".join(seeds),
                 "--length", str(length), "--out", str(out)]) == 0
    assert shown == pd.read_csv(out, dtype={"id": str})["id"].tolist()
    drawn = browser.evaluate("document.getElementById('cml-map')._fullData.find(t => t.name === 'playlist').x.length")
    assert drawn == length
    browser.evaluate("document.getElementById('cml-name').value = '../evil/../mix'; "
                     "document.getElementById('cml-save').click()")
    saved = Path(browser.wait_for("(t => t.startsWith('saved ') && t.slice(6))"
                                  "(document.getElementById('cml-message').textContent)"))
    assert saved.parent == page[0].actions.out_dir and saved.name == "evil_.._mix.m3u8"
    assert len([line for line in saved.read_text().splitlines() if not line.startswith("#")]) == length


def test_a_shift_click_adds_a_seed_and_a_journey_needs_two(page):
    browser = load(page)
    for row in (0, 30):
        browser.click(*point(browser, row), modifiers=8)  # 8: shift
    assert browser.wait_for("(l => l.length == 2 && l.map(li => li.dataset.id))"
                            "([...document.querySelectorAll('#cml-seeds li')])") == ["t0", "t30"]
    browser.evaluate("document.getElementById('cml-mode').value = 'journey'; "
                     "document.getElementById('cml-length').value = 5; document.getElementById('cml-make').click()")
    journey = browser.wait_for("(l => l.length && l.map(li => li.dataset.id))"
                               "([...document.querySelectorAll('#cml-playlist li')])")
    assert len(journey) == 5 and journey[0] == "t0" and journey[-1] == "t30"


def test_play_in_order_plays_the_playlist_through_and_skips_tracks_without_audio(page):
    browser = load(page)
    for row in (6, 0, 8):  # a missing file, a playable one, a file that is not audio
        browser.click(*point(browser, row), modifiers=8)
    browser.evaluate("document.getElementById('cml-length').value = 6; document.getElementById('cml-make').click()")
    order = browser.wait_for("(l => l.length && l.map(li => li.dataset.id))"
                             "([...document.querySelectorAll('#cml-playlist li')])")
    browser.evaluate("window.__played = []; const p = document.getElementById('cml-player'); "
                     "p.addEventListener('playing', () => window.__played.push(p.dataset.row))")
    browser.evaluate("document.getElementById('cml-playall').click()")
    playable = [i for i in order if i not in ("t6", "t7", "t8")]
    played = browser.wait_for(f"window.__played.length === {len(playable)} && window.__played", timeout=30)
    assert [f"t{row}" for row in played] == playable and "t6" in order and "t8" in order


def test_push_to_spotify_goes_through_cml_spotify_push(tmp_path, browser, monkeypatch):
    table = make_library(tmp_path, uris=True)
    with FakeSpotify(n_tracks=N + 2) as fake:
        cache = tmp_path / "token.json"
        TokenCache(cache).save_token_to_cache(fake.issue_user_token(" ".join(sorted(USER_SCOPES.split(",")))))
        env = tmp_path / ".env"
        env.write_text("SPOTIPY_CLIENT_ID=fake-client-id-0123456789\n"
                       "SPOTIPY_REDIRECT_URI=http://127.0.0.1:9/callback\n")
        monkeypatch.setenv("CML_SPOTIFY_API_URL", fake.url)
        monkeypatch.setenv("CML_SPOTIFY_ACCOUNTS_URL", fake.url)
        actions = Actions(load_map(table, projection="pca"), tmp_path, env_file=env, token_cache=cache)
        with MapServer(actions) as server:
            browser.open(server.url, READY)
            browser.click(*point(browser, 0), modifiers=8)
            browser.evaluate("document.getElementById('cml-length').value = 5; "
                             "document.getElementById('cml-make').click()")
            browser.wait_for("!document.getElementById('cml-push').disabled")
            order = browser.evaluate("[...document.querySelectorAll('#cml-playlist li')].map(li => li.dataset.id)")
            browser.evaluate("document.getElementById('cml-name').value = 'Map mix'; "
                             "document.getElementById('cml-push').click()")
            message = browser.wait_for("(t => t.includes('Spotify') && t)(document.getElementById('cml-message')"
                                       ".textContent)")
        (playlist,) = fake.playlists.values()
        assert message.startswith("created Spotify playlist") and playlist["name"] == "Map mix"
        assert playlist["items"] == [track_id(int(i[1:])) for i in order]


def test_push_is_off_without_credentials(page):
    browser = load(page)
    browser.click(*point(browser, 0), modifiers=8)
    browser.evaluate("document.getElementById('cml-make').click()")
    browser.wait_for("!document.getElementById('cml-save').disabled")
    assert browser.evaluate("document.getElementById('cml-push').disabled")


def test_a_table_without_paths_draws_a_map_without_audio(tmp_path, browser):
    X = np.random.default_rng(1).normal(size=(12, 4))
    table = write_feature_table(tmp_path / "bare.csv", [f"r{i}" for i in range(12)], X)
    library = load_map(table, projection="pca")
    assert set(library.audio) == {"none"} and library.table.labels is None
    with MapServer(Actions(library, tmp_path)) as server:
        browser.open(server.url, READY)
        assert text(browser, "status").startswith("12 tracks drawn")
        assert hover_text(browser, 2) == "r2no audio file"
        browser.click(*point(browser, 2))
        assert browser.wait_for("document.getElementById('cml-message').textContent") == "r2: no audio file"


def test_the_server_answers_only_its_own_name_and_serves_audio_by_row_only(page):
    host, port = page[0].server_address
    for path, headers, status in (("/", {"Host": "evil.example:80"}, 403), ("/audio/../../etc/passwd", {}, 404),
                                  ("/audio/6", {}, 404), ("/audio/999", {}, 404), ("/audio/0", {}, 200),
                                  ("/api/map", {}, 200)):
        connection = HTTPConnection(host, port, timeout=10)
        connection.request("GET", path, headers=headers)
        assert connection.getresponse().status == status, path
        connection.close()
    assert page[0].actions.call("playlist", {"seeds": ["nope"]})["error"].startswith("unknown seed ids: 'nope'")


def test_clusters_come_from_cml_cluster_output(tmp_path):
    ids = np.array(["a", "b", "c"])
    (tmp_path / "c.csv").write_text("id,cluster\na,-1\nb,2\n")
    assert read_clusters(tmp_path / "c.csv", ids).tolist() == ["noise", "2", None]
    (tmp_path / "other.csv").write_text("id,cluster\nx,1\n")
    with pytest.raises(CmlError, match="none of the table's ids"):
        read_clusters(tmp_path / "other.csv", ids)
    (tmp_path / "bad.csv").write_text("id,label\na,1\n")
    with pytest.raises(CmlError, match="expected the columns id,cluster"):
        read_clusters(tmp_path / "bad.csv", ids)


def test_neighbour_preservation_scores_and_chooses_the_projection():
    rng = np.random.default_rng(0)
    X = l2_normalise(rng.normal(size=(60, 5)))
    assert neighbour_preservation(X, X) == 1.0  # a map that is the (unit) space keeps every neighbour
    assert neighbour_preservation(X, rng.normal(size=(60, 2))) < 0.3  # a random one few
    angle = rng.uniform(0, 2 * np.pi, 60)
    circle = np.c_[np.cos(angle), np.sin(angle), np.zeros((60, 3))]  # unit rows in a plane: PCA keeps them all
    method, scores = choose_projection(circle, methods=("tsne", "pca"))
    assert list(scores.index) == ["tsne", "pca"] and scores["preservation"].between(0, 1).all()
    assert method == scores["preservation"].idxmax() and scores.loc["pca", "preservation"] == 1.0


def test_playlist_names_become_safe_file_names():
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("  ") == "playlist" and safe_name(".hidden") == "hidden"
    assert safe_name("Été à Paris") == "Été à Paris"


def test_cml_map_serves_the_page_until_stopped(library):
    command = [sys.executable, "-m", "cml.cli", "map", str(library[0]), "--port", "0", "--no-browser",
               "--projection", "pca"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(120, server.kill)  # never hang the suite
    watchdog.start()
    try:
        line = server.stdout.readline()
        assert line.startswith(f"the map of {N} tracks (pca): http://127.0.0.1:"), line
        with urlopen(line.split(": ", 1)[1].split()[0] + "api/map", timeout=30) as response:
            assert len(json.load(response)["ids"]) == N
    finally:
        watchdog.cancel()
        server.terminate()
        server.wait(timeout=10)


def test_cml_map_reports_a_bad_table_in_one_line(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("id,f0\na,nan\n")
    assert main(["map", str(tmp_path / "t.csv"), "--no-browser", "--projection", "pca"]) == 1
    (error,) = capsys.readouterr().err.splitlines()
    assert error.startswith("cml map: error: ") and "no usable rows left to draw" in error and "NaN/inf" in error


def test_the_notebook_widget_answers_the_page_s_requests_as_the_server_does(library):
    from cml.playlist.widget import LibraryMapWidget

    widget = LibraryMapWidget(Actions(library[1], "/nonexistent-out"))
    plotly, (code,) = widget.answer({"id": 1, "name": "plotly", "body": {}})
    assert plotly == {"type": "text/javascript"} and code.startswith(b"/**") and b"plotly.js" in code[:300]
    audio, (wav,) = widget.answer({"id": 2, "name": "audio", "body": {"row": 5}})
    assert audio == {"type": "audio/wav"} and wav[:4] == b"RIFF"
    assert widget.answer({"id": 3, "name": "audio", "body": {"row": 6}}) == ({"error": "no audio for this track"}, [])
    made = widget.answer({"id": 4, "name": "playlist", "body": {"seeds": ["t0", "t1"], "length": 5}})[0]
    assert made["ids"] == library[1].playlist(["t0", "t1"], 5)["ids"] and len(made["names"]) == 5
    assert "_plotly" not in widget.keys  # plotly.js is a message, not widget state a saved notebook would keep


@pytest.mark.e2e
def test_the_widget_draws_plays_and_makes_playlists_in_jupyterlab(library, browser, tmp_path):
    """The notebook widget in a real JupyterLab (about a minute: the server and a kernel start)."""
    cell = ("from cml.playlist.widget import show_map\nfrom cml.tables import read_feature_table\n"
            f"show_map(read_feature_table({str(library[0])!r}, drop_invalid=True), projection='pca')")
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "map", "metadata": {}, "outputs": [],
                           "source": cell}], "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": "cml", "display_name": "Python (cml)", "language": "python"}}}
    (tmp_path / "map.ipynb").write_text(json.dumps(notebook))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--allow-root",
                            "--ServerApp.token=t", f"--ServerApp.root_dir={tmp_path}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/lab/tree/map.ipynb?token=t")
        browser.wait_for("!!document.querySelector('.jp-Notebook .jp-Cell .cm-content')", timeout=120)
        run = "[data-command='notebook:run-cell-and-select-next']"
        browser.wait_for(f"!!document.querySelector(\"{run}\")", timeout=60)
        time.sleep(5)  # let the kernel connect (a run asked for earlier is dropped)
        button = browser.evaluate(f"(r => [r.x + r.width / 2, r.y + r.height / 2])"
                                  f"(document.querySelector(\"{run}\").getBoundingClientRect())")
        browser.click(*button)  # the toolbar's run button
        status = browser.wait_for("(e => e && e.textContent.includes('drawn') && e.textContent)"
                                  "(document.getElementById('cml-status'))", timeout=120)
        assert status.startswith(f"{N} tracks drawn · pca")
        browser.click(*point(browser, 0), modifiers=8)
        browser.evaluate("document.getElementById('cml-length').value = 5; document.getElementById('cml-make').click()")
        shown = browser.wait_for("(l => l.length && l.map(li => li.dataset.id))"
                                 "([...document.querySelectorAll('#cml-playlist li')])", timeout=60)
        assert browser.evaluate("[...document.querySelectorAll('#cml-seeds li')].map(li => li.dataset.id)") == ["t0"]
        assert shown == library[1].playlist(["t0"], 5)["ids"]  # computed by the kernel, over the comm
        browser.click(*point(browser, 2))
        audio = browser.wait_for("(p => p.readyState >= 1 && [p.currentSrc, p.duration])"
                                 "(document.getElementById('cml-player'))", timeout=30)
        assert audio[0].startswith("blob:") and audio[1] == pytest.approx(0.5, abs=0.01)  # the file, over the comm
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)
