"""Single linkage and HDBSCAN* of a library: cml.cluster.hierarchy against ELKI, scipy, scikit-learn and PyPI's libraries.

``--tools`` (default): wall time and peak memory of every tool on the same L2-normalised 128-d Gaussian blobs
(10 centres), each in a fresh process (peak resident memory its own), in one run, with the time as a ratio to
cml's exact tree. A tool over ``--timeout`` is stopped and not tried at larger n. Single linkage: cml
(``mst-single``), ELKI SLINK, scipy ``linkage``, scikit-learn ``AgglomerativeClustering(linkage="single")``,
fastcluster ``linkage_vector``; HDBSCAN* (min_pts = min_cluster_size = 5): cml (``mst-hdbscan``), ELKI,
scikit-learn, ``hdbscan`` (boruvka_kdtree) and ``fast_hdbscan``. The PyPI libraries are optional (``pip install
fastcluster hdbscan fast_hdbscan``; ``--libs DIR`` adds a folder they were installed to with ``--target``);
a missing one is reported. Every tool's flat clusters are compared with cml's (ARI).

``--approx``: the k-NN path (``knn-single``) against the exact tree at each size: the fraction of identical
MST edges, the ARI of the flat cut at k = 10 and k = 100, and both trees' time and peak memory.

    python benchmarks/bench_hierarchy.py --sizes 5000 20000          # the tool table (README)
    python benchmarks/bench_hierarchy.py --tools cml,fastcluster,hdbscan --libs DIR   # cml and the fastest libraries
    python benchmarks/bench_hierarchy.py --approx --sizes 20000 100000
    python benchmarks/bench_hierarchy.py --approx --sizes 1000000 --only-approx   # the k-NN path alone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cml.cluster import elki, hierarchy  # noqa: E402
from cml.search.neighbours import l2_normalise  # noqa: E402

TOOLS = {"single": ["cml", "elki-slink", "scipy", "sklearn", "fastcluster"],
         "hdbscan": ["cml", "elki", "sklearn", "hdbscan", "fast_hdbscan"]}
MIN_PTS = 5


def _data(n: int, seed: int = 0) -> np.ndarray:
    return l2_normalise(make_blobs(n_samples=n, n_features=128, centers=10, random_state=seed)[0]).astype(np.float64)


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _single(tool: str, X: np.ndarray, k: int) -> np.ndarray:
    if tool == "cml":
        return hierarchy.cut(hierarchy.exact_mst(X).linkage, k=k)
    if tool == "elki-slink":
        return elki.hierarchical(X, "single", k=k, slink=True).labels
    if tool == "scipy":
        from scipy.cluster.hierarchy import linkage
        return hierarchy.cut(linkage(X, "single"), k=k)
    if tool == "sklearn":
        from sklearn.cluster import AgglomerativeClustering
        return AgglomerativeClustering(n_clusters=k, linkage="single").fit_predict(X)
    import fastcluster
    return hierarchy.cut(fastcluster.linkage_vector(X, method="single"), k=k)


def _hdbscan(tool: str, X: np.ndarray) -> np.ndarray:
    if tool == "cml":
        return hierarchy.hdbscan_labels(hierarchy.exact_mst(X, MIN_PTS), MIN_PTS)
    if tool == "elki":
        return elki.hdbscan(X, min_pts=MIN_PTS, min_cluster_size=MIN_PTS).labels
    if tool == "sklearn":
        from sklearn.cluster import HDBSCAN
        return HDBSCAN(min_cluster_size=MIN_PTS, min_samples=MIN_PTS, copy=True).fit_predict(X)
    if tool == "hdbscan":
        import hdbscan
        return hdbscan.HDBSCAN(min_cluster_size=MIN_PTS, min_samples=MIN_PTS, algorithm="boruvka_kdtree",
                               core_dist_n_jobs=1).fit_predict(X)
    import fast_hdbscan
    return fast_hdbscan.HDBSCAN(min_cluster_size=MIN_PTS, min_samples=MIN_PTS).fit_predict(X)


def worker(spec: dict) -> dict:
    """One case in this fresh process: time it, and for ``approx`` compare the two trees."""
    X = _data(spec["n"])
    if spec["task"] == "approx":
        out = {}
        for name, build in (("exact", hierarchy.exact_mst), ("knn", hierarchy.knn_mst)):
            if name == "exact" and spec.get("only_approx"):
                continue
            start = time.perf_counter()
            out[name] = build(X)
            spec[f"{name}_s"] = time.perf_counter() - start
        spec["peak_mib"] = _peak_mib()
        if "exact" in out:
            e, a = (np.sort(out[m].edges, axis=1) for m in ("exact", "knn"))
            keys = lambda E: set((E[:, 0] * spec["n"] + E[:, 1]).tolist())  # noqa: E731
            spec["same_edges"] = len(keys(e) & keys(a)) / len(e)
            for k in (10, 100):
                spec[f"ari_{k}"] = adjusted_rand_score(hierarchy.cut(out["exact"].linkage, k=k),
                                                       hierarchy.cut(out["knn"].linkage, k=k))
        return spec
    if spec["tool"] in ("cml", "fast_hdbscan"):  # numba: compile outside the timing (cml's kernels are cached)
        _single(spec["tool"], X[:50], 2) if spec["task"] == "single" else _hdbscan(spec["tool"], X[:50])
    start = time.perf_counter()
    labels = _single(spec["tool"], X, 10) if spec["task"] == "single" else _hdbscan(spec["tool"], X)
    spec["wall_s"] = time.perf_counter() - start
    spec["peak_mib"] = _peak_mib()
    np.save(spec["labels"], np.asarray(labels))
    return spec


def measure(spec: dict, timeout: float, libs: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (libs, str(ROOT), os.environ.get("PYTHONPATH"))
                                                       if p))
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return {**spec, "error": last[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tools_main(args, tmp: Path) -> None:
    rows, over = [], set()
    for n in sorted(args.sizes):
        for task, tools in TOOLS.items():
            for tool in (t for t in tools if not args.tools or t in args.tools.split(",")):
                spec = {"task": task, "tool": tool, "n": n, "labels": str(tmp / f"{task}-{tool}-{n}.npy")}
                row = ({**spec, "error": "over the timeout at a smaller n"} if (task, tool) in over
                       else measure(spec, args.timeout, args.libs))
                if row.get("error", "").startswith("over"):
                    over.add((task, tool))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| task | tool | n | wall (s) | x cml | peak (MiB) | ARI vs cml |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ref = next(c for c in rows if c["task"] == r["task"] and c["n"] == r["n"] and c["tool"] == "cml")
        if "error" in r:
            print(f"| {r['task']} | {r['tool']} | {r['n']:,} | {r['error']} | | | |")
            continue
        ari = (adjusted_rand_score(np.load(ref["labels"]), np.load(r["labels"])) if "wall_s" in ref else float("nan"))
        ratio = r["wall_s"] / ref["wall_s"] if "wall_s" in ref else float("nan")
        print(f"| {r['task']} | {r['tool']} | {r['n']:,} | {r['wall_s']:.2f} | {ratio:.1f} | {r['peak_mib']:.0f} "
              f"| {ari:.3f} |")


def approx_main(args) -> None:
    print("| n | exact (s) | k-NN (s) | peak (MiB) | identical MST edges | ARI k=10 | ARI k=100 |\n"
          "|---:|---:|---:|---:|---:|---:|---:|")
    for n in sorted(args.sizes):
        r = measure({"task": "approx", "n": n, "only_approx": args.only_approx}, args.timeout, None)
        if "error" in r:
            print(f"| {n:,} | {r['error']} | | | | | |", flush=True)
            continue
        f = lambda key, fmt: format(r[key], fmt) if key in r else "–"  # noqa: E731
        print(f"| {n:,} | {f('exact_s', '.1f')} | {f('knn_s', '.1f')} | {r['peak_mib']:.0f} | "
              f"{f('same_edges', '.4f')} | {f('ari_10', '.3f')} | {f('ari_100', '.3f')} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[5000, 20000])
    p.add_argument("--timeout", type=float, default=300, help="seconds per case")
    p.add_argument("--approx", action="store_true", help="the k-NN path against the exact tree")
    p.add_argument("--only-approx", action="store_true", help="--approx: the k-NN tree alone (sizes beyond exact)")
    p.add_argument("--tools", help="comma-separated tools to run (default all; cml is the ratios' reference)")
    p.add_argument("--libs", help="a folder holding fastcluster, hdbscan, fast_hdbscan (pip install --target)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    print(f"128-d Gaussian blobs, 10 centres, L2-normalised; {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, load {os.getloadavg()[0]:.1f}\n")
    if args.approx:
        approx_main(args)
    else:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="bench-hierarchy-") as tmp:
            tools_main(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
