"""Wall time and peak memory of ELKI vs scipy vs scikit-learn on the same clustering tasks.

Tasks: single linkage, Ward linkage, k-means and DBSCAN on n points of 128-d Gaussian blobs.
Every case runs in a fresh Python subprocess so that peak memory is its own. Two memory columns: the
Python worker's peak resident set (VmHWM of /proc/self/status: interpreter, imports, data, and for
scipy/scikit-learn the clustering itself; the ``python baseline`` row is the fixed part), and for ELKI the
peak resident set (VmHWM) of the Java child, polled from /proc every 20 ms (so a lower bound for very
short runs). ELKI's wall time is the whole call as a user sees it (writing the text input, JVM start-up,
the run, parsing the output); the ``JVM start-up`` row is the same call on 10 points.

Budgets: a case whose estimated memory (the n^2/2 distance matrix of Anderberg, scipy's ``linkage`` and
scikit-learn's Ward; see ``estimate_gib``) exceeds ``--memory-budget-gib`` is skipped with a note, and a
(task, tool) that ran over ``--timeout`` is not tried again at larger n.

ELKI single linkage runs twice: SLINK (linear memory) and Anderberg (a triangular n^2/2 distance matrix),
to show the difference in the memory column. k-means: one k-means++ start everywhere (scikit-learn
``n_init=1``), k = number of blobs. DBSCAN: min_pts = 5 and eps from cml.cluster.methods.kdistance_eps,
computed once per n (not timed).

    python benchmarks/bench_clustering.py                      # n = 1000, 5000, 20000 (slow: tens of minutes)
    python benchmarks/bench_clustering.py --sizes 1000 2000    # a quick check

``--grid``: the ClusterTesting grid at scale. Every method of ``cml.cluster.methods.METHODS`` as the grid calls it
(`cluster`: rows L2-normalised, k = the number of blobs, DBSCAN's eps from the k-distance knee, all timed), first
put to the grid's guard (`too_costly`): what it skips is listed with its reason and not run, the rest runs in a
fresh process (scikit-learn workers capped at ``--max-gib`` of address space), next to the guard's estimate.
``--force`` runs everything (how the guard's base points in ``cml.cluster.costs.COSTS`` were measured),
``--dry-run`` nothing (the estimates alone, e.g. at a million rows).

    OMP_NUM_THREADS=1 python benchmarks/bench_clustering.py --grid --sizes 100000       # the README's table
    python benchmarks/bench_clustering.py --grid --dry-run --sizes 100000 1000000      # the guard's decisions
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from scipy.cluster import hierarchy, vq
from sklearn import cluster as skc
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from cml.cluster import elki  # noqa: E402
from cml.cluster.costs import METHOD_BUDGET_SECONDS, estimate, memory_limit_mb, too_costly
from cml.cluster.methods import METHODS, NEEDS_K, cluster, kdistance_eps

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


def _own_peak_mib() -> float:
    """VmHWM of this process: its peak resident set since start."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on most systems


def grid_worker(spec: dict) -> dict:
    """Run one method of the ClusterTesting grid (`cml.cluster.methods.cluster`, as `run_grid` calls it: rows
    L2-normalised, k = the number of blobs, DBSCAN's eps from the k-distance knee, timed) and measure it."""
    X, y = make_blobs(n_samples=spec["n"], n_features=spec["dim"], centers=spec["centers"], cluster_std=1.0,
                      random_state=spec["seed"])
    monitor = ChildPeakRSS()
    monitor.start()
    start = time.perf_counter()
    result = cluster(X, spec["method"], k=spec["centers"] if spec["method"] in NEEDS_K else None, seed=spec["seed"])
    wall = time.perf_counter() - start
    java = monitor.stop()
    labels = result.labels
    return {**spec, "wall_s": wall, "python_mib": _own_peak_mib(),
            "java_mib": java if spec["method"].startswith("elki-") else None,
            "ari": float(adjusted_rand_score(y, labels)), "n_clusters": int(len(set(labels[labels >= 0])))}


