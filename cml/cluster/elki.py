"""Run the real ELKI toolkit (Java) for clustering and read its results back.

ELKI is the primary clustering tool of this project; nothing here re-implements it. Each call writes the
data as comma-separated text into a temporary directory, runs ``KDDCLIApplication`` in a fresh JVM with
``ResultWriter`` output, and parses the ``*.txt`` cluster files back into one label per input row.

How rows are mapped back: every input line carries a text label ``row<i>`` (its row index), which ELKI
keeps as the object's label and prints at the end of each ``ID=`` line; we never rely on ELKI's internal
object ids or on file order, and we check that every row comes back exactly once.

Finding ELKI: the ``ELKI_JAR`` environment variable, then Debian's ``/usr/share/java/elki.jar``
(package ``elki``, 0.7.1; its ``elki-cli`` wrapper fails on Java 17, so we call ``java -cp`` ourselves
with ``trove4j.jar`` and ``libsvm3.jar`` from the same folder). Only ELKI 0.7.x is supported: its class
names and its dendrogram output are what this module speaks (ELKI 0.8 renamed its packages); a jar without
them is refused with a one-line error.

Errors: parameters ELKI cannot accept (k or min_pts out of range for n rows, eps or height not finite, ...)
raise ValueError before any JVM starts. When ELKI itself fails, :class:`ElkiError` carries ELKI's own
reason in one line (the Java exception, or its configuration errors) and the path of a log file in the
system temp dir (``cml-elki-*.log``, kept: the run's folder is removed) with the command line and ELKI's
complete output, stack trace included.

Distances: Euclidean, except Ward linkage and k-means, which ELKI runs on squared Euclidean distance
(Ward's Lance-Williams update is only correct there); Ward heights are converted to scipy's convention.

One module, over 400 lines: it wraps one external program, and its command lines, output parser and
memory guard change together when ELKI does.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cml.errors import CmlError, one_line

log = logging.getLogger(__name__)

ELKI_JAR_ENV = "ELKI_JAR"
DEBIAN_JAR = Path("/usr/share/java/elki.jar")
DEPENDENCY_JARS = ("trove4j.jar", "libsvm3.jar")  # Debian ships these apart from elki.jar
INSTALL_HINT = ("install it with `apt-get install elki default-jre-headless`, "
                f"or point the {ELKI_JAR_ENV} environment variable to an ELKI jar")

LINKAGES = ("single", "complete", "average", "ward")
KMEANS_VARIANTS = ("lloyd", "elkan", "hamerly")

_P7 = "de.lmu.ifi.dbs.elki."
_H7 = _P7 + "algorithm.clustering.hierarchical."
CLASSES = {  # ELKI 0.7.x
    "app": _P7 + "application.KDDCLIApplication",
    "writer": _P7 + "result.ResultWriter",
    "no_eval": _P7 + "evaluation.NoAutomaticEvaluation",
    "euclidean": _P7 + "distance.distancefunction.minkowski.EuclideanDistanceFunction",
    "sqeuclidean": _P7 + "distance.distancefunction.minkowski.SquaredEuclideanDistanceFunction",
    "slink": _H7 + "SLINK",
    "anderberg": _H7 + "AnderbergHierarchicalClustering",
    "hdbscan": _H7 + "HDBSCANLinearMemory",
    "single": _H7 + "SingleLinkageMethod",
    "complete": _H7 + "CompleteLinkageMethod",
    "average": _H7 + "GroupAverageLinkageMethod",
    "ward": _H7 + "WardLinkageMethod",
    "cut": _H7 + "extraction.ExtractFlatClusteringFromHierarchy",
    "hdbscan_extract": _H7 + "extraction.HDBSCANHierarchyExtraction",
    "lloyd": _P7 + "algorithm.clustering.kmeans.KMeansLloyd",
    "elkan": _P7 + "algorithm.clustering.kmeans.KMeansElkan",
    "hamerly": _P7 + "algorithm.clustering.kmeans.KMeansHamerly",
    "kmeans++": _P7 + "algorithm.clustering.kmeans.initialization.KMeansPlusPlusInitialMeans",
    "dbscan": _P7 + "algorithm.clustering.DBSCAN",
    "covertree": _P7 + "index.tree.metrical.covertree.SimplifiedCoverTree$Factory",
}


class ElkiError(CmlError, RuntimeError):
    """ELKI could not be started, or it failed; the one-line message quotes ELKI's own reason."""


