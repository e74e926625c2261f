"""Wall time and peak memory of ELKI vs scipy vs scikit-learn on the same clustering tasks.

Tasks: single linkage, Ward linkage, k-means and DBSCAN on n points of 128-d Gaussian blobs.
Every case runs in a fresh Python subprocess so that peak memory is its own: for ELKI it is the peak
resident set (VmHWM) of the Java child, polled from /proc; for scipy/scikit-learn the worker's own peak
(``RUSAGE_SELF``), which includes the interpreter, the imports and the data; the ``python baseline`` row
is that fixed part. ELKI's wall time is the whole call as a user sees it (writing the text input, JVM
start-up, the run, parsing the output); the ``JVM start-up`` row is the same call on 10 points.

ELKI single linkage runs twice: SLINK (linear memory) and Anderberg (a triangular n^2/2 distance matrix),
to show the difference in the memory column. k-means: one k-means++ start everywhere (scikit-learn
``n_init=1``), k = number of blobs. DBSCAN: min_pts = 5 and eps from cml.clustering.kdistance_eps,
computed once per n (not timed).

    python benchmarks/bench_clustering.py                  # n = 1000, 5000, 20000 (slow: minutes)
    python benchmarks/bench_clustering.py --sizes 1000     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from scipy.cluster import hierarchy, vq
from sklearn import cluster as skc
from sklearn.datasets import make_blobs
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from cml import elki  # noqa: E402
from cml.clustering import kdistance_eps  # noqa: E402

CASES = [  # (task, tool)
    ("single", "elki-slink"), ("single", "elki-anderberg"), ("single", "scipy"), ("single", "sklearn"),
    ("ward", "elki-anderberg"), ("ward", "scipy"), ("ward", "sklearn"),
    ("kmeans", "elki-lloyd"), ("kmeans", "elki-hamerly"), ("kmeans", "scipy"), ("kmeans", "sklearn"),
    ("dbscan", "elki"), ("dbscan", "sklearn"),
]


def _data(n: int, dim: int, centers: int, seed: int) -> np.ndarray:
    return make_blobs(n_samples=n, n_features=dim, centers=centers, cluster_std=1.0, random_state=seed)[0]


def _run_case(task: str, tool: str, X: np.ndarray, k: int, seed: int, eps: float | None) -> None:
    """Cluster X once with one tool."""
    if task in ("single", "ward"):
        if tool.startswith("elki"):
            elki.hierarchical(X, task, k=k, slink=tool == "elki-slink")
        elif tool == "scipy":
            hierarchy.fcluster(hierarchy.linkage(X, task), k, criterion="maxclust")
        else:
            skc.AgglomerativeClustering(n_clusters=k, linkage=task).fit_predict(X)
    elif task == "kmeans":
        if tool.startswith("elki"):
            elki.kmeans(X, k, variant=tool.split("-")[1], seed=seed)
        elif tool == "scipy":
            vq.kmeans2(X, k, minit="++", seed=seed)
        else:
            skc.KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(X)
    elif task == "dbscan":
        if tool == "elki":
            elki.dbscan(X, eps=eps, min_pts=5)
        else:
            skc.DBSCAN(eps=eps, min_samples=5).fit_predict(X)
    elif tool != "baseline":
        raise ValueError(f"unknown case {task}/{tool}")


class ChildPeakRSS(threading.Thread):
    """Peak resident memory (VmHWM) of this process's children, polled from /proc.

    RUSAGE_CHILDREN cannot be used for the JVM: Linux charges a child with its parent's peak RSS at
    exec time, so the Python worker's own memory would hide a smaller JVM.
    """

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak_kib, self._done = interval, 0, threading.Event()
        self.own_name = Path("/proc/self/comm").read_text().strip()

    def _children(self) -> list[str]:
        pids = []
        for task in Path("/proc/self/task").iterdir():
            pids += (task / "children").read_text().split()
        return pids

    def run(self) -> None:
        while not self._done.wait(self.interval):
            for pid in self._children():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue  # exited meanwhile
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if fields["Name"].strip() == self.own_name or "VmHWM" not in fields:
                    continue  # spawned but not yet exec'd: it still shares our memory
                self.peak_kib = max(self.peak_kib, int(fields["VmHWM"].split()[0]))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_kib / 1024


def worker(spec: dict) -> dict:
    """Run one case in this (fresh) process and measure it."""
    X = _data(spec["n"], spec["dim"], spec["centers"], spec["seed"])
    eps = kdistance_eps(X, 5) if spec["task"] == "dbscan" else None
    monitor = ChildPeakRSS()
    monitor.start()
    start = time.perf_counter()
    _run_case(spec["task"], spec["tool"], X, spec["centers"], spec["seed"], eps)
    wall = time.perf_counter() - start
    java = monitor.stop()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {**spec, "wall_s": wall, "peak_mib": java if spec["tool"].startswith("elki") else own}


def measure(spec: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| task | tool | n | wall (s) | peak memory (MiB) |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['tool']} | {r['n']} | {r['error']} | |")
        else:
            lines.append(f"| {r['task']} | {r['tool']} | {r['n']} | {r['wall_s']:.2f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000,20000", help="comma-separated n")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--centers", type=int, default=10, help="number of blobs = k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default="single,ward,kmeans,dbscan")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    tasks = args.tasks.split(",")
    base = {"dim": args.dim, "centers": args.centers, "seed": args.seed}
    specs = [{**base, "task": "overhead", "tool": "python baseline", "n": int(args.sizes.split(",")[-1])},
             {**base, "task": "kmeans", "tool": "elki-lloyd", "n": 10, "centers": 2}]
    specs += [{**base, "task": t, "tool": tool, "n": int(n)}
              for n in args.sizes.split(",") for t, tool in CASES if t in tasks]
    rows = []
    for spec in tqdm(specs, desc="cases", disable=args.no_progress):
        row = measure({**spec, "tool": "baseline" if spec["task"] == "overhead" else spec["tool"]}, args.timeout)
        rows.append({**row, "task": spec["task"], "tool": spec["tool"]})
    rows[1]["task"], rows[1]["tool"] = "overhead", "ELKI JVM start-up (10 points)"
    print(f"\n{args.dim}-d Gaussian blobs, {args.centers} centres; machine: {os.cpu_count()} CPUs\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