def worker(spec: dict) -> dict:
    """Run one case in this (fresh) process and measure it."""
    if "method" in spec:
        return grid_worker(spec)
    X = _data(spec["n"], spec["dim"], spec["centers"], spec["seed"])
    eps = kdistance_eps(X, 5) if spec["task"] == "dbscan" else None
    monitor = ChildPeakRSS()
    monitor.start()
    start = time.perf_counter()
    _run_case(spec["task"], spec["tool"], X, spec["centers"], spec["seed"], eps)
    wall = time.perf_counter() - start
    java = monitor.stop()
    return {**spec, "wall_s": wall, "python_mib": _own_peak_mib(),
            "java_mib": java if spec["tool"].startswith("elki") else None}


def estimate_gib(task: str, tool: str, n: int, dim: int) -> float:
    """Rough peak memory of a case: the data, plus an n^2/2 distance matrix where the algorithm keeps one."""
    data = n * dim * 8 * 3  # the array, ELKI's text input, parsed vectors
    quadratic = (tool == "elki-anderberg" or (tool == "scipy" and task in ("single", "ward"))
                 or (tool == "sklearn" and task == "ward"))  # sklearn's single linkage is an O(n) MST
    return (data + (n * (n - 1) / 2 * 8 * 1.25 if quadratic else 0)) / 2**30


def _limit_memory(gib: float | None):
    """A preexec_fn capping the worker's address space (scikit-learn methods; a JVM reserves far more address
    space than it uses, and its heap is capped by -Xmx instead)."""
    if not gib:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), int(gib * 2**30)))


def measure(spec: dict, timeout: float, max_gib: float | None = None) -> dict:
    """One case in a fresh worker process, in a session of its own: on timeout the whole session is stopped,
    the worker's JVM included (killing the worker alone would leave the JVM running); SIGTERM first, so the
    worker removes ELKI's temporary folder."""
    with subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          preexec_fn=_limit_memory(max_gib)) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            return {**spec, "error": f"skipped: over the {timeout:.0f} s budget"}
    if proc.returncode != 0:
        return {**spec, "error": stderr.strip().splitlines()[-1] if stderr.strip() else "failed"}
    return json.loads(stdout.strip().splitlines()[-1])


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def table(rows: list[dict]) -> str:
    lines = ["| task | tool | n | wall (s) | Python peak (MiB) | Java peak (MiB) |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['tool']} | {r['n']} | {r['error']} | | |")
        else:
            lines.append(f"| {r['task']} | {r['tool']} | {r['n']} | {r['wall_s']:.2f} | {_mib(r['python_mib'])} "
                         f"| {_mib(r.get('java_mib'))} |")
    return "\n".join(lines)


def slink_note(rows: list[dict]) -> str:
    """Single linkage at the largest n: SLINK's measured Java peak against the n^2 matrix it avoids."""
    slink = [r for r in rows if r["tool"] == "elki-slink" and "error" not in r]
    if not slink:
        return ""
    r = max(slink, key=lambda r: r["n"])
    full = r["n"] ** 2 * 8 / 2**20
    return (f"Single linkage, n = {r['n']}: ELKI SLINK peaked at {r['java_mib']:.0f} MiB (Java) where an n x n "
            f"matrix of doubles alone is {full:.0f} MiB (n^2/2: {full / 2:.0f} MiB).")