@dataclass(frozen=True)
class Elki:
    """A runnable ELKI installation."""

    java: str
    jar: Path
    classpath: str

    def cls(self, name: str) -> str:
        return CLASSES[name]


@dataclass
class ElkiResult:
    """Labels in input order (noise = -1), and the dendrogram where one was asked for."""

    labels: np.ndarray  # (n,) int64
    linkage: np.ndarray | None = None  # (n-1, 4) scipy-style: [a, b, height, size]
    args: list[str] = field(default_factory=list)  # the ELKI arguments used
    seconds: float = 0.0  # wall time of the JVM run, start-up included


@functools.lru_cache(maxsize=4)
def _check_jar(jar: Path) -> None:
    """The jar must be ELKI 0.7.x: the version whose class names this module uses."""
    try:
        with zipfile.ZipFile(jar) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile) as err:
        raise ElkiError(f"ELKI jar {jar} is not readable ({err}); {INSTALL_HINT}") from err
    if CLASSES["app"].replace(".", "/") + ".class" not in names:
        raise ElkiError(f"{jar} is not ELKI 0.7.x, the version this project runs (no {CLASSES['app']}; ELKI 0.8 "
                        f"renamed its classes): install Debian's with `apt-get install elki default-jre-headless`, "
                        f"or point {ELKI_JAR_ENV} to an ELKI 0.7.x jar")


def find_elki() -> Elki:
    """Locate Java and the ELKI jar, or raise :class:`ElkiError` saying how to install them."""
    env = os.environ.get(ELKI_JAR_ENV)
    jar = Path(env) if env else DEBIAN_JAR
    if not jar.is_file():
        where = f"{ELKI_JAR_ENV}={env}" if env else str(DEBIAN_JAR)
        raise ElkiError(f"ELKI jar not found ({where} does not exist); {INSTALL_HINT}")
    java_home = os.environ.get("JAVA_HOME")
    java = shutil.which("java") or (java_home and shutil.which(str(Path(java_home) / "bin" / "java")))
    if not java:
        raise ElkiError(f"Java not found on PATH; {INSTALL_HINT}")
    deps = [str(d) for name in DEPENDENCY_JARS for d in (jar.parent / name, DEBIAN_JAR.parent / name)
            if d.is_file()]
    classpath = os.pathsep.join(dict.fromkeys([str(jar), *deps]))  # dedupe, keep order
    _check_jar(jar.resolve())
    return Elki(java=java, jar=jar, classpath=classpath)


def check_finite(X: np.ndarray) -> np.ndarray:
    """Return X as a float64 (n, d) array, or raise naming the rows with NaN/inf (before any JVM starts)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D array (n points, d features); got shape {X.shape}")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise ValueError(f"NaN or inf values in {len(bad)} rows (row indices {shown}); "
                         "clustering needs finite features")
    return X


def _check_count(name: str, value, low: int, high: int, why: str = "the number of points") -> None:
    """An integer parameter (k, min_pts) in low..high, else ValueError: outside it ELKI fails (with a Java
    exception, or exit code 0 and no result) or silently returns only noise."""
    if not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be an integer from {low} to {high} ({why})")


MEMORY_SHARE = 0.8  # of physical memory, the most a run may be sized for (ELKI's heap here, any method in the grid)
QUICK_JVM_VALUES = 500_000  # n x d up to which the JVM runs in its quick start-up mode (see _run)


def physical_mb() -> float:
    """This machine's physical memory in MiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def heap_need_mb(n: int, d: int, quadratic: bool = False) -> float:
    """Estimated JVM heap for n points of d dims: vectors and text parsing, plus the n^2/2 matrix if quadratic."""
    need = 256 + 6 * n * d * 8 / 2**20 + 64 * n / 2**20  # vectors, boxed parse buffers, per-object stores
    if quadratic:
        need += 1.25 * n * (n - 1) / 2 * 8 / 2**20  # Anderberg's triangular distance matrix
    return need


