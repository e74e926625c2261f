"""The library map: which 2-D projection keeps neighbours best, and how a 100k-track map responds in a browser.

1. **Projection** (`cml.playlist.library_map.score_projections`): PCA, t-SNE and UMAP fitted on a seeded sample of
   each table, scored by the share of each track's 10 nearest neighbours (cosine, full space) that stay
   among its 10 nearest on the map; with the fit time. Tables: seeded Gaussian blobs (20 clusters, 128-d,
   L2-normalised like embeddings) and a real table given with ``--table``. UMAP is warmed up first (numba
   compiles it once per process).
   Then the fit time of each method on the whole of larger blob tables (``--fit-sizes``).
2. **Browser**: a table of ``--n`` blob tracks served by `cml.playlist.server`, opened in headless Chromium
   (tests/browser.py; software WebGL, so a worst case): time to first draw (navigation until the map is
   drawn, the page's data included), time from a mouse move onto a point to its hover label (median of 9),
   a box selection to the seed list, and building a 30-track hull playlist (median of 3).

    python benchmarks/bench_library_map.py                 # as in benchmarks/library-map/README.md
    python benchmarks/bench_library_map.py --n 5000 --fit-sizes 2000   # a quick check
    python benchmarks/bench_library_map.py --table T.parquet --screenshot docs/library-map.png  # the README's
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests"))

from browser import Chromium, map_point  # noqa: E402

from cml.data.features import project_2d  # noqa: E402
from cml.playlist.hull import auto_seeds, prepare  # noqa: E402
from cml.playlist.library_map import load_map, score_projections  # noqa: E402
from cml.playlist.server import Actions, MapServer  # noqa: E402
from cml.tables import read_feature_table, write_feature_table  # noqa: E402

READY = "document.getElementById('cml-map-root').dataset.ready"


def blobs(n: int, d: int = 128, centers: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, d))
    y = rng.integers(centers, size=n)
    return prepare(means[y] + rng.normal(scale=0.35, size=(n, d))), y


def projections(sample: int, fit_sizes: list[int], table: Path | None) -> None:
    project_2d(blobs(50)[0], "umap")  # numba's compilation, once per process
    tables = {"blobs": blobs(sample)[0]}
    if table:
        tables[table.name] = prepare(read_feature_table(table, drop_invalid=True).X)
    for name, X in tables.items():
        scores = score_projections(X, sample=sample)
        print(f"\n{name}: {len(X)} rows, {X.shape[1]}-d, sample {min(sample, len(X))}")
        print(scores.round(3).to_string())
    for n in fit_sizes:
        X = blobs(n)[0]
        for method in ("pca", "umap", "tsne"):
            start = time.perf_counter()
            project_2d(X, method)
            print(f"fit {method} on {n} rows: {time.perf_counter() - start:.1f} s", flush=True)


def hover_seconds(browser: Chromium, x: float, y: float) -> float:
    browser.mouse("mouseMoved", 3, 3)
    browser.wait_for("!document.querySelector('.hoverlayer .hovertext')")
    start = time.perf_counter()
    browser.mouse("mouseMoved", x, y)
    browser.wait_for("!!document.querySelector('.hoverlayer .hovertext')", timeout=30)
    return time.perf_counter() - start


def browser_run(n: int, repeats: int) -> None:
    X, y = blobs(n, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        path = write_feature_table(Path(folder) / "big.parquet", [f"t{i}" for i in range(n)], X,
                                   [f"genre {v}" for v in y], extra={"title": [f"Song {i}" for i in range(n)]})
        start = time.perf_counter()
        library = load_map(path, projection="pca")
        print(f"\nbrowser, {n} tracks: load_map (read, PCA) {time.perf_counter() - start:.2f} s", flush=True)
        with MapServer(Actions(library, folder)) as server, Chromium(timeout=300) as browser:
            start = time.perf_counter()
            browser.open(server.url, READY)
            print(f"time to first draw: {time.perf_counter() - start:.2f} s")
            where = browser.evaluate("""(() => { const gd = document.getElementById('cml-map'),
                L = gd._fullLayout, box = gd.getBoundingClientRect(), t = gd._fullData[0];
                return [0, 1, 2, 3, 4, 5, 6, 7, 8].map(i => [box.left + L._size.l + L.xaxis.l2p(t.x[i * 7]),
                                                               box.top + L._size.t + L.yaxis.l2p(t.y[i * 7])]); })()""")
            hovers = [hover_seconds(browser, *p) for p in where]
            print(f"time to hover label: median {statistics.median(hovers):.3f} s, max {max(hovers):.3f} s")
            x0, y0 = where[0]
            start = time.perf_counter()
            browser.drag((x0 - 4, y0 - 4), (x0 + 4, y0 + 4))
            seeds = browser.wait_for("document.querySelectorAll('#cml-seeds li').length", timeout=60)
            print(f"box selection of {seeds} seeds: {time.perf_counter() - start:.2f} s")
            times = []
            for _ in range(repeats):
                browser.evaluate("document.getElementById('cml-playlist').replaceChildren(); "
                                 "document.getElementById('cml-length').value = Math.max(30, "
                                 "document.querySelectorAll('#cml-seeds li').length); "
                                 "document.getElementById('cml-make').click()")
                start = time.perf_counter()
                browser.wait_for("document.querySelectorAll('#cml-playlist li').length", timeout=120)
                times.append(time.perf_counter() - start)
            print(f"hull playlist, request to drawn path: median {statistics.median(times):.2f} s")


def screenshot(table: Path, png: Path, seeds: int = 4) -> None:
    """The map of ``table`` (projection chosen by measurement) with a hull playlist of ``seeds`` seeds of one
    label, as the README shows it."""
    library = load_map(table)
    rows = auto_seeds(len(library), seeds, library.table.labels)
    with MapServer(Actions(library, png.parent)) as server, Chromium(width=1100, height=660) as browser:
        browser.open(server.url, READY)
        for row in rows:
            browser.click(*map_point(browser, int(row)), modifiers=8)  # shift-click: a seed
        browser.evaluate("document.getElementById('cml-length').value = 12; "
                         "document.getElementById('cml-make').click()")
        browser.wait_for("document.querySelectorAll('#cml-playlist li').length")
        browser.click(*map_point(browser, int(rows[0])))  # listen to the first seed: its hover label shows
        time.sleep(0.5)
        browser.screenshot(png)
    print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="tracks of the browser run")
    parser.add_argument("--sample", type=int, default=2000, help="rows the projections are scored on")
    parser.add_argument("--fit-sizes", type=int, nargs="*", default=[10_000], help="whole-table fit times")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-projections", action="store_true")
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--table", type=Path, help="a real feature table to score the projections on too")
    parser.add_argument("--screenshot", type=Path, help="PNG of the map of --table with a hull playlist")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args.table, args.screenshot)
        return
    if not args.skip_projections:
        projections(args.sample, args.fit_sizes, args.table)
    if not args.skip_browser:
        browser_run(args.n, args.repeats)


if __name__ == "__main__":
    main()