def grid_table(rows: list[dict]) -> str:
    """Estimated (the guard's model) against measured time and memory; a skipped method's reason."""
    lines = ["| method | n | estimate: time / memory | measured: wall (s) | Python / Java peak (MiB) | ARI "
             "| clusters |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        seconds, mib = estimate(r["method"], r["n"], r["dim"])
        est = f"{_duration(seconds)} / {mib / 1024:,.1f} GiB"
        if r.get("guard") and "wall_s" not in r:
            lines.append(f"| {r['method']} | {r['n']:,} | {est} | {r['guard']} | | | |")
        elif "error" in r:
            lines.append(f"| {r['method']} | {r['n']:,} | {est} | {r['error']} | | | |")
        elif "wall_s" not in r:
            lines.append(f"| {r['method']} | {r['n']:,} | {est} | (not run) | | | |")
        else:
            lines.append(f"| {r['method']} | {r['n']:,} | {est} | {r['wall_s']:,.1f} | {_mib(r['python_mib'])} / "
                         f"{_mib(r.get('java_mib'))} | {r['ari']:.3f} | {r['n_clusters']} |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds < 600 else f"{seconds / 60:,.0f} min" if seconds < 36_000 else \
        f"{seconds / 3600:,.0f} h"


def grid_main(args: argparse.Namespace) -> int:
    """The ClusterTesting grid at scale: ask the guard (`too_costly`) about every method at every n, run
    what it lets through (``--force``: everything, to measure the guard's base points; ``--dry-run``: nothing,
    the estimates only) and say why the rest is skipped."""
    methods = args.methods.split(",") if args.methods else list(METHODS)
    base = {"dim": args.dim, "centers": args.centers, "seed": args.seed}
    rows = []
    for spec in tqdm([{**base, "method": m, "n": n} for n in sorted(args.sizes) for m in methods], desc="grid",
                     disable=args.no_progress):
        reason = too_costly(spec["method"], spec["n"], spec["dim"])
        if args.dry_run or (reason and not args.force):
            rows.append({**spec, "guard": reason})
            continue
        cap = None if spec["method"].startswith("elki-") else args.max_gib
        row = measure(spec, args.timeout, cap)
        rows.append({**row, "method": spec["method"], "n": spec["n"], "guard": reason})
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{args.dim}-d Gaussian blobs, {args.centers} centres, rows L2-normalised (as the grid does); machine: "
          f"{os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; guard: "
          f"{METHOD_BUDGET_SECONDS / 60:.0f} min, {memory_limit_mb() / 1024:.1f} GiB\n")
    print(grid_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 5000, 20000], help="numbers of points")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--centers", type=int, default=10, help="number of blobs = k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default="single,ward,kmeans,dbscan")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case; over it, larger n are skipped")
    p.add_argument("--memory-budget-gib", type=float, default=0.5 * os.sysconf("SC_PAGE_SIZE")
                   * os.sysconf("SC_PHYS_PAGES") / 2**30, help="skip cases estimated above this (default: half the RAM)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--grid", action="store_true",
                   help="run the ClusterTesting grid's methods through its guard instead of the tool comparison")
    p.add_argument("--methods", help="--grid: comma-separated methods (default: all of cml.cluster.methods.METHODS)")
    p.add_argument("--force", action="store_true", help="--grid: run methods the guard would skip too")
    p.add_argument("--dry-run", action="store_true", help="--grid: run nothing, print the guard's estimates")
    p.add_argument("--max-gib", type=float, default=8.0,
                   help="--grid: address-space cap of a scikit-learn worker (ELKI's heap is capped by -Xmx)")
    p.add_argument("--json", help="--grid: write the rows here as they come")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: temporary folders are removed
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.grid:
        return grid_main(args)

    tasks = args.tasks.split(",")
    base = {"dim": args.dim, "centers": args.centers, "seed": args.seed}
    specs = [{**base, "task": "overhead", "tool": "python baseline", "n": max(args.sizes)},
             {**base, "task": "kmeans", "tool": "elki-lloyd", "n": 10, "centers": 2}]
    specs += [{**base, "task": t, "tool": tool, "n": n} for n in sorted(args.sizes) for t, tool in CASES if t in tasks]
    rows, timed_out = [], set()
    for spec in tqdm(specs, desc="cases", disable=args.no_progress):
        need = estimate_gib(spec["task"], spec["tool"], spec["n"], spec["dim"])
        if (spec["task"], spec["tool"]) in timed_out:
            row = {**spec, "error": f"skipped: over the {args.timeout:.0f} s budget at a smaller n"}
        elif need > args.memory_budget_gib:
            row = {**spec, "error": f"skipped: needs ~{need:.1f} GiB > {args.memory_budget_gib:.1f} GiB budget"}
        else:
            row = measure({**spec, "tool": "baseline" if spec["task"] == "overhead" else spec["tool"]}, args.timeout)
            if "over the" in row.get("error", ""):
                timed_out.add((spec["task"], spec["tool"]))
        rows.append({**row, "task": spec["task"], "tool": spec["tool"]})
    rows[1]["task"], rows[1]["tool"] = "overhead", "ELKI JVM start-up (10 points)"
    print(f"\n{args.dim}-d Gaussian blobs, {args.centers} centres; machine: {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB\n")
    print(table(rows))
    note = slink_note(rows)
    if note:
        print("\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