def heap_mb(n: int, d: int, quadratic: bool = False) -> int:
    """JVM heap (-Xmx) for n points of d dims (`heap_need_mb`).

    Raises when the estimate exceeds `MEMORY_SHARE` of physical memory, before the JVM runs out of it.
    """
    need, total = heap_need_mb(n, d, quadratic), physical_mb()
    if need > MEMORY_SHARE * total:
        raise ElkiError(f"ELKI would need about {need / 1024:.1f} GiB of heap for n={n}, d={d} "
                        f"but this machine has {total / 1024:.1f} GiB; use SLINK (linear memory) or sample")
    return int(need)


def _write_input(X: np.ndarray, path: Path) -> None:
    """Comma-separated values at full precision, then the label ``row<i>`` that maps results back."""
    with open(path, "w") as fh:
        for i, row in enumerate(X):
            fh.write(",".join(map(repr, row.tolist())))
            fh.write(f",row{i}\n")


@dataclass
class _Cluster:
    name: str
    noise: bool
    rows: list[int]
    parents: list[str]
    children: list[str]


def _read_clusters(out: Path) -> list[_Cluster]:
    """Parse ResultWriter's cluster files (``# Cluster: ...`` header, then ``ID=... <values> row<i>``)."""
    clusters = []
    for path in sorted(out.rglob("*.txt")):
        with open(path) as fh:
            first = fh.readline()
            if not first.startswith("# Cluster:"):
                continue  # settings.txt and other results
            c = _Cluster(first.split(":", 1)[1].strip(), False, [], [], [])
            for line in fh:
                if line.startswith("ID="):
                    token = line.rstrip("\n").rsplit(" ", 1)[-1]
                    if not token.startswith("row"):
                        raise ElkiError(f"unexpected ELKI output line in {path.name}: {line[:200]!r}")
                    c.rows.append(int(token[3:]))
                elif line.startswith("# Cluster noise flag:"):
                    c.noise = line.split(":", 1)[1].strip() == "true"
                elif line.startswith("# Parents:"):
                    c.parents = line.split(":", 1)[1].split()
                elif line.startswith("# Children:"):
                    c.children = line.split(":", 1)[1].split()
            clusters.append(c)
    return clusters


def _labels(clusters: list[_Cluster], n: int, noise_names: set[str] = frozenset()) -> np.ndarray:
    """One label per row; clusters numbered by their first row, so labels do not depend on file order."""
    labels = np.full(n, -2, dtype=np.int64)
    real = sorted((c for c in clusters if c.rows and not c.noise and c.name not in noise_names),
                  key=lambda c: min(c.rows))
    for c in clusters:
        if c.noise or c.name in noise_names:
            labels[c.rows] = -1
    for i, c in enumerate(real):
        if (labels[c.rows] != -2).any():
            raise ElkiError(f"ELKI output puts some rows into more than one cluster ({c.name})")
        labels[c.rows] = i
    missing = np.flatnonzero(labels == -2)
    if len(missing):
        raise ElkiError(f"ELKI output has no cluster for {len(missing)} rows (first: {missing[:10].tolist()})")
    return labels


def _dendrogram(clusters: list[_Cluster], n: int) -> np.ndarray:
    """Convert ELKI's full cluster tree (``mrg_<id>_<height>`` nodes with children, ``obj_<id>`` leaves)
    into a scipy linkage matrix; a node with m > 2 children (tied merges) becomes m-1 merges."""
    by_name = {c.name: c for c in clusters}
    roots = [c for c in clusters if not c.parents]
    if len(roots) != 1:
        raise ElkiError(f"expected one root in ELKI's dendrogram output, found {len(roots)}")
    # Post-order without recursion (single-linkage trees can be n deep).
    order, stack = [], [(roots[0], False)]
    while stack:
        node, expanded = stack.pop()
        if expanded or not node.children:
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((by_name[ch], False) for ch in reversed(node.children))
    internal = [c for c in order if c.children]
    heights = [float(c.name.rsplit("_", 1)[1]) for c in internal]
    ranked = sorted(range(len(internal)), key=lambda i: heights[i])  # stable: ties keep post-order
    if any(heights[child] > heights[parent] for child, parent in _child_pairs(internal)):
        ranked = list(range(len(internal)))  # non-monotone linkage: post-order is always valid
    node_id = {}
    for c in order:
        if not c.children:
            if len(c.rows) != 1:
                raise ElkiError(f"dendrogram leaf {c.name} holds {len(c.rows)} objects")
            node_id[c.name] = (c.rows[0], 1)
    Z, next_id = [], n
    for i in ranked:
        c, h = internal[i], heights[i]
        parts = [node_id[ch] for ch in c.children] + [(r, 1) for r in c.rows]
        a, size_a = parts[0]
        for b, size_b in parts[1:]:
            Z.append([min(a, b), max(a, b), h, size_a + size_b])
            a, size_a, next_id = next_id, size_a + size_b, next_id + 1
        node_id[c.name] = (a, size_a)
    Z = np.asarray(Z, dtype=np.float64)
    if Z.shape != (n - 1, 4):
        raise ElkiError(f"ELKI's dendrogram has {len(Z)} merges for {n} points")
    return Z


def _child_pairs(internal: list[_Cluster]):
    """(child index, parent index) pairs among internal nodes."""
    index = {c.name: i for i, c in enumerate(internal)}
    for i, c in enumerate(internal):
        for ch in c.children:
            if ch in index:
                yield index[ch], i


def _run(X: np.ndarray, args: list[str], quadratic: bool, timeout: float | None) -> tuple[list[_Cluster], float]:
    """One JVM run in a temporary directory (removed afterwards): the parsed clusters and the wall time."""
    X = check_finite(X)
    elki = find_elki()
    n, d = X.shape
    with tempfile.TemporaryDirectory(prefix="cml-elki-") as tmp:
        data, out = Path(tmp) / "data.csv", Path(tmp) / "out"
        _write_input(X, data)
        # Small inputs finish before the JIT's optimising tier pays off: the client tier and the serial GC
        # start faster and end a small run sooner. Large runs keep the default (fully optimised) JVM.
        quick = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"] if n * d <= QUICK_JVM_VALUES else []
        cmd = [elki.java, f"-Xmx{heap_mb(n, d, quadratic)}m", *quick, "-Djava.awt.headless=true",
               "-cp", elki.classpath, elki.cls("app"), "-dbc.in", str(data), *args,
               "-evaluator", elki.cls("no_eval"), "-resulthandler", elki.cls("writer"), "-out", str(out)]
        log.debug("running %s", " ".join(cmd))
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise ElkiError(f"ELKI did not finish within {timeout} s") from err
        seconds = time.perf_counter() - start
        messages = f"{proc.stderr}\n{proc.stdout}".strip()
        # ELKI exits 0 after a Java exception or an ignored unknown option; those are failures too.
        if proc.returncode != 0 or "were not processed" in messages or not out.is_dir():
            fd, log_path = tempfile.mkstemp(prefix="cml-elki-", suffix=".log")
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{' '.join(cmd)}\nexit code {proc.returncode}\n\n{messages}\n")
            raise ElkiError(f"ELKI failed: {_reason(messages)} (exit code {proc.returncode}; "
                            f"full output in {log_path})")
        return _read_clusters(out), seconds


CONFIG_ERRORS = "The following configuration errors prevented execution:"


def _reason(messages: str) -> str:
    """ELKI's own reason in one line: the Java exception, else its configuration errors (without the list
    of known classes it appends), else all it printed."""
    lines = messages.splitlines()
    frame = next((i for i, line in enumerate(lines) if line.startswith("\tat ")), 0)
    if frame:  # a stack trace: the exception's "class: message" line is the one above its first frame
        return one_line(lines[frame - 1])
    if CONFIG_ERRORS in messages:
        lines = messages.split(CONFIG_ERRORS, 1)[1].split("Stopping execution", 1)[0].splitlines()
    reason = " ".join(line for line in lines if not line.startswith(("->", "Known classes")))
    return one_line(reason) or "no message"


def run_elki(X: np.ndarray, args: list[str], *, quadratic: bool = False, noise_roots: bool = False,
             timeout: float | None = None) -> ElkiResult:
    """Run ELKI's KDDCLIApplication with algorithm ``args`` on the rows of X; one label per row.

    ``quadratic`` sizes the heap for an n x n matrix; ``noise_roots`` relabels the members of root
    clusters (no parent but ELKI's noise) as noise, for HDBSCAN*.
    """
    clusters, seconds = _run(X, args, quadratic, timeout)
    noise = {c.name for c in clusters if c.noise}  # ELKI may hang top clusters under its noise cluster
    roots = {c.name for c in clusters if noise_roots and not c.noise and set(c.parents) <= noise}
    return ElkiResult(labels=_labels(clusters, len(X), roots), args=args, seconds=seconds)


def hierarchical(X: np.ndarray, linkage: str = "single", *, k: int | None = None, height: float | None = None,
                 slink: bool = False, dendrogram: bool = False, timeout: float | None = None) -> ElkiResult:
    """Agglomerative clustering cut into flat clusters by ELKI, by number of clusters ``k`` or by ``height``.

    ``slink=True`` runs SLINK (single linkage in O(n) memory); otherwise Anderberg's algorithm with
    ``linkage`` in single/complete/average/ward (O(n^2) memory). With ``dendrogram=True`` the full
    tree is also extracted (a second ELKI run) into ``linkage`` as a scipy linkage matrix, for plotting.
    Heights (``height`` and the linkage matrix) follow scipy's convention: Euclidean distances, and for
    Ward the square root of ELKI's squared-Euclidean merge cost. Tied heights can give more than k clusters.
    """
    X = check_finite(X)
    if linkage not in LINKAGES or (slink and linkage != "single"):
        raise ValueError(f"linkage must be one of {LINKAGES} (SLINK is single linkage only); got {linkage!r}")
    if (k is None) == (height is None):
        raise ValueError("give exactly one of k (number of clusters) or height")
    if k is not None:
        _check_count("k", k, 1, len(X))
    elif not (math.isfinite(height) and height >= 0):
        raise ValueError(f"height={height!r} must be a finite number >= 0")
    elki = find_elki()
    inner = [elki.cls("slink")] if slink else [
        elki.cls("anderberg"), "-hierarchical.linkage", elki.cls(linkage),
        "-algorithm.distancefunction", elki.cls("sqeuclidean" if linkage == "ward" else "euclidean")]
    if height is not None:
        height = float(height) ** 2 if linkage == "ward" else float(height)  # ELKI's Ward heights are squared
    mode = (["-hierarchical.threshold-mode", "BY_MINCLUSTERS", "-hierarchical.minclusters", str(k)]
            if k is not None else
            ["-hierarchical.threshold-mode", "BY_THRESHOLD", "-hierarchical.threshold", repr(height)])
    cut = ["-algorithm", elki.cls("cut"), "-algorithm", *inner]
    result = run_elki(X, cut + mode, quadratic=not slink, timeout=timeout)
    if dendrogram:
        full = ["-algorithm", elki.cls("cut"), "-algorithm", *inner,
                "-hierarchical.threshold-mode", "NO_THRESHOLD"]  # 0.7.1: implies the hierarchical output
        result.linkage = _dendrogram(_run(X, full, not slink, timeout)[0], len(X))
        if linkage == "ward":
            result.linkage[:, 2] = np.sqrt(result.linkage[:, 2])
    return result


def hdbscan(X: np.ndarray, *, min_pts: int = 5, min_cluster_size: int = 5,
            timeout: float | None = None) -> ElkiResult:
    """HDBSCAN* with ELKI's linear-memory variant (HDBSCANLinearMemory) and its hierarchy extraction.

    ELKI 0.7.1 leaves the points that never join a selected cluster in the root cluster; HDBSCAN*
    (Campello et al. 2013) never selects the root, so those points are reported as noise (-1).
    """
    X = check_finite(X)
    _check_count("min_pts", min_pts, 2, len(X))
    if min_cluster_size < 1:
        raise ValueError(f"min_cluster_size={min_cluster_size!r} must be >= 1")
    elki = find_elki()
    args = ["-algorithm", elki.cls("hdbscan_extract"), "-algorithm", elki.cls("hdbscan"),
            "-algorithm.distancefunction", elki.cls("euclidean"), "-hdbscan.minPts", str(min_pts),
            "-hdbscan.minclsize", str(min_cluster_size), "-hdbscan.hierarchical"]
    return run_elki(X, args, noise_roots=True, timeout=timeout)


def kmeans(X: np.ndarray, k: int, *, variant: str = "lloyd", seed: int = 0, max_iter: int = 0,
           timeout: float | None = None) -> ElkiResult:
    """ELKI k-means (Lloyd, Elkan or Hamerly; same optimum, different pruning) with k-means++ seeding.

    ``max_iter=0`` means until convergence. Needs at least k distinct points, and more than k points.
    """
    X = check_finite(X)
    if variant not in KMEANS_VARIANTS:
        raise ValueError(f"variant must be one of {KMEANS_VARIANTS}; got {variant!r}")
    distinct = len(np.unique(X, axis=0))
    _check_count("k", k, 1, min(distinct, len(X) - 1),
                 f"ELKI's k-means needs fewer clusters than the {len(X)} points, and no more than the {distinct} "
                 "distinct ones")
    if max_iter < 0:
        raise ValueError(f"max_iter={max_iter!r} must be >= 0 (0: until convergence)")
    elki = find_elki()
    args = ["-algorithm", elki.cls(variant), "-kmeans.k", str(k), "-kmeans.initialization", elki.cls("kmeans++"),
            "-kmeans.seed", str(seed), "-kmeans.maxiter", str(max_iter)]
    return run_elki(X, args, timeout=timeout)


def dbscan(X: np.ndarray, *, eps: float, min_pts: int = 5, timeout: float | None = None) -> ElkiResult:
    """ELKI DBSCAN on Euclidean distance; ``min_pts`` counts the point itself (as scikit-learn's min_samples).

    Its range queries go through a cover tree (``-db.index``, SimplifiedCoverTree): without an index every
    query scans all rows. On clustered 128-d rows it took 10 s instead of 60 s at 10,000 rows (a k-d tree:
    48 s) and 19 s instead of 168 s at 20,000, but it prunes less as the rows grow: 62 s at 40,000, more
    than 9 minutes at 100,000.
    """
    X = check_finite(X)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps={eps!r} must be a finite number > 0")
    _check_count("min_pts", min_pts, 1, len(X))
    elki = find_elki()
    args = ["-algorithm", elki.cls("dbscan"), "-algorithm.distancefunction", elki.cls("euclidean"),
            "-dbscan.epsilon", repr(float(eps)), "-dbscan.minpts", str(min_pts),
            "-db.index", elki.cls("covertree"), "-covertree.distancefunction", elki.cls("euclidean")]
    return run_elki(X, args, timeout=timeout)
